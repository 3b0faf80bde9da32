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

/// Resident decode blocks per SM the split aims for: with fewer, a long context of few
/// sequences keeps too few loads in flight to approach the memory bandwidth.
pub const DECODE_BLOCKS_PER_SM: usize = 4;
/// Partition sizes the split chooses from, largest first.
pub const DECODE_PARTITIONS: [usize; 4] = [DECODE_MAX_PARTITION, 256, 128, 64];
/// Shortest context a split is planned for (also the smallest CUDA-graph context bucket).
pub const SPLIT_MIN_CONTEXT: usize = 1024;

/// The context a decode split is planned for: the longest sequence rounded up to a power of
/// two, at least [`SPLIT_MIN_CONTEXT`]. CUDA graphs key on the same buckets (a graph's context
/// is this bucket, or the model's shorter limit, which rounds to the same bucket), so a graph
/// and the eager path of the same step use the same partitions: the same sums, the same tokens.
pub fn split_context(max_seq_len: usize) -> usize {
    max_seq_len.max(SPLIT_MIN_CONTEXT).next_power_of_two()
}

/// The split of a decode step whose longest sequence has `max_seq_len` tokens: the largest
/// partition (512, 256, 128 or 64 tokens) that gives at least [`DECODE_BLOCKS_PER_SM`] blocks
/// per SM over the planned context ([`split_context`]), else 64. Partitions past a sequence's
/// length are empty and exit at once.
pub fn decode_split(
    max_seq_len: usize,
    num_seqs: usize,
    num_heads: usize,
    num_kv_heads: usize,
    num_sms: usize,
) -> DecodeSplit {
    let context = split_context(max_seq_len);
    let base = num_seqs.max(1) * head_blocks(num_heads, num_kv_heads);
    let target = DECODE_BLOCKS_PER_SM * num_sms;
    let smallest = DECODE_PARTITIONS[DECODE_PARTITIONS.len() - 1];
    let partition_size = DECODE_PARTITIONS
        .into_iter()
        .find(|&p| base * context.div_ceil(p) >= target)
        .unwrap_or(smallest);
    DecodeSplit {
        partition_size,
        num_splits: context.div_ceil(partition_size),
    }
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

    fn split(partition_size: usize, num_splits: usize) -> DecodeSplit {
        DecodeSplit {
            partition_size,
            num_splits,
        }
    }

    #[test]
    fn decode_split_aims_at_four_blocks_per_sm() {
        // Llama-3-8B heads (8 KV heads, 8 blocks per sequence), an H200's 132 SMs: 528 blocks.
        // One sequence of 4097 tokens (planned as 8192): only 64-token partitions give 1024.
        assert_eq!(decode_split(4097, 1, 32, 8, 132), split(64, 128));
        // 16 sequences of up to 1000 tokens: 128 blocks per split, 128-token partitions.
        assert_eq!(decode_split(1000, 16, 32, 8, 132), split(128, 8));
        // 32 sequences: 256-token partitions; 64 and 256 sequences: 512-token ones.
        assert_eq!(decode_split(1000, 32, 32, 8, 132), split(256, 4));
        assert_eq!(decode_split(300, 64, 32, 8, 132), split(512, 2));
        assert_eq!(decode_split(16384, 256, 32, 8, 132), split(512, 32));
        // SmolLM2 heads (3 KV heads), one short sequence: the smallest partition, 16 of them.
        assert_eq!(decode_split(1, 1, 9, 3, 132), split(64, 16));
        // GQA group 16: two blocks per KV head.
        assert_eq!(decode_split(2000, 8, 64, 4, 132), split(128, 16));
        for len in [1, 15, 16, 17, 1000, 4097, 100_000] {
            for seqs in [1, 7, 64, 256] {
                let s = decode_split(len, seqs, 32, 8, 132);
                assert!(DECODE_PARTITIONS.contains(&s.partition_size));
                assert!(s.partition_size * s.num_splits >= len, "covers the context");
                assert_eq!(s.partition_size * s.num_splits, split_context(len));
                let blocks = seqs * head_blocks(32, 8) * s.num_splits;
                assert!(blocks >= 4 * 132 || s.partition_size == 64, "{len} {seqs} {s:?}");
            }
        }
    }

    #[test]
    fn a_graph_bucket_and_its_steps_split_alike() {
        // A graph's context is the step's bucket, or the model's limit when that is shorter;
        // both plan the same split as the eager path of any step of the bucket.
        for max_context in [300, 1000, 1024, 3000, 4096, 16384] {
            for len in [1, 17, 299, 300, 999, 1024, 1025, 2999, 3000, 4096, 16384] {
                if len > max_context {
                    continue;
                }
                let graph_context = split_context(len).min(max_context);
                assert_eq!(
                    split_context(graph_context),
                    split_context(len),
                    "{max_context} {len}"
                );
            }
        }
        assert_eq!(split_context(1), 1024);
        assert_eq!(split_context(1025), 2048);
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
