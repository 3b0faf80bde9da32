//! Admission of waiting requests: prefix-cache hits, forks sharing a sibling's prompt blocks,
//! and block allocation.

use super::Scheduler;
use crate::request::RequestStatus;
use crate::step::RequestId;

impl Scheduler {
    /// Where a newly admitted request's prompt K/V comes from. A fork (`fork_of`) shares its
    /// sibling's prompt blocks once the sibling has computed them, and waits (holding the head
    /// of the queue) while the sibling is still prefilling; otherwise it computes its own
    /// prompt, with prefix-cache hits. A resumed (preempted) request always uses its own.
    fn prompt_source(&self, id: &RequestId) -> PromptSource {
        let request = &self.requests[id].request;
        let Some(source_id) = request.fork_of.as_ref() else {
            return PromptSource::Own;
        };
        if request.status != RequestStatus::Waiting {
            return PromptSource::Own;
        }
        match self.requests.get(source_id).map(|e| &e.request) {
            Some(source) if source.status == RequestStatus::Running => {
                if source.num_computed_tokens >= source.num_prompt_tokens() {
                    PromptSource::Fork(source_id.clone())
                } else {
                    PromptSource::WaitForSibling
                }
            }
            _ => PromptSource::Own,
        }
    }

    /// Admits waiting requests, in queue order, while budget, sequence slots and blocks last.
    pub(super) fn admit_waiting(
        &mut self,
        budget: &mut usize,
        scheduled: &mut Vec<(RequestId, usize, bool)>,
    ) {
        while *budget > 0 && self.running.len() < self.config.max_num_seqs {
            let Some(id) = self.waiting.peek().cloned() else {
                break;
            };
            if !self.adapter_fits(self.requests[&id].request.lora_id) {
                break;
            }
            let (computed_blocks, num_cached, forked) = match self.prompt_source(&id) {
                PromptSource::WaitForSibling => break,
                PromptSource::Fork(source) => {
                    let (blocks, num_tokens) = self
                        .kv
                        .forkable_blocks(&self.requests[&source].request, &self.requests[&id].request);
                    (blocks, num_tokens, true)
                }
                PromptSource::Own => {
                    let (blocks, num_tokens) = self.kv.get_computed_blocks(&self.requests[&id].request);
                    (blocks, num_tokens, false)
                }
            };
            let num_new = self.num_new_tokens(&self.requests[&id].request, num_cached, *budget);
            if self
                .kv
                .allocate_slots(&self.requests[&id].request, num_new, &computed_blocks)
                .is_none()
            {
                break;
            }
            self.waiting.pop();
            let Some(entry) = self.requests.get_mut(&id) else {
                continue;
            };
            let req = &mut entry.request;
            if req.status == RequestStatus::Waiting {
                req.num_cached_tokens = num_cached;
                if forked {
                    self.stats.num_forked_tokens += num_cached as u64;
                } else {
                    self.stats.prefix_cache_queries += req.num_tokens() as u64;
                    self.stats.prefix_cache_hits += num_cached as u64;
                }
            }
            req.status = RequestStatus::Running;
            req.num_computed_tokens = num_cached;
            *budget -= num_new;
            self.running.push(id.clone());
            scheduled.push((id, num_new, true));
        }
    }
}

impl Scheduler {
    /// Whether a request with adapter `lora_id` may run beside the running ones under
    /// `max_loras` (the base model always may).
    fn adapter_fits(&self, lora_id: Option<u32>) -> bool {
        let (Some(lora_id), Some(max_loras)) = (lora_id, self.config.max_loras) else {
            return true;
        };
        let mut running: Vec<u32> = self
            .running
            .iter()
            .filter_map(|id| self.requests.get(id).and_then(|e| e.request.lora_id))
            .collect();
        running.sort_unstable();
        running.dedup();
        running.contains(&lora_id) || running.len() < max_loras
    }
}

/// Where a request's prompt K/V comes from when it is admitted.
enum PromptSource {
    /// Its own prefill (after any prefix-cache hits).
    Own,
    /// The prompt blocks of this sibling, shared by reference count.
    Fork(RequestId),
    /// Not yet: its sibling is still computing the prompt.
    WaitForSibling,
}
