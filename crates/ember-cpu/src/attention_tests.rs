//! Paged attention against a naive f64 softmax, over shuffled block tables and every KV
//! cache dtype; every kernel family bit for bit against the scalar one; batch invariance.

use crate::test_util::Rng;
use crate::{CpuBackend, CpuTensor, Isa};
use ember_core::{AttentionParams, AttentionShape, Backend, KvCacheSpec, StepBatch, WeightDType};

/// One test sequence: its context length and how many of its last tokens are queried.
struct Seq {
    len: usize,
    num_new: usize,
}

struct Case {
    meta: StepBatch,
    query: CpuTensor,
}

/// Builds step metadata for `seqs` whose blocks come from `blocks` (consumed in order).
fn build_case(rng: &mut Rng, seqs: &[(usize, usize, Vec<u32>)], width: usize, max_blocks: usize) -> Case {
    let mut meta = StepBatch {
        max_blocks_per_seq: max_blocks,
        query_start_loc: vec![0],
        ..Default::default()
    };
    for (len, num_new, table) in seqs {
        for pos in len - num_new..*len {
            meta.positions.push(pos as u32);
        }
        meta.query_start_loc.push(meta.positions.len() as u32);
        meta.seq_lens.push(*len as u32);
        let mut row = table.clone();
        row.resize(max_blocks, 0);
        meta.block_tables.extend(row);
    }
    let n = meta.positions.len();
    Case {
        query: CpuTensor::from_vec(n, width, rng.vec(n * width, 1.0)).unwrap(),
        meta,
    }
}

