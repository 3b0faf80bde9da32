//! Paged causal attention over the f32 KV cache.
//!
//! Token `t` of sequence `s` at position `p` attends to context positions `0..=p` of `s`,
//! found through `s`'s block table. Query head `h` reads KV head `h / (num_heads / num_kv_heads)`.
//! Softmax is two-pass in f32 (scores and their max, then `exp` and the weighted values);
//! each (token, head) pair is computed independently in a fixed order, so results do not
//! depend on the batch or the thread split.

use crate::kv_cache::CpuKvCache;
use crate::tensor::CpuTensor;
use ember_core::{AttentionParams, AttentionShape, BackendError, BackendResult, StepBatch};
use rayon::ThreadPool;

/// Validated per-token context: sequence index and position.
struct TokenCtx {
    seq: usize,
    pos: usize,
}

/// `[num_tokens, num_heads * head_dim]` attention output; see the module docs.
pub fn attention(
    pool: &ThreadPool,
    meta: &StepBatch,
    query: &CpuTensor,
    cache: &CpuKvCache,
    layer: usize,
    params: &AttentionParams,
) -> BackendResult<CpuTensor> {
    params.require_plain("cpu")?;
    let (shape, scale) = (params.shape, params.scale);
    let tokens = validate(query, cache, layer, shape, meta)?;
    let AttentionShape {
        num_heads,
        num_kv_heads,
        head_dim,
    } = shape;
    let spec = cache.spec();
    let group = num_heads / num_kv_heads;
    let (keys, values) = (cache.keys(layer), cache.values(layer));
    let mut out = CpuTensor::zeros(tokens.len(), num_heads * head_dim)?;
    let total = tokens.len() * num_heads;
    if total == 0 || head_dim == 0 {
        return Ok(out);
    }
    let out_ptr = OutPtr(out.as_mut_slice().as_mut_ptr());
    // (token, head) pairs `start..end`; each pair is computed alone in a fixed order.
    let run = |start: usize, end: usize| {
        let mut scores = Vec::new();
        for idx in start..end {
            let (t, h) = (idx / num_heads, idx % num_heads);
            let ctx = &tokens[t];
            let q = &query.row(t)[h * head_dim..(h + 1) * head_dim];
            let table = meta.block_table(ctx.seq);
            let kv_off = (h / group) * head_dim;
            let off = |j: usize| {
                let slot = table[j / spec.block_size] as usize * spec.block_size + j % spec.block_size;
                slot * num_kv_heads * head_dim + kv_off
            };
            // Pass 1: scores and their maximum.
            scores.clear();
            let mut max = f32::NEG_INFINITY;
            for j in 0..=ctx.pos {
                let o = off(j);
                let score = dot(q, &keys[o..o + head_dim]) * scale;
                max = max.max(score);
                scores.push(score);
            }
            // Pass 2: unnormalized probabilities, their sum, and the weighted values.
            // SAFETY: pair `idx` owns output elements `idx * head_dim..(idx + 1) * head_dim`,
            // inside the `[tokens, heads * head_dim]` buffer; no other task writes them.
            let acc = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(idx * head_dim), head_dim) };
            let mut denom = 0.0f32;
            for (j, score) in scores.iter().enumerate() {
                let p = (score - max).exp();
                denom += p;
                let o = off(j);
                for (a, &v) in acc.iter_mut().zip(&values[o..o + head_dim]) {
                    *a += p * v;
                }
            }
            let inv = 1.0 / denom;
            acc.iter_mut().for_each(|a| *a *= inv);
        }
    };
    let work: usize = tokens.iter().map(|c| c.pos + 1).sum::<usize>() * num_heads * head_dim;
    let threads = pool.current_num_threads();
    if work < (1 << 16) || threads <= 1 {
        run(0, total);
    } else {
        let chunk = total.div_ceil(threads);
        crate::par::for_each_chunk(pool, total.div_ceil(chunk), |i| {
            run(i * chunk, ((i + 1) * chunk).min(total))
        });
    }
    Ok(out)
}

/// Output pointer shared by the tasks; each writes a disjoint range.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);

impl OutPtr {
    /// The pointer (a method, so closures capture the `Sync` wrapper, not the raw field).
    fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: tasks write disjoint ranges of the output and the buffer outlives them.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// Dot product with 8 independent lanes (vectorizes without reassociation; fixed order).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    let mut s = crate::dot_scalar::hsum8(&lanes);
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

/// Checks the step metadata against the query and cache; returns each token's context.
fn validate(
    query: &CpuTensor,
    cache: &CpuKvCache,
    layer: usize,
    shape: AttentionShape,
    meta: &StepBatch,
) -> BackendResult<Vec<TokenCtx>> {
    let spec = cache.spec();
    let err = |m: String| BackendError::Device(format!("attention: {m}"));
    if layer >= spec.num_layers {
        return Err(err(format!(
            "layer {layer} out of range ({} layers)",
            spec.num_layers
        )));
    }
    if shape.num_kv_heads == 0
        || !shape.num_heads.is_multiple_of(shape.num_kv_heads)
        || shape.num_kv_heads != spec.num_kv_heads
        || shape.head_dim != spec.head_dim
    {
        return Err(err(format!("shape {shape:?} does not fit the cache {spec:?}")));
    }
    let num_tokens = meta.num_tokens();
    if query.rows() != num_tokens || query.cols() != shape.num_heads * shape.head_dim {
        return Err(err(format!(
            "query is [{}, {}], expected [{num_tokens}, {}]",
            query.rows(),
            query.cols(),
            shape.num_heads * shape.head_dim
        )));
    }
    let num_seqs = meta.num_seqs();
    let qsl = &meta.query_start_loc;
    if qsl.len() != num_seqs + 1
        || qsl.first() != Some(&0)
        || qsl.last().map(|&v| v as usize) != Some(num_tokens)
        || qsl.windows(2).any(|w| w[0] > w[1])
    {
        return Err(err(format!(
            "query_start_loc {qsl:?} does not split {num_tokens} tokens into {num_seqs} sequences"
        )));
    }
    if meta.block_tables.len() < num_seqs * meta.max_blocks_per_seq {
        return Err(err(format!(
            "block_tables has {} entries, expected {num_seqs} x {}",
            meta.block_tables.len(),
            meta.max_blocks_per_seq
        )));
    }
    let mut tokens = Vec::with_capacity(num_tokens);
    for seq in 0..num_seqs {
        let seq_len = meta.seq_lens[seq] as usize;
        let blocks_needed = seq_len.div_ceil(spec.block_size);
        if blocks_needed > meta.max_blocks_per_seq {
            return Err(err(format!(
                "sequence {seq}: {seq_len} tokens need {blocks_needed} blocks, table holds {}",
                meta.max_blocks_per_seq
            )));
        }
        if let Some(&b) = meta.block_table(seq)[..blocks_needed]
            .iter()
            .find(|&&b| b as usize >= spec.num_blocks)
        {
            return Err(err(format!(
                "sequence {seq}: block id {b} out of range ({} blocks)",
                spec.num_blocks
            )));
        }
        for t in qsl[seq] as usize..qsl[seq + 1] as usize {
            let pos = meta.positions[t] as usize;
            if pos >= seq_len {
                return Err(err(format!(
                    "token {t} at position {pos} is past its sequence length {seq_len}"
                )));
            }
            tokens.push(TokenCtx { seq, pos });
        }
    }
    Ok(tokens)
}
