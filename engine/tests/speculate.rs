//! Speculative decoding changes no output: prompt lookup and predicted outputs give the same tokens as plain
//! decoding, greedy and sampled at a fixed seed, alone (sessions) and with concurrent streams (scheduler),
//! and the cache holds exactly the kept tokens after rejections.

mod common;

use std::ops::ControlFlow;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::{channel_request, collect_events, fixture, session_text};
use quire_engine::generate::{Engine, GenerateParams, GenerationStats};
use quire_engine::grammar::GrammarSpec;
use quire_engine::sampler::{SamplerConfig, TokenLogprob};
use quire_engine::scheduler::{Event, Priority, Request, Scheduler, SchedulerConfig, Usage};
use quire_engine::speculate::SpecConfig;

fn engine(ty: &str, spec: SpecConfig) -> Engine {
    let mut e = Engine::load(fixture(&format!("tiny-qwen3-{ty}.gguf"))).unwrap();
    e.spec = spec;
    e
}

/// Drafting on every step, whatever the cost model says, so verification is exercised.
fn always() -> SpecConfig {
    SpecConfig { always: true, ..SpecConfig::default() }
}

/// A prompt that repeats itself, so lookup finds matches.
fn prompt(i: u32) -> Vec<u32> {
    let unit: Vec<u32> = (0..12).map(|k| (k * 31 + i * 7) % 900 + 10).collect();
    unit.iter().cycle().take(60).copied().collect()
}

fn params(sampled: bool, seed: u64, max_tokens: usize) -> GenerateParams {
    let sampler = if sampled {
        SamplerConfig { temperature: 0.8, top_k: 40, top_p: 0.95, seed: Some(seed), ..Default::default() }
    } else {
        SamplerConfig { temperature: 0.0, ..Default::default() }
    };
    GenerateParams { max_tokens, sampler, ignore_eos: true, ..Default::default() }
}

fn run(e: &Engine, n_ctx: usize, prompt: &[u32], p: &GenerateParams) -> (String, GenerationStats, usize) {
    let mut s = e.session(n_ctx).unwrap();
    let (text, stats) = session_text(&mut s, prompt, p);
    (text, stats, s.n_cached())
}

#[test]
fn sessions_give_the_same_tokens_with_and_without_speculation() {
    let mut drafted = 0;
    for ty in ["q4_0", "q8_0", "q4_k_m", "q5_0"] {
        let (off, on) = (engine(ty, SpecConfig::off()), engine(ty, always()));
        for (i, sampled) in [(0, false), (1, true), (2, false), (3, true)] {
            let p = params(sampled, 7 + i as u64, 40);
            let (text, plain, cached) = run(&off, 512, &prompt(i), &p);
            assert_eq!(plain.spec.drafted, 0, "off drafts nothing");
            // prompt lookup
            let (t, s, c) = run(&on, 512, &prompt(i), &p);
            assert_eq!((&t, &s.tokens), (&text, &plain.tokens), "{ty} #{i}: lookup changed the output");
            assert_eq!(c, cached, "{ty} #{i}: the cache holds what plain decoding holds");
            drafted += s.spec.drafted;
            // a prediction equal to the output: nearly every drafted token is accepted
            let good = GenerateParams { prediction: plain.tokens.clone(), ..p.clone() };
            let (t, s, c) = run(&on, 512, &prompt(i), &good);
            assert_eq!((&t, &s.tokens, c), (&text, &plain.tokens, cached), "{ty} #{i}: prediction");
            assert!(s.spec.accepted * 2 >= plain.tokens.len(), "{ty} #{i}: {:?}", s.spec);
            // a wrong prediction: rejected, same output
            let bad = GenerateParams { prediction: (0..40).map(|k| k * 3 + 1).collect(), ..p.clone() };
            let (t, s, c) = run(&on, 512, &prompt(i), &bad);
            assert_eq!((&t, &s.tokens, c), (&text, &plain.tokens, cached), "{ty} #{i}: wrong prediction");
        }
    }
    assert!(drafted > 0, "lookup drafted nothing: the test tested nothing");
}

