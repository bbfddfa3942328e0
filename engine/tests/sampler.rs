//! Sampler and stop-string behaviour.

use quire_engine::sampler::{Sampler, SamplerConfig, StopMatcher};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn random_logits(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| (rng.random::<f32>() - 0.5) * scale).collect()
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn sampling(temperature: f32, top_k: usize, top_p: f32, min_p: f32, seed: u64) -> SamplerConfig {
    SamplerConfig { temperature, top_k, top_p, min_p, seed: Some(seed), ..SamplerConfig::default() }
}

#[test]
fn defaults_are_qwen_recommended_and_valid() {
    let d = SamplerConfig::default();
    assert_eq!((d.temperature, d.top_k, d.top_p, d.min_p), (0.7, 20, 0.8, 0.0));
    assert_eq!(d.repetition_penalty, 1.0);
    assert_eq!(d.penalty_last_n, 64);
    assert_eq!(d.seed, None);
    d.validate().unwrap();
    let g = SamplerConfig::greedy();
    g.validate().unwrap();
    assert!(g.is_greedy() && !d.is_greedy());
}

#[test]
fn invalid_configs_are_rejected() {
    let base = SamplerConfig::default;
    let bad = [
        (SamplerConfig { temperature: f32::NAN, ..base() }, "temperature"),
        (SamplerConfig { temperature: -0.1, ..base() }, "temperature"),
        (SamplerConfig { temperature: f32::INFINITY, ..base() }, "temperature"),
        (SamplerConfig { top_p: 0.0, ..base() }, "top_p"),
        (SamplerConfig { top_p: 1.5, ..base() }, "top_p"),
        (SamplerConfig { top_p: f32::NAN, ..base() }, "top_p"),
        (SamplerConfig { min_p: -0.1, ..base() }, "min_p"),
        (SamplerConfig { min_p: 1.1, ..base() }, "min_p"),
        (SamplerConfig { min_p: f32::NAN, ..base() }, "min_p"),
        (SamplerConfig { repetition_penalty: 0.0, ..base() }, "repetition_penalty"),
        (SamplerConfig { repetition_penalty: f32::NAN, ..base() }, "repetition_penalty"),
        (SamplerConfig { presence_penalty: f32::NAN, ..base() }, "presence_penalty"),
        (SamplerConfig { frequency_penalty: f32::INFINITY, ..base() }, "frequency_penalty"),
    ];
    for (cfg, field) in bad {
        let e = cfg.validate().expect_err(field);
        assert!(e.to_string().contains(field), "{field}: {e}");
    }
    // edge values that are fine
    for cfg in [
        SamplerConfig { top_p: 1.0, min_p: 1.0, temperature: 0.0, ..base() },
        SamplerConfig { presence_penalty: -2.0, frequency_penalty: 2.0, top_k: 0, ..base() },
    ] {
        cfg.validate().unwrap();
    }
}

#[test]
fn greedy_is_argmax_with_lowest_id_on_ties() {
    let mut s = Sampler::new(SamplerConfig::greedy());
    for seed in 0..20 {
        let mut l = random_logits(1000, seed, 10.0);
        let want = argmax(&l);
        assert_eq!(s.sample(&mut l, &[]), want);
    }
    let mut l = vec![1.0, 3.0, -2.0, 3.0, 3.0];
    assert_eq!(s.sample(&mut l, &[]), 1);
    // NaN never wins; -inf is fine
    let mut l = vec![f32::NAN, f32::NEG_INFINITY, 0.5, f32::NAN, 0.7];
    assert_eq!(s.sample(&mut l, &[]), 4);
    // a temperature whose inverse overflows behaves as greedy instead of producing NaN weights
    let mut l = vec![0.0, 0.3, 0.2];
    let mut tiny_t = Sampler::new(SamplerConfig { temperature: 1e-40, top_k: 0, ..SamplerConfig::default() });
    assert_eq!(tiny_t.sample(&mut l, &[]), 1);
    // greedy ignores the RNG entirely: no seed needed, same answer
    let mut l = vec![0.0, 0.1, 0.0];
    assert_eq!(
        Sampler::new(SamplerConfig { temperature: 0.0, seed: None, ..Default::default() })
            .sample(&mut l, &[]),
        1
    );
}

#[test]
fn top_k_one_equals_greedy() {
    for seed in 0..20 {
        let logits = random_logits(5000, seed, 4.0);
        let mut s = Sampler::new(sampling(1.5, 1, 1.0, 0.0, seed));
        let mut l = logits.clone();
        assert_eq!(s.sample(&mut l, &[]), argmax(&logits));
    }
}

