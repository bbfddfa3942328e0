//! Constrained decoding: what an answer must match ([`GrammarSpec`]: a JSON Schema, any JSON object, a Lark
//! grammar, a regex), compiled by llguidance against this model's vocabulary ([`Grammars`], one per engine,
//! with a cache of compiled grammars), and the per-sequence state that masks the logits before sampling and
//! advances with every accepted token ([`Constraint`]).
//!
//! llguidance does the grammar work (JSON Schema with `$ref`, `pattern`, length and numeric bounds, Lark,
//! regexes); this module only bridges our vocabulary to its token trie and applies its masks. Control tokens
//! enter the trie as `0xFF` + their text, llguidance's marker for special tokens: grammar text can never
//! produce them, and a Lark grammar can name one as `<|im_end|>`. The end-of-generation ids are the trie's EOS
//! set, allowed exactly when the grammar is complete.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Result};
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};

use crate::tokenizer::Tokenizer;

/// What generated text must match.
#[derive(Clone, Debug, PartialEq)]
pub enum GrammarSpec {
    /// Any JSON object (OpenAI's `response_format: {"type": "json_object"}`).
    JsonObject,
    /// Text valid against a JSON Schema.
    JsonSchema(Value),
    /// A Lark grammar in llguidance's syntax (which can embed `%json {…}` and `%regex {…}`).
    Lark(String),
    /// A regular expression the whole text must match.
    Regex(String),
}

impl GrammarSpec {
    /// The llguidance grammar. JSON comes out compact with one space after `,` and `:` unless the schema
    /// says otherwise (`x-guidance`): free whitespace lets a model pad forever without closing the object.
    fn to_llguidance(&self) -> Result<TopLevelGrammar> {
        Ok(match self {
            GrammarSpec::JsonObject => {
                TopLevelGrammar::from_json_schema(with_layout(json!({"type": "object"})))
            }
            GrammarSpec::JsonSchema(schema) => {
                if !(schema.is_object() || schema.is_boolean()) {
                    bail!(
                        "a JSON Schema must be an object or a boolean, not {}",
                        crate::gguf::json_kind(schema)
                    );
                }
                TopLevelGrammar::from_json_schema(with_layout(schema.clone()))
            }
            GrammarSpec::Lark(text) => {
                if text.trim().is_empty() {
                    bail!("the grammar is empty");
                }
                TopLevelGrammar::from_lark(text.clone())
            }
            GrammarSpec::Regex(rx) => TopLevelGrammar::from_regex(rx),
        })
    }

    /// The cache key: the kind and the exact text (two spellings of one schema compile twice, which is
    /// harmless; one key never stands for two grammars).
    fn key(&self) -> String {
        match self {
            GrammarSpec::JsonObject => "json_object".to_string(),
            GrammarSpec::JsonSchema(s) => format!("json_schema:{s}"),
            GrammarSpec::Lark(g) => format!("lark:{g}"),
            GrammarSpec::Regex(r) => format!("regex:{r}"),
        }
    }
}

/// Adds our JSON layout to a schema that does not set llguidance's own (`x-guidance`).
fn with_layout(mut schema: Value) -> Value {
    if let Value::Object(map) = &mut schema {
        map.entry("x-guidance").or_insert_with(
            || json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
        );
    }
    schema
}

/// Compiled grammars kept per engine, least recently compiled dropped first.
const CACHE_ENTRIES: usize = 64;

/// The grammar compiler of one vocabulary, with its cache. Built once per engine (the token trie of a
/// 152k vocabulary takes a few hundred milliseconds), shared by every request.
pub struct Grammars {
    factory: ParserFactory,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    compiled: HashMap<String, Matcher>,
    order: VecDeque<String>,
}

