//! CUDA-graph planning, all host logic: decode steps are padded up to the next captured batch
//! size (1, 2, 4, 8, 16, 32, then multiples of 32 up to 256) and their context up to a power
//! of two (a graph bakes in the decode split and the block-table stride), and each
//! (batch, context) key moves through warm-up, capture and replay.

use std::collections::HashMap;

use ember_core::{BackendStats, StepBatch};

/// Largest batch a decode graph is captured for.
pub const MAX_GRAPH_BATCH: usize = 256;
/// Smallest context bucket.
pub const MIN_GRAPH_CONTEXT: usize = crate::launch::SPLIT_MIN_CONTEXT;
/// Longest context a graph is captured for (longer decode steps run eagerly: their attention
/// dominates the launch overhead, and the split partials would bloat the arena).
pub const MAX_GRAPH_CONTEXT: usize = 16384;

/// Batch sizes captured for a scheduler allowing `max_num_seqs` sequences per step.
pub fn capture_sizes(max_num_seqs: usize) -> Vec<usize> {
    let limit = max_num_seqs.min(MAX_GRAPH_BATCH);
    let mut sizes: Vec<usize> = [1, 2, 4, 8, 16]
        .into_iter()
        .chain((32..=MAX_GRAPH_BATCH).step_by(32))
        .collect();
    // Keep sizes up to the first one that covers `limit`.
    let cover = sizes.iter().position(|&s| s >= limit).unwrap_or(sizes.len() - 1);
    sizes.truncate(cover + 1);
    sizes
}

/// The captured size a batch of `num_seqs` is padded to, or `None` when it is too large.
pub fn bucket_for(num_seqs: usize, sizes: &[usize]) -> Option<usize> {
    sizes.iter().copied().find(|&s| s >= num_seqs && num_seqs > 0)
}

/// One captured graph: padded batch size and context bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GraphKey {
    /// Sequences (padded).
    pub batch: usize,
    /// Longest context the graph's attention covers (tokens).
    pub context: usize,
}

/// Which steps run as graphs, and how they are padded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphPlan {
    /// Captured batch sizes.
    pub sizes: Vec<usize>,
    /// Longest context covered.
    pub max_context: usize,
    /// Tokens per KV block.
    pub block_size: usize,
}

impl GraphPlan {
    /// The plan for a scheduler of `max_num_seqs` sequences and `max_model_len` tokens.
    pub fn new(max_num_seqs: usize, max_model_len: usize, block_size: usize) -> Self {
        Self {
            sizes: capture_sizes(max_num_seqs),
            max_context: max_model_len.clamp(1, MAX_GRAPH_CONTEXT),
            block_size,
        }
    }

    /// The context bucket of a step whose longest sequence has `len` tokens.
    pub fn context_bucket(&self, len: usize) -> Option<usize> {
        (len <= self.max_context).then(|| {
            len.max(MIN_GRAPH_CONTEXT)
                .next_power_of_two()
                .min(self.max_context)
        })
    }

    /// The largest key (sizes the arena).
    pub fn largest(&self) -> GraphKey {
        GraphKey {
            batch: *self.sizes.last().unwrap_or(&1),
            context: self.max_context,
        }
    }

    /// The graph a step runs as, or `None` for an eager step: prefill or mixed steps (more
    /// tokens than sequences), steps that do not sample every sequence's row in order,
    /// batches above the largest size, contexts above `max_context`.
    pub fn key_for(&self, meta: &StepBatch) -> Option<GraphKey> {
        let n = meta.num_seqs();
        let pure_decode = n > 0
            && meta.input_ids.len() == n
            && meta.num_tokens() == n
            && meta.query_start_loc.iter().copied().eq(0..=n as u32)
            && meta.logits_indices.iter().copied().eq(0..n as u32);
        if !pure_decode {
            return None;
        }
        let longest = meta.seq_lens.iter().copied().max().unwrap_or(0) as usize;
        Some(GraphKey {
            batch: bucket_for(n, &self.sizes)?,
            context: self.context_bucket(longest)?,
        })
    }

