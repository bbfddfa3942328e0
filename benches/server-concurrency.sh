#!/usr/bin/env bash
# Continuous batching, measured through the HTTP server: aggregate decode tokens/s with 1, 2 and 4 concurrent
# streams, and the time to first token of a 512-token prompt while two other streams decode.
#
#   benches/server-concurrency.sh MODEL.gguf [N_TOKENS] [--write]      (ROUNDS=3 by default)
#
# Starts `quire serve --parallel 4` on a free port; each stream is a greedy /v1/completions request of
# N_TOKENS (default 128) tokens with ignore_eos. The aggregate decode rate of k streams is the sum of their
# decode rates, each the tokens after its first one (from the usage chunk) over the time from its first to
# its last streamed text piece: prompt processing is not decode, and the streams, started together and
# equally long, decode side by side. On a shared VM single runs swing by ±20 %, so the 1-, 2- and 4-stream
# runs alternate for ROUNDS rounds and the table gives each one's median (and the range). Prints a Markdown
# section; --write also puts it into benches/RESULTS.md above the server marker line.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:?usage: benches/server-concurrency.sh MODEL.gguf [N_TOKENS] [--write]}"
N="${2:-128}"
WRITE=0
[[ "${3:-}" == "--write" || "${2:-}" == "--write" ]] && WRITE=1
[[ "$N" == "--write" ]] && N=128
cargo build --release --quiet
source scripts/lib/serve.sh
start_server -m "$MODEL" --parallel 4 --queue 8 --ctx 2048
# The server answers while it copies the weights into the kernels' layout in the background; measure after.
prepacked=0
for _ in $(seq 1 120); do
  curl -fsS "http://127.0.0.1:$PORT/metrics" | grep -q '^quire_weights_prepacking 0' && { prepacked=1; break; }
  sleep 0.5
done
[[ $prepacked == 1 ]] || echo "warning: the server still reports prepacking after 60 s; measuring anyway" >&2

python3 - "$PORT" "$N" "$MODEL" "$WRITE" "$(git rev-parse --short HEAD)" "${ROUNDS:-3}" <<'PY'
import datetime, json, os, statistics, sys, threading, time, urllib.request
port, n, model, write, commit = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1", sys.argv[5]
rounds = int(sys.argv[6])

def stream(prompt, max_tokens, out):
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", json.dumps(body).encode(),
                                 {"content-type": "application/json"})
    t0 = time.time(); first = None; tokens = 0; stamps = []
    for line in urllib.request.urlopen(req, timeout=3600):
        line = line.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("choices") and chunk["choices"][0].get("text"):
            stamps.append(time.time())
        if chunk.get("choices") and first is None:
            first = time.time()
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
    out.append({"start": t0, "first": first, "tokens": tokens, "end": time.time(), "stamps": stamps})

def concurrent(k):
    out = []
    threads = [threading.Thread(target=stream, args=(f"Stream {i}: once upon a time", n, out)) for i in range(k)]
    for t in threads: t.start()
    for t in threads: t.join()
    assert all(o["tokens"] == n for o in out), out
    # each stream's decode rate: tokens after its first one over the time from its first to its last text
    # piece; the streams start together and are equally long, so they decode side by side and their rates add
    return sum((o["tokens"] - 1) / (o["stamps"][-1] - o["stamps"][0]) for o in out)

stream("warm up", 4, [])
runs = {1: [], 2: [], 4: []}
for _ in range(rounds):
    for k in runs:
        runs[k].append(concurrent(k))
rates = {k: statistics.median(r) for k, r in runs.items()}
# time to first token of a 512-token prompt while two streams decode
bg = []
threads = [threading.Thread(target=stream, args=(f"Background {i}", 4 * n, bg)) for i in range(2)]
for t in threads: t.start()
time.sleep(5)
long = []
stream(" ".join(["word"] * 511), 1, long)
for t in threads: t.join()
ttft = long[0]["first"] - long[0]["start"]
alone = []
stream(" ".join(["text"] * 511), 1, alone)  # no prefix in common with any slot
ttft_alone = alone[0]["first"] - alone[0]["start"]

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
lines = [
    f"### Server concurrency: {os.path.basename(model)}, {datetime.date.today().isoformat()} (commit {commit})",
    "",
    f"Machine: {cpu}, {os.cpu_count()} cores. `benches/server-concurrency.sh {os.path.basename(model)} {n}`: "
    f"`quire serve --parallel 4`, greedy /v1/completions streams of {n} tokens started together; aggregate = "
    f"sum of the streams' decode rates (first to last token); median of {rounds} alternating rounds.",
    "",
    "| concurrent streams | aggregate decode t/s, median (range) | vs 1 stream |",
    "|---|---|---|",
] + [f"| {k} | {rates[k]:.2f} ({min(r):.2f}–{max(r):.2f}) | {rates[k] / rates[1]:.2f}× |" for k, r in runs.items()] + [
    "",
    f"Time to first token of a 512-token prompt: {ttft:.2f} s while two streams decode, {ttft_alone:.2f} s alone.",
    "",
]
text = "\n".join(lines)
print(text)
if write:
    path = "benches/RESULTS.md"
    marker = "<!-- server-concurrency: new tables go above this line -->"
    body = open(path).read()
    body = body.replace(marker, text + "\n" + marker, 1) if marker in body else body + "\n" + text
    open(path, "w").write(body)
PY
