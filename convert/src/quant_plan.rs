//! Which GGUF type each tensor gets, following llama.cpp so our files match theirs tensor for tensor.
//!
//! The float types follow `convert_hf_to_gguf.py`: 1-D tensors (norms, biases) stay F32, every weight matrix
//! takes the requested type. The quantized types follow `llama-quantize` without an importance matrix
//! (`llama_tensor_get_type` in llama.cpp's `src/llama-quant.cpp`):
//! - 1-D tensors are never quantized (F32);
//! - the output head gets Q6_K (Q8_0 stays Q8_0), and so does `token_embd` when it doubles as the head (tied
//!   embeddings); an untied `token_embd` takes the requested type;
//! - for Q4_K_M, `attn_v` and `ffn_down` get Q6_K in the layers where `use_more_bits` holds: the first and
//!   last eighth of the layers and every third layer in between;
//! - a row length the chosen block does not divide falls back: Q6_K → Q8_0, and Q4_K → Q8_0 (llama.cpp picks
//!   Q5_0 there, a type Quire's kernels do not have; it never happens for Qwen3-4B, whose widths are all
//!   multiples of 256).

use anyhow::{bail, Result};
use quire_kernels::DType;

/// The `--type` of a conversion: one tensor type, or llama.cpp's Q4_K_M mixture.
#[allow(non_camel_case_types)] // llama.cpp's spelling: Q4_K_M, Q8_0, ...
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_K_M,
    Q6_K,
}

impl OutType {
    /// Every type, in the order `--help` lists them.
    pub const ALL: [OutType; 7] = [
        OutType::Q4_0,
        OutType::Q8_0,
        OutType::Q4_K_M,
        OutType::Q6_K,
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
            OutType::Q4_K_M => "q4_k_m",
            OutType::Q6_K => "q6_k",
        }
    }

    /// llama.cpp's `llama_ftype`, written as `general.file_type`.
    pub fn file_type(self) -> u32 {
        match self {
            OutType::F32 => 0,
            OutType::F16 => 1,
            OutType::Q4_0 => 2,
            OutType::Q8_0 => 7,
            OutType::Q4_K_M => 15,
            OutType::Q6_K => 18,
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
            OutType::Q4_K_M => DType::Q4_K,
            OutType::Q6_K => DType::Q6_K,
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
/// tensors; `tied` says the token embedding is also the output head.
pub fn tensor_type(
    out: OutType,
    role: Role,
    layer: Option<usize>,
    n_layers: usize,
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
    let more_bits = layer.is_some_and(|l| use_more_bits(l, n_layers));
    let chosen = match role {
        Role::Output | Role::TokenEmbd if role == Role::Output || tied => {
            if !ncols.is_multiple_of(base.block_len()) {
                DType::Q8_0
            } else if base != DType::Q8_0 {
                DType::Q6_K
            } else {
                DType::Q8_0
            }
        }
        Role::AttnV | Role::FfnDown if out == OutType::Q4_K_M && more_bits => DType::Q6_K,
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
        DType::Q4_K | DType::Q6_K => DType::Q8_0,
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
        let t = |out| tensor_type(out, Role::TokenEmbd, None, 36, 2560, true).unwrap();
        assert_eq!(t(OutType::Q4_0), DType::Q6_K);
        assert_eq!(t(OutType::Q4_K_M), DType::Q6_K);
        assert_eq!(t(OutType::Q8_0), DType::Q8_0);
        assert_eq!(t(OutType::F16), DType::F16);
        let untied = tensor_type(OutType::Q4_0, Role::TokenEmbd, None, 36, 2560, false).unwrap();
        assert_eq!(untied, DType::Q4_0);
        assert_eq!(tensor_type(OutType::Q4_0, Role::Vector, Some(0), 36, 2560, true).unwrap(), DType::F32);
    }

    #[test]
    fn odd_widths_fall_back() {
        assert_eq!(tensor_type(OutType::Q4_K_M, Role::FfnUp, Some(1), 2, 896, true).unwrap(), DType::Q8_0);
        assert!(tensor_type(OutType::Q4_0, Role::FfnUp, Some(1), 2, 100, true).is_err());
    }
}
