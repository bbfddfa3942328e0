//! Which GGUF type each tensor gets, following llama.cpp so our files match theirs tensor for tensor.
//!
//! The float types follow `convert_hf_to_gguf.py`: 1-D tensors (norms, biases) stay F32, every weight matrix
//! takes the requested type. The quantized types follow `llama-quantize` without an importance matrix
//! (`llama_tensor_get_type` in llama.cpp's `src/llama-quant.cpp`), for the dense models Quire runs:
//! - 1-D tensors are never quantized (F32);
//! - the output head gets Q6_K (Q8_0 stays Q8_0), and so does `token_embd` when it doubles as the head (tied
//!   embeddings); an untied `token_embd` takes the requested type;
//! - Q4_K_M: `attn_v` and `ffn_down` get Q6_K in the layers where `use_more_bits` holds (the first and last
//!   eighth of the layers and every third layer in between);
//! - Q3_K_M: `attn_v` gets Q5_K in layers 0 and 1 and Q4_K after; `ffn_down` Q5_K in the first sixteenth of
//!   the layers and Q4_K after; `attn_output` Q4_K;
//! - Q2_K: `attn_v` gets Q4_K when four or more query heads share a KV head, else Q3_K; `ffn_down` and
//!   `attn_output` get Q3_K;
//! - IQ4_NL, IQ4_XS: `attn_v` gets Q5_K when four or more query heads share a KV head; `ffn_down` Q5_K in the
//!   first eighth of the layers;
//! - a row length the chosen block does not divide falls back (llama.cpp's `tensor_type_fallback`): Q2_K,
//!   Q3_K and IQ4_XS → IQ4_NL, Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, and to F16 if that block does not
//!   divide it either. This is why a "Q4_K_M" file of a model 896 wide (Qwen2.5-0.5B) is mostly Q5_0.

use anyhow::{bail, Result};
use quire_kernels::DType;

/// The `--type` of a conversion: one tensor type, or one of llama.cpp's mixtures (Q4_K_M, Q3_K_M, Q2_K,
/// IQ4_XS, ...).
#[allow(non_camel_case_types)] // llama.cpp's spelling: Q4_K_M, Q8_0, ...
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q2_K,
    Q3_K_M,
    Q4_K_M,
    Q6_K,
    IQ4_NL,
    IQ4_XS,
}

impl OutType {
    /// Every type, in the order `--help` lists them.
    pub const ALL: [OutType; 14] = [
        OutType::Q4_0,
        OutType::Q4_1,
        OutType::Q5_0,
        OutType::Q5_1,
        OutType::Q8_0,
        OutType::Q2_K,
        OutType::Q3_K_M,
        OutType::Q4_K_M,
        OutType::Q6_K,
        OutType::IQ4_NL,
        OutType::IQ4_XS,
        OutType::F16,
        OutType::BF16,
        OutType::F32,
    ];

    /// Parses llama.cpp's lower-case spelling (`q4_k_m`, `f16`, ...), case-insensitively.
    pub fn parse(s: &str) -> Result<OutType> {
        let t = OutType::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(s));
        match t {
            Some(t) => Ok(t),
            None => {
                let names: Vec<&str> = OutType::ALL.iter().map(|t| t.name()).collect();
                bail!("unknown output type '{s}' (choose one of: {})", names.join(", "))
            }
        }
    }

    /// The spelling used on the command line and in file names.
    pub fn name(self) -> &'static str {
        match self {
            OutType::F32 => "f32",
            OutType::F16 => "f16",
            OutType::BF16 => "bf16",
            OutType::Q8_0 => "q8_0",
            OutType::Q4_0 => "q4_0",
            OutType::Q4_1 => "q4_1",
            OutType::Q5_0 => "q5_0",
            OutType::Q5_1 => "q5_1",
            OutType::Q2_K => "q2_k",
            OutType::Q3_K_M => "q3_k_m",
            OutType::Q4_K_M => "q4_k_m",
            OutType::Q6_K => "q6_k",
            OutType::IQ4_NL => "iq4_nl",
            OutType::IQ4_XS => "iq4_xs",
        }
    }

    /// llama.cpp's `llama_ftype`, written as `general.file_type`.
    pub fn file_type(self) -> u32 {
        match self {
            OutType::F32 => 0,
            OutType::F16 => 1,
            OutType::Q4_0 => 2,
            OutType::Q4_1 => 3,
            OutType::Q8_0 => 7,
            OutType::Q5_0 => 8,
            OutType::Q5_1 => 9,
            OutType::Q2_K => 10,
            OutType::Q3_K_M => 12,
            OutType::Q4_K_M => 15,
            OutType::Q6_K => 18,
            OutType::IQ4_NL => 25,
            OutType::IQ4_XS => 30,
            OutType::BF16 => 32,
        }
    }

    /// The type most weight matrices get.
    pub fn base(self) -> DType {
        match self {
            OutType::F32 => DType::F32,
            OutType::F16 => DType::F16,
            OutType::BF16 => DType::BF16,
            OutType::Q8_0 => DType::Q8_0,
            OutType::Q4_0 => DType::Q4_0,
            OutType::Q4_1 => DType::Q4_1,
            OutType::Q5_0 => DType::Q5_0,
            OutType::Q5_1 => DType::Q5_1,
            OutType::Q2_K => DType::Q2_K,
            OutType::Q3_K_M => DType::Q3_K,
            OutType::Q4_K_M => DType::Q4_K,
            OutType::Q6_K => DType::Q6_K,
            OutType::IQ4_NL => DType::IQ4_NL,
            OutType::IQ4_XS => DType::IQ4_XS,
        }
    }

    fn is_quantized(self) -> bool {
        !matches!(self, OutType::F32 | OutType::F16 | OutType::BF16)
    }
}

