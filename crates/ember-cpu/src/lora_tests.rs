//! The LoRA shrink and expand against one-row matmuls, bit for bit (so a row's values do not
//! depend on the batch or the thread split), with stacked shrinks read at a column offset, ranks
//! on both sides of the skinny threshold, and bad segments refused.

use crate::lora::lora_shrink;
use crate::lora_expand::lora_expand;
use crate::matmul::{matmul, PAR_WORK};
use crate::matmul_tests::{isas, make_matrix, pool};
use crate::matrix::CpuMatrix;
use crate::tensor::CpuTensor;
use crate::test_util::{random_weight_bytes, Rng};
use ember_core::{LoraSegment, WeightDType};

fn f32_matrix(rng: &mut Rng, rows: usize, cols: usize) -> CpuMatrix {
    make_matrix(
        &random_weight_bytes(rng, WeightDType::F32, rows, cols),
        WeightDType::F32,
        rows,
        cols,
    )
}

fn segment<'a>(
    row_ids: &'a [u32],
    matrix: &'a CpuMatrix,
    col_offset: usize,
    scale: f32,
) -> LoraSegment<'a, CpuMatrix> {
    LoraSegment {
        row_ids,
        matrix,
        col_offset,
        scale,
    }
}

#[test]
fn shrink_and_expand_equal_one_row_matmuls_whatever_the_batch() {
    let mut rng = Rng::new(17);
    // Big enough that both products cross the parallel threshold (`PAR_WORK`).
    let (num_rows, k, n) = (40, 520, 600);
    let x = CpuTensor::from_vec(num_rows, k, rng.vec(num_rows * k, 1.0)).unwrap();
    let y_before = rng.vec(num_rows * n, 1.0);
    // Adapter 0: a stacked shrink of 12 rows whose expand reads columns 4..12 (rank 8, skinny
    // lora_B); adapter 1: rank 40 (a lora_B too wide for the stored transpose).
    let a = [f32_matrix(&mut rng, 12, k), f32_matrix(&mut rng, 40, k)];
    let b = [f32_matrix(&mut rng, n, 8), f32_matrix(&mut rng, n, 40)];
    let (offsets, scales) = ([4, 0], [0.5f32, 2.0]);
    let by_adapter = |g: u32| (0..num_rows as u32).filter(|r| r % 3 == g).collect::<Vec<_>>();
    let (rows_0, rows_1) = (by_adapter(0), by_adapter(1));
    let row_ids: [&[u32]; 2] = [&rows_0, &rows_1];
    let shrink_work = (rows_0.len() * 12 + rows_1.len() * 40) * k;
    let expand_work = (rows_0.len() * 8 + rows_1.len() * 40) * n;
    assert!(shrink_work >= PAR_WORK && expand_work >= PAR_WORK);
    let one = pool(1);
    for isa in isas() {
        for threads in [1, 2, 3] {
            let pool = pool(threads);
            let shrinks = [0, 1].map(|g| segment(row_ids[g], &a[g], 0, 1.0));
            let shrunk = lora_shrink(&pool, isa, &x, &shrinks).unwrap();
            assert_eq!((shrunk.rows(), shrunk.cols()), (num_rows, 40));
            let expands = [0, 1].map(|g| segment(row_ids[g], &b[g], offsets[g], scales[g]));
            let mut y = CpuTensor::from_vec(num_rows, n, y_before.clone()).unwrap();
            lora_expand(&pool, isa, &shrunk, &expands, &mut y).unwrap();
            for r in (2..num_rows).step_by(3) {
                assert!(shrunk.row(r).iter().all(|&v| v == 0.0), "base row {r} shrunk");
                assert_eq!(y.row(r), &y_before[r * n..(r + 1) * n], "base row {r} changed");
            }
            for g in 0..2 {
                let (rank_a, rank_b) = (a[g].rows(), b[g].cols());
                for &r in row_ids[g] {
                    let r = r as usize;
                    let x_row = CpuTensor::from_vec(1, k, x.row(r).to_vec()).unwrap();
                    let alone = matmul(&one, isa, &x_row, &a[g], None).unwrap();
                    assert_eq!(
                        &shrunk.row(r)[..rank_a],
                        alone.as_slice(),
                        "shrink row {r} isa {isa:?} threads {threads}"
                    );
                    assert!(shrunk.row(r)[rank_a..].iter().all(|&v| v == 0.0));
                    let t = shrunk.row(r)[offsets[g]..offsets[g] + rank_b].to_vec();
                    let delta = matmul(
                        &one,
                        isa,
                        &CpuTensor::from_vec(1, rank_b, t).unwrap(),
                        &b[g],
                        None,
                    )
                    .unwrap();
                    let want: Vec<f32> = (0..n)
                        .map(|c| y_before[r * n + c] + delta.row(0)[c] * scales[g])
                        .collect();
                    assert_eq!(
                        y.row(r),
                        &want[..],
                        "expand row {r} isa {isa:?} threads {threads}"
                    );
                }
            }
        }
    }
}

