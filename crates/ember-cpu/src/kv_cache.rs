//! The paged KV cache, stored as f32, f16 or bf16 (`kv_cache_dtype`).
//!
//! Layout, per layer, for K and V each: `[num_blocks, block_size, num_kv_heads, head_dim]`
//! row-major elements of the cache dtype. Cache slot `s = block_id * block_size + offset`
//! holds one token's `[num_kv_heads, head_dim]` at element offset `s * num_kv_heads * head_dim`.
//! Writes round f32 to the cache dtype to nearest even; reads widen exactly. The storage is
//! allocated zeroed by the system, so it takes physical memory only as the cache fills.

use crate::alloc::try_zeroed_vec;
use crate::tensor::CpuTensor;
use ember_core::{BackendError, BackendResult, KvCacheSpec, WeightDType};

/// The whole model's paged K/V storage (layout in the module docs).
pub struct CpuKvCache {
    spec: KvCacheSpec,
    dtype: WeightDType,
    /// Per layer: K `[num_blocks, block_size, num_kv_heads, head_dim]` as little-endian bytes.
    keys: Vec<Vec<u8>>,
    /// Per layer: V, same layout.
    values: Vec<Vec<u8>>,
}

impl CpuKvCache {
    /// Allocates a zeroed cache of `dtype` (F32, F16 or BF16); `OutOfMemory` when it does not fit.
    pub fn allocate(spec: &KvCacheSpec, dtype: WeightDType) -> BackendResult<Self> {
        if dtype.is_quantized() {
            return Err(BackendError::Device(format!(
                "KV cache dtype {dtype} is not a float format"
            )));
        }
        let per_layer = spec
            .num_blocks
            .checked_mul(spec.block_size)
            .and_then(|n| n.checked_mul(spec.num_kv_heads))
            .and_then(|n| n.checked_mul(spec.head_dim))
            .and_then(|n| n.checked_mul(dtype.block_bytes()))
            .ok_or_else(|| crate::alloc::oom("KV cache", usize::MAX))?;
        let mut keys = Vec::new();
        let mut values = Vec::new();
        for _ in 0..spec.num_layers {
            keys.push(try_zeroed_vec::<u8>(per_layer, "KV cache")?);
            values.push(try_zeroed_vec::<u8>(per_layer, "KV cache")?);
        }
        Ok(Self {
            spec: *spec,
            dtype,
            keys,
            values,
        })
    }

    /// The geometry it was allocated with.
    pub fn spec(&self) -> &KvCacheSpec {
        &self.spec
    }

    /// Element encoding (F32, F16 or BF16).
    pub fn dtype(&self) -> WeightDType {
        self.dtype
    }

    /// Raw keys of `layer`; `[num_blocks, block_size, num_kv_heads, head_dim]` elements.
    pub fn key_bytes(&self, layer: usize) -> &[u8] {
        &self.keys[layer]
    }

    /// Raw values of `layer`; `[num_blocks, block_size, num_kv_heads, head_dim]` elements.
    pub fn value_bytes(&self, layer: usize) -> &[u8] {
        &self.values[layer]
    }

    /// Keys of `layer` widened to f32; `[num_blocks, block_size, num_kv_heads, head_dim]`.
    pub fn keys(&self, layer: usize) -> Vec<f32> {
        self.widen(&self.keys[layer])
    }

    /// Values of `layer` widened to f32; `[num_blocks, block_size, num_kv_heads, head_dim]`.
    pub fn values(&self, layer: usize) -> Vec<f32> {
        self.widen(&self.values[layer])
    }

    fn widen(&self, bytes: &[u8]) -> Vec<f32> {
        let mut out = vec![0.0; bytes.len() / self.dtype.block_bytes()];
        crate::blocks::dequantize_row(self.dtype, bytes, &mut out);
        out
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
        let elem = self.dtype.block_bytes();
        for (t, &slot) in slot_mapping.iter().enumerate() {
            let dst = slot as usize * width * elem..(slot as usize + 1) * width * elem;
            encode(self.dtype, key.row(t), &mut self.keys[layer][dst.clone()]);
            encode(self.dtype, value.row(t), &mut self.values[layer][dst]);
        }
        Ok(())
    }
}

/// Stores `x` as `dtype` (rounded to nearest even) into `out` (`x.len()` elements).
fn encode(dtype: WeightDType, x: &[f32], out: &mut [u8]) {
    match dtype {
        WeightDType::F16 => {
            for (o, &v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes());
            }
        }
        WeightDType::BF16 => {
            for (o, &v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes());
            }
        }
        _ => {
            for (o, &v) in out.chunks_exact_mut(4).zip(x) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
    }
}
