//! The paged KV cache, stored as f32, f16, bf16 or Q8_0 (`kv_cache_dtype`).
//!
//! Layout, per layer, for K and V each: `[num_blocks, block_size, num_kv_heads, head_dim]`
//! row-major elements of the cache dtype. Cache slot `s = block_id * block_size + offset`
//! holds one token's `[num_kv_heads, head_dim]` at element offset `s * num_kv_heads * head_dim`.
//! Writes round f32 to the cache dtype to nearest even; reads widen exactly. Q8_0 (the
//! `"int8"` cache) stores each 32 elements of a head row as GGUF's Q8_0 block: an f16 scale
//! `d = max|x| / 127` and 32 `i8`s `round(x / d)`; an element reads back as `q * d`, which is
//! exact in f32, so attention widens it like a float element (it needs `head_dim % 32 == 0`).
//! The storage is allocated zeroed by the system, so it takes physical memory only as the
//! cache fills.

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

/// True for the element types the CPU cache stores (F32, F16, BF16, Q8_0).
pub fn is_kv_dtype(dtype: WeightDType) -> bool {
    matches!(
        dtype,
        WeightDType::F32 | WeightDType::F16 | WeightDType::BF16 | WeightDType::Q8_0
    )
}

/// An error unless `spec`'s head rows are whole blocks of `dtype` (Q8_0 needs
/// `head_dim % 32 == 0`).
pub fn check_geometry(spec: &KvCacheSpec, dtype: WeightDType) -> BackendResult<()> {
    if !is_kv_dtype(dtype) {
        return Err(BackendError::Device(format!(
            "KV cache dtype {dtype} is not one the CPU cache stores (F32, F16, BF16, Q8_0)"
        )));
    }
    if !spec.head_dim.is_multiple_of(dtype.block_len()) {
        return Err(BackendError::Device(format!(
            "kv_cache_dtype \"int8\" needs head_dim to be a multiple of {}: head_dim {} is not a \
             multiple of {}; use \"float16\"",
            dtype.block_len(),
            spec.head_dim,
            dtype.block_len()
        )));
    }
    Ok(())
}

/// Byte offset of element `elem` (a multiple of the block length, or any index of a float
/// type) in a layer stored as `dtype`.
pub fn elem_byte(dtype: WeightDType, elem: usize) -> usize {
    elem / dtype.block_len() * dtype.block_bytes()
}

impl CpuKvCache {
    /// Allocates a zeroed cache of `dtype` (F32, F16, BF16 or Q8_0); `OutOfMemory` when it does
    /// not fit.
    pub fn allocate(spec: &KvCacheSpec, dtype: WeightDType) -> BackendResult<Self> {
        check_geometry(spec, dtype)?;
        let per_layer = spec
            .num_blocks
            .checked_mul(spec.block_size)
            .and_then(|n| n.checked_mul(spec.num_kv_heads))
            .and_then(|n| n.checked_mul(spec.head_dim))
            .map(|n| elem_byte(dtype, n))
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

    /// Element encoding (F32, F16, BF16 or Q8_0).
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
        let mut out = vec![0.0; bytes.len() / self.dtype.block_bytes() * self.dtype.block_len()];
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
        for (t, &slot) in slot_mapping.iter().enumerate() {
            let slot = slot as usize;
            let dst = elem_byte(self.dtype, slot * width)..elem_byte(self.dtype, (slot + 1) * width);
            encode(self.dtype, key.row(t), &mut self.keys[layer][dst.clone()]);
            encode(self.dtype, value.row(t), &mut self.values[layer][dst]);
        }
        Ok(())
    }
}

/// Stores `x` as `dtype` (rounded to nearest even) into `out` (`x.len()` elements).
fn encode(dtype: WeightDType, x: &[f32], out: &mut [u8]) {
    match dtype {
        WeightDType::Q8_0 => {
            for (o, xb) in out.chunks_exact_mut(34).zip(x.chunks_exact(32)) {
                crate::quant::encode_q8_0_block(xb, o);
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_rows_round_trip_within_half_a_step() {
        let mut rng = crate::test_util::Rng::new(7);
        let x = rng.vec(64, 3.0);
        let mut bytes = vec![0u8; 68];
        encode(WeightDType::Q8_0, &x, &mut bytes);
        let mut back = vec![0.0f32; 64];
        crate::blocks::dequantize_row(WeightDType::Q8_0, &bytes, &mut back);
        for (xb, bb) in x.chunks(32).zip(back.chunks(32)) {
            let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            // The f16 scale is within 2^-11 of amax / 127; rounding adds half a step.
            let step = amax / 127.0 * (1.0 + 1.0 / 1024.0);
            for (a, b) in xb.iter().zip(bb) {
                assert!((a - b).abs() <= 0.5 * step + amax / 1024.0, "{a} vs {b}");
            }
        }
        let mut zeros = vec![1u8; 34];
        crate::quant::encode_q8_0_block(&[0.0; 32], &mut zeros);
        assert!(zeros.iter().all(|&b| b == 0));
        crate::quant::encode_q8_0_block(&[f32::INFINITY; 32], &mut zeros);
        assert!(zeros.iter().all(|&b| b == 0), "a non-finite block stores zeros");
    }
}
