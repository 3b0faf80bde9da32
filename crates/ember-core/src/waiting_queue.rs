//! The queue of requests waiting for admission, in FCFS or priority order.

use std::cmp::Ordering;
use std::collections::{BTreeMap, VecDeque};

use crate::scheduler_config::SchedulingPolicy;
use crate::step::RequestId;

/// Sort key of a waiting request: priority, then arrival time, then admission order.
#[derive(Clone, Copy, Debug)]
pub struct QueueKey {
    /// Lower is served first.
    pub priority: i32,
    /// Earlier is served first.
    pub arrival_time_s: f64,
    /// Order of `add_request` calls; breaks ties.
    pub seq: u64,
}

impl PartialEq for QueueKey {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for QueueKey {}

impl PartialOrd for QueueKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for QueueKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then(self.arrival_time_s.total_cmp(&other.arrival_time_s))
            .then(self.seq.cmp(&other.seq))
    }
}

/// Waiting requests in admission order.
#[derive(Debug)]
pub enum WaitingQueue {
    /// Arrival order; preempted requests go to the front.
    Fcfs(VecDeque<(QueueKey, RequestId)>),
    /// `(priority, arrival, seq)` order; preempted requests keep their place by key.
    Priority(BTreeMap<QueueKey, RequestId>),
}

impl WaitingQueue {
    /// An empty queue for `policy`.
    pub fn new(policy: SchedulingPolicy) -> Self {
        match policy {
            SchedulingPolicy::Fcfs => Self::Fcfs(VecDeque::new()),
            SchedulingPolicy::Priority => Self::Priority(BTreeMap::new()),
        }
    }

    /// Number of waiting requests.
    pub fn len(&self) -> usize {
        match self {
            Self::Fcfs(q) => q.len(),
            Self::Priority(q) => q.len(),
        }
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues a new request.
    pub fn push_back(&mut self, key: QueueKey, id: RequestId) {
        match self {
            Self::Fcfs(q) => q.push_back((key, id)),
            Self::Priority(q) => {
                q.insert(key, id);
            }
        }
    }

    /// Queues a preempted request ahead of the others (FCFS) or by its key (priority).
    pub fn push_front(&mut self, key: QueueKey, id: RequestId) {
        match self {
            Self::Fcfs(q) => q.push_front((key, id)),
            Self::Priority(q) => {
                q.insert(key, id);
            }
        }
    }

    /// The next request to admit.
    pub fn peek(&self) -> Option<&RequestId> {
        match self {
            Self::Fcfs(q) => q.front().map(|(_, id)| id),
            Self::Priority(q) => q.values().next(),
        }
    }

    /// Removes and returns the next request to admit.
    pub fn pop(&mut self) -> Option<RequestId> {
        match self {
            Self::Fcfs(q) => q.pop_front().map(|(_, id)| id),
            Self::Priority(q) => q.pop_first().map(|(_, id)| id),
        }
    }

    /// Removes the request with this key and id; false when it is not queued.
    pub fn remove(&mut self, key: QueueKey, id: &str) -> bool {
        match self {
            Self::Fcfs(q) => match q.iter().position(|(k, r)| *k == key && &**r == id) {
                Some(pos) => q.remove(pos).is_some(),
                None => false,
            },
            Self::Priority(q) => q.remove(&key).is_some(),
        }
    }

    /// All queued ids in admission order.
    pub fn ids(&self) -> Box<dyn Iterator<Item = &RequestId> + '_> {
        match self {
            Self::Fcfs(q) => Box::new(q.iter().map(|(_, id)| id)),
            Self::Priority(q) => Box::new(q.values()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(priority: i32, arrival_time_s: f64, seq: u64) -> QueueKey {
        QueueKey {
            priority,
            arrival_time_s,
            seq,
        }
    }

    #[test]
    fn priority_orders_by_priority_then_arrival() {
        let mut q = WaitingQueue::new(SchedulingPolicy::Priority);
        q.push_back(key(1, 0.0, 0), "a".into());
        q.push_back(key(0, 5.0, 1), "b".into());
        q.push_back(key(0, 1.0, 2), "c".into());
        assert!(q.remove(key(1, 0.0, 0), "a"));
        q.push_front(key(1, 0.0, 0), "a".into());
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, vec!["c".into(), "b".into(), "a".into()] as Vec<RequestId>);
    }

    #[test]
    fn fcfs_puts_preempted_first() {
        let mut q = WaitingQueue::new(SchedulingPolicy::Fcfs);
        q.push_back(key(0, 0.0, 0), "a".into());
        q.push_front(key(0, 0.0, 1), "b".into());
        assert_eq!(q.peek().map(|s| &**s), Some("b"));
        assert!(q.remove(key(0, 0.0, 0), "a"));
        assert!(!q.remove(key(0, 0.0, 0), "a"));
        assert_eq!(q.len(), 1);
    }
}
