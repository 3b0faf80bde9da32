//! Backend choice: `EngineArgs.device` ("auto", "cuda", "cpu") decides where the model runs;
//! this is the one place that constructs a backend, loads the model onto it and sizes its KV
//! cache.

use ember_core::{Backend, KvCacheSpec};
use ember_cpu::CpuBackend;
use ember_cuda::CudaBackend;

use crate::config::ModelConfig;
use crate::engine::EngineError;
use crate::engine_args::{
    available_memory_bytes, default_cpu_kv_cache_bytes, EngineArgs, DEFAULT_MAX_NUM_BATCHED_TOKENS,
};
use crate::executor::StepExecutor;
use crate::llama::LlamaModel;
use crate::runner::ModelRunner;
use crate::weights::WeightSource;

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
    let mut spec = KvCacheSpec {
        num_layers: config.num_layers,
        num_blocks: 0,
        block_size: args.block_size,
        num_kv_heads: config.num_kv_heads,
        head_dim: config.head_dim,
    };
    if use_cuda {
        let backend = CudaBackend::new(0)?;
        log::info!("loading {name} on CUDA device 0 (bf16)");
        let model = LlamaModel::load(&backend, config, weights)?;
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
