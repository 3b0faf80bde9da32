//! [`CudaBackend`]: `ember_core::Backend` on one CUDA device, bf16 activations and KV cache.
//! It opens the device itself, plans its own memory (CUDA graphs, workspace, KV cache) and
//! makes each step's handle; the operations live in the modules it delegates to.

use std::sync::Mutex;

use ember_core::{
    AttentionParams, Backend, BackendError, BackendResult, BackendStats, DeviceSampleRow, ForwardFn,
    KvCacheSpec, MemoryLimits, ModelShape, Rope, StepBatch, WeightDType, WeightView,
};

use crate::arena::ModelDims;
use crate::device::Device;
use crate::error::device_err;
use crate::graph_exec::{GraphConfig, GraphRuntime};
use crate::kernel_args::DevPtr;
use crate::memory_plan::{plan_kv_cache, workspace_bytes};
use crate::row_ops::{shape_err, GatherSource};
use crate::step::{CudaStep, StepStaging};
use crate::tensor::{CudaKvCache, CudaMatrix, CudaTensor, CudaVector, TensorData};
use crate::{attention, gemm, row_ops, sampling, weights};

/// Bytes of one KV-cache element (bf16).
const KV_DTYPE: WeightDType = WeightDType::BF16;

/// The CUDA backend (see the crate docs).
pub struct CudaBackend {
    device: Device,
    staging: Mutex<StepStaging>,
    graphs_wanted: bool,
    graphs: Option<GraphRuntime>,
}

/// CUDA graphs for decode steps are on unless `EMBER_CUDA_GRAPHS` is "0" (eager, for debugging).
fn graphs_enabled(env: Option<&str>) -> bool {
    env != Some("0")
}

impl CudaBackend {
    /// Opens CUDA device `ordinal` and loads the kernels; CUDA graphs are planned with the
    /// memory unless `EMBER_CUDA_GRAPHS=0`.
    pub fn open(ordinal: usize) -> BackendResult<Self> {
        let device = Device::open(ordinal)?;
        let name = device.ctx().name().unwrap_or_else(|_| "unknown".into());
        log::info!(
            "CUDA device {ordinal}: {name}, {} SMs, kernels from the {}",
            device.num_sms(),
            crate::module::KERNEL_IMAGE_KIND
        );
        Ok(Self {
            device,
            staging: Mutex::new(StepStaging::default()),
            graphs_wanted: graphs_enabled(std::env::var("EMBER_CUDA_GRAPHS").ok().as_deref()),
            graphs: None,
        })
    }

    fn staging(&self) -> BackendResult<std::sync::MutexGuard<'_, StepStaging>> {
        self.staging
            .lock()
            .map_err(|_| device_err("step inputs", "poisoned lock"))
    }
}