impl Grammars {
    /// The compiler for `tokenizer`'s vocabulary padded to `vocab_size` ids (the model's logits width).
    pub fn new(tokenizer: &Tokenizer, vocab_size: usize) -> Result<Grammars> {
        let eog = tokenizer.eog_ids();
        let Some(&eos) = eog.first() else {
            bail!("the vocabulary has no end-of-generation token: constrained decoding needs one to end");
        };
        let words: Vec<Vec<u8>> = (0..vocab_size as u32)
            .map(|id| {
                let bytes = tokenizer.token_bytes(id);
                if tokenizer.is_control(id) && !bytes.is_empty() {
                    [&[TokTrie::SPECIAL_TOKEN_MARKER][..], &bytes].concat()
                } else {
                    bytes
                }
            })
            .collect();
        let info = TokRxInfo::new(vocab_size as u32, eos);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(eog);
        let env: TokEnv = Arc::new(VocabEnv { trie });
        let mut factory = ParserFactory::new_simple(&env)?;
        factory.quiet();
        // Errors go back to API clients: the reason, not a dump of the parser's state.
        factory.limits_mut().verbose_errors = false;
        Ok(Grammars { factory, cache: Mutex::new(Cache::default()) })
    }

    /// A fresh constraint for `spec`: compiled on first use, cloned from the cache after that. The error
    /// says why a grammar cannot be used (a syntax error, an unsupported or unsatisfiable schema) in
    /// llguidance's words.
    pub fn compile(&self, spec: &GrammarSpec) -> Result<Constraint> {
        let key = spec.key();
        if let Some(m) = self.lock().compiled.get(&key) {
            return Ok(Constraint::new(m.clone()));
        }
        // Compile outside the lock: a big schema must not hold up requests whose grammar is cached.
        let parser = self.factory.create_parser(spec.to_llguidance()?)?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            bail!("{e}");
        }
        // Some grammars compile yet match nothing (a `$ref` that only refers to itself): find out now, on a
        // copy, rather than fail the request at its first token.
        let first = matcher.clone().compute_mask();
        if !first.is_ok_and(|m| !m.is_zero()) {
            bail!("the grammar matches no text");
        }
        let mut cache = self.lock();
        if !cache.compiled.contains_key(&key) {
            if cache.order.len() >= CACHE_ENTRIES {
                if let Some(old) = cache.order.pop_front() {
                    cache.compiled.remove(&old);
                }
            }
            cache.order.push_back(key.clone());
            cache.compiled.insert(key, matcher.clone());
        }
        Ok(Constraint::new(matcher))
    }

    /// How many compiled grammars the cache holds.
    pub fn cached(&self) -> usize {
        self.lock().compiled.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // The cache holds only finished compilations, so a panic elsewhere cannot leave it half-written.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// llguidance's view of our vocabulary. Tokenizing (used by llguidance only to force tokens, which we do
/// not ask for) is greedy over the trie, so the environment says it is not canonical.
struct VocabEnv {
    trie: TokTrie,
}

impl TokenizerEnv for VocabEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.greedy_tokenize(s)
    }

    fn tokenize_is_canonical(&self) -> bool {
        false
    }
}

/// One sequence's grammar state: which tokens may come next, advanced by each accepted token.
#[derive(Clone)]
pub struct Constraint {
    matcher: Matcher,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint").field("finished", &self.is_finished()).finish()
    }
}

impl Constraint {
    fn new(matcher: Matcher) -> Constraint {
        Constraint { matcher }
    }

    /// Sets the logit of every token the grammar does not allow next to -inf. Fails if the grammar is in an
    /// error state or allows nothing (never expected after a successful compile and accepted tokens).
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        let allowed = self.matcher.compute_mask_or_eos()?;
        if allowed.is_zero() {
            bail!("the grammar allows no token here");
        }
        apply_mask(&allowed, logits);
        Ok(())
    }

    /// Advances the grammar by an accepted token.
    pub fn commit(&mut self, token: u32) -> Result<()> {
        self.matcher.consume_token(token).map_err(|e| anyhow!("token {token} rejected by the grammar: {e}"))
    }

    /// True once the grammar is complete and allows nothing more (generation can end here).
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// True if `token` may come next (for tests; computes a mask).
    pub fn allows(&mut self, token: u32) -> Result<bool> {
        Ok(self.matcher.compute_mask_or_eos()?.is_allowed(token))
    }
}

/// -inf for every id whose bit is clear, 32 ids per mask word; ids past the mask are never allowed.
fn apply_mask(allowed: &SimpleVob, logits: &mut [f32]) {
    let words = allowed.as_slice();
    for (i, chunk) in logits.chunks_mut(32).enumerate() {
        let w = words.get(i).copied().unwrap_or(0);
        if w == u32::MAX {
            continue;
        }
        for (b, l) in chunk.iter_mut().enumerate() {
            if w >> b & 1 == 0 {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}