#[test]
fn drafts_stop_at_the_context_max_tokens_and_stop_strings() {
    let (off, on) = (engine("q4_0", SpecConfig::off()), engine("q4_0", always()));
    let pr = prompt(5);
    // the full reply as a prediction, longer than what may be generated
    let long = run(&off, 512, &pr, &params(false, 0, 80)).1.tokens;
    for (n_ctx, max_tokens) in [(70, 80), (512, 9), (512, 1)] {
        let p = GenerateParams { prediction: long.clone(), ..params(false, 0, max_tokens) };
        let plain = run(&off, n_ctx, &pr, &p);
        let spec = run(&on, n_ctx, &pr, &p);
        assert_eq!(spec.1.tokens, plain.1.tokens, "n_ctx {n_ctx}, max_tokens {max_tokens}");
        assert_eq!((spec.1.finish, spec.2), (plain.1.finish, plain.2));
        assert!(spec.1.tokens.len() <= max_tokens && spec.2 <= n_ctx);
    }
    // a stop string inside the predicted text: the reply ends where plain decoding ends it
    let full = run(&off, 512, &pr, &params(false, 0, 80)).0;
    let chars: Vec<char> = full.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let p = GenerateParams { prediction: long, stop: vec![stop.clone()], ..params(false, 0, 80) };
    let plain = run(&off, 512, &pr, &p);
    let spec = run(&on, 512, &pr, &p);
    assert_eq!((&spec.0, &spec.1.tokens, spec.1.finish), (&plain.0, &plain.1.tokens, plain.1.finish));
    assert!(!spec.0.contains(&stop) && spec.0.len() < full.len(), "stopped at {stop:?}");
}

#[test]
fn a_drafted_end_of_generation_token_is_verified_like_any_other() {
    let (off, on) = (engine("q4_0", SpecConfig::off()), engine("q4_0", always()));
    let pr = prompt(6);
    let plain = run(&off, 512, &pr, &params(false, 0, 30)).1.tokens;
    // the prediction follows the reply for 9 tokens, then ends generation, then goes on
    let eog = off.tokenizer.eog_ids()[0];
    let mut prediction = plain[..9].to_vec();
    prediction.extend([eog, 5, 6, 7]);
    for ignore_eos in [false, true] {
        let p = GenerateParams { prediction: prediction.clone(), ignore_eos, ..params(false, 0, 30) };
        let a = run(&off, 512, &pr, &p);
        let b = run(&on, 512, &pr, &p);
        assert_eq!((&b.1.tokens, b.1.finish, b.2), (&a.1.tokens, a.1.finish, a.2), "ignore_eos {ignore_eos}");
        assert!(b.1.spec.accepted >= 8, "{:?}", b.1.spec);
    }
}

fn stream(s: &Scheduler, prompt: Vec<u32>, params: GenerateParams) -> mpsc::Receiver<Event> {
    let (req, rx) = channel_request(prompt, params, None, Priority::Interactive);
    s.submit(req).unwrap();
    rx
}

#[test]
fn four_concurrent_streams_give_the_same_text_with_and_without_speculation() {
    for spec in [SpecConfig::off(), SpecConfig::default(), always()] {
        let e = engine("q4_k_m", SpecConfig::off());
        let solo: Vec<String> =
            (0..4).map(|i| run(&e, 512, &prompt(i), &params(i % 2 == 1, i as u64, 32)).0).collect();
        let s = Scheduler::new(
            Arc::new(engine("q4_k_m", spec)),
            SchedulerConfig { n_slots: 4, n_ctx: 512, queue_capacity: 8, n_batch: 256 },
        )
        .unwrap();
        let rxs: Vec<_> = (0..4u32)
            .map(|i| {
                let mut p = params(i % 2 == 1, i as u64, 32);
                if i == 2 {
                    p.prediction = prompt(i)[..30].to_vec();
                }
                stream(&s, prompt(i), p)
            })
            .collect();
        let got: Vec<(String, Usage)> =
            rxs.into_iter().map(|rx| collect_events(rx, Duration::from_secs(120), "stream")).collect();
        for (i, (text, usage)) in got.iter().enumerate() {
            assert_eq!(text, &solo[i], "{spec:?}: stream {i}");
            assert!(usage.spec.accepted <= usage.spec.drafted);
        }
        if spec.always {
            assert!(got.iter().map(|g| g.1.spec.drafted).sum::<usize>() > 0, "nothing drafted");
            let st = s.stats();
            assert!(st.drafted_tokens_total > 0 && st.accepted_tokens_total <= st.drafted_tokens_total);
        }
    }
}

