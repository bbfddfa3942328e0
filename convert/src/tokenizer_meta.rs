//! The `tokenizer.*` GGUF metadata built from a Hugging Face `tokenizer.json` + `tokenizer_config.json`, the
//! way llama.cpp's `convert_hf_to_gguf.py` builds it for Qwen (`get_vocab_base` + `gguf.SpecialVocab`):
//!
//! - `tokenizer.ggml.model` = `gpt2` (byte-level BPE) and `pre` = `qwen2`, after checking that the
//!   pre-tokenizer really is Qwen2's split regex (Quire's tokenizer implements only that one);
//! - one token string per id up to `vocab_size` from `config.json`; ids no token uses become `[PAD<id>]` of
//!   type 5 (unused); added tokens are type 3 (control) when marked special or when they look like
//!   `<|...|>`, else type 4 (user-defined); all others type 1 (normal);
//! - the merges in `"left right"` form;
//! - special-token ids: first `tokenizer_config.json`'s `<x>_token` strings looked up among the added tokens,
//!   then `config.json`'s `<x>_token_id` integers for the ones still unset; `add_bos_token` /
//!   `add_eos_token` when `tokenizer_config.json` states them;
//! - the chat template from `tokenizer_config.json` (or `chat_template.jinja`).
//!
//! The key order is llama.cpp's, so our header lists keys in the same order as theirs.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;

use super::gguf_writer::MetaValue;
use super::hf_config::HfConfig;
use quire_engine::tokenizer::QWEN2_PRE_TOKENIZER_REGEX;

/// llama.cpp token types.
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;
const TOKEN_UNUSED: i32 = 5;

/// Special-token kinds in `gguf.SpecialVocab`'s order, with their GGUF id key and, where llama.cpp has one,
/// their `add_<x>_token` key.
const SPECIAL_TYPES: [(&str, &str, Option<&str>); 7] = [
    ("bos", "tokenizer.ggml.bos_token_id", Some("tokenizer.ggml.add_bos_token")),
    ("eos", "tokenizer.ggml.eos_token_id", Some("tokenizer.ggml.add_eos_token")),
    ("unk", "tokenizer.ggml.unknown_token_id", None),
    ("sep", "tokenizer.ggml.seperator_token_id", Some("tokenizer.ggml.add_sep_token")),
    ("pad", "tokenizer.ggml.padding_token_id", None),
    ("cls", "tokenizer.ggml.cls_token_id", None),
    ("mask", "tokenizer.ggml.mask_token_id", None),
];

