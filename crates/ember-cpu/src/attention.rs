//! Paged causal attention over the KV cache (f32, f16, bf16 or Q8_0 elements).
//!
//! Token `t` of sequence `s` at position `p` attends to context positions `lo..=p` of `s`
//! (`lo` is 0, or `p + 1 - sliding_window` with a window), found through `s`'s block table;
//! entries of blocks wholly before every window of the step are never read (they may be
//! `NULL_BLOCK`). Scores are `scale * q . k`, soft-capped to `cap * tanh(score / cap)` when the
//! layer has a cap. Query head `h` reads KV head `h / (num_heads / num_kv_heads)`;
//! the query heads sharing a KV head are computed together, and so are the step's consecutive
//! rows of one sequence (up to 8: speculative verification's 1 + k rows, a prefill chunk), so
//! each cached row is read once for all of them; each row still attends only its own
//! positions. Softmax is two-pass in f32 (scores and their max, then `exp` and the weighted
//! values, see `attention_dot`); each (token, head) pair is computed in a fixed order whatever
//! the batch, the rows beside it, the thread split or the kernel family, so results are batch
//! invariant.

use crate::attention_dot::{scores, weighted_sum, KvRows};
use crate::kv_cache::CpuKvCache;
use crate::matmul::Isa;
use crate::tensor::CpuTensor;
use ember_core::{AttentionParams, AttentionShape, BackendError, BackendResult, StepBatch};
use rayon::ThreadPool;
use std::ops::Range;

/// Validated per-token context: sequence index, position and first attended position.
struct TokenCtx {
    seq: usize,
    pos: usize,
    lo: usize,
}

impl TokenCtx {
    /// Context positions the token attends to.
    fn len(&self) -> usize {
        self.pos + 1 - self.lo
    }
}

/// `[num_tokens, num_heads * head_dim]` attention output; see the module docs.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    pool: &ThreadPool,
    isa: Isa,
    meta: &StepBatch,
    query: &CpuTensor,
    cache: &CpuKvCache,
    layer: usize,
    params: &AttentionParams,
) -> BackendResult<CpuTensor> {
    let (shape, scale) = (params.shape, params.scale);
    let tokens = validate(query, cache, layer, params, meta)?;
    let AttentionShape {
        num_heads,
        num_kv_heads,
        head_dim,
    } = shape;
    let spec = cache.spec();
    let group = num_heads / num_kv_heads;
    let kv_width = num_kv_heads * head_dim;
    let mut out = CpuTensor::zeros(tokens.len(), num_heads * head_dim)?;
    if tokens.is_empty() || head_dim == 0 {
        return Ok(out);
    }
    let threads = pool.current_num_threads();
    let runs = row_runs(&tokens, num_kv_heads, threads);
    let total = runs.len() * num_kv_heads;
    let out_ptr = OutPtr(out.as_mut_slice().as_mut_ptr());
    // (run, KV head) units `start..end`, each computed alone in a fixed order.
    let run = |start: usize, end: usize| {
        let (mut row_offs, mut offs_seq, mut offs_lo) = (Vec::new(), usize::MAX, 0);
        let (mut offs, mut spans, mut probs) = (Vec::new(), Vec::new(), Vec::new());
        let (mut q, mut acc, mut denoms) = (Vec::new(), Vec::new(), Vec::new());
        for unit in start..end {
            let (rows, kvh) = (runs[unit / num_kv_heads].clone(), unit % num_kv_heads);
            let ctxs = &tokens[rows.clone()];
            let seq = ctxs[0].seq;
            let lo = ctxs.iter().map(|c| c.lo).min().unwrap_or(0);
            let end_pos = ctxs.iter().map(|c| c.pos + 1).max().unwrap_or(lo);
            if offs_seq != seq || lo < offs_lo {
                // Element offset (head 0) of every cached row of the sequence from the run's
                // first attended position; later runs of the sequence start later.
                let table = meta.block_table(seq);
                let len = meta.seq_lens[seq] as usize;
                row_offs.clear();
                row_offs.extend((lo..len).map(|j| {
                    let slot = table[j / spec.block_size] as usize * spec.block_size + j % spec.block_size;
                    slot * kv_width
                }));
                (offs_seq, offs_lo) = (seq, lo);
            }
            let n = end_pos - lo;
            offs.clear();
            offs.extend(row_offs[lo - offs_lo..][..n].iter().map(|&o| o + kvh * head_dim));
            // Query heads of the run, row by row: each attends its own positions.
            let heads = kvh * group * head_dim..(kvh + 1) * group * head_dim;
            let num_q = ctxs.len() * group;
            q.clear();
            spans.clear();
            for (t, c) in rows.clone().zip(ctxs) {
                q.extend_from_slice(&query.row(t)[heads.clone()]);
                spans.extend((0..group).map(|_| c.lo - lo..c.pos + 1 - lo));
            }
            let kv_rows = |bytes| KvRows {
                bytes,
                dtype: cache.dtype(),
                offs: &offs,
                spans: &spans,
            };
            probs.resize(num_q * n, 0.0);
            scores(
                isa,
                &q,
                head_dim,
                &kv_rows(cache.key_bytes(layer)),
                scale,
                &mut probs,
            );
            denoms.clear();
            for (p, span) in probs.chunks_exact_mut(n).zip(&spans) {
                let p = &mut p[span.clone()];
                if let Some(cap) = params.logit_soft_cap {
                    p.iter_mut().for_each(|s| *s = (*s / cap).tanh() * cap);
                }
                let max = p.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
                let mut denom = 0.0f32;
                for s in p.iter_mut() {
                    *s = (*s - max).exp();
                    denom += *s;
                }
                denoms.push(denom);
            }
            acc.clear();
            acc.resize(num_q * head_dim, 0.0);
            weighted_sum(
                isa,
                &probs,
                head_dim,
                &kv_rows(cache.value_bytes(layer)),
                &mut acc,
            );
            for (a, &denom) in acc.chunks_exact_mut(head_dim).zip(&denoms) {
                let inv = 1.0 / denom;
                a.iter_mut().for_each(|v| *v *= inv);
            }
            for (t, a) in rows.zip(acc.chunks_exact(group * head_dim)) {
                // SAFETY: unit (run, kvh) alone owns output elements `heads` of its rows `t`,
                // inside the `[tokens, heads * head_dim]` buffer.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        a.as_ptr(),
                        out_ptr.get().add(t * num_heads * head_dim + heads.start),
                        a.len(),
                    )
                };
            }
        }
    };
    let work: usize = tokens.iter().map(TokenCtx::len).sum::<usize>() * num_heads * head_dim;
    if work < (1 << 16) || threads <= 1 {
        run(0, total);
    } else {
        // Chunks of about equal work (later prefill tokens see longer contexts), a few per thread.
        let bounds = split_by_work(&tokens, &runs, num_kv_heads, threads * 4);
        crate::par::for_each_chunk(pool, bounds.len() - 1, |i| run(bounds[i], bounds[i + 1]));
    }
    Ok(out)
}

