//! x86-64 SIMD kernels, one file per instruction set.
//!
//! `avx2.rs` holds `#[target_feature(enable = "avx2,fma,f16c")]` dot products for every
//! weight format and the activation quantizers. `avx512.rs` holds the VNNI panel kernels
//! behind [`crate::matmul`] for the quantized formats (driven by `avx512_gemm.rs`), and `avx512_rows.rs` the attention row kernels
//! for f32 rows (the AVX2 ones' results bit for bit), `avx512_exp.rs` an `e^x` with glibc's results bit for
//! bit, `avx2_norm_rope.rs` and `avx512_norm_rope.rs` RMSNorm's and RoPE's element-wise steps; other
//! single dot products on AVX-512 machines still run the AVX2 kernels.
//!
//! Nothing here checks CPU features: callers hold a [`crate::dispatch::Isa`] (made only by detection) of the
//! right kind, or a check made from one (`matmul::has_panel_kernel`, `can_prepack`).

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx2_norm_rope;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
#[cfg(target_arch = "x86_64")]
pub mod avx512_exp;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512_gemm;
#[cfg(target_arch = "x86_64")]
pub mod avx512_norm_rope;
#[cfg(target_arch = "x86_64")]
pub mod avx512_rows;

/// Whether this CPU can run the AVX2 kernels (AVX2, FMA and F16C).
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU has the AVX-512 subset the AVX-512 kernels target
/// (F, BW, VL, VNNI) on top of everything [`has_avx2`] needs.
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx2()
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