fn model_dims(shape: &ModelShape) -> BackendResult<ModelDims> {
    let kv = shape.uniform_kv()?;
    Ok(ModelDims {
        hidden: shape.hidden_size,
        num_heads: shape.num_heads,
        num_kv_heads: kv.num_kv_heads,
        head_dim: shape.head_dim,
        intermediate: shape.intermediate_size,
        vocab: shape.vocab_size,
    })
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type Matrix = CudaMatrix;
    type Vector = CudaVector;
    type KvCache = CudaKvCache;
    type Step = CudaStep;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn stats(&self) -> BackendStats {
        self.graphs.as_ref().map(GraphRuntime::stats).unwrap_or_default()
    }

    fn plan_memory(&mut self, shape: &ModelShape, limits: &MemoryLimits) -> BackendResult<KvCacheSpec> {
        let dims = model_dims(shape)?;
        if self.graphs_wanted {
            let config = GraphConfig {
                max_num_seqs: limits.max_num_seqs,
                max_model_len: limits.max_model_len,
                block_size: limits.block_size,
                dims,
            };
            self.graphs = Some(GraphRuntime::new(&self.device, config)?);
        }
        let spec = KvCacheSpec::for_model(shape, limits.block_size)?;
        if let Some(bytes) = limits.kv_cache_memory_bytes {
            return Ok(spec.with_budget(bytes, KV_DTYPE));
        }
        let workspace = workspace_bytes(
            limits.max_num_batched_tokens,
            dims.hidden,
            dims.num_heads * dims.head_dim,
            dims.num_kv_heads * dims.head_dim,
            dims.intermediate,
            dims.vocab,
            KV_DTYPE.block_bytes(),
        );
        let block_bytes = spec.bytes_per_block(KV_DTYPE) as u64;
        let (free, total) = self.device.mem_info()?;
        let utilization = limits.gpu_memory_utilization;
        let plan = plan_kv_cache(free, total, utilization, workspace, block_bytes).map_err(|detail| {
            BackendError::OutOfMemory {
                what: format!("KV cache ({detail})"),
                requested_bytes: block_bytes,
                available_bytes: free,
            }
        })?;
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        log::info!(
            "GPU memory: {:.2} GiB total, budget {:.2} GiB (gpu_memory_utilization {utilization}), \
             {:.2} GiB in use after loading, {:.2} GiB workspace, {:.2} GiB KV cache = {} blocks",
            gib(plan.total_bytes),
            gib(plan.budget_bytes),
            gib(plan.used_bytes),
            gib(plan.workspace_bytes),
            gib(plan.kv_cache_bytes),
            plan.num_blocks
        );
        Ok(KvCacheSpec {
            num_blocks: plan.num_blocks,
            ..spec
        })
    }

    fn kv_cache_dtype(&self) -> WeightDType {
        KV_DTYPE
    }

    fn allocate_kv_cache(&self, spec: &KvCacheSpec) -> BackendResult<CudaKvCache> {
        if !crate::launch::HEAD_DIMS.contains(&spec.head_dim)
            || !crate::launch::BLOCK_SIZES.contains(&spec.block_size)
        {
            return Err(shape_err("allocate_kv_cache", format!("head_dim {} / block_size {} have no CUDA attention kernel (head_dim 64 or 128, block_size 16 or 32)", spec.head_dim, spec.block_size)));
        }
        let per_layer = spec.num_blocks * spec.block_size * spec.num_kv_heads * spec.head_dim;
        let mut keys = Vec::with_capacity(spec.num_layers);
        let mut values = Vec::with_capacity(spec.num_layers);
        for _ in 0..spec.num_layers {
            keys.push(self.device.alloc::<u16>(per_layer, "KV cache")?);
            values.push(self.device.alloc::<u16>(per_layer, "KV cache")?);
        }
        Ok(CudaKvCache {
            keys,
            values,
            spec: *spec,
        })
    }

    fn load_matrix(&self, weight: &WeightView<'_>) -> BackendResult<CudaMatrix> {
        weights::load_matrix(&self.device, weight)
    }

    fn load_vector(&self, weight: &WeightView<'_>) -> BackendResult<CudaVector> {
        weights::load_vector(weight).and_then(|v| {
            Ok(CudaVector {
                len: v.len(),
                data: self.device.upload(&v, weight.name)?,
            })
        })
    }

    fn prepare_step(&self, batch: StepBatch) -> BackendResult<CudaStep> {
        self.staging()?.eager(&self.device, batch)
    }

    fn run_forward(&self, batch: StepBatch, forward: &mut ForwardFn<'_, Self>) -> BackendResult<CudaTensor> {
        if let Some(graphs) = &self.graphs {
            if let Some(logits) = graphs.run(&self.device, &self.staging, &batch, forward)? {
                return Ok(logits);
            }
        }
        let step = self.prepare_step(batch)?;
        forward(&step)
    }

    fn sample_on_device(
        &self,
        logits: &CudaTensor,
        rows: &[DeviceSampleRow],
    ) -> BackendResult<Option<Vec<u32>>> {
        sampling::sample(&self.device, logits, rows).map(Some)
    }

    fn embed(&self, step: &CudaStep, table: &CudaMatrix) -> BackendResult<CudaTensor> {
        let source = GatherSource::matrix(&self.device, table);
        row_ops::gather(&self.device, step, source, step.input_ids(), "embed")
    }

    fn rms_norm(
        &self,
        step: &CudaStep,
        x: &CudaTensor,
        weight: &CudaVector,
        eps: f32,
    ) -> BackendResult<CudaTensor> {
        let width = weight.len;
        if width == 0 || !x.cols.is_multiple_of(width) {
            return Err(shape_err(
                "rms_norm",
                format!("rows of {} are not whole groups of the weight's {width}", x.cols),
            ));
        }
        // The row kernel over the groups as rows of `[rows * groups, width]`.
        let num_groups = x.cols / width;
        let mut out = step.tensor(&self.device, x.rows * num_groups, width, "rms_norm")?;
        row_ops::add_rms_norm(&self.device, &out, x.dev(&self.device), DevPtr::NULL, weight, eps)?;
        (out.rows, out.cols) = (x.rows, x.cols);
        Ok(out)
    }

    fn unsupported_ops(&self) -> &'static [&'static str] {
        NOT_YET
    }

    fn check_attention(&self, params: &AttentionParams) -> BackendResult<()> {
        params.require_plain("cuda")
    }

    fn add_rms_norm(
        &self,
        step: &CudaStep,
        residual: &mut CudaTensor,
        x: &CudaTensor,
        weight: &CudaVector,
        eps: f32,
    ) -> BackendResult<CudaTensor> {
        row_ops::same_shape("add_rms_norm", residual, x)?;
        let d = &self.device;
        let out = step.tensor(d, x.rows, x.cols, "add_rms_norm")?;
        row_ops::add_rms_norm(d, &out, residual.dev(d), x.dev(d), weight, eps)?;
        Ok(out)
    }

    fn matmul(
        &self,
        step: &CudaStep,
        x: &CudaTensor,
        weight: &CudaMatrix,
        bias: Option<&CudaVector>,
    ) -> BackendResult<CudaTensor> {
        if x.cols != weight.cols || bias.is_some_and(|b| b.len != weight.rows) {
            return Err(shape_err(
                "matmul",
                format!(
                    "x [{}, {}] @ W^T [{}, {}] (bias {:?})",
                    x.rows,
                    x.cols,
                    weight.rows,
                    weight.cols,
                    bias.map(|b| b.len)
                ),
            ));
        }
        let out = step.tensor(&self.device, x.rows, weight.rows, "matmul")?;
        gemm::gemm_bf16(&self.device, &out, x, weight)?;
        if let Some(b) = bias {
            row_ops::add(&self.device, &out, DevPtr::NULL, self.device.dev(&b.data))?;
        }
        Ok(out)
    }

    fn rope(
        &self,
        step: &CudaStep,
        x: &mut CudaTensor,
        num_heads: usize,
        rope: &Rope<CudaVector>,
    ) -> BackendResult<()> {
        row_ops::rope(&self.device, step, x, num_heads, rope)
    }

    fn write_kv(
        &self,
        step: &CudaStep,
        cache: &mut CudaKvCache,
        layer: usize,
        key: &CudaTensor,
        value: &CudaTensor,
    ) -> BackendResult<()> {
        attention::write_kv(&self.device, step, cache, layer, key, value)
    }

    fn attention(
        &self,
        step: &CudaStep,
        query: &CudaTensor,
        cache: &CudaKvCache,
        layer: usize,
        params: &AttentionParams,
    ) -> BackendResult<CudaTensor> {
        attention::attention(&self.device, step, query, cache, layer, params)
    }

    fn silu_mul(&self, step: &CudaStep, gate: &CudaTensor, up: &CudaTensor) -> BackendResult<CudaTensor> {
        row_ops::silu_mul(&self.device, step, gate, up)
    }

    fn gelu_tanh_mul(
        &self,
        _step: &CudaStep,
        _gate: &CudaTensor,
        _up: &CudaTensor,
    ) -> BackendResult<CudaTensor> {
        Err(not_yet("gelu_tanh_mul"))
    }

    fn scale(&self, _x: &mut CudaTensor, _factor: f32) -> BackendResult<()> {
        Err(not_yet("scale"))
    }

    fn soft_cap(&self, _x: &mut CudaTensor, _cap: f32) -> BackendResult<()> {
        Err(not_yet("soft_cap"))
    }

    fn zeros(&self, _step: &CudaStep, _rows: usize, _cols: usize) -> BackendResult<CudaTensor> {
        Err(not_yet("zeros"))
    }

    fn gather_rows(&self, _step: &CudaStep, _x: &CudaTensor, _row_ids: &[u32]) -> BackendResult<CudaTensor> {
        Err(not_yet("gather_rows"))
    }

    fn scatter_add_rows(
        &self,
        _out: &mut CudaTensor,
        _y: &CudaTensor,
        _row_ids: &[u32],
        _weights: &[f32],
    ) -> BackendResult<()> {
        Err(not_yet("scatter_add_rows"))
    }

    fn add_assign(&self, x: &mut CudaTensor, y: &CudaTensor) -> BackendResult<()> {
        row_ops::same_shape("add_assign", x, y)?;
        row_ops::add(&self.device, x, y.dev(&self.device), DevPtr::NULL)
    }

    fn logits_rows(&self, step: &CudaStep, x: &CudaTensor) -> BackendResult<CudaTensor> {
        let source = GatherSource::tensor(&self.device, x);
        row_ops::gather(&self.device, step, source, step.logits_indices(), "logits_rows")
    }

    fn to_host(&self, x: &CudaTensor) -> BackendResult<Vec<f32>> {
        let len = x.rows * x.cols;
        let bits = match &x.data {
            TensorData::Owned(s) => self.device.download(s)?,
            _ => self.device.download_raw::<u16>(x.ptr(&self.device), len)?,
        };
        Ok(bits[..len]
            .iter()
            .map(|&b| half::bf16::from_bits(b).to_f32())
            .collect())
    }
}

/// The ops Gemma (GeGLU, embedding scale, soft-capping) and the mixture-of-experts families
/// need that have no CUDA kernel yet; models needing them are refused at load.
const NOT_YET: &[&str] = &[
    "gelu_tanh_mul",
    "scale",
    "soft_cap",
    "zeros",
    "gather_rows",
    "scatter_add_rows",
];

/// The error of an op in [`NOT_YET`].
fn not_yet(op: &str) -> BackendError {
    BackendError::Unsupported(format!("{op} is not supported on CUDA yet"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn graphs_are_on_unless_disabled() {
        assert!(super::graphs_enabled(None));
        assert!(super::graphs_enabled(Some("1")));
        assert!(!super::graphs_enabled(Some("0")));
    }
}
