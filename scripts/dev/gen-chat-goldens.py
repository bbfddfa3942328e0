#!/usr/bin/env python3
"""Generate engine/tests/data/qwen3_chat_goldens.json: chat-template renderings made by the real thing.

Quire renders chat templates with minijinja set up to behave like Hugging Face transformers
(`apply_chat_template(..., tokenize=False)`). This script produces the expected strings with transformers
itself so `engine/tests/chat_template.rs` can compare byte for byte.

How the goldens were made (the HF hub is not reachable; everything is loaded from local files):

    python3 -m venv /tmp/tpl-venv
    /tmp/tpl-venv/bin/pip install transformers jinja2
    /tmp/tpl-venv/bin/python scripts/dev/gen-chat-goldens.py            # from the repo root

Inputs:
  * ../shared/fixtures/qwen3-tokenizer (or $QUIRE_FIXTURES/qwen3-tokenizer): loaded with
    AutoTokenizer.from_pretrained(dir); rendered with tok.apply_chat_template(...) — the hybrid-thinking
    Qwen3 template, exactly as a user of transformers would get it.
  * fixtures/tiny-qwen3: same, for the tiny model's template, and a check that reference.json's
    `chat_text` is what the template renders (and that its `chatml` prompt ids are that text tokenized).
  * the Qwen2.5-Coder GGUF ($QUIRE_REAL_MODEL or ~/.cache/quire/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf),
    if present: its `tokenizer.chat_template` is read from the GGUF header (small reader below), stored in the
    goldens, and rendered with transformers' own renderer (render_jinja_template), so tool-call rendering of the
    Qwen2.5 template is covered without the 1 GB model at test time.
  * a few small custom templates that exercise transformers' environment (tojson arguments, Python string
    methods, slicing, loop controls, namespace, the {% generation %} tag) — rendered with
    transformers.utils.chat_template_utils.render_jinja_template.

Key order: Python dicts keep insertion order and transformers' tojson prints keys in that order. Quire takes
tools/arguments as serde_json::Value, which keeps insertion order only with serde_json's `preserve_order`
feature. So most cases feed recursively key-sorted JSON (identical under both orders); cases whose inputs
are not key-sorted are flagged `"needs_preserve_order": true` and the Rust test runs them only when serde_json
preserves order. Jinja dict *literals* in templates are avoided for the same reason (minijinja sorts them).
"""
import json
import os
import struct
import sys
from pathlib import Path

import jinja2
import transformers
from transformers import AutoTokenizer
from transformers.utils.chat_template_utils import render_jinja_template

REPO = Path(__file__).resolve().parents[2]
FIX = Path(os.environ.get("QUIRE_FIXTURES", REPO.parent / "shared" / "fixtures"))
OUT = REPO / "engine" / "tests" / "data" / "qwen3_chat_goldens.json"
REAL = Path(
    os.environ.get(
        "QUIRE_REAL_MODEL",
        Path.home() / ".cache/quire/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    )
)


def gguf_chat_template(path):
    """Read `tokenizer.chat_template` from a GGUF header (v2/v3) without extra packages."""
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
        f.read(4)
        _, n_kv = struct.unpack("<QQ", f.read(16))

        def rstr():
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(n).decode("utf-8")

        def skip(t):
            if t == 8:
                rstr()
            elif t == 9:
                (et,) = struct.unpack("<I", f.read(4))
                (n,) = struct.unpack("<Q", f.read(8))
                if et == 8:
                    for _ in range(n):
                        rstr()
                else:
                    f.seek(sizes[et] * n, 1)
            else:
                f.seek(sizes[t], 1)

        for _ in range(n_kv):
            key = rstr()
            (t,) = struct.unpack("<I", f.read(4))
            if key == "tokenizer.chat_template" and t == 8:
                return rstr()
            skip(t)
    return None


def sort_keys(x):
    if isinstance(x, dict):
        return {k: sort_keys(x[k]) for k in sorted(x)}
    if isinstance(x, list):
        return [sort_keys(v) for v in x]
    return x


def is_key_sorted(x):
    return json.dumps(x) == json.dumps(sort_keys(x))


# ---------------------------------------------------------------- inputs

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city. Returns \"°C\" & <b>HTML-ish</b> text; 查询天气 🌦",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. \"Paris\""},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
                "days": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
                "threshold": {"type": "number", "default": 0.5, "minimum": 1e-05, "maximum": 1e16},
                "verbose": {"type": "boolean", "default": False},
                "extra": {"type": ["string", "null"], "default": None},
            },
            "required": ["city"],
        },
    },
}
SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web.\nMulti-line description with a tab\tand a backslash \\ .",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}, "top_n": {"type": "integer", "default": 3}},
            "required": ["query"],
        },
    },
}
TOOLS_NATURAL = [WEATHER_TOOL, SEARCH_TOOL]
TOOLS = sort_keys(TOOLS_NATURAL)