/// Most query rows of one sequence that walk its context together.
const MAX_RUN_ROWS: usize = 8;

/// The step's tokens cut into runs of consecutive rows of one sequence (at most
/// [`MAX_RUN_ROWS`], fewer when that leaves under two (run, KV head) units per thread), each
/// of which reads its sequence's K/V rows once for all its rows.
fn row_runs(tokens: &[TokenCtx], num_kv_heads: usize, threads: usize) -> Vec<Range<usize>> {
    let cut = |max_rows: usize| {
        let mut runs: Vec<Range<usize>> = Vec::new();
        for (t, ctx) in tokens.iter().enumerate() {
            match runs.last_mut() {
                Some(r) if tokens[r.start].seq == ctx.seq && r.len() < max_rows => r.end = t + 1,
                _ => runs.push(t..t + 1),
            }
        }
        runs
    };
    let mut max_rows = MAX_RUN_ROWS;
    loop {
        let runs = cut(max_rows);
        if max_rows == 1 || runs.len() * num_kv_heads >= 2 * threads {
            return runs;
        }
        max_rows /= 2;
    }
}

/// Unit boundaries `[0, .., runs * num_kv_heads]` cutting the (run, KV head) units into at
/// most `num_chunks` runs of about equal context length.
fn split_by_work(
    tokens: &[TokenCtx],
    runs: &[Range<usize>],
    num_kv_heads: usize,
    num_chunks: usize,
) -> Vec<usize> {
    let run_len = |r: &Range<usize>| tokens[r.clone()].iter().map(TokenCtx::len).sum::<usize>();
    let total: usize = runs.iter().map(run_len).sum::<usize>() * num_kv_heads;
    let target = total.div_ceil(num_chunks.max(1)).max(1);
    let num_units = runs.len() * num_kv_heads;
    let mut bounds = vec![0];
    let mut acc = 0;
    for unit in 0..num_units {
        acc += run_len(&runs[unit / num_kv_heads]);
        if acc >= target && unit + 1 < num_units {
            bounds.push(unit + 1);
            acc = 0;
        }
    }
    bounds.push(num_units);
    bounds
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

/// Checks the step metadata against the query and cache; returns each token's context.
fn validate(
    query: &CpuTensor,
    cache: &CpuKvCache,
    layer: usize,
    params: &AttentionParams,
    meta: &StepBatch,
) -> BackendResult<Vec<TokenCtx>> {
    let (shape, spec) = (params.shape, cache.spec());
    let err = |m: String| BackendError::Device(format!("attention: {m}"));
    if params.sliding_window == Some(0) || params.logit_soft_cap.is_some_and(|c| c.is_nan() || c <= 0.0) {
        return Err(err(format!(
            "sliding_window {:?} and logit_soft_cap {:?} must be positive",
            params.sliding_window, params.logit_soft_cap
        )));
    }
    let first_pos = |pos: usize| params.sliding_window.map_or(0, |w| (pos + 1).saturating_sub(w));
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
        let (start, end) = (qsl[seq] as usize, qsl[seq + 1] as usize);
        // The step's tokens of a sequence come in position order; the first reads furthest back.
        let first_block = meta.positions.get(start).map_or(0, |&p| first_pos(p as usize)) / spec.block_size;
        if let Some(&b) = meta.block_table(seq)[first_block.min(blocks_needed)..blocks_needed]
            .iter()
            .find(|&&b| b as usize >= spec.num_blocks)
        {
            return Err(err(format!(
                "sequence {seq}: block id {b} out of range ({} blocks)",
                spec.num_blocks
            )));
        }
        for t in start..end {
            let pos = meta.positions[t] as usize;
            if pos >= seq_len {
                return Err(err(format!(
                    "token {t} at position {pos} is past its sequence length {seq_len}"
                )));
            }
            let lo = first_pos(pos);
            if lo / spec.block_size < first_block {
                return Err(err(format!(
                    "token {t} at position {pos} comes before its sequence's first token"
                )));
            }
            tokens.push(TokenCtx { seq, pos, lo });
        }
    }
    Ok(tokens)
}
