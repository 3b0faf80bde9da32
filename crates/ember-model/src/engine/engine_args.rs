//! Engine construction options.

use std::path::PathBuf;

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
    /// KV-cache memory; `None` lets the backend decide (CPU: a capped fraction of available
    /// memory; CUDA: what `gpu_memory_utilization` leaves).
    pub kv_cache_memory_bytes: Option<u64>,
    /// Tokens per KV-cache block.
    pub block_size: usize,
    /// Seed from which requests without their own seed derive one.
    pub seed: u64,
    /// Compute dtype on the CPU: "auto" (quantized weights stay quantized, 8-bit activations in
    /// their products, like llama.cpp) or "float32" (weights dequantized at load, f32 throughout).
    pub dtype: String,
    /// CPU threads; `None` uses every available core.
    pub num_threads: Option<usize>,
    /// Reuse cached KV blocks of shared prompt prefixes.
    pub enable_prefix_caching: bool,
    /// Where the model runs: "auto" (CUDA when usable, else CPU), "cuda" or "cpu".
    pub device: String,
    /// Fraction of GPU memory the engine may use (weights, workspace and KV cache).
    pub gpu_memory_utilization: f32,
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
            num_threads: None,
            enable_prefix_caching: true,
            device: "auto".into(),
            gpu_memory_utilization: 0.9,
        }
    }
}
