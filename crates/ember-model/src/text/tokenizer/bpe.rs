//! The BPE merge loop shared by both model families, and the byte-level (GPT-2 style)
//! BPE model that merges pairs by rank from a `(left_id, right_id)` map.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// One symbol of a word being merged: a byte range of the word and its token id, if any.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Symbol {
    pub start: usize,
    pub end: usize,
    pub id: Option<u32>,
    prev: usize,
    next: usize,
}

const NONE: usize = usize::MAX;

impl Symbol {
    /// A symbol over `start..end` with an optional id; links are set by [`merge`].
    pub fn new(start: usize, end: usize, id: Option<u32>) -> Self {
        Self {
            start,
            end,
            id,
            prev: NONE,
            next: NONE,
        }
    }
}

/// A candidate merge: priority (smaller first), left position, the pair's extent at the time
/// it was queued (to detect stale entries), and the merged token id.
type Candidate = Reverse<(u64, usize, usize, usize, u32)>;

/// Repeatedly merges the adjacent pair with the smallest priority (ties: leftmost) as given
/// by `lookup(left, right) -> Some((priority, merged_id))`, until no pair can merge.
/// Returns the surviving symbols in order.
pub(crate) fn merge<F>(mut syms: Vec<Symbol>, lookup: F) -> Vec<Symbol>
where
    F: Fn(&Symbol, &Symbol) -> Option<(u64, u32)>,
{
    let n = syms.len();
    if n < 2 {
        return syms;
    }
    for (i, s) in syms.iter_mut().enumerate() {
        s.prev = if i == 0 { NONE } else { i - 1 };
        s.next = if i + 1 == n { NONE } else { i + 1 };
    }
    let mut heap: BinaryHeap<Candidate> = BinaryHeap::with_capacity(n);
    let push = |heap: &mut BinaryHeap<Candidate>, syms: &[Symbol], left: usize| {
        let right = syms[left].next;
        if right == NONE {
            return;
        }
        if let Some((prio, id)) = lookup(&syms[left], &syms[right]) {
            heap.push(Reverse((prio, left, syms[left].end, syms[right].end, id)));
        }
    };
    for i in 0..n - 1 {
        push(&mut heap, &syms, i);
    }
    while let Some(Reverse((_, left, left_end, right_end, id))) = heap.pop() {
        let right = syms[left].next;
        // Stale: the left symbol was absorbed, grew, or its neighbour changed.
        if syms[left].start == syms[left].end || right == NONE {
            continue;
        }
        if syms[left].end != left_end || syms[right].end != right_end {
            continue;
        }
        syms[left].end = right_end;
        syms[left].id = Some(id);
        let after = syms[right].next;
        syms[left].next = after;
        syms[right].start = syms[right].end; // mark dead
        if after != NONE {
            syms[after].prev = left;
        }
        let prev = syms[left].prev;
        if prev != NONE {
            push(&mut heap, &syms, prev);
        }
        push(&mut heap, &syms, left);
    }
    syms.retain(|s| s.start < s.end);
    syms
}

/// Byte-level BPE: words are raw bytes, each byte starts as its byte-level token, and pairs
/// merge by rank.
#[derive(Debug)]
pub(crate) struct ByteLevelBpe {
    /// `(left, right) -> (rank, merged)`.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Token id of each single byte.
    byte_ids: [Option<u32>; 256],
    /// Whole words found in the vocabulary skip merging (Llama 3 style).
    ignore_merges: bool,
    /// Decoded bytes of normal tokens -> id, for `ignore_merges`.
    word_ids: HashMap<Vec<u8>, u32>,
}

impl ByteLevelBpe {
    /// Builds the model. `merges` lists `(left, right, merged)` ids in rank order.
    pub fn new(
        merges: impl IntoIterator<Item = (u32, u32, u32)>,
        byte_ids: [Option<u32>; 256],
        ignore_merges: bool,
        word_ids: HashMap<Vec<u8>, u32>,
    ) -> Self {
        let mut map = HashMap::new();
        for (rank, (l, r, m)) in merges.into_iter().enumerate() {
            // The first (best) rank of a duplicated pair wins.
            map.entry((l, r)).or_insert((rank as u32, m));
        }
        Self {
            merges: map,
            byte_ids,
            ignore_merges,
            word_ids,
        }
    }

    /// Appends the tokens of one pre-tokenized word (raw bytes).
    pub fn encode_word(&self, word: &[u8], out: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        if self.ignore_merges {
            if let Some(&id) = self.word_ids.get(word) {
                out.push(id);
                return;
            }
        }
        let syms: Vec<Symbol> = word
            .iter()
            .enumerate()
            .map(|(i, &b)| Symbol::new(i, i + 1, self.byte_ids[usize::from(b)]))
            .collect();
        let merged = merge(syms, |l, r| {
            let (rank, id) = *self.merges.get(&(l.id?, r.id?))?;
            Some((u64::from(rank), id))
        });
        // Bytes without a token are dropped, as llama.cpp does.
        out.extend(merged.iter().filter_map(|s| s.id));
    }
}