#[test]
fn tiny_top_p_is_argmax() {
    for seed in 0..20 {
        let logits = random_logits(5000, 100 + seed, 4.0);
        let mut s = Sampler::new(sampling(2.0, 0, 1e-6, 0.0, seed));
        for _ in 0..10 {
            let mut l = logits.clone();
            assert_eq!(s.sample(&mut l, &[]), argmax(&logits));
        }
    }
}

#[test]
fn same_seed_same_sequence_different_seed_differs() {
    let logits = random_logits(2000, 1, 3.0);
    let run = |seed: u64, cfg: SamplerConfig| -> Vec<u32> {
        let mut s = Sampler::new(SamplerConfig { seed: Some(seed), ..cfg });
        (0..200)
            .map(|_| {
                let mut l = logits.clone();
                s.sample(&mut l, &[])
            })
            .collect()
    };
    for cfg in [SamplerConfig::default(), sampling(1.0, 0, 1.0, 0.0, 0), sampling(0.9, 50, 0.95, 0.05, 0)] {
        assert_eq!(run(42, cfg.clone()), run(42, cfg.clone()));
    }
    // flat distribution: two seeds must disagree somewhere
    let flat = vec![0.0f32; 1000];
    let draw = |seed: u64| -> Vec<u32> {
        let mut s = Sampler::new(sampling(1.0, 0, 1.0, 0.0, seed));
        (0..50)
            .map(|_| {
                let mut l = flat.clone();
                s.sample(&mut l, &[])
            })
            .collect()
    };
    assert_ne!(draw(1), draw(2));
    // and an unseeded sampler is not stuck on one token
    let mut s = Sampler::new(SamplerConfig { seed: None, ..sampling(1.0, 0, 1.0, 0.0, 0) });
    let picks: std::collections::HashSet<u32> = (0..50).map(|_| s.sample(&mut flat.clone(), &[])).collect();
    assert!(picks.len() > 10);
}

#[test]
fn min_p_filters_unlikely_tokens() {
    // probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1
    let probs = [0.5f32, 0.3, 0.15, 0.05];
    let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
    // min_p 0.2 → threshold 0.1: token 3 (0.05) is out, token 2 (0.15) stays
    let mut s = Sampler::new(sampling(1.0, 0, 1.0, 0.2, 9));
    let mut counts = [0usize; 4];
    for _ in 0..5000 {
        counts[s.sample(&mut logits.clone(), &[]) as usize] += 1;
    }
    assert_eq!(counts[3], 0, "{counts:?}");
    assert!(counts[2] > 500, "{counts:?}");
    // renormalized over the survivors: 0.5/0.95 etc.
    let f0 = counts[0] as f64 / 5000.0;
    assert!((f0 - 0.5 / 0.95).abs() < 0.03, "{counts:?}");
    // min_p 1.0 keeps only the top token
    let mut s = Sampler::new(sampling(1.0, 0, 1.0, 1.0, 9));
    for _ in 0..100 {
        assert_eq!(s.sample(&mut logits.clone(), &[]), 0);
    }
}

