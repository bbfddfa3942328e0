//! Qwen2/Qwen3 byte-level BPE tokenizer.
//!
//! The vocabulary normally comes from the GGUF file itself (`tokenizer.ggml.*` metadata), so a model file is
//! self-contained; a Hugging Face `tokenizer.json` can be loaded too (tests use it as the reference). Either
//! way the actual encoding is done by the Hugging Face `tokenizers` crate: rather than re-implement BPE, NFC
//! and the pre-tokenizer regex (where subtle divergences are easy — llama.cpp's own tokenizer skips NFC and
//! gets 158/167 of the fixture cases), we build the exact pipeline that Qwen's `tokenizer.json` describes
//! from the GGUF arrays and let the reference implementation run it.
//!
//! Token kinds follow llama.cpp's token types: 1 normal, 3 control, 4 user-defined, 5 unused (padding such
//! as `[PAD151700]`). Control and user-defined tokens are "added tokens": matched whole inside the input
//! text before BPE runs, so `<|im_start|>` or `<think>` written in a prompt become one id each. Only control
//! tokens are "special" (dropped by `decode(.., skip_special = true)`). Unused tokens are never produced by
//! encoding and decode to nothing, as in llama.cpp and transformers (which does not know them at all).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Result};
use serde_json::Value;

use crate::gguf::json_kind;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

/// The Qwen2 pre-tokenizer split regex, verbatim from Qwen's `tokenizer.json` (`pre_tokenizer.pretokenizers[0]
/// .pattern.Regex`). llama.cpp calls this pre-tokenizer `qwen2`; Qwen2, Qwen2.5 and Qwen3 all use it.
/// A test checks it against the fixture `tokenizer.json` so a typo cannot slip in.
pub const QWEN2_PRE_TOKENIZER_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF metadata keys (llama.cpp's names).
const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_PRE: &str = "tokenizer.ggml.pre";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const KEY_MERGES: &str = "tokenizer.ggml.merges";
const KEY_BOS: &str = "tokenizer.ggml.bos_token_id";
const KEY_EOS: &str = "tokenizer.ggml.eos_token_id";
const KEY_PAD: &str = "tokenizer.ggml.padding_token_id";
const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";

/// llama.cpp token types (`llama_token_type`), as stored in `tokenizer.ggml.token_type`.
const TYPE_UNDEFINED: i32 = 0;
const TYPE_NORMAL: i32 = 1;
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;
const TYPE_UNUSED: i32 = 5;
const TYPE_BYTE: i32 = 6;

/// Everything needed to build the tokenizer, as stored in GGUF `tokenizer.ggml.*` metadata.
///
/// Kept as plain data (rather than going straight from metadata to [`Tokenizer`]) so the GGUF reader and
/// the tokenizer stay independent and tests can build small vocabularies by hand.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VocabSpec {
    /// `tokenizer.ggml.model`; only `"gpt2"` (byte-level BPE) is supported.
    pub model: String,
    /// `tokenizer.ggml.pre`; only `"qwen2"` is supported.
    pub pre: String,
    /// Token strings indexed by id, in byte-level form (`Ġ` for space, `Ċ` for newline, ...).
    pub tokens: Vec<String>,
    /// llama.cpp token type per id: 1 normal, 3 control, 4 user-defined, 5 unused, ...
    pub token_types: Vec<i32>,
    /// BPE merges in priority order, each `"left right"` in byte-level symbols.
    pub merges: Vec<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub pad_id: Option<u32>,
    /// Whether [`Tokenizer::encode`] prepends `bos_id`. False for Qwen.
    pub add_bos: bool,
}

