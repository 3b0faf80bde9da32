//! The draft model of draft-model speculation. It runs on the target's backend (the same
//! thread pool) and its paged KV cache mirrors the target's: the same block ids, block size and
//! block count, its own storage shaped for the draft. Each step it computes every token the
//! target computes (prefill chunks included), so a block the target has computed, cached or
//! shares with a fork holds the draft's K/V of the same tokens too, and the scheduler's one
//! block accounting (prefix caching, preemption, forks, abort) covers both. Then it decodes its
//! greedy drafts into the slots the scheduler reserved; rejected positions are overwritten when
//! the target's next tokens are computed there.
//!
//! The last draft of a sequence needs no logits, only its K/V, and that only when the target
//! accepts it: its forward is deferred to the next step's catch-up, which runs it beside the
//! token the target emitted after it (one forward fewer per step). A draft in a block's last
//! slot is not deferred: the target's verification fills that block, which may enter the prefix
//! cache before the next step (or with no next step when the request ends there).

use std::collections::HashMap;
use std::sync::Arc;

use ember_core::{
    argmax, Backend, BackendResult, KvCacheSpec, RequestId, SamplingParams, ScheduledSeq, SchedulerOutput,
    StepBatch,
};

use crate::engine::batch::build_step_batch;
use crate::models::lora::LoraStep;
use crate::models::Model;

/// A draft model and its mirrored KV cache.
pub struct DraftModel<B: Backend> {
    model: Box<dyn Model<B>>,
    kv_cache: B::KvCache,
    block_size: usize,
    vocab_size: usize,
    /// Steps of more sequences than this (when not 0) draft nothing and skip the draft model.
    max_num_seqs_to_speculate: usize,
    /// Per request, its latest last draft whose forward was deferred: (position, token).
    deferred_drafts: HashMap<RequestId, (usize, u32)>,
}

/// One speculating sequence being drafted: its index in the step and its draft count.
struct Drafting {
    seq_idx: usize,
    num_drafts: usize,
}

impl<B: Backend> DraftModel<B> {
    /// Allocates the draft's cache (`spec`: the draft's geometry with the target's block count
    /// and size) on `backend`; steps of more than `max_num_seqs_to_speculate` sequences (0: no
    /// limit) skip the draft.
    pub fn new(
        backend: &B,
        model: Box<dyn Model<B>>,
        spec: &KvCacheSpec,
        vocab_size: usize,
        max_num_seqs_to_speculate: usize,
    ) -> BackendResult<Self> {
        Ok(Self {
            kv_cache: backend.allocate_kv_cache(spec)?,
            model,
            block_size: spec.block_size,
            vocab_size,
            max_num_seqs_to_speculate,
            deferred_drafts: HashMap::new(),
        })
    }

