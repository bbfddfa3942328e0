#!/usr/bin/env bash
# Quire vs llama.cpp on the same GGUF file, same machine, same run.
#
#   scripts/bench-vs-llamacpp.sh MODEL.gguf [-p 512] [-n 128] [-r 3] [-t THREADS] [--no-write]
#
# Builds llama.cpp's `llama-bench` once from the llama-cpp-python 0.3.36 source package (its vendored
# llama.cpp, CPU only, -march=native) into $QUIRE_LLAMA_CACHE (default ~/.cache/quire/llama.cpp), builds
# `quire` in release mode, then runs both benchmarks alternately (quire, llama, quire, llama, ...) and
# appends a dated table with the ratios, the machine and the commands to benches/RESULTS.md. Before and
# after the rounds it measures what memory delivers to a streaming reader (kernels/examples/stream_read.rs,
# AVX-512 machines) and reports decode's weight bytes per second against the better of the two: the
# bandwidth limit of decoding.
#
# `scripts/bench-vs-llamacpp.sh --build-only` just builds llama-bench (and llama-speculative, llama-lookup).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${QUIRE_LLAMA_CACHE:-$HOME/.cache/quire/llama.cpp}"
LLAMA_PY_VERSION=0.3.36
LLAMA_BENCH="$CACHE/build/bin/llama-bench"
# llama.cpp's speculative decoding examples, the peers of benches/speculation.rs (scripts/bench-spec.sh)
LLAMA_SPECULATIVE="$CACHE/build/bin/llama-speculative"
LLAMA_LOOKUP="$CACHE/build/bin/llama-lookup"

build_llama() {
    if [[ -x "$LLAMA_BENCH" && -x "$LLAMA_SPECULATIVE" && -x "$LLAMA_LOOKUP" ]]; then return; fi
    command -v cmake >/dev/null || { echo "cmake is needed (apt-get install cmake)" >&2; exit 1; }
    mkdir -p "$CACHE"
    local sdist
    sdist="$(ls "$CACHE"/llama_cpp_python-"$LLAMA_PY_VERSION".tar.gz 2>/dev/null || true)"
    if [[ -z "$sdist" ]]; then
        python3 -m pip download --no-binary :all: --no-deps -d "$CACHE" \
            "llama-cpp-python==$LLAMA_PY_VERSION" >&2
        sdist="$(ls "$CACHE"/llama_cpp_python-"$LLAMA_PY_VERSION".tar.gz)"
    fi
    rm -rf "$CACHE/src"
    mkdir -p "$CACHE/src"
    tar -xzf "$sdist" -C "$CACHE/src" --strip-components=1
    # Native AVX-512 flags but no AMX: AMX tiles are listed in /proc/cpuinfo on some of these VMs yet
    # fault (SIGILL on tilezero), and the comparison is meant to be AVX-512 VNNI against AVX-512 VNNI.
    local avx512=OFF
    grep -q avx512_vnni /proc/cpuinfo && avx512=ON
    cmake -S "$CACHE/src/vendor/llama.cpp" -B "$CACHE/build" -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
        -DGGML_AVX512=$avx512 -DGGML_AVX512_VNNI=$avx512 -DGGML_AVX512_VBMI=$avx512 -DGGML_AVX512_BF16=$avx512 \
        -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_OPENMP=ON \
        -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=ON \
        -DLLAMA_BUILD_SERVER=OFF >&2
    cmake --build "$CACHE/build" --target llama-bench llama-speculative llama-lookup -j "$(nproc)" >&2
}

if [[ "${1:-}" == "--build-only" ]]; then
    build_llama
    echo "$LLAMA_BENCH"
    exit 0
fi

MODEL="${1:?usage: scripts/bench-vs-llamacpp.sh MODEL.gguf [-p 512] [-n 128] [-r 3] [-t THREADS] [--no-write]}"
shift
PP=512 TG=128 REPS=3 THREADS="$(nproc)" WRITE=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        -p) PP="$2"; shift 2 ;;
        -n) TG="$2"; shift 2 ;;
        -r) REPS="$2"; shift 2 ;;
        -t) THREADS="$2"; shift 2 ;;
        --no-write) WRITE=0; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

build_llama
(cd "$ROOT" && cargo build --release --bin quire >&2)
if ! (cd "$ROOT" && cargo build --release -p quire-kernels --example stream_read >&2); then
    rm -f "$ROOT/target/release/examples/stream_read" # never measure with a stale binary
