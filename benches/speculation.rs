//! Speculative decoding on content tasks: tokens per second with speculation off, prompt lookup, a predicted
//! output (the edit tasks) and a draft model, at 1 and 4 streams, and llama.cpp's own speculative tools on
//! the same files in the same run (alternating per task). Every mode's text is checked equal to the text
//! without speculation (greedy), so a figure is never bought with a different answer.
//!
//! `scripts/bench-spec.sh` runs it and appends the table to benches/RESULTS.md; by hand:
//! `QUIRE_BENCH_MODEL=target.gguf QUIRE_BENCH_DRAFT=draft.gguf cargo bench --bench speculation`
//! Options (environment): `QUIRE_BENCH_TOKENS` (most tokens per reply, 256), `QUIRE_BENCH_ROUNDS` (2),
//! `QUIRE_BENCH_TASKS` (comma-separated names, all by default), `QUIRE_BENCH_STREAMS` (`1,4`),
//! `QUIRE_BENCH_MODES` (`off,lookup,prediction,draft`), `QUIRE_BENCH_SPEC_MAX` (`--spec-max`, the default), `QUIRE_LLAMA_BIN` (a directory with llama.cpp's
//! `llama-speculative` and `llama-lookup`: run them too).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{mpsc, Arc};

use quire_engine::chat::{Message, RenderOptions};
use quire_engine::draft::DraftModel;
use quire_engine::generate::{Engine, GenerateParams};
use quire_engine::sampler::SamplerConfig;
use quire_engine::scheduler::{Event, Priority, Request, Scheduler, SchedulerConfig};
use quire_engine::speculate::SpecConfig;

struct Task {
    name: &'static str,
    instruction: &'static str,
    input: &'static str,
    /// The caller's expected reply for Predicted Outputs (the text being edited), if the task is an edit.
    prediction: Option<&'static str>,
}

const TYPOS: &str = include_str!("spec-tasks/typos.txt");
const CODE: &str = include_str!("spec-tasks/code.py");
const TABLE: &str = include_str!("spec-tasks/table.md");
const FACT: &str = include_str!("spec-tasks/fact.txt");