    /// Runs the draft over `output`'s tokens and replaces every sequence's placeholder drafts
    /// with the draft model's greedy tokens. A step too large to speculate in skips the draft
    /// (it costs as much as it would save): the draft's K/V of those tokens stays stale, which
    /// can only lower later acceptance, never change an output (the target verifies).
    pub fn fill_drafts(&mut self, backend: &B, output: &mut SchedulerOutput) -> BackendResult<()> {
        for id in &output.released_ids {
            self.deferred_drafts.remove(id);
        }
        let max_seqs = self.max_num_seqs_to_speculate;
        let drafts_any = output.seqs.iter().any(|s| s.num_draft_tokens > 0);
        if max_seqs > 0 && output.seqs.len() > max_seqs && !drafts_any {
            self.deferred_drafts.clear();
            return Ok(());
        }
        let params = Arc::new(SamplingParams::default());
        // Catch up: every sequence's real tokens (after a deferred draft the target accepted),
        // logits at the last one of speculating ones.
        let mut drafting = Vec::new();
        let mut catch_up = Vec::with_capacity(output.seqs.len());
        for (seq_idx, seq) in output.seqs.iter().enumerate() {
            let num_real = seq.token_ids.len() - seq.num_draft_tokens;
            let speculates = seq.sample && seq.num_draft_tokens > 0;
            if speculates {
                drafting.push(Drafting {
                    seq_idx,
                    num_drafts: seq.num_draft_tokens,
                });
            }
            let mut start = seq.num_computed_tokens;
            let mut token_ids = Vec::with_capacity(num_real + 1);
            match self.deferred_drafts.remove(&seq.request_id) {
                Some((position, token_id)) if position + 1 == start => {
                    start = position;
                    token_ids.push(token_id);
                }
                _ => {}
            }
            token_ids.extend_from_slice(&seq.token_ids[..num_real]);
            catch_up.push(draft_seq(seq, start, token_ids, speculates, &params));
        }
        let mut next_ids = self.greedy(backend, catch_up)?;
        // Decode: draft i goes into its reserved slot and (below the last) yields draft i + 1;
        // `next_ids` follows `drafting`, the sequences fed last time.
        for i in 0.. {
            let mut seqs = Vec::new();
            let mut fed = Vec::new();
            for (d, &token_id) in drafting.iter().zip(&next_ids) {
                let seq = &mut output.seqs[d.seq_idx];
                let slot = seq.token_ids.len() - seq.num_draft_tokens + i;
                seq.token_ids[slot] = token_id;
                let position = seq.num_computed_tokens + slot;
                let is_last = i + 1 == d.num_drafts;
                if is_last && !(position + 1).is_multiple_of(self.block_size) {
                    self.deferred_drafts
                        .insert(seq.request_id.clone(), (position, token_id));
                    continue;
                }
                // A last draft in a block's last slot runs now, for its K/V only.
                seqs.push(draft_seq(seq, position, vec![token_id], !is_last, &params));
                if !is_last {
                    fed.push(Drafting {
                        seq_idx: d.seq_idx,
                        num_drafts: d.num_drafts,
                    });
                }
            }
            if seqs.is_empty() {
                break;
            }
            next_ids = self.greedy(backend, seqs)?;
            drafting = fed;
        }
        Ok(())
    }

    /// Runs `seqs` through the draft and returns the argmax of each sampled row.
    fn greedy(&mut self, backend: &B, seqs: Vec<ScheduledSeq>) -> BackendResult<Vec<u32>> {
        let step = SchedulerOutput {
            num_batched_tokens: seqs.iter().map(|s| s.token_ids.len()).sum(),
            seqs,
            released_ids: Vec::new(),
        };
        let batch: StepBatch = build_step_batch(&step, self.block_size);
        let num_rows = batch.logits_indices.len();
        let lora = LoraStep::none();
        let (model, kv_cache) = (&self.model, &mut self.kv_cache);
        let logits = backend.run_forward(batch, &mut |s| model.forward(backend, s, kv_cache, &lora))?;
        if num_rows == 0 {
            return Ok(Vec::new());
        }
        let mut host = backend.move_to_host(logits)?;
        Ok(host.chunks_exact_mut(self.vocab_size).map(argmax).collect())
    }
}

/// `seq`'s chunk of `token_ids` from position `start` as the draft runs it: no sampling
/// options, logits only when `sample`.
fn draft_seq(
    seq: &ScheduledSeq,
    start: usize,
    token_ids: Vec<u32>,
    sample: bool,
    params: &Arc<SamplingParams>,
) -> ScheduledSeq {
    ScheduledSeq {
        request_id: seq.request_id.clone(),
        token_ids,
        num_draft_tokens: 0,
        num_computed_tokens: start,
        block_ids: seq.block_ids.clone(),
        sample,
        sampling_params: Arc::clone(params),
        num_output_tokens: 0,
        seed: 0,
        num_prompt_tokens: 0,
        all_token_ids: None,
        token_mask: None,
        draft_token_masks: Vec::new(),
        lora_id: None,
    }
}
