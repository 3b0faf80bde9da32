//! Fallible allocation helpers: buffers that report `OutOfMemory` instead of aborting.

use ember_core::{BackendError, BackendResult};

/// A 64-byte aligned chunk, the unit of [`AlignedBytes`].
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Chunk([u8; 64]);

/// An immutable byte buffer whose start is 64-byte aligned (cache line and AVX-512 width).
pub struct AlignedBytes {
    /// Backing storage; `len` bytes of it are meaningful, the rest is zero padding.
    chunks: Vec<Chunk>,
    len: usize,
}

impl AlignedBytes {
    /// Copies `bytes` into a new aligned buffer; `what` names it in the error.
    pub fn copy_from(bytes: &[u8], what: &str) -> BackendResult<Self> {
        let num_chunks = bytes.len().div_ceil(64);
        let mut chunks = Vec::new();
        chunks
            .try_reserve_exact(num_chunks)
            .map_err(|_| oom(what, bytes.len()))?;
        chunks.resize(num_chunks, Chunk([0; 64]));
        // SAFETY: `chunks` holds `num_chunks * 64 >= bytes.len()` initialized bytes, `Chunk`
        // is plain bytes (repr(C), no padding), and the two regions do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), chunks.as_mut_ptr().cast::<u8>(), bytes.len());
        }
        Ok(Self {
            chunks,
            len: bytes.len(),
        })
    }

    /// The stored bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the vector owns `chunks.len() * 64 >= len` initialized bytes.
        unsafe { std::slice::from_raw_parts(self.chunks.as_ptr().cast::<u8>(), self.len) }
    }
}

/// The `OutOfMemory` error for `bytes` bytes of `what`.
pub fn oom(what: &str, bytes: usize) -> BackendError {
    BackendError::OutOfMemory {
        what: what.to_string(),
        requested_bytes: bytes as u64,
        available_bytes: 0,
    }
}

/// Plain numbers whose all-zero bit pattern is the value zero.
///
/// # Safety
/// Implementors must be valid and equal to zero when every byte is 0.
pub unsafe trait ZeroBits: Copy {}
// SAFETY: zero bytes are 0u8, 0i32 and +0.0f32.
unsafe impl ZeroBits for u8 {}
// SAFETY: as above.
unsafe impl ZeroBits for i32 {}
// SAFETY: as above.
unsafe impl ZeroBits for f32 {}

/// `len` zeros, or `OutOfMemory`. Allocated zeroed by the system (`calloc`): memory fresh from
/// the kernel is not cleared twice, and large buffers take no physical memory until their pages
/// are first written (per-step tensors such as `[batch, vocab]` logits, and the KV cache).
pub fn try_zeroed_vec<T: ZeroBits>(len: usize, what: &str) -> BackendResult<Vec<T>> {
    if len == 0 || std::mem::size_of::<T>() == 0 {
        return Ok(Vec::new());
    }
    let bytes = len.saturating_mul(std::mem::size_of::<T>());
    let layout = std::alloc::Layout::array::<T>(len).map_err(|_| oom(what, bytes))?;
    // SAFETY: `layout` has a non-zero size.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        return Err(oom(what, bytes));
    }
    // SAFETY: `ptr` was allocated by the global allocator with `layout` (`len` values of `T`,
    // `T`'s alignment), and all `len` values are initialized: zero bytes are zeros (`ZeroBits`).
    Ok(unsafe { Vec::from_raw_parts(ptr.cast::<T>(), len, len) })
}
