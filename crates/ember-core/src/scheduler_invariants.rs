//! The scheduler's bookkeeping self-check (the scheduler tests call it after every step).

use std::collections::HashSet;

use super::Scheduler;
use crate::request::RequestStatus;

impl Scheduler {
    /// Checks the bookkeeping: queues against request states, block tables against
    /// reference counts, the free queue and the hash map.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.kv.check_invariants()?;
        let mut seen = HashSet::with_capacity(self.requests.len());
        for id in &self.running {
            let entry = self
                .requests
                .get(id)
                .ok_or_else(|| format!("running {id} is not live"))?;
            let req = &entry.request;
            if req.status != RequestStatus::Running {
                return Err(format!("running {id} has status {:?}", req.status));
            }
            if self.kv.block_ids(id).len() * self.config.block_size < req.num_computed_tokens {
                return Err(format!(
                    "running {id}: {} computed tokens exceed its blocks",
                    req.num_computed_tokens
                ));
            }
            if req.num_computed_tokens > req.num_tokens() {
                return Err(format!("running {id}: more computed tokens than tokens"));
            }
            if !seen.insert(id) {
                return Err(format!("{id} is running twice"));
            }
        }
        if self.running.len() > self.config.max_num_seqs {
            return Err(format!(
                "{} running, max_num_seqs is {}",
                self.running.len(),
                self.config.max_num_seqs
            ));
        }
        for id in self.waiting.ids() {
            let entry = self
                .requests
                .get(id)
                .ok_or_else(|| format!("waiting {id} is not live"))?;
            let req = &entry.request;
            if !matches!(req.status, RequestStatus::Waiting | RequestStatus::Preempted) {
                return Err(format!("waiting {id} has status {:?}", req.status));
            }
            if req.num_computed_tokens != 0 || !self.kv.block_ids(id).is_empty() {
                return Err(format!("waiting {id} holds blocks or computed tokens"));
            }
            if !seen.insert(id) {
                return Err(format!("{id} is queued twice or both queued and running"));
            }
        }
        if seen.len() != self.requests.len() {
            return Err(format!(
                "{} live requests, {} queued or running",
                self.requests.len(),
                seen.len()
            ));
        }
        Ok(())
    }
}
