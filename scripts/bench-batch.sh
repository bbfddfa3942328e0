#!/usr/bin/env bash
# The batch benchmark of benches/RESULTS.md: N short content requests (default 200) on one server, a
# sequential client loop vs one batch through the Batch API at --parallel P (default 4).
# Usage: scripts/bench-batch.sh MODEL [N] [P]. Builds target/release/quire first.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${QUIRE_OPENAI_VENV:-target/openai-venv}"
if ! "$VENV/bin/python" -c "import openai" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check openai
fi
cargo build --release --quiet --bin quire
echo "| run | requests | wall s | tokens | tok/s | speed-up |"
echo "|---|---:|---:|---:|---:|---:|"
"$VENV/bin/python" benches/batch_vs_loop.py target/release/quire "$@"