/// Reads the tokenizer files of `dir` and returns the `tokenizer.*` metadata entries in llama.cpp's order.
pub fn tokenizer_metadata(dir: &Path, config: &HfConfig) -> Result<Vec<(String, MetaValue)>> {
    let tok_path = dir.join("tokenizer.json");
    let text = std::fs::read_to_string(&tok_path).with_context(|| {
        format!(
            "cannot read {} (quire convert needs the Hugging Face fast tokenizer file)",
            tok_path.display()
        )
    })?;
    let tokenizer: Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", tok_path.display()))?;
    let cfg_path = dir.join("tokenizer_config.json");
    let tok_config: Value = if cfg_path.is_file() {
        let text = std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("cannot read {}", cfg_path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", cfg_path.display()))?
    } else {
        Value::Null
    };
    let jinja_path = dir.join("chat_template.jinja");
    let jinja = if jinja_path.is_file() {
        Some(
            std::fs::read_to_string(&jinja_path)
                .with_context(|| format!("cannot read {}", jinja_path.display()))?,
        )
    } else {
        None
    };
    build(&tokenizer, &tok_config, jinja, config).with_context(|| format!("{}", tok_path.display()))
}

struct AddedToken {
    id: u32,
    content: String,
    special: bool,
}

/// The metadata from parsed files (separate from the file reading so it can be tested on small inputs).
fn build(
    tokenizer: &Value,
    tok_config: &Value,
    jinja: Option<String>,
    config: &HfConfig,
) -> Result<Vec<(String, MetaValue)>> {
    let model = tokenizer.get("model").ok_or_else(|| anyhow!("no \"model\" section"))?;
    let model_type = model.get("type").and_then(Value::as_str).unwrap_or("");
    ensure!(model_type == "BPE", "tokenizer model is {model_type:?}, not the byte-level BPE Qwen uses");
    check_pre_tokenizer(tokenizer)?;

    let vocab = model.get("vocab").and_then(Value::as_object).ok_or_else(|| anyhow!("no model.vocab"))?;
    let added: Vec<AddedToken> = tokenizer
        .get("added_tokens")
        .and_then(Value::as_array)
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|t| {
            Ok(AddedToken {
                id: t.get("id").and_then(Value::as_u64).ok_or_else(|| anyhow!("added token without id"))?
                    as u32,
                content: t
                    .get("content")
                    .and_then(Value::as_str)
                    .ok_or_else(|| anyhow!("added token without content"))?
                    .to_owned(),
                special: t.get("special").and_then(Value::as_bool).unwrap_or(false),
            })
        })
        .collect::<Result<_>>()?;

    // id -> (string, type); added tokens override the base vocabulary entry of the same id, as in
    // transformers' `get_vocab()` / `added_tokens_decoder`.
    let n_vocab = config.vocab_size;
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; n_vocab];
    for (text, id) in vocab {
        let id = id.as_u64().ok_or_else(|| anyhow!("vocab entry {text:?} has no integer id"))? as usize;
        ensure!(
            id < n_vocab,
            "token {text:?} has id {id}, beyond vocab_size {n_vocab} in config.json (the embedding would not hold it)"
        );
        tokens[id] = Some((text.clone(), TOKEN_NORMAL));
    }
    for t in &added {
        let id = t.id as usize;
        ensure!(id < n_vocab, "added token {:?} has id {id}, beyond vocab_size {n_vocab}", t.content);
        let ty = if t.special || looks_special(&t.content) { TOKEN_CONTROL } else { TOKEN_USER_DEFINED };
        // llama.cpp stores user-defined tokens pre-normalized: SentencePiece's "▁" becomes a space.
        let text =
            if ty == TOKEN_USER_DEFINED { t.content.replace('\u{2581}', " ") } else { t.content.clone() };
        tokens[id] = Some((text, ty));
    }
    let (token_strings, token_types): (Vec<String>, Vec<i32>) = tokens
        .into_iter()
        .enumerate()
        .map(|(id, t)| t.unwrap_or_else(|| (format!("[PAD{id}]"), TOKEN_UNUSED)))
        .unzip();

    let merges = merges(model)?;

    let mut out: Vec<(String, MetaValue)> = vec![
        ("tokenizer.ggml.model".into(), MetaValue::Str("gpt2".into())),
        ("tokenizer.ggml.pre".into(), MetaValue::Str("qwen2".into())),
        ("tokenizer.ggml.tokens".into(), MetaValue::StrArray(token_strings)),
        ("tokenizer.ggml.token_type".into(), MetaValue::I32Array(token_types)),
    ];
    if !merges.is_empty() {
        out.push(("tokenizer.ggml.merges".into(), MetaValue::StrArray(merges)));
    }

    // Special ids: tokenizer_config.json strings first, config.json integers for what is still unset.
    let by_content: HashMap<&str, u32> = {
        let mut m = HashMap::new();
        for t in &added {
            m.entry(t.content.as_str()).or_insert(t.id); // the first match, as llama.cpp takes it
        }
        m
    };
    let mut ids: Vec<(&str, u32)> = Vec::new();
    let mut add_flags: Vec<(&str, bool)> = Vec::new();
    let set_id = |ids: &mut Vec<(&str, u32)>, key: &'static str, id: Option<u64>| {
        if let Some(id) = id {
            if (id as usize) < n_vocab && !ids.iter().any(|(k, _)| *k == key) {
                ids.push((key, id as u32));
            }
        }
    };
    for (typ, id_key, add_key) in SPECIAL_TYPES {
        if let (Some(add_key), Some(flag)) =
            (add_key, tok_config.get(format!("add_{typ}_token")).and_then(Value::as_bool))
        {
            add_flags.push((add_key, flag));
        }
        let entry = tok_config.get(format!("{typ}_token"));
        let content = match entry {
            Some(Value::String(s)) => Some(s.as_str()),
            Some(Value::Object(o)) => o.get("content").and_then(Value::as_str),
            _ => None,
        };
        if let Some(content) = content {
            set_id(&mut ids, id_key, by_content.get(content).map(|&id| u64::from(id)));
        }
    }
    for (typ, id_key, _) in SPECIAL_TYPES {
        set_id(&mut ids, id_key, config.raw.get(format!("{typ}_token_id")).and_then(Value::as_u64));
    }
    for (key, id) in ids {
        out.push((key.into(), MetaValue::U32(id)));
    }
    for (key, flag) in add_flags {
        out.push((key.into(), MetaValue::Bool(flag)));
    }

    out.extend(chat_templates(tok_config, jinja)?);
    Ok(out)
}

