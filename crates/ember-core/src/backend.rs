//! The operations a model needs from a device. Model architectures are written once
//! against [`Backend`]; the CPU and CUDA crates implement it.

use crate::backend_stats::BackendStats;
use crate::device_sampling::DeviceSampleRow;
use crate::dtype::WeightDType;
use crate::layer_params::{AttentionParams, Rope};
use crate::memory::{KvCacheSpec, MemoryLimits, ModelShape};
use crate::step_batch::StepBatch;
use crate::weight::WeightView;
use thiserror::Error;

/// The text of a panic payload (`&str` or `String`), or a placeholder.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// A failure inside a backend: unsupported input, bad shapes, or the device itself.
#[derive(Debug, Error)]
pub enum BackendError {
    /// The backend cannot use a weight stored in this encoding.
    #[error("weight '{name}': dtype {dtype} is not supported by the {backend} backend")]
    UnsupportedDType {
        /// Tensor name.
        name: String,
        /// Its stored encoding.
        dtype: crate::dtype::WeightDType,
        /// Backend name.
        backend: &'static str,
    },
    /// A weight's shape or byte length does not match what the model expects.
    #[error("weight '{name}': {detail}")]
    BadWeight {
        /// Tensor name.
        name: String,
        /// What is wrong, with the numbers.
        detail: String,
    },
    /// Not enough memory for an allocation.
    #[error("out of memory: {what} needs {requested_bytes} bytes, {available_bytes} available")]
    OutOfMemory {
        /// What was being allocated.
        what: String,
        /// Bytes asked for.
        requested_bytes: u64,
        /// Bytes that were available.
        available_bytes: u64,
    },
    /// Any other device failure (driver error, kernel launch failure).
    #[error("device error: {0}")]
    Device(String),
    /// The model asks for something this backend does not implement; the message names it.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// Result of a backend operation.
pub type BackendResult<T> = Result<T, BackendError>;

/// One step's forward pass over the backend's step handle, handed to
/// [`Backend::run_forward`]: logits `[logits_indices.len(), vocab]` out.
pub type ForwardFn<'a, B> = dyn FnMut(&<B as Backend>::Step) -> BackendResult<<B as Backend>::Tensor> + 'a;

/// The rows of one step that one adapter's factor applies to (see [`Backend::lora_shrink`]
/// and [`Backend::lora_expand`]); segments of one call never share a row.
#[derive(Clone, Copy)]
pub struct LoraSegment<'a, M> {
    /// Token rows, ascending.
    pub row_ids: &'a [u32],
    /// The factor: `lora_A` `[rank, in]` to shrink, `lora_B` `[out, rank]` to expand (a
    /// quantized `lora_B` as its transpose `[rank, out]`, quantized along the outputs).
    pub matrix: &'a M,
    /// First column of the shrunk rows the expand reads (0 for a shrink).
    pub col_offset: usize,
    /// The adapter's scale (1 for a shrink).
    pub scale: f32,
}

/// Device operations a decoder-only transformer needs.
///
/// Activations are row-major `[rows, cols]` tensors of one token per row. Every operation
/// that reads the step's inputs or allocates its result takes the step handle made by
/// [`Backend::prepare_step`], so nothing is looked up behind the model's back.
/// Every operation computes each row independently of the other rows in the batch,
/// so a sequence's output does not depend on what else is batched with it.
pub trait Backend: Send + Sync {
    /// A dense activation tensor `[rows, cols]`.
    type Tensor: Send;
    /// A weight matrix `[out_features, in_features]`, possibly quantized.
    type Matrix: Send + Sync;
    /// A 1-D weight (norm scale, bias, rotary frequencies), `[len]`.
    type Vector: Send + Sync;
    /// The whole model's paged K/V storage.
    type KvCache: Send;
    /// One step's inputs where the backend reads them (on a GPU: uploaded in one copy), plus
    /// how the step allocates (a CUDA graph's fixed arena).
    type Step;

    /// Short name for logs and errors ("cpu", "cuda").
    fn name(&self) -> &'static str;

    /// The backend's own counters (CUDA graphs); zeros by default.
    fn stats(&self) -> BackendStats {
        BackendStats::default()
    }

