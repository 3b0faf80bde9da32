//! The paged KV cache in f32.
//!
//! Layout, per layer, for K and V each: `[num_blocks, block_size, num_kv_heads, head_dim]`
//! row-major. Cache slot `s = block_id * block_size + offset` holds one token's
//! `[num_kv_heads, head_dim]` at element offset `s * num_kv_heads * head_dim`.

use crate::alloc::try_zeroed_vec;
use crate::tensor::CpuTensor;
use ember_core::{BackendError, BackendResult, KvCacheSpec};

/// The whole model's paged K/V storage (f32; layout in the module docs).
pub struct CpuKvCache {
    spec: KvCacheSpec,
    /// Per layer: K `[num_blocks, block_size, num_kv_heads, head_dim]`.
    keys: Vec<Vec<f32>>,
    /// Per layer: V `[num_blocks, block_size, num_kv_heads, head_dim]`.
    values: Vec<Vec<f32>>,
}

impl CpuKvCache {
    /// Allocates a zeroed cache; `OutOfMemory` when it does not fit.
    pub fn allocate(spec: &KvCacheSpec) -> BackendResult<Self> {
        let per_layer = spec
            .num_blocks
            .checked_mul(spec.block_size)
            .and_then(|n| n.checked_mul(spec.num_kv_heads))
            .and_then(|n| n.checked_mul(spec.head_dim))
            .ok_or_else(|| crate::alloc::oom("KV cache", usize::MAX))?;
        let mut keys = Vec::new();
        let mut values = Vec::new();
        for _ in 0..spec.num_layers {
            keys.push(try_zeroed_vec(per_layer, "KV cache")?);
            values.push(try_zeroed_vec(per_layer, "KV cache")?);
        }
        Ok(Self {
            spec: *spec,
            keys,
            values,
        })
    }

    /// The geometry it was allocated with.
    pub fn spec(&self) -> &KvCacheSpec {
        &self.spec
    }

    /// Keys of `layer`; `[num_blocks, block_size, num_kv_heads, head_dim]`.
    pub fn keys(&self, layer: usize) -> &[f32] {
        &self.keys[layer]
    }

    /// Values of `layer`; `[num_blocks, block_size, num_kv_heads, head_dim]`.
    pub fn values(&self, layer: usize) -> &[f32] {
        &self.values[layer]
    }

    /// Writes `key`/`value` (`[num_tokens, num_kv_heads * head_dim]`) of `layer` at `slot_mapping`.
    pub fn write(
        &mut self,
        layer: usize,
        key: &CpuTensor,
        value: &CpuTensor,
        slot_mapping: &[u32],
    ) -> BackendResult<()> {
        let spec = self.spec;
        let width = spec.num_kv_heads * spec.head_dim;
        let num_slots = spec.num_blocks * spec.block_size;
        let err = |m: String| Err(BackendError::Device(format!("write_kv: {m}")));
        if layer >= spec.num_layers {
            return err(format!("layer {layer} out of range ({} layers)", spec.num_layers));
        }
        for (name, t) in [("key", key), ("value", value)] {
            if t.cols() != width || t.rows() != slot_mapping.len() {
                return err(format!(
                    "{name} is [{}, {}], expected [{}, {width}]",
                    t.rows(),
                    t.cols(),
                    slot_mapping.len()
                ));
            }
        }
        if let Some(&bad) = slot_mapping.iter().find(|&&s| s as usize >= num_slots) {
            return err(format!("slot {bad} out of range ({num_slots} slots)"));
        }
        for (t, &slot) in slot_mapping.iter().enumerate() {
            let dst = slot as usize * width;
            self.keys[layer][dst..dst + width].copy_from_slice(key.row(t));
            self.values[layer][dst..dst + width].copy_from_slice(value.row(t));
        }
        Ok(())
    }
}
