//! `quire`: the command line. Each subcommand is a thin layer over the engine crate.

mod args;
mod cmd_batch;
mod cmd_bench;
mod cmd_convert;
mod cmd_serve;
mod cmd_synth;

use std::io::{BufRead, IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use args::{ModelArgs, SamplingArgs, SpecArgs};
use clap::{Args, Parser, Subcommand};
use quire_engine::chat::{Message, RenderOptions};
use quire_engine::generate::{Engine, GenerateParams, GenerationStats, Session, DEFAULT_BATCH};
use quire_engine::gguf::GgufFile;
use quire_engine::grammar::GrammarSpec;
use quire_engine::memory::{self, human_bytes, Budget, MemoryPlan, Sizes};
use quire_engine::model::LoadOptions;
use quire_engine::reasoning::ReasoningSplit;
use quire_engine::speculate::SpecConfig;
use quire_kernels::dispatch::{self, IsaKind};

#[derive(Parser)]
#[command(
    name = "quire",
    version,
    about = "CPU inference engine and server for Qwen3 (and Qwen2) GGUF models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Kernel instruction set: scalar, avx2 or avx512 (default: the best this CPU has; a set the CPU lacks
    /// falls back to the best one below it, with a warning).
    #[arg(long, global = true, env = "QUIRE_ISA", value_enum, ignore_case = true)]
    isa: Option<IsaKind>,
    /// Copy the weights into the kernels' faster layout in the background after load (0 = read the file's
    /// layout only; same results).
    #[arg(long, global = true, env = "QUIRE_PREPACK", default_value = "1", action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new(), hide_default_value = true)]
    prepack: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a reply to one prompt (chat template applied) and stream it to stdout.
    Run(RunArgs),
    /// Multi-turn chat in the terminal; the conversation is kept (and its KV cache reused) across turns.
    Chat(ChatArgs),
    /// Show a model file's metadata, tensors and the memory it needs.
    Info(InfoArgs),
    /// Perplexity of a text file, with llama.cpp's method (last line: `PPL = <value>`).
    Perplexity(PerplexityArgs),
    /// Convert a Hugging Face Qwen3/Qwen2 checkpoint to GGUF (q4_k_m, q8_0, q3_k_m, iq4_xs, ... f16; see --help)
    Convert(cmd_convert::ConvertArgs),
    /// Make a random-weight Hugging Face checkpoint of a real shape (developer tool for benchmarks/tests).
    Synth(cmd_synth::SynthArgs),
    /// Prompt-processing and generation speed (like llama-bench): pp and tg tokens/s, load time, peak RSS.
    Bench(cmd_bench::BenchArgs),
    /// Serve the model over HTTP: OpenAI-compatible API, /generate, /stream, /health, /metrics, chat page.
    Serve(cmd_serve::ServeArgs),
    /// Run a batch file (OpenAI's JSONL batch format) into output and error files; rerun to continue.
    Batch(cmd_batch::BatchArgs),
    /// List the built-in prompt templates, or print one (to copy and make your own).
    Templates(TemplatesArgs),
}

#[derive(Args)]
struct TemplatesArgs {
    /// A template's id: print its file.
    id: Option<String>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    spec: SpecArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// The text the reply is expected to resemble (e.g. the file being edited): drafts for speculative
    /// decoding, as OpenAI's Predicted Outputs; only the speed changes.
    #[arg(long, value_name = "FILE")]
    prediction: Option<PathBuf>,
    /// The prompt text.
    #[arg(short = 'p', long = "prompt", conflicts_with = "file")]
    prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Plain completion: no chat template, the prompt is continued as is.
    #[arg(long)]
    raw: bool,
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    spec: SpecArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(Args)]
struct InfoArgs {
    /// Path to a GGUF model file.
    model: PathBuf,
    /// The KV cache of the memory estimate.
    #[command(flatten)]
    cache: args::CacheArgs,
    /// List every tensor.
    #[arg(long)]
    tensors: bool,
}

#[derive(Args)]
struct PerplexityArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Text file to score.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Tokens fed per forward pass.
    #[arg(short = 'b', long = "batch", default_value_t = 128)]
    batch: usize,
}

