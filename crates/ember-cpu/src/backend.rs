//! [`CpuBackend`]: the `ember_core::Backend` implementation on the CPU.

use crate::kv_cache::CpuKvCache;
use crate::matmul::Isa;
use crate::matrix::CpuMatrix;
use crate::memory_plan::{available_memory_bytes, default_kv_cache_bytes};
use crate::tensor::CpuTensor;
use crate::{attention, blocks, elementwise, matmul, norm, rope};
use ember_core::{
    AttentionParams, Backend, BackendError, BackendResult, KvCacheSpec, LoraSegment, MemoryLimits,
    ModelShape, Rope, StepBatch, WeightDType, WeightView,
};
use rayon::prelude::*;
use rayon::ThreadPool;

/// The KV cache encoding of `kv_cache_dtype="auto"`: f16 (measured in bench/kv_cache_dtype.py:
/// as accurate as f32 on long contexts at half the memory; see bench/RESULTS.md).
pub const DEFAULT_KV_CACHE_DTYPE: WeightDType = WeightDType::F16;

/// The engine's name (`kv_cache_dtype`) of a KV cache element type, for the log.
fn kv_dtype_name(dtype: WeightDType) -> &'static str {
    match dtype {
        WeightDType::F32 => "float32",
        WeightDType::BF16 => "bfloat16",
        WeightDType::Q8_0 => "int8",
        _ => "float16",
    }
}

/// Elements above which row-wise elementwise ops use the thread pool.
const PAR_ELEMENTS: usize = 1 << 16;

/// How the engine opens the CPU backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuOptions {
    /// Worker threads; `None` uses every available core.
    pub num_threads: Option<usize>,
    /// Dequantize every matrix to f32 at load and compute in f32 (see
    /// [`CpuBackend::with_f32_weights`]).
    pub f32_weights: bool,
    /// KV cache element type (F32, F16, BF16 or Q8_0); `None` uses [`DEFAULT_KV_CACHE_DTYPE`].
    pub kv_cache_dtype: Option<WeightDType>,
}

/// The CPU backend: SIMD kernels (chosen at run time) on its own rayon thread pool.
pub struct CpuBackend {
    pool: ThreadPool,
    isa: Isa,
    f32_weights: bool,
    kv_dtype: WeightDType,
}

impl CpuBackend {
    /// The backend the engine runs on, as `options` ask, with the best kernels this CPU
    /// supports; an error for a KV cache type the CPU cannot store.
    pub fn open(options: CpuOptions) -> BackendResult<Self> {
        let backend = Self::with_isa(options.num_threads, crate::isa_choice::isa_from_env()?)
            .with_f32_weights(options.f32_weights)
            .with_kv_cache_dtype(options.kv_cache_dtype.unwrap_or(DEFAULT_KV_CACHE_DTYPE))?;
        log::info!(
            "CPU backend: {} threads, {:?} kernels{}, {} KV cache",
            backend.num_threads(),
            backend.isa,
            if options.f32_weights {
                ", float32 weights"
            } else {
                ""
            },
            kv_dtype_name(backend.kv_dtype)
        );
        Ok(backend)
    }

    /// A backend with `num_threads` workers (default: `available_parallelism`) and the best
    /// kernels this CPU supports. Falls back to one worker if the pool cannot be built.
    pub fn new(num_threads: Option<usize>) -> Self {
        Self::with_isa(num_threads, Isa::detect())
    }

