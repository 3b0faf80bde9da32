//! The pool of KV-cache blocks: reference counts, the free queue in eviction order, and
//! the map from block hash to cached block used by prefix caching.
//!
//! Only the pool touches reference counts. A freed block keeps its hash (and stays in the
//! hash map) until it is evicted for reuse, so a later request can still hit it.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hasher};

/// Marks "no block" in the free queue's links.
const NIL: u32 = u32::MAX;

/// Content hash of one full block, chained over its parent block's hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub u64);

impl BlockHash {
    /// Hash of a full block: its parent's hash (`None` for the first block), its token ids,
    /// and an optional extra key (cache salt, adapter id).
    ///
    /// Deterministic within a process (SipHash with fixed keys).
    pub fn new(parent: Option<BlockHash>, token_ids: &[u32], extra_key: Option<u64>) -> Self {
        let mut hasher = DefaultHasher::new();
        match parent {
            Some(BlockHash(h)) => {
                hasher.write_u8(1);
                hasher.write_u64(h);
            }
            None => hasher.write_u8(0),
        }
        hasher.write_usize(token_ids.len());
        for &token in token_ids {
            hasher.write_u32(token);
        }
        match extra_key {
            Some(key) => {
                hasher.write_u8(1);
                hasher.write_u64(key);
            }
            None => hasher.write_u8(0),
        }
        BlockHash(hasher.finish())
    }
}

/// Hashes of the full blocks of `token_ids`, each chained over the one before: the keys a
/// request's prompt is looked up under in the prefix cache. A partial last block has none.
/// A router uses them to predict which replica already holds a prompt's prefix.
pub fn prefix_block_hashes(token_ids: &[u32], block_size: usize, extra_key: Option<u64>) -> Vec<BlockHash> {
    if block_size == 0 {
        return Vec::new();
    }
    let mut hashes: Vec<BlockHash> = Vec::with_capacity(token_ids.len() / block_size);
    for block in token_ids.chunks_exact(block_size) {
        hashes.push(BlockHash::new(hashes.last().copied(), block, extra_key));
    }
    hashes
}

/// Owner of every cache block id in `0..num_blocks`.
#[derive(Debug)]
pub struct BlockPool {
    ref_cnt: Vec<u32>,
    block_hash: Vec<Option<BlockHash>>,
    prev: Vec<u32>,
    next: Vec<u32>,
    in_free_queue: Vec<bool>,
    head: u32,
    tail: u32,
    num_free: usize,
    cached: HashMap<BlockHash, u32>,
    enable_caching: bool,
}

impl BlockPool {
    /// A pool of `num_blocks` free blocks; `enable_caching` turns on the hash map.
    ///
    /// # Panics
    /// When `num_blocks` does not fit below `u32::MAX`.
    pub fn new(num_blocks: usize, enable_caching: bool) -> Self {
        assert!(
            num_blocks < NIL as usize,
            "num_blocks ({num_blocks}) must be below u32::MAX"
        );
        let n = num_blocks as u32;
        let prev = (0..n).map(|i| if i == 0 { NIL } else { i - 1 }).collect();
        let next = (0..n).map(|i| if i + 1 == n { NIL } else { i + 1 }).collect();
        Self {
            ref_cnt: vec![0; num_blocks],
            block_hash: vec![None; num_blocks],
            prev,
            next,
            in_free_queue: vec![true; num_blocks],
            head: if n == 0 { NIL } else { 0 },
            tail: if n == 0 { NIL } else { n - 1 },
            num_free: num_blocks,
            cached: HashMap::new(),
            enable_caching,
        }
    }

    /// Total number of blocks.
    pub fn num_blocks(&self) -> usize {
        self.ref_cnt.len()
    }

    /// Blocks with no holder (cached or not): what an allocation can take.
    pub fn num_free_blocks(&self) -> usize {
        self.num_free
    }

    /// Fraction of blocks held by requests, in `[0, 1]`.
    pub fn usage(&self) -> f32 {
        if self.ref_cnt.is_empty() {
            return 0.0;
        }
        1.0 - self.num_free as f32 / self.ref_cnt.len() as f32
    }

    /// Number of requests holding `block_id`.
    pub fn ref_count(&self, block_id: u32) -> u32 {
        self.ref_cnt[block_id as usize]
    }

    /// The hash `block_id` is cached under, if any.
    pub fn hash_of(&self, block_id: u32) -> Option<BlockHash> {
        self.block_hash[block_id as usize]
    }