impl VocabSpec {
    /// From the GGUF metadata map ([`crate::gguf::GgufFile::metadata`], arrays complete). A map from a reader
    /// that truncates arrays (gguf-rs keeps 3 elements of each `tokenizer.*` array by default) is detected and
    /// reported here rather than failing obscurely later.
    pub fn from_metadata(meta: &BTreeMap<String, Value>) -> Result<VocabSpec> {
        let model = get_string(meta, KEY_MODEL)?;
        check_model(&model)?;
        let pre = get_string(meta, KEY_PRE)?;
        check_pre(&pre)?;
        let tokens = get_string_array(meta, KEY_TOKENS)?;
        ensure!(
            tokens.len() > 3,
            "GGUF `{KEY_TOKENS}` has only {} entries: too few for a vocabulary (truncated by the reader?)",
            tokens.len()
        );
        let token_types = get_i32_array(meta, KEY_TOKEN_TYPE)?;
        let merges = get_string_array(meta, KEY_MERGES)?;
        let spec = VocabSpec {
            model,
            pre,
            tokens,
            token_types,
            merges,
            bos_id: get_opt_u32(meta, KEY_BOS)?,
            eos_id: get_opt_u32(meta, KEY_EOS)?,
            pad_id: get_opt_u32(meta, KEY_PAD)?,
            add_bos: get_opt_bool(meta, KEY_ADD_BOS)?.unwrap_or(false),
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Consistency checks shared by `from_metadata` and `Tokenizer::from_vocab` (a spec can be built by hand).
    fn validate(&self) -> Result<()> {
        check_model(&self.model)?;
        check_pre(&self.pre)?;
        ensure!(!self.tokens.is_empty(), "tokenizer vocabulary is empty");
        ensure!(
            self.token_types.len() == self.tokens.len(),
            "`{KEY_TOKEN_TYPE}` has {} entries but `{KEY_TOKENS}` has {}",
            self.token_types.len(),
            self.tokens.len()
        );
        ensure!(
            u32::try_from(self.tokens.len()).is_ok(),
            "vocabulary of {} tokens does not fit u32 ids",
            self.tokens.len()
        );
        for (name, id) in [("bos", self.bos_id), ("eos", self.eos_id), ("padding", self.pad_id)] {
            if let Some(id) = id {
                ensure!(
                    (id as usize) < self.tokens.len(),
                    "{name} token id {id} is out of range (vocabulary has {} tokens)",
                    self.tokens.len()
                );
            }
        }
        ensure!(
            !self.add_bos || self.bos_id.is_some(),
            "`{KEY_ADD_BOS}` is true but there is no `{KEY_BOS}`"
        );
        Ok(())
    }
}

fn check_model(model: &str) -> Result<()> {
    ensure!(
        model == "gpt2",
        "unsupported tokenizer model `{model}` (`{KEY_MODEL}`): Quire supports only byte-level BPE (`gpt2`), \
         as used by Qwen2/Qwen3"
    );
    Ok(())
}

fn check_pre(pre: &str) -> Result<()> {
    ensure!(
        pre == "qwen2",
        "unsupported pre-tokenizer `{pre}` (`{KEY_PRE}`): Quire supports only `qwen2` (Qwen2/Qwen2.5/Qwen3)"
    );
    Ok(())
}

fn get<'m>(meta: &'m BTreeMap<String, Value>, key: &str) -> Result<&'m Value> {
    meta.get(key).ok_or_else(|| anyhow!("GGUF metadata has no `{key}`: the file carries no usable tokenizer"))
}

fn get_string(meta: &BTreeMap<String, Value>, key: &str) -> Result<String> {
    let v = get(meta, key)?;
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("GGUF `{key}` should be a string, found {}", json_kind(v)))
}

fn get_array<'m>(meta: &'m BTreeMap<String, Value>, key: &str) -> Result<&'m Vec<Value>> {
    let v = get(meta, key)?;
    v.as_array().ok_or_else(|| anyhow!("GGUF `{key}` should be an array, found {}", json_kind(v)))
}

fn get_string_array(meta: &BTreeMap<String, Value>, key: &str) -> Result<Vec<String>> {
    get_array(meta, key)?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("GGUF `{key}`[{i}] should be a string, found {}", json_kind(v)))
        })
        .collect()
}

fn get_i32_array(meta: &BTreeMap<String, Value>, key: &str) -> Result<Vec<i32>> {
    get_array(meta, key)?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_i64()
                .and_then(|x| i32::try_from(x).ok())
                .ok_or_else(|| anyhow!("GGUF `{key}`[{i}] should be a 32-bit integer, found {v}"))
        })
        .collect()
}

fn get_opt_u32(meta: &BTreeMap<String, Value>, key: &str) -> Result<Option<u32>> {
    match meta.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| anyhow!("GGUF `{key}` should be a token id (u32), found {v}")),
    }
}