    /// Like [`CpuBackend::new`], with a chosen kernel family (downgraded to scalar when the
    /// CPU lacks it); for benchmarks and tests.
    pub fn with_isa(num_threads: Option<usize>, isa: Isa) -> Self {
        let threads = num_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1);
        let build = |n: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .thread_name(|i| format!("ember-cpu-{i}"))
                .build()
        };
        let pool = match build(threads) {
            Ok(pool) => pool,
            Err(e) => {
                log::warn!("cannot start {threads} CPU worker threads ({e}); using one");
                // A pool of one thread failing too means the process cannot spawn threads at all.
                build(1).unwrap_or_else(|e| panic!("cannot start a CPU worker thread: {e}"))
            }
        };
        let isa = if isa.is_supported() { isa } else { Isa::Scalar };
        Self {
            pool,
            isa,
            f32_weights: false,
            kv_dtype: DEFAULT_KV_CACHE_DTYPE,
        }
    }

    /// With `on`, every matrix is dequantized to f32 at load and all arithmetic is f32 (no
    /// 8-bit activation quantization): the reference-exact mode, at 4-8x the weight memory of
    /// quantized files.
    pub fn with_f32_weights(mut self, on: bool) -> Self {
        self.f32_weights = on;
        self
    }

    /// Switches [`CpuBackend::with_f32_weights`] for the matrices loaded from now on (a draft
    /// model may load in another arithmetic than the target).
    pub fn set_f32_weights(&mut self, on: bool) {
        self.f32_weights = on;
    }

    /// Stores the KV cache as `dtype`: F32, F16, BF16 or Q8_0 (8-bit integers with an f16
    /// scale per 32 elements; default [`DEFAULT_KV_CACHE_DTYPE`]); other formats are refused.
    pub fn with_kv_cache_dtype(mut self, dtype: WeightDType) -> BackendResult<Self> {
        if !crate::kv_cache::is_kv_dtype(dtype) {
            return Err(BackendError::Device(format!(
                "the CPU KV cache stores F32, F16, BF16 or Q8_0, not {dtype}"
            )));
        }
        self.kv_dtype = dtype;
        Ok(self)
    }

    /// Worker threads in the pool.
    pub fn num_threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// The kernel family in use.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Applies `f(input_row, output_row)` to every row, on the pool when the tensor is large.
    fn map_rows(&self, x: &CpuTensor, out: &mut CpuTensor, f: impl Fn(usize, &[f32], &mut [f32]) + Sync) {
        let cols = x.cols().max(1);
        if x.rows() * x.cols() < PAR_ELEMENTS {
            for (r, o) in out.as_mut_slice().chunks_mut(cols).enumerate() {
                f(r, x.row(r), o);
            }
        } else {
            self.pool.install(|| {
                out.as_mut_slice()
                    .par_chunks_mut(cols)
                    .enumerate()
                    .for_each(|(r, o)| f(r, x.row(r), o))
            });
        }
    }
}

fn shape_err(op: &str, detail: String) -> BackendError {
    BackendError::Device(format!("{op}: {detail}"))
}

