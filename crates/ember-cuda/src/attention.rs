//! Host side of the KV-cache write and the paged attention kernels: checks, kernel choice
//! (decode when every sequence brings one token, else the tensor-core prefill kernel), splits.

use ember_core::{AttentionParams, BackendError, BackendResult};

use crate::device::Device;
use crate::kernel_args::{
    PagedDecodeAttentionArgs, PagedDecodeReduceArgs, PrefillAttentionArgs, ReshapeAndCacheArgs,
};
use crate::kernels::{paged_decode_attention_bf16, prefill_attention_bf16};
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
    d.kernels().reshape_and_cache_bf16(
        row_geometry(key.rows, width),
        &ReshapeAndCacheArgs {
            k_cache: d.dev(&cache.keys[layer]),
            v_cache: d.dev(&cache.values[layer]),
            key: key.dev(d),
            value: value.dev(d),
            slot_mapping: step.addrs.slot_mapping,
            width: width as i32,
            num_slots: num_slots as i64,
        },
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
    let (kc, vc) = (d.dev(&cache.keys[layer]), d.dev(&cache.values[layer]));
    let no_kernel = || {
        err(
            "attention",
            format!(
                "no kernel for head_dim {} and block_size {}",
                spec.head_dim, spec.block_size
            ),
        )
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
        let launch = paged_decode_attention_bf16(spec.head_dim, spec.block_size).ok_or_else(no_kernel)?;
        launch(
            d.kernels(),
            decode_geometry(num_seqs, shape.num_heads, shape.num_kv_heads, split),
            &PagedDecodeAttentionArgs {
                out: out.dev(d),
                partial_acc: acc.dev(d),
                partial_max: max.dev(d),
                partial_sum: sum.dev(d),
                q: query.dev(d),
                k_cache: kc,
                v_cache: vc,
                block_tables: tables,
                seq_lens,
                max_blocks_per_seq: meta.max_blocks_per_seq as i32,
                num_heads: shape.num_heads as i32,
                num_kv_heads: shape.num_kv_heads as i32,
                scale,
                partition_size: split.partition_size as i32,
                num_splits: split.num_splits as i32,
            },
        )?;
        if split.num_splits > 1 {
            d.kernels().paged_decode_reduce_bf16(
                decode_reduce_geometry(num_seqs, shape.num_heads, shape.head_dim),
                &PagedDecodeReduceArgs {
                    out: out.dev(d),
                    partial_acc: acc.dev(d),
                    partial_max: max.dev(d),
                    partial_sum: sum.dev(d),
                    seq_lens,
                    num_heads: shape.num_heads as i32,
                    head_dim: shape.head_dim as i32,
                    partition_size: split.partition_size as i32,
                    num_splits: split.num_splits as i32,
                },
            )?;
        }
    } else {
        let (geometry, tiles) = prefill_geometry(num_seqs, max_query_len, shape.num_heads);
        let launch = prefill_attention_bf16(spec.head_dim, spec.block_size).ok_or_else(no_kernel)?;
        launch(
            d.kernels(),
            geometry,
            &PrefillAttentionArgs {
                out: out.dev(d),
                q: query.dev(d),
                k_cache: kc,
                v_cache: vc,
                block_tables: tables,
                seq_lens,
                query_start_loc: step.addrs.query_start_loc,
                max_blocks_per_seq: meta.max_blocks_per_seq as i32,
                num_heads: shape.num_heads as i32,
                num_kv_heads: shape.num_kv_heads as i32,
                scale,
                q_tiles_per_seq: tiles as i32,
            },
        )?;
    }
    Ok(out)
}
