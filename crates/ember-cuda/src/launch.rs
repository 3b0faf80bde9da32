//! Launch geometry of every kernel (grid and block sizes, decode split counts), as pure
//! functions so they are tested without a GPU. Constants mirror the `#define`s in cuda/.

/// Threads per decode-attention block (`EMBER_DECODE_THREADS`).
pub const DECODE_THREADS: u32 = 128;
/// Query heads one decode block serves (`EMBER_DECODE_MAX_GROUP`).
pub const DECODE_MAX_GROUP: usize = 8;
/// Most context tokens one decode block handles (`EMBER_DECODE_MAX_PARTITION`).
pub const DECODE_MAX_PARTITION: usize = 512;
/// Threads per prefill-attention block (`EMBER_PREFILL_THREADS`).
pub const PREFILL_THREADS: u32 = 128;
/// Query rows per prefill block (`EMBER_PREFILL_BLOCK_M`).
pub const PREFILL_BLOCK_M: usize = 64;
/// Threads per sampling block (one block per row).
pub const SAMPLING_THREADS: u32 = 1024;
/// Head sizes with attention kernels.
pub const HEAD_DIMS: [usize; 2] = [64, 128];
/// KV block sizes with attention kernels.
pub const BLOCK_SIZES: [usize; 2] = [16, 32];

/// A kernel launch shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Grid dimensions (x, y, z).
    pub grid: (u32, u32, u32),
    /// Block dimensions (x, y, z).
    pub block: (u32, u32, u32),
}

impl Geometry {
    fn new(grid: (usize, usize, usize), threads: u32) -> Self {
        let dim = |n: usize| u32::try_from(n.max(1)).unwrap_or(u32::MAX);
        Self {
            grid: (dim(grid.0), dim(grid.1), dim(grid.2)),
            block: (threads, 1, 1),
        }
    }
}

/// How decode attention splits each sequence's context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeSplit {
    /// Context tokens per block.
    pub partition_size: usize,
    /// Partitions per sequence (1: no reduction kernel).
    pub num_splits: usize,
}

/// The split for contexts up to `max_seq_len` tokens: the largest partition (512, 256 or 128
/// tokens) that still gives at least one block per SM, so long contexts of few sequences keep
/// the GPU busy while short or many sequences avoid the reduction.
pub fn decode_split(
    max_seq_len: usize,
    num_seqs: usize,
    num_heads: usize,
    num_kv_heads: usize,
    num_sms: usize,
) -> DecodeSplit {
    let base = num_seqs * head_blocks(num_heads, num_kv_heads);
    let mut choice = DecodeSplit {
        partition_size: 128,
        num_splits: max_seq_len.div_ceil(128).max(1),
    };
    for partition_size in [DECODE_MAX_PARTITION, 256, 128] {
        let num_splits = max_seq_len.div_ceil(partition_size).max(1);
        if base * num_splits >= num_sms {
            choice = DecodeSplit {
                partition_size,
                num_splits,
            };
            break;
        }
    }
    choice
}

/// Decode blocks along grid x: KV heads times chunks of at most [`DECODE_MAX_GROUP`] query heads.
pub fn head_blocks(num_heads: usize, num_kv_heads: usize) -> usize {
    let group = num_heads / num_kv_heads.max(1);
    num_kv_heads * group.div_ceil(DECODE_MAX_GROUP)
}

/// Grid of the paged decode kernel.
pub fn decode_geometry(
    num_seqs: usize,
    num_heads: usize,
    num_kv_heads: usize,
    split: DecodeSplit,
) -> Geometry {
    Geometry::new(
        (head_blocks(num_heads, num_kv_heads), num_seqs, split.num_splits),
        DECODE_THREADS,
    )
}

/// Grid of the decode reduction: one block per (head, sequence), one thread per dimension.
pub fn decode_reduce_geometry(num_seqs: usize, num_heads: usize, head_dim: usize) -> Geometry {
    Geometry::new((num_heads, num_seqs, 1), warp_multiple(head_dim, 1024))
}

