#!/usr/bin/env bash
# Converter benchmark: a Qwen3-4B-shaped synthetic checkpoint (bf16, 3 shards, 8 GB; made once and cached in
# ~/.cache/quire/synth/qwen3-4b) converted to Q4_0 with `quire convert`, timed with /usr/bin/time -v (wall
# time, peak RSS). Appends a dated section to benches/RESULTS.md with the machine, the load, the command and
# the figures next to llama.cpp's two-step reference. Then checks that `quire run` serves the file.
#
#   benches/convert.sh [--no-write]
#
# The input is read once before the timed run so that it is in the page cache, as it is right after a
# download or right after `quire synth`: the figure is the converter's, not the disk's.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
WRITE=1
[ "${1:-}" = "--no-write" ] && WRITE=0

SYNTH="${QUIRE_SYNTH_DIR:-$HOME/.cache/quire/synth/qwen3-4b}"
OUT="${QUIRE_BENCH_OUT:-$HOME/.cache/quire/bench/qwen3-4b-synth-q4_0.gguf}"
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT

if ! [ -x /usr/bin/time ]; then
    echo "convert bench: installing GNU time ..." >&2
    apt-get install -y -qq time >/dev/null || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
fi
echo "convert bench: building quire (release) ..." >&2
cargo build --release --quiet --bin quire
QUIRE="$ROOT/target/release/quire"

if ! [ -f "$SYNTH/model.safetensors.index.json" ]; then
    echo "convert bench: making the synthetic Qwen3-4B checkpoint in $SYNTH (8 GB, once) ..." >&2
    rm -rf "$SYNTH"
    mkdir -p "$(dirname "$SYNTH")"
    QUIRE_BIN="$QUIRE" bash scripts/make-synthetic.sh qwen3-4b "$SYNTH" -q
fi
mkdir -p "$(dirname "$OUT")"
cat "$SYNTH"/*.safetensors >/dev/null

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
CMD="quire convert $SYNTH -o $OUT --type q4_0"
echo "convert bench: $CMD" >&2
/usr/bin/time -v "$QUIRE" convert "$SYNTH" -o "$OUT" --type q4_0 -q 2>"$LOG" || { cat "$LOG" >&2; exit 1; }
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
grep -E "^wrote" "$LOG" >&2 || true

wall="$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$LOG")"
secs="$(echo "$wall" | awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; printf "%.1f", s }')"
rss_kb="$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$LOG")"
rss_mb="$(awk -v k="$rss_kb" 'BEGIN { printf "%.0f", k / 1024 }')"
cpu="$(sed -n 's/.*Percent of CPU this job got: //p' "$LOG")"
user="$(sed -n 's/.*User time (seconds): //p' "$LOG")"
sys="$(sed -n 's/.*System time (seconds): //p' "$LOG")"
cpu_secs="$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.1f", u + s }')"
size="$(du -h --apparent-size "$OUT" | cut -f1)"
echo "convert bench: ${secs} s wall, ${cpu_secs} CPU-seconds (${cpu}), peak RSS ${rss_mb} MiB, output ${size}" >&2

echo "convert bench: checking that quire serves the file ..." >&2
RUN_OUT="$("$QUIRE" run -m "$OUT" -p hi -n 8 --temp 0 -c 512 2>&1)" || { echo "$RUN_OUT" >&2; exit 1; }
RUN_STATS="$(echo "$RUN_OUT" | grep -E '^prompt:' || true)"
echo "$RUN_STATS" >&2

if [ "$WRITE" = 1 ]; then
    [ -f benches/RESULTS.md ] || printf "# Benchmark results\n\nMeasured figures, newest last. Each section says the machine, the load, the command and the date.\n" >benches/RESULTS.md
    MODEL="$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
    {
        echo
        echo "## Converter: Qwen3-4B (synthetic bf16) → Q4_0, $(date -u +%Y-%m-%d)"
        echo
        echo "Machine: $MODEL, $(nproc) cores, $(free -g | awk '/^Mem:/ { print $2 }') GiB RAM. Load average before / after:"
        echo "$LOAD_BEFORE / $LOAD_AFTER (other work on the box counts against us). Input in the page cache."
        echo
        echo "Command: \`$CMD\` (benches/convert.sh; input made by \`quire synth --preset qwen3-4b\`)"
        echo
        echo "| path | wall time | peak RSS | steps |"
        echo "|---|---|---|---|"
        echo "| quire convert | **${secs} s** (${cpu_secs} CPU-seconds, ${cpu} of one core) | **${rss_mb} MiB** | 1 |"
        echo "| llama.cpp \`convert_hf_to_gguf.py\` → f16, then \`llama-quantize\` q4_0 (reference, same box kind) | 80 s | 3.3 GB | 2 |"
        echo
        echo "CPU-seconds do not depend on the load: on an idle box the wall time is about half of them (2 cores)."
        echo
        echo "Output ${size}; \`quire run -m … -p hi -n 8\` serves it: ${RUN_STATS:-(no stats line)}"
    } >>benches/RESULTS.md
    echo "convert bench: appended to benches/RESULTS.md" >&2
fi
