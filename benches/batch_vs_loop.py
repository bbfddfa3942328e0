"""200 short content requests on one `quire serve`: a sequential client loop (one request at a time, as a user
without a batch API writes it) against the same requests as one batch through /v1/files + /v1/batches.

Usage: python benches/batch_vs_loop.py QUIRE_BINARY MODEL [N=200] [PARALLEL=4]
(scripts/bench-batch.sh runs it with the openai venv). Prints wall times, generated tokens/s and the ratio.
"""

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import openai

QUIRE, MODEL = sys.argv[1], sys.argv[2]
N = int(sys.argv[3]) if len(sys.argv) > 3 else 200
PARALLEL = int(sys.argv[4]) if len(sys.argv) > 4 else 4

PRODUCTS = ["steel water bottle", "linen tea towel", "ceramic mug", "olive-wood board", "wool blanket",
            "desk lamp", "notebook", "canvas tote bag", "glass teapot", "bamboo toothbrush"]


def body(i):
    p = PRODUCTS[i % len(PRODUCTS)]
    return {"messages": [{"role": "user", "content": f"Write a one-sentence product description for item {i}: a {p}."}],
            "max_tokens": 24, "temperature": 0.7, "seed": i}


s = socket.socket()
s.bind(("127.0.0.1", 0))
port = s.getsockname()[1]
s.close()
server = subprocess.Popen([QUIRE, "serve", "-m", MODEL, "--data-dir", tempfile.mkdtemp(), "--port", str(port),
                           "--parallel", str(PARALLEL)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            break
        except Exception:
            time.sleep(0.2)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=600, max_retries=0)
    client.chat.completions.create(model="m", **body(10_000))  # warm-up

    t0 = time.perf_counter()
    loop_tokens = sum(client.chat.completions.create(model="m", **body(i)).usage.completion_tokens for i in range(N))
    loop_secs = time.perf_counter() - t0

    lines = "".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": body(i)}) + "\n" for i in range(N))
    t0 = time.perf_counter()
    f = client.files.create(file=("bench.jsonl", lines.encode()), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    while b.status not in ("completed", "failed", "cancelled"):
        time.sleep(0.2)
        b = client.batches.retrieve(b.id)
    batch_secs = time.perf_counter() - t0
    assert b.status == "completed" and b.request_counts.completed == N, b
    out = [json.loads(x) for x in client.files.content(b.output_file_id).text.splitlines()]
    batch_tokens = sum(o["response"]["body"]["usage"]["completion_tokens"] for o in out)
    print(f"| sequential loop | {N} | {loop_secs:.1f} | {loop_tokens} | {loop_tokens / loop_secs:.2f} | 1.00 |")
    print(f"| batch, --parallel {PARALLEL} | {N} | {batch_secs:.1f} | {batch_tokens} | "
          f"{batch_tokens / batch_secs:.2f} | {loop_secs / batch_secs:.2f} |")
finally:
    server.terminate()
    server.wait()
