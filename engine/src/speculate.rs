//! Speculative decoding that changes no output.
//!
//! Each decode step may feed, after the token just sampled, a few *drafted* tokens guessed for the positions
//! that follow: taken from the prompt and the text so far (prompt lookup), from the text the caller expects
//! (OpenAI's Predicted Outputs), or from a small draft model ([`crate::draft`]). The model scores them all in
//! one pass (its weights are read once, as for one token). Then [`verify`] samples position by position,
//! exactly as plain decoding would (the same logits, because the forward pass is batch-invariant, and the
//! same sampler, RNG stream and grammar), and keeps a drafted token only while it equals the token drawn.
//! The first difference, or the token after the last draft, is the next token; the cache drops the rest.
//! So the output is the same bits as without speculation, for every sampler setting and seed.
//!
//! How many tokens to draft is a bet: a verify pass over more tokens costs more, and the drafts are worth
//! only what is accepted. [`plan`] decides per step from measured pass times ([`CostModel`]) and each
//! request's measured acceptance ([`Acceptance`]), so speculation runs only where it is expected to pay.

use std::time::Duration;

use anyhow::Result;

use crate::generate::{Generation, Step};
use crate::model::Logits;

/// Most drafted tokens per step and request (`--spec-max` is capped here).
pub const MAX_DRAFT: usize = 16;

/// Longest n-gram prompt lookup matches (it tries this many last tokens first, then fewer, down to 1).
pub const LOOKUP_NGRAM: usize = 4;

/// Where drafts come from (`--spec`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum SpecMode {
    /// No speculation: one token per step.
    Off,
    /// Prompt lookup (and, where given, the request's predicted output); a draft model when one is loaded.
    #[cfg_attr(feature = "clap", value(alias = "on"))]
    Lookup,
}

impl SpecMode {
    pub fn parse(s: &str) -> Result<SpecMode> {
        match s {
            "off" => Ok(SpecMode::Off),
            "lookup" | "on" => Ok(SpecMode::Lookup),
            other => anyhow::bail!("unknown speculation mode '{other}' (expected off or lookup)"),
        }
    }
}

/// Speculation settings of an engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecConfig {
    pub mode: SpecMode,
    /// Most tokens drafted per step and request, 0 to [`MAX_DRAFT`].
    pub max_draft: usize,
    /// Verify every drafted token on offer, whatever [`plan`] would choose: for tests of verification (the
    /// cost model of a tiny model may never let it draft) and for measuring it.
    pub always: bool,
}

impl Default for SpecConfig {
    fn default() -> Self {
        SpecConfig { mode: SpecMode::Lookup, max_draft: 8, always: false }
    }
}

impl SpecConfig {
    pub fn off() -> SpecConfig {
        SpecConfig { mode: SpecMode::Off, max_draft: 0, always: false }
    }

    /// Drafted tokens allowed per step (0 when off).
    pub fn limit(&self) -> usize {
        match self.mode {
            SpecMode::Off => 0,
            SpecMode::Lookup => self.max_draft.min(MAX_DRAFT),
        }
    }
}

/// Most rows of logits a decode pass of `n_slots` requests returns with `cfg` (one per fed token when it
/// drafts), within a batch of `n_batch` tokens: for the memory plan.
pub fn logit_rows(cfg: &SpecConfig, n_slots: usize, n_batch: usize) -> usize {
    (n_slots * (1 + cfg.limit())).min(n_batch.max(n_slots)).max(1)
}

/// Drafted and accepted token counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecCounts {
    /// Drafted tokens the model scored.
    pub drafted: usize,
    /// Of those, the ones equal to the token drawn (each one a step saved).
    pub accepted: usize,
}

impl SpecCounts {
    pub fn rejected(&self) -> usize {
        self.drafted - self.accepted
    }