#[test]
fn penalties_change_the_choice_as_expected() {
    let greedy_with = |cfg: SamplerConfig| Sampler::new(SamplerConfig { temperature: 0.0, ..cfg });
    let pen = |rep: f32, pres: f32, freq: f32| SamplerConfig {
        repetition_penalty: rep,
        presence_penalty: pres,
        frequency_penalty: freq,
        ..SamplerConfig::greedy()
    };

    // repetition: positive logits are divided
    let mut l = vec![2.0, 1.9, 0.0];
    assert_eq!(greedy_with(pen(1.0, 0.0, 0.0)).sample(&mut l.clone(), &[0]), 0);
    assert_eq!(greedy_with(pen(1.5, 0.0, 0.0)).sample(&mut l, &[0, 0]), 1);
    assert_eq!(l, vec![2.0 / 1.5, 1.9, 0.0], "penalties are written back in place, once per token");
    // repetition: negative logits are multiplied (made more negative)
    let mut l = vec![-1.0, -1.2];
    assert_eq!(greedy_with(pen(1.5, 0.0, 0.0)).sample(&mut l, &[0]), 1);
    assert_eq!(l[0], -1.5);
    // presence: once per distinct token
    let mut l = vec![1.0, 0.8];
    assert_eq!(greedy_with(pen(1.0, 0.5, 0.0)).sample(&mut l, &[0, 0, 0]), 1);
    assert_eq!(l[0], 0.5);
    // frequency: once per occurrence
    let mut l = vec![1.0, 0.8, 0.0];
    assert_eq!(greedy_with(pen(1.0, 0.0, 0.1)).sample(&mut l, &[0]), 0);
    let mut l = vec![1.0, 0.8, 0.0];
    assert_eq!(greedy_with(pen(1.0, 0.0, 0.1)).sample(&mut l, &[0, 2, 0, 0]), 1);
    assert!((l[0] - 0.7).abs() < 1e-6 && (l[2] + 0.1).abs() < 1e-6, "{l:?}");
    // negative penalties encourage repetition
    let mut l = vec![1.0, 0.8];
    assert_eq!(greedy_with(pen(1.0, -0.5, 0.0)).sample(&mut l, &[1]), 1);
    // only the last penalty_last_n tokens count; ids outside the vocabulary are ignored
    let cfg = SamplerConfig { penalty_last_n: 2, ..pen(10.0, 0.0, 0.0) };
    let mut l = vec![2.0, 1.9, 0.0];
    assert_eq!(greedy_with(cfg.clone()).sample(&mut l, &[0, 2, 99_999]), 0);
    assert_eq!(greedy_with(cfg).sample(&mut [2.0, 1.9, 0.0], &[2, 0]), 1);
    // penalty_last_n = 0 turns penalties off
    let cfg = SamplerConfig { penalty_last_n: 0, ..pen(10.0, 1.0, 1.0) };
    assert_eq!(greedy_with(cfg).sample(&mut [2.0, 1.9], &[0, 0]), 0);
}

fn softmax(logits: &[f32], t: f32) -> Vec<f64> {
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = logits.iter().map(|&l| ((l as f64 - m) / t as f64).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

fn frequencies(cfg: SamplerConfig, logits: &[f32], n: usize) -> Vec<f64> {
    let mut s = Sampler::new(cfg);
    let mut counts = vec![0usize; logits.len()];
    let mut l = logits.to_vec();
    for _ in 0..n {
        l.copy_from_slice(logits);
        counts[s.sample(&mut l, &[]) as usize] += 1;
    }
    counts.iter().map(|&c| c as f64 / n as f64).collect()
}

fn assert_close(got: &[f64], want: &[f64], n: usize, what: &str) {
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        // 5 standard deviations of a binomial proportion, plus a little slack
        let tol = 5.0 * (w * (1.0 - w) / n as f64).sqrt() + 1e-3;
        assert!((g - w).abs() <= tol, "{what}: token {i}: got {g:.4} want {w:.4} (tol {tol:.4})");
    }
}

#[test]
fn empirical_frequencies_match_softmax() {
    const N: usize = 20_000;
    let logits = [1.0f32, 0.5, 2.0, -1.0, 0.0, 1.5, -0.5, 0.25];
    for t in [0.5f32, 1.0, 1.7] {
        let got = frequencies(sampling(t, 0, 1.0, 0.0, 1234), &logits, N);
        assert_close(&got, &softmax(&logits, t), N, &format!("T={t}"));
    }

    // top-k 5 + top-p 0.9 at T=0.8: the renormalized nucleus of softmax(top5 / T)
    let t = 0.8;
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].partial_cmp(&logits[a]).unwrap());
    let top5: Vec<usize> = order[..5].to_vec();
    let p5 = softmax(&top5.iter().map(|&i| logits[i]).collect::<Vec<_>>(), t);
    let mut keep = 0;
    let mut cum = 0.0;
    for p in &p5 {
        cum += p;
        keep += 1;
        if cum >= 0.9 {
            break;
        }
    }
    assert!(keep > 1 && keep < 5, "test setup: nucleus of {keep}");
    let mass: f64 = p5[..keep].iter().sum();
    let mut want = vec![0.0; logits.len()];
    for (j, &i) in top5[..keep].iter().enumerate() {
        want[i] = p5[j] / mass;
    }
    let got = frequencies(sampling(t, 5, 0.9, 0.0, 99), &logits, N);
    assert_close(&got, &want, N, "top-k 5, top-p 0.9");
}

