# Sourced by the scripts that need a running server: `start_server ARGS...` starts `$QUIRE serve ARGS...
# --port PORT` on a free loopback port (QUIRE defaults to target/release/quire; QUIRE_SERVE, if set, is the
# whole server command instead), stops it when the calling script exits, and waits (at most 120 s) until
# /health says the model is loaded. Sets PORT and SERVER_PID.

start_server() {
  PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  SERVER_LOG="$(mktemp)"
  # shellcheck disable=SC2086  # QUIRE_SERVE is a command line
  ${QUIRE_SERVE:-${QUIRE:-target/release/quire} serve} "$@" --host 127.0.0.1 --port "$PORT" >"$SERVER_LOG" 2>&1 &
  SERVER_PID=$!
  trap 'kill -TERM $SERVER_PID 2>/dev/null || true; wait $SERVER_PID 2>/dev/null || true; rm -f "$SERVER_LOG"' EXIT
  for _ in $(seq 1 240); do
    curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "server exited:" >&2; cat "$SERVER_LOG" >&2; exit 1; }
    sleep 0.5
  done
  echo "server not ready after 120 s" >&2
  cat "$SERVER_LOG" >&2
  exit 1
}
