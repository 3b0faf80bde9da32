//! The operations a model needs from a device. Model architectures are written once
//! against [`Backend`]; the CPU and CUDA crates implement it.

use crate::device_sampling::DeviceSampleRow;
use crate::weight::WeightView;
use thiserror::Error;

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
}

/// Result of a backend operation.
pub type BackendResult<T> = Result<T, BackendError>;

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(2i, 2i + 1)`: GGUF's Llama layout (Q/K rows permuted at conversion).
    Interleaved,
    /// Pairs `(i, i + rotary_dim / 2)`: the Hugging Face (NeoX) layout.
    HalfSplit,
}

/// Rotary embedding of the first `2 * inv_freq.len()` dimensions of every head.
#[derive(Clone, Debug)]
pub struct Rope {
    /// Pair layout.
    pub style: RopeStyle,
    /// Inverse frequency of each dimension pair, scaling already applied; `[rotary_dim / 2]`.
    pub inv_freq: Vec<f32>,
}

/// Head geometry of one attention layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (`num_heads` is a multiple of it: grouped-query attention).
    pub num_kv_heads: usize,
    /// Dimensions per head.
    pub head_dim: usize,
}

/// Size of the paged KV cache a backend allocates once at start.
///
/// Layout per layer (CPU and the reference): K and V each
/// `[num_blocks, block_size, num_kv_heads, head_dim]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCacheSpec {
    /// Decoder layers.
    pub num_layers: usize,
    /// Blocks per layer.
    pub num_blocks: usize,
    /// Tokens per block.
    pub block_size: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Dimensions per head.
    pub head_dim: usize,
}

impl KvCacheSpec {
    /// Bytes one block takes across all layers, K and V, at `bytes_per_element`.
    pub fn bytes_per_block(&self, bytes_per_element: usize) -> usize {
        2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * bytes_per_element
    }
}

/// Flat per-step inputs of the attention operation, built by the model runner.
///
/// Sequences appear in batch order; token rows of sequence `s` are
/// `query_start_loc[s]..query_start_loc[s + 1]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepMetadata {
    /// Position of each token in its sequence; `[num_tokens]`.
    pub positions: Vec<u32>,
    /// Cache slot (`block_id * block_size + offset`) each token's K/V is written to; `[num_tokens]`.
    pub slot_mapping: Vec<u32>,
    /// Offsets of each sequence's rows; `[num_seqs + 1]`.
    pub query_start_loc: Vec<u32>,
    /// Context length of each sequence after this step (cached + new tokens); `[num_seqs]`.
    pub seq_lens: Vec<u32>,
    /// Block ids of each sequence, padded to `max_blocks_per_seq`; `[num_seqs * max_blocks_per_seq]`.
    pub block_tables: Vec<u32>,
    /// Row stride of `block_tables`.
    pub max_blocks_per_seq: usize,
    /// Token rows whose logits are needed (one per sampled sequence); `[num_logits]`.
    pub logits_indices: Vec<u32>,
}

impl StepMetadata {
    /// Number of token rows in the step.
    pub fn num_tokens(&self) -> usize {
        self.positions.len()
    }

    /// Number of sequences in the step.
    pub fn num_seqs(&self) -> usize {
        self.seq_lens.len()
    }

    /// The block table row of sequence `seq`.
    pub fn block_table(&self, seq: usize) -> &[u32] {
        let start = seq * self.max_blocks_per_seq;
        &self.block_tables[start..start + self.max_blocks_per_seq]
    }
}

/// The eager forward pass of a step, handed to [`Backend::run_forward`]: token ids and step
/// metadata in, logits `[meta.logits_indices.len(), vocab]` out.
pub type ForwardFn<'a, T> = dyn FnMut(&[u32], &StepMetadata) -> BackendResult<T> + 'a;

/// Device operations a decoder-only transformer needs.
///
/// Activations are row-major `[rows, cols]` tensors of one token per row.
/// Every operation computes each row independently of the other rows in the batch,
/// so a sequence's output does not depend on what else is batched with it.
pub trait Backend: Send + Sync {
    /// A dense activation tensor `[rows, cols]`.
    type Tensor: Send;
    /// A weight matrix `[out_features, in_features]`, possibly quantized.
    type Matrix: Send + Sync;
    /// A 1-D weight (norm scale, bias), `[len]`.
    type Vector: Send + Sync;
    /// The whole model's paged K/V storage.
    type KvCache: Send;

    /// Short name for logs and errors ("cpu", "cuda").
    fn name(&self) -> &'static str;

