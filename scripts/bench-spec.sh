#!/usr/bin/env bash
# Speculative decoding benchmark (benches/speculation.rs) on the real Qwen2.5-Coder-1.5B with the real 0.5B as
# the draft model, with llama.cpp's llama-lookup and llama-speculative on the same files in the same run, and
# optionally prompt lookup on a Qwen3-4B-shaped file (the cost side: a model where a pass costs more).
#
#   scripts/bench-spec.sh [--4b FILE.gguf] [--no-write]
#
# Models come from ../shared/scripts/fetch-qwen25-coder{,-0.5b}.sh (cached); llama.cpp is built once by
# scripts/bench-vs-llamacpp.sh --build-only. Appends a dated section to benches/RESULTS.md unless --no-write.
# QUIRE_BENCH_TOKENS / QUIRE_BENCH_ROUNDS / QUIRE_BENCH_TASKS pass through (see benches/speculation.rs).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SHARED="${QUIRE_SHARED:-$ROOT/../shared}"
FOURB="" WRITE=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --4b) FOURB="$2"; shift 2 ;;
        --no-write) WRITE=0; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
TARGET="$(bash "$SHARED/scripts/fetch-qwen25-coder.sh")"
DRAFT="$(bash "$SHARED/scripts/fetch-qwen25-coder-0.5b.sh")"
LLAMA_BIN="$(dirname "$(bash "$ROOT/scripts/bench-vs-llamacpp.sh" --build-only)")"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

cd "$ROOT"
echo "bench-spec: 1.5B with the 0.5B draft, llama.cpp tools from $LLAMA_BIN" >&2
QUIRE_BENCH_MODEL="$TARGET" QUIRE_BENCH_DRAFT="$DRAFT" QUIRE_LLAMA_BIN="$LLAMA_BIN" \
    cargo bench --bench speculation > "$OUT/main.md"
if [[ -n "$FOURB" ]]; then
    echo "bench-spec: prompt lookup on $FOURB" >&2
    QUIRE_BENCH_MODEL="$FOURB" QUIRE_BENCH_MODES=off,lookup QUIRE_BENCH_TASKS=typos,prose \
        QUIRE_BENCH_TOKENS="${QUIRE_BENCH_4B_TOKENS:-64}" QUIRE_BENCH_ROUNDS=1 \
        cargo bench --bench speculation > "$OUT/4b.md"
fi

{
    echo
    echo "## Speculative decoding, $(date -u +%Y-%m-%d)"
    echo
    echo "Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) vCPU; commit $(git rev-parse --short HEAD)."
    echo "Command: \`scripts/bench-spec.sh${FOURB:+ --4b $(basename "$FOURB")}\` (benches/speculation.rs: greedy, at most ${QUIRE_BENCH_TOKENS:-256} tokens per reply,"
    echo "median of ${QUIRE_BENCH_ROUNDS:-2} rounds, tokens/s from first to last token; 4 streams: 4 copies of the request at once, their prompt"
    echo "prefilled first by an untimed one-token request per slot, all tokens over the slowest stream's time). Every mode's text was checked equal to the text with speculation off."
    echo "Models: $(basename "$TARGET"), draft $(basename "$DRAFT"); llama.cpp: llama-lookup and llama-speculative from the"
    echo "llama-cpp-python 0.3.36 vendor (AVX-512 build, --spec-draft-n-max 8, same prompt text, same threads), run in the same rounds."
    echo
    cat "$OUT/main.md"
    if [[ -s "${OUT}/4b.md" ]]; then
        echo
        echo "Prompt lookup on $(basename "$FOURB") (Qwen3-4B-shaped, random weights; one round):"
        echo
        cat "$OUT/4b.md"
    fi
} > "$OUT/section.md"
cat "$OUT/section.md"
if [[ $WRITE == 1 ]]; then
    cat "$OUT/section.md" >> "$ROOT/benches/RESULTS.md"
    echo "bench-spec: appended to benches/RESULTS.md" >&2
fi
