//! Host side of the KV-cache write and the paged attention kernels: checks, kernel choice
//! (decode when every sequence brings one token, else the tensor-core prefill kernel), splits.

use ember_core::{AttentionParams, BackendError, BackendResult};

use crate::device::{Arg, Device};
use crate::launch::{decode_geometry, decode_reduce_geometry, decode_split, prefill_geometry, row_geometry};
use crate::step::CudaStep;
use crate::tensor::{CudaKvCache, CudaTensor};

fn err(op: &str, detail: String) -> BackendError {
    BackendError::Device(format!("{op}: {detail}"))
}

/// Writes `key`/`value` rows into `layer` of the cache at the step's `slot_mapping`.
pub fn write_kv(
    d: &Device,
    step: &CudaStep,
    cache: &mut CudaKvCache,
    layer: usize,
    key: &CudaTensor,
    value: &CudaTensor,
) -> BackendResult<()> {
    let slot_mapping = &step.batch.slot_mapping;
    let spec = cache.spec;
    let width = spec.num_kv_heads * spec.head_dim;
    let num_slots = spec.num_blocks * spec.block_size;
    if layer >= spec.num_layers {
        return Err(err(
            "write_kv",
            format!("layer {layer} out of range ({} layers)", spec.num_layers),
        ));
    }
    for (name, t) in [("key", key), ("value", value)] {
        if t.cols != width || t.rows != slot_mapping.len() {
            return Err(err(
                "write_kv",
                format!(
                    "{name} is [{}, {}], expected [{}, {width}]",
                    t.rows,
                    t.cols,
                    slot_mapping.len()
                ),
            ));
        }
    }
    // u32::MAX (-1 on the device) marks a padding row whose write is skipped.
    if let Some(&bad) = slot_mapping
        .iter()
        .find(|&&s| s != u32::MAX && s as usize >= num_slots)
    {
        return Err(err(
            "write_kv",
            format!("slot {bad} out of range ({num_slots} slots)"),
        ));
    }
    d.launch(
        "ember_reshape_and_cache_bf16",
        row_geometry(key.rows, width),
        &[
            Arg::Ptr(d.ptr(&cache.keys[layer])),
            Arg::Ptr(d.ptr(&cache.values[layer])),
            Arg::Ptr(key.ptr(d)),
            Arg::Ptr(value.ptr(d)),
            Arg::Ptr(step.addrs.slot_mapping),
            Arg::I32(width as i32),
            Arg::I64(num_slots as i64),
        ],
    )
}