#[test]
fn bad_segments_are_errors() {
    let mut rng = Rng::new(3);
    let pool = pool(2);
    let isa = isas()[0];
    let x = CpuTensor::from_vec(4, 16, rng.vec(64, 1.0)).unwrap();
    let (a, a_wide, b) = (
        f32_matrix(&mut rng, 4, 16),
        f32_matrix(&mut rng, 4, 24),
        f32_matrix(&mut rng, 16, 4),
    );
    let shrink = |segments: &[LoraSegment<'_, CpuMatrix>]| lora_shrink(&pool, isa, &x, segments).map(|_| ());
    assert!(
        shrink(&[segment(&[0, 1], &a, 0, 1.0), segment(&[1], &a, 0, 1.0)]).is_err(),
        "row in two segments"
    );
    assert!(shrink(&[segment(&[4], &a, 0, 1.0)]).is_err(), "row out of range");
    assert!(shrink(&[segment(&[0], &a_wide, 0, 1.0)]).is_err(), "lora_A width");
    let shrunk = lora_shrink(&pool, isa, &x, &[segment(&[0, 2], &a, 0, 1.0)]).unwrap();
    let mut y = CpuTensor::zeros(4, 16).unwrap();
    assert!(
        lora_expand(&pool, isa, &shrunk, &[segment(&[0], &b, 1, 1.0)], &mut y).is_err(),
        "columns past the shrink"
    );
    assert!(
        lora_expand(&pool, isa, &shrunk, &[segment(&[0], &a, 0, 1.0)], &mut y).is_err(),
        "lora_B height"
    );
    assert!(lora_expand(&pool, isa, &shrunk, &[segment(&[0], &b, 0, 1.0)], &mut y).is_ok());
}

/// An f16 matrix and the f32 matrix of the same (exactly decoded) values.
fn f16_and_f32_twin(rng: &mut Rng, rows: usize, cols: usize) -> (CpuMatrix, CpuMatrix) {
    let f16_bytes = random_weight_bytes(rng, WeightDType::F16, rows, cols);
    let f32_bytes: Vec<u8> = f16_bytes
        .chunks_exact(2)
        .flat_map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32().to_le_bytes())
        .collect();
    (
        make_matrix(&f16_bytes, WeightDType::F16, rows, cols),
        make_matrix(&f32_bytes, WeightDType::F32, rows, cols),
    )
}

#[test]
fn f16_factors_give_what_their_f32_values_give() {
    let mut rng = Rng::new(29);
    // 21 rows (5 blocks of 4 and one left over), 600 outputs (a block tail of 8 columns).
    let (num_rows, k, n) = (21, 72, 600);
    let x = CpuTensor::from_vec(num_rows, k, rng.vec(num_rows * k, 1.0)).unwrap();
    let y_before = rng.vec(num_rows * n, 1.0);
    let row_ids: Vec<u32> = (0..num_rows as u32).collect();
    // Rank 16 and rank 40. An f16 `lora_B` keeps one copy of its bytes and runs as dot
    // products, as an f32 one of rank 40 does; a skinny f32 one (rank 16) runs over its stored
    // transpose, summing in another order.
    for rank in [16, 40] {
        let (a16, a32) = f16_and_f32_twin(&mut rng, rank, k);
        let (b16, b32) = f16_and_f32_twin(&mut rng, n, rank);
        assert_eq!(b32.transposed().is_some(), rank == 16);
        for isa in isas() {
            let pool = pool(2);
            let run = |a: &CpuMatrix, b: &CpuMatrix| {
                let shrunk = lora_shrink(&pool, isa, &x, &[segment(&row_ids, a, 0, 1.0)]).unwrap();
                let mut y = CpuTensor::from_vec(num_rows, n, y_before.clone()).unwrap();
                lora_expand(&pool, isa, &shrunk, &[segment(&row_ids, b, 0, 0.5)], &mut y).unwrap();
                (shrunk.as_slice().to_vec(), y.as_slice().to_vec())
            };
            let (want, got) = (run(&a32, &b32), run(&a16, &b16));
            assert_eq!(got.0, want.0, "shrink rank {rank} isa {isa:?}");
            if rank == 16 {
                let worst = got
                    .1
                    .iter()
                    .zip(&want.1)
                    .map(|(g, w)| (g - w).abs())
                    .fold(0.0, f32::max);
                assert!(worst < 1e-4, "expand rank {rank} isa {isa:?}: {worst}");
            } else {
                assert_eq!(got.1, want.1, "expand rank {rank} isa {isa:?}");
            }
            assert_ne!(got.1, y_before, "the adapter changed y");
        }
    }
}