    /// The cached block holding the content `hash`, whether held or free.
    pub fn get_cached_block(&self, hash: BlockHash) -> Option<u32> {
        if !self.enable_caching {
            return None;
        }
        self.cached.get(&hash).copied()
    }

    /// Takes `num` blocks from the front of the free queue (evicting their cached hashes),
    /// each with reference count 1; `None` (and nothing changed) when fewer are free.
    pub fn allocate(&mut self, num: usize) -> Option<Vec<u32>> {
        if num > self.num_free {
            return None;
        }
        let mut out = Vec::with_capacity(num);
        for _ in 0..num {
            let block = self.head;
            self.unlink(block);
            self.evict_hash(block);
            self.ref_cnt[block as usize] = 1;
            out.push(block);
        }
        Some(out)
    }

    /// Adds one holder to each block, taking free ones out of the free queue (prefix hits).
    pub fn touch(&mut self, block_ids: &[u32]) {
        for &block in block_ids {
            if self.ref_cnt[block as usize] == 0 {
                self.unlink(block);
            }
            self.ref_cnt[block as usize] += 1;
        }
    }

    /// Drops one holder from each block, in the given order; a block whose count reaches zero
    /// joins the free queue: at the back (evicted last) when it carries a hash, at the front
    /// when it does not (it is worth nothing to keep).
    pub fn free_blocks(&mut self, block_ids: impl IntoIterator<Item = u32>) {
        for block in block_ids {
            let count = &mut self.ref_cnt[block as usize];
            debug_assert!(*count > 0, "freeing block {block} with no holder");
            *count = count.saturating_sub(1);
            if *count == 0 && !self.in_free_queue[block as usize] {
                if self.block_hash[block as usize].is_some() {
                    self.push_back(block);
                } else {
                    self.push_front(block);
                }
            }
        }
    }

    /// Records that held block `block_id` now holds the full content `hash`. Does nothing
    /// when caching is off, the block already has a hash, or another block holds `hash`.
    pub fn cache_block(&mut self, block_id: u32, hash: BlockHash) {
        if !self.enable_caching || self.block_hash[block_id as usize].is_some() {
            return;
        }
        if let std::collections::hash_map::Entry::Vacant(entry) = self.cached.entry(hash) {
            entry.insert(block_id);
            self.block_hash[block_id as usize] = Some(hash);
        }
    }

    /// Forgets every cached hash (held blocks keep their data but can no longer be hit).
    /// Returns false when prefix caching is off.
    pub fn reset_prefix_cache(&mut self) -> bool {
        self.cached.clear();
        self.block_hash.iter_mut().for_each(|h| *h = None);
        self.enable_caching
    }

    /// Checks the pool against `expected_refs[block]` (how many block tables hold each block).
    pub fn check_invariants(&self, expected_refs: &[u32]) -> Result<(), String> {
        if expected_refs.len() != self.ref_cnt.len() {
            return Err(format!(
                "expected {} reference counts, pool has {} blocks",
                expected_refs.len(),
                self.ref_cnt.len()
            ));
        }
        for (block, (&have, &want)) in self.ref_cnt.iter().zip(expected_refs).enumerate() {
            if have != want {
                return Err(format!(
                    "block {block}: ref count {have}, held by {want} block tables"
                ));
            }
            if (have == 0) != self.in_free_queue[block] {
                return Err(format!(
                    "block {block}: ref count {have} but in_free_queue = {}",
                    self.in_free_queue[block]
                ));
            }
            if let Some(hash) = self.block_hash[block] {
                if self.cached.get(&hash) != Some(&(block as u32)) {
                    return Err(format!("block {block}: hash {hash:?} not mapped back to it"));
                }
            }
        }
        for (hash, &block) in &self.cached {
            if self.block_hash[block as usize] != Some(*hash) {
                return Err(format!(
                    "hash map entry {hash:?} -> {block} but the block says otherwise"
                ));
            }
        }
        let mut walked = 0usize;
        let mut prev = NIL;
        let mut cur = self.head;
        while cur != NIL {
            if !self.in_free_queue[cur as usize] || self.prev[cur as usize] != prev {
                return Err(format!("free queue broken at block {cur}"));
            }
            walked += 1;
            if walked > self.ref_cnt.len() {
                return Err("free queue has a cycle".into());
            }
            prev = cur;
            cur = self.next[cur as usize];
        }
        if prev != self.tail {
            return Err(format!("free queue tail is {}, walk ended at {prev}", self.tail));
        }
        let held = self.ref_cnt.iter().filter(|&&c| c > 0).count();
        if walked != self.num_free || walked + held != self.ref_cnt.len() {
            return Err(format!(
                "free queue has {walked} blocks, num_free = {}, held = {held}, total = {}",
                self.num_free,
                self.ref_cnt.len()
            ));
        }
        Ok(())
    }