fn get_opt_bool(meta: &BTreeMap<String, Value>, key: &str) -> Result<Option<bool>> {
    match meta.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| anyhow!("GGUF `{key}` should be a bool, found {}", json_kind(v))),
    }
}

/// What a token id is, which decides how it is matched, decoded and skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Produced by BPE; decoded through the byte-level map.
    Normal,
    /// Added, special: matched whole in text, skipped by `skip_special` decoding.
    Control,
    /// Added, not special: matched whole in text, always decoded.
    UserDefined,
    /// Padding or an id no one defines (or a duplicate string): never produced, decodes to nothing.
    Unused,
}

/// A Qwen2/Qwen3 tokenizer: the Hugging Face pipeline plus the per-id facts generation needs
/// (end-of-generation ids, which ids are control tokens, their raw bytes for streaming).
#[derive(Clone)]
pub struct Tokenizer {
    hf: tokenizers::Tokenizer,
    /// Kind of every id in `0..vocab_size`.
    kinds: Vec<Kind>,
    /// Tokens the HF pipeline does not know (unused/padding, duplicates), so `token_to_id`/`id_to_token` still
    /// answer for every id of the GGUF vocabulary.
    extra_by_name: HashMap<String, u32>,
    extra_by_id: HashMap<u32, String>,
    eog: Vec<u32>,
    bos_id: Option<u32>,
    add_bos: bool,
}

impl std::fmt::Debug for Tokenizer {
    // The HF tokenizer's Debug would print the whole added vocabulary; the summary is what helps.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.kinds.len())
            .field("eog", &self.eog)
            .field("bos_id", &self.bos_id)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

/// The three ByteLevel components (pre-tokenizer, post-processor, decoder) all use these settings in Qwen's
/// `tokenizer.json`: no prefix space, no offset trimming, and no built-in GPT-2 regex (the Split step
/// before it already did the splitting with Qwen's own regex).
fn qwen_byte_level() -> ByteLevel {
    ByteLevel::new(false, false, false)
}

impl Tokenizer {
    /// Builds the tokenizer from a GGUF vocabulary: BPE over the normal tokens and merges, NFC normalizer,
    /// `Split(Qwen2 regex, Isolated)` + `ByteLevel` pre-tokenizer, `ByteLevel` decoder, and the control and
    /// user-defined tokens registered as added tokens at their GGUF ids.
    pub fn from_vocab(spec: &VocabSpec) -> Result<Tokenizer> {
        spec.validate()?;
        // Indexing the vocabulary and splitting the merges are independent (~50 ms each for Qwen's 152k):
        // do them side by side.
        let (index, merges) = rayon::join(|| index_vocab(spec), || parse_merges(&spec.merges));
        let VocabIndex { vocab, kinds, extra_by_name, extra_by_id, added } = index?;
        let merges = merges?;

        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| anyhow!("cannot build BPE model from the GGUF vocabulary: {e}"))?;
        let split = Split::new(
            SplitPattern::Regex(QWEN2_PRE_TOKENIZER_REGEX.to_owned()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| anyhow!("cannot compile the qwen2 pre-tokenizer regex: {e}"))?;

        let mut hf = tokenizers::Tokenizer::new(bpe);
        hf.with_normalizer(Some(NFC));
        hf.with_pre_tokenizer(Some(Sequence::new(vec![
            PreTokenizerWrapper::Split(split),
            PreTokenizerWrapper::ByteLevel(qwen_byte_level()),
        ])));
        hf.with_post_processor(Some(qwen_byte_level()));
        hf.with_decoder(Some(qwen_byte_level()));
        let added_tokens: Vec<AddedToken> = added.iter().map(|(t, _)| t.clone()).collect();
        hf.add_tokens(&added_tokens);
        for (t, id) in &added {
            ensure!(
                hf.token_to_id(&t.content) == Some(*id),
                "added token {:?} did not keep its GGUF id {id}",
                t.content
            );
        }

        Ok(Self::assemble(hf, kinds, extra_by_name, extra_by_id, spec.eos_id, spec.bos_id, spec.add_bos))
    }