/// Everything a scheduler request's events carry: its text, each token's log-probabilities, its usage.
fn events(rx: mpsc::Receiver<Event>) -> (String, Vec<TokenLogprob>, Usage) {
    let (mut text, mut lps) = (String::new(), Vec::new());
    loop {
        match rx.recv_timeout(Duration::from_secs(120)).expect("the scheduler answers") {
            Event::Text(t) => text.push_str(&t),
            Event::Logprob(lp) => lps.push(lp),
            Event::Done(u) => return (text, lps, u),
            Event::Failed(e) => panic!("request failed: {e}"),
        }
    }
}

fn scheduler(spec: SpecConfig, n_slots: usize, n_batch: usize) -> Scheduler {
    let cfg = SchedulerConfig { n_slots, n_ctx: 512, queue_capacity: 8, n_batch };
    Scheduler::new(Arc::new(engine("q8_0", spec)), cfg).unwrap()
}

/// A grammar and logprobs see every verified position as plain decoding does: the mask advances token by
/// token through accepted drafts, and each token's logprobs are those of its own position.
#[test]
fn grammar_and_logprobs_are_the_same_with_speculation() {
    let e = engine("q8_0", SpecConfig::off());
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"name": {"type": "string", "minLength": 12}, "n": {"type": "integer"}},
        "required": ["name", "n"],
    });
    let grammars = [GrammarSpec::Regex("[a-z ]{8,60}".into()), GrammarSpec::JsonSchema(schema)];
    for (i, spec) in grammars.iter().enumerate() {
        let mut p = params(i == 1, 3, 40);
        p.ignore_eos = false;
        p.constraint = Some(e.grammars().unwrap().compile(spec).unwrap());
        p.logprobs = Some(3);
        let plain = events(stream(&scheduler(SpecConfig::off(), 1, 64), prompt(i as u32), p.clone()));
        assert!(!plain.1.is_empty());
        // the reply itself as the prediction: long accepted runs through the grammar
        let tokens = run(&e, 512, &prompt(i as u32), &p).1.tokens;
        let p = GenerateParams { prediction: tokens, ..p };
        let fast = events(stream(&scheduler(always(), 1, 64), prompt(i as u32), p));
        assert_eq!((&fast.0, &fast.1), (&plain.0, &plain.1), "{spec:?}");
        assert_eq!((fast.2.completion_tokens, fast.2.finish), (plain.2.completion_tokens, plain.2.finish));
        assert!(fast.2.spec.accepted > 0, "{spec:?}: {:?} for {:?}", fast.2.spec, plain.0);
    }
}

/// A batch of 4 tokens for 2 slots: drafts are cut to fit beside the other slot's prefill (which still
/// moves on every step), and batch requests paused for interactive ones and refilled go on unchanged.
#[test]
fn small_batches_and_paused_requests_keep_the_output() {
    let e = engine("q8_0", SpecConfig::off());
    let long = |i: u32| -> Vec<u32> { prompt(i).into_iter().cycle().take(200).collect() };
    let solo = |pr: &[u32], seed: u64, n: usize| run(&e, 512, pr, &params(seed % 2 == 1, seed, n));
    let s = scheduler(always(), 2, 4);
    let batch: Vec<_> = (0..2u32)
        .map(|i| {
            let mut p = params(i % 2 == 1, 10 + i as u64, 300);
            p.prediction = solo(&long(i), 10 + i as u64, 300).1.tokens;
            let (req, rx) = channel_request(long(i), p, None, Priority::Batch);
            s.submit(req).unwrap();
            rx
        })
        .collect();
    // once both decode (past their 200-token prompts at 4 tokens a step), people arrive
    let mut first: Vec<String> = Vec::new();
    for rx in &batch {
        loop {
            if let Event::Text(t) = rx.recv_timeout(Duration::from_secs(120)).unwrap() {
                first.push(t);
                break;
            }
        }
    }
    let people: Vec<_> = (0..2u32).map(|i| stream(&s, prompt(i + 4), params(false, 0, 12))).collect();
    for (i, rx) in people.into_iter().enumerate() {
        let (text, usage) = collect_events(rx, Duration::from_secs(120), "interactive");
        assert_eq!(text, solo(&prompt(i as u32 + 4), 0, 12).0, "interactive {i}");
        assert!(usage.spec.drafted <= usage.completion_tokens * 16);
    }
    for (i, rx) in batch.into_iter().enumerate() {
        let (rest, usage) = collect_events(rx, Duration::from_secs(120), "batch");
        assert_eq!(first[i].clone() + &rest, solo(&long(i as u32), 10 + i as u64, 300).0, "batch {i}");
        assert!(usage.spec.accepted > 0, "batch {i}: {:?}", usage.spec);
    }
    // (a batch request may finish before the people come; one paused is the case tested)
    assert!(s.stats().preemptions_total >= 1, "{:?}", s.stats());
}

