//! CUDA-graph batch buckets: decode steps are padded up to the next captured batch size
//! (1, 2, 4, 8, 16, 32, then multiples of 32 up to 256) so one graph serves many batch sizes.

/// Largest batch a decode graph is captured for.
pub const MAX_GRAPH_BATCH: usize = 256;

/// Batch sizes captured for a scheduler allowing `max_num_seqs` sequences per step.
pub fn capture_sizes(max_num_seqs: usize) -> Vec<usize> {
    let limit = max_num_seqs.min(MAX_GRAPH_BATCH);
    let mut sizes: Vec<usize> = [1, 2, 4, 8, 16]
        .into_iter()
        .chain((32..=MAX_GRAPH_BATCH).step_by(32))
        .collect();
    // Keep sizes up to the first one that covers `limit`.
    let cover = sizes.iter().position(|&s| s >= limit).unwrap_or(sizes.len() - 1);
    sizes.truncate(cover + 1);
    sizes
}

/// The captured size a batch of `num_seqs` is padded to, or `None` when it is too large.
pub fn bucket_for(num_seqs: usize, sizes: &[usize]) -> Option<usize> {
    sizes.iter().copied().find(|&s| s >= num_seqs && num_seqs > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_buckets() {
        assert_eq!(capture_sizes(256).len(), 5 + 8);
        assert_eq!(capture_sizes(3), vec![1, 2, 4]);
        assert_eq!(capture_sizes(1000).last(), Some(&256));
        let sizes = capture_sizes(256);
        assert_eq!(bucket_for(1, &sizes), Some(1));
        assert_eq!(bucket_for(3, &sizes), Some(4));
        assert_eq!(bucket_for(17, &sizes), Some(32));
        assert_eq!(bucket_for(33, &sizes), Some(64));
        assert_eq!(bucket_for(256, &sizes), Some(256));
        assert_eq!(bucket_for(257, &sizes), None);
        assert_eq!(bucket_for(0, &sizes), None);
    }
}
