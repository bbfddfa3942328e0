"""Batch jobs on a real `quire serve` process, through the official openai client.

Usage: python batch_server.py QUIRE_BINARY TINY_MODEL [REAL_MODEL]

1. Killed mid-batch with SIGKILL and restarted on the same --data-dir: the batch resumes by itself, every
   custom_id is in the output or error file exactly once, the bad lines are in the error file, and each text
   equals that of the same batch run without interruption (on another data dir).
2. With REAL_MODEL: while a batch fills every slot, an interactive request's time to first token stays
   within 1.5x of its time on an idle server (medians of several requests, measured here).
3. Upload validation: an empty file, a non-JSON file, duplicate custom_ids, a 100k-line file (refused at the
   request limit, streamed: the server's memory does not grow with it) and a 300 MB upload (413).
Prints a closing 'N passed, N failed' line; exits non-zero on any failure.
"""

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import openai

QUIRE, TINY = sys.argv[1], sys.argv[2]
REAL = sys.argv[3] if len(sys.argv) > 3 else None
passed = failed = 0


def check(name, fn):
    global passed, failed
    try:
        fn()
        passed += 1
        print(f"ok   {name}", flush=True)
    except Exception as e:  # report every failure, keep going
        failed += 1
        print(f"FAIL {name}: {e!r}", flush=True)


class Server:
    def __init__(self, model, data_dir, *extra):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [QUIRE, "serve", "-m", model, "--data-dir", data_dir, "--port", str(self.port), *extra],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.client = openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="none", timeout=120,
                                    max_retries=0)
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2)
                return
            except Exception:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.log.seek(0)
                    raise RuntimeError("server did not start: " + self.log.read().decode(errors="replace"))
                time.sleep(0.1)

    def metric(self, name):
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read().decode()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        raise KeyError(name)

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)


def jsonl(lines):
    return ("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n").encode()


def wait_batch(client, bid, until=("completed", "failed", "cancelled"), timeout=600, pred=None):
    deadline = time.time() + timeout
    while True:
        b = client.batches.retrieve(bid)
        if b.status in until or (pred and pred(b)):
            return b
        assert time.time() < deadline, f"batch still {b.status}: {b.request_counts}"
        time.sleep(0.05)


def results(client, b):
    out = {}
    for fid in (b.output_file_id, b.error_file_id):
        if fid:
            for line in client.files.content(fid).text.splitlines():
                v = json.loads(line)
                assert v["custom_id"] not in out, f"{v['custom_id']} written twice"
                out[v["custom_id"]] = v
    return out


def text_of(v):
    r = v.get("response") or {}
    if r.get("status_code") != 200:
        return ("error", (r.get("body") or {}).get("error", v.get("error")))
    return r["body"]["choices"][0]["message"]["content"]


def restart_after_sigkill():
    lines = [{"custom_id": f"item-{i:02}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"messages": [{"role": "user", "content": f"Describe product {i}."}], "max_tokens": 400,
                       "temperature": 0.9, "chat_template_kwargs": {"enable_thinking": False}}} for i in range(30)]
    lines.insert(4, {"custom_id": "bad-body", "method": "POST", "url": "/v1/chat/completions",
                     "body": {"messages": [{"role": "user", "content": "x"}], "temperature": "warm"}})
    lines.insert(9, '{"custom_id": "bad-json", "method": "POST", "body": {')
    ids = sorted(x["custom_id"] if isinstance(x, dict) else "bad-json" for x in lines)
    data = tempfile.mkdtemp()
    s = Server(TINY, data, "--parallel", "2")
    f = s.client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    b = s.client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    mid = wait_batch(s.client, b.id, pred=lambda x: x.request_counts.completed >= 6)
    assert mid.status == "in_progress", mid
    s.stop(signal.SIGKILL)
    s = Server(TINY, data, "--parallel", "2")
    after = s.client.batches.retrieve(b.id)
    assert after.status == "in_progress" and after.request_counts.completed >= 6, after
    done = wait_batch(s.client, b.id)
    assert done.status == "completed", done
    assert (done.request_counts.total, done.request_counts.failed) == (32, 2), done.request_counts
    got = results(s.client, done)
    assert sorted(got) == ids, sorted(got)
    assert got["bad-body"]["response"]["status_code"] == 400 and got["bad-json"]["error"]["code"] == "invalid_json"
    # the same batch, never interrupted
    s.stop()
    ref = Server(TINY, tempfile.mkdtemp(), "--parallel", "2")
    f = ref.client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    r = wait_batch(ref.client, ref.client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                                         completion_window="24h").id)
    want = results(ref.client, r)
    ref.stop()
    for cid in ids:
        if cid.startswith("item"):
            assert text_of(got[cid]) == text_of(want[cid]), f"{cid}: resumed text differs"


