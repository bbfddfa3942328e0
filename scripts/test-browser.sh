#!/usr/bin/env bash
# Browser tests of the chat page: headless Chromium (Debian's `chromium` package) driven by playwright-core
# (npm), against `quire serve` on the tiny fixture model and, when available, on the real Qwen2.5-Coder
# model (code-block test and the README screenshot). Installs Chromium and playwright-core when missing,
# builds target/release/quire, starts the server(s) on free loopback ports, runs
# server/tests/browser/run.mjs, saves screenshots under test-output/browser/, and always stops the servers.
#
#   scripts/test-browser.sh [--readme-screenshot] [test-name-filter]
#
# --readme-screenshot  also write docs/screenshot.png from the real-model conversation (needs the real model)
# Environment: QUIRE_FIXTURES (default ../shared/fixtures), QUIRE_REAL_MODEL (default: the cached
# ~/.cache/quire/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf if present), QUIRE_REQUIRE_REAL=1 (fail
# instead of skipping the real-model test when there is no real model).
# The last line printed is `N passed, N failed[, N skipped]`; the exit status is non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
OUT="$ROOT/test-output/browser"
mkdir -p "$OUT"

README_SHOT=""
FILTER=""
for a in "$@"; do
  case "$a" in
    --readme-screenshot) README_SHOT="$ROOT/docs/screenshot.png" ;;
    -*) echo "usage: $0 [--readme-screenshot] [test-name-filter]" >&2; exit 2 ;;
    *) FILTER="$a" ;;
  esac
done

log() { echo "test-browser: $*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root to run: $*"; return 1; fi
}
APT_UPDATED=0
apt_install() {
  if [ "$APT_UPDATED" = 0 ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- tools: Chromium, fonts for the Chinese interface, Node.js + npm, curl
if ! command -v chromium >/dev/null; then log "installing chromium (apt)"; apt_install chromium; fi
if command -v fc-list >/dev/null && [ -z "$(fc-list :lang=zh 2>/dev/null | head -1)" ]; then
  log "installing CJK fonts for the Chinese interface screenshots (apt)"
  apt_install fonts-noto-cjk || log "could not install fonts-noto-cjk; Chinese text will show as boxes in screenshots"
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then log "installing nodejs and npm (apt)"; apt_install nodejs npm; fi
if ! command -v curl >/dev/null; then apt_install curl; fi

# --- playwright-core (npm, pinned by server/tests/browser/package-lock.json; it uses our Chromium)
BT="$ROOT/server/tests/browser"
if [ ! -f "$BT/node_modules/playwright-core/package.json" ] ||
   ! node -e "process.exit(require('$BT/node_modules/playwright-core/package.json').version === require('$BT/package.json').dependencies['playwright-core'] ? 0 : 1)"; then
  log "installing playwright-core (npm ci)"
  (cd "$BT" && npm ci --no-audit --no-fund --loglevel=error)
fi

# --- the page must be built from its sources
bash scripts/build-web.sh --check

# --- the binary (a no-op when it is up to date)
log "cargo build --release --bin quire"
cargo build --release --bin quire -q
QUIRE="$ROOT/target/release/quire"

# --- models
SHARED="${QUIRE_SHARED:-$ROOT/../shared}"
FIXTURES="${QUIRE_FIXTURES:-$SHARED/fixtures}"
TINY="$FIXTURES/tiny-qwen3-q8_0.gguf"
[ -f "$TINY" ] || { log "tiny fixture model not found at $TINY (set QUIRE_FIXTURES)"; exit 1; }
REAL_MODEL="${QUIRE_REAL_MODEL:-$HOME/.cache/quire/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf}"
[ -f "$REAL_MODEL" ] || REAL_MODEL=""
if [ -n "$README_SHOT" ] && [ -z "$REAL_MODEL" ]; then
  log "--readme-screenshot needs the real model (set QUIRE_REAL_MODEL)"; exit 1
fi

# --- servers: started here, always stopped on exit
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

# start_server NAME MODEL → sets URL_<NAME>
start_server() {
  local name="$1" model="$2" port
  port="$(free_port)"
  log "starting quire serve ($name model) on 127.0.0.1:$port, log in $OUT/server-$name.log"
  # No API key: the tests talk to the API without one.
  # Its own fresh data dir: batch jobs of earlier runs never show up in the tests.
  rm -rf "$OUT/data-$name"
  env -u QUIRE_API_KEY "$QUIRE" serve -m "$model" --host 127.0.0.1 --port "$port" --data-dir "$OUT/data-$name" \
    >"$OUT/server-$name.log" 2>&1 &
  PIDS+=("$!")
  printf -v "URL_$name" 'http://127.0.0.1:%s/' "$port"
}

wait_ready() {
  local name="$1" url="$2" pid="$3"
  for _ in $(seq 600); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "${url}health" || true)" = 200 ]; then return 0; fi
    kill -0 "$pid" 2>/dev/null || { log "the $name server exited:"; tail -20 "$OUT/server-$name.log" >&2; return 1; }
    sleep 0.2
  done
  log "the $name server did not become ready in 120 s"; tail -20 "$OUT/server-$name.log" >&2; return 1
}

start_server tiny "$TINY"
wait_ready tiny "$URL_tiny" "${PIDS[0]}"
URL_real=""
if [ -n "$REAL_MODEL" ]; then
  start_server real "$REAL_MODEL"
  wait_ready real "$URL_real" "${PIDS[1]}"
else
  log "no real model: the real-model test is skipped (set QUIRE_REAL_MODEL)"
fi

set +e
QUIRE_URL="$URL_tiny" QUIRE_REAL_URL="$URL_real" QUIRE_BROWSER_OUT="$OUT" \
  QUIRE_README_SCREENSHOT="$README_SHOT" node "$BT/run.mjs" ${FILTER:+"$FILTER"}
status=$?
set -e
exit "$status"