    /// Loads a Hugging Face `tokenizer.json` as is (it fully describes its own pipeline). Added tokens marked
    /// special are control tokens, other added tokens user-defined; there is no BOS (Qwen uses none) and the
    /// end-of-generation ids are found by name.
    pub fn from_file(tokenizer_json: &Path) -> Result<Tokenizer> {
        let hf = tokenizers::Tokenizer::from_file(tokenizer_json)
            .map_err(|e| anyhow!("cannot load tokenizer {}: {e}", tokenizer_json.display()))?;
        let vocab = hf.get_vocab(true);
        let n = vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0);
        ensure!(n > 0, "tokenizer {} has an empty vocabulary", tokenizer_json.display());
        let mut kinds = vec![Kind::Unused; n];
        for &id in vocab.values() {
            kinds[id as usize] = Kind::Normal;
        }
        for (id, t) in hf.get_added_tokens_decoder() {
            if let Some(k) = kinds.get_mut(id as usize) {
                *k = if t.special { Kind::Control } else { Kind::UserDefined };
            }
        }
        Ok(Self::assemble(hf, kinds, HashMap::new(), HashMap::new(), None, None, false))
    }

    fn assemble(
        hf: tokenizers::Tokenizer,
        kinds: Vec<Kind>,
        extra_by_name: HashMap<String, u32>,
        extra_by_id: HashMap<u32, String>,
        eos_id: Option<u32>,
        bos_id: Option<u32>,
        add_bos: bool,
    ) -> Tokenizer {
        // Qwen chat models end a turn with <|im_end|>; base-model style completions end with <|endoftext|>.
        // Either one must stop generation whatever the file's eos says.
        let mut eog = Vec::new();
        let named = ["<|im_end|>", "<|endoftext|>"].into_iter().filter_map(|t| hf.token_to_id(t));
        for id in named.chain(eos_id) {
            if !eog.contains(&id) {
                eog.push(id);
            }
        }
        Tokenizer { hf, kinds, extra_by_name, extra_by_id, eog, bos_id, add_bos }
    }

    /// Encodes text. Added tokens (`<|im_start|>`, `<think>`, ...) written in the text are recognised and
    /// become single ids, as transformers does for Qwen chat prompts; BOS is prepended only if `add_bos`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.hf.encode_fast(text, false).map_err(|e| anyhow!("tokenization failed: {e}"))?;
        let ids = enc.get_ids();
        let mut out = Vec::with_capacity(ids.len() + 1);
        if self.add_bos {
            out.extend(self.bos_id);
        }
        out.extend_from_slice(ids);
        Ok(out)
    }

    /// Decodes ids to text (invalid UTF-8 becomes U+FFFD). Control tokens are dropped when `skip_special`;
    /// unused/padding ids always decode to nothing. An id outside the vocabulary is an error, since it means
    /// a bug upstream (e.g. sampling past the vocabulary).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.kinds.len()) {
            bail!("token id {bad} is out of range (vocabulary has {} tokens)", self.kinds.len());
        }
        self.hf.decode(ids, skip_special).map_err(|e| anyhow!("detokenization failed: {e}"))
    }

    /// Number of token ids: for a GGUF vocabulary the full (padded) size, which matches the model's
    /// embedding rows; for a `tokenizer.json`, one past the largest id.
    pub fn vocab_size(&self) -> usize {
        self.kinds.len()
    }

    pub fn token_to_id(&self, tok: &str) -> Option<u32> {
        self.hf.token_to_id(tok).or_else(|| self.extra_by_name.get(tok).copied())
    }

    /// The token's string as stored in the vocabulary (byte-level form for normal tokens, e.g. `Ġhello`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        if let Some(t) = self.extra_by_id.get(&id) {
            return Some(t.clone());
        }
        self.hf.id_to_token(id)
    }

    /// End-of-generation ids: `<|im_end|>`, `<|endoftext|>` (when present) and the file's eos id.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// Control (special) tokens: the ones `decode(.., skip_special = true)` drops.
    pub fn is_control(&self, id: u32) -> bool {
        self.kinds.get(id as usize) == Some(&Kind::Control)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Raw bytes of one token, exactly what `decode` contributes for it before UTF-8 assembly: byte-level
    /// decoded for BPE tokens (so a token may hold part of a character), the text itself for added tokens,
    /// nothing for unused/padding or out-of-range ids. No NFC. Used for streaming and per-token debugging.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        match self.kinds.get(id as usize) {
            None | Some(Kind::Unused) => Vec::new(),
            Some(_) => self.hf.id_to_token(id).map(|t| byte_level_bytes(&t)).unwrap_or_default(),
        }
    }
}

