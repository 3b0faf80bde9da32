//! Host-side planning of a step's LoRA kernels (`cuda/lora.cu`): each token row's adapter slot,
//! the contiguous segments of rows that share one, which shrink kernel runs (grouped GEMV when
//! every segment is a row or a few, as in decode; segmented GEMM for prefill) and the launch
//! shapes. Pure data, unit-tested without a device.

use crate::launch::Geometry;

/// Threads per block of the LoRA kernels.
pub const LORA_THREADS: u32 = 128;
/// Rows of one segmented-GEMM tile.
pub const LORA_TILE_ROWS: usize = 16;
/// Highest rank the segmented shrink holds in shared memory.
pub const LORA_MAX_RANK: usize = 64;
/// Segments this long or shorter take the grouped GEMV.
pub const GEMV_MAX_SEGMENT_ROWS: usize = 4;
/// Blocks of the grid-stride expand kernel, at most.
const EXPAND_MAX_BLOCKS: usize = 4096;

/// Which shrink kernel a step runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShrinkKernel {
    /// `ember_lora_shrink_gemv_*`: one block per (row, rank).
    GroupedGemv,
    /// `ember_lora_shrink_segments_*`: one block per 16-row tile of a segment.
    SegmentedGemm,
}

/// The device inputs and kernel choice of one step's adapters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoraPlan {
    /// Slot of each row, -1 for the base model; `[num_tokens]`.
    pub token_slots: Vec<i32>,
    /// Row offsets of the adapter segments; `[num_segments + 1]`.
    pub seg_starts: Vec<i32>,
    /// Slot of each segment; `[num_segments]`.
    pub seg_slots: Vec<i32>,
    /// Rows of the longest segment.
    pub max_segment_rows: usize,
    /// The shrink kernel.
    pub shrink: ShrinkKernel,
}

impl LoraPlan {
    /// The plan of rows whose adapter slots are `row_slots` (`None`: the base model), for
    /// adapters padded to `max_rank`; refuses a rank the kernels do not hold. Segments are the
    /// runs of equal slots and cover every row; base-model runs have slot -1 (the kernels skip them).
    pub fn new(row_slots: &[Option<u32>], max_rank: usize) -> Result<Self, String> {
        if max_rank == 0 || max_rank > LORA_MAX_RANK {
            return Err(format!(
                "LoRA rank {max_rank} is outside what the CUDA kernels hold (1 to {LORA_MAX_RANK})"
            ));
        }
        let token_slots = row_slots
            .iter()
            .map(|slot| match slot {
                Some(s) => i32::try_from(*s).map_err(|_| format!("LoRA slot {s} is too large")),
                None => Ok(-1),
            })
            .collect::<Result<Vec<i32>, String>>()?;
        let (mut seg_starts, mut seg_slots) = (Vec::new(), Vec::new());
        let mut max_segment_rows = 0;
        for (row, &slot) in token_slots.iter().enumerate() {
            if row == 0 || token_slots[row - 1] != slot {
                seg_starts.push(row as i32);
                seg_slots.push(slot);
            }
        }
        seg_starts.push(token_slots.len() as i32);
        for (bounds, &slot) in seg_starts.windows(2).zip(&seg_slots) {
            if slot >= 0 {
                max_segment_rows = max_segment_rows.max((bounds[1] - bounds[0]) as usize);
            }
        }
        let shrink = match max_segment_rows <= GEMV_MAX_SEGMENT_ROWS {
            true => ShrinkKernel::GroupedGemv,
            false => ShrinkKernel::SegmentedGemm,
        };
        Ok(Self {
            token_slots,
            seg_starts,
            seg_slots,
            max_segment_rows,
            shrink,
        })
    }

    /// Number of segments (adapter and base-model runs).
    pub fn num_segments(&self) -> usize {
        self.seg_slots.len()
    }

    /// Launch shape of the shrink kernel for adapters padded to `max_rank`.
    pub fn shrink_geometry(&self, max_rank: usize) -> Geometry {
        let grid = match self.shrink {
            ShrinkKernel::GroupedGemv => (self.token_slots.len(), max_rank),
            ShrinkKernel::SegmentedGemm => (
                self.num_segments(),
                self.max_segment_rows.div_ceil(LORA_TILE_ROWS),
            ),
        };
        geometry(grid.0, grid.1)
    }

    /// Launch shape of the expand kernel over `out_features` columns.
    pub fn expand_geometry(&self, out_features: usize) -> Geometry {
        let elements = self.token_slots.len() * out_features;
        geometry(
            elements
                .div_ceil(LORA_THREADS as usize)
                .clamp(1, EXPAND_MAX_BLOCKS),
            1,
        )
    }
}

fn geometry(x: usize, y: usize) -> Geometry {
    let dim = |n: usize| u32::try_from(n.max(1)).unwrap_or(u32::MAX);
    Geometry {
        grid: (dim(x), dim(y), 1),
        block: (LORA_THREADS, 1, 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_rows_take_the_grouped_gemv() {
        let plan = LoraPlan::new(&[Some(0), None, Some(1), Some(1), None], 16).unwrap();
        assert_eq!(plan.token_slots, [0, -1, 1, 1, -1]);
        assert_eq!(plan.seg_starts, [0, 1, 2, 4, 5]);
        assert_eq!(plan.seg_slots, [0, -1, 1, -1]);
        assert_eq!(plan.max_segment_rows, 2);
        assert_eq!(plan.shrink, ShrinkKernel::GroupedGemv);
        assert_eq!(plan.shrink_geometry(16).grid, (5, 16, 1));
        assert_eq!(plan.expand_geometry(100).grid, (4, 1, 1));
    }

    #[test]
    fn prefill_segments_take_the_segmented_gemm() {
        let mut rows = vec![Some(2); 40];
        rows.extend([None; 3]);
        rows.extend([Some(0); 7]);
        let plan = LoraPlan::new(&rows, 64).unwrap();
        assert_eq!(plan.seg_starts, [0, 40, 43, 50]);
        assert_eq!(plan.seg_slots, [2, -1, 0]);
        assert_eq!(plan.max_segment_rows, 40);
        assert_eq!(plan.shrink, ShrinkKernel::SegmentedGemm);
        assert_eq!(plan.shrink_geometry(64).grid, (3, 3, 1));
    }

    #[test]
    fn base_only_steps_have_no_segments_and_ranks_are_bounded() {
        let plan = LoraPlan::new(&[None, None], 8).unwrap();
        assert_eq!((plan.num_segments(), plan.max_segment_rows), (1, 0));
        assert_eq!(plan.token_slots, [-1, -1]);
        assert!(LoraPlan::new(&[Some(0)], 65).unwrap_err().contains("1 to 64"));
        assert!(LoraPlan::new(&[Some(0)], 0).is_err());
    }
}