def peak_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def upload_limits():
    s = Server(TINY, tempfile.mkdtemp())
    try:
        c = s.client
        for name, body, needle in [
            ("empty.jsonl", b"", "no request"),
            ("notjson.jsonl", b"just some text\n", "line 1 is not JSON"),
            ("dup.jsonl", jsonl([{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}] * 2),
             "line 2: custom_id 'a' is already used on line 1"),
        ]:
            try:
                c.files.create(file=(name, body), purpose="batch")
                raise AssertionError(f"{name} was accepted")
            except openai.BadRequestError as e:
                assert needle in str(e), (name, str(e))
        # 100k lines (~100 MB): refused at line 50,001 while streaming to disk, the server's memory untouched
        pad = "x" * 900
        big = b"".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                   "body": {"messages": [{"role": "user", "content": pad}]}}).encode() + b"\n"
                       for i in range(100_000))
        before = peak_rss_kb(s.proc.pid)
        try:
            c.files.create(file=("big.jsonl", big), purpose="batch")
            raise AssertionError("100k requests were accepted")
        except openai.BadRequestError as e:
            assert "more than 50000 requests (line 50001)" in str(e), str(e)
        grew_mb = (peak_rss_kb(s.proc.pid) - before) / 1024
        assert grew_mb < 40, f"the server's peak memory grew {grew_mb:.0f} MB for a {len(big) >> 20} MB file"
        print(f"     100k-line upload ({len(big) >> 20} MB): peak memory +{grew_mb:.1f} MB", flush=True)
        try:
            c.files.create(file=("huge.jsonl", b"x" * (300 << 20)), purpose="batch")
            raise AssertionError("a 300 MB upload was accepted")
        except openai.APIStatusError as e:
            assert e.status_code == 413, e
        assert c.files.list().data == [], "nothing refused was kept"
    finally:
        s.stop()


def ttft(client, i):
    t0 = time.perf_counter()
    stream = client.chat.completions.create(
        model="m", stream=True, max_tokens=4, temperature=0,
        messages=[{"role": "user", "content": f"Question {i}: our shop sells handmade ceramic mugs, linen "
                   "tea towels and small olive-wood serving boards to customers in cafes and homes. Suggest one "
                   "short, friendly subject line for this week's newsletter, which introduces a new glaze colour "
                   "inspired by the sky at dusk."}])
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            dt = time.perf_counter() - t0
            for _ in stream:
                pass
            return dt
    raise AssertionError("no content")


def interactive_first_under_a_batch():
    s = Server(REAL, tempfile.mkdtemp(), "--parallel", "2")
    try:
        ttft(s.client, 0)  # warm-up
        idle = [ttft(s.client, i) for i in range(1, 6)]
        lines = [{"custom_id": f"b{i}", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"messages": [{"role": "user", "content": f"Write a long article about topic {i}."}],
                           "max_tokens": 300}} for i in range(40)]
        f = s.client.files.create(file=("load.jsonl", jsonl(lines)), purpose="batch")
        b = s.client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        deadline = time.time() + 120
        while s.metric("quire_slots_active_batch") < 2:
            assert time.time() < deadline, "the batch never filled the slots"
            time.sleep(0.05)
        busy = []
        for i in range(6, 11):
            while s.metric("quire_slots_active_batch") < 2:  # every slot busy with batch work again
                time.sleep(0.02)
            busy.append(ttft(s.client, i))
        preempted = s.metric("quire_batch_preemptions_total")
        pos = s.client.batches.retrieve(b.id).model_extra.get("quire", {})
        s.client.batches.cancel(b.id)
        i, u = statistics.median(idle), statistics.median(busy)
        print(f"     time to first token: idle {i * 1000:.0f} ms, under a full batch {u * 1000:.0f} ms "
              f"({u / i:.2f}x), {preempted:.0f} preemptions, batch queue info {pos}", flush=True)
        assert preempted >= 5, preempted
        assert pos.get("queue_position") == 0, pos
        assert u <= 1.5 * i, f"{u:.3f} s under the batch vs {i:.3f} s idle"
    finally:
        s.stop()


check("kill -9 mid-batch, restart: resumes, each custom_id once, same texts", restart_after_sigkill)
check("uploads: empty, not JSON, duplicate ids, 100k lines streamed, 300 MB -> 413", upload_limits)
if REAL:
    check("interactive time to first token under a full batch <= 1.5x idle", interactive_first_under_a_batch)
print(f"batch-server: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