SYS = {"role": "system", "content": "You are a helpful assistant."}
U1 = {"role": "user", "content": "Hello! Who are you?"}
A1 = {"role": "assistant", "content": "I am Qwen, a large language model."}
U2 = {"role": "user", "content": "写一首关于秋天的短诗。🍂"}
A_THINK = {
    "role": "assistant",
    "content": "<think>\nThe user wants a poem.\nKeep it short.\n</think>\n\n秋风起，落叶黄。",
}
U3 = {"role": "user", "content": "Now translate it to English."}

TOOL_CALL_TURN = [
    SYS,
    {"role": "user", "content": "What's the weather in Paris and Tokyo?"},
    {
        "role": "assistant",
        "content": "<think>\nI should call get_weather twice.\n</think>\n\n",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": sort_keys({"city": "Paris", "days": 2})},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Tokyo\"}"},
            },
        ],
    },
    {"role": "tool", "content": "{\"temp\": 18, \"sky\": \"cloudy\"}", "tool_call_id": "call_1"},
    {"role": "tool", "content": "{\"temp\": 22, \"sky\": \"晴\"}", "tool_call_id": "call_2"},
]

QWEN3_CASES = [
    # name, messages, tools, add_generation_prompt, enable_thinking
    ("system_user_gen", [SYS, U1], None, True, None),
    ("system_user_gen_think_false", [SYS, U1], None, True, False),
    ("system_user_gen_think_true", [SYS, U1], None, True, True),
    ("system_user_no_gen", [SYS, U1], None, False, None),
    ("user_only_gen", [U1], None, True, None),
    ("user_only_no_gen_think_false", [U1], None, False, False),
    ("multi_turn_gen", [SYS, U1, A1, U2], None, True, None),
    ("multi_turn_gen_think_false", [U1, A1, U2], None, True, False),
    ("think_stripped_from_earlier_turn", [U2, A_THINK, U3], None, True, None),
    ("think_stripped_think_false", [SYS, U2, A_THINK, U3], None, True, False),
    ("think_kept_in_last_turn", [U2, A_THINK], None, False, None),
    ("think_kept_in_last_turn_think_true", [SYS, U2, A_THINK], None, False, True),
    (
        "reasoning_content_field",
        [U2, {"role": "assistant", "content": "秋风起。", "reasoning_content": "Short poem.\n"}],
        None,
        False,
        None,
    ),
    (
        "reasoning_content_field_earlier_turn",
        [U2, {"role": "assistant", "content": "秋风起。", "reasoning_content": "Short poem."}, U3],
        None,
        True,
        None,
    ),
    ("system_in_middle", [U1, A1, {"role": "system", "content": "Be terse."}, U3], None, True, None),
    ("empty_assistant_content", [U1, {"role": "assistant", "content": ""}, U3], None, True, None),
    ("tools_with_system", [SYS, U1], TOOLS, True, None),
    ("tools_without_system", [U1], TOOLS, True, False),
    ("tool_calls_and_responses", TOOL_CALL_TURN, TOOLS, True, None),
    ("tool_calls_and_responses_think_false", TOOL_CALL_TURN, TOOLS, True, False),
    (
        "user_message_that_looks_like_tool_response",
        [U1, A1, {"role": "user", "content": "<tool_response>\nok\n</tool_response>"}],
        None,
        True,
        None,
    ),
    ("tools_natural_key_order", [SYS, U1], TOOLS_NATURAL, True, None),
    (
        "unicode_and_specials",
        [
            {"role": "system", "content": "Ünïcödé — “quotes” 'single' \\ back\\slash\ttab"},
            {"role": "user", "content": "e\u0301 (not NFC) 👩‍💻 {{ not a tag }} {% raw %} <|im_end|> inside"},
        ],
        None,
        True,
        None,
    ),
]

QWEN25_CASES = [
    ("no_system_gen", [U1], None, True),
    ("system_user_gen", [SYS, U1], None, True),
    ("multi_turn", [U1, A1, U2], None, True),
    ("multi_turn_no_gen", [SYS, U1, A1], None, False),
    ("tools_no_system", [U1], TOOLS, True),
    ("tools_with_system", [SYS, U1], TOOLS, True),
    ("tool_calls_and_responses", TOOL_CALL_TURN[:1] + TOOL_CALL_TURN[1:], TOOLS, True),
    ("tools_natural_key_order", [U1], TOOLS_NATURAL, True),
]

