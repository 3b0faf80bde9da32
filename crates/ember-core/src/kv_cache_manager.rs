//! The scheduler's view of the paged KV cache: per-request block tables on top of the
//! [`BlockPool`], prefix-cache lookups, and caching of blocks as they fill.

use std::collections::HashMap;

use crate::block_pool::{BlockHash, BlockPool};
use crate::request::Request;
use crate::step::RequestId;

/// Block-table entry of a block released because it lies wholly before a sliding attention
/// window: attention never reads it, and it is no block id (`u32::MAX`).
pub const NULL_BLOCK: u32 = u32::MAX;

/// Blocks and block hashes of one request.
#[derive(Debug, Default)]
struct RequestBlocks {
    /// The block of every `block_size` positions; the first `num_null_blocks` are
    /// [`NULL_BLOCK`] (released outside the sliding window).
    block_ids: Vec<u32>,
    block_hashes: Vec<BlockHash>,
    num_cached_blocks: usize,
    num_null_blocks: usize,
}

/// Paged KV-cache bookkeeping: which blocks each request holds, and prefix-cache reuse.
#[derive(Debug)]
pub struct KvCacheManager {
    pool: BlockPool,
    block_size: usize,
    enable_prefix_caching: bool,
    requests: HashMap<RequestId, RequestBlocks>,
    token_scratch: Vec<u32>,
    /// Every layer attends to at most this many last positions: blocks wholly before it are
    /// released as requests advance.
    sliding_window: Option<usize>,
    num_window_freed_blocks: u64,
}

impl KvCacheManager {
    /// A manager over `num_blocks` blocks of `block_size` tokens.
    ///
    /// # Panics
    /// When `block_size` is 0 or `num_blocks` does not fit below `u32::MAX`.
    pub fn new(num_blocks: usize, block_size: usize, enable_prefix_caching: bool) -> Self {
        assert!(block_size > 0, "block_size must be at least 1");
        Self {
            pool: BlockPool::new(num_blocks, enable_prefix_caching),
            block_size,
            enable_prefix_caching,
            requests: HashMap::new(),
            token_scratch: Vec::with_capacity(block_size),
            sliding_window: None,
            num_window_freed_blocks: 0,
        }
    }

    /// This manager for a model whose every layer attends to at most the last `window`
    /// positions (`None`: the whole context): blocks wholly before the window of a request's
    /// next token are released (their table entries become [`NULL_BLOCK`]).
    pub fn with_sliding_window(self, window: Option<usize>) -> Self {
        Self {
            sliding_window: window.filter(|&w| w > 0),
            ..self
        }
    }

    /// Blocks released so far because they fell wholly before the sliding window.
    pub fn num_window_freed_blocks(&self) -> u64 {
        self.num_window_freed_blocks
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Total number of blocks.
    pub fn num_blocks(&self) -> usize {
        self.pool.num_blocks()
    }

    /// Blocks an allocation could take now (including evictable cached ones).
    pub fn num_free_blocks(&self) -> usize {
        self.pool.num_free_blocks()
    }

    /// Whether prefix caching is on.
    pub fn enable_prefix_caching(&self) -> bool {
        self.enable_prefix_caching
    }

    /// Fraction of blocks held by requests, in `[0, 1]`.
    pub fn usage(&self) -> f32 {
        self.pool.usage()
    }

    /// Blocks needed to hold `num_tokens` tokens.
    pub fn blocks_for(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.block_size)
    }

    /// The request's blocks in sequence order (empty when it holds none).
    pub fn block_ids(&self, request_id: &str) -> &[u32] {
        self.requests
            .get(request_id)
            .map_or(&[], |r| r.block_ids.as_slice())
    }

    /// The longest chain of cached full blocks matching the request's tokens, and the number
    /// of tokens they cover. Never covers the last token, which is always recomputed so
    /// there is something to sample from. Empty when prefix caching is off.
    pub fn get_computed_blocks(&mut self, request: &Request) -> (Vec<u32>, usize) {
        // Prompt logprobs need logits at every prompt position, so such a request computes
        // its whole prompt (its blocks are still cached for others).
        if !self.enable_prefix_caching
            || request.num_tokens() == 0
            || request.sampling_params.prompt_logprobs.is_some()
        {
            return (Vec::new(), 0);
        }
        let max_blocks = (request.num_tokens() - 1) / self.block_size;
        self.ensure_hashes(request, max_blocks);
        let state = &self.requests[&request.request_id];
        let mut blocks = Vec::new();
        for &hash in &state.block_hashes[..max_blocks] {
            match self.pool.get_cached_block(hash) {
                Some(block) => blocks.push(block),
                None => break,
            }
        }
        let num_tokens = blocks.len() * self.block_size;
        (blocks, num_tokens)
    }