    pub fn add(&mut self, other: SpecCounts) {
        self.drafted += other.drafted;
        self.accepted += other.accepted;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Drafting from text: prompt lookup and predicted outputs

/// A match of the context's last tokens in a source: where the tokens that follow it start, and its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Match {
    next: usize,
    len: usize,
}

/// The longest match (`LOOKUP_NGRAM` down to 1 tokens) of the end of `tail` in `source` that has tokens after
/// it, excluding the end of `source` itself. Among equally long matches: the one continuing at `cursor` (the
/// position after the tokens this source drafted and got accepted last time: a copy in progress stays
/// aligned), else the latest (recent text predicts best).
fn find_match(source: &[u32], tail: &[u32], cursor: Option<usize>) -> Option<Match> {
    for len in (1..=LOOKUP_NGRAM.min(tail.len())).rev() {
        let key = &tail[tail.len() - len..];
        if let Some(c) = cursor.filter(|&c| c >= len && c < source.len() && &source[c - len..c] == key) {
            return Some(Match { next: c, len });
        }
        let found = (0..source.len().saturating_sub(len)).rev().find(|&p| &source[p..p + len] == key);
        if let Some(p) = found {
            return Some(Match { next: p + len, len });
        }
    }
    None
}

/// Drafts from text already known: the request's context (prompt and reply so far) and, with Predicted
/// Outputs, the text the caller expects. Cheap enough to run every step (a scan of the context).
#[derive(Clone, Debug, Default)]
pub struct Lookup {
    /// The predicted output's tokens (empty without one).
    prediction: Vec<u32>,
    /// Per source (0: prediction, 1: context), where its last accepted draft ended.
    cursor: [Option<usize>; 2],
    /// The source and position of the draft proposed last, to move that source's cursor by what was accepted.
    last: Option<(usize, usize)>,
}

/// A draft and how long the match it came from is (longer matches are accepted more often: [`Acceptance`]
/// keeps a rate per length).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Draft {
    pub tokens: Vec<u32>,
    /// The matched n-gram's length (1 to [`LOOKUP_NGRAM`]), or 0 for a draft model's tokens.
    pub kind: usize,
}

impl Lookup {
    pub fn new(prediction: Vec<u32>) -> Lookup {
        Lookup { prediction, ..Default::default() }
    }

    /// Up to `max` tokens to follow `context` (the tokens in the cache, then the token about to be fed).
    pub fn propose(&mut self, context: &[u32], max: usize) -> Draft {
        self.last = None;
        if max == 0 || context.is_empty() {
            return Draft::default();
        }
        let sources: [&[u32]; 2] = [&self.prediction, context];
        let mut best: Option<(usize, Match)> = None;
        for (s, source) in sources.iter().enumerate() {
            if let Some(m) = find_match(source, context, self.cursor[s]) {
                // the prediction wins ties: it is the text the caller says is coming
                if best.is_none_or(|(_, b)| m.len > b.len) {
                    best = Some((s, m));
                }
            }
        }
        let Some((s, m)) = best else { return Draft::default() };
        let source = sources[s];
        let end = (m.next + max).min(source.len());
        self.last = Some((s, m.next));
        Draft { tokens: source[m.next..end].to_vec(), kind: m.len }
    }

    /// The last proposal was not used (a draft model's was).
    pub fn forget(&mut self) {
        self.last = None;
    }