/// The GGUF vocabulary sorted out for the HF builder: what BPE gets, and what the added vocabulary gets.
struct VocabIndex {
    /// Normal, control and user-defined tokens at their GGUF ids.
    vocab: Vocab,
    kinds: Vec<Kind>,
    extra_by_name: HashMap<String, u32>,
    extra_by_id: HashMap<u32, String>,
    /// Control and user-defined tokens, with the id each must keep.
    added: Vec<(AddedToken, u32)>,
}

fn index_vocab(spec: &VocabSpec) -> Result<VocabIndex> {
    let n = spec.tokens.len();
    let mut ix = VocabIndex {
        vocab: Vocab::with_capacity(n),
        kinds: Vec::with_capacity(n),
        extra_by_name: HashMap::new(),
        extra_by_id: HashMap::new(),
        added: Vec::new(),
    };
    for (i, (tok, &ty)) in spec.tokens.iter().zip(&spec.token_types).enumerate() {
        let id = i as u32;
        let mut kind = match ty {
            TYPE_UNDEFINED | TYPE_NORMAL | TYPE_BYTE => Kind::Normal,
            // llama.cpp matches unknown-type tokens inside text like control tokens.
            TYPE_UNKNOWN | TYPE_CONTROL => Kind::Control,
            TYPE_USER_DEFINED => Kind::UserDefined,
            TYPE_UNUSED => Kind::Unused,
            other => bail!("token {id} ({tok:?}) has unknown token type {other} in `{KEY_TOKEN_TYPE}`"),
        };
        if tok.is_empty() || (kind != Kind::Unused && ix.vocab.contains_key(tok)) {
            // An empty or duplicate string cannot be told apart from text or from the earlier id; keep the
            // id addressable but never produce it.
            kind = Kind::Unused;
        }
        match kind {
            Kind::Unused => {
                ix.extra_by_name.entry(tok.clone()).or_insert(id);
                ix.extra_by_id.insert(id, tok.clone());
            }
            _ => {
                // Added tokens go into the BPE vocabulary too, so the HF added vocabulary finds them there
                // and keeps their GGUF ids (instead of numbering them after the model's size).
                ix.vocab.insert(tok.clone(), id);
                let special = match kind {
                    Kind::Control => Some(true),
                    Kind::UserDefined => Some(false),
                    _ => None,
                };
                if let Some(special) = special {
                    ix.added.push((AddedToken::from(tok.clone(), special).normalized(false), id));
                }
            }
        }
        ix.kinds.push(kind);
    }
    Ok(ix)
}

fn parse_merges(merges: &[String]) -> Result<Vec<(String, String)>> {
    merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            parse_merge(m).ok_or_else(|| anyhow!("GGUF `{KEY_MERGES}`[{i}] = {m:?} is not \"left right\""))
        })
        .collect()
}

/// Splits a GGUF merge `"left right"`. Byte-level symbols never contain a plain space, so the separator is
/// the first space after the first character (searching from 1, as llama.cpp does, in case `left` itself
/// were a lone space in some odd vocabulary).
fn parse_merge(m: &str) -> Option<(String, String)> {
    let first = m.chars().next()?.len_utf8();
    let pos = first + m[first..].find(' ')?;
    let (a, b) = (&m[..pos], &m[pos + 1..]);
    if a.is_empty() || b.is_empty() {
        return None;
    }
    Some((a.to_owned(), b.to_owned()))
}

/// GPT-2's byte-to-unicode table reversed: index = the char's code point (all fall below 324), value = the
/// byte it stands for, or -1. Printable Latin-1 bytes map to themselves, the other 68 to U+0100.. in order.
const BYTE_DECODER: [i16; 324] = {
    let mut table = [-1i16; 324];
    let mut next = 256usize;
    let mut b = 0usize;
    while b < 256 {
        let printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        if printable {
            table[b] = b as i16;
        } else {
            table[next] = b as i16;
            next += 1;
        }
        b += 1;
    }
    table
};

