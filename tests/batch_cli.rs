//! `quire batch` end to end on the tiny fixture model: results in OpenAI's batch output format, bad lines
//! in the error file, whole-file problems refused, and a run killed (SIGKILL) or stopped (SIGINT) midway
//! and run again: every custom_id exactly once, with the same text as an uninterrupted run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn fixtures() -> PathBuf {
    match std::env::var_os("QUIRE_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures")),
    }
}

fn model() -> String {
    fixtures().join("tiny-qwen3-q8_0.gguf").display().to_string()
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("quire-batch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn batch_cmd(input: &Path, output: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_quire"));
    c.args(["batch", "-m", &model(), "--ctx", "1024", "--parallel", "3", "-t", "2"])
        .arg(input)
        .arg("-o")
        .arg(output);
    c
}

fn run(input: &Path, output: &Path) -> Output {
    batch_cmd(input, output).output().expect("run quire")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn chat_line(id: &str, content: &str, max_tokens: u32) -> Value {
    json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions",
           "body": {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
                    "temperature": 0.9, "chat_template_kwargs": {"enable_thinking": false}}})
}

fn write_jsonl(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// custom_id → its line, over the output and error files; panics on an id written twice.
fn results(output: &Path) -> BTreeMap<String, Value> {
    let errors =
        output.with_file_name(format!("{}.errors.jsonl", output.file_stem().unwrap().to_string_lossy()));
    let mut all = BTreeMap::new();
    for f in [output, errors.as_path()] {
        for line in std::fs::read_to_string(f).unwrap_or_default().lines() {
            let v: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{}: {e}: {line}", f.display()));
            let id = v["custom_id"].as_str().unwrap().to_string();
            assert!(all.insert(id.clone(), v).is_none(), "{id} written twice");
        }
    }
    all
}

fn content(v: &Value) -> &str {
    v["response"]["body"]["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no content: {v}"))
}

