//! Backend choice: `EngineArgs.device` ("auto", "cuda", "cpu") decides where the model runs;
//! this is the one place that constructs a backend, loads the model onto it and sizes its KV
//! cache.

use ember_core::{Backend, KvCacheSpec};
use ember_cpu::CpuBackend;
use ember_cuda::arena::ModelDims;
use ember_cuda::{CudaBackend, GraphConfig};

use crate::engine::engine_args::{
    available_memory_bytes, default_cpu_kv_cache_bytes, EngineArgs, DEFAULT_MAX_NUM_BATCHED_TOKENS,
};
use crate::engine::executor::StepExecutor;
use crate::engine::runner::ModelRunner;
use crate::error::EngineError;
use crate::formats::config::ModelConfig;
use crate::formats::weights::WeightSource;
use crate::models::llama::LlamaModel;

/// Builds the backend named by `args.device`, loads the model onto it and allocates the KV
/// cache; returns the step executor and the cache geometry.
pub fn load_on_device(
    args: &EngineArgs,
    config: &ModelConfig,
    weights: &WeightSource,
    name: &str,
) -> Result<(Box<dyn StepExecutor>, KvCacheSpec), EngineError> {
    let use_cuda = match args.device.as_str() {
        "cpu" => false,
        "auto" => ember_cuda::is_available(),
        "cuda" => match ember_cuda::probe() {
            Ok(_) => true,
            Err(reason) => {
                return Err(EngineError::InvalidRequest(format!(
                    "device=\"cuda\" but no usable CUDA device: {reason}"
                )))
            }
        },
        other => {
            return Err(EngineError::InvalidRequest(format!(
                "device must be \"auto\", \"cuda\" or \"cpu\", got \"{other}\""
            )))
        }
    };
    check_dtype(&args.dtype, use_cuda).map_err(EngineError::InvalidRequest)?;
    let mut spec = KvCacheSpec {
        num_layers: config.num_layers,
        num_blocks: 0,
        block_size: args.block_size,
        num_kv_heads: config.num_kv_heads,
        head_dim: config.head_dim,
    };
    if use_cuda {
        let mut backend = CudaBackend::new(0)?;
        log::info!("loading {name} on CUDA device 0 (bf16)");
        let model = LlamaModel::load(&backend, config, weights)?;
        if graphs_enabled(std::env::var("EMBER_CUDA_GRAPHS").ok().as_deref()) {
            backend.enable_graphs(GraphConfig {
                max_num_seqs: args.max_num_seqs,
                max_model_len: args.max_model_len.unwrap_or(config.max_position_embeddings),
                block_size: args.block_size,
                dims: ModelDims {
                    hidden: config.hidden_size,
                    num_heads: config.num_heads,
                    num_kv_heads: config.num_kv_heads,
                    head_dim: config.head_dim,
                    intermediate: config.intermediate_size,
                    vocab: config.vocab_size,
                },
            })?;
        }
        let block_bytes = spec.bytes_per_block(backend.kv_cache_bytes_per_element()) as u64;
        spec.num_blocks = match args.kv_cache_memory_bytes {
            Some(bytes) => (bytes / block_bytes) as usize,
            None => {
                let tokens = args
                    .max_num_batched_tokens
                    .unwrap_or(DEFAULT_MAX_NUM_BATCHED_TOKENS);
                let workspace = ember_cuda::memory_plan::workspace_bytes(
                    tokens,
                    config.hidden_size,
                    config.num_heads * config.head_dim,
                    config.num_kv_heads * config.head_dim,
                    config.intermediate_size,
                    config.vocab_size,
                    2,
                );
                backend
                    .plan_kv_cache(args.gpu_memory_utilization, workspace, block_bytes)?
                    .num_blocks
            }
        };
        return runner(backend, model, spec, config);
    }
    let backend = CpuBackend::new(args.num_threads).with_f32_weights(args.dtype == "float32");
    log::info!("loading {name} on the CPU with {} threads", backend.num_threads());
    let model = LlamaModel::load(&backend, config, weights)?;
    let kv_bytes = args
        .kv_cache_memory_bytes
        .unwrap_or_else(|| default_cpu_kv_cache_bytes(available_memory_bytes()));
    spec.num_blocks = (kv_bytes / spec.bytes_per_block(backend.kv_cache_bytes_per_element()) as u64) as usize;
    runner(backend, model, spec, config)
}

/// `dtype` values each backend accepts: the CPU computes in its own formats ("auto") or f32;
/// the CUDA backend in bf16 ("auto" = "bfloat16"; f16 kernels exist, the host side does not yet).
fn check_dtype(dtype: &str, cuda: bool) -> Result<(), String> {
    let (allowed, device): (&[&str], &str) = if cuda {
        (
            &["auto", "bfloat16"],
            "the CUDA backend (float16 is not supported yet)",
        )
    } else {
        (&["auto", "float32"], "the CPU backend")
    };
    if allowed.contains(&dtype) {
        return Ok(());
    }
    let names: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
    Err(format!(
        "dtype must be {} on {device}, got \"{dtype}\"",
        names.join(" or ")
    ))
}

/// CUDA graphs for decode steps are on unless `EMBER_CUDA_GRAPHS` is "0" (eager, for debugging).
fn graphs_enabled(env: Option<&str>) -> bool {
    env != Some("0")
}

fn runner<B: Backend + 'static>(
    backend: B,
    model: LlamaModel<B>,
    spec: KvCacheSpec,
    config: &ModelConfig,
) -> Result<(Box<dyn StepExecutor>, KvCacheSpec), EngineError> {
    if spec.num_blocks == 0 {
        return Err(EngineError::InvalidRequest(format!(
            "the KV cache memory is smaller than one block ({} bytes)",
            spec.bytes_per_block(backend.kv_cache_bytes_per_element())
        )));
    }
    Ok((
        Box::new(ModelRunner::new(
            backend,
            model,
            spec,
            config.vocab_size,
            config.eos_token_ids.clone(),
        )?),
        spec,
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn dtype_is_checked_per_device() {
        assert!(super::check_dtype("auto", false).is_ok());
        assert!(super::check_dtype("float32", false).is_ok());
        assert!(super::check_dtype("bfloat16", true).is_ok());
        let cpu = super::check_dtype("bfloat16", false).unwrap_err();
        assert_eq!(
            cpu,
            "dtype must be \"auto\" or \"float32\" on the CPU backend, got \"bfloat16\""
        );
        let cuda = super::check_dtype("float32", true).unwrap_err();
        assert!(
            cuda.starts_with("dtype must be \"auto\" or \"bfloat16\" on the CUDA backend"),
            "{cuda}"
        );
    }

    #[test]
    fn graphs_are_on_unless_disabled() {
        assert!(super::graphs_enabled(None));
        assert!(super::graphs_enabled(Some("1")));
        assert!(!super::graphs_enabled(Some("0")));
    }
}
