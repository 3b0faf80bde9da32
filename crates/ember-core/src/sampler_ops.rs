//! Whole-row helpers of the sampler, written to vectorize and to avoid full sorts: a fast
//! `exp`, exp-sums, top-k selection, the top-p cutoff by weighted selection, and the
//! inverse-CDF walk.

use std::cmp::Ordering;

/// Largest `k` for which top-k selection uses an insertion buffer instead of a partial sort.
const SMALL_K: usize = 64;

/// Elements per chunk in chunked sums (summed in `f32` lanes, chunks added in `f64`).
const CHUNK: usize = 512;

/// `exp(x)` with ~1e-7 relative error for `x <= 0` (arguments here are `l - max`);
/// exactly 0 below -87 and for `-inf`. Branch-free so loops over it vectorize.
#[inline(always)]
pub(crate) fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n * LN2_HI is exact (Cody-Waite reduction).
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let xc = x.clamp(-87.0, 0.0);
    let rounded = xc * LOG2E + ROUND;
    let n = rounded - ROUND;
    let f = (xc - n * LN2_HI) - n * LN2_LO; // |f| <= ln2 / 2 (plus rounding)
                                            // Taylor series of e^f to degree 7: error below 1e-8 on |f| <= 0.347.
    let p = 1.0
        + f * (1.0
            + f * (0.5
                + f * (1.0 / 6.0
                    + f * (1.0 / 24.0 + f * (1.0 / 120.0 + f * (1.0 / 720.0 + f * (1.0 / 5040.0)))))));
    // `rounded`'s low mantissa bits hold n; build 2^n from them without a float-to-int cast.
    let n_int = rounded.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_int.wrapping_add(127) << 23);
    if x < -87.0 {
        0.0
    } else {
        p * scale
    }
}

/// `sum(exp(l - max))` over the row.
pub(crate) fn sum_exp(row: &[f32], max: f32) -> f64 {
    // exp into a small buffer, then sum it: both loops vectorize, a fused loop does not.
    let mut buf = [0.0f32; CHUNK];
    row.chunks(CHUNK)
        .map(|chunk| {
            let buf = &mut buf[..chunk.len()];
            for (out, &l) in buf.iter_mut().zip(chunk) {
                *out = fast_exp(l - max);
            }
            chunk_sum(buf)
        })
        .sum()
}

/// Replaces NaNs by `-inf` and returns the first maximum `(index, value)`; `None` when empty.
pub(crate) fn sanitize_and_argmax(row: &mut [f32]) -> Option<(usize, f32)> {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut it = row.chunks_exact_mut(8);
    for group in &mut it {
        for j in 0..8 {
            if group[j].is_nan() {
                group[j] = f32::NEG_INFINITY;
            }
            lanes[j] = lanes[j].max(group[j]);
        }
    }
    for l in it.into_remainder() {
        if l.is_nan() {
            *l = f32::NEG_INFINITY;
        }
        lanes[0] = lanes[0].max(*l);
    }
    let max = lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    row.iter().position(|&l| l == max).map(|i| (i, max))
}

/// Replaces each logit by its weight `exp((l - max) * inv_t)` (the top one becomes 1) and
/// returns the sum of the weights.
pub(crate) fn exp_weights_in_place(row: &mut [f32], max: f32, inv_t: f32) -> f64 {
    row.chunks_mut(CHUNK)
        .map(|chunk| {
            for w in chunk.iter_mut() {
                *w = fast_exp((*w - max) * inv_t);
            }
            chunk_sum(chunk)
        })
        .sum()
}

/// Zeroes the weights that `keep(index, weight)` rejects; returns the sum of the rest.
pub(crate) fn retain_weights(row: &mut [f32], keep: impl Fn(usize, f32) -> bool) -> f64 {
    for (i, w) in row.iter_mut().enumerate() {
        if !keep(i, *w) {
            *w = 0.0;
        }
    }
    row.chunks(CHUNK).map(chunk_sum).sum()
}

fn chunk_sum(chunk: &[f32]) -> f64 {
    let mut lanes = [0.0f32; 8];
    let mut it = chunk.chunks_exact(8);
    for group in &mut it {
        for j in 0..8 {
            lanes[j] += group[j];
        }
    }
    f64::from(lanes.iter().sum::<f32>() + it.remainder().iter().sum::<f32>())
}

/// The index chosen by inverse CDF with uniform draw `u` over non-negative `weights`
/// summing to `total`, in index order.
pub(crate) fn pick_row(weights: &[f32], total: f64, u: f64) -> usize {
    let target = u * total;
    let mut cum = 0.0f64;
    let mut last_positive = 0;
    for (c, chunk) in weights.chunks(CHUNK).enumerate() {
        let sum = chunk_sum(chunk);
        if sum > 0.0 {
            if cum + sum <= target {
                cum += sum;
                last_positive = c * CHUNK + chunk.iter().rposition(|&w| w > 0.0).unwrap_or(0);
                continue;
            }
            for (j, &w) in chunk.iter().enumerate() {
                if w > 0.0 {
                    cum += f64::from(w);
                    last_positive = c * CHUNK + j;
                    if cum > target {
                        return last_positive;
                    }
                }
            }
        }
    }
    last_positive
}

/// The index chosen by inverse CDF over `weights` given best first.
pub(crate) fn pick_sorted(weights: &[f64], u: f64) -> usize {
    let total: f64 = weights.iter().sum();
    let target = u * total;
    let mut cum = 0.0;
    let mut last_positive = 0;
    for (j, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            cum += w;
            last_positive = j;
            if cum > target {
                return j;
            }
        }
    }
    last_positive
}

