#!/usr/bin/env bash
# Convert a Hugging Face Qwen3 / Qwen2 checkpoint to a GGUF file Quire (and llama.cpp) can serve.
#
#   scripts/convert.sh HF_DIR_OR_REPO_ID [TYPE]
#
#   HF_DIR_OR_REPO_ID  a local model directory (config.json, tokenizer.json, *.safetensors), or a Hugging Face
#                      repo id such as Qwen/Qwen3-4B-Instruct-2507 (downloaded first with `hf` or
#                      `huggingface-cli` when one is installed; otherwise the script prints what to run)
#   TYPE               q4_k_m (default), q4_0, q4_1, q5_0, q5_1, q8_0, q6_k, q3_k_m, q2_k, iq4_nl, iq4_xs,
#                      f16, bf16 or f32
#
# Writes models/<name>-<type>.gguf, <name> being the directory or repo name in lower case, and prints that
# path on stdout. Builds `quire` (release) first if needed; QUIRE_BIN=path/to/quire uses that binary instead.
# Downloads go to $QUIRE_HF_DIR/<repo name> (default models/hf/).
set -euo pipefail

usage() {
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
[ $# -ge 1 ] && [ $# -le 2 ] || usage
case "$1" in -h | --help) usage ;; esac

SRC="$1"
TYPE="${2:-q4_k_m}"
case "$TYPE" in
    q4_0 | q4_1 | q5_0 | q5_1 | q8_0 | q4_k_m | q6_k | q3_k_m | q2_k | iq4_nl | iq4_xs | f16 | bf16 | f32) ;;
    *) echo "convert.sh: unknown type '$TYPE' (q4_k_m, q4_0, q4_1, q5_0, q5_1, q8_0, q6_k, q3_k_m, q2_k, iq4_nl, iq4_xs, f16, bf16, f32)" >&2; exit 2 ;;
esac

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# A relative HF_DIR is relative to where the user stands, not to the repository.
if [ -d "$SRC" ]; then
    HF_DIR="$(cd "$SRC" && pwd)"
    NAME="$(basename "$HF_DIR")"
elif [[ "$SRC" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$ ]]; then
    REPO="$SRC"
    NAME="${REPO#*/}"
    DL_ROOT="${QUIRE_HF_DIR:-$ROOT/models/hf}"
    HF_DIR="$DL_ROOT/$NAME"
    complete() { [ -f "$HF_DIR/config.json" ] && { [ -f "$HF_DIR/model.safetensors.index.json" ] || [ -f "$HF_DIR/model.safetensors" ]; }; }
    if complete; then
        echo "convert.sh: using the download in $HF_DIR" >&2
    else
        PATTERNS=("*.json" "*.safetensors" "*.jinja" "merges.txt" "vocab.json")
        if command -v hf >/dev/null 2>&1; then
            echo "convert.sh: downloading $REPO to $HF_DIR ..." >&2
            hf download "$REPO" --local-dir "$HF_DIR" --include "${PATTERNS[@]}" >&2
        elif command -v huggingface-cli >/dev/null 2>&1; then
            echo "convert.sh: downloading $REPO to $HF_DIR ..." >&2
            huggingface-cli download "$REPO" --local-dir "$HF_DIR" --include "${PATTERNS[@]}" >&2
        else
            REL_DIR="${HF_DIR#"$ROOT"/}"
            cat >&2 <<MSG
convert.sh: '$REPO' is not a local directory, and neither \`hf\` nor \`huggingface-cli\` is installed to
download it. Run:

    python3 -m pip install -U huggingface_hub
    hf download $REPO --local-dir $REL_DIR --include '*.json' '*.safetensors' '*.jinja'
    scripts/convert.sh $REL_DIR $TYPE

(from $ROOT; gated models also need \`hf auth login\` first)
MSG
            exit 1
        fi
        complete || { echo "convert.sh: the download in $HF_DIR is incomplete (no config.json or safetensors)" >&2; exit 1; }
    fi
else
    echo "convert.sh: '$SRC' is neither a directory nor a Hugging Face repo id (owner/name)" >&2
    exit 2
fi

if [ -n "${QUIRE_BIN:-}" ]; then
    QUIRE="$QUIRE_BIN"
else
    command -v cargo >/dev/null || { echo "convert.sh: cargo is needed to build quire (https://rustup.rs)" >&2; exit 1; }
    echo "convert.sh: building quire (release) ..." >&2
    (cd "$ROOT" && cargo build --release --quiet --bin quire)
    QUIRE="$ROOT/target/release/quire"
fi

mkdir -p "$ROOT/models"
OUT="$ROOT/models/$(echo "$NAME" | tr '[:upper:]' '[:lower:]')-$TYPE.gguf"
echo "convert.sh: $HF_DIR -> $OUT ($TYPE)" >&2
"$QUIRE" convert "$HF_DIR" -o "$OUT" --type "$TYPE" >&2
echo "$OUT"
