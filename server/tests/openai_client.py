"""The official `openai` Python package against a running `quire serve`, unmodified.

Usage: python openai_client.py PORT [MODEL_NAME]
Streams a chat completion and a completion (with usage), checks that each streamed text equals the
non-streamed greedy text, lists the models, checks that a bad request raises BadRequestError, and reads
logprobs (whole and streamed) through the client's own types, sends Predicted Outputs (the same text, with
accepted_prediction_tokens counted), and parses structured output into a pydantic model with `chat.completions.parse`, and calls tools (every tool_choice, streamed, a second turn), and runs
batch jobs through files.create / batches.create / retrieve / list / cancel / files.content / files.delete,
and a template batch (a CSV uploaded as user_data, `template` through extra_body) reviewed and exported.
Prints a closing 'N passed, N failed' line; exits non-zero on any failure.
"""

import json
import os
import sys
import time

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


CODE = """def total(items):
    s = 0
    for item in items:
        s += item.price * item.quantity
    return s
"""


def metric(name):
    import urllib.request
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if os.environ.get("QUIRE_API_KEY"):
        req.add_header("Authorization", f"Bearer {os.environ['QUIRE_API_KEY']}")
    text = urllib.request.urlopen(req, timeout=30).read().decode()
    return float(next(l.split()[-1] for l in text.splitlines() if l.startswith(name + " ")))


def predicted_outputs():
    # An edit of a given text: the reply is the same with and without the prediction (speculation never
    # changes it); with the prediction, most of it comes from accepted drafts.
    edit = [{"role": "user", "content": "Rename the variable s to result in this Python code. "
             "Reply with the code only, in a fenced block.\n\n```python\n" + CODE + "```"}]
    drafted0, accepted0 = metric("quire_spec_drafted_tokens_total"), metric("quire_spec_accepted_tokens_total")
    plain = client.chat.completions.create(model=model, messages=edit, max_tokens=96, temperature=0)
    pred = {"type": "content", "content": "```python\n" + CODE.replace(" s ", " result ") + "```"}
    fast = client.chat.completions.create(model=model, messages=edit, max_tokens=96, temperature=0, prediction=pred)
    assert fast.choices[0].message.content == plain.choices[0].message.content, (fast, plain)
    assert fast.usage.completion_tokens == plain.usage.completion_tokens, (fast.usage, plain.usage)
    d = fast.usage.completion_tokens_details
    assert d.accepted_prediction_tokens > fast.usage.completion_tokens // 3, fast.usage
    assert d.rejected_prediction_tokens >= 0, fast.usage
    # seeded sampling too, and streamed, with the prediction given as text parts
    seeded = dict(model=model, messages=edit, max_tokens=64, temperature=0.8, seed=7)
    a = client.chat.completions.create(**seeded).choices[0].message.content
    parts = {"type": "content", "content": [{"type": "text", "text": pred["content"][:40]},
                                            {"type": "text", "text": pred["content"][40:]}]}
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       client.chat.completions.create(**seeded, prediction=parts, stream=True) if c.choices)
    assert streamed == a, (streamed, a)
    assert metric("quire_spec_drafted_tokens_total") > drafted0
    assert metric("quire_spec_accepted_tokens_total") >= accepted0 + d.accepted_prediction_tokens
    try:
        client.chat.completions.create(model=model, messages=edit, prediction={"type": "file", "content": "x"})
    except openai.BadRequestError as e:
        assert e.body and e.body.get("param") == "prediction.type", e.body
        return
    raise AssertionError("prediction type 'file' was accepted")


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


tools = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Local time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
]
ask = [{"role": "user", "content": "What is the weather in Paris and the time in Tokyo?"}]


def valid_call(call):
    args = json.loads(call.function.arguments)
    assert call.type == "function" and call.id, call
    assert call.function.name in ("get_weather", "get_time"), call
    assert isinstance(args.get("city"), str), args
    assert set(args) <= {"city", "unit"} and args.get("unit", "celsius") in ("celsius", "fahrenheit"), args
    return args


