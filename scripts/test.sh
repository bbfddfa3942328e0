#!/usr/bin/env bash
# The test command: fetch the real Qwen2.5-Coder models (1.5B and 0.5B, cached after the first run), then run every test of
# the workspace in release mode, real-model tests included (QUIRE_REQUIRE_REAL=1 turns their skip into a
# failure), then the server end to end (CLI vs API, the official openai client). Extra arguments go to
# `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${QUIRE_SHARED:-$(pwd)/../shared}"
export QUIRE_FIXTURES="${QUIRE_FIXTURES:-$SHARED/fixtures}"
if [ ! -d "$QUIRE_FIXTURES" ]; then
  echo "test.sh: fixtures not found at $QUIRE_FIXTURES (set QUIRE_FIXTURES or QUIRE_SHARED)" >&2
  exit 1
fi
if [ -z "${QUIRE_REAL_MODEL:-}" ]; then
  echo "test.sh: fetching the real model (Qwen2.5-Coder-1.5B-Instruct Q4_K_M, 1.1 GB, cached)..." >&2
  QUIRE_REAL_MODEL="$(bash "$SHARED/scripts/fetch-qwen25-coder.sh")"
fi
if [ -z "${QUIRE_REAL_DRAFT_MODEL:-}" ]; then
  echo "test.sh: fetching the small real model (Qwen2.5-Coder-0.5B-Instruct, mostly Q5_0, 491 MB, cached)..." >&2
  QUIRE_REAL_DRAFT_MODEL="$(bash "$SHARED/scripts/fetch-qwen25-coder-0.5b.sh")"
fi
export QUIRE_REAL_MODEL QUIRE_REAL_DRAFT_MODEL QUIRE_REQUIRE_REAL=1
echo "test.sh: real models at $QUIRE_REAL_MODEL and $QUIRE_REAL_DRAFT_MODEL" >&2
# The kernel tests compare every instruction set the CPU runs with the scalar reference in one process. Where
# /proc/cpuinfo lists a set, a kernel test that finds it missing fails instead of skipping it.
if grep -qw avx512_vnni /proc/cpuinfo && grep -qw avx512bw /proc/cpuinfo && grep -qw avx512vl /proc/cpuinfo; then
  export QUIRE_REQUIRE_ISA=avx512
elif grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo && grep -qw f16c /proc/cpuinfo; then
  export QUIRE_REQUIRE_ISA=avx2
fi
echo "test.sh: required instruction set: ${QUIRE_REQUIRE_ISA:-none}" >&2
cargo test --release --workspace "$@"

# The engine's correctness tests with each instruction set forced for the whole process (the run above uses
# the best one this CPU has): the tiny model against the reference logits, determinism and batching; the
# real-model goldens once more on AVX2 (the scalar path is too slow for a 1.5B model in CI).
for isa in scalar avx2; do
  echo "test.sh: engine tests with QUIRE_ISA=$isa (real-model tests skipped)" >&2
  QUIRE_ISA="$isa" QUIRE_REQUIRE_REAL=0 QUIRE_REAL_MODEL=/nonexistent QUIRE_REAL_DRAFT_MODEL=/nonexistent \
    cargo test --release -p quire-engine "$@"
done
echo "test.sh: real-model goldens with QUIRE_ISA=avx2" >&2
QUIRE_ISA=avx2 cargo test --release -p quire-engine --test real_model goldens_match_llamacpp "$@"
QUIRE_ISA=avx2 cargo test --release -p quire-engine --test real_model q5_0_model_matches_llamacpp "$@"

# End to end through the HTTP server on the real model.
cargo build --release --quiet
echo "test.sh: server vs CLI on the real model" >&2
bash scripts/test-api-matches-run.sh "$QUIRE_REAL_MODEL"
echo "test.sh: the official openai Python client against quire serve" >&2
bash scripts/test-openai-client.sh "$QUIRE_REAL_MODEL"
echo "test.sh: batch jobs: kill -9 and restart, interactive first" >&2
bash scripts/test-batch-server.sh "$QUIRE_REAL_MODEL"
echo "test.sh: the chat page in headless Chromium" >&2
bash scripts/test-browser.sh
