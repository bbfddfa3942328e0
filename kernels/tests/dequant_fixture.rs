//! Dequantization checked against values produced by an independent implementation
//! (the `gguf` Python package) for real llama.cpp files: the arbiter of every layout
//! detail. Covers F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K and Q6_K (`tiny-qwen3-dequant.json`), and Q4_1,
//! Q5_0, Q5_1, IQ4_NL, IQ4_XS, Q2_K and Q3_K (`tiny-qwen3-dequant-more.json`).

mod common;

use std::collections::BTreeSet;

use serde_json::Value;

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

/// |ours − theirs| ≤ 1e-6·|theirs|, or ≤ 1e-12 absolute for tiny values.
fn close(ours: f32, theirs: f64) -> bool {
    let diff = (ours as f64 - theirs).abs();
    diff <= 1e-6 * theirs.abs() || diff <= 1e-12
}

/// Checks the files `suffixes` of fixture `json` (all of them if `None`); returns the types seen and the
/// number of values checked.
fn check_fixture(json: &str, suffixes: Option<&[&str]>) -> (BTreeSet<&'static str>, usize) {
    let dir = common::fixtures_dir();
    let text = std::fs::read_to_string(dir.join(json)).expect("json");
    let fixture: Value = serde_json::from_str(&text).expect("valid json");
    let files = fixture["tensors"].as_object().expect("tensors object");
    if let Some(want) = suffixes {
        for s in want {
            assert!(files.contains_key(*s), "{json} has no file {s}");
        }
    }

    let mut types_seen = BTreeSet::new();
    let mut checked = 0usize;
    for (suffix, tensors) in files {
        if suffixes.is_some_and(|want| !want.contains(&suffix.as_str())) {
            continue;
        }
        let file = format!("tiny-qwen3-{suffix}.gguf");
        for (name, expect) in tensors.as_object().expect("tensor map") {
            let tensor = common::read_tensor(&file, name);
            let what = format!("{file}/{name}");
            assert_eq!(tensor.dtype.name(), expect["type"].as_str().unwrap(), "{what}: type");
            let shape: Vec<usize> = f64s(&expect["shape"]).iter().map(|&d| d as usize).collect();
            assert_eq!(tensor.shape, shape, "{what}: shape");
            let values = tensor.dequantize();
            assert_eq!(values.len() as f64, expect["n"].as_f64().unwrap(), "{what}: n");

            for (i, &theirs) in f64s(&expect["first_64"]).iter().enumerate() {
                assert!(close(values[i], theirs), "{what}[{i}]: {} vs {theirs}", values[i]);
                checked += 1;
            }
            let every_97th = f64s(&expect["every_97th"]);
            assert_eq!(every_97th.len(), values.len().div_ceil(97), "{what}: every_97th count");
            for (k, &theirs) in every_97th.iter().enumerate() {
                let i = 97 * k;
                assert!(close(values[i], theirs), "{what}[{i}]: {} vs {theirs}", values[i]);
                checked += 1;
            }

            // The sums cover every value, so a layout slip anywhere shows up here.
            let sum: f64 = values.iter().map(|&v| v as f64).sum();
            let sumsq: f64 = values.iter().map(|&v| (v as f64) * (v as f64)).sum();
            let abs_sum: f64 = values.iter().map(|&v| (v as f64).abs()).sum();
            let want_sum = expect["sum"].as_f64().unwrap();
            let want_sumsq = expect["sumsq"].as_f64().unwrap();
            assert!((sum - want_sum).abs() <= 1e-9 * abs_sum, "{what}: sum {sum} vs {want_sum}");
            assert!((sumsq - want_sumsq).abs() <= 1e-9 * want_sumsq, "{what}: sumsq {sumsq} vs {want_sumsq}");
            types_seen.insert(tensor.dtype.name());
        }
    }
    (types_seen, checked)
}

#[test]
fn dequantized_tensors_match_the_gguf_python_package() {
    let (types_seen, checked) = check_fixture("tiny-qwen3-dequant.json", None);
    let want: BTreeSet<&str> = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K"].into();
    assert_eq!(types_seen, want, "fixture must cover every weight format");
    assert!(checked > 20_000, "only {checked} values checked");
}

/// The 32-value formats with a minimum, a fifth bit or a level table, and the 2-, 3- and 4-bit super-block
/// formats (with the Q4_K, Q5_K and Q6_K tensors llama-quantize mixes into their files).
#[test]
fn more_dequantized_tensors_match_the_gguf_python_package() {
    let files = ["q4_1", "q5_0", "q5_1", "iq4_nl", "iq4_xs", "q2_k", "q3_k_m"];
    let (types_seen, checked) = check_fixture("tiny-qwen3-dequant-more.json", Some(&files));
    let want: BTreeSet<&str> =
        ["Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS", "Q2_K", "Q3_K", "Q4_K", "Q6_K"].into();
    assert_eq!(types_seen, want, "the files' types");
    assert!(checked > 3_000, "only {checked} values checked");
}
