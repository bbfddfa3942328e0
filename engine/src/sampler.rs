//! Token sampling and stop strings.
//!
//! [`Sampler`] turns the model's raw logits into the next token. The pipeline is fixed:
//! penalties → top-k → temperature → softmax → top-p → min-p → draw. This is the order Hugging Face /
//! vLLM apply (temperature before the nucleus cut), which is what Qwen's recommended settings
//! (temperature 0.7, top-k 20, top-p 0.8) are tuned against; the penalties follow llama.cpp exactly.
//! (llama.cpp's own default chain differs only in applying temperature after top-p/min-p.)
//! Temperature 0 or top-k 1 is plain argmax, with ties going to the lowest token id so greedy decoding is
//! reproducible across runs and engines.
//!
//! Decoding runs once per token over a vocabulary of ~152k, so the sampler avoids work it does not need:
//! top-k is a single pass with a small sorted buffer, top-p sorts only the tokens above a weight
//! threshold that already carry `top_p` of the mass, and all buffers are reused, so no allocation happens
//! after the first token.
//!
//! [`StopMatcher`] handles user stop strings in streamed text: it holds back any tail that could be the
//! beginning of a stop string, so a stop string (or half of one) is never sent to the client.

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Ordering;

/// Sampling settings. `Default` is Qwen3-Instruct's recommended generation config; use
/// [`SamplerConfig::greedy`] for deterministic argmax decoding.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// Softmax temperature; 0 = greedy (argmax).
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 = off.
    pub top_k: usize,
    /// Nucleus sampling: keep the smallest set of most likely tokens whose probability reaches top_p; 1 = off.
    pub top_p: f32,
    /// Drop tokens whose probability is below min_p × the top token's probability; 0 = off.
    pub min_p: f32,
    /// llama.cpp/CTRL repetition penalty: positive logits of recent tokens are divided by it, negative
    /// ones multiplied; 1 = off.
    pub repetition_penalty: f32,
    /// OpenAI presence penalty: subtracted once from the logit of every token seen in the window.
    pub presence_penalty: f32,
    /// OpenAI frequency penalty: subtracted once per occurrence in the window.
    pub frequency_penalty: f32,
    /// How many of the most recent tokens the penalties look at; 0 = penalties off.
    pub penalty_last_n: usize,
    /// RNG seed for reproducible sampling; `None` = seeded from the OS.
    pub seed: Option<u64>,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.7,
            top_k: 20,
            top_p: 0.8,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            seed: None,
        }
    }
}

impl SamplerConfig {
    /// Argmax decoding with no penalties: the reference mode for comparing against other engines.
    pub fn greedy() -> Self {
        SamplerConfig { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0, ..Default::default() }
    }

    /// True if this configuration always picks the argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == 1
    }

    /// Reject settings that would silently do something odd (NaN, negative temperature, an empty
    /// nucleus), with a message naming the field, so the server can return it as a 400.
    pub fn validate(&self) -> Result<()> {
        let t = self.temperature;
        if !t.is_finite() || t < 0.0 {
            bail!("temperature must be a finite number >= 0 (0 = greedy), got {t}");
        }
        let p = self.top_p;
        if p.is_nan() || p <= 0.0 || p > 1.0 {
            bail!("top_p must be in (0, 1] (1 = off), got {p}");
        }
        let m = self.min_p;
        if !(0.0..=1.0).contains(&m) {
            bail!("min_p must be in [0, 1] (0 = off), got {m}");
        }
        let r = self.repetition_penalty;
        if !r.is_finite() || r <= 0.0 {
            bail!("repetition_penalty must be a finite number > 0 (1 = off), got {r}");
        }
        if !self.presence_penalty.is_finite() {
            bail!("presence_penalty must be a finite number, got {}", self.presence_penalty);
        }
        if !self.frequency_penalty.is_finite() {
            bail!("frequency_penalty must be a finite number, got {}", self.frequency_penalty);
        }
        Ok(())
    }

    fn has_penalties(&self) -> bool {
        self.penalty_last_n > 0
            && (self.repetition_penalty != 1.0
                || self.presence_penalty != 0.0
                || self.frequency_penalty != 0.0)
    }
}

/// Sampler settings as a user gave them (flags, request fields): `None` keeps [`SamplerConfig::default`]'s
/// value. The one place where given settings meet the defaults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SamplerOptions {
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<u64>,
}

