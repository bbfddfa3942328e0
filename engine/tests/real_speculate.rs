//! Speculative decoding on the real Qwen2.5-Coder-1.5B (drafted for by the real 0.5B): for edits, code,
//! prose and Chinese, the text with prompt lookup, with a predicted output and with the draft model is
//! byte-identical to the text without speculation, greedy and at a fixed seed, alone and as one of four
//! concurrent streams. Skipped without the models unless QUIRE_REQUIRE_REAL=1 (scripts/test.sh).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{channel_request, collect_events, real_draft_model, real_model, session_text};
use quire_engine::chat::{Message, RenderOptions};
use quire_engine::generate::{Engine, GenerateParams};
use quire_engine::sampler::SamplerConfig;
use quire_engine::scheduler::{Priority, Scheduler, SchedulerConfig};
use quire_engine::speculate::SpecConfig;

/// (what, prompt, the text the reply is expected to resemble: for edits, the text being edited)
const TASKS: [(&str, &str, &str); 4] = [
    (
        "edit",
        "Correct the spelling mistakes in this text and change nothing else. Reply with the corrected text only.\n\n",
        "Our new stainles steel bottle keeps drinks cold for 24 hours and hot for 12. It is dishwasher safe, \
         leak proof and comes in five colours. Order today and get free shiping on your first purchase.",
    ),
    (
        "code",
        "Add type hints to this Python function. Reply with the code only.\n\n",
        "def total_price(items, discount):\n    total = 0\n    for item in items:\n        total += item.price * \
         item.quantity\n    return total * (1 - discount)\n",
    ),
    ("prose", "Write two sentences about why teams write documentation.", ""),
    ("chinese", "把下面这段话改写得更正式一些，只回复改写后的文字：\n\n", "我们明天开会讨论一下新产品的事情，大家记得带电脑，别迟到。"),
];

const MAX_TOKENS: usize = 48;

fn prompt(e: &Engine, task: &(&str, &str, &str)) -> Vec<u32> {
    let m = [Message::user(format!("{}{}", task.1, task.2))];
    e.chat_tokens(&m, &RenderOptions { add_generation_prompt: true, ..Default::default() }).unwrap()
}

fn params(seed: Option<u64>) -> GenerateParams {
    let sampler = match seed {
        Some(s) => SamplerConfig { temperature: 0.7, top_p: 0.9, seed: Some(s), ..Default::default() },
        None => SamplerConfig { temperature: 0.0, ..Default::default() },
    };
    GenerateParams { max_tokens: MAX_TOKENS, sampler, ..Default::default() }
}

fn text(e: &Engine, prompt: &[u32], p: &GenerateParams) -> (String, quire_engine::speculate::SpecCounts) {
    let (out, stats) = session_text(&mut e.session(1024).unwrap(), prompt, p);
    (out, stats.spec)
}

#[test]
fn speculation_changes_no_byte_of_real_replies() {
    let (Some(target), Some(draft)) = (real_model(), real_draft_model()) else { return };
    let mut e = Engine::load(&target).unwrap();
    e.load_draft(&draft, &Default::default()).unwrap();
    let mut draft_model = e.draft.take();
    let (mut lookup_accepted, mut draft_accepted, mut prediction_accepted) = (0, 0, 0);
    for task in &TASKS {
        for seed in [None, Some(5)] {
            let (what, pr, p) = (task.0, prompt(&e, task), params(seed));
            e.spec = SpecConfig::off();
            let (plain, _) = text(&e, &pr, &p);
            assert!(!plain.is_empty(), "{what}: empty reply");
            let predicted = GenerateParams { prediction: e.tokenizer.encode(task.2).unwrap(), ..p.clone() };
            for spec in [SpecConfig::default(), SpecConfig { always: true, ..SpecConfig::default() }] {
                e.spec = spec;
                let (t, s) = text(&e, &pr, &p);
                assert_eq!(t, plain, "{what}, seed {seed:?}, lookup {spec:?}");
                lookup_accepted += s.accepted;
                let (t, s) = text(&e, &pr, &predicted);
                assert_eq!(t, plain, "{what}, seed {seed:?}, prediction {spec:?}");
                prediction_accepted += s.accepted;
            }
            e.draft = draft_model.take();
            for spec in [SpecConfig::default(), SpecConfig { always: true, ..SpecConfig::default() }] {
                e.spec = spec;
                let (t, s) = text(&e, &pr, &p);
                assert_eq!(t, plain, "{what}, seed {seed:?}, draft model {spec:?}");
                draft_accepted += s.accepted;
            }
            draft_model = e.draft.take();
        }
    }
    eprintln!("accepted drafts: lookup {lookup_accepted}, prediction {prediction_accepted}, draft model {draft_accepted}");
    assert!(
        lookup_accepted > 0 && prediction_accepted > 0 && draft_accepted > 0,
        "some speculation was never exercised"
    );

    // Four concurrent streams, lookup and the draft model on, the edit with its prediction: each stream's
    // text is the one it gives alone without speculation.
    e.spec = SpecConfig::off();
    let jobs: Vec<(Vec<u32>, GenerateParams)> = TASKS
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut p = params((i % 2 == 1).then_some(i as u64));
            if i == 0 {
                p.prediction = e.tokenizer.encode(t.2).unwrap();
            }
            (prompt(&e, t), p)
        })
        .collect();
    let solo: Vec<String> = jobs.iter().map(|(pr, p)| text(&e, pr, p).0).collect();
    e.spec = SpecConfig::default();
    e.draft = draft_model;
    let cfg = SchedulerConfig { n_slots: 4, n_ctx: 1024, queue_capacity: 4, n_batch: 256 };
    let s = Scheduler::new(Arc::new(e), cfg).unwrap();
    let rxs: Vec<_> = jobs
        .into_iter()
        .map(|(pr, p)| {
            let (req, rx) = channel_request(pr, p, None, Priority::Interactive);
            s.submit(req).unwrap();
            rx
        })
        .collect();
    for (i, rx) in rxs.into_iter().enumerate() {
        let (t, _) = collect_events(rx, Duration::from_secs(600), TASKS[i].0);
        assert_eq!(t, solo[i], "{}: four streams", TASKS[i].0);
    }
    let st = s.stats();
    assert!(st.accepted_tokens_total > 0, "{st:?}");
}