#[test]
fn attention_matches_naive_f64_and_is_batch_invariant() {
    let seqs = [
        Seq { len: 1, num_new: 1 },
        Seq { len: 15, num_new: 15 },
        Seq { len: 16, num_new: 1 },
        Seq { len: 17, num_new: 5 },
        Seq { len: 100, num_new: 3 },
    ];
    let mut rng = Rng::new(21);
    let kv_dtypes = [
        WeightDType::F32,
        WeightDType::F16,
        WeightDType::BF16,
        WeightDType::Q8_0,
    ];
    for (block_size, kv_dtype) in [16, 4].into_iter().flat_map(|b| kv_dtypes.map(|t| (b, t))) {
        let backend = CpuBackend::with_isa(Some(2), Isa::detect())
            .with_kv_cache_dtype(kv_dtype)
            .unwrap();
        for (num_heads, num_kv_heads, head_dim) in [(2, 2, 68usize), (6, 2, 64), (4, 1, 128), (3, 1, 96)] {
            if !head_dim.is_multiple_of(kv_dtype.block_len()) {
                continue;
            }
            let max_blocks = 100usize.div_ceil(block_size);
            let num_blocks = seqs.iter().map(|s| s.len.div_ceil(block_size)).sum::<usize>() + 3;
            let spec = KvCacheSpec {
                num_layers: 2,
                num_blocks,
                block_size,
                num_kv_heads,
                head_dim,
            };
            let mut cache = backend.allocate_kv_cache(&spec).unwrap();
            // Shuffled block ids.
            let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
            for i in (1..ids.len()).rev() {
                ids.swap(i, rng.below(i + 1));
            }
            let kv_width = num_kv_heads * head_dim;
            let mut tables = Vec::new();
            let mut next = 0;
            for s in &seqs {
                let nb = s.len.div_ceil(block_size);
                let table = ids[next..next + nb].to_vec();
                next += nb;
                let slots: Vec<u32> = (0..s.len)
                    .map(|p| table[p / block_size] * block_size as u32 + (p % block_size) as u32)
                    .collect();
                let k = CpuTensor::from_vec(s.len, kv_width, rng.vec(s.len * kv_width, 1.0)).unwrap();
                let v = CpuTensor::from_vec(s.len, kv_width, rng.vec(s.len * kv_width, 1.0)).unwrap();
                let step = StepBatch {
                    slot_mapping: slots,
                    ..StepBatch::default()
                };
                backend.write_kv(&step, &mut cache, 1, &k, &v).unwrap();
                tables.push((s.len, s.num_new, table));
            }
            let shape = AttentionShape {
                num_heads,
                num_kv_heads,
                head_dim,
            };
            for (sliding_window, logit_soft_cap) in ATTENTION_OPTIONS {
                let params = AttentionParams {
                    sliding_window,
                    logit_soft_cap,
                    ..AttentionParams::causal(shape)
                };
                let scale = params.scale;
                let width = num_heads * head_dim;
                let first_pos = |pos: usize| sliding_window.map_or(0, |w| (pos + 1).saturating_sub(w));
                // Blocks wholly before every window of a sequence's queries are never read.
                let nulled: Vec<(usize, usize, Vec<u32>)> = tables
                    .iter()
                    .map(|(len, num_new, table)| {
                        let first_block = first_pos(len - num_new) / block_size;
                        let mut table = table.clone();
                        table[..first_block].fill(u32::MAX);
                        (*len, *num_new, table)
                    })
                    .collect();
                let case = build_case(&mut rng, &nulled, width, max_blocks);
                let out = backend
                    .attention(&case.meta, &case.query, &cache, 1, &params)
                    .unwrap();
                for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni]
                    .into_iter()
                    .filter(|i| i.is_supported())
                {
                    let other = CpuBackend::with_isa(Some(1), isa)
                        .with_kv_cache_dtype(kv_dtype)
                        .unwrap();
                    let got = other
                        .attention(&case.meta, &case.query, &cache, 1, &params)
                        .unwrap();
                    let same = got
                        .as_slice()
                        .iter()
                        .zip(out.as_slice())
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{isa:?} differs ({kv_dtype}, head_dim {head_dim})");
                }
                // Naive f64 reference.
                let (keys, values) = (cache.keys(1), cache.values(1));
                for (s, (len, num_new, table)) in tables.iter().enumerate() {
                    for i in 0..*num_new {
                        let t = case.meta.query_start_loc[s] as usize + i;
                        let pos = len - num_new + i;
                        for h in 0..num_heads {
                            let kvh = h / (num_heads / num_kv_heads);
                            let q = query_as_dotted(
                                kv_dtype,
                                &case.query.row(t)[h * head_dim..(h + 1) * head_dim],
                            );
                            let offs: Vec<usize> = (first_pos(pos)..=pos)
                                .map(|j| {
                                    let slot = table[j / block_size] as usize * block_size + j % block_size;
                                    slot * kv_width + kvh * head_dim
                                })
                                .collect();
                            let scores: Vec<f64> = offs
                                .iter()
                                .map(|&o| {
                                    let d: f64 = (0..head_dim)
                                        .map(|e| f64::from(q[e]) * f64::from(keys[o + e]))
                                        .sum();
                                    let score = d * f64::from(scale);
                                    logit_soft_cap
                                        .map_or(score, |c| f64::from(c) * (score / f64::from(c)).tanh())
                                })
                                .collect();
                            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                            let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                            let z: f64 = w.iter().sum();
                            for e in 0..head_dim {
                                let want: f64 = offs
                                    .iter()
                                    .zip(&w)
                                    .map(|(&o, &p)| p * f64::from(values[o + e]))
                                    .sum::<f64>()
                                    / z;
                                let got = f64::from(out.row(t)[h * head_dim + e]);
                                assert!(
                                (got - want).abs() < 2e-5,
                                "{kv_dtype} bs={block_size} heads={num_heads} {params:?} seq={s} t={t} h={h}: {got} vs {want}"
                            );
                            }
                        }
                    }
                }
                // Each sequence alone gives bit-identical rows.
                for (s, seq) in nulled.iter().enumerate() {
                    let mut alone = build_case(&mut rng, std::slice::from_ref(seq), width, max_blocks);
                    let start = case.meta.query_start_loc[s] as usize;
                    let rows: Vec<f32> =
                        case.query.as_slice()[start * width..(start + seq.1) * width].to_vec();
                    alone.query = CpuTensor::from_vec(seq.1, width, rows).unwrap();
                    let got = backend
                        .attention(&alone.meta, &alone.query, &cache, 1, &params)
                        .unwrap();
                    for i in 0..seq.1 {
                        let same = got
                            .row(i)
                            .iter()
                            .zip(out.row(start + i))
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "sequence {s} row {i} depends on the batch");
                    }
                }
            }
        }
    }
}

/// The query head as the kernels dot it: itself, or against a Q8_0 cache its 16-bit
/// quantization widened back (the integer-dot path quantizes the query).
fn query_as_dotted(kv_dtype: WeightDType, q: &[f32]) -> Vec<f32> {
    if kv_dtype != WeightDType::Q8_0 {
        return q.to_vec();
    }
    let qq = crate::attention_q8::QuantQuery::new(q, q.len());
    qq.qs
        .iter()
        .enumerate()
        .map(|(e, &v)| f32::from(v) * qq.d[e / 32])
        .collect()
}

/// (sliding_window, logit_soft_cap) combinations every attention test runs.
const ATTENTION_OPTIONS: [(Option<usize>, Option<f32>); 4] = [
    (None, None),
    (Some(7), None),
    (None, Some(2.5)),
    (Some(20), Some(1.5)),
];

