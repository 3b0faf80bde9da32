//! Backend choice: `EngineArgs.device` ("auto", "cuda", "cpu") decides where the model runs.
//! Each backend opens itself and plans its own memory; this file only chooses one, loads the
//! model onto it and hands back the runner.

use ember_core::{Backend, KvCacheSpec, MemoryLimits, WeightDType};
use ember_cpu::{CpuBackend, CpuOptions};

use crate::engine::draft_model::DraftModel;
use crate::engine::draft_open::open_draft;
use crate::engine::engine_args::{EngineArgs, DEFAULT_MAX_NUM_BATCHED_TOKENS};
use crate::engine::executor::StepExecutor;
use crate::engine::loader::OpenedModel;
use crate::engine::runner::ModelRunner;
use crate::error::EngineError;
use crate::models::Model;

/// Where the model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DeviceKind {
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda,
}

/// Opens the backend named by `args.device`, loads the model onto it and allocates the KV
/// cache the backend planned; returns the step executor and the cache geometry.
pub fn load_on_device(args: &EngineArgs, opened: &OpenedModel) -> Result<DeviceModel, EngineError> {
    let kind = choose(&args.device)?;
    check_dtype(&args.dtype, kind).map_err(EngineError::InvalidRequest)?;
    let kv_dtype = kv_cache_dtype(&args.kv_cache_dtype, kind, args.dtype == "float32")
        .map_err(EngineError::InvalidRequest)?;
    let limits = MemoryLimits {
        max_num_seqs: args.max_num_seqs,
        max_num_batched_tokens: args
            .max_num_batched_tokens
            .unwrap_or(DEFAULT_MAX_NUM_BATCHED_TOKENS),
        max_model_len: args
            .max_model_len
            .unwrap_or(opened.config.max_position_embeddings),
        block_size: args.block_size,
        kv_cache_memory_bytes: args.kv_cache_memory_bytes,
        gpu_memory_utilization: args.gpu_memory_utilization,
    };
    match kind {
        DeviceKind::Cpu => {
            let draft = args
                .draft_model
                .as_ref()
                .map(|d| open_draft(d, opened).map(|draft| (draft, d.dtype == "float32")))
                .transpose()?;
            let options = CpuOptions {
                num_threads: args.num_threads,
                f32_weights: args.dtype == "float32",
                kv_cache_dtype: Some(kv_dtype),
            };
            let mut backend = CpuBackend::open(options)?;
            let draft_model = match &draft {
                Some((draft, f32_weights)) => {
                    backend.set_f32_weights(*f32_weights);
                    let model = load_model(&backend, draft, &limits);
                    backend.set_f32_weights(options.f32_weights);
                    Some(DraftLoad {
                        model: model?,
                        vocab_size: draft.config.vocab_size,
                        max_num_seqs_to_speculate: args
                            .speculative
                            .as_ref()
                            .map_or(0, |s| s.max_num_seqs_to_speculate),
                    })
                }
                None => None,
            };
            load(
                backend,
                opened,
                &limits,
                draft_model,
                lora_factor_dtype(&args.dtype),
            )
        }
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => {
            if args.draft_model.is_some() {
                return Err(EngineError::InvalidRequest(
                    "speculative_config.method \"draft_model\" runs on the CPU backend only for now \
                     (its CUDA path is not verified); use device=\"cpu\" or method \"ngram\""
                        .into(),
                ));
            }
            let backend = ember_cuda::CudaBackend::open(0)?;
            load(backend, opened, &limits, None, lora_factor_dtype(&args.dtype))
        }
    }
}

/// The element type of LoRA factors under arithmetic `dtype`: f32 with "float32" (the exact
/// path, whatever the KV cache stores), else f16.
fn lora_factor_dtype(dtype: &str) -> WeightDType {
    if dtype == "float32" {
        WeightDType::F32
    } else {
        WeightDType::F16
    }
}