impl SamplerOptions {
    /// The defaults with these settings applied (not validated: see [`SamplerConfig::validate`]).
    pub fn resolve(&self) -> SamplerConfig {
        let d = SamplerConfig::default();
        SamplerConfig {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k: self.top_k.unwrap_or(d.top_k),
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            repetition_penalty: self.repetition_penalty.unwrap_or(d.repetition_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
            seed: self.seed,
            ..d
        }
    }
}

/// One token's log-probability, with its bytes (a token may hold part of a UTF-8 character).
#[derive(Clone, Debug, PartialEq)]
pub struct Logprob {
    pub token: u32,
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// The model's log-probability of a sampled token and of the most likely tokens at its position.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub chosen: Logprob,
    /// The `n` most likely tokens, most likely first (ties: lower id first).
    pub top: Vec<Logprob>,
}

impl TokenLogprob {
    /// Log-probabilities under the model's own distribution, the softmax of the raw `logits` (before
    /// penalties, temperature and filters: what OpenAI reports), of `token` and of the `n_top` most likely;
    /// `bytes` gives a token's bytes.
    pub fn from_logits(
        logits: &[f32],
        token: u32,
        n_top: usize,
        bytes: impl Fn(u32) -> Vec<u8>,
    ) -> TokenLogprob {
        let lse = crate::ops::log_sum_exp(logits);
        let lp = |l: f32| (l as f64 - lse) as f32;
        let mut top: Vec<Cand> = Vec::with_capacity(n_top + 1);
        if n_top > 0 {
            for (id, &val) in logits.iter().enumerate() {
                let c = Cand { id: id as u32, val };
                if val.is_nan() || (top.len() == n_top && by_val_desc(&c, &top[n_top - 1]) != Ordering::Less)
                {
                    continue;
                }
                let at = top.partition_point(|t| by_val_desc(t, &c) == Ordering::Less);
                top.insert(at, c);
                top.truncate(n_top);
            }
        }
        let entry = |token: u32, val: f32| Logprob { token, bytes: bytes(token), logprob: lp(val) };
        TokenLogprob {
            chosen: entry(token, logits[token as usize]),
            top: top.into_iter().map(|c| entry(c.id, c.val)).collect(),
        }
    }
}

/// A candidate token: its id and its (scaled) logit, later its unnormalized probability.
#[derive(Clone, Copy, Debug)]
struct Cand {
    id: u32,
    val: f32,
}

/// Descending by value, ties by ascending id: the order that makes argmax pick the lowest id.
fn by_val_desc(a: &Cand, b: &Cand) -> Ordering {
    b.val.partial_cmp(&a.val).unwrap_or(Ordering::Equal).then(a.id.cmp(&b.id))
}

/// Stateful sampler: owns the RNG (so a seeded run is reproducible token by token) and scratch buffers.
pub struct Sampler {
    cfg: SamplerConfig,
    rng: StdRng,
    cand: Vec<Cand>,
    window: Vec<u32>,
}

impl Sampler {
    /// The config is used as given; call [`SamplerConfig::validate`] first on user input. Out-of-range
    /// values never panic here (NaN temperature behaves as greedy, out-of-range top_p as off).
    pub fn new(cfg: SamplerConfig) -> Sampler {
        let rng = match cfg.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Sampler { cfg, rng, cand: Vec::new(), window: Vec::new() }
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Pick the next token from raw logits. The penalties are applied to `logits` in place (so callers
    /// can inspect what was sampled from); temperature and the filters work on a scratch copy of the
    /// candidates. `recent` is the token history the penalties look at (prompt + generated so far;
    /// only the last `penalty_last_n` are used).
    ///
    /// Non-finite logits are tolerated: NaN and -inf tokens are never picked unless every logit is,
    /// in which case token 0 is returned. Panics only if `logits` is empty.
    pub fn sample(&mut self, logits: &mut [f32], recent: &[u32]) -> u32 {
        assert!(!logits.is_empty(), "Sampler::sample: empty logits");
        if self.cfg.has_penalties() {
            self.apply_penalties(logits, recent);
        }
        let temp = self.cfg.temperature;
        if temp.is_nan() || temp <= 0.0 || self.cfg.top_k == 1 {
            return argmax(logits);
        }

        // top-k (or all finite tokens)
        self.collect_candidates(logits);
        if self.cand.is_empty() {
            return argmax(logits);
        }
        let max = self.cand.iter().map(|c| c.val).fold(f32::NEG_INFINITY, f32::max);
        if max == f32::INFINITY {
            return argmax(logits);
        }

        // temperature + softmax (unnormalized: the top token gets probability weight 1)
        let inv_t = 1.0 / temp;
        if !inv_t.is_finite() {
            // a temperature so small that 1/T overflows is greedy in all but name
            return argmax(logits);
        }
        let mut total = 0.0f64;
        for c in self.cand.iter_mut() {
            c.val = ((c.val - max) * inv_t).exp();
            total += c.val as f64;
        }

        // min-p: p >= min_p * p_max, i.e. weight >= min_p since p_max has weight 1. Applied before top-p
        // but without renormalizing, which gives the same set as top-p → min-p (both keep a prefix of
        // the sorted distribution, and top-p never drops the top token).
        let min_p = self.cfg.min_p;
        if min_p > 0.0 {
            self.cand.retain(|c| c.val >= min_p);
        }

        // top-p over the distribution normalized before min-p
        let top_p = self.cfg.top_p;
        if top_p > 0.0 && top_p < 1.0 {
            let target = top_p as f64 * total;
            let keep = nucleus_len(&mut self.cand, target);
            self.cand.truncate(keep);
        }

        // draw: the running sum is accumulated exactly like `mass`, so it ends at `mass` and a
        // zero-weight token can never be returned
        let mass: f64 = self.cand.iter().map(|c| c.val as f64).sum();
        let r = self.rng.random::<f64>() * mass;
        let mut acc = 0.0f64;
        let mut last_positive = None;
        for c in &self.cand {
            if c.val > 0.0 {
                acc += c.val as f64;
                last_positive = Some(c.id);
                if r < acc {
                    return c.id;
                }
            }
        }
        last_positive.unwrap_or_else(|| argmax(logits))
    }

    /// llama.cpp's penalties: for each distinct token among the last `penalty_last_n`, with count n:
    /// logit = logit <= 0 ? logit * rep : logit / rep; logit -= n * frequency + (n > 0) * presence.
    fn apply_penalties(&mut self, logits: &mut [f32], recent: &[u32]) {
        let n = self.cfg.penalty_last_n.min(recent.len());
        self.window.clear();
        self.window.extend_from_slice(&recent[recent.len() - n..]);
        self.window.sort_unstable();
        let (rep, pres, freq) =
            (self.cfg.repetition_penalty, self.cfg.presence_penalty, self.cfg.frequency_penalty);
        let mut i = 0;
        while i < self.window.len() {
            let tok = self.window[i];
            let mut j = i;
            while j < self.window.len() && self.window[j] == tok {
                j += 1;
            }
            let count = (j - i) as f32;
            if let Some(l) = logits.get_mut(tok as usize) {
                if *l <= 0.0 {
                    *l *= rep;
                } else {
                    *l /= rep;
                }
                *l -= count * freq + pres;
            }
            i = j;
        }
    }

    /// Fill `cand` with the top-k tokens (or every finite token when top-k is off), in no particular
    /// order except that a top-k selection comes out sorted.
    fn collect_candidates(&mut self, logits: &[f32]) {
        self.cand.clear();
        let k = self.cfg.top_k;
        if k == 0 || k >= logits.len() {
            self.cand.extend(
                logits
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| !v.is_nan() && **v > f32::NEG_INFINITY)
                    .map(|(i, &v)| Cand { id: i as u32, val: v }),
            );
            return;
        }
        // One pass keeping a sorted buffer of the best k; most tokens fail the threshold test.
        let mut threshold = f32::NEG_INFINITY;
        for (i, &v) in logits.iter().enumerate() {
            if v.is_nan() || v <= threshold {
                // ties with the current k-th value lose to it: it has the lower id
                continue;
            }
            let c = Cand { id: i as u32, val: v };
            let pos = self.cand.partition_point(|x| by_val_desc(x, &c) == Ordering::Less);
            if pos < k {
                if self.cand.len() == k {
                    self.cand.pop();
                }
                self.cand.insert(pos, c);
                if self.cand.len() == k {
                    threshold = self.cand[k - 1].val;
                }
            }
        }
    }
}

/// Argmax with ties to the lowest id; NaN never wins ([`crate::ops::argmax`]).
fn argmax(logits: &[f32]) -> u32 {
    crate::ops::argmax(logits) as u32
}

/// Find the nucleus: reorder `cand` (weights) so that its first `k` entries are the `k` heaviest tokens,
/// sorted descending (ties by id), where `k` is the length of the smallest such prefix whose weight
/// reaches `target`; returns `k` (at least 1).
///
/// Sorting ~152k candidates per token would cost milliseconds while the nucleus is usually a few dozen
/// tokens. So first split off the tokens heavier than a threshold (a linear pass); if they already carry
/// `target`, the nucleus lies among them (every one of them precedes every lighter token in sorted
/// order) and only they are sorted. Otherwise lower the threshold and retry.
fn nucleus_len(cand: &mut [Cand], target: f64) -> usize {
    let n = cand.len();
    if n == 0 {
        return 1;
    }
    let max = cand.iter().map(|c| c.val).fold(0.0f32, f32::max);
    let mut theta = max * 1e-3;
    loop {
        let mut heavy = 0usize;
        let mut mass = 0.0f64;
        for i in 0..n {
            if cand[i].val >= theta {
                mass += cand[i].val as f64;
                cand.swap(i, heavy);
                heavy += 1;
            }
        }
        if mass >= target || theta <= 0.0 || heavy == n {
            let head = &mut cand[..heavy];
            head.sort_unstable_by(by_val_desc);
            let mut cum = 0.0f64;
            for (i, c) in head.iter().enumerate() {
                cum += c.val as f64;
                if cum >= target {
                    return i + 1;
                }
            }
            if heavy == n {
                return n;
            }
        }
        // not enough mass above theta (or rounding left the sum a hair short): widen
        theta = if theta > f32::MIN_POSITIVE * 1e6 { theta * 1e-6 } else { 0.0 };
    }
}

/// Stop-string matcher for streamed text: holds back text that could be the start of a stop string,
/// so a stop string is never emitted to the user, and everything before it is.
#[derive(Clone, Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
    stopped: bool,
}

impl StopMatcher {
    /// Empty stop strings are ignored (they would match everywhere).
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
            stopped: false,
        }
    }

    /// True once a stop string has been seen; later pushes return nothing.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Feed the next piece of generated text. Returns the text that is safe to emit now and whether a
    /// stop string was found (in which case the returned text is everything before it, and generation
    /// should end).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.pending.push_str(text);
        // earliest complete stop string
        if let Some(pos) = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min() {
            self.stopped = true;
            let mut out = std::mem::take(&mut self.pending);
            out.truncate(pos);
            return (out, true);
        }
        // hold back the longest tail that is a proper prefix of some stop string; any stop that could
        // still complete must start inside that tail
        let hold_from = self
            .pending
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.pending[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.pending.len());
        let rest = self.pending.split_off(hold_from);
        let out = std::mem::replace(&mut self.pending, rest);
        (out, false)
    }

    /// End of generation: release whatever was held back (it did not turn into a stop string).
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nucleus_prefix_sort_matches_full_sort() {
        let mut rng = StdRng::seed_from_u64(7);
        for n in [1usize, 5, 64, 65, 300, 5000] {
            let vals: Vec<Cand> =
                (0..n).map(|i| Cand { id: i as u32, val: rng.random::<f32>().powi(8) }).collect();
            let total: f64 = vals.iter().map(|c| c.val as f64).sum();
            for p in [1e-9, 0.1, 0.5, 0.9, 0.999, 1.0] {
                let mut a = vals.clone();
                let k = nucleus_len(&mut a, p * total);
                let mut b = vals.clone();
                b.sort_by(by_val_desc);
                let mut cum = 0.0;
                let mut want = n;
                for (i, c) in b.iter().enumerate() {
                    cum += c.val as f64;
                    if cum >= p * total {
                        want = i + 1;
                        break;
                    }
                }
                assert_eq!(k, want, "n={n} p={p}");
                let ids_a: Vec<u32> = a[..k].iter().map(|c| c.id).collect();
                let ids_b: Vec<u32> = b[..k].iter().map(|c| c.id).collect();
                assert_eq!(ids_a, ids_b);
            }
        }
    }

    #[test]
    fn no_reallocation_after_first_token() {
        let mut rng = StdRng::seed_from_u64(11);
        let logits: Vec<f32> = (0..151_936).map(|_| rng.random::<f32>() * 8.0).collect();
        let recent: Vec<u32> = (0..200).collect();
        for cfg in [
            SamplerConfig {
                top_k: 0,
                top_p: 0.9,
                min_p: 0.01,
                repetition_penalty: 1.1,
                seed: Some(1),
                ..Default::default()
            },
            SamplerConfig { presence_penalty: 0.5, seed: Some(1), ..Default::default() },
        ] {
            let mut s = Sampler::new(cfg);
            let mut work = logits.clone();
            s.sample(&mut work, &recent);
            let ptrs = (s.cand.as_ptr(), s.window.as_ptr());
            for _ in 0..20 {
                work.copy_from_slice(&logits);
                s.sample(&mut work, &recent);
                assert_eq!((s.cand.as_ptr(), s.window.as_ptr()), ptrs);
            }
        }
    }

    #[test]
    fn top_k_buffer_matches_full_sort() {
        let mut rng = StdRng::seed_from_u64(3);
        // coarse values so there are many ties
        let logits: Vec<f32> = (0..3000).map(|_| (rng.random::<f32>() * 50.0).floor()).collect();
        for k in [1usize, 2, 20, 100, 2999] {
            let mut s = Sampler::new(SamplerConfig { top_k: k, ..SamplerConfig::default() });
            s.collect_candidates(&logits);
            let mut all: Vec<Cand> =
                logits.iter().enumerate().map(|(i, &v)| Cand { id: i as u32, val: v }).collect();
            all.sort_by(by_val_desc);
            let got: Vec<u32> = s.cand.iter().map(|c| c.id).collect();
            let want: Vec<u32> = all[..k].iter().map(|c| c.id).collect();
            assert_eq!(got, want, "k={k}");
        }
    }
}