/// What a tensor is, as far as the type choice cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    TokenEmbd,
    Output,
    AttnQ,
    AttnK,
    AttnV,
    AttnOutput,
    FfnGate,
    FfnUp,
    FfnDown,
    /// Norm weights and biases: 1-D, always F32.
    Vector,
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers, and every third layer in between.
pub fn use_more_bits(layer: usize, n_layers: usize) -> bool {
    let (i, n) = (layer as i64, n_layers as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The GGUF type of one tensor. `ncols` is the row length (ne0); `layer` is the block index for per-layer
/// tensors; `n_gqa` is the number of query heads per KV head; `tied` says the token embedding is also the
/// output head.
pub fn tensor_type(
    out: OutType,
    role: Role,
    layer: Option<usize>,
    n_layers: usize,
    n_gqa: usize,
    ncols: usize,
    tied: bool,
) -> Result<DType> {
    if role == Role::Vector {
        return Ok(DType::F32);
    }
    let base = out.base();
    if !out.is_quantized() {
        return Ok(base);
    }
    let layer_in = |fraction: usize| layer.is_some_and(|l| l < n_layers / fraction);
    let more_bits = layer.is_some_and(|l| use_more_bits(l, n_layers));
    let chosen = match (role, out) {
        (Role::Output | Role::TokenEmbd, _) if role == Role::Output || tied => {
            if !ncols.is_multiple_of(base.block_len()) {
                DType::Q8_0
            } else if base != DType::Q8_0 {
                DType::Q6_K
            } else {
                DType::Q8_0
            }
        }
        (Role::AttnV, OutType::Q2_K) if n_gqa >= 4 => DType::Q4_K,
        (Role::AttnV, OutType::Q2_K) => DType::Q3_K,
        (Role::AttnV, OutType::Q3_K_M) if layer.is_some_and(|l| l < 2) => DType::Q5_K,
        (Role::AttnV, OutType::Q3_K_M) => DType::Q4_K,
        (Role::AttnV, OutType::IQ4_NL | OutType::IQ4_XS) if n_gqa >= 4 => DType::Q5_K,
        (Role::AttnV | Role::FfnDown, OutType::Q4_K_M) if more_bits => DType::Q6_K,
        (Role::FfnDown, OutType::Q2_K) => DType::Q3_K,
        (Role::FfnDown, OutType::Q3_K_M) if layer_in(16) => DType::Q5_K,
        (Role::FfnDown, OutType::Q3_K_M) => DType::Q4_K,
        (Role::FfnDown, OutType::IQ4_NL | OutType::IQ4_XS) if layer_in(8) => DType::Q5_K,
        (Role::AttnOutput, OutType::Q2_K) => DType::Q3_K,
        (Role::AttnOutput, OutType::Q3_K_M) => DType::Q4_K,
        _ => base,
    };
    fallback(chosen, ncols)
}

/// llama.cpp's `tensor_type_fallback` for rows the block length does not divide (see the module docs).
fn fallback(dtype: DType, ncols: usize) -> Result<DType> {
    if ncols.is_multiple_of(dtype.block_len()) {
        return Ok(dtype);
    }
    let next = match dtype {
        DType::Q2_K | DType::Q3_K | DType::IQ4_XS => DType::IQ4_NL,
        DType::Q4_K => DType::Q5_0,
        DType::Q5_K => DType::Q5_1,
        DType::Q6_K => DType::Q8_0,
        other => bail!(
            "a row of {ncols} values cannot be stored as {other} (block of {}); choose another --type",
            other.block_len()
        ),
    };
    if ncols.is_multiple_of(next.block_len()) {
        Ok(next)
    } else {
        Ok(DType::F16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_more_bits_matches_llamacpp_for_36_layers() {
        let layers: Vec<usize> = (0..36).filter(|&l| use_more_bits(l, 36)).collect();
        // n/8 = 4, 7n/8 = 31: layers 0-3, 31-35, and 4 + 3k + 2 in between.
        assert_eq!(layers, vec![0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 31, 32, 33, 34, 35]);
        assert_eq!((0..2).map(|l| use_more_bits(l, 2)).collect::<Vec<_>>(), vec![false, true]);
    }

    #[test]
    fn tied_embedding_is_q6_k_except_for_q8_0() {
        let t = |out| tensor_type(out, Role::TokenEmbd, None, 36, 4, 2560, true).unwrap();
        assert_eq!(t(OutType::Q4_0), DType::Q6_K);
        assert_eq!(t(OutType::Q4_K_M), DType::Q6_K);
        assert_eq!(t(OutType::Q8_0), DType::Q8_0);
        assert_eq!(t(OutType::F16), DType::F16);
        let untied = tensor_type(OutType::Q4_0, Role::TokenEmbd, None, 36, 4, 2560, false).unwrap();
        assert_eq!(untied, DType::Q4_0);
        assert_eq!(tensor_type(OutType::Q4_0, Role::Vector, Some(0), 36, 4, 2560, true).unwrap(), DType::F32);
    }

    #[test]
    fn odd_widths_fall_back_as_in_llamacpp() {
        // Qwen2.5-0.5B: hidden 896 (not a multiple of 256), FFN 4864 (19·256), 24 layers, 7 query heads per KV head
        let t = |out, role, layer| tensor_type(out, role, Some(layer), 24, 7, 896, true).unwrap();
        assert_eq!(t(OutType::Q4_K_M, Role::FfnUp, 1), DType::Q5_0);
        assert_eq!(t(OutType::Q4_K_M, Role::AttnV, 0), DType::Q8_0); // Q6_K there
        assert_eq!(t(OutType::Q3_K_M, Role::AttnQ, 5), DType::IQ4_NL);
        assert_eq!(t(OutType::Q3_K_M, Role::AttnV, 0), DType::Q5_1); // Q5_K there
        assert_eq!(t(OutType::IQ4_XS, Role::FfnGate, 3), DType::IQ4_NL);
        assert_eq!(
            tensor_type(OutType::Q4_K_M, Role::FfnDown, Some(4), 24, 7, 4864, true).unwrap(),
            DType::Q4_K
        );
        assert_eq!(
            tensor_type(OutType::Q4_K_M, Role::TokenEmbd, None, 24, 7, 896, true).unwrap(),
            DType::Q8_0
        );
        assert!(tensor_type(OutType::Q4_0, Role::FfnUp, Some(1), 2, 4, 100, true).is_err());
        // neither block divides 48: F16
        assert_eq!(tensor_type(OutType::Q2_K, Role::FfnUp, Some(1), 2, 4, 48, true).unwrap(), DType::F16);
    }

    #[test]
    fn low_bit_mixtures_follow_llamacpp_for_qwen3_4b() {
        // Qwen3-4B: 36 layers, 32 query heads over 8 KV heads, every width a multiple of 256
        let t = |out, role, layer| tensor_type(out, role, Some(layer), 36, 4, 2560, true).unwrap();
        assert_eq!(t(OutType::Q2_K, Role::AttnV, 7), DType::Q4_K);
        assert_eq!(t(OutType::Q2_K, Role::FfnDown, 7), DType::Q3_K);
        assert_eq!(t(OutType::Q2_K, Role::AttnOutput, 7), DType::Q3_K);
        assert_eq!(t(OutType::Q2_K, Role::FfnUp, 7), DType::Q2_K);
        assert_eq!(t(OutType::Q3_K_M, Role::AttnV, 1), DType::Q5_K);
        assert_eq!(t(OutType::Q3_K_M, Role::AttnV, 2), DType::Q4_K);
        assert_eq!(t(OutType::Q3_K_M, Role::FfnDown, 1), DType::Q5_K); // 36/16 = 2
        assert_eq!(t(OutType::Q3_K_M, Role::FfnDown, 2), DType::Q4_K);
        assert_eq!(t(OutType::Q3_K_M, Role::AttnOutput, 9), DType::Q4_K);
        assert_eq!(t(OutType::Q3_K_M, Role::AttnK, 9), DType::Q3_K);
        assert_eq!(t(OutType::IQ4_XS, Role::AttnV, 9), DType::Q5_K);
        assert_eq!(t(OutType::IQ4_XS, Role::FfnDown, 3), DType::Q5_K); // 36/8 = 4
        assert_eq!(t(OutType::IQ4_XS, Role::FfnDown, 4), DType::IQ4_XS);
        assert_eq!(t(OutType::IQ4_NL, Role::FfnGate, 4), DType::IQ4_NL);
        for out in [OutType::Q4_1, OutType::Q5_0, OutType::Q5_1] {
            assert_eq!(t(out, Role::AttnV, 0), out.base());
            assert_eq!(t(out, Role::FfnDown, 0), out.base());
        }
        // a KV head per two query heads (the tiny fixture): IQ4_XS keeps attn_v, Q2_K gives it Q3_K
        assert_eq!(
            tensor_type(OutType::IQ4_XS, Role::AttnV, Some(0), 2, 2, 256, true).unwrap(),
            DType::IQ4_XS
        );
        assert_eq!(tensor_type(OutType::Q2_K, Role::AttnV, Some(0), 2, 2, 256, true).unwrap(), DType::Q3_K);
    }
}
