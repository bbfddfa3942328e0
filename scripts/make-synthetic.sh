#!/usr/bin/env bash
# Make a random-weight Hugging Face checkpoint of a real model's shape, for benchmarks and tests that must not
# download anything: sharded bf16 safetensors + index, config.json, generation_config.json and the real Qwen3
# tokenizer from the shared fixtures.
#
#   scripts/make-synthetic.sh PRESET DIR [--seed N]
#
#   PRESET  qwen3-4b   Qwen3-4B-Instruct-2507's shape (36 layers, hidden 2560; 8 GB, 3 shards)
#           tiny       2-layer Qwen3 with the full 151,936-token vocabulary (80 MB, 2 shards)
#           tiny-qwen2 the same small shape as a Qwen2 (QKV bias)
#   DIR     a new or empty directory
#
# Then: scripts/convert.sh DIR q4_0. The fixtures are found at $QUIRE_FIXTURES, else ../shared/fixtures.
# Builds `quire` (release) first if needed; QUIRE_BIN=path/to/quire uses that binary instead.
set -euo pipefail

usage() {
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
[ $# -ge 2 ] || usage
PRESET="$1"
DIR="$2"
shift 2

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export QUIRE_FIXTURES="${QUIRE_FIXTURES:-$ROOT/../shared/fixtures}"
if [ -n "${QUIRE_BIN:-}" ]; then
    QUIRE="$QUIRE_BIN"
else
    echo "make-synthetic.sh: building quire (release) ..." >&2
    (cd "$ROOT" && cargo build --release --quiet --bin quire)
    QUIRE="$ROOT/target/release/quire"
fi
"$QUIRE" synth --preset "$PRESET" "$DIR" "$@"