/// The backend `device` names; "auto" is CUDA when a device is usable.
fn choose(device: &str) -> Result<DeviceKind, EngineError> {
    match device {
        "cpu" => Ok(DeviceKind::Cpu),
        #[cfg(feature = "cuda")]
        "auto" => match ember_cuda::probe() {
            Ok(_) => Ok(DeviceKind::Cuda),
            Err(reason) => {
                log::warn!("device=\"auto\": no usable CUDA device ({reason}); running on the CPU");
                Ok(DeviceKind::Cpu)
            }
        },
        #[cfg(not(feature = "cuda"))]
        "auto" => Ok(DeviceKind::Cpu),
        #[cfg(feature = "cuda")]
        "cuda" => match ember_cuda::probe() {
            Ok(_) => Ok(DeviceKind::Cuda),
            Err(reason) => Err(EngineError::InvalidRequest(format!(
                "device=\"cuda\" but no usable CUDA device: {reason}"
            ))),
        },
        #[cfg(not(feature = "cuda"))]
        "cuda" => Err(EngineError::InvalidRequest(
            "device=\"cuda\" but this build of Ember has no CUDA backend (built without the `cuda` feature)"
                .into(),
        )),
        other => Err(EngineError::InvalidRequest(format!(
            "device must be \"auto\", \"cuda\" or \"cpu\", got \"{other}\""
        ))),
    }
}

/// `dtype` values each backend accepts: the CPU computes in its own formats ("auto") or f32;
/// the CUDA backend in bf16 ("auto" = "bfloat16"; f16 kernels exist, the host side does not yet).
fn check_dtype(dtype: &str, kind: DeviceKind) -> Result<(), String> {
    let (allowed, device): (&[&str], &str) = match kind {
        DeviceKind::Cpu => (&["auto", "float32"], "the CPU backend"),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => (
            &["auto", "bfloat16"],
            "the CUDA backend (float16 is not supported yet)",
        ),
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

/// The KV-cache element type `name` asks for: "auto" follows the arithmetic, as in vLLM: float32
/// with `dtype="float32"` (the exact path), else float16 on the CPU (its measured default,
/// [`ember_cpu::DEFAULT_KV_CACHE_DTYPE`]) and bfloat16 on CUDA (the only type its kernels read).
fn kv_cache_dtype(name: &str, kind: DeviceKind, f32_compute: bool) -> Result<WeightDType, String> {
    let dtype = match (name, kind) {
        ("auto", DeviceKind::Cpu) if f32_compute => WeightDType::F32,
        ("auto", DeviceKind::Cpu) => ember_cpu::DEFAULT_KV_CACHE_DTYPE,
        ("bfloat16", DeviceKind::Cpu) => WeightDType::BF16,
        ("float16", DeviceKind::Cpu) => WeightDType::F16,
        ("float32", DeviceKind::Cpu) => WeightDType::F32,
        ("int8", DeviceKind::Cpu) => WeightDType::Q8_0,
        #[cfg(feature = "cuda")]
        ("auto" | "bfloat16", DeviceKind::Cuda) => WeightDType::BF16,
        _ => {
            let allowed = match kind {
                DeviceKind::Cpu => {
                    "\"auto\", \"float32\", \"float16\", \"bfloat16\" or \"int8\" on the CPU backend \
                     (its 8-bit cache is \"int8\": 8-bit integers with a scale per 32 elements)"
                }
                #[cfg(feature = "cuda")]
                DeviceKind::Cuda => {
                    "\"auto\" or \"bfloat16\" on the CUDA backend (no 8-bit KV cache kernels there yet)"
                }
            };
            return Err(format!("kv_cache_dtype must be {allowed}, got \"{name}\""));
        }
    };
    Ok(dtype)
}

/// A model loaded on its device, and what the scheduler needs to know of its cache.
pub struct DeviceModel {
    /// Runs the steps.
    pub executor: Box<dyn StepExecutor>,
    /// The KV cache the backend allocated.
    pub kv_spec: KvCacheSpec,
    /// Every layer attends within this many last positions: blocks before it can be released.
    pub kv_release_window: Option<usize>,
}

/// A draft model loaded on the target's backend, before its cache is planned.
struct DraftLoad<B: Backend> {
    model: Box<dyn Model<B>>,
    vocab_size: usize,
    max_num_seqs_to_speculate: usize,
}

/// Loads `opened`'s weights onto `backend`.
fn load_model<B: Backend + 'static>(
    backend: &B,
    opened: &OpenedModel,
    limits: &MemoryLimits,
) -> Result<Box<dyn Model<B>>, EngineError> {
    log::info!("loading {} onto the {} backend", opened.name, backend.name());
    let source = opened.source(limits.max_model_len);
    Ok(opened.architecture.family.load(backend, &source)?)
}

/// Loads the model onto `backend`, lets the backend plan its memory (shared with the draft
/// model and its vocabulary size, when given), and builds the runner.
fn load<B: Backend + 'static>(
    mut backend: B,
    opened: &OpenedModel,
    limits: &MemoryLimits,
    draft: Option<DraftLoad<B>>,
    lora_factor_dtype: WeightDType,
) -> Result<DeviceModel, EngineError> {
    let model = load_model(&backend, opened, limits)?;
    let mut spec = backend.plan_memory(model.shape(), limits)?;
    let kv_release_window = model.shape().kv_release_window();
    let draft_spec = draft
        .as_ref()
        .map(|d| share_with_draft(&mut spec, d.model.shape(), kv_release_window, &backend))
        .transpose()?;
    if spec.num_blocks == 0 {
        return Err(EngineError::InvalidRequest(format!(
            "the KV cache memory is smaller than one block ({} bytes)",
            spec.bytes_per_block(backend.kv_cache_dtype())
        )));
    }
    let mut runner = ModelRunner::new(
        backend,
        model,
        spec,
        opened.config.vocab_size,
        opened.config.eos_token_ids.clone(),
    )?
    .with_lora_factor_dtype(lora_factor_dtype);
    if let (Some(d), Some(draft_spec)) = (draft, draft_spec) {
        let draft = DraftModel::new(
            runner.backend(),
            d.model,
            &draft_spec,
            d.vocab_size,
            d.max_num_seqs_to_speculate,
        )?;
        runner = runner.with_draft(draft);
    }
    Ok(DeviceModel {
        executor: Box::new(runner),
        kv_spec: spec,
        kv_release_window,
    })
}