CUSTOM = {
    "tojson_args": (
        # no dict literals: minijinja sorts literal keys, Python keeps them in written order
        "{{ tools | tojson }}\n"
        "{{ tools | tojson(indent=2) }}\n"
        "{{ tools | tojson(indent=0) }}\n"
        "{{ tools | tojson(indent='\\t') }}\n"
        "{{ tools | tojson(separators=(',', ':')) }}\n"
        "{{ tools | tojson(sort_keys=true) }}\n"
        "{{ tools | tojson(ensure_ascii=true) }}\n"
        "{{ tools | tojson(indent=4, separators=(',', ' = ')) }}\n"
        "{{ messages | tojson }}\n"
        "{{ [1, 2.5, 0.1, 1e-05, 0.0001, 1e16, 1e15, 123456789012, -0.0, true, none, 'x\"y\\n\\u00e9<&>\\''] | tojson }}\n"
        "{{ [] | tojson(indent=2) }}|{{ 'plain' | tojson }}|{{ 3 | tojson }}\n"
    ),
    "python_methods": (
        "{{ '  hi  '.strip() }}|{{ 'xxhixx'.strip('x') }}|{{ '\\n\\nA\\n'.lstrip('\\n') }}|{{ 'A\\n\\n'.rstrip('\\n') }}|"
        "{{ 'a,b,,c'.split(',') | join('/') }}|{{ 'a b  c'.split() | length }}|{{ 'a</think>b</think>c'.split('</think>')[-1] }}|"
        "{{ 'Hello'.startswith('He') }}|{{ 'Hello'.endswith(('x', 'lo')) }}|{{ 'aaa'.replace('a', 'b') }}|"
        "{{ 'abc'.upper() }}|{{ 'ABC'.lower() }}|{{ 'title me'.title() }}|{{ 'abc'.find('c') }}|"
        "{{ none }}|{{ true }}|{{ false }}|{{ undefined_var }}|{{ 7 // 2 }}|{{ 7 / 2 }}|{{ 'x' ~ 1 }}\n"
    ),
    "loops_and_namespace": (
        "{%- set ns = namespace(count=0, last='') %}\n"
        "{%- for m in messages[::-1] %}\n"
        "    {%- if m.role == 'assistant' %}{% continue %}{% endif %}\n"
        "    {%- set ns.count = ns.count + 1 %}\n"
        "    {%- set ns.last = m.role %}\n"
        "    {%- if loop.index0 >= 3 %}{% break %}{% endif %}\n"
        "{%- endfor %}\n"
        "count={{ ns.count }} last={{ ns.last }}\n"
        "{% for m in messages %}\n"
        "  {{ loop.index }}/{{ loop.length }} {{ loop.index0 }} {{ loop.first }} {{ loop.last }} {{ m['role'] }}\n"
        "{% endfor %}\n"
        "{% if messages[0].content is defined and messages[0].nothing is not defined %}defined-ok{% endif %}\n"
        "{{ messages | length }} {{ messages[-1].role }} {{ messages[1:3] | map(attribute='role') | join(',') }}\n"
        "{%- for m in messages %}\n"
        "{%- generation %}\n"
        "[{{ m.role }}]\n"
        "{%- endgeneration %}\n"
        "{%- endfor %}\n"
        "{% if add_generation_prompt %}{{ bos_token }}GEN{{ eos_token }}{% endif %}\n"
    ),
    # the classic Mistral-style template: bos_token, raise_exception (not triggered here), loop.index0 % 2
    "alternating_roles": (
        "{{ bos_token }}{% for message in messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}"
        "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
    ),
}
CUSTOM_CASES = [
    ("tojson_args", [U1, A1], TOOLS, False),
    ("tojson_args_natural_order", [U1, A1], TOOLS_NATURAL, False),
    ("python_methods", [U1], None, False),
    ("loops_and_namespace", [SYS, U1, A1, U2, A_THINK, U3], None, True),
    ("alternating_roles", [U1, A1, U2], None, True),
]
CUSTOM_BOS, CUSTOM_EOS = "<s>", "</s>"


def quire_order(message):
    """The key order Quire's Message gives a message: fixed struct order, JSON values as they come."""
    order = ["role", "content", "reasoning_content", "tool_calls", "tool_call_id", "name"]
    out = {k: message[k] for k in order if k in message}
    if "tool_calls" in out:
        out["tool_calls"] = [
            {k: tc[k] for k in ["id", "type", "function"] if k in tc} for tc in out["tool_calls"]
        ]
        for tc in out["tool_calls"]:
            tc["function"] = {k: tc["function"][k] for k in ["name", "arguments"]}
    return out


