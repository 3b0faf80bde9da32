//! Device-side data types of the CUDA backend. 16-bit values are stored as raw `u16` bits
//! (bf16); K/V cache layout per layer: `[num_blocks, block_size, num_kv_heads, head_dim]`.

use cudarc::driver::CudaSlice;
use ember_core::KvCacheSpec;

use crate::arena::ArenaRegion;
use crate::device::Device;
use crate::kernel_args::DevPtr;

/// Where a tensor's elements live.
pub(crate) enum TensorData {
    /// Its own allocation from the stream-ordered allocator (eager steps).
    Owned(CudaSlice<u16>),
    /// A region of the graph arena (graph warm-up and capture).
    Arena(ArenaRegion),
    /// Arena memory written by a graph replay; valid until the next step.
    Replayed(u64),
}

/// A row-major bf16 activation `[rows, cols]`.
pub struct CudaTensor {
    pub(crate) data: TensorData,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
}

impl CudaTensor {
    /// Device address of the first element.
    pub(crate) fn ptr(&self, device: &Device) -> u64 {
        match &self.data {
            TensorData::Owned(s) => device.ptr(s),
            TensorData::Arena(r) => r.ptr(),
            TensorData::Replayed(p) => *p,
        }
    }

    /// The first element's address as a kernel argument.
    pub(crate) fn dev(&self, device: &Device) -> DevPtr {
        DevPtr(self.ptr(device))
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// Scratch memory of one operation (decode-attention partials).
pub(crate) enum Scratch {
    /// From the stream-ordered allocator.
    Owned(CudaSlice<f32>),
    /// From the graph arena.
    Arena(ArenaRegion),
}

impl Scratch {
    /// Device address, as a kernel argument.
    pub(crate) fn dev(&self, device: &Device) -> DevPtr {
        DevPtr(match self {
            Self::Owned(s) => device.ptr(s),
            Self::Arena(r) => r.ptr(),
        })
    }
}

/// A bf16 weight matrix `[rows = out_features, cols = in_features]` (quantized GGUF weights
/// are dequantized at load).
pub struct CudaMatrix {
    pub(crate) data: CudaSlice<u16>,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
}

/// An f32 weight vector `[len]` (norm scales, biases).
pub struct CudaVector {
    pub(crate) data: CudaSlice<f32>,
    pub(crate) len: usize,
}

/// The paged K/V cache: per layer, K and V `[num_blocks, block_size, num_kv_heads, head_dim]` bf16.
pub struct CudaKvCache {
    pub(crate) keys: Vec<CudaSlice<u16>>,
    pub(crate) values: Vec<CudaSlice<u16>>,
    pub(crate) spec: KvCacheSpec,
}

impl CudaKvCache {
    /// The geometry it was allocated with.
    pub fn spec(&self) -> &KvCacheSpec {
        &self.spec
    }
}
