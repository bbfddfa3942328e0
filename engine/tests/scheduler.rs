//! Continuous batching on the tiny model: batch-invariant outputs, prefix reuse, cancellation, queue limits
//! and deadlines.

mod common;

use std::ops::ControlFlow;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{channel_request, collect_events, fixture, session_text};
use quire_engine::generate::{Engine, FinishReason, GenerateParams, PromptError};
use quire_engine::sampler::SamplerConfig;
use quire_engine::scheduler::{
    Event, Failure, Priority, Request, Scheduler, SchedulerConfig, SubmitError, Usage,
};

fn engine() -> Arc<Engine> {
    Arc::new(Engine::load(fixture("tiny-qwen3-q4_0.gguf")).unwrap())
}

fn params(seed: u64, max_tokens: usize) -> GenerateParams {
    let sampler =
        SamplerConfig { temperature: 0.9, top_k: 0, top_p: 1.0, seed: Some(seed), ..Default::default() };
    GenerateParams { max_tokens, sampler, ignore_eos: true, ..Default::default() }
}

/// A request whose events go to the returned channel (dropping it cancels the request).
fn request(
    prompt: Vec<u32>,
    params: GenerateParams,
    deadline: Option<Instant>,
) -> (Request, mpsc::Receiver<Event>) {
    channel_request(prompt, params, deadline, Priority::Interactive)
}

/// Submit; collect (text, usage) from the channel.
fn submit(s: &Scheduler, prompt: Vec<u32>, p: GenerateParams) -> mpsc::Receiver<Event> {
    let (req, rx) = request(prompt, p, None);
    s.submit(req).unwrap();
    rx
}

fn collect(rx: mpsc::Receiver<Event>) -> (String, Usage) {
    collect_events(rx, Duration::from_secs(60), "request")
}

fn prompt(i: u32) -> Vec<u32> {
    (0..20 + 3 * i).map(|k| (k * 7 + i * 13) % 500).collect()
}

#[test]
fn batched_requests_equal_solo_runs() {
    let engine = engine();
    // alone, through the plain session loop
    let solo: Vec<String> = (0..4)
        .map(|i| session_text(&mut engine.session(256).unwrap(), &prompt(i), &params(i as u64, 24)).0)
        .collect();
    // together, four slots decoding in one batch
    let cfg = SchedulerConfig { n_slots: 4, n_ctx: 256, queue_capacity: 8, n_batch: 16 };
    let sched = Scheduler::new(engine.clone(), cfg).unwrap();
    let rxs: Vec<_> = (0..4).map(|i| submit(&sched, prompt(i), params(i as u64, 24))).collect();
    for (i, rx) in rxs.into_iter().enumerate() {
        let (text, usage) = collect(rx);
        assert_eq!(text, solo[i], "request {i} differs when batched");
        assert_eq!(usage.completion_tokens, 24);
        assert_eq!(usage.finish, FinishReason::Length);
        assert_eq!(usage.prompt_tokens, prompt(i as u32).len());
    }
    let stats = sched.stats();
    assert_eq!(stats.generated_tokens_total, 96);
    assert_eq!(stats.active, 0);
}

#[test]
fn follow_up_turn_reuses_the_cached_prefix() {
    let sched =
        Scheduler::new(engine(), SchedulerConfig { n_slots: 2, n_ctx: 256, queue_capacity: 4, n_batch: 64 })
            .unwrap();
    let first = prompt(1);
    let (_, u1) = collect(submit(&sched, first.clone(), params(1, 8)));
    assert_eq!(u1.cached_tokens, 0);
    let mut second = first.clone();
    second.extend([5, 6, 7, 8]);
    let (_, u2) = collect(submit(&sched, second, params(2, 8)));
    assert_eq!(u2.cached_tokens, first.len(), "the first turn's prompt should be reused");
}

