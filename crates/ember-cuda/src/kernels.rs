//! Typed launchers: every `extern "C"` kernel the host launches, declared once here with its
//! symbol and argument struct ([`crate::kernel_args`]). The functions are loaded from the
//! module when the device opens, so a launch takes no lock and looks nothing up by name.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaModule, CudaStream, LaunchConfig};
use ember_core::BackendResult;

use crate::error::device_err;
use crate::kernel_args::*;
use crate::launch::{Geometry, BLOCK_SIZES, HEAD_DIMS};

/// One launcher: a kernel of [`Kernels`] with its argument struct.
pub type Launcher<A> = fn(&Kernels, Geometry, &A) -> BackendResult<()>;

fn launch<A: KernelArgs>(
    stream: &CudaStream,
    function: &CudaFunction,
    symbol: &str,
    geometry: Geometry,
    args: &A,
) -> BackendResult<()> {
    let mut builder = stream.launch_builder(function);
    args.push(&mut builder);
    let config = LaunchConfig {
        grid_dim: geometry.grid,
        block_dim: geometry.block,
        shared_mem_bytes: 0,
    };
    // SAFETY: `A` lists the kernel's parameters in order with their C types (checked against
    // the compiled PTX by scripts/check_kernel_signatures.py); launch sites pass live device
    // addresses of the shapes documented on each field.
    unsafe { builder.launch(config) }.map_err(|e| device_err(symbol, e))?;
    Ok(())
}

