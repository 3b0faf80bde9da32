//! The continuous-batching scheduler: decides which requests compute how many tokens each
//! step, under a token budget and a sequence cap, and folds the runner's sampled tokens back
//! into the requests (stop checks, freeing finished requests).
//!
//! Tokens, not phases: a running request gets the tokens it has not computed yet (one when
//! decoding, the next chunk of a long prompt otherwise); waiting requests are admitted with
//! their prefix-cache hits applied and chunked to the remaining budget. When the cache is
//! full, the lowest-priority, newest running request is preempted (its blocks freed, its
//! tokens recomputed later).

use std::collections::HashMap;
use std::mem;
use std::sync::Arc;

use crate::kv_cache_manager::KvCacheManager;
use crate::request::{Request, RequestStatus};
use crate::scheduler_config::{AddRequestError, ConfigError, SchedulerConfig};
use crate::scheduler_stats::SchedulerStats;
use crate::speculative::AcceptanceRecord;
use crate::step::{
    FinishReason, ModelRunnerOutput, RequestId, RequestUpdate, SampledToken, ScheduledSeq, SchedulerOutput,
};
use crate::waiting_queue::{QueueKey, WaitingQueue};

#[path = "scheduler_admission.rs"]
mod admission;
#[path = "scheduler_invariants.rs"]
mod invariants;
#[path = "scheduler_preemption.rs"]
mod preemption;
#[path = "scheduler_speculation.rs"]
mod speculation;

/// A live request and its admission order.
#[derive(Debug)]
struct Entry {
    request: Request,
    seq: u64,
    /// Speculative decoding's record of this request's acceptances.
    acceptance: AcceptanceRecord,
}

impl Entry {
    fn key(&self) -> QueueKey {
        QueueKey {
            priority: self.request.priority,
            arrival_time_s: self.request.arrival_time_s,
            seq: self.seq,
        }
    }
}

/// Owner of all live requests and the KV-cache manager; runs the step loop's bookkeeping.
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    kv: KvCacheManager,
    requests: HashMap<RequestId, Entry>,
    running: Vec<RequestId>,
    waiting: WaitingQueue,
    released_ids: Vec<RequestId>,
    next_seq: u64,
    stats: SchedulerStats,
}

impl Scheduler {
    /// A scheduler with an empty cache.
    ///
    /// # Panics
    /// When the config is invalid (see [`SchedulerConfig::validate`]); use
    /// [`Scheduler::try_new`] to get the error instead.
    pub fn new(config: SchedulerConfig) -> Self {
        match Self::try_new(config) {
            Ok(scheduler) => scheduler,
            Err(err) => panic!("invalid scheduler config: {err}"),
        }
    }

