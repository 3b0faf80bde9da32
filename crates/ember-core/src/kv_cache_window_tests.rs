//! Sliding-window release of [`KvCacheManager`] blocks, with prefix hits and forks.

use std::sync::Arc;

use super::*;
use crate::sampling_params::SamplingParams;

fn request(id: &str, prompt: Vec<u32>) -> Request {
    Request::new(id, prompt, Arc::new(SamplingParams::default()), vec![], 0, 0, 0.0)
}

/// Runs `request` to `num_tokens` computed tokens, `chunk` at a time, caching full blocks.
fn advance(kv: &mut KvCacheManager, request: &mut Request, num_tokens: usize, chunk: usize) {
    while request.num_computed_tokens < num_tokens {
        let n = chunk.min(num_tokens - request.num_computed_tokens);
        kv.allocate_slots(request, n, &[]).expect("room");
        request.num_computed_tokens += n;
        kv.cache_full_blocks(request);
        kv.check_invariants().unwrap();
    }
}

#[test]
fn blocks_wholly_before_the_window_are_released() {
    // Window 6, blocks of 4: the token at position p reads p-5..=p.
    let mut kv = KvCacheManager::new(16, 4, true).with_sliding_window(Some(6));
    let mut a = request("a", (0..30).collect());
    advance(&mut kv, &mut a, 20, 3);
    // Released at the last allocation (18 computed): the next token at 18 reads 13..=18, so
    // blocks 0..3 (positions 0..12) are released; block 3 holds 12..16 and is still needed.
    let table = kv.block_ids("a").to_vec();
    assert_eq!(&table[..3], &[NULL_BLOCK; 3]);
    assert!(table[3..].iter().all(|&b| b != NULL_BLOCK));
    assert_eq!(kv.num_window_freed_blocks(), 3);
    assert_eq!(kv.num_free_blocks(), 16 - (table.len() - 3));
    kv.allocate_slots(&a, 1, &[]).unwrap();
    // At 20 the window starts at 15: block 3 (12..16) is still read.
    assert_eq!(
        kv.block_ids("a")[3..]
            .iter()
            .filter(|&&b| b == NULL_BLOCK)
            .count(),
        0
    );
    kv.free("a");
    assert_eq!(kv.usage(), 0.0);
    kv.check_invariants().unwrap();
}

#[test]
fn without_a_window_nothing_is_released() {
    let mut kv = KvCacheManager::new(16, 4, true);
    let mut a = request("a", (0..30).collect());
    advance(&mut kv, &mut a, 28, 5);
    assert!(!kv.block_ids("a").contains(&NULL_BLOCK));
    assert_eq!(kv.num_window_freed_blocks(), 0);
}

#[test]
fn released_blocks_stay_hittable_by_the_prefix_cache() {
    let mut kv = KvCacheManager::new(16, 4, true).with_sliding_window(Some(5));
    let mut a = request("a", (0..24).collect());
    advance(&mut kv, &mut a, 24, 4);
    assert!(kv.num_window_freed_blocks() >= 4);
    let held_a: Vec<u32> = kv.block_ids("a").to_vec();
    // A new request with the same 24 tokens plus one hits all six full blocks.
    let b = request("b", (0..25).collect());
    let (blocks, num_tokens) = kv.get_computed_blocks(&b);
    assert_eq!((blocks.len(), num_tokens), (6, 24));
    assert_eq!(&blocks[4..], &held_a[4..]);
    kv.allocate_slots(&b, 1, &blocks).unwrap();
    kv.check_invariants().unwrap();
    // Its next allocation releases what lies before its own window.
    let mut b = b;
    b.num_computed_tokens = 25;
    kv.allocate_slots(&b, 1, &[]).unwrap();
    assert_eq!(&kv.block_ids("b")[..5], &[NULL_BLOCK; 5]);
    kv.free("a");
    kv.free("b");
    kv.check_invariants().unwrap();
    assert_eq!(kv.usage(), 0.0);
}

#[test]
fn forks_share_blocks_only_when_their_window_is_still_held() {
    let mut kv = KvCacheManager::new(32, 4, false).with_sliding_window(Some(6));
    let prompt: Vec<u32> = (0..30).collect();
    let mut source = request("s", prompt.clone());
    advance(&mut kv, &mut source, 30, 30);
    let fork = request("f", prompt.clone());
    // The single 30-token chunk released nothing yet (released at the next allocation).
    let (blocks, num_tokens) = kv.forkable_blocks(&source, &fork);
    assert_eq!((blocks.len(), num_tokens), (7, 28));
    kv.allocate_slots(&fork, 2, &blocks).unwrap();
    kv.check_invariants().unwrap();
    // Once the source decodes on, its early blocks are released; the fork's own window
    // (from position 28 - 5) reaches one of them, so nothing is shared.
    kv.allocate_slots(&source, 1, &[]).unwrap();
    assert_eq!(kv.forkable_blocks(&source, &request("g", prompt.clone())).1, 0);
    // A source prefilled in chunks released the blocks before its last chunk's window, which
    // is the fork's window too: the fork shares the table, released entries included.
    let mut chunked = request("c", (100..140).collect());
    advance(&mut kv, &mut chunked, 40, 4);
    let fork = request("d", (100..140).collect());
    let (blocks, num_tokens) = kv.forkable_blocks(&chunked, &fork);
    assert_eq!(num_tokens, 36);
    assert_eq!(&blocks[..7], &[NULL_BLOCK; 7]);
    kv.allocate_slots(&fork, 4, &blocks).unwrap();
    kv.check_invariants().unwrap();
    let mut fork = fork;
    fork.num_computed_tokens = 40;
    kv.allocate_slots(&fork, 1, &[]).unwrap();
    kv.check_invariants().unwrap();
    for id in ["s", "f", "c", "d"] {
        kv.free(id);
    }
    kv.check_invariants().unwrap();
    assert_eq!(kv.usage(), 0.0);
}
