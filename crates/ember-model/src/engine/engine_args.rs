//! Engine construction options.

use std::path::PathBuf;

use ember_core::{SchedulingPolicy, SpeculativeConfig};

use crate::engine::lora_registry::LoraConfig;

/// Most CPU threads an engine may start.
pub const MAX_NUM_THREADS: usize = 1024;
/// Default token budget per step.
pub const DEFAULT_MAX_NUM_BATCHED_TOKENS: usize = 2048;

/// Everything needed to build an engine.
#[derive(Clone, Debug)]
pub struct EngineArgs {
    /// A GGUF file or a Hugging Face model folder.
    pub model_path: PathBuf,
    /// Longest sequence (prompt + output); `None` uses the model's context length.
    pub max_model_len: Option<usize>,
    /// Most sequences in one step.
    pub max_num_seqs: usize,
    /// Most tokens in one step; `None` uses [`DEFAULT_MAX_NUM_BATCHED_TOKENS`].
    pub max_num_batched_tokens: Option<usize>,
    /// KV-cache memory; `None` lets the backend decide (CPU: 1 GiB, or one full-length sequence
    /// if more, at most a quarter of available memory; CUDA: what `gpu_memory_utilization` leaves).
    pub kv_cache_memory_bytes: Option<u64>,
    /// Tokens per KV-cache block.
    pub block_size: usize,
    /// Seed from which requests without their own seed derive one.
    pub seed: u64,
    /// Compute dtype on the CPU: "auto" (quantized weights stay quantized, 8-bit activations in
    /// their products, llama.cpp's scheme) or "float32" (weights dequantized at load, f32 throughout).
    pub dtype: String,
    /// KV-cache element type (vLLM's names): "auto" (follows `dtype`: float32 with "float32",
    /// else float16 on the CPU and bfloat16 on CUDA), "float32", "float16", "bfloat16" or "int8"
    /// (8-bit integers with an f16 scale per 32 elements) on the CPU; "auto" or "bfloat16" on CUDA.
    pub kv_cache_dtype: String,
    /// CPU threads; `None` uses every available core.
    pub num_threads: Option<usize>,
    /// Reuse cached KV blocks of shared prompt prefixes.
    pub enable_prefix_caching: bool,
    /// Admission order of waiting requests: first come, first served (default), or by
    /// `priority` (lower first); requests with a priority other than 0 need the latter.
    pub scheduling_policy: SchedulingPolicy,
    /// Where the model runs: "auto" (CUDA when usable, else CPU), "cuda" or "cpu".
    pub device: String,
    /// Fraction of GPU memory the engine may use (weights, workspace and KV cache).
    pub gpu_memory_utilization: f32,
    /// Append the tokens a structured-output grammar forces without a decode step each (only
    /// tokens that are the single one allowed, so outputs are unchanged).
    pub structured_jump_forward: bool,
    /// LoRA adapters per request (`enable_lora`) and their limits; `None`: off.
    pub lora: Option<LoraConfig>,
    /// Speculative decoding (n-gram or draft-model drafts verified each step; outputs
    /// unchanged); `None` for none.
    pub speculative: Option<SpeculativeConfig>,
    /// The draft model of `method: "draft_model"` speculation.
    pub draft_model: Option<DraftModelArgs>,
}

/// The draft model `speculative_config` names (`model`, `dtype`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DraftModelArgs {
    /// A GGUF file or a Hugging Face model folder (names are resolved by the Python layer).
    pub model_path: PathBuf,
    /// "auto" (the draft's own formats) or "float32".
    pub dtype: String,
}

impl EngineArgs {
    /// Defaults for `model_path`, matching the Python API's defaults.
    pub fn new(model_path: impl Into<PathBuf>) -> Self {
        Self {
            model_path: model_path.into(),
            max_model_len: None,
            max_num_seqs: 256,
            max_num_batched_tokens: None,
            kv_cache_memory_bytes: None,
            block_size: 16,
            seed: 0,
            dtype: "auto".into(),
            kv_cache_dtype: "auto".into(),
            num_threads: None,
            enable_prefix_caching: true,
            scheduling_policy: SchedulingPolicy::Fcfs,
            device: "auto".into(),
            gpu_memory_utilization: 0.9,
            structured_jump_forward: true,
            lora: None,
            speculative: None,
            draft_model: None,
        }
    }
}

impl EngineArgs {
    /// Checks every option against its allowed range; the message names the option and the limit.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.block_size.is_power_of_two() && (1..=256).contains(&self.block_size)) {
            return Err(format!(
                "block_size must be a power of two in [1, 256], got {}",
                self.block_size
            ));
        }
        for (field, value) in [
            ("max_num_seqs", Some(self.max_num_seqs)),
            ("max_model_len", self.max_model_len),
            ("max_num_batched_tokens", self.max_num_batched_tokens),
            ("num_threads", self.num_threads),
        ] {
            if value == Some(0) {
                return Err(format!("{field} must be at least 1, got 0"));
            }
        }
        if let Some(num_threads) = self.num_threads.filter(|&n| n > MAX_NUM_THREADS) {
            return Err(format!(
                "num_threads must be at most {MAX_NUM_THREADS}, got {num_threads}"
            ));
        }
        if self.kv_cache_memory_bytes == Some(0) {
            return Err("kv_cache_memory_bytes must be at least 1, got 0".into());
        }
        if let Some(lora) = &self.lora {
            lora.validate()?;
        }
        if let Some(spec) = &self.speculative {
            spec.validate().map_err(|e| e.to_string())?;
        }
        let fraction = self.gpu_memory_utilization;
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(format!(
                "gpu_memory_utilization must be in (0, 1], got {fraction}"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_range_checked_with_their_names() {
        assert_eq!(EngineArgs::new("m").validate(), Ok(()));
        let cases: [(&str, EngineArgs); 5] = [
            (
                "max_num_batched_tokens must be at least 1, got 0",
                EngineArgs {
                    max_num_batched_tokens: Some(0),
                    ..EngineArgs::new("m")
                },
            ),
            (
                "num_threads must be at least 1, got 0",
                EngineArgs {
                    num_threads: Some(0),
                    ..EngineArgs::new("m")
                },
            ),
            (
                "gpu_memory_utilization must be in (0, 1], got 5",
                EngineArgs {
                    gpu_memory_utilization: 5.0,
                    ..EngineArgs::new("m")
                },
            ),
            (
                "gpu_memory_utilization must be in (0, 1], got NaN",
                EngineArgs {
                    gpu_memory_utilization: f32::NAN,
                    ..EngineArgs::new("m")
                },
            ),
            (
                "block_size must be a power of two in [1, 256], got 24",
                EngineArgs {
                    block_size: 24,
                    ..EngineArgs::new("m")
                },
            ),
        ];
        for (message, args) in cases {
            assert_eq!(args.validate().unwrap_err(), message);
        }
    }
}