    /// After verification: `accepted` of the last proposal's tokens were right.
    pub fn accepted(&mut self, accepted: usize) {
        if let Some((s, start)) = self.last.take() {
            // the token after the accepted ones was drawn too: if it equals the source's next one, the next
            // proposal's match ends there and its draft starts at the cursor
            self.cursor[s] = Some(start + accepted + 1);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Verification

/// What [`verify`] found.
pub struct Verified {
    /// The steps drawn, in order (their text, logprobs, and whether generation ended).
    pub steps: Vec<Step>,
    /// Fed tokens whose keys and values stay in the cache: the token fed first plus the accepted drafts.
    pub kept: usize,
    /// Drafted tokens accepted.
    pub accepted: usize,
}

/// The logits a decode step needs for what it feeds (the token sampled last, then any drafts): one row per
/// fed token when it drafts, to verify each, else the last row only.
pub fn logits_wanted(fed: &[u32]) -> Logits {
    if fed.len() > 1 {
        Logits::All
    } else {
        Logits::Last
    }
}

/// Samples from `rows` (`vocab` logits after each of `fed`: the token sampled last, then the drafts) in
/// order, as plain decoding would, and stops at the first draft that differs from the token drawn (or when
/// generation ends). `context` holds the tokens in the cache before `fed`; the kept fed tokens are appended
/// to it (the caller truncates the cache to match). `capacity` is the cache's size, for the room left.
pub fn verify(
    gen: &mut Generation,
    rows: &mut [f32],
    vocab: usize,
    fed: &[u32],
    context: &mut Vec<u32>,
    capacity: usize,
) -> Result<Verified> {
    debug_assert_eq!(rows.len(), fed.len() * vocab);
    let mut steps = Vec::new();
    let mut kept = 0;
    for (i, row) in rows.chunks_mut(vocab).enumerate() {
        context.push(fed[i]);
        kept = i + 1;
        let step = gen.accept(row, context, capacity - context.len())?;
        let go_on = !step.done && fed.get(i + 1) == Some(&step.token);
        steps.push(step);
        if !go_on {
            break;
        }
    }
    Ok(Verified { steps, kept, accepted: kept - 1 })
}

// ---------------------------------------------------------------------------------------------------------
// When to speculate

/// Acceptance of one request's drafts: per kind of draft (match length for lookup, 0 for a draft model), the
/// rate at which a drafted token is accepted given that the ones before it were.
#[derive(Clone, Debug)]
pub struct Acceptance {
    /// (accepted, tried) per kind, with a prior of one try.
    counts: [(f64, f64); LOOKUP_NGRAM + 1],
}

/// Acceptance rates assumed before any is measured (per kind: draft model, then match lengths 1 to 4): only a
/// starting point, replaced by measurement within a few steps; optimistic enough that speculation is tried.
const PRIOR: [f64; LOOKUP_NGRAM + 1] = [0.6, 0.3, 0.4, 0.5, 0.6];

/// Weight of old observations per new one (an exponential window of about 16 tries).
const DECAY: f64 = 15.0 / 16.0;

impl Default for Acceptance {
    fn default() -> Self {
        Acceptance { counts: PRIOR.map(|p| (p, 1.0)) }
    }
}

impl Acceptance {
    /// The probability that a drafted token of `kind` is accepted, given the previous ones were.
    pub fn rate(&self, kind: usize) -> f64 {
        let (a, n) = self.counts[kind.min(LOOKUP_NGRAM)];
        a / n
    }

    /// `accepted` of `tried` drafted tokens of `kind` were accepted; a rejection ends a draft, so the tries
    /// are the accepted tokens plus one if one was rejected.
    pub fn observe(&mut self, kind: usize, accepted: usize, drafted: usize) {
        let tries = (accepted + usize::from(accepted < drafted)) as f64;
        if tries == 0.0 {
            return;
        }
        let (a, n) = &mut self.counts[kind.min(LOOKUP_NGRAM)];
        let keep = DECAY.powf(tries);
        *a = *a * keep + accepted as f64;
        *n = *n * keep + tries;
    }
}

/// Measured seconds of a decode step by its number of fed tokens (1 to [`CostModel::MAX`]); sizes not
/// measured yet are estimated from those that are.
#[derive(Clone, Debug)]
pub struct CostModel {
    /// Exponential average of step seconds per token count (index = tokens), 0 where never measured.
    secs: Vec<f64>,
    /// How much each average is trusted: its number of samples, capped at [`CostModel::TRUST`].
    weight: Vec<f64>,
    /// A draft model's: until its passes are measured, they are taken to cost this fraction of the serving
    /// model's (their file sizes' ratio: decoding reads every weight once).
    relative: Option<f64>,
}

impl Default for CostModel {
    fn default() -> Self {
        CostModel {
            secs: vec![0.0; CostModel::MAX + 1],
            weight: vec![0.0; CostModel::MAX + 1],
            relative: None,
        }
    }
}

impl CostModel {
    /// Largest pass tracked; bigger ones (prefill) are not decode steps.
    pub const MAX: usize = 128;

    /// Samples after which a size's average counts fully in the fit.
    const TRUST: f64 = 8.0;

    /// A draft model's cost model, its passes first estimated at `ratio` times the serving model's.
    pub fn relative(ratio: f64) -> CostModel {
        CostModel { relative: Some(ratio), ..CostModel::default() }
    }

    /// A pass of `n` tokens took `took`.
    pub fn record(&mut self, n: usize, took: Duration) {
        let (Some(s), Some(w)) = (self.secs.get_mut(n), self.weight.get_mut(n)) else { return };
        let t = took.as_secs_f64();
        *s = if *s == 0.0 { t } else { 0.75 * *s + 0.25 * t };
        *w = (*w + 1.0).min(CostModel::TRUST);
    }

    /// Expected seconds of a pass of every size, from what is measured; `None` when nothing is.
    ///
    /// Pass times are noisy (a preempted pass is slow, never fast), and a single slow size must not make
    /// every bigger pass look dear: the averages are fitted by the non-decreasing curve closest to them
    /// (isotonic regression, each weighted by its samples), interpolated between measured sizes, flat below
    /// the smallest, and extrapolated above the largest with the slope from the smallest to it: a pass grows
    /// more than linearly once it is compute-bound, so that guess is low, and the size it tempts the plan to
    /// try is then measured.
    pub fn curve(&self) -> Option<Curve> {
        // pool adjacent violators over the measured sizes: blocks of (first size, last size, mean, weight)
        let mut blocks: Vec<(usize, usize, f64, f64)> = Vec::new();
        for n in (1..=CostModel::MAX).filter(|&n| self.secs[n] > 0.0) {
            let mut b = (n, n, self.secs[n], self.weight[n].max(1.0));
            while let Some(&(first, _, mean, w)) = blocks.last().filter(|last| last.2 >= b.2) {
                blocks.pop();
                b = (first, b.1, (mean * w + b.2 * b.3) / (w + b.3), w + b.3);
            }
            blocks.push(b);
        }
        let points: Vec<(usize, f64)> = blocks
            .iter()
            .flat_map(|&(first, last, mean, _)| {
                (first..=last).filter(|&n| self.secs[n] > 0.0).map(move |n| (n, mean))
            })
            .collect();
        let (&(n0, y0), &(n1, y1)) = (points.first()?, points.last()?);
        let slope = if n1 > n0 { (y1 - y0) / (n1 - n0) as f64 } else { 0.0 };
        let mut at = vec![0.0; CostModel::MAX + 1];
        for (n, v) in at.iter_mut().enumerate() {
            *v = if n <= n0 {
                y0
            } else if n >= n1 {
                y1 + slope * (n - n1) as f64
            } else {
                let j = points.partition_point(|&(m, _)| m < n);
                let ((a, ya), (b, yb)) = (points[j - 1], points[j]);
                ya + (yb - ya) * (n - a) as f64 / (b - a) as f64
            };
        }
        Some(Curve { at })
    }

    /// Expected seconds of a pass of `n` tokens ([`CostModel::curve`]); `None` when nothing is measured.
    pub fn secs(&self, n: usize) -> Option<f64> {
        Some(self.curve()?.secs(n))
    }

    /// A draft model's pass times: its own measurements, else `target`'s scaled by the file-size ratio.
    fn draft_curve(&self, target: Option<&Curve>) -> Option<Curve> {
        self.curve().or_else(|| {
            let ratio = self.relative?;
            Some(Curve { at: target?.at.iter().map(|s| s * ratio).collect() })
        })
    }
}

/// Expected pass seconds by size, from [`CostModel::curve`].
#[derive(Clone, Debug)]
pub struct Curve {
    at: Vec<f64>,
}

impl Curve {
    /// Seconds of a pass of `n` tokens (sizes past [`CostModel::MAX`] priced as that).
    pub fn secs(&self, n: usize) -> f64 {
        self.at[n.min(CostModel::MAX)]
    }
}

/// One decoding request's options for this step: its acceptance rate for the draft on offer, and how many
/// drafted tokens it may take.
#[derive(Clone, Copy, Debug)]
pub struct Offer {
    pub rate: f64,
    pub max: usize,
    /// Drafting costs a draft-model pass per token (lookup drafts are free).
    pub model: bool,
}

/// The expected tokens per second of a request decoding alone with `offer`, as [`plan`] would draft for it;
/// `None` before a pass is measured. Compares a free lookup draft with the draft model's.
pub fn expected_rate(offer: Offer, target: &CostModel, draft: &CostModel) -> Option<f64> {
    let curve = target.curve()?;
    let k = plan(&[offer], target, draft)[0];
    let tokens: f64 = (0..=k).map(|j| offer.rate.powi(j as i32)).sum();
    let drafting = match (offer.model, draft.draft_curve(Some(&curve))) {
        (false, _) => 0.0,
        (true, Some(d)) => k as f64 * d.secs(1),
        (true, None) => return Some(0.0),
    };
    Some(tokens / (curve.secs(1 + k) + drafting))
}

/// Speculation must raise the expected tokens per second of a step by this factor: measured pass times are
/// noisy, and a plan that barely pays on paper is a loss where the estimate errs (free prose).
const PAYOFF: f64 = 1.02;

/// How many drafted tokens each decoding request feeds this step: [`plan`]'s choice, or all on offer with
/// [`SpecConfig::always`].
pub fn choose(cfg: &SpecConfig, offers: &[Offer], target: &CostModel, draft: &CostModel) -> Vec<usize> {
    if cfg.always {
        offers.iter().map(|o| o.max).collect()
    } else {
        plan(offers, target, draft)
    }
}

/// Chooses how many drafted tokens each decoding request feeds this step: the numbers that maximise the
/// expected tokens per second, `E[tokens] / cost(step)`. A request drafting `k` tokens at acceptance rate `p`
/// yields `1 + p + … + p^k` tokens on average; the step costs what [`CostModel`] expects for its size, plus
/// the draft model's passes if it drafts. Tokens are added in order of their expected gain `p^(j+1)` (each
/// request's gains fall with `j`, so every prefix of that order is the best plan of its size), and the best
/// prefix is taken: the whole order is scored, so one dear size on the way does not stop a bigger plan that
/// pays more. It is fed only if it beats plain decoding by [`PAYOFF`].
pub fn plan(offers: &[Offer], target: &CostModel, draft: &CostModel) -> Vec<usize> {
    let n = offers.len();
    let mut ks = vec![0usize; n];
    let Some(curve) = target.curve() else {
        // nothing measured yet: one plain step measures a pass of this size
        return ks;
    };
    let draft_curve = draft.draft_curve(Some(&curve));
    let draft_cost = |ks: &[usize]| -> f64 {
        // one draft pass per drafted position, over the requests still drafting at that position
        let rounds = offers.iter().zip(ks).filter(|(o, _)| o.model).map(|(_, &k)| k).max().unwrap_or(0);
        (0..rounds)
            .map(|r| {
                let m = offers.iter().zip(ks).filter(|(o, &k)| o.model && k > r).count();
                draft_curve.as_ref().map_or(f64::INFINITY, |d| d.secs(m))
            })
            .sum()
    };
    let plain = n as f64 / curve.secs(n);
    let (mut tokens, mut total) = (n as f64, n);
    let mut order = Vec::new();
    let mut best = (PAYOFF * plain, 0);
    loop {
        let next = (0..n)
            .filter(|&i| ks[i] < offers[i].max)
            .map(|i| (i, offers[i].rate.powi(ks[i] as i32 + 1)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let Some((i, gain)) = next.filter(|_| total < CostModel::MAX) else { break };
        ks[i] += 1;
        order.push(i);
        (tokens, total) = (tokens + gain, total + 1);
        let rate = tokens / (curve.secs(total) + draft_cost(&ks));
        if rate > best.0 {
            best = (rate, order.len());
        }
    }
    let mut ks = vec![0usize; n];
    for &i in &order[..best.1] {
        ks[i] += 1;
    }
    ks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_copies_what_followed_the_longest_match() {
        // "a b c d X" earlier, context ends in "b c d": propose X and what follows
        let context = [1, 2, 3, 4, 9, 8, 7, 5, 2, 3, 4];
        let mut l = Lookup::new(Vec::new());
        let d = l.propose(&context, 3);
        assert_eq!(d, Draft { tokens: vec![9, 8, 7], kind: 3 });
        // no match: nothing
        assert_eq!(l.propose(&[1, 2, 3, 6], 3).tokens, Vec::<u32>::new());
        // the end of the context itself is no match
        assert_eq!(l.propose(&[5, 6, 7], 3).tokens, Vec::<u32>::new());
        // capped by max and by the source's end
        assert_eq!(l.propose(&context, 1).tokens, vec![9]);
        assert_eq!(l.propose(&[4, 9, 8, 7, 4], 8).tokens, vec![9, 8, 7, 4]);
        assert_eq!(l.propose(&context, 0).tokens, Vec::<u32>::new());
    }

    #[test]
    fn the_prediction_wins_ties_and_the_cursor_keeps_a_copy_aligned() {
        let mut l = Lookup::new(vec![7, 1, 2, 1, 3, 1, 4]);
        // context ends in 1: the prediction has 1 three times; without a cursor the latest (before 4)
        let d = l.propose(&[5, 1], 1);
        assert_eq!(d.tokens, vec![4]);
        // a first token sampled as 7 drafts the prediction from there
        let d = l.propose(&[5, 7], 2);
        assert_eq!(d.tokens, vec![1, 2]);
        l.accepted(2);
        // a copy in progress: after the accepted "1 2" the cursor is past the prediction's second "1"; a match
        // of one token ending there beats the latest one (before 4)
        let d = l.propose(&[5, 7, 1, 2, 8, 1], 2);
        assert_eq!(d.tokens, vec![3, 1]);
    }

    #[test]
    fn acceptance_follows_what_is_observed() {
        let mut a = Acceptance::default();
        for _ in 0..64 {
            a.observe(4, 3, 4); // 3 of 4 accepted, then one rejected: 3/4
        }
        assert!((a.rate(4) - 0.75).abs() < 0.02, "{}", a.rate(4));
        for _ in 0..64 {
            a.observe(1, 0, 2);
        }
        assert!(a.rate(1) < 0.02);
        assert!((a.rate(0) - PRIOR[0]).abs() < 1e-12, "other kinds keep their prior");
    }

    #[test]
    fn cost_model_interpolates_and_extrapolates_upwards() {
        let mut c = CostModel::default();
        assert_eq!(c.secs(3), None);
        c.record(1, Duration::from_millis(100));
        assert_eq!(c.secs(5), Some(0.1));
        c.record(5, Duration::from_millis(140));
        assert!((c.secs(3).unwrap() - 0.12).abs() < 1e-9);
        assert!((c.secs(9).unwrap() - 0.18).abs() < 1e-9);
        // a faster bigger pass (noise) never makes more tokens look cheaper than the smaller pass
        c.record(9, Duration::from_millis(90));
        assert!(c.secs(7).unwrap() >= 0.09);
    }

    #[test]
    fn one_slow_size_does_not_make_bigger_passes_dear() {
        // four streams: 4 tokens 40 ms, then about 3 ms per token, but one pass of 9 was preempted (75 ms)
        let mut c = CostModel::default();
        for (n, ms) in [(4, 40), (5, 43), (6, 46), (7, 49), (8, 52), (9, 75), (12, 64), (16, 76)] {
            for _ in 0..8 {
                c.record(n, Duration::from_millis(ms));
            }
        }
        c.record(9, Duration::from_millis(75));
        let secs = |n| c.secs(n).unwrap();
        for n in 1..CostModel::MAX {
            assert!(secs(n + 1) >= secs(n), "non-decreasing at {n}");
        }
        // the outlier is pooled with the sizes after it, not carried to every size above
        assert!(secs(9) < 0.07 && secs(16) < 0.08, "{} {}", secs(9), secs(16));
        // a size measured more often outweighs a fresh faster sample above it
        let mut d = c.clone();
        d.record(20, Duration::from_millis(60));
        let (d16, d20) = (d.secs(16).unwrap(), d.secs(20).unwrap());
        assert!(d20 >= d16 && d16 > 0.072, "{d16} {d20}");
        // four requests whose copies are all accepted: the plan goes past the slow size to a bigger pass
        let sure = Offer { rate: 0.97, max: 8, model: false };
        let ks = plan(&[sure; 4], &c, &CostModel::default());
        assert!(ks.iter().sum::<usize>() > 5, "{ks:?}");
    }

    #[test]
    fn plan_speculates_only_where_it_pays() {
        let mut flat = CostModel::default(); // memory-bound: 8 tokens cost what 1 does, plus 5 %
        flat.record(1, Duration::from_millis(100));
        flat.record(9, Duration::from_millis(105));
        let none = CostModel::default();
        let good = Offer { rate: 0.9, max: 8, model: false };
        let poor = Offer { rate: 0.004, max: 8, model: false };
        assert_eq!(plan(&[good], &flat, &none), vec![8]);
        assert_eq!(plan(&[poor], &flat, &none), vec![0]);
        assert_eq!(plan(&[Offer { max: 3, ..good }], &flat, &none), vec![3]);
        // compute-bound: every token costs as much as the first, so nothing drafted pays
        let mut linear = CostModel::default();
        linear.record(1, Duration::from_millis(100));
        linear.record(9, Duration::from_millis(900));
        assert_eq!(plan(&[good], &linear, &none), vec![0]);
        // nothing measured: a plain step first
        assert_eq!(plan(&[good], &none, &none), vec![0]);
        // a draft model whose passes cost as much as the target's never pays
        let model = Offer { rate: 0.7, max: 8, model: true };
        assert_eq!(plan(&[model], &flat, &flat), vec![0]);
        let mut cheap = CostModel::default();
        cheap.record(1, Duration::from_millis(5));
        assert!(plan(&[model], &flat, &cheap)[0] >= 3);
        // before a draft pass is measured: estimated from the serving model's by their size ratio
        assert!(plan(&[model], &flat, &CostModel::relative(0.05))[0] >= 3);
        assert_eq!(plan(&[model], &flat, &CostModel::relative(1.0)), vec![0]);
    }
}
