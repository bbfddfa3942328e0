#!/usr/bin/env bash
# Continuous batching, measured through the HTTP server: aggregate decode tokens/s with 1, 2 and 4 concurrent
# streams, and time to first token of a 512-token prompt while two other streams decode.
#   benches/server-concurrency.sh MODEL.gguf [N_TOKENS]
# Prints a Markdown table (append it to benches/RESULTS.md with the machine and date).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="$1"
N="${2:-64}"
cargo build --release --quiet
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
LOG="$(mktemp)"
target/release/quire serve -m "$MODEL" --port "$PORT" --parallel 4 --queue 8 --ctx 2048 >"$LOG" 2>&1 &
PID=$!
trap 'kill -TERM $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -f "$LOG"' EXIT
for _ in $(seq 1 600); do
  curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  kill -0 "$PID" 2>/dev/null || { cat "$LOG" >&2; exit 1; }
  sleep 0.5
done

python3 - "$PORT" "$N" <<'PY'
import json, sys, threading, time, urllib.request
port, n = sys.argv[1], int(sys.argv[2])

def stream(prompt, max_tokens, out):
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", json.dumps(body).encode(),
                                 {"content-type": "application/json"})
    t0 = time.time(); first = None; tokens = 0
    for line in urllib.request.urlopen(req, timeout=3600):
        line = line.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("choices") and first is None:
            first = time.time() - t0
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
    out.append({"ttft": first, "tokens": tokens, "end": time.time()})

def concurrent(k):
    out = []; threads = [threading.Thread(target=stream, args=(f"Stream {i}: once upon a time", n, out)) for i in range(k)]
    t0 = time.time()
    for t in threads: t.start()
    for t in threads: t.join()
    return sum(o["tokens"] for o in out) / (max(o["end"] for o in out) - t0)

stream("warm up", 4, [])
rates = {k: concurrent(k) for k in (1, 2, 4)}
# TTFT of a 512-token prompt while two streams decode
bg = []; threads = [threading.Thread(target=stream, args=(f"Background {i}", 4 * n, bg)) for i in range(2)]
for t in threads: t.start()
time.sleep(5)
long = []; stream(" ".join(["word"] * 511), 1, long)
for t in threads: t.join()
print("| streams | aggregate decode t/s | vs 1 stream |")
print("|---|---|---|")
for k, r in rates.items():
    print(f"| {k} | {r:.2f} | {r / rates[1]:.2f}x |")
print(f"\nTime to first token, 512-token prompt while 2 streams decode: {long[0]['ttft']:.2f} s")
PY
