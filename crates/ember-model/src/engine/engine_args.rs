//! Engine construction options and the memory-sizing rules derived from them.

use std::path::PathBuf;

/// Most KV-cache memory the CPU backend takes by default.
pub const DEFAULT_CPU_KV_CACHE_CAP_BYTES: u64 = 4 << 30;
/// Fraction of currently available memory the CPU backend takes by default (before the cap).
pub const DEFAULT_CPU_KV_CACHE_FRACTION: f64 = 0.25;
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
    /// KV-cache memory; `None` uses a fraction of available memory, capped.
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

/// Bytes of memory the OS reports as available (`MemAvailable`), when it can be read.
pub fn available_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The default CPU KV-cache size for `available` bytes of free memory.
pub fn default_cpu_kv_cache_bytes(available: Option<u64>) -> u64 {
    let available = available.unwrap_or(4 * DEFAULT_CPU_KV_CACHE_CAP_BYTES);
    ((available as f64 * DEFAULT_CPU_KV_CACHE_FRACTION) as u64).min(DEFAULT_CPU_KV_CACHE_CAP_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_kv_cache_is_a_capped_fraction() {
        assert_eq!(default_cpu_kv_cache_bytes(Some(1 << 30)), 1 << 28);
        assert_eq!(
            default_cpu_kv_cache_bytes(Some(1 << 40)),
            DEFAULT_CPU_KV_CACHE_CAP_BYTES
        );
    }
}
