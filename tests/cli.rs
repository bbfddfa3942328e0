//! The `quire` binary end to end on the tiny fixture model: run, info, perplexity, and clear errors.

use std::path::PathBuf;
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    match std::env::var_os("QUIRE_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures")),
    }
}

fn tiny(ty: &str) -> String {
    fixtures().join(format!("tiny-qwen3-{ty}.gguf")).display().to_string()
}

fn quire(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quire")).args(args).output().expect("run quire")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn run_raw_greedy_is_deterministic_and_reports_speed() {
    let args =
        ["run", "-m", &tiny("q8_0"), "--raw", "-p", "Hello world", "-n", "12", "--temp", "0", "-t", "2"];
    let a = quire(&args);
    assert!(a.status.success(), "stderr: {}", text(&a.stderr));
    let b = quire(&args);
    assert_eq!(a.stdout, b.stdout, "greedy output must not change between runs");
    let err = text(&a.stderr);
    assert!(err.contains("t/s") && err.contains("generation: 12 tokens"), "stderr: {err}");
}

#[test]
fn run_with_chat_template_and_seeded_sampling() {
    let args = ["run", "-m", &tiny("q4_0"), "-p", "Hi", "-n", "10", "--temp", "0.9", "--seed", "7"];
    let a = quire(&args);
    assert!(a.status.success(), "stderr: {}", text(&a.stderr));
    assert_eq!(a.stdout, quire(&args).stdout, "same seed must give the same output");
}

#[test]
fn info_lists_metadata_tensors_and_memory() {
    let out = quire(&["info", &tiny("q4_k_m"), "--ctx", "1024"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let s = text(&out.stdout);
    for needle in [
        "general.architecture = \"qwen3\"",
        "tokenizer.ggml.tokens = [576 items]",
        "Q4_K",
        "Q6_K",
        "KV cache",
        "memory at context 1024",
    ] {
        assert!(s.contains(needle), "info output lacks {needle:?}:\n{s}");
    }
    // the mix of types, each with its bits per weight (144 bytes per 256 values, 210 per 256, f32)
    let line = |ty: &str| s.lines().find(|l| l.trim_start().starts_with(ty)).unwrap_or_default().to_string();
    assert!(line("Q4_K").contains(" 4.50 bpw"), "{}", line("Q4_K"));
    assert!(line("Q6_K").contains(" 6.56 bpw"), "{}", line("Q6_K"));
    assert!(line("F32").contains("32.00 bpw"), "{}", line("F32"));
    assert!(s.contains("bits per weight)"), "{s}");
    let low = quire(&["info", &tiny("q3_k_m")]);
    assert!(low.status.success(), "stderr: {}", text(&low.stderr));
    let low = text(&low.stdout);
    for (ty, bpw) in [("Q3_K", " 3.44 bpw"), ("Q4_K", " 4.50 bpw"), ("Q5_K", " 5.50 bpw")] {
        let l = low.lines().find(|l| l.trim_start().starts_with(ty)).unwrap_or_default();
        assert!(l.contains(bpw), "{ty}: {l}");
    }
}

#[test]
fn perplexity_prints_ppl_last() {
    let dir = std::env::temp_dir().join(format!("quire-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("text.txt");
    std::fs::write(&f, "The quick brown fox jumps over the lazy dog. ".repeat(40)).unwrap();
    let out = quire(&["perplexity", "-m", &tiny("f16"), "-f", f.to_str().unwrap(), "-c", "64"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let s = text(&out.stdout);
    let last = s.lines().last().unwrap();
    let v: f64 = last.strip_prefix("PPL = ").expect("last line is PPL = <value>").parse().unwrap();
    assert!(v.is_finite() && v > 1.0, "{last}");
}

#[test]
fn errors_are_clear_and_not_panics() {
    let out = quire(&["run", "-m", &tiny("f32"), "--raw", "-p", &"word ".repeat(100), "--ctx", "32"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("context holds only 32"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = quire(&["run", "-m", "/nonexistent.gguf", "-p", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot open"), "{}", text(&out.stderr));

    let out = quire(&["run", "-m", &tiny("f32"), "-p", "x", "--temp=-1"]);
    assert_eq!(out.status.code(), Some(1), "negative temperature must be refused");
}

#[test]
fn chat_keeps_history_and_reuses_its_cache() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_quire"))
        .args(["chat", "-m", &tiny("q8_0"), "-n", "6", "--temp", "0"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"Hello there\nAnd again\n/exit\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let err = text(&out.stderr);
    let turns: Vec<&str> = err.lines().filter(|l| l.contains("prompt: ")).collect();
    assert_eq!(turns.len(), 2, "two turns answered:\n{err}");
    assert!(turns[0].contains("(0 cached)"), "{}", turns[0]);
    assert!(!turns[1].contains("(0 cached)"), "the second turn reuses the first turn's KV: {}", turns[1]);
}

/// A hostile header (a key/value count of 2^64 - 1 in a 24-byte file) is a clear error and exit code 1 from
/// the binary, not a signal (engine/tests/malformed_gguf.rs has the whole suite).
#[test]
fn a_hostile_header_exits_1_with_the_reason() {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&u64::MAX.to_le_bytes());
    let path = std::env::temp_dir().join(format!("quire-cli-hostile-{}.gguf", std::process::id()));
    std::fs::write(&path, &b).unwrap();
    for args in [vec!["info", path.to_str().unwrap()], vec!["run", "-m", path.to_str().unwrap(), "-p", "hi"]]
    {
        let out = quire(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {:?}", out.status);
        let err = text(&out.stderr);
        assert!(err.contains("key/value pairs cannot fit"), "{args:?}: {err}");
    }
    std::fs::remove_file(&path).unwrap();
}

/// `--max-ram`: `info` shows the plans within it; `run` refuses with the numbers when the weights alone do
/// not fit, and runs with a context grown to fill it otherwise.
#[test]
fn max_ram_plans_or_refuses_with_the_numbers() {
    let out = quire(&["info", &tiny("q8_0"), "--max-ram", "64M"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("run: memory plan (--max-ram 64.0 MiB): context"), "{stdout}");
    assert!(stdout.contains("serve: memory plan (--max-ram 64.0 MiB)"), "{stdout}");
    let out = quire(&["run", "-m", &tiny("q8_0"), "--raw", "-p", "Hello", "-n", "2", "--max-ram", "1M"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("not enough memory (--max-ram 1.0 MiB)") && err.contains("weights alone"), "{err}");
    let out = quire(&[
        "run",
        "-m",
        &tiny("q8_0"),
        "--raw",
        "-p",
        "Hello",
        "-n",
        "2",
        "--temp",
        "0",
        "--max-ram",
        "64M",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("memory plan (--max-ram 64.0 MiB)"), "{}", text(&out.stderr));
    assert!(quire(&["run", "-m", &tiny("q8_0"), "-p", "x", "--max-ram", "lots"]).status.code() == Some(2));
}