/// A consumer that leaves in the middle of a verified step (several tokens drawn at once) gets a reply, and
/// a count, that end where it left, as without speculation.
#[test]
fn a_cancel_inside_a_verified_step_keeps_only_what_was_delivered() {
    let (off, on) = (engine("q4_0", SpecConfig::off()), engine("q4_0", always()));
    let pr = prompt(7);
    let reply = run(&off, 512, &pr, &params(false, 0, 60)).1.tokens;
    let p = GenerateParams { prediction: reply, ..params(false, 0, 60) };
    for leave_after in [1, 5, 17] {
        let cancelled = |e: &Engine| {
            let mut s = e.session(512).unwrap();
            let (mut pieces, mut text) = (0, String::new());
            let stats = s
                .generate(&pr, &p, |t| {
                    text.push_str(t);
                    pieces += 1;
                    if pieces == leave_after {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })
                .unwrap();
            (text, stats)
        };
        let (a, b) = (cancelled(&off), cancelled(&on));
        assert_eq!(b.1.finish, quire_engine::generate::FinishReason::Cancelled);
        assert_eq!((&b.0, &b.1.tokens, b.1.generated_tokens), (&a.0, &a.1.tokens, a.1.generated_tokens));
        assert!(b.1.spec.accepted > 0 || leave_after == 1, "{:?}", b.1.spec);
        assert!(
            b.1.spec.accepted <= b.1.generated_tokens,
            "accepted drafts the consumer never got: {:?}",
            b.1.spec
        );

        // the same through the scheduler: the usage counts what the consumer got
        let texts = Arc::new(std::sync::Mutex::new(0usize));
        let (tx, rx) = mpsc::channel();
        let seen = texts.clone();
        let on_event = Box::new(move |ev: Event| {
            let stop = matches!(ev, Event::Text(_)) && {
                let mut n = seen.lock().unwrap();
                *n += 1;
                *n == leave_after
            };
            let _ = tx.send(ev);
            if stop {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        let cfg = SchedulerConfig { n_slots: 1, n_ctx: 512, queue_capacity: 8, n_batch: 64 };
        let s = Scheduler::new(Arc::new(engine("q4_0", always())), cfg).unwrap();
        let req = Request {
            prompt: pr.clone(),
            params: p.clone(),
            deadline: None,
            priority: Priority::Interactive,
            on_event,
        };
        s.submit(req).unwrap();
        let (text, _, usage) = events(rx);
        assert_eq!(
            (text, usage.completion_tokens),
            (a.0.clone(), a.1.generated_tokens),
            "scheduler, {leave_after}"
        );
        assert_eq!(usage.finish, quire_engine::generate::FinishReason::Cancelled);
        assert!(usage.spec.accepted <= usage.completion_tokens, "{:?}", usage.spec);
    }
}

/// The tiny q8_0 model drafted for by the tiny q4_0 one (the same checkpoint quantized coarser, so most
/// drafts are right).
fn with_draft(spec: SpecConfig) -> Engine {
    let mut e = engine("q8_0", spec);
    e.load_draft(fixture("tiny-qwen3-q4_0.gguf"), &Default::default()).unwrap();
    e
}

#[test]
fn a_draft_model_changes_no_output() {
    let off = engine("q8_0", SpecConfig::off());
    let (forced, adaptive) = (with_draft(always()), with_draft(SpecConfig::default()));
    let mut accepted = 0;
    for (i, sampled) in [(0, false), (1, true), (2, false), (3, true)] {
        let p = params(sampled, 30 + i as u64, 40);
        // a prompt with nothing to look up: the drafts are the draft model's (the long ones: its cache
        // catches up over several steps)
        let len = if i < 2 { 40 } else { 300 };
        let pr: Vec<u32> = (0..len).map(|k| (k * 37 + i * 11) % 500 + 3).collect();
        let (text, plain, cached) = run(&off, 512, &pr, &p);
        for e in [&forced, &adaptive] {
            let (t, s, c) = run(e, 512, &pr, &p);
            assert_eq!(
                (&t, &s.tokens, c),
                (&text, &plain.tokens, cached),
                "#{i}: the draft model changed the output"
            );
            assert!(s.spec.accepted <= s.spec.drafted);
        }
        accepted += run(&forced, 512, &pr, &p).1.spec.accepted;
        // a second turn in the same session: the draft cache follows the conversation's prefix
        let mut s = forced.session(512).unwrap();
        let mut t = off.session(512).unwrap();
        for turn in [pr.clone(), [pr.clone(), plain.tokens.clone(), vec![7, 8, 9]].concat()] {
            let a = s.generate(&turn, &p, |_| ControlFlow::Continue(())).unwrap();
            let b = t.generate(&turn, &p, |_| ControlFlow::Continue(())).unwrap();
            assert_eq!((a.tokens, a.cached_tokens), (b.tokens, b.cached_tokens), "#{i}: second turn");
        }
    }
    assert!(
        accepted > 20,
        "the draft model's drafts were hardly ever accepted ({accepted}): nothing was tested"
    );

    // four streams in one scheduler, each slot with its own draft cache
    let solo: Vec<String> =
        (0..4).map(|i| run(&off, 512, &prompt(i + 8), &params(i % 2 == 1, i as u64, 32)).0).collect();
    for spec in [always(), SpecConfig::default()] {
        let cfg = SchedulerConfig { n_slots: 4, n_ctx: 512, queue_capacity: 8, n_batch: 64 };
        let s = Scheduler::new(Arc::new(with_draft(spec)), cfg).unwrap();
        let rxs: Vec<_> =
            (0..4u32).map(|i| stream(&s, prompt(i + 8), params(i % 2 == 1, i as u64, 32))).collect();
        for (i, rx) in rxs.into_iter().enumerate() {
            let (text, usage) = collect_events(rx, Duration::from_secs(120), "stream");
            assert_eq!(text, solo[i], "{spec:?}: stream {i}");
            assert!(!spec.always || usage.spec.drafted > 0, "stream {i} drafted nothing");
        }
    }
}

/// A draft model whose tokens differ from the model's is refused at load, saying where.
#[test]
fn a_draft_model_of_another_vocabulary_is_refused() {
    let mut bytes = std::fs::read(fixture("tiny-qwen3-q4_0.gguf")).unwrap();
    // token 300 of `tokenizer.ggml.tokens` (an array of u64-length-prefixed strings) becomes DEL characters
    let key = b"tokenizer.ggml.tokens";
    let mut at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 4 + 4 + 8;
    for _ in 0..300 {
        at += 8 + u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
    }
    let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
    bytes[at + 8..at + 8 + len].fill(0x7f);
    let path = std::env::temp_dir().join(format!("quire-draft-vocab-{}.gguf", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let mut e = engine("q8_0", SpecConfig::default());
    let err = format!("{:#}", e.load_draft(&path, &Default::default()).unwrap_err());
    std::fs::remove_file(&path).unwrap();
    assert!(err.contains("vocabulary differs") && err.contains("token 300"), "{err}");
    assert!(e.draft.is_none());
    // a model of another family (another tokenizer size)
    if let Some(real) = common::real_draft_model() {
        let err = format!("{:#}", e.load_draft(&real, &Default::default()).unwrap_err());
        assert!(err.contains("vocabulary differs") && err.contains("tokens"), "{err}");
    }
}