#[test]
fn cancelling_frees_the_slot() {
    let sched =
        Scheduler::new(engine(), SchedulerConfig { n_slots: 1, n_ctx: 512, queue_capacity: 4, n_batch: 64 })
            .unwrap();
    let (tx, rx) = mpsc::channel();
    let mut pieces = 0;
    sched
        .submit(Request {
            prompt: prompt(2),
            params: params(3, 400),
            deadline: None,
            priority: Priority::Interactive,
            on_event: Box::new(move |e| {
                if let Event::Text(_) = &e {
                    pieces += 1;
                    if pieces == 3 {
                        return ControlFlow::Break(());
                    }
                }
                let _ = tx.send(e);
                ControlFlow::Continue(())
            }),
        })
        .unwrap();
    let done = loop {
        match rx.recv_timeout(Duration::from_secs(60)).unwrap() {
            Event::Done(u) => break u,
            Event::Failed(e) => panic!("{e}"),
            Event::Text(_) | Event::Logprob(_) => {}
        }
    };
    assert_eq!(done.finish, FinishReason::Cancelled);
    assert!(done.completion_tokens < 400);
    // the slot is free: a new request is served
    let (_, u) = collect(submit(&sched, prompt(3), params(4, 4)));
    assert_eq!(u.completion_tokens, 4);
    assert_eq!(sched.stats().active, 0);
}

#[test]
fn queue_limit_and_bad_requests_are_refused() {
    let sched =
        Scheduler::new(engine(), SchedulerConfig { n_slots: 1, n_ctx: 64, queue_capacity: 1, n_batch: 64 })
            .unwrap();
    let too_long: Vec<u32> = vec![1; 65];
    let noop =
        || -> Box<dyn FnMut(Event) -> ControlFlow<()> + Send> { Box::new(|_| ControlFlow::Continue(())) };
    let req = |prompt: Vec<u32>, p: GenerateParams| Request {
        prompt,
        params: p,
        deadline: None,
        priority: Priority::Interactive,
        on_event: noop(),
    };
    assert_eq!(
        sched.submit(req(too_long, params(0, 4))).unwrap_err(),
        SubmitError::Prompt(PromptError::TooLong { prompt_tokens: 65, n_ctx: 64 })
    );
    assert_eq!(sched.submit(req(vec![], params(0, 4))).unwrap_err(), SubmitError::Prompt(PromptError::Empty));
    // a prompt must leave one position for the reply
    assert!(matches!(
        sched.submit(req(vec![1; 64], params(0, 4))),
        Err(SubmitError::Prompt(PromptError::TooLong { .. }))
    ));
    let mut bad = params(0, 4);
    bad.sampler.temperature = f32::NAN;
    assert!(matches!(sched.submit(req(vec![1, 2], bad)), Err(SubmitError::Invalid(_))));
    // fill the slot and the one queue place, then the next is refused
    let mut refused = false;
    for _ in 0..6 {
        if let Err(e) = sched.submit(req(prompt(0), params(0, 40))) {
            assert_eq!(e, SubmitError::QueueFull { capacity: 1 });
            refused = true;
            break;
        }
    }
    assert!(refused, "a full queue must refuse requests");
}