    /// The full blocks of `source`'s prompt that `request` (a fork with the same prompt) can
    /// share, and the tokens they cover. Like a prefix hit it never covers the last prompt
    /// token, and only blocks `source` has already computed count.
    pub fn forkable_blocks(&self, source: &Request, request: &Request) -> (Vec<u32>, usize) {
        let shared_prompt = source.prompt_token_ids == request.prompt_token_ids;
        if !shared_prompt || request.sampling_params.prompt_logprobs.is_some() {
            return (Vec::new(), 0);
        }
        let held = self.block_ids(&source.request_id);
        let num_blocks = ((request.num_tokens() - 1) / self.block_size)
            .min(source.num_computed_tokens / self.block_size)
            .min(held.len());
        // Released blocks are fine only before the fork's own window.
        let first_needed = self.first_needed_block(num_blocks * self.block_size);
        if held[first_needed.min(num_blocks)..num_blocks].contains(&NULL_BLOCK) {
            return (Vec::new(), 0);
        }
        (held[..num_blocks].to_vec(), num_blocks * self.block_size)
    }

    /// Grows the request's block table so it can hold `request.num_computed_tokens`, the
    /// prefix-hit `new_computed_blocks` and `num_new_tokens` more tokens. Returns the whole
    /// block table, or `None` (nothing changed) when there are not enough free blocks.
    pub fn allocate_slots(
        &mut self,
        request: &Request,
        num_new_tokens: usize,
        new_computed_blocks: &[u32],
    ) -> Option<&[u32]> {
        self.free_outside_window(request);
        let num_total =
            request.num_computed_tokens + new_computed_blocks.len() * self.block_size + num_new_tokens;
        let num_required = num_total.div_ceil(self.block_size);
        let num_held = self.block_ids(&request.request_id).len();
        let num_to_allocate = num_required.saturating_sub(num_held + new_computed_blocks.len());
        let num_null = new_computed_blocks
            .iter()
            .take_while(|&&b| b == NULL_BLOCK)
            .count();
        let live = &new_computed_blocks[num_null..];
        let num_revived = live.iter().filter(|&&b| self.pool.ref_count(b) == 0).count();
        if num_to_allocate + num_revived > self.pool.num_free_blocks() {
            return None;
        }
        self.pool.touch(live);
        let fresh = self.pool.allocate(num_to_allocate)?;
        let state = self.requests.entry(request.request_id.clone()).or_default();
        if state.block_ids.is_empty() {
            state.num_null_blocks = num_null;
        }
        state.block_ids.extend_from_slice(new_computed_blocks);
        state.block_ids.extend_from_slice(&fresh);
        Some(&state.block_ids)
    }

    /// Records the hashes of the request's blocks that are full of computed tokens
    /// (`request.num_computed_tokens`), prompt or generated, so later requests can hit them.
    pub fn cache_full_blocks(&mut self, request: &Request) {
        if !self.enable_prefix_caching {
            return;
        }
        let num_full =
            (request.num_computed_tokens / self.block_size).min(self.block_ids(&request.request_id).len());
        let num_cached = self
            .requests
            .get(&request.request_id)
            .map_or(0, |r| r.num_cached_blocks);
        if num_full <= num_cached {
            return;
        }
        self.ensure_hashes(request, num_full);
        let Some(state) = self.requests.get_mut(&request.request_id) else {
            return;
        };
        for i in state.num_cached_blocks.max(state.num_null_blocks)..num_full {
            self.pool.cache_block(state.block_ids[i], state.block_hashes[i]);
        }
        state.num_cached_blocks = num_full;
    }

    /// Releases every block of the request and forgets it. Blocks return to the free queue
    /// tail-first, so the request's last blocks are evicted before its first ones.
    pub fn free(&mut self, request_id: &str) {
        if let Some(state) = self.requests.remove(request_id) {
            let live = state.block_ids.into_iter().skip(state.num_null_blocks);
            self.pool.free_blocks(live.rev());
        }
    }

    /// The first block the window of a query at `position` reads (0 without a window).
    fn first_needed_block(&self, position: usize) -> usize {
        self.sliding_window.map_or(0, |window| {
            (position + 1).saturating_sub(window) / self.block_size
        })
    }

