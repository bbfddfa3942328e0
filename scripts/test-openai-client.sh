#!/usr/bin/env bash
# The official `openai` Python package against `quire serve`, unmodified: creates a venv (cached under
# target/), pip-installs openai, starts the server on a free loopback port, runs server/tests/openai_client.py,
# and stops the server.
#   scripts/test-openai-client.sh [MODEL.gguf]      (default: the tiny fixture model)
# CI passes the real model: the tiny model's random weights can fill max_tokens inside the structured-output
# check's JSON string, and the client then raises LengthFinishReasonError (a true report, not a server fault).
# QUIRE_SERVE overrides the server command (default: target/release/quire serve; build it first; see
# scripts/lib/serve.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
FIXTURES="${QUIRE_FIXTURES:-$(pwd)/../shared/fixtures}"
MODEL="${1:-$FIXTURES/tiny-qwen3-q8_0.gguf}"
VENV="${QUIRE_OPENAI_VENV:-target/openai-venv}"

if ! "$VENV/bin/python" -c "import openai" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check openai
fi

source scripts/lib/serve.sh
DATA_DIR="$(mktemp -d)"
start_server -m "$MODEL" --data-dir "$DATA_DIR"

rc=0
"$VENV/bin/python" server/tests/openai_client.py "$PORT" || rc=$?
rm -rf "$DATA_DIR"
exit "$rc"