    /// Plans the memory left once the weights are loaded (activation workspace, CUDA graphs)
    /// for a model of `shape` under `limits`, and returns the KV cache geometry that fits;
    /// `num_blocks` is 0 when an explicit `kv_cache_memory_bytes` is below one block.
    fn plan_memory(&mut self, shape: &ModelShape, limits: &MemoryLimits) -> BackendResult<KvCacheSpec>;
    /// The encoding of cached K and V elements (sizes the cache with
    /// [`KvCacheSpec::bytes_per_block`]).
    fn kv_cache_dtype(&self) -> WeightDType;
    /// Allocates the paged KV cache.
    fn allocate_kv_cache(&self, spec: &KvCacheSpec) -> BackendResult<Self::KvCache>;
    /// Copies or converts a stored matrix into the backend's format.
    fn load_matrix(&self, weight: &WeightView<'_>) -> BackendResult<Self::Matrix>;
    /// Copies or converts a stored vector into the backend's format (f32 on the CPU).
    fn load_vector(&self, weight: &WeightView<'_>) -> BackendResult<Self::Vector>;

    /// The ops of this trait the backend does not implement yet (their calls fail with
    /// [`BackendError::Unsupported`]); a model needing one is refused at load.
    fn unsupported_ops(&self) -> &'static [&'static str] {
        &[]
    }
    /// Whether `attention` honours every option of `params` (sliding window, soft-capping); a
    /// model checks each layer's at load, so an unsupported family is refused before it runs.
    fn check_attention(&self, _params: &AttentionParams) -> BackendResult<()> {
        Ok(())
    }
    /// Makes the step handle of `batch` (a device backend uploads the inputs here, once).
    fn prepare_step(&self, batch: StepBatch) -> BackendResult<Self::Step>;
    /// Runs one step's forward pass: prepares the step and calls `forward` on it; a device
    /// backend may instead replay a captured graph of it (CUDA graphs for pure-decode steps).
    fn run_forward(
        &self,
        batch: StepBatch,
        forward: &mut ForwardFn<'_, Self>,
    ) -> BackendResult<Self::Tensor> {
        let step = self.prepare_step(batch)?;
        forward(&step)
    }
    /// Samples one token per row of `logits` (`[rows.len(), vocab]`) on the device and returns
    /// each row's token id, with the draws of the host sampler's `uniform(seed, token_index)`
    /// (no logprob: such rows never ask for one, see [`crate::device_sample_row`]); `Ok(None)`
    /// means the backend samples on the host (the default).
    fn sample_on_device(
        &self,
        _logits: &Self::Tensor,
        _rows: &[DeviceSampleRow],
    ) -> BackendResult<Option<Vec<u32>>> {
        Ok(None)
    }

    /// Rows of `table` selected by the step's input ids; `[num_tokens, hidden]`.
    fn embed(&self, step: &Self::Step, table: &Self::Matrix) -> BackendResult<Self::Tensor>;
    /// RMS norm of every `weight.len()`-wide group of each row of `x`, each scaled by `weight`:
    /// the whole row when `weight` spans it, or every head of `[rows, num_heads * head_dim]`
    /// with a `[head_dim]` weight (the per-head q/k norms of Qwen3 and Gemma 3).
    fn rms_norm(
        &self,
        step: &Self::Step,
        x: &Self::Tensor,
        weight: &Self::Vector,
        eps: f32,
    ) -> BackendResult<Self::Tensor>;
    /// `residual += x`, then returns the RMS norm of the updated `residual`.
    fn add_rms_norm(
        &self,
        step: &Self::Step,
        residual: &mut Self::Tensor,
        x: &Self::Tensor,
        weight: &Self::Vector,
        eps: f32,
    ) -> BackendResult<Self::Tensor>;
    /// `x @ weight^T (+ bias)`: `[rows, in] -> [rows, out]`.
    fn matmul(
        &self,
        step: &Self::Step,
        x: &Self::Tensor,
        weight: &Self::Matrix,
        bias: Option<&Self::Vector>,
    ) -> BackendResult<Self::Tensor>;
    /// Rotates each of the `num_heads` heads of every row in place, row `i` at the step's
    /// position `i`.
    fn rope(
        &self,
        step: &Self::Step,
        x: &mut Self::Tensor,
        num_heads: usize,
        rope: &Rope<Self::Vector>,
    ) -> BackendResult<()>;
    /// Writes the step's keys and values (`[num_tokens, num_kv_heads * head_dim]`) of
    /// `layer` into the cache at the step's `slot_mapping`.
    fn write_kv(
        &self,
        step: &Self::Step,
        cache: &mut Self::KvCache,
        layer: usize,
        key: &Self::Tensor,
        value: &Self::Tensor,
    ) -> BackendResult<()>;
    /// Causal attention of the step's queries (`[num_tokens, num_heads * head_dim]`) over
    /// each sequence's cached context (which already holds this step's K/V), within the
    /// layer's `sliding_window` and soft-capped by its `logit_soft_cap` when set; block-table
    /// entries wholly before every window of a sequence may be `NULL_BLOCK` and are never read.
    /// Returns `[num_tokens, num_heads * head_dim]`.
    fn attention(
        &self,
        step: &Self::Step,
        query: &Self::Tensor,
        cache: &Self::KvCache,
        layer: usize,
        params: &AttentionParams,
    ) -> BackendResult<Self::Tensor>;
    /// `silu(gate) * up`, elementwise.
    fn silu_mul(
        &self,
        step: &Self::Step,
        gate: &Self::Tensor,
        up: &Self::Tensor,
    ) -> BackendResult<Self::Tensor>;
    /// `gelu_tanh(gate) * up`, elementwise, with GELU's tanh approximation (Gemma's GeGLU).
    fn gelu_tanh_mul(
        &self,
        step: &Self::Step,
        gate: &Self::Tensor,
        up: &Self::Tensor,
    ) -> BackendResult<Self::Tensor>;
    /// `x *= factor`, elementwise (Gemma's embedding scale).
    fn scale(&self, x: &mut Self::Tensor, factor: f32) -> BackendResult<()>;
    /// `x = cap * tanh(x / cap)`, elementwise (Gemma 2's final logit soft-capping).
    fn soft_cap(&self, x: &mut Self::Tensor, cap: f32) -> BackendResult<()>;
    /// A zero tensor `[rows, cols]`.
    fn zeros(&self, step: &Self::Step, rows: usize, cols: usize) -> BackendResult<Self::Tensor>;
    /// Rows `row_ids` of `x`, in that order: `[row_ids.len(), cols]` (the tokens routed to one
    /// expert).
    fn gather_rows(
        &self,
        step: &Self::Step,
        x: &Self::Tensor,
        row_ids: &[u32],
    ) -> BackendResult<Self::Tensor>;
    /// `out[row_ids[i]] += weights[i] * y[i]` for every row `i` of `y`, in order (one expert's
    /// outputs into the tokens it serves).
    fn scatter_add_rows(
        &self,
        out: &mut Self::Tensor,
        y: &Self::Tensor,
        row_ids: &[u32],
        weights: &[f32],
    ) -> BackendResult<()>;
    /// `x += y`, elementwise.
    fn add_assign(&self, x: &mut Self::Tensor, y: &Self::Tensor) -> BackendResult<()>;
    /// LoRA shrink of one step: `[x.rows(), width]` with `out[r, 0..rank] = A x[r]` for every
    /// row `r` of each segment (`A` = its `matrix`, `[rank, in]`); other entries are 0. `width`
    /// is the widest segment's rank. Each row's values do not depend on the other segments.
    fn lora_shrink(
        &self,
        _step: &Self::Step,
        _x: &Self::Tensor,
        _segments: &[LoraSegment<'_, Self::Matrix>],
    ) -> BackendResult<Self::Tensor> {
        Err(BackendError::Unsupported(format!(
            "LoRA adapters on the {} backend",
            self.name()
        )))
    }
    /// LoRA expand of one step: `y[r] += scale * B shrunk[r, col_offset..col_offset + rank]`
    /// for every row `r` of each segment (`B` = its `matrix`, `[out, rank]`, or a quantized
    /// one's transpose).
    fn lora_expand(
        &self,
        _step: &Self::Step,
        _shrunk: &Self::Tensor,
        _segments: &[LoraSegment<'_, Self::Matrix>],
        _y: &mut Self::Tensor,
    ) -> BackendResult<()> {
        Err(BackendError::Unsupported(format!(
            "LoRA adapters on the {} backend",
            self.name()
        )))
    }
    /// The rows of `x` at the step's `logits_indices`, in order.
    fn logits_rows(&self, step: &Self::Step, x: &Self::Tensor) -> BackendResult<Self::Tensor>;
    /// Copies `x` to host memory, row-major f32.
    fn to_host(&self, x: &Self::Tensor) -> BackendResult<Vec<f32>>;
    /// `x` in host memory, row-major f32, consuming it (a host backend hands over its buffer
    /// without copying).
    fn move_to_host(&self, x: Self::Tensor) -> BackendResult<Vec<f32>> {
        self.to_host(&x)
    }
}
