"""The official `openai` Python package against a running `quire serve`, unmodified.

Usage: python openai_client.py PORT [MODEL_NAME]
Streams a chat completion and a completion (with usage), checks that each streamed text equals the
non-streamed greedy text, lists the models, checks that a bad request raises BadRequestError, and reads
logprobs (whole and streamed) through the client's own types, and parses structured output into a pydantic
model with `chat.completions.parse`.
Prints a closing 'N passed, N failed' line; exits non-zero on any failure.
"""

import json
import os
import sys

import openai
import pydantic

port = int(sys.argv[1])
client = openai.OpenAI(
    base_url=f"http://127.0.0.1:{port}/v1",
    api_key=os.environ.get("QUIRE_API_KEY") or "no-key",
    timeout=120,
    max_retries=0,
)
passed = failed = 0


def check(name, fn):
    global passed, failed
    try:
        fn()
        passed += 1
        print(f"ok   {name}")
    except Exception as e:  # report every failure, keep going
        failed += 1
        print(f"FAIL {name}: {e!r}")


model = sys.argv[2] if len(sys.argv) > 2 else client.models.list().data[0].id
messages = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write one sentence about the sea."},
]


def models():
    ids = [m.id for m in client.models.list().data]
    assert model in ids, ids


def chat_stream():
    full = client.chat.completions.create(model=model, messages=messages, max_tokens=32, temperature=0)
    want = full.choices[0].message.content
    assert full.usage.completion_tokens > 0
    parts, finish, usage, roles = [], None, None, []
    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=32, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.role:
                roles.append(c.delta.role)
            if c.delta.content:
                parts.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    assert roles == ["assistant"], roles
    assert finish in ("stop", "length"), finish
    assert usage is not None and usage.completion_tokens == full.usage.completion_tokens, usage
    assert "".join(parts) == want, ("".join(parts), want)


def completion_stream():
    prompt = "def fibonacci(n):"
    full = client.completions.create(model=model, prompt=prompt, max_tokens=24, temperature=0)
    want = full.choices[0].text
    parts, finish = [], None
    for chunk in client.completions.create(model=model, prompt=prompt, max_tokens=24, temperature=0, stream=True):
        for c in chunk.choices:
            parts.append(c.text)
            if c.finish_reason:
                finish = c.finish_reason
    assert finish in ("stop", "length"), finish
    assert "".join(parts) == want, ("".join(parts), want)


def bad_request():
    try:
        client.chat.completions.create(model=model, messages=messages, temperature=5)
    except openai.BadRequestError as e:
        assert e.body and e.body.get("param") == "temperature", e.body
        return
    raise AssertionError("temperature=5 was accepted")


def chat_logprobs():
    r = client.chat.completions.create(
        model=model, messages=messages, max_tokens=16, temperature=0, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert len(content) >= 1 and len(content) <= r.usage.completion_tokens, (len(content), r.usage)
    text = b"".join(bytes(t.bytes) for t in content).decode("utf-8", "replace")
    assert text.startswith(r.choices[0].message.content[:8]), (text, r.choices[0].message.content)
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3, t
        assert t.top_logprobs[0].token == t.token, t  # greedy: the most likely token
        lps = [a.logprob for a in t.top_logprobs]
        assert lps == sorted(lps, reverse=True), lps
    streamed = []
    for chunk in client.chat.completions.create(
        model=model, messages=messages, max_tokens=16, temperature=0, logprobs=True, top_logprobs=3, stream=True
    ):
        for c in chunk.choices:
            if c.logprobs and c.logprobs.content:
                streamed.extend(c.logprobs.content)
    assert [t.token for t in streamed] == [t.token for t in content]
    try:
        client.chat.completions.create(model=model, messages=messages, logprobs=True, top_logprobs=21)
    except openai.BadRequestError as e:
        assert e.body and e.body.get("param") == "top_logprobs", e.body
        return
    raise AssertionError("top_logprobs=21 was accepted")


class Product(pydantic.BaseModel):
    name: str
    price_eur: float
    tags: list[str]
    in_stock: bool


def structured_parse():
    # The client turns the pydantic model into a strict json_schema response_format and parses the reply.
    r = client.chat.completions.parse(
        model=model,
        messages=[{"role": "user", "content": "Describe a stainless steel water bottle for our shop, as JSON."}],
        response_format=Product,
        max_tokens=200,
        temperature=0.7,
        seed=1,
    )
    p = r.choices[0].message.parsed
    assert isinstance(p, Product), r
    assert p.name and r.choices[0].finish_reason == "stop", r
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Describe a kettle as JSON."}],
            response_format={"type": "json_object"},
            max_tokens=200,
            temperature=0,
            stream=True,
        )
        if c.choices
    )
    assert isinstance(json.loads(streamed), dict), streamed
    try:
        client.chat.completions.create(
            model=model,
            messages=messages,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strang"}}},
        )
    except openai.BadRequestError as e:
        assert e.body and e.body.get("param") == "response_format.json_schema.schema", e.body
        return
    raise AssertionError("an invalid schema was accepted")


check("models.list", models)
check("chat.completions stream == non-stream", chat_stream)
check("completions stream == non-stream", completion_stream)
check("bad request -> BadRequestError", bad_request)
check("chat logprobs, whole and streamed", chat_logprobs)
check("structured output: parse() with a pydantic model, json_object streamed, bad schema", structured_parse)
print(f"openai-client: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