#[test]
fn q8_0_shrinks_equal_one_row_quantized_matmuls_whatever_the_batch() {
    let mut rng = Rng::new(41);
    let k = 576;
    let q8 = |rng: &mut Rng, rows: usize| {
        let bytes = random_weight_bytes(rng, WeightDType::Q8_0, rows, k);
        make_matrix(&bytes, WeightDType::Q8_0, rows, k)
    };
    // Ranks 48 and 16 (a stacked q/k/v shrink and a single one) and rank 4 (a padded lane
    // group); 4 rows per segment run as tasks of one region, 40 split by the matmul.
    let a = [q8(&mut rng, 48), q8(&mut rng, 16), q8(&mut rng, 4)];
    let one = pool(1);
    for num_rows in [12, 120] {
        let x = CpuTensor::from_vec(num_rows, k, rng.vec(num_rows * k, 1.0)).unwrap();
        let by_adapter = |g: u32| (0..num_rows as u32).filter(|r| r % 3 == g).collect::<Vec<_>>();
        let row_ids = [by_adapter(0), by_adapter(1), by_adapter(2)];
        let big = row_ids[0].len() * 48 * k >= PAR_WORK;
        assert_eq!(big, num_rows == 120);
        for isa in isas() {
            for threads in [1, 2, 3] {
                let pool = pool(threads);
                let segments: Vec<_> = (0..3).map(|g| segment(&row_ids[g], &a[g], 0, 1.0)).collect();
                let shrunk = lora_shrink(&pool, isa, &x, &segments).unwrap();
                assert_eq!(shrunk.cols(), 48);
                for g in 0..3 {
                    let rank = a[g].rows();
                    for &r in &row_ids[g] {
                        let x_row = CpuTensor::from_vec(1, k, x.row(r as usize).to_vec()).unwrap();
                        let alone = matmul(&one, isa, &x_row, &a[g], None).unwrap();
                        let got = &shrunk.row(r as usize)[..rank];
                        assert_eq!(got, alone.as_slice(), "row {r} isa {isa:?} threads {threads}");
                        assert!(shrunk.row(r as usize)[rank..].iter().all(|&v| v == 0.0));
                    }
                }
            }
        }
    }
}

/// A Q8_0 `lora_B` transpose `[rank, n]` and the f32 `lora_B` `[n, rank]` of its decoded values.
fn q8_0_and_f32_twin(rng: &mut Rng, rank: usize, n: usize) -> (CpuMatrix, CpuMatrix) {
    let bytes = random_weight_bytes(rng, WeightDType::Q8_0, rank, n);
    let b_t = make_matrix(&bytes, WeightDType::Q8_0, rank, n);
    let mut values = vec![0.0f32; rank * n];
    let mut row = vec![0.0f32; n];
    for k in 0..rank {
        b_t.dequantize_row_into(k, &mut row);
        for (c, &v) in row.iter().enumerate() {
            values[c * rank + k] = v;
        }
    }
    let f32_bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    (b_t, make_matrix(&f32_bytes, WeightDType::F32, n, rank))
}

