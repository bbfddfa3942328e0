//! Our quantizers against llama.cpp's: every quantized tensor in the llama-quantize
//! fixtures is re-quantized from the F32 file (exactly the bf16 checkpoint's values)
//! and must come out byte-identical. llama-quantize ran without an importance matrix,
//! so it used the reference quantizers (`quantize_row_*_ref`) that ours follow.

mod common;

use quire_kernels::DType;

/// Names of all tensors in a fixture file.
fn tensor_names(file: &str) -> Vec<String> {
    let path = common::fixtures_dir().join(file);
    let model =
        gguf_rs::get_gguf_container(path.to_str().unwrap()).and_then(|mut c| c.decode()).expect("gguf");
    model.tensors().iter().map(|t| t.name.clone()).collect()
}

/// Requantizes every tensor of `dtype` in `file` from the F32 file; returns how many
/// tensors were compared. Fails on the first differing block, naming it.
fn check_file(file: &str, dtype: DType) -> usize {
    check_file_from(file, dtype, "tiny-qwen3-f32.gguf", DType::F32)
}

/// [`check_file`] with another source file (the later fixtures were quantized from the F16 file).
fn check_file_from(file: &str, dtype: DType, source_file: &str, source_type: DType) -> usize {
    let mut compared = 0;
    for name in tensor_names(file) {
        let theirs = common::read_tensor(file, &name);
        if theirs.dtype != dtype {
            continue;
        }
        let source = common::read_tensor(source_file, &name);
        assert_eq!(source.dtype, source_type, "{name} in {source_file}");
        assert_eq!(source.shape, theirs.shape, "{name}: shape");
        let values = source.dequantize();
        let n = theirs.row_len();
        let block_bytes = dtype.block_bytes();
        for (r, row) in values.chunks_exact(n).enumerate() {
            let ours = common::quantize(dtype, row);
            if ours != theirs.row(r) {
                let b = ours
                    .chunks(block_bytes)
                    .zip(theirs.row(r).chunks(block_bytes))
                    .position(|(a, b)| a != b)
                    .unwrap();
                let range = b * block_bytes..(b + 1) * block_bytes;
                panic!(
                    "{file}/{name} ({dtype}): row {r} block {b} differs\n ours:   {:?}\n theirs: {:?}",
                    &ours[range.clone()],
                    &theirs.row(r)[range]
                );
            }
        }
        compared += 1;
    }
    compared
}

#[test]
fn q8_0_matches_llama_quantize() {
    assert!(check_file("tiny-qwen3-q8_0.gguf", DType::Q8_0) >= 10);
}

#[test]
fn q4_0_matches_llama_quantize() {
    assert!(check_file("tiny-qwen3-q4_0.gguf", DType::Q4_0) >= 10);
}

#[test]
fn q4_1_q5_0_q5_1_iq4_nl_match_llama_quantize() {
    for (file, dtype) in [
        ("tiny-qwen3-q4_1.gguf", DType::Q4_1),
        ("tiny-qwen3-q5_0.gguf", DType::Q5_0),
        ("tiny-qwen3-q5_1.gguf", DType::Q5_1),
        ("tiny-qwen3-iq4_nl.gguf", DType::IQ4_NL),
    ] {
        assert!(check_file_from(file, dtype, "tiny-qwen3-f16.gguf", DType::F16) >= 10, "{file}");
    }
}

#[test]
fn q2_k_q3_k_iq4_xs_match_llama_quantize() {
    for (file, dtype, at_least) in [
        ("tiny-qwen3-q2_k.gguf", DType::Q2_K, 8),
        ("tiny-qwen3-q2_k.gguf", DType::Q3_K, 6),
        ("tiny-qwen3-q3_k_m.gguf", DType::Q3_K, 8),
        ("tiny-qwen3-q3_k_m.gguf", DType::Q4_K, 4),
        ("tiny-qwen3-q3_k_m.gguf", DType::Q5_K, 2),
        ("tiny-qwen3-iq4_xs.gguf", DType::IQ4_XS, 14),
    ] {
        let n = check_file_from(file, dtype, "tiny-qwen3-f16.gguf", DType::F16);
        assert!(n >= at_least, "{file}: {n} {dtype} tensors");
    }
}

#[test]
fn q4_k_matches_llama_quantize() {
    assert!(check_file("tiny-qwen3-q4_k_m.gguf", DType::Q4_K) >= 5);
}

#[test]
fn q5_k_matches_llama_quantize() {
    assert!(check_file("tiny-qwen3-q5_k_m.gguf", DType::Q5_K) >= 5);
}

#[test]
fn q6_k_matches_llama_quantize() {
    assert!(check_file("tiny-qwen3-q6_k.gguf", DType::Q6_K) >= 10);
}

#[test]
fn f16_and_bf16_match_the_converter() {
    assert!(check_file("tiny-qwen3-f16.gguf", DType::F16) >= 10);
    assert!(check_file("tiny-qwen3-bf16.gguf", DType::BF16) >= 10);
}
