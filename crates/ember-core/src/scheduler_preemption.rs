//! The scheduler's preemption: which running request gives its blocks back when the KV cache
//! is full, and queueing it to recompute from scratch.

use super::Scheduler;
use crate::request::RequestStatus;
use crate::step::RequestId;

impl Scheduler {
    /// Index in `running` of the request to preempt: highest priority value, then newest.
    pub(super) fn pick_victim(&self) -> usize {
        let mut best = 0;
        for (idx, id) in self.running.iter().enumerate().skip(1) {
            if self.requests[id].key() > self.requests[&self.running[best]].key() {
                best = idx;
            }
        }
        best
    }

    /// Frees a running request's blocks and queues it to recompute from scratch.
    pub(super) fn preempt(&mut self, id: &RequestId) {
        self.kv.free(id);
        let Some(entry) = self.requests.get_mut(id) else {
            return;
        };
        entry.request.status = RequestStatus::Preempted;
        entry.request.num_computed_tokens = 0;
        self.waiting.push_front(entry.key(), id.clone());
        self.released_ids.push(id.clone());
        self.stats.num_preemptions += 1;
        log::debug!("preempted request {id}");
    }
}