fn cmd_templates(a: TemplatesArgs) -> anyhow::Result<()> {
    let lib = quire_server::templates::Library::builtin();
    match a.id {
        Some(id) => print!("{}", lib.resolve(&id).map_err(anyhow::Error::msg)?.source),
        None => {
            for t in lib.all() {
                let fields: Vec<&str> = t.fields.iter().map(|f| f.key.as_str()).collect();
                println!("{:24} {}  [{}]", t.id, t.name, fields.join(", "));
            }
        }
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if let Some(kind) = cli.isa {
        match dispatch::force(kind) {
            Ok(isa) if isa.kind() != kind => eprintln!("warning: this CPU does not run {kind}; using {isa}"),
            Ok(_) => {}
            Err(e) => eprintln!("warning: {e}"),
        }
    }
    let load = LoadOptions { prepack: cli.prepack, ..Default::default() };
    let result = match cli.command {
        Command::Run(a) => cmd_run(a, &load),
        Command::Chat(a) => cmd_chat(a, &load),
        Command::Info(a) => cmd_info(a),
        Command::Perplexity(a) => cmd_perplexity(a, &load),
        Command::Convert(a) => cmd_convert::run(a),
        Command::Synth(a) => cmd_synth::run(a),
        Command::Bench(a) => cmd_bench::run(a, &load),
        Command::Serve(a) => cmd_serve::run(&a, cli.prepack),
        Command::Batch(a) => cmd_batch::run(&a, cli.prepack),
        Command::Templates(a) => cmd_templates(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Start the worker pool, load the model, print how long it took, and check the memory it will need at this
/// context size.
fn load(
    args: &ModelArgs,
    spec: SpecConfig,
    draft: Option<&Path>,
    opts: &LoadOptions,
) -> Result<(Engine, usize)> {
    args.threads.init()?;
    let t0 = Instant::now();
    let mut engine = Engine::load_with(&args.model, opts)?;
    engine.spec = spec;
    if let Some(d) = draft.filter(|_| spec.limit() > 0) {
        engine.load_draft(d, opts)?;
        eprintln!("draft model {} (speculative decoding; the output is the same without it)", d.display());
    }
    let c = &engine.model.config;
    // the RAM planner: one session; the context and KV type that fit --max-ram or the memory available
    let sizes = Sizes::of(&engine, 1);
    let choice = memory::choose(&sizes, args.cache.wants(Some(1)), Budget::from_flag(args.cache.max_ram))?;
    let defaults = (args.cache.ctx.unwrap_or_else(|| c.default_ctx()), args.cache.kv_type());
    if args.cache.max_ram.is_some() || (choice.ctx, choice.kv_type) != defaults {
        eprintln!("{}", choice.describe());
    }
    let (n_ctx, plan) = (choice.ctx, choice.plan);
    engine.kv_type = choice.kv_type;
    eprintln!(
        "loaded {} ({}, {} layers, {} params in {}) in {:.2} s; context {n_ctx} tokens, KV cache {} ({}), {} threads",
        args.model.display(),
        c.arch.name(),
        c.n_layers,
        engine.model.n_params(),
        human_bytes(plan.weights_mapped),
        t0.elapsed().as_secs_f64(),
        human_bytes(plan.kv_cache),
        engine.kv_type,
        rayon::current_num_threads(),
    );
    Ok((engine, n_ctx))
}

/// Sampling settings from the flags (checked before the model loads).
fn params(s: &SamplingArgs) -> Result<GenerateParams> {
    let sampler = s.sampler().resolve();
    sampler.validate()?;
    Ok(GenerateParams {
        max_tokens: s.max_tokens,
        sampler,
        stop: s.stop.clone(),
        ignore_eos: s.ignore_eos,
        ..Default::default()
    })
}

/// `p` with the reply's grammar (`--json-schema`, `--json`, `--grammar`, `--regex`) compiled for `engine`.
fn constrain(engine: &Engine, spec: Option<GrammarSpec>, mut p: GenerateParams) -> Result<GenerateParams> {
    if let Some(spec) = spec {
        p.constraint = Some(engine.grammars()?.compile(&spec).context("cannot use this grammar")?);
    }
    Ok(p)
}

/// Generate and stream to stdout, the model's reasoning (Qwen3 `<think>`) to stderr, dimmed on a terminal;
/// returns the answer.
fn stream_reply(
    session: &mut Session,
    prompt: &[u32],
    p: &GenerateParams,
) -> Result<(String, GenerationStats)> {
    let mut split = ReasoningSplit::new(p.thinking.is_some_and(|t| t.started));
    let mut out = std::io::stdout().lock();
    let err = std::io::stderr();
    let dim = err.is_terminal();
    let mut text = String::new();
    let mut show = |(reasoning, answer): (String, String)| {
        if !reasoning.is_empty() {
            let mut e = err.lock();
            let _ = if dim { write!(e, "\x1b[2m{reasoning}\x1b[0m") } else { write!(e, "{reasoning}") };
        }
        text.push_str(&answer);
        let _ = out.write_all(answer.as_bytes());
        let _ = out.flush();
    };
    let stats = session.generate(prompt, p, |piece| {
        show(split.push(piece));
        ControlFlow::Continue(())
    })?;
    show(split.finish());
    let _ = writeln!(out);
    Ok((text, stats))
}

fn print_stats(s: &GenerationStats) {
    eprintln!(
        "prompt: {} tokens ({} cached) in {:.2} s = {:.2} t/s | generation: {} tokens in {:.2} s = {:.2} t/s \
         | speculation: {} drafted, {} accepted | finish: {:?}",
        s.prompt_tokens,
        s.cached_tokens,
        s.prompt_secs,
        s.prompt_tps(),
        s.generated_tokens,
        s.gen_secs,
        s.gen_tps(),
        s.spec.drafted,
        s.spec.accepted,
        s.finish
    );
}

fn render_opts(s: &SamplingArgs) -> RenderOptions {
    RenderOptions { add_generation_prompt: true, enable_thinking: s.think, tools: None }
}

/// `p` for a reply to `prompt`: whether the model may reason first (a chat prompt whose template allows it
/// and `--think` does not say no, or the prompt opened the block itself).
fn for_prompt(
    engine: &Engine,
    s: &SamplingArgs,
    p: &GenerateParams,
    prompt: &[u32],
    raw: bool,
) -> GenerateParams {
    let may_think = !raw && engine.template.can_think() && s.think != Some(false);
    GenerateParams { thinking: engine.thinking(prompt, may_think), ..p.clone() }
}

fn cmd_run(a: RunArgs, opts: &LoadOptions) -> Result<()> {
    let prompt_text = match (&a.prompt, &a.file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?
        }
        (None, None) => bail!("give a prompt with -p TEXT or -f FILE"),
    };
    let p = params(&a.sampling)?;
    let spec = a.sampling.grammar()?;
    let (engine, n_ctx) = load(&a.model, a.spec.config(), a.spec.draft.as_deref(), opts)?;
    let mut p = constrain(&engine, spec, p)?;
    if let Some(f) = &a.prediction {
        p.prediction = engine.tokenizer.encode(&read_text(f)?)?;
    }
    let prompt = if a.raw {
        engine.tokenizer.encode(&prompt_text)?
    } else {
        let mut messages = Vec::new();
        if let Some(sys) = &a.sampling.system {
            messages.push(Message::system(sys.clone()));
        }
        messages.push(Message::user(prompt_text));
        engine.chat_tokens(&messages, &render_opts(&a.sampling))?
    };
    let mut session = engine.session(n_ctx)?;
    let p = for_prompt(&engine, &a.sampling, &p, &prompt, a.raw);
    let (_, stats) = stream_reply(&mut session, &prompt, &p)?;
    print_stats(&stats);
    Ok(())
}

fn cmd_chat(a: ChatArgs, opts: &LoadOptions) -> Result<()> {
    let p = params(&a.sampling)?;
    let spec = a.sampling.grammar()?;
    let (engine, n_ctx) = load(&a.model, a.spec.config(), a.spec.draft.as_deref(), opts)?;
    let p = constrain(&engine, spec, p)?;
    let mut session = engine.session(n_ctx)?;
    let mut history: Vec<Message> = Vec::new();
    if let Some(sys) = &a.sampling.system {
        history.push(Message::system(sys.clone()));
    }
    eprintln!("chat with the model; /reset starts over, /exit (or Ctrl-D) quits");
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        let Some(line) = lines.next() else { break };
        let line = line?;
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history.retain(|m| m.role == "system");
                session.reset();
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        history.push(Message::user(line));
        let prompt = engine.chat_tokens(&history, &render_opts(&a.sampling))?;
        match stream_reply(&mut session, &prompt, &for_prompt(&engine, &a.sampling, &p, &prompt, false)) {
            Ok((reply, stats)) => {
                print_stats(&stats);
                history.push(Message::assistant(reply));
            }
            Err(e) => {
                // Keep the REPL alive (e.g. the context filled up): drop the turn and say why.
                history.pop();
                eprintln!("error: {e:#}");
            }
        }
    }
    Ok(())
}

fn cmd_info(a: InfoArgs) -> Result<()> {
    let file = GgufFile::open(&a.model)?;
    println!("file: {} (GGUF v{}, {})", a.model.display(), file.version(), human_bytes(file.file_len()));
    println!("\nmetadata:");
    for (k, v) in file.metadata() {
        let shown = match v {
            serde_json::Value::Array(items) => format!("[{} items]", items.len()),
            serde_json::Value::String(s) if s.len() > 80 || s.contains('\n') => {
                format!("<text, {} chars>", s.chars().count())
            }
            other => other.to_string(),
        };
        println!("  {k} = {shown}");
    }
    let mut by_type: std::collections::BTreeMap<&str, (usize, usize, usize)> = Default::default();
    for t in file.tensors() {
        let e = by_type.entry(t.dtype.name()).or_default();
        e.0 += 1;
        e.1 += t.n_elements();
        e.2 += t.n_bytes();
    }
    let bpw = |bytes: usize, elems: usize| 8.0 * bytes as f64 / elems.max(1) as f64;
    let (all_elems, all_bytes) = by_type.values().fold((0, 0), |(e, b), t| (e + t.1, b + t.2));
    println!(
        "\ntensors: {} ({} values, {:.2} bits per weight)",
        file.tensors().len(),
        all_elems,
        bpw(all_bytes, all_elems)
    );
    for (ty, (count, elems, bytes)) in &by_type {
        let share = 100.0 * *bytes as f64 / all_bytes.max(1) as f64;
        println!(
            "  {ty:<6} {count:>5} tensors {elems:>14} values {:>12} {:>5.2} bpw {share:>5.1} % of bytes",
            human_bytes(*bytes),
            bpw(*bytes, *elems)
        );
    }
    if a.tensors {
        for t in file.tensors() {
            println!("  {:<40} {:<6} {:?} {}", t.name, t.dtype.name(), t.shape, human_bytes(t.n_bytes()));
        }
    }
    // no prepacking: nothing is computed here
    let model =
        quire_engine::model::Model::load_with(file, &LoadOptions { prepack: false, ..Default::default() })?;
    let c = &model.config;
    println!(
        "\nmodel: {} | {} layers | dim {} | heads {} (KV {}) x {} | ffn {} | vocab {} | rope base {} | rms eps {} | trained context {}",
        c.arch.name(),
        c.n_layers,
        c.dim,
        c.n_heads,
        c.n_kv_heads,
        c.head_dim,
        c.ffn_dim,
        c.vocab_size,
        c.rope_base,
        c.rms_eps,
        c.ctx_train
    );
    let n_ctx = a.cache.ctx.unwrap_or_else(|| c.default_ctx());
    let plan = MemoryPlan::new(&model, n_ctx, DEFAULT_BATCH, 1, a.cache.kv_type());
    println!(
        "memory at context {}: weights {} (memory-mapped) + KV cache {} ({}) + scratch {} = {}",
        n_ctx,
        human_bytes(plan.weights_mapped),
        human_bytes(plan.kv_cache),
        a.cache.kv_type(),
        human_bytes(plan.scratch),
        human_bytes(plan.total())
    );
    if let Some(max_ram) = a.cache.max_ram {
        // what `run` (one session) and `serve` (its default slots) would choose within --max-ram
        for (what, slots) in [("run", 1), ("serve", quire_server::config::DEFAULT_SLOTS)] {
            let sizes = Sizes {
                config: c,
                file_len: model.file.file_len(),
                draft: None,
                n_batch: DEFAULT_BATCH,
                spec: SpecConfig::default(),
                default_slots: slots,
            };
            match memory::choose(&sizes, a.cache.wants(None), Budget::Limit(max_ram)) {
                Ok(choice) => println!("{what}: {}", choice.describe()),
                Err(e) => println!("{what}: {e:#}"),
            }
        }
    }
    Ok(())
}

fn cmd_perplexity(a: PerplexityArgs, opts: &LoadOptions) -> Result<()> {
    let text = read_text(&a.file)?;
    let mut model = a.model.clone();
    model.cache.ctx.get_or_insert(512);
    let (engine, n_ctx) = load(&model, SpecConfig::off(), None, opts)?;
    let tokens = engine.tokenizer.encode(&text)?;
    eprintln!("{} tokens, {} windows of {n_ctx}", tokens.len(), tokens.len() / n_ctx);
    let t0 = Instant::now();
    let ppl = quire_engine::perplexity::perplexity(&engine, &tokens, n_ctx, a.batch, |c| {
        eprintln!("[{}/{}] {:.4}", c.index + 1, c.n_chunks, c.ppl);
    })?;
    eprintln!("{:.1} s", t0.elapsed().as_secs_f64());
    println!("PPL = {ppl:.4}");
    Ok(())
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}