#[test]
fn full_vocab_speed_and_sanity() {
    // Qwen-sized vocabulary, peaked like a real model's output; prints the cost per call
    let n = 151_936;
    let mut logits = random_logits(n, 5, 8.0);
    for (i, l) in logits.iter_mut().enumerate().take(40) {
        *l += 20.0 - i as f32 * 0.25;
    }
    let recent: Vec<u32> = (0..64).map(|i| i * 37 % n as u32).collect();
    for (name, cfg) in [
        ("default (top-k 20, top-p 0.8)", SamplerConfig { seed: Some(1), ..Default::default() }),
        ("top-k off, top-p 0.95", sampling(1.0, 0, 0.95, 0.0, 1)),
        ("top-k off, min-p 0.05", sampling(1.0, 0, 1.0, 0.05, 1)),
        ("greedy + repetition penalty", SamplerConfig { repetition_penalty: 1.1, ..SamplerConfig::greedy() }),
    ] {
        let mut s = Sampler::new(cfg);
        let mut work = logits.clone();
        let iters = 50;
        let start = std::time::Instant::now();
        for _ in 0..iters {
            work.copy_from_slice(&logits);
            let tok = s.sample(&mut work, &recent);
            assert!(tok < 40, "{name}: picked {tok}, outside the peaked head");
        }
        println!("{name}: {:.1} µs per token", start.elapsed().as_secs_f64() * 1e6 / iters as f64);
    }
}

// ------------------------------------------------------------------------------------------------
// StopMatcher

/// Feed chunks; return (emitted pieces, stopped).
fn feed(stops: &[&str], chunks: &[&str]) -> (Vec<String>, bool) {
    let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
    let mut out = Vec::new();
    for c in chunks {
        let (text, stopped) = m.push(c);
        out.push(text);
        if stopped {
            assert!(m.is_stopped());
            assert_eq!(m.push("more"), (String::new(), true));
            assert_eq!(m.finish(), "");
            return (out, true);
        }
    }
    out.push(m.finish());
    (out, false)
}

#[test]
fn stop_split_across_pushes() {
    let (out, stopped) = feed(&["<|im_end|>"], &["Hello ", "wor", "ld<|im", "_end|>", " ignored"]);
    assert!(stopped);
    assert_eq!(out, vec!["Hello ", "wor", "ld", ""]);

    // character by character
    let text = "abc<|im_end|>xyz";
    let chunks: Vec<String> = text.chars().map(String::from).collect();
    let chunks: Vec<&str> = chunks.iter().map(String::as_str).collect();
    let (out, stopped) = feed(&["<|im_end|>"], &chunks);
    assert!(stopped);
    assert_eq!(out.concat(), "abc");
    // nothing of the stop string leaked at any point
    assert!(out.iter().all(|p| !p.contains('<')));
}

#[test]
fn stop_text_before_stop_in_same_push() {
    let (out, stopped) = feed(&["STOP"], &["one two STOP three"]);
    assert!(stopped);
    assert_eq!(out, vec!["one two "]);
}

#[test]
fn held_back_prefix_released_when_it_is_not_a_stop() {
    let (out, stopped) = feed(&["<|im_end|>"], &["a <|im", "_start|> b"]);
    assert!(!stopped);
    assert_eq!(out, vec!["a ", "<|im_start|> b", ""]);
    // end of generation with a dangling prefix: finish() releases it
    let (out, stopped) = feed(&["<|im_end|>"], &["x <|im_"]);
    assert!(!stopped);
    assert_eq!(out, vec!["x ", "<|im_"]);
}

#[test]
fn multibyte_stops_and_text() {
    let (out, stopped) = feed(&["停止", "。\n\n"], &["你好", "，世界停", "止了"]);
    assert!(stopped);
    assert_eq!(out.concat(), "你好，世界");
    assert_eq!(out, vec!["你好", "，世界", ""]);
    let (out, stopped) = feed(&["🛑"], &["ok 👍", "🛑", "x"]);
    assert!(stopped);
    assert_eq!(out.concat(), "ok 👍");
    let (out, stopped) = feed(&["。\n\n"], &["第一句。", "\n", "第二句"]);
    assert!(!stopped);
    assert_eq!(out, vec!["第一句", "", "。\n第二句", ""]);
}

#[test]
fn earliest_of_several_stops_wins() {
    let (out, stopped) = feed(&["END", "D!"], &["xxEND!"]);
    assert!(stopped);
    assert_eq!(out.concat(), "xx");
    // overlapping self-prefix: "aaab" contains "aab" starting at 1
    let (out, stopped) = feed(&["aab"], &["aaa", "b"]);
    assert!(stopped);
    assert_eq!(out, vec!["a", ""]);
}