def tool_calls():
    # required: the reply is calls (parallel by default), each valid against its function's schema
    r = client.chat.completions.create(model=model, messages=ask, tools=tools, tool_choice="required", temperature=0)
    m = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls" and m.tool_calls, r
    for c in m.tool_calls:
        valid_call(c)
    # a named function, from the first token
    r = client.chat.completions.create(
        model=model, messages=ask, tools=tools, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    calls = r.choices[0].message.tool_calls
    assert len(calls) == 1 and calls[0].function.name == "get_time", r
    # none: a text answer; auto: this model answers in text (its calls, if any, are valid)
    r = client.chat.completions.create(model=model, messages=ask, tools=tools, tool_choice="none", temperature=0, max_tokens=40)
    assert r.choices[0].message.content and not r.choices[0].message.tool_calls, r
    r = client.chat.completions.create(model=model, messages=ask, tools=tools, tool_choice="auto", temperature=0, max_tokens=120)
    for c in r.choices[0].message.tool_calls or []:
        valid_call(c)
    # streamed: the client's chunks reassemble into the same calls as the whole reply
    whole = client.chat.completions.create(model=model, messages=ask, tools=tools, tool_choice="required", temperature=0)
    parts, finish = {}, None
    for chunk in client.chat.completions.create(
        model=model, messages=ask, tools=tools, tool_choice="required", temperature=0, stream=True
    ):
        for ch in chunk.choices:
            finish = ch.finish_reason or finish
            for d in ch.delta.tool_calls or []:
                p = parts.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
                p["id"] = d.id or p["id"]
                if d.function:
                    p["name"] = d.function.name or p["name"]
                    p["arguments"] += d.function.arguments or ""
    got = [(parts[i]["id"] is not None, parts[i]["name"], parts[i]["arguments"]) for i in sorted(parts)]
    want = [(True, c.function.name, c.function.arguments) for c in whole.choices[0].message.tool_calls]
    assert finish == "tool_calls" and got == want, (got, want)
    # a second turn with the tools' results
    m = whole.choices[0].message
    follow = ask + [m.model_dump(exclude_none=True)] + [
        {"role": "tool", "tool_call_id": c.id, "content": json.dumps({"result": "18 C, sunny" if c.function.name == "get_weather" else "21:05"})}
        for c in m.tool_calls
    ]
    r = client.chat.completions.create(model=model, messages=follow, tools=tools, tool_choice="none", temperature=0, max_tokens=60)
    assert r.choices[0].message.content, r
    try:
        client.chat.completions.create(
            model=model, messages=ask, tools=tools, tool_choice={"type": "function", "function": {"name": "nope"}}
        )
    except openai.BadRequestError as e:
        assert e.body and e.body.get("param") == "tool_choice", e.body
        return
    raise AssertionError("a tool_choice naming a missing function was accepted")


def jsonl(lines):
    return ("\n".join(json.dumps(x) for x in lines) + "\n").encode()


def wait_batch(b, until=("completed", "failed", "cancelled"), timeout=300):
    deadline = time.time() + timeout
    while b.status not in until:
        assert time.time() < deadline, f"batch still {b.status}"
        time.sleep(0.2)
        b = client.batches.retrieve(b.id)
    return b


def batches():
    def body(i):
        return {"model": model, "messages": [{"role": "user", "content": f"One sentence about product {i}."}],
                "max_tokens": 12, "temperature": 0}
    lines = [{"custom_id": f"p{i}", "method": "POST", "url": "/v1/chat/completions", "body": body(i)} for i in range(3)]
    lines.append({"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": "x"}})
    f = client.files.create(file=("products.jsonl", jsonl(lines)), purpose="batch")
    assert f.id.startswith("file-") and f.purpose == "batch" and f.bytes > 0, f
    assert client.files.retrieve(f.id).filename == "products.jsonl"
    assert f.id in [x.id for x in client.files.list().data]
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                              metadata={"job": "openai-client test"})
    assert b.status in ("validating", "in_progress") and b.metadata == {"job": "openai-client test"}, b
    b = wait_batch(b)
    assert b.status == "completed", b
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (4, 3, 1), b
    out = {o["custom_id"]: o for o in map(json.loads, client.files.content(b.output_file_id).text.splitlines())}
    assert sorted(out) == ["p0", "p1", "p2"], out.keys()
    direct = client.chat.completions.create(**body(1))
    got = out["p1"]["response"]["body"]["choices"][0]["message"]["content"]
    assert got == direct.choices[0].message.content, (got, direct.choices[0].message.content)
    assert out["p1"]["quire"]["model_sha256"] and out["p1"]["response"]["status_code"] == 200
    err = [json.loads(x) for x in client.files.content(b.error_file_id).text.splitlines()]
    assert [e["custom_id"] for e in err] == ["bad"] and err[0]["response"]["status_code"] == 400, err
    assert b.id in [x.id for x in client.batches.list(limit=5).data]
    # a long batch, cancelled while it runs: what finished is kept, the rest never runs
    long = [{"custom_id": f"l{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": model, "messages": [{"role": "user", "content": f"A long story number {i}."}],
                      "max_tokens": 200}} for i in range(12)]
    lf = client.files.create(file=("long.jsonl", jsonl(long)), purpose="batch")
    lb = wait_batch(client.batches.create(input_file_id=lf.id, endpoint="/v1/chat/completions",
                                          completion_window="24h"), until=("in_progress",))
    c = client.batches.cancel(lb.id)
    assert c.status in ("cancelling", "cancelled"), c
    c = wait_batch(c)
    assert c.status == "cancelled" and c.request_counts.completed < 12, c
    try:
        client.files.create(file=("bad.jsonl", b"name,price\nbottle,3\n"), purpose="batch")
        raise AssertionError("a CSV was accepted as a batch file")
    except openai.BadRequestError as e:
        assert "line 1" in str(e), e
    assert client.files.delete(f.id).deleted
    try:
        client.files.retrieve(f.id)
        raise AssertionError("a deleted file is still there")
    except openai.NotFoundError:
        pass