    fn evict_hash(&mut self, block: u32) {
        if let Some(hash) = self.block_hash[block as usize].take() {
            self.cached.remove(&hash);
        }
    }

    fn unlink(&mut self, block: u32) {
        let b = block as usize;
        debug_assert!(self.in_free_queue[b]);
        let (p, n) = (self.prev[b], self.next[b]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.prev[b] = NIL;
        self.next[b] = NIL;
        self.in_free_queue[b] = false;
        self.num_free -= 1;
    }

    fn push_back(&mut self, block: u32) {
        let b = block as usize;
        self.prev[b] = self.tail;
        self.next[b] = NIL;
        if self.tail == NIL {
            self.head = block;
        } else {
            self.next[self.tail as usize] = block;
        }
        self.tail = block;
        self.in_free_queue[b] = true;
        self.num_free += 1;
    }

    fn push_front(&mut self, block: u32) {
        let b = block as usize;
        self.next[b] = self.head;
        self.prev[b] = NIL;
        if self.head == NIL {
            self.tail = block;
        } else {
            self.prev[self.head as usize] = block;
        }
        self.head = block;
        self.in_free_queue[b] = true;
        self.num_free += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(pool: &BlockPool, held: &[(u32, u32)]) -> Result<(), String> {
        let mut expected = vec![0; pool.num_blocks()];
        for &(block, count) in held {
            expected[block as usize] = count;
        }
        pool.check_invariants(&expected)
    }

    #[test]
    fn allocate_and_free_round_trip() {
        let mut pool = BlockPool::new(4, true);
        let blocks = pool.allocate(3).unwrap();
        assert_eq!(blocks, vec![0, 1, 2]);
        assert_eq!(pool.num_free_blocks(), 1);
        assert!(pool.allocate(2).is_none());
        refs(&pool, &[(0, 1), (1, 1), (2, 1)]).unwrap();
        pool.free_blocks(blocks.into_iter().rev());
        assert_eq!(pool.num_free_blocks(), 4);
        assert_eq!(pool.usage(), 0.0);
        refs(&pool, &[]).unwrap();
    }

    #[test]
    fn cached_free_blocks_are_evicted_last_and_reusable() {
        let mut pool = BlockPool::new(4, true);
        let blocks = pool.allocate(2).unwrap();
        let h = BlockHash::new(None, &[1, 2], None);
        pool.cache_block(blocks[0], h);
        pool.free_blocks(blocks.iter().rev().copied());
        // Block 1 has no hash: front of the queue. Block 0 is cached: back.
        assert_eq!(pool.get_cached_block(h), Some(0));
        pool.touch(&[0]);
        assert_eq!(pool.ref_count(0), 1);
        refs(&pool, &[(0, 1)]).unwrap();
        pool.free_blocks([0]);
        let taken = pool.allocate(3).unwrap();
        assert!(
            !taken.contains(&0),
            "cached block evicted before uncached ones: {taken:?}"
        );
        assert_eq!(pool.get_cached_block(h), Some(0));
        let last = pool.allocate(1).unwrap();
        assert_eq!(last, vec![0]);
        assert_eq!(pool.get_cached_block(h), None);
        refs(&pool, &[(0, 1), (1, 1), (2, 1), (3, 1)]).unwrap();
    }

    #[test]
    fn chained_hash_depends_on_parent_tokens_and_salt() {
        let a = BlockHash::new(None, &[1, 2], None);
        assert_eq!(a, BlockHash::new(None, &[1, 2], None));
        assert_ne!(a, BlockHash::new(None, &[1, 3], None));
        assert_ne!(a, BlockHash::new(None, &[1, 2], Some(9)));
        assert_ne!(BlockHash::new(Some(a), &[1, 2], None), a);
    }

    #[test]
    fn reset_forgets_hashes() {
        let mut pool = BlockPool::new(2, true);
        let blocks = pool.allocate(1).unwrap();
        let h = BlockHash::new(None, &[5], None);
        pool.cache_block(blocks[0], h);
        assert!(pool.reset_prefix_cache());
        assert_eq!(pool.get_cached_block(h), None);
        refs(&pool, &[(0, 1)]).unwrap();
    }
}
