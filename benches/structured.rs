//! Constrained decoding against free decoding on a real model (`$QUIRE_BENCH_MODEL`, e.g. the
//! Qwen2.5-Coder-1.5B file scripts/test.sh fetches), with the content-production schemas of
//! `engine/tests/data/content-schemas.json`:
//! - compile time of each schema, first use and from the cache;
//! - decode tokens/s at 1 and 4 streams through the scheduler, constrained vs free, alternating, the free
//!   runs generating exactly as many tokens as the constrained ones did (`ignore_eos`);
//! - the grammar's share of a decoded token: each constrained reply's tokens replayed through a fresh
//!   constraint, timing the mask computations alone.
//!
//! `QUIRE_BENCH_MODEL=~/.cache/quire/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf cargo bench --bench structured`

use std::ops::ControlFlow;
use std::sync::{mpsc, Arc};
use std::time::Instant;

use quire_engine::chat::{Message, RenderOptions};
use quire_engine::generate::{Engine, GenerateParams};
use quire_engine::grammar::{GrammarSpec, Grammars};
use quire_engine::sampler::SamplerConfig;
use quire_engine::scheduler::{Event, Request, Scheduler, SchedulerConfig};
use serde_json::Value;

const SCHEMAS: &str = include_str!("../engine/tests/data/content-schemas.json");
/// Alternating rounds of each kind (`QUIRE_BENCH_ROUNDS`, default 2).
fn rounds() -> usize {
    std::env::var("QUIRE_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2)
}

struct Case {
    prompt: Vec<u32>,
    spec: GrammarSpec,
}

/// Runs `jobs` on a scheduler with `streams` slots; returns the generated tokens of each and the decode
/// tokens/s.
fn run(engine: &Arc<Engine>, streams: usize, jobs: Vec<(Vec<u32>, GenerateParams)>) -> (Vec<usize>, f64) {
    let sched = Scheduler::new(
        engine.clone(),
        SchedulerConfig { n_slots: streams, n_ctx: 1024, queue_capacity: jobs.len(), n_batch: 256 },
    )
    .unwrap();
    let t0 = Instant::now();
    let rxs: Vec<_> = jobs
        .into_iter()
        .map(|(prompt, params)| {
            let (tx, rx) = mpsc::channel();
            let on_event = Box::new(move |e| {
                if tx.send((Instant::now(), e)).is_ok() {
                    ControlFlow::Continue(())
                } else {
                    ControlFlow::Break(())
                }
            });
            sched
                .submit(Request { prompt, params, deadline: None, priority: Default::default(), on_event })
                .unwrap();
            rx
        })
        .collect();
    let (mut counts, mut gen_secs) = (Vec::new(), 0.0);
    let mut last = t0;
    for rx in rxs {
        loop {
            match rx.recv().unwrap() {
                (_, Event::Text(_) | Event::Logprob(_)) => {}
                (at, Event::Done(u)) => {
                    counts.push(u.completion_tokens);
                    gen_secs += u.gen_secs;
                    last = last.max(at);
                    break;
                }
                (_, Event::Failed(f)) => panic!("{f}"),
            }
        }
    }
    let tokens = counts.iter().sum::<usize>() as f64;
    // One stream: decode time alone (each request's prefill is outside its gen_secs). Several: the wall
    // time, since their decode times overlap (both kinds of run carry the same prefill work).
    let secs = if streams == 1 { gen_secs } else { (last - t0).as_secs_f64() };
    (counts, tokens / secs)
}

fn main() {
    let Some(path) = std::env::var_os("QUIRE_BENCH_MODEL") else {
        eprintln!("skipping the structured-output benchmark: set QUIRE_BENCH_MODEL to a GGUF file");
        return;
    };
    let engine = Arc::new(Engine::load(&path).unwrap());
    let cases: Vec<Value> = serde_json::from_str(SCHEMAS).unwrap();

    let t = Instant::now();
    let grammars = Grammars::new(&engine.tokenizer, engine.model.config.vocab_size).unwrap();
    println!(
        "token trie for {} ids: {:.0} ms (once per model)",
        engine.model.config.vocab_size,
        t.elapsed().as_secs_f64() * 1e3
    );
    println!("\n| schema | first compile (ms) | cached (ms) |\n|---|---:|---:|");
    let mut firsts = Vec::new();
    for c in &cases {
        let spec = GrammarSpec::JsonSchema(c["schema"].clone());
        let t = Instant::now();
        grammars.compile(&spec).unwrap();
        let first = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        grammars.compile(&spec).unwrap();
        let cached = t.elapsed().as_secs_f64() * 1e3;
        firsts.push(first);
        println!("| {} | {first:.2} | {cached:.3} |", c["name"].as_str().unwrap());
    }
    firsts.sort_by(f64::total_cmp);
    println!(
        "median first compile {:.2} ms, max {:.2} ms",
        firsts[firsts.len() / 2],
        firsts[firsts.len() - 1]
    );

    let opts = RenderOptions { add_generation_prompt: true, ..Default::default() };
    let cases: Vec<Case> = cases
        .iter()
        .map(|c| {
            let m = [
                Message::system("You write content for an online shop. Reply with JSON only."),
                Message::user(c["prompt"].as_str().unwrap()),
            ];
            Case {
                prompt: engine.chat_tokens(&m, &opts).unwrap(),
                spec: GrammarSpec::JsonSchema(c["schema"].clone()),
            }
        })
        .collect();
    let sampler = |i: usize| SamplerConfig { seed: Some(i as u64), ..SamplerConfig::default() };
    let g = engine.grammars().unwrap();
    let constrained = |i: usize, c: &Case| GenerateParams {
        max_tokens: 600,
        sampler: sampler(i),
        constraint: Some(g.compile(&c.spec).unwrap()),
        ..Default::default()
    };

    // Which tokens each constrained reply has, for the free runs' lengths and the mask replay.
    let mut replies = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let mut session = engine.session(1024).unwrap();
        let stats = session.generate(&c.prompt, &constrained(i, c), |_| ControlFlow::Continue(())).unwrap();
        replies.push(stats.tokens);
    }

    println!("\n| streams | free tok/s | constrained tok/s | ratio of means | median of round ratios | round ratios |");
    println!("|---:|---:|---:|---:|---:|---|");
    for streams in [1, 4] {
        let (mut free, mut cons) = (Vec::new(), Vec::new());
        for _ in 0..rounds() {
            let jobs = cases.iter().enumerate().map(|(i, c)| (c.prompt.clone(), constrained(i, c))).collect();
            let (counts, tps) = run(&engine, streams, jobs);
            cons.push(tps);
            let jobs = cases
                .iter()
                .zip(&counts)
                .enumerate()
                .map(|(i, (c, &n))| {
                    let p = GenerateParams {
                        max_tokens: n,
                        sampler: sampler(i),
                        ignore_eos: true,
                        ..Default::default()
                    };
                    (c.prompt.clone(), p)
                })
                .collect();
            free.push(run(&engine, streams, jobs).1);
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (f, c) = (mean(&free), mean(&cons));
        // Each round's two runs are adjacent in time, so their ratio is the least disturbed by a shared
        // host's drift; the median of those ratios is the figure to quote.
        let mut ratios: Vec<f64> = cons.iter().zip(&free).map(|(c, f)| c / f).collect();
        let list = ratios.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>().join(", ");
        ratios.sort_by(f64::total_cmp);
        let n = ratios.len();
        let median = if n % 2 == 1 { ratios[n / 2] } else { (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0 };
        println!("| {streams} | {f:.2} | {c:.2} | {:.3} | {median:.3} | {list} |", c / f);
    }

    // The mask's cost per token, alone.
    let (mut secs, mut masks) = (0.0, 0usize);
    for (c, tokens) in cases.iter().zip(&replies) {
        let mut k = g.compile(&c.spec).unwrap();
        let mut logits = vec![0.0f32; engine.model.config.vocab_size];
        for &t in tokens {
            let t0 = Instant::now();
            k.mask(&mut logits).unwrap();
            secs += t0.elapsed().as_secs_f64();
            masks += 1;
            if engine.tokenizer.is_eog(t) {
                break;
            }
            k.commit(t).unwrap();
        }
    }
    println!("\nmask: {masks} tokens, {:.3} ms per token on average", secs / masks as f64 * 1e3);
}
