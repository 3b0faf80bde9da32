//! What a backend plans its memory for: the model's sizes ([`ModelShape`]), the engine's
//! limits ([`MemoryLimits`]), and the paged KV cache geometry it answers with ([`KvCacheSpec`]).

use crate::backend::{BackendError, BackendResult};
use crate::WeightDType;

/// What one decoder layer keeps in the paged KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerKv {
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Dimensions per head.
    pub head_dim: usize,
    /// The layer attends to at most its last `sliding_window` positions (`None`: all).
    pub sliding_window: Option<usize>,
}

/// The sizes of a loaded model that its activations and KV cache depend on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelShape {
    /// Residual stream width.
    pub hidden_size: usize,
    /// MLP inner width.
    pub intermediate_size: usize,
    /// Vocabulary size (logits per row).
    pub vocab_size: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Dimensions per query head.
    pub head_dim: usize,
    /// KV needs of every decoder layer, in order.
    pub kv_layers: Vec<LayerKv>,
}

impl ModelShape {
    /// Key/value heads and head size shared by every layer; an error when layers differ (the
    /// cache stores one geometry for all layers).
    pub fn uniform_kv(&self) -> BackendResult<LayerKv> {
        let Some(&first) = self.kv_layers.first() else {
            return Err(BackendError::Unsupported("a model without decoder layers".into()));
        };
        let same = |l: &LayerKv| (l.num_kv_heads, l.head_dim) == (first.num_kv_heads, first.head_dim);
        if let Some((i, other)) = self.kv_layers.iter().enumerate().find(|(_, l)| !same(l)) {
            return Err(BackendError::Unsupported(format!(
                "layer {i} stores {} KV heads of {} dims but layer 0 stores {} of {}: per-layer KV \
                 shapes are not supported by the paged cache",
                other.num_kv_heads, other.head_dim, first.num_kv_heads, first.head_dim
            )));
        }
        Ok(first)
    }

    /// The window every layer stays within (the largest of their windows), so cached
    /// positions before it are never read again; `None` when some layer attends to all.
    pub fn kv_release_window(&self) -> Option<usize> {
        let windows: Option<Vec<usize>> = self.kv_layers.iter().map(|l| l.sliding_window).collect();
        windows.and_then(|w| w.into_iter().max())
    }
}

/// Engine options a backend sizes its memory for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryLimits {
    /// Most sequences in one step.
    pub max_num_seqs: usize,
    /// Most token rows in one step.
    pub max_num_batched_tokens: usize,
    /// Longest sequence (prompt + output) the engine plans for.
    pub max_model_len: usize,
    /// Tokens per KV-cache block.
    pub block_size: usize,
    /// KV-cache memory asked for explicitly; `None` lets the backend decide.
    pub kv_cache_memory_bytes: Option<u64>,
    /// Fraction of device memory the engine may use (device backends).
    pub gpu_memory_utilization: f32,
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
    /// The geometry of `shape`'s cache in `block_size`-token blocks, before the number of
    /// blocks is known (`num_blocks` is 0).
    pub fn for_model(shape: &ModelShape, block_size: usize) -> BackendResult<Self> {
        let kv = shape.uniform_kv()?;
        Ok(Self {
            num_layers: shape.kv_layers.len(),
            num_blocks: 0,
            block_size,
            num_kv_heads: kv.num_kv_heads,
            head_dim: kv.head_dim,
        })
    }

    /// Bytes one block takes across all layers, K and V, with elements stored as `dtype`
    /// (each head row of `head_dim` elements in whole `dtype` blocks).
    pub fn bytes_per_block(&self, dtype: WeightDType) -> usize {
        let row_bytes = self.head_dim.div_ceil(dtype.block_len()) * dtype.block_bytes();
        2 * self.num_layers * self.block_size * self.num_kv_heads * row_bytes
    }

    /// This geometry with as many whole blocks as `budget_bytes` holds with `dtype` elements
    /// (0 for an empty block, which the engine refuses).
    pub fn with_budget(self, budget_bytes: u64, dtype: WeightDType) -> Self {
        let block_bytes = self.bytes_per_block(dtype) as u64;
        let num_blocks = budget_bytes.checked_div(block_bytes).unwrap_or(0);
        Self {
            num_blocks: usize::try_from(num_blocks).unwrap_or(usize::MAX),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(kv_layers: Vec<LayerKv>) -> ModelShape {
        ModelShape {
            hidden_size: 64,
            intermediate_size: 128,
            vocab_size: 100,
            num_heads: 4,
            head_dim: 16,
            kv_layers,
        }
    }

    #[test]
    fn the_cache_takes_one_geometry_for_every_layer() {
        let kv = LayerKv {
            num_kv_heads: 2,
            head_dim: 16,
            sliding_window: None,
        };
        let spec = KvCacheSpec::for_model(&shape(vec![kv; 3]), 16).unwrap();
        assert_eq!(
            (spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.num_blocks),
            (3, 2, 16, 0)
        );
        assert_eq!(spec.bytes_per_block(WeightDType::F32), 2 * 3 * 16 * 2 * 16 * 4);
        assert_eq!(spec.with_budget(10 * 12288 + 5, WeightDType::F32).num_blocks, 10);
        // Q8_0: a 16-element head row still takes one whole 34-byte block.
        assert_eq!(spec.bytes_per_block(WeightDType::Q8_0), 2 * 3 * 16 * 2 * 34);
        let mixed = shape(vec![
            kv,
            LayerKv {
                num_kv_heads: 4,
                ..kv
            },
        ]);
        let err = KvCacheSpec::for_model(&mixed, 16).unwrap_err().to_string();
        assert!(err.contains("layer 1 stores 4 KV heads"), "{err}");
        assert!(KvCacheSpec::for_model(&shape(Vec::new()), 16).is_err());
    }

    #[test]
    fn cached_positions_are_released_only_when_every_layer_slides() {
        let layer = |w| LayerKv {
            num_kv_heads: 2,
            head_dim: 16,
            sliding_window: w,
        };
        assert_eq!(
            shape(vec![layer(Some(8)), layer(Some(32))]).kv_release_window(),
            Some(32)
        );
        assert_eq!(shape(vec![layer(Some(8)), layer(None)]).kv_release_window(), None);
        // Windows do not change what a layer stores.
        assert!(KvCacheSpec::for_model(&shape(vec![layer(Some(8)), layer(None)]), 16).is_ok());
    }
}