/// Order: larger value first, then lower index. `values` holds no NaN.
pub(crate) fn by_value_desc(values: &[f32], a: u32, b: u32) -> Ordering {
    values[b as usize]
        .partial_cmp(&values[a as usize])
        .unwrap_or(Ordering::Equal)
        .then(a.cmp(&b))
}

/// Indices of the `k` largest values, best first (ties: lower index first).
pub(crate) fn top_indices(values: &[f32], k: usize) -> Vec<u32> {
    let n = values.len();
    if k == 0 || n == 0 {
        return Vec::new();
    }
    if k <= SMALL_K && k < n {
        let mut buf: Vec<(f32, u32)> = Vec::with_capacity(k + 1);
        for (i, &v) in values.iter().enumerate() {
            if buf.len() == k && v <= buf[k - 1].0 {
                continue;
            }
            let pos = buf.partition_point(|&(b, _)| b >= v);
            buf.insert(pos, (v, i as u32));
            buf.truncate(k);
        }
        return buf.into_iter().map(|(_, i)| i).collect();
    }
    let mut idx: Vec<u32> = (0..n as u32).collect();
    if k < n {
        idx.select_nth_unstable_by(k - 1, |&a, &b| by_value_desc(values, a, b));
        idx.truncate(k);
    }
    idx.sort_unstable_by(|&a, &b| by_value_desc(values, a, b));
    idx
}

/// Bits dropped from an `f32` weight's pattern to form its histogram bucket (keeps the
/// exponent and 4 mantissa bits: buckets span a factor of at most 1.0625).
const BUCKET_SHIFT: u32 = 18;

/// The last token of the top-p nucleus: in best-first order, the first token at which the
/// cumulative weight reaches `target_mass`. Two passes over the row, no full sort: a mass
/// histogram over the weights' bit patterns (monotone for non-negative floats) finds the
/// bucket holding the cutoff; only that bucket's tokens are sorted.
pub(crate) fn top_p_cutoff(weights: &[f32], target_mass: f64) -> u32 {
    let num_buckets = (1.0f32.to_bits() >> BUCKET_SHIFT) as usize + 1;
    let bucket = |w: f32| ((w.to_bits() >> BUCKET_SHIFT) as usize).min(num_buckets - 1);
    let mut mass = vec![0.0f64; num_buckets];
    for &w in weights {
        mass[bucket(w)] += f64::from(w);
    }
    let mut before = 0.0f64;
    let mut cut_bucket = None;
    for k in (0..num_buckets).rev() {
        if mass[k] > 0.0 {
            cut_bucket = Some(k);
            if before + mass[k] >= target_mass {
                break;
            }
            before += mass[k];
        }
    }
    let Some(k) = cut_bucket else {
        return 0;
    };
    let mut cands: Vec<u32> = (0..weights.len() as u32)
        .filter(|&i| bucket(weights[i as usize]) == k)
        .collect();
    cands.sort_unstable_by(|&a, &b| by_value_desc(weights, a, b));
    let mut last = cands.first().copied().unwrap_or(0);
    for &i in &cands {
        before += f64::from(weights[i as usize]);
        last = i;
        if before >= target_mass {
            return i;
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_accurate() {
        for i in 0..=10_000 {
            let x = -(i as f32) * 0.0087;
            let (got, want) = (fast_exp(x), x.exp());
            assert!(((got - want) / want).abs() < 3e-7, "x={x}: {got} vs {want}");
        }
        assert_eq!(fast_exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(fast_exp(-100.0), 0.0);
        assert_eq!(fast_exp(0.0), 1.0);
    }

    #[test]
    fn top_indices_small_and_large_k_agree() {
        let row = [1.0f32, 5.0, 5.0, -2.0, 3.0, 5.0];
        assert_eq!(top_indices(&row, 2), vec![1, 2]);
        let big: Vec<f32> = (0..500).map(|i| ((i * 7919) % 503) as f32 * 0.01).collect();
        let small = top_indices(&big, 60);
        let large = top_indices(&big, 100);
        assert_eq!(&large[..60], &small[..]);
    }

    #[test]
    fn cutoff_matches_a_sorted_walk() {
        let weights: Vec<f32> = (0..3000)
            .map(|i| fast_exp(-(((i * 7919) % 3001) as f32) * 0.01))
            .collect();
        let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        let mut order: Vec<u32> = (0..3000).collect();
        order.sort_by(|&a, &b| by_value_desc(&weights, a, b));
        for p in [0.01, 0.3, 0.9, 0.999] {
            let target = p * total;
            let mut cum = 0.0;
            let expected = *order
                .iter()
                .find(|&&i| {
                    cum += f64::from(weights[i as usize]);
                    cum >= target
                })
                .unwrap();
            assert_eq!(top_p_cutoff(&weights, target), expected, "p={p}");
        }
    }

    #[test]
    fn pick_row_walks_the_cdf() {
        let w = vec![0.0f32; 2000]
            .into_iter()
            .chain([1.0, 0.0, 3.0])
            .collect::<Vec<_>>();
        assert_eq!(pick_row(&w, 4.0, 0.0), 2000);
        assert_eq!(pick_row(&w, 4.0, 0.24), 2000);
        assert_eq!(pick_row(&w, 4.0, 0.26), 2002);
        assert_eq!(pick_row(&w, 4.0, 0.999_999), 2002);
        assert_eq!(pick_sorted(&[3.0, 1.0], 0.8), 1);
    }
}