/// Splits the KV budget `spec` was planned with between the target and a draft of
/// `draft_shape`: both caches get the same number of blocks (the draft mirrors the target's
/// block ids), so each block costs the sum of both. Returns the draft's cache geometry.
fn share_with_draft<B: Backend>(
    spec: &mut KvCacheSpec,
    draft_shape: &ember_core::ModelShape,
    target_window: Option<usize>,
    backend: &B,
) -> Result<KvCacheSpec, EngineError> {
    let draft_window = draft_shape.kv_release_window();
    if let Some(window) = target_window {
        if draft_window.is_none_or(|w| w > window) {
            return Err(EngineError::InvalidRequest(format!(
                "speculative_config.model attends beyond the target's sliding window ({window} \
                 tokens), whose older blocks are released; use a draft with a window of at most {window}"
            )));
        }
    }
    let kv_dtype = backend.kv_cache_dtype();
    let target_block_bytes = spec.bytes_per_block(kv_dtype);
    let draft_geometry = KvCacheSpec::for_model(draft_shape, spec.block_size)?;
    let draft_block_bytes = draft_geometry.bytes_per_block(kv_dtype);
    let budget_bytes = spec.num_blocks * target_block_bytes;
    spec.num_blocks = budget_bytes / (target_block_bytes + draft_block_bytes).max(1);
    log::info!(
        "draft model KV cache: {} bytes per block beside the target's {}: {} blocks for both \
         ({:.1} MiB of the {:.1} MiB KV budget for the draft)",
        draft_block_bytes,
        target_block_bytes,
        spec.num_blocks,
        (spec.num_blocks * draft_block_bytes) as f64 / f64::from(1u32 << 20),
        budget_bytes as f64 / f64::from(1u32 << 20),
    );
    Ok(KvCacheSpec {
        num_blocks: spec.num_blocks,
        ..draft_geometry
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_is_checked_per_device() {
        assert!(check_dtype("auto", DeviceKind::Cpu).is_ok());
        assert!(check_dtype("float32", DeviceKind::Cpu).is_ok());
        let cpu = check_dtype("bfloat16", DeviceKind::Cpu).unwrap_err();
        assert_eq!(
            cpu,
            "dtype must be \"auto\" or \"float32\" on the CPU backend, got \"bfloat16\""
        );
        #[cfg(feature = "cuda")]
        {
            assert!(check_dtype("bfloat16", DeviceKind::Cuda).is_ok());
            let cuda = check_dtype("float32", DeviceKind::Cuda).unwrap_err();
            assert!(
                cuda.starts_with("dtype must be \"auto\" or \"bfloat16\" on the CUDA backend"),
                "{cuda}"
            );
        }
    }

    #[test]
    fn kv_cache_dtype_is_checked_per_device() {
        use ember_core::WeightDType::{BF16, F16, F32, Q8_0};
        let cpu = DeviceKind::Cpu;
        assert_eq!(kv_cache_dtype("auto", cpu, false), Ok(F16));
        assert_eq!(kv_cache_dtype("auto", cpu, true), Ok(F32), "exact path");
        assert_eq!(kv_cache_dtype("float16", cpu, true), Ok(F16));
        assert_eq!(kv_cache_dtype("float32", cpu, false), Ok(F32));
        assert_eq!(kv_cache_dtype("bfloat16", cpu, false), Ok(BF16));
        assert_eq!(kv_cache_dtype("int8", cpu, true), Ok(Q8_0));
        assert_eq!(
            kv_cache_dtype("fp8", cpu, false).unwrap_err(),
            "kv_cache_dtype must be \"auto\", \"float32\", \"float16\", \"bfloat16\" or \"int8\" on \
             the CPU backend (its 8-bit cache is \"int8\": 8-bit integers with a scale per 32 \
             elements), got \"fp8\""
        );
        #[cfg(feature = "cuda")]
        {
            assert_eq!(kv_cache_dtype("auto", DeviceKind::Cuda, false), Ok(BF16));
            let err = kv_cache_dtype("float16", DeviceKind::Cuda, false).unwrap_err();
            assert!(err.contains("CUDA"), "{err}");
            let err = kv_cache_dtype("int8", DeviceKind::Cuda, false).unwrap_err();
            assert!(err.contains("no 8-bit KV cache kernels"), "{err}");
        }
    }

    #[test]
    fn the_draft_shares_the_kv_budget_block_for_block() {
        use ember_core::{LayerKv, ModelShape};
        let shape = |num_layers: usize, sliding_window: Option<usize>| ModelShape {
            hidden_size: 64,
            intermediate_size: 128,
            vocab_size: 100,
            num_heads: 4,
            head_dim: 16,
            kv_layers: vec![
                LayerKv {
                    num_kv_heads: 2,
                    head_dim: 16,
                    sliding_window,
                };
                num_layers
            ],
        };
        let backend = CpuBackend::new(Some(1));
        let target = KvCacheSpec {
            num_blocks: 90,
            ..KvCacheSpec::for_model(&shape(4, None), 16).unwrap()
        };
        // A draft of half the layers costs half a target block: 90 target blocks' bytes hold 60 of both.
        let mut spec = target;
        let draft = share_with_draft(&mut spec, &shape(2, None), None, &backend).unwrap();
        assert_eq!((spec.num_blocks, draft.num_blocks), (60, 60));
        assert_eq!((draft.num_layers, draft.block_size), (2, 16));
        // A target that releases blocks outside its window cannot have a draft that reads them.
        let mut spec = target;
        let err = share_with_draft(&mut spec, &shape(2, None), Some(32), &backend).unwrap_err();
        assert!(err.to_string().contains("speculative_config.model"), "{err}");
        assert!(share_with_draft(&mut spec, &shape(2, Some(32)), Some(32), &backend).is_ok());
    }

    #[test]
    fn devices_are_chosen_by_name() {
        assert_eq!(choose("cpu").unwrap(), DeviceKind::Cpu);
        let err = choose("tpu").unwrap_err().to_string();
        assert_eq!(err, "device must be \"auto\", \"cuda\" or \"cpu\", got \"tpu\"");
        // This machine has no usable GPU (or the build has no CUDA backend): "cuda" is a clear
        // error and "auto" falls back to the CPU.
        #[cfg(feature = "cuda")]
        let has_gpu = ember_cuda::is_available();
        #[cfg(not(feature = "cuda"))]
        let has_gpu = false;
        if !has_gpu {
            assert_eq!(choose("auto").unwrap(), DeviceKind::Cpu);
            let err = choose("cuda").unwrap_err().to_string();
            assert!(err.starts_with("device=\"cuda\" but "), "{err}");
        }
    }
}