def template_batch():
    csv = ("custom_id,product,features,audience,platform\n"
           'sku-1,"Kettle, 1.7 L","says ""done"" when it boils",families,website\n'
           "sku-2,保温杯,316 不锈钢，12 小时保温,上班族,淘宝\n").encode()
    f = client.files.create(file=("products.csv", csv), purpose="user_data")
    assert f.purpose == "user_data", f
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                              extra_body={"template": "product-description.zh"})
    assert b.metadata["template"] == "product-description.zh" and b.metadata["data_file_id"] == f.id, b
    assert b.input_file_id != f.id, "the rows are rendered into a batch file of their own"
    requests = [json.loads(x) for x in client.files.content(b.input_file_id).text.splitlines()]
    prompts = [r["body"]["messages"][-1]["content"] for r in requests]
    assert "「Kettle, 1.7 L」" in prompts[0] and 'says "done" when it boils' in prompts[0], prompts[0]
    assert "「保温杯」" in prompts[1] and "316 不锈钢，12 小时保温" in prompts[1], prompts[1]
    assert requests[0]["body"]["messages"][0]["role"] == "system"
    b = wait_batch(b)
    assert b.status == "completed" and b.request_counts.completed == 2, b
    out = [json.loads(x) for x in client.files.content(b.output_file_id).text.splitlines()]
    assert [(o["custom_id"], o["quire"]["template"], o["quire"]["row"]) for o in out] == \
        [("sku-1", "product-description.zh", 1), ("sku-2", "product-description.zh", 2)], out
    # review through the extension endpoints, with the client's own request methods
    items = client.get(f"/batches/{b.id}/items", cast_to=object)
    assert [i["custom_id"] for i in items["data"]] == ["sku-1", "sku-2"] and items["review_counts"]["pending"] == 2
    r = client.post(f"/batches/{b.id}/items/sku-2/review", body={"status": "approved", "text": "终稿"}, cast_to=object)
    assert r["review"]["status"] == "approved" and r["review"]["text"] == "终稿", r
    import urllib.request
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/batches/{b.id}/export?format=jsonl",
                                 headers={"Authorization": f"Bearer {client.api_key}"})
    exported = [json.loads(x) for x in urllib.request.urlopen(req).read().decode().splitlines()]
    assert [(e["custom_id"], e["text"], e["edited"]) for e in exported] == [("sku-2", "终稿", True)], exported
    # rows the template cannot use, an unknown template: refused with the reason
    bad = client.files.create(file=("bad.csv", b"product\nKettle\n"), purpose="user_data")
    for extra, want in [({"template": "product-description"}, "needs the fields"), ({"template": "nope"}, "no template 'nope'")]:
        try:
            client.batches.create(input_file_id=bad.id, endpoint="/v1/chat/completions", completion_window="24h",
                                  extra_body=extra)
            raise AssertionError(f"{extra} was accepted")
        except openai.BadRequestError as e:
            assert want in str(e), e
    names = [t["id"] for t in client.get("/templates", cast_to=object)["data"]]
    assert "product-description" in names and "wechat-article.zh" in names, names


check("models.list", models)
check("chat.completions stream == non-stream", chat_stream)
check("completions stream == non-stream", completion_stream)
check("bad request -> BadRequestError", bad_request)
check("chat logprobs, whole and streamed", chat_logprobs)
check("predicted outputs: same text, accepted_prediction_tokens, /metrics, seeded + streamed, bad type", predicted_outputs)
check("structured output: parse() with a pydantic model, json_object streamed, bad schema", structured_parse)
check("tool calls: required, named, none, auto, streamed, second turn, bad tool_choice", tool_calls)
check("batches: files.create, batches.create/retrieve/list/cancel, files.content/delete", batches)
check("template batch: CSV as user_data, extra_body template, provenance, review and export", template_batch)
print(f"openai-client: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