/// llama.cpp's `does_token_look_special`, for the token forms Qwen uses.
fn looks_special(token: &str) -> bool {
    (token.starts_with("<|") && token.ends_with("|>"))
        || (token.starts_with("<\u{ff5c}") && token.ends_with("\u{ff5c}>"))
        || (token.starts_with("<unused") && token.ends_with('>'))
        || matches!(token, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
}

/// Quire's tokenizer (and llama.cpp's `qwen2` pre-tokenizer) implements one split regex; anything else
/// would tokenize differently, so it is refused here rather than producing a subtly wrong model file.
fn check_pre_tokenizer(tokenizer: &Value) -> Result<()> {
    let pre = tokenizer.get("pre_tokenizer").unwrap_or(&Value::Null);
    let steps: Vec<&Value> = match pre.get("type").and_then(Value::as_str) {
        Some("Sequence") => {
            pre.get("pretokenizers").and_then(Value::as_array).into_iter().flatten().collect()
        }
        Some(_) => vec![pre],
        None => Vec::new(),
    };
    let regex = steps.iter().find_map(|s| {
        (s.get("type").and_then(Value::as_str) == Some("Split"))
            .then(|| s.get("pattern").and_then(|p| p.get("Regex")).and_then(Value::as_str))
            .flatten()
    });
    let byte_level = steps.iter().any(|s| s.get("type").and_then(Value::as_str) == Some("ByteLevel"));
    if regex != Some(QWEN2_PRE_TOKENIZER_REGEX) || !byte_level {
        bail!(
            "the pre-tokenizer is not Qwen2's (Split with the Qwen2 regex + ByteLevel); quire convert only \
             handles the Qwen2/Qwen2.5/Qwen3 tokenizer"
        );
    }
    Ok(())
}

/// The BPE merges as `"left right"` strings (tokenizers writes either that or `["left", "right"]` pairs;
/// a space inside a pair's part is stored as U+0120 'Ġ', as llama.cpp does).
fn merges(model: &Value) -> Result<Vec<String>> {
    let Some(list) = model.get("merges").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    list.iter()
        .map(|m| match m {
            Value::String(s) => Ok(s.clone()),
            Value::Array(pair) if pair.len() == 2 => {
                let part = |v: &Value| -> Result<String> {
                    let s = v.as_str().ok_or_else(|| anyhow!("merge part is not a string"))?;
                    Ok(s.chars().map(|c| if c == ' ' { '\u{120}' } else { c }).collect())
                };
                Ok(format!("{} {}", part(&pair[0])?, part(&pair[1])?))
            }
            _ => bail!("unknown merges format"),
        })
        .collect()
}

/// `tokenizer.chat_template` (and llama.cpp's named variants when `tokenizer_config.json` holds a list).
fn chat_templates(tok_config: &Value, jinja: Option<String>) -> Result<Vec<(String, MetaValue)>> {
    let template = match tok_config.get("chat_template") {
        Some(t) if !t.is_null() => t.clone(),
        _ => match jinja {
            Some(j) => Value::String(j),
            None => return Ok(Vec::new()),
        },
    };
    match template {
        Value::String(s) => Ok(vec![("tokenizer.chat_template".into(), MetaValue::Str(s))]),
        Value::Array(list) => {
            let mut out = Vec::new();
            let mut names = Vec::new();
            for item in list {
                let name = item.get("name").and_then(Value::as_str).unwrap_or_default();
                let text = item.get("template").and_then(Value::as_str).unwrap_or_default();
                if name == "default" {
                    out.push(("tokenizer.chat_template".into(), MetaValue::Str(text.to_owned())));
                } else if !name.is_empty() {
                    out.push((format!("tokenizer.chat_template.{name}"), MetaValue::Str(text.to_owned())));
                    names.push(name.to_owned());
                }
            }
            if !names.is_empty() {
                out.push(("tokenizer.chat_templates".into(), MetaValue::StrArray(names)));
            }
            Ok(out)
        }
        _ => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwen_added_tokens_are_typed_like_llamacpp() {
        assert!(looks_special("<|fim_prefix|>"));
        assert!(!looks_special("<think>"));
        assert!(!looks_special("<tool_call>"));
    }

    #[test]
    fn merges_in_pair_form_are_joined() {
        let m = serde_json::json!({ "merges": [["a", "b"], ["c d", "e"]] });
        assert_eq!(merges(&m).unwrap(), vec!["a b".to_owned(), "c\u{120}d e".to_owned()]);
    }
}