#[test]
fn no_stops_pass_through() {
    let (out, stopped) = feed(&[], &["a", "<|im_end|>", "b"]);
    assert!(!stopped);
    assert_eq!(out, vec!["a", "<|im_end|>", "b", ""]);
    let (out, _) = feed(&[""], &["abc"]);
    assert_eq!(out.concat(), "abc", "empty stop strings are ignored");
}

#[test]
fn stop_matcher_random_chunking_property() {
    // For random texts, stops and chunkings: the emitted text is exactly the text before the first
    // stop (or all of it), and every emitted prefix is a prefix of that answer (nothing leaks early).
    let alphabet = ["a", "b", "<", "|", "停", "止", "é", "\n"];
    let mut rng = StdRng::seed_from_u64(2024);
    for _ in 0..2000 {
        let len = rng.random_range(0..30);
        let text: String = (0..len).map(|_| alphabet[rng.random_range(0..alphabet.len())]).collect();
        let n_stops = rng.random_range(1..4);
        let stops: Vec<String> = (0..n_stops)
            .map(|_| {
                let l = rng.random_range(1..4);
                (0..l).map(|_| alphabet[rng.random_range(0..alphabet.len())]).collect()
            })
            .collect();
        let want =
            stops.iter().filter_map(|s| text.find(s.as_str())).min().map_or(text.as_str(), |p| &text[..p]);
        let mut m = StopMatcher::new(stops.clone());
        let mut emitted = String::new();
        let mut rest = text.as_str();
        let mut stopped = false;
        while !rest.is_empty() {
            let mut cut = rng.random_range(1..=rest.len());
            while !rest.is_char_boundary(cut) {
                cut += 1;
            }
            let (chunk, tail) = rest.split_at(cut);
            rest = tail;
            let (out, s) = m.push(chunk);
            emitted.push_str(&out);
            assert!(want.starts_with(&emitted), "leak: {emitted:?} vs {want:?} (stops {stops:?})");
            if s {
                stopped = true;
                break;
            }
        }
        if !stopped {
            emitted.push_str(&m.finish());
        }
        assert_eq!(emitted, want, "text {text:?} stops {stops:?}");
        assert_eq!(stopped, stops.iter().any(|s| text.contains(s.as_str())));
    }
}

/// Log-probabilities are the raw logits' log-softmax (f64 reference within 1e-5), the top tokens are the most
/// likely ones in order with ties to the lower id, and NaN logits are never among them.
#[test]
fn token_logprobs_are_the_models_distribution() {
    use quire_engine::sampler::TokenLogprob;
    for (seed, n) in [(1u64, 1usize), (2, 7), (3, 1000), (4, 151_936)] {
        let mut logits = random_logits(n, seed, 20.0);
        if n > 10 {
            logits[3] = f32::NAN;
            logits[5] = logits[4]; // a tie
        }
        let finite: Vec<f64> = logits.iter().filter(|v| !v.is_nan()).map(|&v| v as f64).collect();
        let max = finite.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + finite.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
        let token = (n / 2) as u32;
        for n_top in [0usize, 1, 5, 20] {
            let lp = TokenLogprob::from_logits(&logits, token, n_top, |t| t.to_le_bytes().to_vec());
            assert_eq!((lp.chosen.token, &lp.chosen.bytes[..]), (token, &token.to_le_bytes()[..]));
            assert!((lp.chosen.logprob as f64 - (logits[token as usize] as f64 - lse)).abs() < 1e-5);
            let mut want: Vec<(u32, f32)> =
                logits.iter().enumerate().filter(|(_, v)| !v.is_nan()).map(|(i, &v)| (i as u32, v)).collect();
            want.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
            want.truncate(n_top);
            assert_eq!(
                lp.top.iter().map(|t| t.token).collect::<Vec<_>>(),
                want.iter().map(|t| t.0).collect::<Vec<_>>()
            );
            for (got, (_, l)) in lp.top.iter().zip(&want) {
                assert!((got.logprob as f64 - (*l as f64 - lse)).abs() < 1e-5 && got.logprob <= 0.0);
            }
            let mass: f64 = lp.top.iter().map(|t| (t.logprob as f64).exp()).sum();
            assert!(mass <= 1.0 + 1e-5);
        }
    }
}