#[test]
fn a_batch_file_runs_into_output_and_error_lines() {
    let d = dir("basic");
    let schema = json!({"type": "object", "properties": {"tone": {"enum": ["warm", "plain"]}},
                        "required": ["tone"], "additionalProperties": false});
    let mut structured = chat_line("structured", "Describe the tone", 40);
    structured["body"]["response_format"] =
        json!({"type": "json_schema", "json_schema": {"name": "t", "schema": schema}});
    let mut seeded = chat_line("seeded", "Hello", 8);
    seeded["body"]["seed"] = json!(42);
    let lines = [
        chat_line("a", "Write a product name", 12).to_string(),
        r#"{"custom_id": "broken", "method": "POST", "url": "/v1/chat/completions", "body": {"#.to_string(),
        json!({"custom_id": "wrong-url", "method": "POST", "url": "/v1/embeddings", "body": {}}).to_string(),
        json!({"custom_id": "bad-body", "method": "POST", "url": "/v1/chat/completions",
               "body": {"messages": [], "temperature": "hot"}})
        .to_string(),
        chat_line("too-long", &"word ".repeat(2000), 8).to_string(),
        structured.to_string(),
        seeded.to_string(),
        json!({"custom_id": "streamed", "method": "POST", "url": "/v1/chat/completions",
               "body": {"messages": [{"role": "user", "content": "x"}], "stream": true}})
        .to_string(),
    ];
    let input = d.join("in.jsonl");
    write_jsonl(&input, &lines);
    let output = d.join("out.jsonl");
    let out = run(&input, &output);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let r = results(&output);
    assert_eq!(r.len(), lines.len(), "{r:?}");
    let a = &r["a"];
    assert_eq!(a["response"]["status_code"], 200);
    assert!(a["id"].as_str().unwrap().starts_with("batch_req_"));
    assert_eq!(a["response"]["body"]["object"], "chat.completion");
    assert_eq!(a["response"]["body"]["usage"]["completion_tokens"], 12);
    // provenance: the model file, its hash and type, the seed used (none was given: one from the custom_id)
    let q = &a["quire"];
    assert_eq!(q["model"], "tiny-qwen3-q8_0.gguf");
    assert_eq!(q["model_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(q["quant"], "Q8_0");
    assert!(q["seed"].is_u64() && q["sampling"]["temperature"] == 0.9, "{q}");
    assert_eq!(r["seeded"]["quire"]["seed"], 42);
    let st: Value = serde_json::from_str(content(&r["structured"])).unwrap();
    assert!(st["tone"] == "warm" || st["tone"] == "plain", "{st}");
    assert_eq!(r["broken"]["error"]["code"], "invalid_json");
    assert_eq!(r["broken"]["error"]["line"], 2);
    assert!(r["broken"]["response"].is_null());
    assert_eq!(r["wrong-url"]["error"]["param"], "url");
    for (id, code, param) in [
        ("bad-body", "invalid_type", "temperature"),
        ("too-long", "context_length_exceeded", "messages"),
        ("streamed", "invalid_value", "stream"),
    ] {
        let e = &r[id]["response"];
        assert_eq!(e["status_code"], 400, "{id}: {e}");
        assert_eq!(
            (e["body"]["error"]["code"].as_str(), e["body"]["error"]["param"].as_str()),
            (Some(code), Some(param)),
            "{id}: {e}"
        );
    }
    // which file each went to
    let ok: Vec<String> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["custom_id"].as_str().unwrap().to_string())
        .collect();
    let mut ok_sorted = ok.clone();
    ok_sorted.sort();
    assert_eq!(ok_sorted, ["a", "seeded", "structured"]);
    // a second run finds everything done and writes nothing
    let again = run(&input, &output);
    assert!(again.status.success(), "stderr: {}", text(&again.stderr));
    assert_eq!(results(&output), r);
}

#[test]
fn whole_file_problems_are_refused_with_their_line() {
    let d = dir("refused");
    let output = d.join("out.jsonl");
    for (name, body, needle) in [
        ("empty", String::new(), "holds no request"),
        ("csv", "name,price\nbottle,3\n".to_string(), "line 1 is not JSON"),
        (
            "dup",
            [
                chat_line("x", "a", 4).to_string(),
                chat_line("y", "b", 4).to_string(),
                chat_line("x", "c", 4).to_string(),
            ]
            .join("\n"),
            "line 3: custom_id 'x' is already used on line 1",
        ),
    ] {
        let input = d.join(format!("{name}.jsonl"));
        std::fs::write(&input, body).unwrap();
        let out = run(&input, &output);
        assert!(!out.status.success(), "{name} was accepted");
        assert!(text(&out.stderr).contains(needle), "{name}: {}", text(&out.stderr));
        assert!(!output.exists() || std::fs::read_to_string(&output).unwrap().is_empty());
    }
}

/// Lines long enough that a run takes a few seconds on the tiny model.
fn long_batch(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| chat_line(&format!("item-{i:03}"), &format!("Write about item {i}"), 300).to_string())
        .collect()
}