/// Bytes of a token string under the ByteLevel decoder's rule: every char through the byte map, or, if
/// any char is outside it (an added token like `<|im_end|>` is ASCII and maps to itself, but one with a
/// space or newline would not), the string's own UTF-8 bytes. Matching the HF rule exactly keeps
/// `StreamDecoder` output identical to `decode`.
fn byte_level_bytes(tok: &str) -> Vec<u8> {
    let mapped: Option<Vec<u8>> = tok
        .chars()
        .map(|c| match BYTE_DECODER.get(c as usize) {
            Some(&b) if b >= 0 => Some(b as u8),
            _ => None,
        })
        .collect();
    mapped.unwrap_or_else(|| tok.as_bytes().to_vec())
}

/// Incremental detokenizer for streaming. BPE tokens can end in the middle of a UTF-8 character (emoji
/// and rarer CJK characters are often two or three tokens), so bytes are held back until the character is
/// complete: every returned chunk is whole text, and the chunks concatenate to exactly what
/// [`Tokenizer::decode`] returns for the same ids. Bytes that can never become valid UTF-8 are emitted as
/// U+FFFD as soon as that is certain, the same way `decode` renders them.
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    skip_special: bool,
    pending: Vec<u8>,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(tok: &'a Tokenizer, skip_special: bool) -> Self {
        StreamDecoder { tok, skip_special, pending: Vec::new() }
    }

    /// Adds one token and returns the text it completes (often empty mid-character). A skipped control
    /// token leaves pending bytes pending, like `decode`, which simply leaves it out of the byte stream.
    pub fn push(&mut self, id: u32) -> String {
        if self.skip_special && self.tok.is_control(id) {
            return String::new();
        }
        self.pending.extend_from_slice(&self.tok.token_bytes(id));
        self.drain(false)
    }

    /// Flushes whatever is left; an unfinished character becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        self.drain(true)
    }

    fn drain(&mut self, last: bool) -> String {
        let mut out = String::new();
        let mut start = 0;
        while start < self.pending.len() {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // Checked valid by from_utf8 just above.
                    out.push_str(
                        std::str::from_utf8(&self.pending[start..start + valid]).unwrap_or_default(),
                    );
                    match e.error_len() {
                        // Invalid no matter what follows: same single U+FFFD as from_utf8_lossy.
                        Some(len) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start += valid + len;
                        }
                        // A character cut short at the end: wait for more bytes unless this is the end.
                        None => {
                            if last {
                                out.push(char::REPLACEMENT_CHARACTER);
                                start = self.pending.len();
                            } else {
                                start += valid;
                            }
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_decoder_is_gpt2_table() {
        assert_eq!(BYTE_DECODER['Ġ' as usize], b' ' as i16);
        assert_eq!(BYTE_DECODER['Ċ' as usize], b'\n' as i16);
        assert_eq!(BYTE_DECODER['ĉ' as usize], b'\t' as i16);
        assert_eq!(BYTE_DECODER['A' as usize], b'A' as i16);
        assert_eq!(BYTE_DECODER[' ' as usize], -1);
        let mut seen = [false; 256];
        for &b in BYTE_DECODER.iter().filter(|&&b| b >= 0) {
            assert!(!seen[b as usize], "byte {b} mapped twice");
            seen[b as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn merges_parse() {
        assert_eq!(parse_merge("Ġ t"), Some(("Ġ".into(), "t".into())));
        assert_eq!(parse_merge("ĠĠ ĠĠ"), Some(("ĠĠ".into(), "ĠĠ".into())));
        assert_eq!(parse_merge("ab"), None);
        assert_eq!(parse_merge("a "), None);
        assert_eq!(parse_merge(""), None);
    }

    #[test]
    fn byte_level_bytes_rule() {
        assert_eq!(byte_level_bytes("Ġhello"), b" hello");
        assert_eq!(byte_level_bytes("<|im_end|>"), b"<|im_end|>");
        // A space is not in the byte map: the raw string is used.
        assert_eq!(byte_level_bytes("a b"), b"a b");
    }
}