    /// Called once at the start of every forward pass, before its other operations, with the
    /// step's token ids and metadata (which stay alive for the whole pass); a device backend
    /// uploads them here in one copy. The default does nothing.
    fn begin_step(&self, _token_ids: &[u32], _meta: &StepMetadata) -> BackendResult<()> {
        Ok(())
    }
    /// Runs one step's forward pass. `forward` runs the model eagerly; a device backend may
    /// instead replay a captured graph of it (CUDA graphs for pure-decode steps). The default
    /// calls `forward(token_ids, meta)`.
    fn run_forward(
        &self,
        token_ids: &[u32],
        meta: &StepMetadata,
        forward: &mut ForwardFn<'_, Self::Tensor>,
    ) -> BackendResult<Self::Tensor> {
        forward(token_ids, meta)
    }
    /// Samples one token per row of `logits` (`[rows.len(), vocab]`) on the device and returns
    /// `(token_id, logprob)` per row, with the draws of the host sampler's
    /// `uniform(seed, token_index)`; `Ok(None)` means the backend samples on the host (the
    /// default).
    fn sample_on_device(
        &self,
        _logits: &Self::Tensor,
        _rows: &[DeviceSampleRow],
    ) -> BackendResult<Option<Vec<(u32, f32)>>> {
        Ok(None)
    }
    /// Copies or converts a stored matrix into the backend's format.
    fn load_matrix(&self, weight: &WeightView<'_>) -> BackendResult<Self::Matrix>;
    /// Copies or converts a stored vector into the backend's format (f32 on the CPU).
    fn load_vector(&self, weight: &WeightView<'_>) -> BackendResult<Self::Vector>;
    /// Allocates the paged KV cache.
    fn allocate_kv_cache(&self, spec: &KvCacheSpec) -> BackendResult<Self::KvCache>;
    /// Bytes one cached token element takes (K or V, one head dimension).
    fn kv_cache_bytes_per_element(&self) -> usize;

    /// Rows of `table` selected by `token_ids`; `[len(token_ids), hidden]`.
    fn embed(&self, table: &Self::Matrix, token_ids: &[u32]) -> BackendResult<Self::Tensor>;
    /// RMS norm of each row of `x`, scaled by `weight`.
    fn rms_norm(&self, x: &Self::Tensor, weight: &Self::Vector, eps: f32) -> BackendResult<Self::Tensor>;
    /// `residual += x`, then returns the RMS norm of the updated `residual`.
    fn add_rms_norm(
        &self,
        residual: &mut Self::Tensor,
        x: &Self::Tensor,
        weight: &Self::Vector,
        eps: f32,
    ) -> BackendResult<Self::Tensor>;
    /// `x @ weight^T (+ bias)`: `[rows, in] -> [rows, out]`.
    fn matmul(
        &self,
        x: &Self::Tensor,
        weight: &Self::Matrix,
        bias: Option<&Self::Vector>,
    ) -> BackendResult<Self::Tensor>;
    /// Rotates each of the `num_heads` heads of every row in place, row `i` at `positions[i]`.
    fn rope(
        &self,
        x: &mut Self::Tensor,
        num_heads: usize,
        positions: &[u32],
        rope: &Rope,
    ) -> BackendResult<()>;
    /// Writes the step's keys and values (`[num_tokens, num_kv_heads * head_dim]`) of
    /// `layer` into the cache at `slot_mapping`.
    fn write_kv(
        &self,
        cache: &mut Self::KvCache,
        layer: usize,
        key: &Self::Tensor,
        value: &Self::Tensor,
        slot_mapping: &[u32],
    ) -> BackendResult<()>;
    /// Causal attention of the step's queries (`[num_tokens, num_heads * head_dim]`) over
    /// each sequence's cached context (which already holds this step's K/V);
    /// returns `[num_tokens, num_heads * head_dim]`.
    fn attention(
        &self,
        query: &Self::Tensor,
        cache: &Self::KvCache,
        layer: usize,
        shape: AttentionShape,
        scale: f32,
        meta: &StepMetadata,
    ) -> BackendResult<Self::Tensor>;
    /// `silu(gate) * up`, elementwise.
    fn silu_mul(&self, gate: &Self::Tensor, up: &Self::Tensor) -> BackendResult<Self::Tensor>;
    /// `x += y`, elementwise.
    fn add_assign(&self, x: &mut Self::Tensor, y: &Self::Tensor) -> BackendResult<()>;
    /// The listed rows of `x`, in order.
    fn gather_rows(&self, x: &Self::Tensor, rows: &[u32]) -> BackendResult<Self::Tensor>;
    /// Copies `x` to host memory, row-major f32.
    fn to_host(&self, x: &Self::Tensor) -> BackendResult<Vec<f32>>;
}