/// Declares the kernel table: `name = "symbol" (ArgsStruct);`.
macro_rules! kernels {
    ($( $(#[doc = $doc:literal])* $name:ident = $symbol:literal ($args:ty); )*) => {
        /// Every kernel the host launches, loaded once, bound to the device's stream.
        pub struct Kernels {
            stream: Arc<CudaStream>,
            $( $name: CudaFunction, )*
        }

        impl Kernels {
            /// Loads every kernel from `module`; launches go to `stream`.
            pub fn load(module: &Arc<CudaModule>, stream: Arc<CudaStream>) -> Result<Self, String> {
                let function = |symbol: &str| {
                    module
                        .load_function(symbol)
                        .map_err(|e| format!("kernel {symbol}: {e:?}"))
                };
                Ok(Self {
                    stream,
                    $( $name: function($symbol)?, )*
                })
            }

            $(
                $(#[doc = $doc])*
                pub fn $name(&self, geometry: Geometry, args: &$args) -> BackendResult<()> {
                    launch(&self.stream, &self.$name, $symbol, geometry, args)
                }
            )*
        }

        /// Every declared kernel: its symbol and parameter kinds, in order.
        pub const SIGNATURES: &[(&str, &[ArgKind])] = &[ $( ($symbol, <$args as KernelArgs>::KINDS), )* ];
    };
}

kernels! {
    /// Row gather (embedding lookup, logits rows).
    gather_rows_bf16 = "ember_gather_rows_bf16" (GatherRowsArgs);
    /// LoRA shrink of decode rows (grouped GEMV).
    lora_shrink_gemv_bf16 = "ember_lora_shrink_gemv_bf16" (LoraShrinkGemvArgs);
    /// LoRA shrink of prefill segments (segmented GEMM).
    lora_shrink_segments_bf16 = "ember_lora_shrink_segments_bf16" (LoraShrinkSegmentsArgs);
    /// LoRA expand, `y += scale * B buf` per row's slot.
    lora_expand_bf16 = "ember_lora_expand_bf16" (LoraExpandArgs);
    /// RMS norm with the residual add fused.
    add_rms_norm_bf16 = "ember_add_rms_norm_bf16" (AddRmsNormArgs);
    /// Residual or bias add.
    add_bf16 = "ember_add_bf16" (AddArgs);
    /// `silu(gate) * up`.
    silu_mul_bf16 = "ember_silu_mul_bf16" (SiluMulArgs);
    /// bf16 to f32 (logits for sampling).
    to_f32_bf16 = "ember_to_f32_bf16" (ToF32Args);
    /// Rotary embedding, in place.
    rope_bf16 = "ember_rope_bf16" (RopeArgs);
    /// K/V rows into the paged cache.
    reshape_and_cache_bf16 = "ember_reshape_and_cache_bf16" (ReshapeAndCacheArgs);
    /// Paged decode attention, head size 64, 16-token blocks.
    paged_decode_attention_bf16_h64_b16 = "ember_paged_decode_attention_bf16_h64_b16" (PagedDecodeAttentionArgs);
    /// Paged decode attention, head size 64, 32-token blocks.
    paged_decode_attention_bf16_h64_b32 = "ember_paged_decode_attention_bf16_h64_b32" (PagedDecodeAttentionArgs);
    /// Paged decode attention, head size 128, 16-token blocks.
    paged_decode_attention_bf16_h128_b16 = "ember_paged_decode_attention_bf16_h128_b16" (PagedDecodeAttentionArgs);
    /// Paged decode attention, head size 128, 32-token blocks.
    paged_decode_attention_bf16_h128_b32 = "ember_paged_decode_attention_bf16_h128_b32" (PagedDecodeAttentionArgs);
    /// Combines the splits of paged decode attention.
    paged_decode_reduce_bf16 = "ember_paged_decode_reduce_bf16" (PagedDecodeReduceArgs);
    /// Prefill attention, head size 64, 16-token blocks.
    prefill_attention_bf16_h64_b16 = "ember_prefill_attention_bf16_h64_b16" (PrefillAttentionArgs);
    /// Prefill attention, head size 64, 32-token blocks.
    prefill_attention_bf16_h64_b32 = "ember_prefill_attention_bf16_h64_b32" (PrefillAttentionArgs);
    /// Prefill attention, head size 128, 16-token blocks.
    prefill_attention_bf16_h128_b16 = "ember_prefill_attention_bf16_h128_b16" (PrefillAttentionArgs);
    /// Prefill attention, head size 128, 32-token blocks.
    prefill_attention_bf16_h128_b32 = "ember_prefill_attention_bf16_h128_b32" (PrefillAttentionArgs);
    /// One token per row with its own sampling parameters.
    sample_f32 = "ember_sample_f32" (SampleArgs);
    /// GGUF quantized blocks (the 32-element formats and the K-quants) to bf16.
    dequant_bf16 = "ember_dequant_bf16" (DequantArgs);
}

/// Index of `(head_dim, block_size)` among the attention variants, in [`HEAD_DIMS`] x
/// [`BLOCK_SIZES`] order; `None` when no kernel exists for it.
fn attention_variant(head_dim: usize, block_size: usize) -> Option<usize> {
    let h = HEAD_DIMS.iter().position(|&d| d == head_dim)?;
    let b = BLOCK_SIZES.iter().position(|&s| s == block_size)?;
    Some(h * BLOCK_SIZES.len() + b)
}

/// The decode attention launcher for a head size and block size.
pub fn paged_decode_attention_bf16(
    head_dim: usize,
    block_size: usize,
) -> Option<Launcher<PagedDecodeAttentionArgs>> {
    let launchers: [Launcher<PagedDecodeAttentionArgs>; 4] = [
        Kernels::paged_decode_attention_bf16_h64_b16,
        Kernels::paged_decode_attention_bf16_h64_b32,
        Kernels::paged_decode_attention_bf16_h128_b16,
        Kernels::paged_decode_attention_bf16_h128_b32,
    ];
    attention_variant(head_dim, block_size).map(|i| launchers[i])
}

/// The prefill attention launcher for a head size and block size.
pub fn prefill_attention_bf16(head_dim: usize, block_size: usize) -> Option<Launcher<PrefillAttentionArgs>> {
    let launchers: [Launcher<PrefillAttentionArgs>; 4] = [
        Kernels::prefill_attention_bf16_h64_b16,
        Kernels::prefill_attention_bf16_h64_b32,
        Kernels::prefill_attention_bf16_h128_b16,
        Kernels::prefill_attention_bf16_h128_b32,
    ];
    attention_variant(head_dim, block_size).map(|i| launchers[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_variants_follow_head_and_block_sizes() {
        // The launcher tables above list h64_b16, h64_b32, h128_b16, h128_b32 in that order.
        let symbols: Vec<&str> = SIGNATURES
            .iter()
            .map(|(s, _)| *s)
            .filter(|s| s.starts_with("ember_paged_decode_attention_bf16_"))
            .collect();
        for (i, &head_dim) in HEAD_DIMS.iter().enumerate() {
            for (j, &block_size) in BLOCK_SIZES.iter().enumerate() {
                let variant = attention_variant(head_dim, block_size).unwrap();
                assert_eq!(variant, i * BLOCK_SIZES.len() + j);
                assert!(symbols[variant].ends_with(&format!("_h{head_dim}_b{block_size}")));
            }
        }
        assert!(attention_variant(96, 16).is_none() && attention_variant(64, 8).is_none());
        assert!(paged_decode_attention_bf16(128, 32).is_some());
        assert!(prefill_attention_bf16(80, 16).is_none());
    }

    /// How cuda/ember_kernels.h writes a symbol: the dtype as `T`, the attention variant as
    /// `hHD_bBS` (`ember_paged_decode_attention_bf16_h64_b16` -> `..._T_hHD_bBS`).
    fn header_name(symbol: &str) -> String {
        let (base, variant) = match symbol.rfind("_h") {
            Some(i) if symbol[i + 2..].starts_with(|c: char| c.is_ascii_digit()) => {
                (&symbol[..i], "_hHD_bBS")
            }
            _ => (symbol, ""),
        };
        let base = base.rsplit_once('_').map_or(base, |(b, _)| b);
        format!("{base}_T{variant}")
    }

    #[test]
    fn every_symbol_is_declared_once_and_in_the_header() {
        assert_eq!(
            header_name("ember_paged_decode_attention_bf16_h128_b32"),
            "ember_paged_decode_attention_T_hHD_bBS"
        );
        assert_eq!(header_name("ember_to_f32_bf16"), "ember_to_f32_T");
        let header = include_str!("../../../cuda/ember_kernels.h");
        let mut seen = std::collections::HashSet::new();
        for (symbol, kinds) in SIGNATURES {
            assert!(seen.insert(*symbol), "{symbol} declared twice");
            assert!(!kinds.is_empty(), "{symbol}");
            let templated = format!("{}(", header_name(symbol));
            let exact = format!("{symbol}(");
            assert!(
                header.contains(&exact) || header.contains(&templated),
                "{symbol} is not in cuda/ember_kernels.h"
            );
        }
    }
}