/// Causal attention of the step's queries over the paged cache (see `Backend::attention`).
pub fn attention(
    d: &Device,
    step: &CudaStep,
    query: &CudaTensor,
    cache: &CudaKvCache,
    layer: usize,
    params: &AttentionParams,
) -> BackendResult<CudaTensor> {
    params.require_plain("cuda")?;
    let (shape, scale, meta) = (params.shape, params.scale, &step.batch);
    let spec = cache.spec;
    let (num_seqs, num_tokens) = (meta.num_seqs(), meta.num_tokens());
    if layer >= spec.num_layers
        || shape.num_kv_heads != spec.num_kv_heads
        || shape.head_dim != spec.head_dim
        || !shape.num_heads.is_multiple_of(shape.num_kv_heads.max(1))
    {
        return Err(err(
            "attention",
            format!("layer {layer}, shape {shape:?} do not fit the cache {spec:?}"),
        ));
    }
    let q_dim = shape.num_heads * shape.head_dim;
    let qsl = &meta.query_start_loc;
    if query.rows != num_tokens
        || query.cols != q_dim
        || qsl.len() != num_seqs + 1
        || qsl.last().map(|&v| v as usize) != Some(num_tokens)
        || meta.block_tables.len() < num_seqs * meta.max_blocks_per_seq
    {
        return Err(err(
            "attention",
            format!(
                "query [{}, {}] and metadata disagree ({num_tokens} tokens, {num_seqs} sequences)",
                query.rows, query.cols
            ),
        ));
    }
    let max_seq_len = meta.max_seq_len();
    if max_seq_len.div_ceil(spec.block_size) > meta.max_blocks_per_seq {
        return Err(err(
            "attention",
            format!(
                "{max_seq_len} tokens need more than {} blocks",
                meta.max_blocks_per_seq
            ),
        ));
    }
    let max_query_len = meta.max_query_len();
    let out = step.tensor(d, num_tokens, q_dim, "attention")?;
    if num_tokens == 0 {
        return Ok(out);
    }
    let (tables, seq_lens) = (step.addrs.block_tables, step.addrs.seq_lens);
    let suffix = format!("bf16_h{}_b{}", spec.head_dim, spec.block_size);
    let (kc, vc) = (d.ptr(&cache.keys[layer]), d.ptr(&cache.values[layer]));
    let common = |a: &mut Vec<Arg>| {
        a.extend([Arg::Ptr(tables), Arg::Ptr(seq_lens)]);
    };
    if max_query_len == 1 && num_tokens == num_seqs {
        // A graph fixes the split for every context of its bucket.
        let split = step.decode_split.unwrap_or_else(|| {
            decode_split(
                max_seq_len,
                num_seqs,
                shape.num_heads,
                shape.num_kv_heads,
                d.num_sms(),
            )
        });
        let partial_len = if split.num_splits > 1 {
            num_seqs * shape.num_heads * split.num_splits
        } else {
            0
        };
        let acc = step.scratch_f32(d, partial_len * shape.head_dim, "decode partials")?;
        let max = step.scratch_f32(d, partial_len, "decode partials")?;
        let sum = step.scratch_f32(d, partial_len, "decode partials")?;
        let mut args = vec![
            Arg::Ptr(out.ptr(d)),
            Arg::Ptr(acc.ptr(d)),
            Arg::Ptr(max.ptr(d)),
            Arg::Ptr(sum.ptr(d)),
            Arg::Ptr(query.ptr(d)),
            Arg::Ptr(kc),
            Arg::Ptr(vc),
        ];
        common(&mut args);
        args.extend([
            Arg::I32(meta.max_blocks_per_seq as i32),
            Arg::I32(shape.num_heads as i32),
            Arg::I32(shape.num_kv_heads as i32),
            Arg::F32(scale),
            Arg::I32(split.partition_size as i32),
            Arg::I32(split.num_splits as i32),
        ]);
        d.launch(
            &format!("ember_paged_decode_attention_{suffix}"),
            decode_geometry(num_seqs, shape.num_heads, shape.num_kv_heads, split),
            &args,
        )?;
        if split.num_splits > 1 {
            d.launch(
                "ember_paged_decode_reduce_bf16",
                decode_reduce_geometry(num_seqs, shape.num_heads, shape.head_dim),
                &[
                    Arg::Ptr(out.ptr(d)),
                    Arg::Ptr(acc.ptr(d)),
                    Arg::Ptr(max.ptr(d)),
                    Arg::Ptr(sum.ptr(d)),
                    Arg::Ptr(seq_lens),
                    Arg::I32(shape.num_heads as i32),
                    Arg::I32(shape.head_dim as i32),
                    Arg::I32(split.partition_size as i32),
                    Arg::I32(split.num_splits as i32),
                ],
            )?;
        }
    } else {
        let (geometry, tiles) = prefill_geometry(num_seqs, max_query_len, shape.num_heads);
        let mut args = vec![
            Arg::Ptr(out.ptr(d)),
            Arg::Ptr(query.ptr(d)),
            Arg::Ptr(kc),
            Arg::Ptr(vc),
        ];
        common(&mut args);
        args.extend([
            Arg::Ptr(step.addrs.query_start_loc),
            Arg::I32(meta.max_blocks_per_seq as i32),
            Arg::I32(shape.num_heads as i32),
            Arg::I32(shape.num_kv_heads as i32),
            Arg::F32(scale),
            Arg::I32(tiles as i32),
        ]);
        d.launch(&format!("ember_prefill_attention_{suffix}"), geometry, &args)?;
    }
    Ok(out)
}