    /// A scheduler with an empty cache, or why the config cannot work.
    pub fn try_new(config: SchedulerConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            kv: KvCacheManager::new(config.num_blocks, config.block_size, config.enable_prefix_caching)
                .with_sliding_window(config.sliding_window),
            waiting: WaitingQueue::new(config.policy),
            config,
            requests: HashMap::new(),
            running: Vec::new(),
            released_ids: Vec::new(),
            next_seq: 0,
            stats: SchedulerStats::default(),
        })
    }

    /// The limits this scheduler runs under.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// The KV-cache manager (read-only).
    pub fn kv_cache(&self) -> &KvCacheManager {
        &self.kv
    }

    /// A live request by id.
    pub fn request(&self, request_id: &str) -> Option<&Request> {
        self.requests.get(request_id).map(|e| &e.request)
    }

    /// Queues a request, or refuses it at once when it can never run.
    pub fn add_request(&mut self, mut request: Request) -> Result<(), AddRequestError> {
        if self.requests.contains_key(&request.request_id) {
            return Err(AddRequestError::DuplicateId(request.request_id.to_string()));
        }
        request
            .sampling_params
            .validate()
            .map_err(AddRequestError::InvalidParams)?;
        let prompt_len = request.num_prompt_tokens();
        let max_model_len = self.config.max_model_len;
        if prompt_len == 0 {
            return Err(AddRequestError::EmptyPrompt);
        }
        let max_tokens = match request.sampling_params.max_tokens {
            Some(max_tokens) if prompt_len + max_tokens > max_model_len => {
                return Err(AddRequestError::ExceedsModelLen {
                    prompt_len,
                    max_tokens,
                    max_model_len,
                });
            }
            Some(max_tokens) => max_tokens,
            None if prompt_len >= max_model_len => {
                return Err(AddRequestError::PromptTooLong {
                    prompt_len,
                    max_model_len,
                });
            }
            None => max_model_len - prompt_len,
        };
        // The last generated token is never fed back, so its K/V never needs a slot.
        let num_blocks_needed = self.kv.blocks_for(prompt_len + max_tokens.saturating_sub(1));
        if num_blocks_needed > self.config.num_blocks {
            return Err(AddRequestError::ExceedsKvCache {
                prompt_len,
                max_tokens,
                num_blocks_needed,
                block_size: self.config.block_size,
                num_blocks: self.config.num_blocks,
            });
        }
        request.status = RequestStatus::Waiting;
        request.num_computed_tokens = 0;
        request.num_cached_tokens = 0;
        let entry = Entry {
            request,
            seq: self.next_seq,
            acceptance: AcceptanceRecord::default(),
        };
        self.next_seq += 1;
        let id = entry.request.request_id.clone();
        self.waiting.push_back(entry.key(), id.clone());
        self.requests.insert(id, entry);
        Ok(())
    }

    /// Decides the next step: running requests first (in a stable order), then newly
    /// admitted ones, within `max_num_batched_tokens` and `max_num_seqs`.
    pub fn schedule(&mut self) -> SchedulerOutput {
        let mut budget = self.config.max_num_batched_tokens;
        // (id, tokens this step, first step since admission or resumption)
        let mut scheduled: Vec<(RequestId, usize, bool)> = Vec::with_capacity(self.running.len());
        let mut drafts: HashMap<RequestId, Vec<u32>> = HashMap::new();
        let mut preempted_any = false;
        let num_running = self.running.len();
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i].clone();
            let mut num_new = self.num_new_tokens(&self.requests[&id].request, 0, budget);
            if num_new == 0 {
                i += 1;
                continue;
            }
            // Drafts only where their slots are free now: they never preempt anyone.
            let draft_ids = self.propose_drafts(&id, budget, num_running);
            if !draft_ids.is_empty()
                && self
                    .kv
                    .allocate_slots(&self.requests[&id].request, num_new + draft_ids.len(), &[])
                    .is_some()
            {
                num_new += draft_ids.len();
                drafts.insert(id.clone(), draft_ids);
            }
            let mut runs = true;
            while self
                .kv
                .allocate_slots(&self.requests[&id].request, num_new, &[])
                .is_none()
            {
                let victim_idx = self.pick_victim();
                let victim = self.running.remove(victim_idx);
                self.preempt(&victim);
                preempted_any = true;
                if victim_idx == i {
                    runs = false;
                    break;
                }
                if victim_idx < i {
                    i -= 1;
                    if let Some(pos) = scheduled.iter().position(|(s, ..)| *s == victim) {
                        budget += scheduled.remove(pos).1;
                        drafts.remove(&victim);
                    }
                }
            }
            if runs {
                scheduled.push((id, num_new, false));
                budget -= num_new;
                i += 1;
            }
        }
        if !preempted_any {
            self.admit_waiting(&mut budget, &mut scheduled);
        }
        let mut seqs = Vec::with_capacity(scheduled.len());
        let mut num_batched_tokens = 0;
        for (id, num_new, first_step) in scheduled {
            let req = &self.requests[&id].request;
            let start = req.num_computed_tokens;
            num_batched_tokens += num_new;
            let all_token_ids = (first_step && req.sampling_params.needs_token_history())
                .then(|| Arc::from(req.token_range(0, req.num_tokens())));
            let draft_ids = drafts.remove(&id).unwrap_or_default();
            let num_real = num_new - draft_ids.len();
            let mut token_ids = req.token_range(start, start + num_real);
            token_ids.extend_from_slice(&draft_ids);
            seqs.push(ScheduledSeq {
                token_ids,
                num_draft_tokens: draft_ids.len(),
                num_computed_tokens: start,
                block_ids: self.kv.block_ids(&id).to_vec(),
                sample: start + num_real == req.num_tokens(),
                sampling_params: req.sampling_params.clone(),
                num_output_tokens: req.num_output_tokens(),
                seed: req.seed,
                num_prompt_tokens: req.num_prompt_tokens(),
                all_token_ids,
                token_mask: None,
                draft_token_masks: Vec::new(),
                lora_id: req.lora_id,
                request_id: id,
            });
        }
        SchedulerOutput {
            seqs,
            num_batched_tokens,
            released_ids: mem::take(&mut self.released_ids),
        }
    }

    /// Folds one step's results back in: advances computed tokens, appends sampled tokens,
    /// applies stop checks and frees finished requests. Returns one update per request that
    /// got a token or finished.
    pub fn update(
        &mut self,
        output: &SchedulerOutput,
        runner_output: &ModelRunnerOutput,
    ) -> Vec<RequestUpdate> {
        let mut updates = Vec::with_capacity(runner_output.sampled.len());
        let mut finished: Vec<RequestId> = Vec::new();
        let mut sample_idx = 0;
        for seq in &output.seqs {
            let tokens = if seq.sample {
                sampled_for(runner_output, &mut sample_idx, &seq.request_id)
            } else {
                &[]
            };
            let Some(entry) = self.requests.get_mut(&seq.request_id) else {
                continue; // finished or aborted after it was scheduled
            };
            let req = &mut entry.request;
            if req.status != RequestStatus::Running || req.num_computed_tokens != seq.num_computed_tokens {
                continue; // not the request (or the state) this step was scheduled for
            }
            let before = req.num_computed_tokens;
            let num_real = seq.token_ids.len() - seq.num_draft_tokens;
            req.num_computed_tokens = (before + num_real).min(req.num_tokens());
            let num_prompt = req.num_prompt_tokens();
            self.stats.num_prompt_tokens +=
                (req.num_computed_tokens.min(num_prompt) - before.min(num_prompt)) as u64;
            if tokens.is_empty() || req.num_computed_tokens != req.num_tokens() {
                self.kv.cache_full_blocks(req);
                continue;
            }
            // Accepted drafts, then the token after them; at most one token without drafts.
            let tokens = &tokens[..tokens.len().min(seq.num_draft_tokens + 1)];
            let mut new_tokens = Vec::with_capacity(tokens.len());
            let (mut finish_reason, mut stop_token_id) = (None, None);
            for token in tokens {
                req.output_token_ids.push(token.token_id);
                self.stats.num_generation_tokens += 1;
                new_tokens.push(token.clone());
                (finish_reason, stop_token_id) = check_stop(req, token.token_id, self.config.max_model_len);
                if finish_reason.is_some() {
                    break;
                }
            }
            // The accepted drafts' K/V is in the cache; the last token's is computed next step.
            // Slots of rejected drafts lie beyond this count: never hashed, overwritten later.
            req.num_computed_tokens = req.num_tokens() - 1;
            self.kv.cache_full_blocks(req);
            if let Some(reason) = finish_reason {
                req.status = RequestStatus::Finished(reason);
                finished.push(req.request_id.clone());
            }
            let request_id = req.request_id.clone();
            updates.push(RequestUpdate {
                request_id: request_id.clone(),
                new_tokens,
                finish_reason,
                stop_token_id,
                num_cached_tokens: req.num_cached_tokens,
            });
            self.record_verification(&request_id, seq.num_draft_tokens, tokens.len() - 1);
        }
        if !finished.is_empty() {
            let requests = &self.requests;
            self.running.retain(|id| !requests[id].request.is_finished());
            for id in finished {
                self.requests.remove(&id);
                self.kv.free(&id);
                self.released_ids.push(id);
            }
        }
        updates
    }

    /// Appends tokens a grammar forced to a running request's output without sampling them
    /// (structured output's jump-forward); the next step computes their KV in one chunk and
    /// samples after them. Stops at the first token that ends the request, exactly as `update`
    /// would have (EOS, a stop id, `max_tokens`, `max_model_len`). Returns how many tokens were
    /// appended, the finish reason and the stop token; `(0, None, None)` for a request that is
    /// not running or still has tokens to compute.
    pub fn append_forced_tokens(
        &mut self,
        request_id: &str,
        token_ids: &[u32],
    ) -> (usize, Option<FinishReason>, Option<u32>) {
        let Some(entry) = self.requests.get_mut(request_id) else {
            return (0, None, None);
        };
        let req = &mut entry.request;
        if req.status != RequestStatus::Running || req.num_computed_tokens + 1 != req.num_tokens() {
            return (0, None, None);
        }
        for (index, &token_id) in token_ids.iter().enumerate() {
            req.output_token_ids.push(token_id);
            self.stats.num_generation_tokens += 1;
            let (finish_reason, stop_token_id) = check_stop(req, token_id, self.config.max_model_len);
            if let Some(reason) = finish_reason {
                self.finish_request(request_id, reason);
                return (index + 1, Some(reason), stop_token_id);
            }
        }
        (token_ids.len(), None, None)
    }

    /// Ends a waiting or running request now (stop string, abort) and frees its blocks.
    /// `None` when no live request has this id.
    pub fn finish_request(&mut self, request_id: &str, reason: FinishReason) -> Option<RequestUpdate> {
        let entry = self.requests.remove(request_id)?;
        let id = entry.request.request_id.clone();
        match entry.request.status {
            RequestStatus::Running => {
                if let Some(pos) = self.running.iter().position(|r| *r == id) {
                    self.running.remove(pos);
                }
                self.released_ids.push(id.clone());
            }
            RequestStatus::Waiting | RequestStatus::Preempted => {
                self.waiting.remove(entry.key(), request_id);
            }
            RequestStatus::Finished(_) => {}
        }
        self.kv.free(request_id);
        Some(RequestUpdate {
            request_id: id,
            new_tokens: Vec::new(),
            finish_reason: Some(reason),
            stop_token_id: None,
            num_cached_tokens: entry.request.num_cached_tokens,
        })
    }

    /// True while any request is waiting or running.
    pub fn has_unfinished_requests(&self) -> bool {
        !self.requests.is_empty()
    }

    /// Requests holding blocks and being scheduled.
    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Requests queued (new or preempted).
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Gauges and counters for logs and metrics.
    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            num_running: self.running.len(),
            num_waiting: self.waiting.len(),
            kv_cache_usage: self.kv.usage(),
            num_window_freed_blocks: self.kv.num_window_freed_blocks(),
            ..self.stats.clone()
        }
    }

    /// Forgets every cached block hash. Returns false when prefix caching is off.
    pub fn reset_prefix_cache(&mut self) -> bool {
        self.kv.reset_prefix_cache()
    }

    /// Tokens `request` should compute this step after `num_cached` prefix-hit tokens.
    fn num_new_tokens(&self, request: &Request, num_cached: usize, budget: usize) -> usize {
        let start = request.num_computed_tokens + num_cached;
        let mut num_new = request.num_tokens().saturating_sub(start);
        if self.config.long_prefill_token_threshold > 0 {
            num_new = num_new.min(self.config.long_prefill_token_threshold);
        }
        num_new.min(budget)
    }
}