fn same_shape(op: &str, a: &CpuTensor, b: &CpuTensor) -> BackendResult<()> {
    if a.rows() != b.rows() || a.cols() != b.cols() {
        return Err(shape_err(
            op,
            format!(
                "shapes [{}, {}] and [{}, {}] differ",
                a.rows(),
                a.cols(),
                b.rows(),
                b.cols()
            ),
        ));
    }
    Ok(())
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Matrix = CpuMatrix;
    type Vector = Vec<f32>;
    type KvCache = CpuKvCache;
    type Step = StepBatch;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn plan_memory(&mut self, shape: &ModelShape, limits: &MemoryLimits) -> BackendResult<KvCacheSpec> {
        let spec = KvCacheSpec::for_model(shape, limits.block_size)?;
        crate::kv_cache::check_geometry(&spec, self.kv_dtype)?;
        let block_bytes = spec.bytes_per_block(self.kv_dtype) as u64;
        let budget_bytes = limits.kv_cache_memory_bytes.unwrap_or_else(|| {
            let max_len = limits.max_model_len as u64;
            // Saturating: a model file may claim any context length (the budget is capped anyway).
            let full_context_bytes = max_len
                .div_ceil(limits.block_size.max(1) as u64)
                .saturating_mul(block_bytes);
            let bytes = default_kv_cache_bytes(available_memory_bytes(), full_context_bytes, block_bytes);
            log::info!(
                "KV cache: {:.2} GiB of {} by default (1 GiB, or one full {max_len}-token context if \
                 larger, at most a quarter of available memory; committed as it fills; set \
                 kv_cache_memory_bytes to change)",
                bytes as f64 / f64::from(1u32 << 30),
                kv_dtype_name(self.kv_dtype)
            );
            bytes
        });
        Ok(spec.with_budget(budget_bytes, self.kv_dtype))
    }

    fn prepare_step(&self, batch: StepBatch) -> BackendResult<StepBatch> {
        Ok(batch)
    }

    fn load_matrix(&self, weight: &WeightView<'_>) -> BackendResult<CpuMatrix> {
        if !self.f32_weights || weight.dtype == WeightDType::F32 {
            return CpuMatrix::from_view(weight);
        }
        let (rows, cols) = crate::matrix::check_matrix_view(weight)?;
        let row_bytes = weight.bytes.len() / rows.max(1);
        let mut bytes = crate::alloc::try_zeroed_vec::<u8>(rows * cols * 4, weight.name)?;
        let mut row = vec![0.0f32; cols];
        for (r, dst) in bytes.chunks_exact_mut((cols * 4).max(1)).enumerate() {
            blocks::dequantize_row(
                weight.dtype,
                &weight.bytes[r * row_bytes..(r + 1) * row_bytes],
                &mut row,
            );
            for (d, x) in dst.chunks_exact_mut(4).zip(&row) {
                d.copy_from_slice(&x.to_le_bytes());
            }
        }
        CpuMatrix::from_view(&WeightView {
            dtype: WeightDType::F32,
            bytes: &bytes,
            ..*weight
        })
    }

    fn load_vector(&self, weight: &WeightView<'_>) -> BackendResult<Vec<f32>> {
        let bad = |detail: String| BackendError::BadWeight {
            name: weight.name.to_string(),
            detail,
        };
        let &[len] = weight.shape else {
            return Err(bad(format!(
                "expected a 1-D vector, got shape {:?}",
                weight.shape
            )));
        };
        let expected = weight.dtype.bytes_for(len);
        if expected != Some(weight.bytes.len()) {
            return Err(bad(format!(
                "{len} elements in {} need {expected:?} bytes, got {}",
                weight.dtype,
                weight.bytes.len()
            )));
        }
        let mut out = crate::alloc::try_zeroed_vec(len, weight.name)?;
        blocks::dequantize_row(weight.dtype, weight.bytes, &mut out);
        Ok(out)
    }

    fn allocate_kv_cache(&self, spec: &KvCacheSpec) -> BackendResult<CpuKvCache> {
        CpuKvCache::allocate(spec, self.kv_dtype)
    }

    fn kv_cache_dtype(&self) -> WeightDType {
        self.kv_dtype
    }

    fn embed(&self, step: &StepBatch, table: &CpuMatrix) -> BackendResult<CpuTensor> {
        let token_ids = &step.input_ids;
        if let Some(&bad) = token_ids.iter().find(|&&t| t as usize >= table.rows()) {
            return Err(shape_err(
                "embed",
                format!("token id {bad} out of range (vocabulary {})", table.rows()),
            ));
        }
        let mut out = CpuTensor::zeros(token_ids.len(), table.cols())?;
        for (row, &id) in out.as_mut_slice().chunks_mut(table.cols().max(1)).zip(token_ids) {
            table.dequantize_row_into(id as usize, row);
        }
        Ok(out)
    }

    fn rms_norm(
        &self,
        _step: &StepBatch,
        x: &CpuTensor,
        weight: &Vec<f32>,
        eps: f32,
    ) -> BackendResult<CpuTensor> {
        let width = weight.len();
        if width == 0 || !x.cols().is_multiple_of(width) {
            return Err(shape_err(
                "rms_norm",
                format!(
                    "rows of {} are not whole groups of the weight's {width}",
                    x.cols()
                ),
            ));
        }
        // Every element is written: the rows are whole groups of the weight (checked above).
        let mut out = CpuTensor::for_overwrite(x.rows(), x.cols())?;
        self.map_rows(x, &mut out, |_, xr, o| {
            for (group, out_group) in xr.chunks_exact(width).zip(o.chunks_exact_mut(width)) {
                norm::rms_norm_row(group, weight, eps, out_group);
            }
        });
        Ok(out)
    }

    fn add_rms_norm(
        &self,
        step: &StepBatch,
        residual: &mut CpuTensor,
        x: &CpuTensor,
        weight: &Vec<f32>,
        eps: f32,
    ) -> BackendResult<CpuTensor> {
        self.add_assign(residual, x)?;
        self.rms_norm(step, residual, weight, eps)
    }

    fn matmul(
        &self,
        _step: &StepBatch,
        x: &CpuTensor,
        weight: &CpuMatrix,
        bias: Option<&Vec<f32>>,
    ) -> BackendResult<CpuTensor> {
        matmul::matmul(&self.pool, self.isa, x, weight, bias.map(|b| b.as_slice()))
    }

    fn rope(
        &self,
        step: &StepBatch,
        x: &mut CpuTensor,
        num_heads: usize,
        rope: &Rope<Vec<f32>>,
    ) -> BackendResult<()> {
        let positions = &step.positions;
        let rotary_dim = 2 * rope.inv_freq.len();
        if num_heads == 0 || !x.cols().is_multiple_of(num_heads) || rotary_dim > x.cols() / num_heads {
            return Err(shape_err(
                "rope",
                format!("{} columns, {num_heads} heads, rotary dim {rotary_dim}", x.cols()),
            ));
        }
        if positions.len() != x.rows() {
            return Err(shape_err(
                "rope",
                format!("{} positions for {} rows", positions.len(), x.rows()),
            ));
        }
        let cols = x.cols().max(1);
        let mut scratch = vec![0.0f32; rotary_dim];
        for (row, &pos) in x.as_mut_slice().chunks_mut(cols).zip(positions) {
            rope::rope_row(row, num_heads, pos, rope.style, &rope.inv_freq, &mut scratch);
        }
        Ok(())
    }

    fn write_kv(
        &self,
        step: &StepBatch,
        cache: &mut CpuKvCache,
        layer: usize,
        key: &CpuTensor,
        value: &CpuTensor,
    ) -> BackendResult<()> {
        cache.write(layer, key, value, &step.slot_mapping)
    }

    fn attention(
        &self,
        step: &StepBatch,
        query: &CpuTensor,
        cache: &CpuKvCache,
        layer: usize,
        params: &AttentionParams,
    ) -> BackendResult<CpuTensor> {
        attention::attention(&self.pool, self.isa, step, query, cache, layer, params)
    }

    fn silu_mul(&self, _step: &StepBatch, gate: &CpuTensor, up: &CpuTensor) -> BackendResult<CpuTensor> {
        same_shape("silu_mul", gate, up)?;
        let mut out = CpuTensor::for_overwrite(gate.rows(), gate.cols())?;
        self.map_rows(gate, &mut out, |r, g, o| {
            elementwise::silu_mul(self.isa, g, up.row(r), o)
        });
        Ok(out)
    }

    fn gelu_tanh_mul(&self, _step: &StepBatch, gate: &CpuTensor, up: &CpuTensor) -> BackendResult<CpuTensor> {
        same_shape("gelu_tanh_mul", gate, up)?;
        let mut out = CpuTensor::for_overwrite(gate.rows(), gate.cols())?;
        self.map_rows(gate, &mut out, |r, g, o| {
            elementwise::gelu_tanh_mul(g, up.row(r), o)
        });
        Ok(out)
    }

    fn scale(&self, x: &mut CpuTensor, factor: f32) -> BackendResult<()> {
        x.as_mut_slice().iter_mut().for_each(|v| *v *= factor);
        Ok(())
    }

    fn soft_cap(&self, x: &mut CpuTensor, cap: f32) -> BackendResult<()> {
        x.as_mut_slice()
            .iter_mut()
            .for_each(|v| *v = (*v / cap).tanh() * cap);
        Ok(())
    }

    fn zeros(&self, _step: &StepBatch, rows: usize, cols: usize) -> BackendResult<CpuTensor> {
        CpuTensor::zeros(rows, cols)
    }

    fn gather_rows(&self, _step: &StepBatch, x: &CpuTensor, row_ids: &[u32]) -> BackendResult<CpuTensor> {
        crate::rows::gather_rows(x, row_ids)
    }

    fn scatter_add_rows(
        &self,
        out: &mut CpuTensor,
        y: &CpuTensor,
        row_ids: &[u32],
        weights: &[f32],
    ) -> BackendResult<()> {
        crate::rows::scatter_add_rows(out, y, row_ids, weights)
    }

    fn lora_shrink(
        &self,
        _step: &StepBatch,
        x: &CpuTensor,
        segments: &[LoraSegment<'_, CpuMatrix>],
    ) -> BackendResult<CpuTensor> {
        crate::lora::lora_shrink(&self.pool, self.isa, x, segments)
    }

    fn lora_expand(
        &self,
        _step: &StepBatch,
        shrunk: &CpuTensor,
        segments: &[LoraSegment<'_, CpuMatrix>],
        y: &mut CpuTensor,
    ) -> BackendResult<()> {
        crate::lora_expand::lora_expand(&self.pool, self.isa, shrunk, segments, y)
    }

    fn add_assign(&self, x: &mut CpuTensor, y: &CpuTensor) -> BackendResult<()> {
        same_shape("add_assign", x, y)?;
        x.as_mut_slice()
            .iter_mut()
            .zip(y.as_slice())
            .for_each(|(a, &b)| *a += b);
        Ok(())
    }

    fn logits_rows(&self, step: &StepBatch, x: &CpuTensor) -> BackendResult<CpuTensor> {
        let rows = &step.logits_indices;
        if let Some(&bad) = rows.iter().find(|&&r| r as usize >= x.rows()) {
            return Err(shape_err(
                "logits_rows",
                format!("row {bad} out of range ({} rows)", x.rows()),
            ));
        }
        let mut data = crate::alloc::try_zeroed_vec(rows.len() * x.cols(), "gathered rows")?;
        for (o, &r) in data.chunks_mut(x.cols().max(1)).zip(rows) {
            o.copy_from_slice(x.row(r as usize));
        }
        CpuTensor::from_vec(rows.len(), x.cols(), data)
    }

    fn to_host(&self, x: &CpuTensor) -> BackendResult<Vec<f32>> {
        Ok(x.as_slice().to_vec())
    }

    fn move_to_host(&self, x: CpuTensor) -> BackendResult<Vec<f32>> {
        Ok(x.into_vec())
    }
}
