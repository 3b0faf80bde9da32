//! The fixed-address activation arena of CUDA-graph steps: one device buffer, carved by a
//! deterministic allocator (bump plus exact-size free lists), so the addresses a graph was
//! captured with stay valid for every replay. The host bookkeeping here needs no GPU.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::launch::DecodeSplit;

/// Alignment of every region (cuBLAS and 16-byte vector loads want at least 16).
pub const ARENA_ALIGN: usize = 256;

/// Model dimensions that size the per-step activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelDims {
    /// Hidden size.
    pub hidden: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Dimensions per head.
    pub head_dim: usize,
    /// MLP intermediate size.
    pub intermediate: usize,
    /// Vocabulary size.
    pub vocab: usize,
}

/// Bytes the Llama forward pass of a `batch`-sequence decode step can hold at once in the
/// arena: per token row, 5 hidden-sized tensors (residual, two normed hiddens while one
/// replaces the other, attention and MLP outputs), query and attention context, key and
/// value, gate, up and their product, one logits row (all bf16); plus the f32 decode partials
/// of `split` and one alignment unit per allocation.
pub fn step_bytes(dims: &ModelDims, batch: usize, split: DecodeSplit) -> usize {
    let q_dim = dims.num_heads * dims.head_dim;
    let kv_dim = dims.num_kv_heads * dims.head_dim;
    let per_row = 5 * dims.hidden + 2 * q_dim + 2 * kv_dim + 3 * dims.intermediate + dims.vocab;
    let partial_rows = if split.num_splits > 1 {
        batch * dims.num_heads * split.num_splits
    } else {
        1
    };
    let partials = partial_rows * (dims.head_dim + 2) * 4;
    // 16 allocations live at most (the tensors above plus the three partial buffers).
    batch * per_row * 2 + partials + 16 * ARENA_ALIGN
}

/// A region's first byte, relative to the arena start.
type Offset = usize;

/// The allocator state: bump pointer, free lists by size, and how many regions are live.
#[derive(Debug)]
pub struct ArenaAllocator {
    capacity: usize,
    next: usize,
    free: HashMap<usize, Vec<Offset>>,
    live: usize,
}

impl ArenaAllocator {
    /// An empty allocator over `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            next: 0,
            free: HashMap::new(),
            live: 0,
        }
    }

    /// Bytes in the arena.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes handed out since the last reset (the high-water mark).
    pub fn used(&self) -> usize {
        self.next
    }

    /// A region of `bytes` (rounded up to [`ARENA_ALIGN`]): a freed one of the same size,
    /// else fresh space; `None` when the arena is full.
    pub fn alloc(&mut self, bytes: usize) -> Option<(Offset, usize)> {
        let size = bytes.max(1).div_ceil(ARENA_ALIGN) * ARENA_ALIGN;
        let offset = match self.free.get_mut(&size).and_then(Vec::pop) {
            Some(offset) => offset,
            None if self.next + size <= self.capacity => {
                self.next += size;
                self.next - size
            }
            None => return None,
        };
        self.live += 1;
        Some((offset, size))
    }

    /// Returns a region to its free list.
    pub fn release(&mut self, offset: Offset, size: usize) {
        self.free.entry(size).or_default().push(offset);
        self.live -= 1;
    }

    /// Forgets every region so the next step starts from offset 0; refused (false) while a
    /// region is still live.
    pub fn reset(&mut self) -> bool {
        if self.live != 0 {
            return false;
        }
        self.next = 0;
        self.free.clear();
        true
    }
}

/// The arena's shared bookkeeping plus the device address of its first byte.
#[derive(Clone, Debug)]
pub struct ArenaHandle {
    base: u64,
    state: Arc<Mutex<ArenaAllocator>>,
}

/// A live region; dropping it returns the space to the arena.
#[derive(Debug)]
pub struct ArenaRegion {
    ptr: u64,
    size: usize,
    owner: ArenaHandle,
}

impl ArenaRegion {
    /// Device address of the region.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
}

impl Drop for ArenaRegion {
    fn drop(&mut self) {
        if let Ok(mut state) = self.owner.state.lock() {
            state.release((self.ptr - self.owner.base) as usize, self.size);
        }
    }
}

impl ArenaHandle {
    /// Bookkeeping for `capacity` bytes starting at device address `base`.
    pub fn new(base: u64, capacity: usize) -> Self {
        Self {
            base,
            state: Arc::new(Mutex::new(ArenaAllocator::new(capacity))),
        }
    }

    /// A region of at least `bytes`, or `None` when the arena is full (or its lock poisoned).
    pub fn alloc(&self, bytes: usize) -> Option<ArenaRegion> {
        let (offset, size) = self.state.lock().ok()?.alloc(bytes)?;
        Some(ArenaRegion {
            ptr: self.base + offset as u64,
            size,
            owner: self.clone(),
        })
    }

    /// Starts a step from an empty arena; false while a region of the last step is live.
    pub fn reset(&self) -> bool {
        self.state.lock().is_ok_and(|mut s| s.reset())
    }

    /// `(used, capacity)` bytes.
    pub fn usage(&self) -> (usize, usize) {
        self.state
            .lock()
            .map(|s| (s.used(), s.capacity()))
            .unwrap_or((0, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA3_8B: ModelDims = ModelDims {
        hidden: 4096,
        num_heads: 32,
        num_kv_heads: 8,
        head_dim: 128,
        intermediate: 14336,
        vocab: 128_256,
    };

    #[test]
    fn step_bytes_counts_rows_and_partials() {
        let one = DecodeSplit {
            partition_size: 512,
            num_splits: 1,
        };
        let rows = 5 * 4096 + 2 * 4096 + 2 * 1024 + 3 * 14336 + 128_256;
        assert_eq!(step_bytes(&LLAMA3_8B, 1, one), rows * 2 + 130 * 4 + 16 * 256);
        let split = DecodeSplit {
            partition_size: 512,
            num_splits: 32,
        };
        let big = step_bytes(&LLAMA3_8B, 256, split);
        assert_eq!(big - 256 * rows * 2 - 16 * 256, 256 * 32 * 32 * 130 * 4);
    }

    #[test]
    fn freed_regions_are_reused_by_size_and_addresses_repeat() {
        let arena = ArenaHandle::new(0x1000_0000, 1 << 20);
        let run = || {
            assert!(arena.reset());
            let a = arena.alloc(1000).unwrap();
            let b = arena.alloc(1000).unwrap();
            let a_ptr = a.ptr();
            drop(a);
            let c = arena.alloc(1000).unwrap(); // reuses a's region
            let d = arena.alloc(5000).unwrap(); // new size class
            assert_eq!(c.ptr(), a_ptr);
            vec![b.ptr(), c.ptr(), d.ptr()]
        };
        let first = run();
        assert_eq!(first, vec![0x1000_0400, 0x1000_0000, 0x1000_0800]);
        assert_eq!(
            run(),
            first,
            "the same sequence of calls gives the same addresses"
        );
        assert_eq!(arena.usage(), (1024 + 1024 + 5120, 1 << 20));
    }

    #[test]
    fn full_arena_and_live_regions_are_refused() {
        let arena = ArenaHandle::new(0, 4 * ARENA_ALIGN);
        let a = arena.alloc(3 * ARENA_ALIGN).unwrap();
        assert!(arena.alloc(2 * ARENA_ALIGN).is_none());
        assert!(!arena.reset(), "a live region blocks the reset");
        drop(a);
        assert!(arena.reset());
        assert!(arena.alloc(4 * ARENA_ALIGN).is_some());
    }
}
