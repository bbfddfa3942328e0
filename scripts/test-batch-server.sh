#!/usr/bin/env bash
# Batch jobs on real `quire serve` processes through the official openai client (server/tests/batch_server.py):
# a server killed with SIGKILL mid-batch and restarted resumes it, each custom_id once, the same texts; and,
# given the real model, an interactive request's time to first token under a full batch stays within 1.5x of
# idle. Usage: scripts/test-batch-server.sh [REAL_MODEL]. Needs target/release/quire (build it first).
set -euo pipefail
cd "$(dirname "$0")/.."
FIXTURES="${QUIRE_FIXTURES:-$(pwd)/../shared/fixtures}"
VENV="${QUIRE_OPENAI_VENV:-target/openai-venv}"
if ! "$VENV/bin/python" -c "import openai" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check openai
fi
"$VENV/bin/python" server/tests/batch_server.py "${QUIRE:-target/release/quire}" "$FIXTURES/tiny-qwen3-q8_0.gguf" "$@"