/// Waits until `path` has at least `n` lines (or the process ended).
fn wait_for_lines(path: &Path, n: usize, child: &mut std::process::Child) {
    let t0 = Instant::now();
    while std::fs::read_to_string(path).map_or(0, |s| s.lines().count()) < n {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be interrupted");
        assert!(t0.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn killed_or_stopped_runs_continue_and_write_each_id_once_with_the_same_text() {
    let d = dir("resume");
    let input = d.join("in.jsonl");
    let lines = long_batch(24);
    write_jsonl(&input, &lines);
    // the uninterrupted run, for reference
    let reference = d.join("ref.jsonl");
    let out = run(&input, &reference);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let want = results(&reference);
    assert_eq!(want.len(), 24);

    // SIGKILL after a few lines, then SIGINT after a few more, then to the end
    let output = d.join("out.jsonl");
    let mut child = batch_cmd(&input, &output).stderr(Stdio::null()).spawn().unwrap();
    wait_for_lines(&output, 3, &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    let after_kill = results(&output).len();
    assert!((3..24).contains(&after_kill), "{after_kill} lines after the kill");

    let mut child = batch_cmd(&input, &output).stderr(Stdio::piped()).spawn().unwrap();
    wait_for_lines(&output, after_kill + 3, &mut child);
    let pid = child.id() as i32;
    assert_eq!(Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap().code(), Some(0));
    let out = child.wait_with_output().unwrap();
    let after_stop = results(&output).len();
    if after_stop < 24 {
        assert_eq!(out.status.code(), Some(130), "stderr: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("run the same command again"), "{}", text(&out.stderr));
    }

    let out = run(&input, &output);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let got = results(&output);
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (id, v) in &want {
        assert_eq!(content(&got[id]), content(v), "{id}: a resumed run writes the same text");
    }
}

#[test]
fn a_template_and_a_csv_make_one_request_per_row_with_its_provenance() {
    let d = dir("template");
    let template = d.join("blurb.md");
    std::fs::write(
        &template,
        "+++\nname = \"Blurb\"\nsystem = \"You write for {{ shop }}.\"\n[request]\nmax_tokens = 6\ntemperature = 0.0\n\
         chat_template_kwargs = { enable_thinking = false }\n[[fields]]\nkey = \"product\"\nlabel = \"Product\"\n\
         [[fields]]\nkey = \"notes\"\nlabel = \"Notes\"\noptional = true\n+++\n\
         One line about {{ product }}.{% if notes %} Mention: {{ notes }}{% endif %}\n",
    )
    .unwrap();
    let data = d.join("items.csv");
    std::fs::write(
        &data,
        "shop,product,notes\r\nAcme,\"Kettle, 1.7 L\",\"says \"\"done\"\"\nwhen it boils\"\r\n好物店,保温杯，500 ml,\r\n",
    )
    .unwrap();
    let out = d.join("out.jsonl");
    let run = |data: &Path| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_quire"));
        c.args(["batch", "-m", &model(), "--ctx", "1024", "-t", "2", "--template"])
            .arg(&template)
            .arg("--data")
            .arg(data)
            .arg("-o")
            .arg(&out);
        c.output().unwrap()
    };
    let o = run(&data);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let requests: Vec<Value> = std::fs::read_to_string(d.join("out.requests.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let messages: Vec<&Value> = requests.iter().map(|r| &r["body"]["messages"]).collect();
    assert_eq!(
        messages,
        [
            &json!([{"role": "system", "content": "You write for Acme."},
                    {"role": "user", "content": "One line about Kettle, 1.7 L. Mention: says \"done\"\nwhen it boils"}]),
            &json!([{"role": "system", "content": "You write for 好物店."},
                    {"role": "user", "content": "One line about 保温杯，500 ml."}]),
        ]
    );
    let got = results(&out);
    assert_eq!(got.keys().collect::<Vec<_>>(), ["row-1", "row-2"]);
    for (row, id) in [(1, "row-1"), (2, "row-2")] {
        let q = &got[id]["quire"];
        assert_eq!((q["template"].as_str(), q["row"].as_u64()), (Some("blurb"), Some(row)), "{q}");
        assert_eq!(q["sampling"]["max_tokens"], 6);
        assert_eq!(got[id]["response"]["body"]["usage"]["completion_tokens"], 6);
    }

    // A row without a required value: refused before the model loads, naming the row.
    let bad = d.join("bad.csv");
    std::fs::write(&bad, "shop,product\nAcme,Kettle\nAcme,\n").unwrap();
    let o = run(&bad);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("row 2 (line 3): field 'product' is empty"), "{}", text(&o.stderr));
    let missing = d.join("missing.csv");
    std::fs::write(&missing, "shop\nAcme\n").unwrap();
    let o = run(&missing);
    assert!(
        text(&o.stderr).contains("needs the field 'product', which the data does not have (it has: shop)"),
        "{}",
        text(&o.stderr)
    );

    let o = Command::new(env!("CARGO_BIN_EXE_quire"))
        .args(["batch", "-m", &model(), "--template", "no-such", "--data"])
        .arg(&data)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        text(&o.stderr).contains("no template 'no-such'")
            && text(&o.stderr).contains("product-description.zh")
    );
    std::fs::remove_dir_all(&d).unwrap();
}