#[test]
fn q8_0_expands_give_what_their_f32_values_give_whatever_the_batch() {
    let mut rng = Rng::new(43);
    // 21 rows (5 blocks of 4 and one left over), 608 outputs (19 blocks of 32: a short last task).
    let (num_rows, n) = (21, 608);
    // Rank 16 (one lane group) and 24 (a second, padded group), read at column offsets of a
    // stacked shrink.
    let (b16_q, b16_f) = q8_0_and_f32_twin(&mut rng, 16, n);
    let (b24_q, b24_f) = q8_0_and_f32_twin(&mut rng, 24, n);
    let shrunk = CpuTensor::from_vec(num_rows, 48, rng.vec(num_rows * 48, 1.0)).unwrap();
    let y_before = rng.vec(num_rows * n, 1.0);
    let by_adapter = |g: u32| (0..num_rows as u32).filter(|r| r % 2 == g).collect::<Vec<_>>();
    let row_ids = [by_adapter(0), by_adapter(1), (0..num_rows as u32).collect()];
    for isa in isas() {
        for threads in [1, 2, 3] {
            let pool = pool(threads);
            let run = |segments: &[LoraSegment<'_, CpuMatrix>]| {
                let mut y = CpuTensor::from_vec(num_rows, n, y_before.clone()).unwrap();
                lora_expand(&pool, isa, &shrunk, segments, &mut y).unwrap();
                y.into_vec()
            };
            // Two adapters in one batch, against each one's f32 twin on all rows.
            let mixed = run(&[
                segment(&row_ids[0], &b16_q, 0, 0.5),
                segment(&row_ids[1], &b24_q, 16, 2.0),
            ]);
            let want16 = run(&[segment(&row_ids[2], &b16_f, 0, 0.5)]);
            let want24 = run(&[segment(&row_ids[2], &b24_f, 16, 2.0)]);
            for r in 0..num_rows {
                let want = if r % 2 == 0 { &want16 } else { &want24 };
                let cols = r * n..(r + 1) * n;
                assert_eq!(
                    mixed[cols.clone()],
                    want[cols.clone()],
                    "row {r} isa {isa:?} threads {threads}"
                );
                assert_ne!(mixed[cols.clone()], y_before[cols], "the adapter changed row {r}");
            }
        }
    }
    // Rank 72: the decoded block outgrows the stack buffer; the f32 twin is not skinny (dot
    // products, another summation order), so the two agree to rounding.
    let (b72_q, b72_f) = q8_0_and_f32_twin(&mut rng, 72, n);
    let wide = CpuTensor::from_vec(num_rows, 72, rng.vec(num_rows * 72, 1.0)).unwrap();
    let pool = pool(2);
    let run = |b: &CpuMatrix| {
        let mut y = CpuTensor::zeros(num_rows, n).unwrap();
        lora_expand(
            &pool,
            isas()[0],
            &wide,
            &[segment(&row_ids[2], b, 0, 1.0)],
            &mut y,
        )
        .unwrap();
        y.into_vec()
    };
    let (got, want) = (run(&b72_q), run(&b72_f));
    let worst = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0, f32::max);
    assert!(worst < 1e-3 && got.iter().any(|&v| v != 0.0), "rank 72: {worst}");
}

#[test]
fn a_q8_0_lora_b_of_the_wrong_shape_is_refused() {
    let mut rng = Rng::new(5);
    let pool = pool(2);
    let x = CpuTensor::from_vec(2, 32, rng.vec(64, 1.0)).unwrap();
    let a = f32_matrix(&mut rng, 16, 32);
    let shrunk = lora_shrink(&pool, isas()[0], &x, &[segment(&[0, 1], &a, 0, 1.0)]).unwrap();
    let mut y = CpuTensor::zeros(2, 64).unwrap();
    // A transpose `[rank 16, 32 outputs]` against 64 outputs, and one of rank 32 > 16 shrunk columns.
    for (rank, n) in [(16, 32), (32, 64)] {
        let b_bytes = random_weight_bytes(&mut rng, WeightDType::Q8_0, rank, n);
        let b_t = make_matrix(&b_bytes, WeightDType::Q8_0, rank, n);
        let err = lora_expand(&pool, isas()[0], &shrunk, &[segment(&[0], &b_t, 0, 1.0)], &mut y).unwrap_err();
        assert!(
            err.to_string().contains(&format!("lora_B [{n}, {rank}] (Q8_0)")),
            "{err}"
        );
    }
}