fi
QUIRE="$ROOT/target/release/quire"

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
# Best GB/s a streaming reader gets with THREADS threads (empty where the example cannot run).
stream_limit() {
    "$ROOT/target/release/examples/stream_read" 2 3 "$THREADS" 2>/dev/null | awk '/^best/ {print $2}' || true
}
echo "memory: streaming read, $THREADS threads" >&2
stream_limit >"$OUT/stream-0"
QUIRE_CMD=("$QUIRE" bench -m "$MODEL" -p "$PP" -n "$TG" -r 1 -t "$THREADS" --json)
LLAMA_CMD=("$LLAMA_BENCH" -m "$MODEL" -p "$PP" -n "$TG" -r 1 -t "$THREADS" -o json)
for i in $(seq 1 "$REPS"); do
    echo "round $i/$REPS: quire" >&2
    /usr/bin/time -f '%M' -o "$OUT/quire-rss-$i" "${QUIRE_CMD[@]}" >"$OUT/quire-$i.json"
    echo "round $i/$REPS: llama.cpp" >&2
    /usr/bin/time -f '%M' -o "$OUT/llama-rss-$i" "${LLAMA_CMD[@]}" >"$OUT/llama-$i.json" 2>"$OUT/llama-$i.err"
done
stream_limit >"$OUT/stream-1"

python3 - "$OUT" "$REPS" "$MODEL" "$PP" "$TG" "$THREADS" "$WRITE" "$ROOT/benches/RESULTS.md" \
    "${QUIRE_CMD[*]}" "${LLAMA_CMD[*]}" <<'PY'
import json, os, statistics, sys, datetime, platform, subprocess
out, reps, model, pp, tg, threads, write, results, qcmd, lcmd = sys.argv[1:]
reps = int(reps)
def stats(xs):
    m = statistics.mean(xs)
    return m, (statistics.stdev(xs) if len(xs) > 1 else 0.0)
q_pp, q_tg, l_pp, l_tg, q_rss, l_rss = [], [], [], [], [], []
for i in range(1, reps + 1):
    q = json.load(open(f"{out}/quire-{i}.json"))
    q_pp.append(q["pp_tps"]); q_tg.append(q["tg_tps"])
    for r in json.load(open(f"{out}/llama-{i}.json")):
        if r.get("n_gen", 0) == 0 and r.get("n_prompt", 0) > 0:
            l_pp.append(r["avg_ts"])
        elif r.get("n_gen", 0) > 0:
            l_tg.append(r["avg_ts"])
    q_rss.append(int(open(f"{out}/quire-rss-{i}").read().split()[-1]) / 1024)
    l_rss.append(int(open(f"{out}/llama-rss-{i}").read().split()[-1]) / 1024)
cpu = "unknown"
for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip(); break
size = os.path.getsize(model) / 1e9
date = datetime.date.today().isoformat()
limits = []
for i in (0, 1):
    try:
        limits.append(float(open(f"{out}/stream-{i}").read().strip()))
    except (OSError, ValueError):
        pass
limit = max(limits) if limits else None
def row(name, qs, ls, unit="t/s"):
    qm, qs_ = stats(qs); lm, ls_ = stats(ls)
    return f"| {name} | {qm:.2f} ± {qs_:.2f} | {lm:.2f} ± {ls_:.2f} | {qm / lm:.2f}× |"
lines = [
    f"### {os.path.basename(model)} ({size:.2f} GB), {date}",
    "",
    f"Machine: {cpu}, {os.cpu_count()} cores, {threads} threads. Runs alternate quire / llama.cpp, {reps} rounds.",
    f"quire: `{qcmd}`; llama.cpp (llama-cpp-python 0.3.36 vendor, CPU, AVX-512, no AMX): `{lcmd}`.",
    "",
    "| test | quire | llama.cpp | quire / llama.cpp |",
    "|---|---|---|---|",
    row(f"pp{pp} t/s", q_pp, l_pp),
    row(f"tg{tg} t/s", q_tg, l_tg),
    f"| peak RSS MB | {max(q_rss):.0f} | {max(l_rss):.0f} | {max(q_rss) / max(l_rss):.2f}× |",
]
if limit:
    # Decoding reads every weight once per token: the file's bytes per token, against the streaming limit.
    # (Right for tied embeddings, as Qwen3-4B's: the table is the output head. With separate embeddings only
    # one row of the table is read per token, and this overstates the rate by the table's share of the file.)
    qg, lg = stats(q_tg)[0] * size, stats(l_tg)[0] * size
    lines += [
        f"| tg{tg} weight GB/s (% of the {limit:.1f} GB/s streaming limit) | {qg:.1f} ({100 * qg / limit:.0f} %) "
        f"| {lg:.1f} ({100 * lg / limit:.0f} %) | |",
        "",
        f"Streaming limit: best of `stream_read 2 3 {threads}` "
        + ("before and after the rounds" if len(limits) == 2 else "in one of its two runs (the other failed)")
        + f" ({', '.join(f'{x:.1f}' for x in limits)} GB/s).",
    ]
lines.append("")
text = "\n".join(lines)
print(text)
if write == "1":
    # New tables go just above the marker line of the speed section (so other sections of the file stay
    # where they are); without the marker they are appended.
    marker = "<!-- bench-vs-llamacpp: new tables go above this line -->"
    body = open(results).read() if os.path.exists(results) else ""
    if marker in body:
        body = body.replace(marker, text + "\n" + marker, 1)
    else:
        body += "\n" + text
    with open(results, "w") as f:
        f.write(body)
PY