fn tasks() -> Vec<Task> {
    vec![
        Task {
            name: "typos",
            instruction: "Fix the spelling mistakes in this text. Change nothing else and reply with the corrected text only.",
            input: TYPOS,
            prediction: Some(TYPOS),
        },
        Task {
            name: "docstrings",
            instruction: "Add a one-line docstring to every function in this Python file. Change nothing else and reply with the whole file only, in a fenced code block.",
            input: CODE,
            prediction: Some(CODE),
        },
        Task {
            name: "table-to-json",
            instruction: "Turn this Markdown table into a JSON array of objects, one per row, with the column names as keys. Reply with the JSON only.",
            input: TABLE,
            prediction: None,
        },
        Task {
            name: "one-fact",
            instruction: "Restate this text with one change: the hall has 150 seats, not 120. Keep everything else word for word and reply with the text only.",
            input: FACT,
            prediction: Some(FACT),
        },
        Task {
            name: "prose",
            instruction: "Write a new short story (about 200 words) about a lighthouse keeper who finds a message in a bottle.",
            input: "",
            prediction: None,
        },
    ]
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn list(name: &str, default: &str) -> Vec<String> {
    env_or(name, default).split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

/// One measured run: generated tokens, seconds of generation (first token to last, per stream; the
/// slowest stream for 4), the text of the first stream, and the drafted/accepted counts.
struct Run {
    tokens: usize,
    secs: f64,
    text: String,
    drafted: usize,
    accepted: usize,
}

fn run_session(e: &Engine, prompt: &[u32], p: &GenerateParams) -> Run {
    let mut s = e.session(4096).unwrap();
    let mut text = String::new();
    let st = s
        .generate(prompt, p, |t| {
            text.push_str(t);
            ControlFlow::Continue(())
        })
        .unwrap();
    Run {
        tokens: st.generated_tokens,
        secs: st.gen_secs,
        text,
        drafted: st.spec.drafted,
        accepted: st.spec.accepted,
    }
}

/// `n` copies of the request at once on `s`, after an untimed one-token request per slot has prefilled the
/// prompt (each copy then reuses it): the time measured is the streams decoding together, as a stream's time
/// from its first token is at one stream, not the other slots' prefill interleaved with the first ones'.
fn run_streams(s: &Scheduler, prompt: &[u32], p: &GenerateParams, n: usize) -> Run {
    let warm = GenerateParams { max_tokens: 1, ..p.clone() };
    let _ = submit_all(s, prompt, &warm, n);
    submit_all(s, prompt, p, n)
}

fn submit_all(s: &Scheduler, prompt: &[u32], p: &GenerateParams, n: usize) -> Run {
    let rxs: Vec<mpsc::Receiver<Event>> =
        (0..n)
            .map(|_| {
                let (tx, rx) = mpsc::channel();
                let on_event = Box::new(move |e| {
                    if tx.send(e).is_ok() {
                        ControlFlow::Continue(())
                    } else {
                        ControlFlow::Break(())
                    }
                });
                let req = Request {
                    prompt: prompt.to_vec(),
                    params: p.clone(),
                    deadline: None,
                    priority: Priority::Interactive,
                    on_event,
                };
                s.submit(req).unwrap();
                rx
            })
            .collect();
    let mut run = Run { tokens: 0, secs: 0.0, text: String::new(), drafted: 0, accepted: 0 };
    for (i, rx) in rxs.into_iter().enumerate() {
        let mut text = String::new();
        loop {
            match rx.recv().expect("the scheduler answers") {
                Event::Text(t) => text.push_str(&t),
                Event::Logprob(_) => {}
                Event::Done(u) => {
                    run.tokens += u.completion_tokens;
                    run.secs = run.secs.max(u.gen_secs);
                    run.drafted += u.spec.drafted;
                    run.accepted += u.spec.accepted;
                    break;
                }
                Event::Failed(f) => panic!("request failed: {f}"),
            }
        }
        if i == 0 {
            run.text = text;
        } else {
            assert_eq!(text, run.text, "streams of the same request differ");
        }
    }
    run
}

/// llama.cpp's speculative example (`llama-speculative` with a draft model, `llama-lookup` with n-grams):
/// its decode speed as it prints it.
fn llama(
    bin: &Path,
    tool: &str,
    target: &str,
    draft: &str,
    prompt: &str,
    n: usize,
    threads: usize,
) -> Option<f64> {
    let file = std::env::temp_dir().join(format!("quire-spec-prompt-{}.txt", std::process::id()));
    std::fs::write(&file, prompt).ok()?;
    let mut cmd = Command::new(bin.join(tool));
    cmd.args(["-m", target, "-f"]).arg(&file).args(["-n", &n.to_string(), "-t", &threads.to_string()]);
    cmd.args(["--temp", "0", "-c", "4096", "--spec-draft-n-max", "8", "--seed", "1"]);
    if tool == "llama-speculative" {
        cmd.args(["-md", draft, "--spec-draft-n-min", "0", "-td", &threads.to_string()]);
    }
    let out = cmd.output().ok()?;
    let log = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    // "decoded  256 tokens in   10.123 seconds, speed:   25.289 t/s"
    let line = log.lines().find(|l| l.contains("decoded") && l.contains("speed:"))?;
    let speed = line.split("speed:").nth(1)?.split_whitespace().next()?.parse().ok();
    if speed.is_none() {
        eprintln!("{tool}: no speed in its output:\n{log}");
    }
    speed
}

fn main() {
    let Some(target) = std::env::var_os("QUIRE_BENCH_MODEL") else {
        eprintln!(
            "skipping the speculation benchmark: set QUIRE_BENCH_MODEL (and QUIRE_BENCH_DRAFT) to GGUF files"
        );
        return;
    };
    let target = PathBuf::from(target);
    let draft_path = std::env::var_os("QUIRE_BENCH_DRAFT").map(PathBuf::from);
    let max_tokens: usize = env_or("QUIRE_BENCH_TOKENS", "256").parse().unwrap();
    let rounds: usize = env_or("QUIRE_BENCH_ROUNDS", "2").parse().unwrap();
    let names = list("QUIRE_BENCH_TASKS", "typos,docstrings,table-to-json,one-fact,prose");
    let streams: Vec<usize> = list("QUIRE_BENCH_STREAMS", "1,4").iter().map(|s| s.parse().unwrap()).collect();
    let mut modes = list("QUIRE_BENCH_MODES", "off,lookup,prediction,draft");
    if draft_path.is_none() {
        modes.retain(|m| m != "draft");
    }
    let llama_bin = std::env::var_os("QUIRE_LLAMA_BIN").map(PathBuf::from);
    let default_max = SpecConfig::default().max_draft.to_string();
    let spec_max: usize = env_or("QUIRE_BENCH_SPEC_MAX", &default_max).parse().unwrap();
    let threads = quire_engine::threads::init(None, None).unwrap();

    let engine = Engine::load(&target).unwrap();
    engine.model.wait_prepacked();
    let draft = draft_path.as_ref().map(|d| {
        let rows = engine.model.config.vocab_size;
        let m = DraftModel::load(d, &engine.tokenizer, rows, &Default::default()).unwrap();
        m.model.wait_prepacked();
        m
    });
    let mut draft = draft;
    // shared with each scheduler while it runs, changed between runs (when no scheduler holds it)
    let mut engine = Arc::new(engine);
    let mut set = |engine: &mut Arc<Engine>, mode: &str| {
        let e = Arc::get_mut(engine).expect("no scheduler holds the engine");
        e.spec = if mode == "off" {
            SpecConfig::off()
        } else {
            SpecConfig { max_draft: spec_max, ..Default::default() }
        };
        if (mode == "draft") != e.draft.is_some() {
            if mode == "draft" {
                e.draft = draft.take();
            } else {
                draft = e.draft.take();
            }
        }
    };

    // (task, mode, streams) -> tokens/s per round, accepted/drafted; llama tools per task
    let mut rows: Vec<(String, String, usize, Vec<f64>, usize, usize)> = Vec::new();
    let mut peers: Vec<(String, String, Vec<f64>)> = Vec::new();
    let greedy = SamplerConfig { temperature: 0.0, ..Default::default() };
    for round in 0..rounds {
        for task in tasks().into_iter().filter(|t| names.iter().any(|n| n == t.name)) {
            let content = if task.input.is_empty() {
                task.instruction.to_string()
            } else {
                format!("{}\n\n{}", task.instruction, task.input)
            };
            let opts = RenderOptions { add_generation_prompt: true, ..Default::default() };
            let prompt_text = engine.template.render(&[Message::user(content)], &opts).unwrap();
            let prompt = engine.tokenizer.encode(&prompt_text).unwrap();
            let mut reference: Option<String> = None;
            for &n in &streams {
                for mode in &modes {
                    if mode == "prediction" && task.prediction.is_none() {
                        continue;
                    }
                    set(&mut engine, mode);
                    let mut p = GenerateParams { max_tokens, sampler: greedy.clone(), ..Default::default() };
                    if mode == "prediction" {
                        p.prediction = engine.tokenizer.encode(task.prediction.unwrap()).unwrap();
                    }
                    let r = if n == 1 {
                        run_session(&engine, &prompt, &p)
                    } else {
                        let cfg =
                            SchedulerConfig { n_slots: n, n_ctx: 4096, queue_capacity: n, n_batch: 256 };
                        let s = Scheduler::new(engine.clone(), cfg).unwrap();
                        run_streams(&s, &prompt, &p, n)
                    };
                    match &reference {
                        None => reference = Some(r.text.clone()),
                        Some(t) => {
                            assert_eq!(&r.text, t, "{} / {mode} / {n} streams: a different text", task.name)
                        }
                    }
                    let tps = r.tokens as f64 / r.secs.max(1e-9);
                    eprintln!(
                        "round {round} {:14} {:10} {n} stream(s): {:3} tokens, {tps:6.2} t/s, accepted {}/{}",
                        task.name, mode, r.tokens, r.accepted, r.drafted
                    );
                    let key = (task.name.to_string(), mode.clone(), n);
                    match rows.iter_mut().find(|x| (x.0.clone(), x.1.clone(), x.2) == key) {
                        Some(x) => {
                            x.3.push(tps);
                            (x.4, x.5) = (x.4 + r.accepted, x.5 + r.drafted);
                        }
                        None => rows.push((key.0, key.1, n, vec![tps], r.accepted, r.drafted)),
                    }
                }
            }
            if let Some(bin) = &llama_bin {
                let d = draft_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
                let t = target.display().to_string();
                let mut tools = vec!["llama-lookup"];
                if draft_path.is_some() {
                    tools.push("llama-speculative");
                }
                for tool in tools {
                    if let Some(tps) = llama(bin, tool, &t, &d, &prompt_text, max_tokens, threads) {
                        eprintln!("round {round} {:14} {tool}: {tps:.2} t/s", task.name);
                        match peers.iter_mut().find(|x| x.0 == task.name && x.1 == tool) {
                            Some(x) => x.2.push(tps),
                            None => peers.push((task.name.to_string(), tool.to_string(), vec![tps])),
                        }
                    }
                }
            }
        }
    }

    // The table: median tokens/s per cell, its ratio to "off" at the same stream count, acceptance.
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("| task | streams | mode | tokens/s | vs off | accepted / drafted |");
    println!("|---|---|---|---|---|---|");
    for (task, mode, n, tps, acc, dr) in &rows {
        let off = rows.iter().find(|r| &r.0 == task && r.1 == "off" && r.2 == *n).map(|r| median(&r.3));
        let ratio = off.map_or("—".to_string(), |o| format!("{:.2}×", median(tps) / o));
        println!("| {task} | {n} | {mode} | {:.2} | {ratio} | {acc} / {dr} |", median(tps));
    }
    if !peers.is_empty() {
        println!();
        println!("| task | llama.cpp tool (1 stream) | its tokens/s | Quire, same kind of drafts | Quire tokens/s | ratio |");
        println!("|---|---|---|---|---|---|");
        for (task, tool, tps) in &peers {
            let ours = if tool == "llama-speculative" { "draft" } else { "lookup" };
            let q = rows.iter().find(|r| &r.0 == task && r.1 == ours && r.2 == 1).map(|r| median(&r.3));
            let ratio = q.map_or("—".to_string(), |q| format!("{:.2}×", q / median(tps)));
            let qs = q.map_or("—".to_string(), |q| format!("{q:.2}"));
            println!("| {task} | {tool} | {:.2} | {ours} | {qs} | {ratio} |", median(tps));
        }
    }
}
