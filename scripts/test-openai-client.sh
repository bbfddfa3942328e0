#!/usr/bin/env bash
# The official `openai` Python package against `quire serve`, unmodified: creates a venv (cached under
# target/), pip-installs openai, starts the server on a free loopback port, runs server/tests/openai_client.py,
# and stops the server.
#   scripts/test-openai-client.sh [MODEL.gguf]      (default: the tiny fixture model)
# QUIRE_SERVE overrides the server command (default: target/release/quire serve; build it first).
set -euo pipefail
cd "$(dirname "$0")/.."
FIXTURES="${QUIRE_FIXTURES:-$(pwd)/../shared/fixtures}"
MODEL="${1:-$FIXTURES/tiny-qwen3-q8_0.gguf}"
SERVE="${QUIRE_SERVE:-target/release/quire serve}"
VENV="${QUIRE_OPENAI_VENV:-target/openai-venv}"

if ! "$VENV/bin/python" -c "import openai" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check openai
fi

PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
LOG="$(mktemp)"
# shellcheck disable=SC2086  # SERVE is a command line
$SERVE -m "$MODEL" --host 127.0.0.1 --port "$PORT" >"$LOG" 2>&1 &
PID=$!
cleanup() { kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -f "$LOG"; }
trap cleanup EXIT

# Wait (bounded) for the model to load: /health turns from 503 to 200.
for _ in $(seq 1 240); do
  if curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$PID" 2>/dev/null; then echo "server exited:" >&2; cat "$LOG" >&2; exit 1; fi
  sleep 0.5
done
curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null || { echo "server not ready after 120 s" >&2; cat "$LOG" >&2; exit 1; }

"$VENV/bin/python" server/tests/openai_client.py "$PORT"