/// Grid of the prefill kernel and its query tiles per sequence.
pub fn prefill_geometry(num_seqs: usize, max_query_len: usize, num_heads: usize) -> (Geometry, usize) {
    let tiles = max_query_len.div_ceil(PREFILL_BLOCK_M).max(1);
    (
        Geometry::new((num_seqs * tiles, num_heads, 1), PREFILL_THREADS),
        tiles,
    )
}

/// One block per row with enough threads for `cols` columns (a warp multiple, at most 1024).
pub fn row_geometry(rows: usize, cols: usize) -> Geometry {
    Geometry::new((rows, 1, 1), warp_multiple(cols.div_ceil(8), 1024))
}

/// Grid-stride launch over `n` items: 256 threads, at most 8 blocks per SM.
pub fn elementwise_geometry(n: usize, num_sms: usize) -> Geometry {
    Geometry::new((n.div_ceil(256).min(num_sms.max(1) * 8), 1, 1), 256)
}

/// One [`SAMPLING_THREADS`]-thread block per sampled row.
pub fn sampling_geometry(rows: usize) -> Geometry {
    Geometry::new((rows, 1, 1), SAMPLING_THREADS)
}

fn warp_multiple(threads: usize, max: u32) -> u32 {
    (threads.div_ceil(32) * 32).clamp(32, max as usize) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_split_fills_the_gpu_for_long_single_sequences() {
        // One sequence, 8 KV heads of Llama-3-8B, 4097 tokens, 132 SMs: 8 x 17 blocks.
        let s = decode_split(4097, 1, 32, 8, 132);
        assert_eq!(
            s,
            DecodeSplit {
                partition_size: 256,
                num_splits: 17
            }
        );
        // Fewer heads: the smallest partition.
        assert_eq!(decode_split(4097, 1, 9, 3, 132).partition_size, 128);
        // Many sequences: no split at all for short contexts.
        assert_eq!(
            decode_split(300, 64, 32, 8, 132),
            DecodeSplit {
                partition_size: 512,
                num_splits: 1
            }
        );
        // Short context, few blocks: still one partition (nothing to split).
        assert_eq!(decode_split(1, 1, 9, 3, 132).num_splits, 1);
        // Every partition fits the kernel's shared-memory buffer.
        for len in [1, 15, 16, 17, 1000, 4097, 100_000] {
            for seqs in [1, 7, 64] {
                let s = decode_split(len, seqs, 32, 8, 132);
                assert!(s.partition_size <= DECODE_MAX_PARTITION);
                assert!(s.partition_size * s.num_splits >= len);
            }
        }
    }

    #[test]
    fn decode_grid_covers_gqa_groups_in_chunks_of_eight() {
        assert_eq!(head_blocks(9, 3), 3);
        assert_eq!(head_blocks(32, 8), 8);
        assert_eq!(head_blocks(64, 4), 8); // group 16 -> two chunks per KV head
        let g = decode_geometry(
            5,
            64,
            4,
            DecodeSplit {
                partition_size: 512,
                num_splits: 3,
            },
        );
        assert_eq!(g.grid, (8, 5, 3));
        assert_eq!(g.block, (DECODE_THREADS, 1, 1));
        assert_eq!(decode_reduce_geometry(5, 32, 128).block.0, 128);
    }

    #[test]
    fn prefill_and_row_geometry() {
        let (g, tiles) = prefill_geometry(3, 65, 9);
        assert_eq!(tiles, 2);
        assert_eq!(g.grid, (6, 9, 1));
        assert_eq!(prefill_geometry(1, 64, 1).1, 1);
        assert_eq!(row_geometry(4, 576).block.0, 96);
        assert_eq!(row_geometry(4, 8192).block.0, 1024);
        assert_eq!(row_geometry(4, 3).block.0, 32);
        assert_eq!(elementwise_geometry(10, 132).grid.0, 1);
        assert_eq!(elementwise_geometry(1 << 30, 132).grid.0, 132 * 8);
        assert_eq!(elementwise_geometry(0, 132).grid.0, 1);
        let s = sampling_geometry(5);
        assert_eq!((s.grid, s.block), ((5, 1, 1), (1024, 1, 1)));
    }
}