    /// Releases the request's blocks that lie wholly before the window of its next token (at
    /// `num_computed_tokens`), earliest last into the free queue, so they stay hittable longest.
    fn free_outside_window(&mut self, request: &Request) {
        let first_needed = self.first_needed_block(request.num_computed_tokens);
        let Some(state) = self.requests.get_mut(&request.request_id) else {
            return;
        };
        let end = first_needed.min(state.block_ids.len());
        if end <= state.num_null_blocks {
            return;
        }
        let released = &mut state.block_ids[state.num_null_blocks..end];
        let blocks: Vec<u32> = released.iter().rev().copied().collect();
        released.fill(NULL_BLOCK);
        state.num_null_blocks = end;
        // Hashes of released blocks are already recorded when caching is on.
        state.num_cached_blocks = state.num_cached_blocks.max(end);
        self.num_window_freed_blocks += blocks.len() as u64;
        self.pool.free_blocks(blocks);
    }

    /// Forgets every cached block hash. Returns false when prefix caching is off.
    pub fn reset_prefix_cache(&mut self) -> bool {
        for state in self.requests.values_mut() {
            state.num_cached_blocks = 0;
        }
        self.pool.reset_prefix_cache()
    }

    /// Checks reference counts against the block tables, and the pool's own invariants.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut expected = vec![0u32; self.pool.num_blocks()];
        for (id, state) in &self.requests {
            if state.block_ids[..state.num_null_blocks.min(state.block_ids.len())]
                .iter()
                .any(|&b| b != NULL_BLOCK)
            {
                return Err(format!("request {id}: a released entry holds a block"));
            }
            for &block in &state.block_ids[state.num_null_blocks.min(state.block_ids.len())..] {
                let Some(slot) = expected.get_mut(block as usize) else {
                    return Err(format!("request {id} holds block {block}, out of range"));
                };
                *slot += 1;
            }
            if state.num_cached_blocks > state.block_ids.len() {
                return Err(format!(
                    "request {id}: {} cached blocks but only {} held",
                    state.num_cached_blocks,
                    state.block_ids.len()
                ));
            }
        }
        self.pool.check_invariants(&expected)
    }

    /// Computes the hashes of the request's first `num_blocks` full blocks (creating its entry).
    fn ensure_hashes(&mut self, request: &Request, num_blocks: usize) {
        let state = self.requests.entry(request.request_id.clone()).or_default();
        while state.block_hashes.len() < num_blocks {
            let i = state.block_hashes.len();
            let parent = i.checked_sub(1).map(|p| state.block_hashes[p]);
            self.token_scratch.clear();
            let start = i * self.block_size;
            self.token_scratch
                .extend((start..start + self.block_size).filter_map(|p| request.token_at(p)));
            state.block_hashes.push(BlockHash::new(
                parent,
                &self.token_scratch,
                request.block_hash_extra_key(),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::sampling_params::SamplingParams;

    fn request(id: &str, prompt: Vec<u32>) -> Request {
        Request::new(id, prompt, Arc::new(SamplingParams::default()), vec![], 0, 0, 0.0)
    }

    #[test]
    fn allocates_by_blocks_and_refuses_when_full() {
        let mut kv = KvCacheManager::new(4, 4, true);
        let a = request("a", (0..10).collect());
        assert_eq!(kv.allocate_slots(&a, 10, &[]).map(<[u32]>::len), Some(3));
        let b = request("b", (0..8).collect());
        assert!(kv.allocate_slots(&b, 8, &[]).is_none());
        assert!(kv.block_ids("b").is_empty());
        kv.check_invariants().unwrap();
        assert_eq!(kv.usage(), 0.75);
        kv.free("a");
        assert_eq!(kv.usage(), 0.0);
        kv.check_invariants().unwrap();
    }

    #[test]
    fn prefix_hits_cover_full_blocks_but_never_the_last_token() {
        let mut kv = KvCacheManager::new(8, 4, true);
        let mut a = request("a", (0..8).collect());
        kv.allocate_slots(&a, 8, &[]).unwrap();
        a.num_computed_tokens = 8;
        kv.cache_full_blocks(&a);
        // Same 8 tokens: only the first block may be reused (the last token is recomputed).
        let b = request("b", (0..8).collect());
        let (blocks, num_tokens) = kv.get_computed_blocks(&b);
        assert_eq!((blocks.len(), num_tokens), (1, 4));
        let c = request("c", (0..9).collect());
        let (blocks, num_tokens) = kv.get_computed_blocks(&c);
        assert_eq!(num_tokens, 8);
        kv.allocate_slots(&c, 1, &blocks).unwrap();
        assert_eq!(&kv.block_ids("c")[..2], kv.block_ids("a"));
        kv.check_invariants().unwrap();
        kv.free("a");
        kv.free("c");
        kv.free("b");
        kv.check_invariants().unwrap();
        // Freed blocks stay hittable.
        let (_, num_tokens) = kv.get_computed_blocks(&c);
        assert_eq!(num_tokens, 8);
        assert!(kv.reset_prefix_cache());
        assert_eq!(kv.get_computed_blocks(&c).1, 0);
        kv.free("c");
        kv.check_invariants().unwrap();
    }

    #[test]
    fn cache_salt_separates_prefixes() {
        let mut kv = KvCacheManager::new(8, 2, true);
        let mut a = request("a", vec![1, 2, 3, 4, 5]).with_cache_salt(Some(1));
        kv.allocate_slots(&a, 5, &[]).unwrap();
        a.num_computed_tokens = 5;
        kv.cache_full_blocks(&a);
        let b = request("b", vec![1, 2, 3, 4, 5]);
        assert_eq!(kv.get_computed_blocks(&b).1, 0);
        let c = request("c", vec![1, 2, 3, 4, 5]).with_cache_salt(Some(1));
        assert_eq!(kv.get_computed_blocks(&c).1, 4);
    }

    #[test]
    fn adapters_separate_prefixes() {
        let mut kv = KvCacheManager::new(8, 2, true);
        let mut a = request("a", vec![1, 2, 3, 4, 5]).with_lora_id(Some(1));
        kv.allocate_slots(&a, 5, &[]).unwrap();
        a.num_computed_tokens = 5;
        kv.cache_full_blocks(&a);
        for other in [None, Some(2)] {
            let b = request("b", vec![1, 2, 3, 4, 5]).with_lora_id(other);
            assert_eq!(
                kv.get_computed_blocks(&b).1,
                0,
                "adapter {other:?} must not hit adapter 1's KV"
            );
        }
        let same = request("c", vec![1, 2, 3, 4, 5]).with_lora_id(Some(1));
        assert_eq!(kv.get_computed_blocks(&same).1, 4);
    }

    #[test]
    fn cached_blocks_carry_the_prefix_block_hashes() {
        let mut kv = KvCacheManager::new(8, 4, true);
        let prompt: Vec<u32> = (100..111).collect();
        let mut a = request("a", prompt.clone()).with_cache_salt(Some(7));
        kv.allocate_slots(&a, prompt.len(), &[]).unwrap();
        a.num_computed_tokens = prompt.len();
        kv.cache_full_blocks(&a);
        let expected = crate::block_pool::prefix_block_hashes(&prompt, 4, Some(7));
        assert_eq!(expected.len(), 2);
        let cached: Vec<_> = kv.block_ids("a")[..2]
            .iter()
            .map(|&b| kv.pool.hash_of(b))
            .collect();
        assert_eq!(cached, expected.into_iter().map(Some).collect::<Vec<_>>());
        assert!(crate::block_pool::prefix_block_hashes(&prompt, 0, None).is_empty());
    }

    #[test]
    fn prompt_logprobs_requests_skip_the_lookup() {
        let mut kv = KvCacheManager::new(8, 2, true);
        let mut a = request("a", vec![1, 2, 3, 4, 5]);
        kv.allocate_slots(&a, 5, &[]).unwrap();
        a.num_computed_tokens = 5;
        kv.cache_full_blocks(&a);
        let mut b = request("b", vec![1, 2, 3, 4, 5]);
        b.sampling_params = Arc::new(SamplingParams {
            prompt_logprobs: Some(0),
            ..Default::default()
        });
        assert_eq!(kv.get_computed_blocks(&b).1, 0);
        assert_eq!(kv.get_computed_blocks(&request("c", vec![1, 2, 3, 4, 5])).1, 4);
    }

    #[test]
    fn disabled_prefix_caching_never_hits() {
        let mut kv = KvCacheManager::new(8, 2, false);
        let mut a = request("a", vec![1, 2, 3, 4, 5]);
        kv.allocate_slots(&a, 5, &[]).unwrap();
        a.num_computed_tokens = 5;
        kv.cache_full_blocks(&a);
        assert_eq!(kv.get_computed_blocks(&request("b", vec![1, 2, 3, 4, 5])).1, 0);
        assert!(!kv.reset_prefix_cache());
    }
}

#[cfg(test)]
#[path = "kv_cache_window_tests.rs"]
mod window_tests;