/// The runner's tokens for sequence `id` (one, or a verification's accepted drafts and the
/// token after them): the run of entries for `id` at `*cursor`, which moves past it, or found
/// by id if out of order.
fn sampled_for<'a>(out: &'a ModelRunnerOutput, cursor: &mut usize, id: &RequestId) -> &'a [SampledToken] {
    let run_at = |start: usize| {
        let len = out.sampled[start..]
            .iter()
            .take_while(|t| t.request_id == *id)
            .count();
        &out.sampled[start..start + len]
    };
    match out.sampled.get(*cursor) {
        Some(token) if token.request_id == *id => {
            let run = run_at(*cursor);
            *cursor += run.len();
            run
        }
        _ => match out.sampled.iter().position(|t| t.request_id == *id) {
            Some(start) => run_at(start),
            None => &[],
        },
    }
}

/// Why `request` stops after appending `token_id`, and the token that stopped it.
///
/// EOS and stop tokens count only from output index `min_tokens` on; they take precedence
/// over the length limits when both apply to the same token.
fn check_stop(request: &Request, token_id: u32, max_model_len: usize) -> (Option<FinishReason>, Option<u32>) {
    let params = &request.sampling_params;
    let token_index = request.num_output_tokens() - 1;
    if token_index >= params.min_tokens
        && ((!params.ignore_eos && request.eos_token_ids.contains(&token_id))
            || params.stop_token_ids.contains(&token_id))
    {
        return (Some(FinishReason::Stop), Some(token_id));
    }
    if request.num_output_tokens() >= request.effective_max_tokens(max_model_len)
        || request.num_tokens() >= max_model_len
    {
        return (Some(FinishReason::Length), None);
    }
    (None, None)
}
