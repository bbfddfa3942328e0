#!/usr/bin/env bash
# The server and the CLI give the same greedy text: `quire run --temp 0` versus /v1/chat/completions (plain
# and streamed) and /generate on the same model and prompt. Usage: scripts/test-api-matches-run.sh MODEL.gguf
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="$1"
QUIRE=target/release/quire
PROMPT="Write a Python function that checks whether a number is prime."
N=32

want="$("$QUIRE" run -m "$MODEL" -p "$PROMPT" -n $N --temp 0 2>/dev/null)"

source scripts/lib/serve.sh
start_server -m "$MODEL"

python3 - "$PORT" "$PROMPT" "$N" "$want" <<'PY'
import json, sys, urllib.request
port, prompt, n, want = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
def post(path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(),
                                 {"content-type": "application/json"})
    return urllib.request.urlopen(req, timeout=300)
msgs = [{"role": "user", "content": prompt}]
plain = json.load(post("/v1/chat/completions", {"messages": msgs, "max_tokens": n, "temperature": 0}))
plain = plain["choices"][0]["message"]["content"]
streamed = ""
for line in post("/v1/chat/completions", {"messages": msgs, "max_tokens": n, "temperature": 0, "stream": True}):
    line = line.decode().strip()
    if line.startswith("data: ") and line != "data: [DONE]":
        for c in json.loads(line[6:])["choices"]:
            streamed += c["delta"].get("content") or ""
gen = json.load(post("/generate", {"prompt": prompt, "max_new_tokens": n, "temperature": 0}))["result"]
ok = True
for name, got in [("chat", plain), ("chat stream", streamed), ("/generate", gen)]:
    # `quire run` ends its output with a newline
    if got.strip() != want.strip():
        ok = False
        print(f"MISMATCH {name}:\n--- quire run ---\n{want}\n--- {name} ---\n{got}", file=sys.stderr)
print(f"{3 if ok else 0} passed, {0 if ok else 1} failed: API greedy text equals quire run's")
sys.exit(0 if ok else 1)
PY
