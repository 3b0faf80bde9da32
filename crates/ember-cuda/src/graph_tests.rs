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

/// A decode step of `n` sequences with context lengths `base + i`, 16-token blocks.
fn decode(n: usize, base: u32) -> StepBatch {
    let seq_lens: Vec<u32> = (0..n as u32).map(|i| base + i).collect();
    let mbps = seq_lens.iter().map(|&l| l.div_ceil(16)).max().unwrap_or(0) as usize;
    StepBatch {
        input_ids: (0..n as u32).map(|i| 50 + i).collect(),
        positions: seq_lens.iter().map(|l| l - 1).collect(),
        slot_mapping: (0..n as u32).map(|i| 1000 + i).collect(),
        query_start_loc: (0..=n as u32).collect(),
        block_tables: (0..(n * mbps) as u32).map(|b| b + 1).collect(),
        seq_lens,
        max_blocks_per_seq: mbps,
        logits_indices: (0..n as u32).collect(),
    }
}

#[test]
fn context_buckets_are_powers_of_two_capped_by_the_model() {
    let plan = GraphPlan::new(256, 8192, 16);
    assert_eq!(plan.context_bucket(1), Some(1024));
    assert_eq!(plan.context_bucket(1025), Some(2048));
    assert_eq!(plan.context_bucket(8192), Some(8192));
    assert_eq!(plan.context_bucket(8193), None);
    let odd = GraphPlan::new(8, 3000, 16);
    assert_eq!(odd.context_bucket(2100), Some(3000));
    assert_eq!(
        odd.largest(),
        GraphKey {
            batch: 8,
            context: 3000
        }
    );
    let long = GraphPlan::new(256, 131_072, 16);
    assert_eq!(long.max_context, MAX_GRAPH_CONTEXT);
    assert_eq!(
        long.blocks_per_seq(GraphKey {
            batch: 1,
            context: 1024
        }),
        64
    );
}

#[test]
fn only_pure_decode_steps_within_limits_are_graphs() {
    let plan = GraphPlan::new(256, 4096, 16);
    let meta = decode(3, 100);
    assert_eq!(
        plan.key_for(&meta),
        Some(GraphKey {
            batch: 4,
            context: 1024
        })
    );
    let meta = decode(256, 3000);
    assert_eq!(
        plan.key_for(&meta),
        Some(GraphKey {
            batch: 256,
            context: 4096
        })
    );
    let meta = decode(257, 10);
    assert_eq!(plan.key_for(&meta), None, "too many sequences");
    let meta = decode(2, 4096);
    assert_eq!(plan.key_for(&meta), None, "context beyond the plan");
    // A prefill chunk: two tokens for the last sequence.
    let mut meta = decode(2, 100);
    meta.input_ids.push(7);
    meta.positions.push(100);
    meta.slot_mapping.push(7);
    *meta.query_start_loc.last_mut().unwrap() = 3;
    meta.logits_indices = vec![0, 2];
    assert_eq!(plan.key_for(&meta), None);
    // A sequence that does not sample.
    let mut meta = decode(2, 100);
    meta.logits_indices = vec![1];
    assert_eq!(plan.key_for(&meta), None);
    assert_eq!(plan.key_for(&StepBatch::default()), None);
}

#[test]
fn padding_adds_inert_rows_and_restrides_block_tables() {
    let meta = decode(3, 20); // 2 blocks per sequence
    let key = GraphKey {
        batch: 4,
        context: 1024,
    };
    let p = pad_decode_step(&meta, key, 64);
    assert_eq!(p.input_ids, vec![50, 51, 52, 0]);
    assert_eq!(p.positions, vec![19, 20, 21, 0]);
    assert_eq!(p.slot_mapping, vec![1000, 1001, 1002, u32::MAX]);
    assert_eq!(p.seq_lens, vec![20, 21, 22, 0]);
    assert_eq!(p.query_start_loc, vec![0, 1, 2, 3, 4]);
    assert_eq!(p.logits_indices, vec![0, 1, 2, 3]);
    assert_eq!(p.max_blocks_per_seq, 64);
    assert_eq!(p.block_tables.len(), 4 * 64);
    for seq in 0..3 {
        assert_eq!(&p.block_table(seq)[..2], meta.block_table(seq));
        assert!(p.block_table(seq)[2..].iter().all(|&b| b == 0));
    }
    assert!(p.block_table(3).iter().all(|&b| b == 0));
    assert_eq!(plan_key(&p), Some(key), "a padded step is its own key");
}

fn plan_key(meta: &StepBatch) -> Option<GraphKey> {
    GraphPlan::new(256, 4096, 16).key_for(meta)
}

#[test]
fn keys_warm_up_then_capture_then_replay() {
    let mut table = GraphTable::<&str>::default();
    let (a, b) = (
        GraphKey {
            batch: 1,
            context: 1024,
        },
        GraphKey {
            batch: 2,
            context: 1024,
        },
    );
    assert_eq!(table.action(a), GraphAction::Warmup);
    table.warmed(a);
    assert_eq!(table.action(a), GraphAction::Capture);
    table.captured(a, "graph a");
    assert_eq!(table.action(a), GraphAction::Replay);
    assert_eq!(table.graph(a), Some(&"graph a"));
    assert_eq!(table.action(b), GraphAction::Warmup, "keys are independent");
    table.warmed(b);
    table.failed(b);
    assert_eq!(table.action(b), GraphAction::Eager);
    assert_eq!(table.graph(b), None);
    assert_eq!(table.num_captured(), 1);
    table.replayed();
    table.replayed();
    assert_eq!(
        table.stats(),
        ember_core::BackendStats {
            num_cuda_graphs_captured: 1,
            num_cuda_graph_replays: 2,
            num_cuda_graph_failures: 1,
        }
    );
}