def order_independent(messages, tools):
    """True if the case renders the same whether or not Quire's JSON values keep insertion order."""
    for m in messages:
        if json.dumps(m) != json.dumps(quire_order(m)):
            return False
        for tc in m.get("tool_calls", []):
            if not is_key_sorted(tc["function"]["arguments"]):
                return False
    return tools is None or is_key_sorted(tools)


def case_entry(name, template, messages, tools, agp, enable_thinking, expected):
    needs_order = not order_independent(messages, tools)
    return {
        "name": name,
        "template": template,
        "messages": messages,
        "tools": tools,
        "add_generation_prompt": agp,
        "enable_thinking": enable_thinking,
        "needs_preserve_order": needs_order,
        "expected": expected,
    }


def apply(tok, messages, tools, agp, enable_thinking):
    kw = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    return tok.apply_chat_template(messages, tools=tools, add_generation_prompt=agp, tokenize=False, **kw)


def main():
    out = {
        "generator": "scripts/dev/gen-chat-goldens.py",
        "versions": {"transformers": transformers.__version__, "jinja2": jinja2.__version__},
        "note": "expected = transformers apply_chat_template(tokenize=False) / render_jinja_template output",
        "templates": {},
        "cases": [],
        "checks": {},
    }
    # message key order: role, content, then the optional fields — the order Quire builds them in
    for name, msgs in [("TOOL_CALL_TURN", TOOL_CALL_TURN)]:
        for m in msgs:
            assert list(m)[:2] == ["role", "content"], name

    qwen3 = AutoTokenizer.from_pretrained(str(FIX / "qwen3-tokenizer"))
    tiny = AutoTokenizer.from_pretrained(str(FIX / "tiny-qwen3"))
    out["templates"]["qwen3"] = {"from": "qwen3-tokenizer/tokenizer_config.json:chat_template"}
    out["templates"]["tiny-qwen3"] = {"from": "tiny-qwen3/tokenizer_config.json:chat_template"}
    for tname, tok in [("qwen3", qwen3), ("tiny-qwen3", tiny)]:
        for name, msgs, tools, agp, et in QWEN3_CASES:
            out["cases"].append(case_entry(name, tname, msgs, tools, agp, et, apply(tok, msgs, tools, agp, et)))

    # tiny-qwen3/reference.json: was chat_text made by the template, and are the `chatml` ids its tokens?
    ref = json.loads((FIX / "tiny-qwen3" / "reference.json").read_text())
    chat_text = ref["chat_text"]
    ref_msgs = [
        {"role": "system", "content": "You are a careful technical writer."},
        {"role": "user", "content": "Write a function that adds two numbers.\n写一个加法函数。"},
    ]
    rendered = apply(tiny, ref_msgs, None, True, None)
    ids = tiny(chat_text, add_special_tokens=False)["input_ids"]
    out["checks"]["tiny_reference_chat_text"] = {
        "messages": ref_msgs,
        "template_renders_chat_text": rendered == chat_text,
        "chatml_ids_are_chat_text_tokens": ids == ref["prompts"]["chatml"]["ids"],
    }
    assert rendered == chat_text, (rendered, chat_text)
    out["cases"].append(case_entry("reference_chat_text", "tiny-qwen3", ref_msgs, None, True, None, chat_text))

    if REAL.exists():
        src = gguf_chat_template(REAL)
        out["templates"]["qwen25"] = {"from": f"GGUF tokenizer.chat_template of {REAL.name}", "source": src}
        for name, msgs, tools, agp in QWEN25_CASES:
            rendered, _ = render_jinja_template(
                conversations=[msgs], tools=tools, chat_template=src, add_generation_prompt=agp,
                eos_token="<|im_end|>", pad_token="<|endoftext|>",
            )
            out["cases"].append(case_entry(name, "qwen25", msgs, tools, agp, None, rendered[0]))
    else:
        print(f"note: {REAL} not found, skipping the qwen25 section", file=sys.stderr)

    for name, msgs, tools, agp in CUSTOM_CASES:
        tname = name.removesuffix("_natural_order")
        src = CUSTOM[tname]
        out["templates"][f"custom:{tname}"] = {"source": src, "bos_token": CUSTOM_BOS, "eos_token": CUSTOM_EOS}
        rendered, _ = render_jinja_template(
            conversations=[msgs], tools=tools, chat_template=src, add_generation_prompt=agp,
            bos_token=CUSTOM_BOS, eos_token=CUSTOM_EOS,
        )
        out["cases"].append(case_entry(name, f"custom:{tname}", msgs, tools, agp, None, rendered[0]))

    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    n_order = sum(c["needs_preserve_order"] for c in out["cases"])
    print(f"wrote {OUT}: {len(out['cases'])} cases ({n_order} need preserve_order)", file=sys.stderr)


if __name__ == "__main__":
    main()