#[test]
fn attention_rejects_bad_metadata() {
    let backend = CpuBackend::new(Some(1));
    let spec = KvCacheSpec {
        num_layers: 1,
        num_blocks: 2,
        block_size: 4,
        num_kv_heads: 1,
        head_dim: 8,
    };
    let cache = backend.allocate_kv_cache(&spec).unwrap();
    let shape = AttentionShape {
        num_heads: 1,
        num_kv_heads: 1,
        head_dim: 8,
    };
    let params = AttentionParams {
        scale: 1.0,
        ..AttentionParams::causal(shape)
    };
    let q = CpuTensor::from_vec(1, 8, vec![0.0; 8]).unwrap();
    let meta = StepBatch {
        input_ids: vec![0],
        positions: vec![5],
        slot_mapping: vec![5],
        query_start_loc: vec![0, 1],
        seq_lens: vec![6],
        block_tables: vec![0, 7],
        max_blocks_per_seq: 2,
        logits_indices: vec![0],
    };
    assert!(
        backend.attention(&meta, &q, &cache, 0, &params).is_err(),
        "block id 7 of 2"
    );
    let meta = StepBatch {
        positions: vec![6],
        block_tables: vec![0, 1],
        ..meta
    };
    assert!(
        backend.attention(&meta, &q, &cache, 0, &params).is_err(),
        "position past seq_len"
    );
    let meta = StepBatch {
        positions: vec![5],
        ..meta
    };
    assert!(backend.attention(&meta, &q, &cache, 0, &params).is_ok());
    assert!(
        backend.attention(&meta, &q, &cache, 1, &params).is_err(),
        "layer out of range"
    );
    for bad in [
        AttentionParams {
            sliding_window: Some(0),
            ..params
        },
        AttentionParams {
            logit_soft_cap: Some(0.0),
            ..params
        },
        AttentionParams {
            logit_soft_cap: Some(f32::NAN),
            ..params
        },
    ] {
        let err = backend
            .attention(&meta, &q, &cache, 0, &bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be positive"), "{err}");
    }
    // A window of 2 reads only block 1 (positions 4 and 5): block 0 may be released.
    let windowed = AttentionParams {
        sliding_window: Some(2),
        ..params
    };
    let released = StepBatch {
        block_tables: vec![u32::MAX, 1],
        ..meta
    };
    assert!(backend.attention(&released, &q, &cache, 0, &windowed).is_ok());
    assert!(backend.attention(&released, &q, &cache, 0, &params).is_err());
}

/// A half-precision or Q8_0 cache holds the written keys and values to its rounding:
/// attention outputs stay within a few of its steps of the float32 cache's (values of order 1;
/// a Q8_0 step is a block's `max|x| / 127`).
#[test]
fn half_caches_round_what_is_written() {
    let mut rng = Rng::new(5);
    let spec = KvCacheSpec {
        num_layers: 1,
        num_blocks: 4,
        block_size: 16,
        num_kv_heads: 3,
        head_dim: 64,
    };
    let shape = AttentionShape {
        num_heads: 9,
        num_kv_heads: 3,
        head_dim: 64,
    };
    let n = 40;
    let k = CpuTensor::from_vec(n, 192, rng.vec(n * 192, 1.0)).unwrap();
    let v = CpuTensor::from_vec(n, 192, rng.vec(n * 192, 1.0)).unwrap();
    let q = CpuTensor::from_vec(n, 576, rng.vec(n * 576, 1.0)).unwrap();
    let meta = StepBatch {
        positions: (0..n as u32).collect(),
        slot_mapping: (0..n as u32).collect(),
        query_start_loc: vec![0, n as u32],
        seq_lens: vec![n as u32],
        block_tables: vec![0, 1, 2, 3],
        max_blocks_per_seq: 4,
        ..StepBatch::default()
    };
    let params = AttentionParams::causal(shape);
    let run = |dtype: WeightDType| {
        let backend = CpuBackend::new(Some(1)).with_kv_cache_dtype(dtype).unwrap();
        let mut cache = backend.allocate_kv_cache(&spec).unwrap();
        backend.write_kv(&meta, &mut cache, 0, &k, &v).unwrap();
        backend.attention(&meta, &q, &cache, 0, &params).unwrap()
    };
    let exact = run(WeightDType::F32);
    for (dtype, ulp) in [
        (WeightDType::F16, 2f32.powi(-11)),
        (WeightDType::BF16, 2f32.powi(-8)),
        (WeightDType::Q8_0, 1.0 / 127.0),
    ] {
        let got = run(dtype);
        let diff = got
            .as_slice()
            .iter()
            .zip(exact.as_slice())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff > 0.0 && diff <= 4.0 * ulp, "{dtype}: {diff}");
    }
}