    /// Block-table stride of a graph.
    pub fn blocks_per_seq(&self, key: GraphKey) -> usize {
        key.context.div_ceil(self.block_size.max(1))
    }
}

/// The step padded to `key`: inert rows (token 0, position 0, slot -1 so no KV write,
/// seq_len 0 so attention writes zeros), every block table re-strided to `blocks_per_seq`,
/// one logits row per sequence. `meta` must be a pure-decode step that fits the key.
pub fn pad_decode_step(meta: &StepBatch, key: GraphKey, blocks_per_seq: usize) -> StepBatch {
    let n = meta.num_seqs();
    let batch = key.batch.max(n);
    let padded = |real: &[u32], fill: u32| {
        let mut v = real.to_vec();
        v.resize(batch, fill);
        v
    };
    let mut block_tables = vec![0u32; batch * blocks_per_seq];
    for seq in 0..n {
        let row = meta.block_table(seq);
        let keep = row.len().min(blocks_per_seq);
        block_tables[seq * blocks_per_seq..][..keep].copy_from_slice(&row[..keep]);
    }
    StepBatch {
        input_ids: padded(&meta.input_ids, 0),
        positions: padded(&meta.positions, 0),
        slot_mapping: padded(&meta.slot_mapping, u32::MAX),
        query_start_loc: (0..=batch as u32).collect(),
        seq_lens: padded(&meta.seq_lens, 0),
        block_tables,
        max_blocks_per_seq: blocks_per_seq,
        logits_indices: (0..batch as u32).collect(),
    }
}

/// What to do with a graph-eligible step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphAction {
    /// First use of the key: run eagerly on the arena (loads kernels, rope tables, cuBLAS).
    Warmup,
    /// Second use: capture the forward pass, then launch the graph.
    Capture,
    /// Launch the captured graph.
    Replay,
    /// Capture failed for this key: always eager.
    Eager,
}

/// Where one key stands.
enum Phase<G> {
    Warm,
    Captured(G),
    Failed,
}

/// The state machine of every key, generic over the captured graph type (tests use `()`),
/// with its counters.
pub struct GraphTable<G> {
    entries: HashMap<GraphKey, Phase<G>>,
    stats: BackendStats,
}

impl<G> Default for GraphTable<G> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            stats: BackendStats::default(),
        }
    }
}

impl<G> GraphTable<G> {
    /// The next action for `key`.
    pub fn action(&self, key: GraphKey) -> GraphAction {
        match self.entries.get(&key) {
            None => GraphAction::Warmup,
            Some(Phase::Warm) => GraphAction::Capture,
            Some(Phase::Captured(_)) => GraphAction::Replay,
            Some(Phase::Failed) => GraphAction::Eager,
        }
    }

    /// The warm-up of `key` succeeded.
    pub fn warmed(&mut self, key: GraphKey) {
        self.entries.insert(key, Phase::Warm);
    }

    /// `key` was captured as `graph`.
    pub fn captured(&mut self, key: GraphKey, graph: G) {
        self.entries.insert(key, Phase::Captured(graph));
        self.stats.num_cuda_graphs_captured += 1;
    }

    /// A step was computed by launching the graph of a captured key.
    pub fn replayed(&mut self) {
        self.stats.num_cuda_graph_replays += 1;
    }

    /// `key` cannot run as a graph; its steps run eagerly from now on.
    pub fn failed(&mut self, key: GraphKey) {
        self.entries.insert(key, Phase::Failed);
        self.stats.num_cuda_graph_failures += 1;
    }

    /// Graphs captured, steps replayed and keys failed so far.
    pub fn stats(&self) -> BackendStats {
        self.stats
    }

    /// The captured graph of `key`.
    pub fn graph(&self, key: GraphKey) -> Option<&G> {
        match self.entries.get(&key) {
            Some(Phase::Captured(g)) => Some(g),
            _ => None,
        }
    }

    /// Keys captured so far.
    pub fn num_captured(&self) -> usize {
        self.entries
            .values()
            .filter(|p| matches!(p, Phase::Captured(_)))
            .count()
    }
}

#[cfg(test)]
#[path = "graph_tests.rs"]
mod tests;