#[test]
fn deadline_ends_a_request_with_a_reason() {
    let sched =
        Scheduler::new(engine(), SchedulerConfig { n_slots: 1, n_ctx: 512, queue_capacity: 1, n_batch: 64 })
            .unwrap();
    let (req, rx) = request(prompt(0), params(0, 480), Some(Instant::now() + Duration::from_millis(30)));
    sched.submit(req).unwrap();
    let outcome = loop {
        match rx.recv_timeout(Duration::from_secs(60)).unwrap() {
            Event::Text(_) => continue,
            other => break other,
        }
    };
    match outcome {
        Event::Failed(f) => {
            assert!(matches!(f, Failure::TimedOut { .. }), "{f}");
            assert!(f.to_string().contains("timed out"), "{f}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    // the worker survives a timeout that leaves it with no active slot, and serves the next request
    let (_, u) = collect(submit(&sched, prompt(1), params(1, 4)));
    assert_eq!(u.completion_tokens, 4);
}

#[test]
fn a_burst_gets_the_free_slots_and_the_queue() {
    // 2 slots + 2 queue places: 4 requests submitted at once are all accepted, the 5th is refused
    let sched =
        Scheduler::new(engine(), SchedulerConfig { n_slots: 2, n_ctx: 256, queue_capacity: 2, n_batch: 64 })
            .unwrap();
    let rxs: Vec<_> = (0..4).map(|i| submit(&sched, prompt(i), params(i as u64, 200))).collect();
    let (extra, _rx) = request(prompt(5), params(5, 8), None);
    assert_eq!(sched.submit(extra).unwrap_err(), SubmitError::QueueFull { capacity: 2 });
    for rx in rxs {
        assert_eq!(collect(rx).1.completion_tokens, 200);
    }
}

/// Every request gets an answer of its own: one with a token id the model does not have is refused at
/// submit (it would fail the batch it ran in), and the good ones beside it give exactly their solo text.
#[test]
fn a_bad_request_fails_alone() {
    let engine = engine();
    let vocab = engine.model.config.vocab_size as u32;
    let solo: Vec<String> = (0..3)
        .map(|i| {
            let sched = Scheduler::new(
                engine.clone(),
                SchedulerConfig { n_slots: 1, n_ctx: 256, queue_capacity: 1, n_batch: 16 },
            )
            .unwrap();
            collect(submit(&sched, prompt(i), params(i as u64, 16))).0
        })
        .collect();
    let cfg = SchedulerConfig { n_slots: 4, n_ctx: 256, queue_capacity: 8, n_batch: 16 };
    let sched = Scheduler::new(engine.clone(), cfg).unwrap();
    let first = submit(&sched, prompt(0), params(0, 16));
    let mut bad = prompt(7);
    bad[3] = vocab;
    let (req, _rx) = request(bad, params(7, 16), None);
    let refused = sched.submit(req);
    match refused {
        Err(SubmitError::BadToken(m)) => assert!(m.contains(&vocab.to_string()), "{m}"),
        other => panic!("expected BadToken, got {other:?}"),
    }
    let rest: Vec<_> = (1..3).map(|i| submit(&sched, prompt(i), params(i as u64, 16))).collect();
    let texts: Vec<String> = std::iter::once(first).chain(rest).map(|rx| collect(rx).0).collect();
    assert_eq!(texts, solo);
}

/// A request waiting for a slot past its deadline is told so while the slot is still busy, and the running
/// request is not disturbed.
#[test]
fn a_queued_request_times_out_in_the_queue() {
    let sched =
        Scheduler::new(engine(), SchedulerConfig { n_slots: 1, n_ctx: 512, queue_capacity: 2, n_batch: 64 })
            .unwrap();
    let running = submit(&sched, prompt(0), params(0, 480));
    let (req, rx) = request(prompt(1), params(1, 8), Some(Instant::now() + Duration::from_millis(20)));
    sched.submit(req).unwrap();
    match rx.recv_timeout(Duration::from_secs(60)).unwrap() {
        Event::Failed(Failure::TimedOut { generated, .. }) => assert_eq!(generated, 0),
        other => panic!("expected a timeout in the queue, got {other:?}"),
    }
    assert_eq!(sched.stats().active, 1, "the running request still runs");
    let (_, u) = collect(running);
    assert_eq!((u.completion_tokens, u.finish), (480, FinishReason::Length));
}

/// Logprobs come one per generated token, before its text, and like the text they do not depend on what else
/// is in the batch.
#[test]
fn logprobs_are_batch_invariant() {
    let engine = engine();
    let run = |n_slots: usize| -> Vec<Vec<quire_engine::sampler::TokenLogprob>> {
        let cfg = SchedulerConfig { n_slots, n_ctx: 256, queue_capacity: 8, n_batch: 16 };
        let sched = Scheduler::new(engine.clone(), cfg).unwrap();
        let rxs: Vec<_> = (0..n_slots as u32)
            .map(|i| submit(&sched, prompt(i), GenerateParams { logprobs: Some(4), ..params(i as u64, 10) }))
            .collect();
        rxs.into_iter()
            .map(|rx| {
                let mut lps = Vec::new();
                loop {
                    match rx.recv_timeout(Duration::from_secs(60)).unwrap() {
                        Event::Logprob(lp) => lps.push(lp),
                        Event::Text(_) => assert!(!lps.is_empty(), "a token's logprobs come before its text"),
                        Event::Done(u) => {
                            assert_eq!(lps.len(), u.completion_tokens);
                            break lps;
                        }
                        Event::Failed(e) => panic!("{e}"),
                    }
                }
            })
            .collect()
    };
    let (alone, batched) = (run(1), run(3));
    assert_eq!(alone[0], batched[0]);
    for lp in batched.iter().flatten() {
        assert_eq!(lp.top.len(), 4);
        assert!(lp.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
        assert!(lp.chosen.logprob <= 0.0 && lp.chosen.logprob.is_finite());
    }
}

/// Text and usage of a request, and when it ended; `first` blocks until its first text.
struct Watch {
    rx: mpsc::Receiver<Event>,
    text: String,
}

impl Watch {
    fn new(s: &Scheduler, prompt: Vec<u32>, p: GenerateParams, priority: Priority) -> Watch {
        let (mut req, rx) = request(prompt, p, None);
        req.priority = priority;
        s.submit(req).unwrap();
        Watch { rx, text: String::new() }
    }

    fn first(&mut self) {
        while self.text.is_empty() {
            match self.rx.recv_timeout(Duration::from_secs(60)).expect("scheduler answers") {
                Event::Text(t) => self.text.push_str(&t),
                Event::Logprob(_) => {}
                e => panic!("ended before its first text: {e:?}"),
            }
        }
    }

    fn finish(self) -> (String, Usage, Instant) {
        let (rest, usage) = collect(self.rx);
        (self.text + &rest, usage, Instant::now())
    }
}

fn long_prompt(i: u32) -> Vec<u32> {
    (0..300 + i).map(|k| (k * 11 + i * 5) % 500).collect()
}

/// Batch requests give their slots to interactive ones at the next step, and finish afterwards with exactly
/// the text they give alone: paused while decoding (after their first text) and while prefilling (right
/// after submission, with a prompt of several chunks).
#[test]
fn interactive_requests_pause_batch_work_which_goes_on_unchanged() {
    let engine = engine();
    let alone = |prompt: Vec<u32>, p: GenerateParams| {
        let cfg = SchedulerConfig { n_slots: 1, n_ctx: 1024, queue_capacity: 4, n_batch: 16 };
        collect(submit(&Scheduler::new(engine.clone(), cfg).unwrap(), prompt, p)).0
    };
    const N: usize = 400;
    for pause_while_decoding in [true, false] {
        // a small n_batch: a long prompt takes ~150 steps to prefill, time enough to be paused in it
        let cfg = SchedulerConfig { n_slots: 2, n_ctx: 1024, queue_capacity: 8, n_batch: 4 };
        let sched = Scheduler::new(engine.clone(), cfg).unwrap();
        let mut batch: Vec<Watch> = (0..2)
            .map(|i| Watch::new(&sched, long_prompt(i), params(10 + i as u64, N), Priority::Batch))
            .collect();
        if pause_while_decoding {
            batch.iter_mut().for_each(Watch::first);
        } else {
            while sched.stats().active_batch < 2 {
                std::thread::yield_now();
            }
        }
        let people: Vec<Watch> = (0..2)
            .map(|i| Watch::new(&sched, prompt(i), params(20 + i as u64, 6), Priority::Interactive))
            .collect();
        let people: Vec<_> = people.into_iter().map(Watch::finish).collect();
        let batch: Vec<_> = batch.into_iter().map(Watch::finish).collect();
        let stats = sched.stats();
        assert_eq!(stats.preemptions_total, 2, "{stats:?}");
        for (i, (text, _, done)) in people.iter().enumerate() {
            assert_eq!(*text, alone(prompt(i as u32), params(20 + i as u64, 6)), "interactive {i}");
            assert!(batch.iter().all(|b| b.2 > *done), "interactive {i} finished before the batch");
        }
        for (i, (text, usage, _)) in batch.iter().enumerate() {
            assert_eq!(usage.completion_tokens, N);
            let solo = alone(long_prompt(i as u32), params(10 + i as u64, N));
            assert_eq!(
                *text, solo,
                "batch request {i} differs after a pause (decoding: {pause_while_decoding})"
            );
        }
        assert_eq!((stats.active, stats.active_batch, stats.queued, stats.queued_batch), (0, 0, 0, 0));
    }
}

/// With one slot busy, a later interactive request goes before an earlier batch one.
#[test]
fn batch_requests_wait_behind_interactive_ones() {
    let cfg = SchedulerConfig { n_slots: 1, n_ctx: 256, queue_capacity: 8, n_batch: 16 };
    let sched = Scheduler::new(engine(), cfg).unwrap();
    let mut first = Watch::new(&sched, prompt(0), params(1, 40), Priority::Interactive);
    first.first();
    let batch = Watch::new(&sched, prompt(1), params(2, 8), Priority::Batch);
    let person = Watch::new(&sched, prompt(2), params(3, 8), Priority::Interactive);
    let stats = sched.stats();
    assert_eq!((stats.queued, stats.queued_batch), (2, 1), "{stats:?}");
    let (_, _, t_first) = first.finish();
    let (_, _, t_person) = person.finish();
    let (_, _, t_batch) = batch.finish();
    assert!(t_first < t_person && t_person < t_batch);
    assert_eq!(sched.stats().preemptions_total, 0, "an interactive request is never paused");
}
