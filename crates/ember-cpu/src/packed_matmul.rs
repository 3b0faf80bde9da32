//! `x @ W^T (+ bias)` for quantized weights in the packed layout: activation quantization,
//! tiles of (activation rows x 16 weight rows), and the split over threads.
//!
//! The same tile kernels serve decode (one row), batched decode and prefill (many rows): a
//! tile reads each weight vector once for up to 4 activation rows (8 on AVX-512 for the
//! formats without sub-block scales) and each activation broadcast once for 16 weight rows. The activations are
//! quantized once per input tensor (`CpuTensor::quantized`), shared by the projections that
//! read it. With many rows, each thread sweeps the rows over
//! L2-sized chunks of its weight groups. Every kernel family computes the reference
//! arithmetic of `dot_scalar` exactly, so results do not depend on the ISA, the tile shape,
//! the batch or the thread split.

use crate::blocks::Block;
use crate::dot_scalar::accumulate_block;
use crate::matmul::Isa;
use crate::matrix::CpuMatrix;
use crate::packed::{unpack_block, Layout, LANES};
use crate::quant::QuantActs;
use crate::tensor::CpuTensor;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use ember_core::WeightDType;
use rayon::ThreadPool;

/// Output pointer shared by the tasks; each task writes a disjoint set of columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint column ranges of the output and the buffer outlives them.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// Packed weight bytes a thread keeps hot in L2 while sweeping many activation rows.
const CHUNK_BYTES: usize = 256 * 1024;
/// Multiply-adds (`rows * n * k`) below which a matmul runs on the calling thread.
const PAR_WORK: usize = 1 << 18;
/// Multiply-adds above which a matmul is split into several chunks per thread.
const BIG_WORK: usize = 1 << 24;

/// `out = x @ w^T (+ bias)` for a packed quantized `w`; `out` is `[x.rows(), w.rows()]`.
pub fn quant_matmul(
    pool: &ThreadPool,
    isa: Isa,
    x: &CpuTensor,
    w: &CpuMatrix,
    bias: Option<&[f32]>,
    out: &mut CpuTensor,
) {
    let Some(layout) = w.layout() else {
        unreachable!("float weight")
    };
    quant_matmul_acts(pool, isa, x.quantized(layout.fmt.block_len), w, bias, out);
}

/// [`quant_matmul`] of activations already quantized in `w`'s block length.
pub fn quant_matmul_acts(
    pool: &ThreadPool,
    isa: Isa,
    acts: &QuantActs,
    w: &CpuMatrix,
    bias: Option<&[f32]>,
    out: &mut CpuTensor,
) {
    let Some(layout) = w.layout() else {
        unreachable!("float weight")
    };
    debug_assert_eq!(acts.block_len, layout.fmt.block_len);
    let (rows, k, n) = (acts.rows, acts.cols, w.rows());
    let job = Job {
        isa,
        w,
        layout,
        acts,
        out: OutPtr(out.as_mut_slice().as_mut_ptr()),
        bias,
    };
    let num_groups = n.div_ceil(LANES);
    let threads = pool.current_num_threads();
    let work = rows * n * k;
    if threads <= 1 || work < PAR_WORK {
        job.groups(0, num_groups);
        return;
    }
    // Few, coarse chunks: one per thread for small matrices (decode runs ~200 small matmuls
    // a step, so dispatch overhead matters); a few per thread for big ones (load balance).
    let per_thread = if work < BIG_WORK { 1 } else { 4 };
    let chunk = num_groups.div_ceil(threads * per_thread);
    crate::par::for_each_chunk(pool, num_groups.div_ceil(chunk), |i| {
        job.groups(i * chunk, ((i + 1) * chunk).min(num_groups));
    });
}

/// One matmul: the weights, the quantized activations and where the results go.
struct Job<'a> {
    isa: Isa,
    w: &'a CpuMatrix,
    layout: Layout,
    acts: &'a QuantActs,
    out: OutPtr,
    bias: Option<&'a [f32]>,
}

impl Job<'_> {
    /// Computes weight groups `g0..g1` (output columns `16 g0..16 g1`) of every row.
    fn groups(&self, g0: usize, g1: usize) {
        if self.isa == Isa::Scalar {
            return self.scalar_groups(g0, g1);
        }
        let rows = self.acts.rows;
        let group_bytes = self.w.num_blocks() * self.layout.block_bytes;
        let span = if rows > 4 {
            (CHUNK_BYTES / group_bytes.max(1)).max(1)
        } else {
            g1 - g0
        };
        let mut c0 = g0;
        while c0 < g1 {
            let c1 = (c0 + span).min(g1);
            let mut r0 = 0;
            if self.wide_tiles() {
                while rows - r0 >= 8 {
                    self.tiles::<8>(r0, c0, c1);
                    r0 += 8;
                }
                // A 6-row rest (a speculative verification of 1 + 5 rows) in one tile.
                if rows - r0 >= 6 {
                    self.tiles::<6>(r0, c0, c1);
                    r0 += 6;
                }
            }
            while rows - r0 >= 4 {
                self.tiles::<4>(r0, c0, c1);
                r0 += 4;
            }
            // The 1-3 rows left take one tile: a 3-row remainder (a speculative verification
            // of 1 + 2 rows) reads each weight once instead of twice.
            match rows - r0 {
                3 => self.tiles::<3>(r0, c0, c1),
                2 => self.tiles::<2>(r0, c0, c1),
                1 => self.tiles::<1>(r0, c0, c1),
                _ => {}
            }
            c0 = c1;
        }
    }

    /// Whether 6- and 8-row tiles pay: on AVX-512 (32 vector registers hold 8 rows' block and
    /// float sums) for the formats without sub-block scales (the K-quants' per-field sums
    /// would not fit). Each weight vector is then loaded (and its fields and high bits
    /// extracted) once per 8 rows instead of once per 4.
    fn wide_tiles(&self) -> bool {
        let l = &self.layout;
        self.isa == Isa::Avx512Vnni && !l.fmt.scales
    }

    /// Tiles of activation rows `r0..r0 + R` over weight groups `c0..c1`.
    fn tiles<const R: usize>(&self, r0: usize, c0: usize, c1: usize) {
        let mut sink = |i: usize, res: &[[f32; LANES]; R]| {
            for (r, lanes) in res.iter().enumerate() {
                self.store(&lanes[..], r0 + r, c0 + i);
            }
        };
        tiles::<R>(self, r0, c0, c1, &mut sink);
    }

    /// Writes the in-range lanes of one row of a group's outputs, adding the bias.
    #[inline]
    fn store(&self, lanes: &[f32], row: usize, g: usize) {
        let (n, c0) = (self.w.rows(), g * LANES);
        let len = lanes.len().min(n - c0);
        // SAFETY: `row < rows` and `c0 + len <= n`, so the range is inside the `[rows, n]`
        // output; this task is the only writer of these columns.
        let dst = unsafe { std::slice::from_raw_parts_mut(self.out.0.add(row * n + c0), len) };
        match self.bias {
            Some(b) => {
                for ((d, &v), &bias) in dst.iter_mut().zip(lanes).zip(&b[c0..c0 + len]) {
                    *d = v + bias;
                }
            }
            // A whole group's 16 outputs as one fixed-size copy (vector moves, not a
            // `memcpy` call per tile row).
            None if len == LANES => {
                let (dst, src): (&mut [f32; LANES], &[f32; LANES]) = (
                    dst.try_into().expect("16 lanes"),
                    lanes.try_into().expect("16 lanes"),
                );
                *dst = *src;
            }
            None => dst.copy_from_slice(&lanes[..len]),
        }
    }

    /// The scalar path: each packed block unpacked once per group, then the reference
    /// arithmetic for every activation row.
    fn scalar_groups(&self, g0: usize, g1: usize) {
        let (fmt, acts) = (self.layout.fmt, self.acts);
        let mut lanes = vec![Block::default(); LANES];
        let mut acc = vec![0.0f32; acts.rows * LANES];
        for g in g0..g1 {
            acc.fill(0.0);
            let group = self.w.group(g);
            for b in 0..self.w.num_blocks() {
                let src = &group[b * self.layout.block_bytes..(b + 1) * self.layout.block_bytes];
                for (lane, blk) in lanes.iter_mut().enumerate() {
                    unpack_block(&self.layout, src, lane, blk);
                }
                for (r, row_acc) in acc.chunks_exact_mut(LANES).enumerate() {
                    for (a, blk) in row_acc.iter_mut().zip(&lanes) {
                        *a = accumulate_block(&fmt, blk, acts, r, b * fmt.block_len, *a);
                    }
                }
            }
            for (r, row_acc) in acc.chunks_exact(LANES).enumerate() {
                self.store(row_acc, r, g);
            }
        }
    }
}

/// SIMD tiles of rows `r0..r0 + R` over weight groups `c0..c1`, dispatched on the ISA and the
/// format; each group's result goes to `sink` (group index from `c0`).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn tiles<const R: usize>(
    job: &Job<'_>,
    r0: usize,
    c0: usize,
    c1: usize,
    sink: &mut crate::packed_kernel::TileSink<'_, R>,
) {
    use crate::packed_kernel::tag_of;
    #[cfg(target_arch = "aarch64")]
    use crate::packed_neon::{tiles_neon, tiles_neon_dotprod};
    #[cfg(target_arch = "x86_64")]
    use crate::packed_x86::{tiles_avx2, tiles_vnni};
    let (w, acts) = (job.w, job.acts);
    let (groups, nb) = (w.groups(c0, c1), w.num_blocks());
    macro_rules! arms {
        ($($t:ident),*) => {{
            $(const $t: u8 = tag_of(WeightDType::$t);)*
            // SAFETY: `isa` was checked as supported by this CPU; `groups` are packed groups of
            // the matrix's format with `nb` blocks each, and `acts` was quantized for it.
            unsafe {
                match (job.isa, tag_of(w.dtype())) {
                    $(#[cfg(target_arch = "x86_64")]
                      (Isa::Avx512Vnni, $t) => tiles_vnni::<$t, R>(groups, c1 - c0, nb, acts, r0, sink),
                      #[cfg(target_arch = "x86_64")]
                      (Isa::Avx2, $t) => tiles_avx2::<$t, R>(groups, c1 - c0, nb, acts, r0, sink),
                      #[cfg(target_arch = "aarch64")]
                      (Isa::NeonDotprod, $t) => tiles_neon_dotprod::<$t, R>(groups, c1 - c0, nb, acts, r0, sink),
                      #[cfg(target_arch = "aarch64")]
                      (Isa::Neon, $t) => tiles_neon::<$t, R>(groups, c1 - c0, nb, acts, r0, sink),)*
                    _ => unreachable!("scalar or float tile"),
                }
            }
        }};
    }
    arms!(Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K)
}

/// No SIMD tiles off x86-64 and AArch64 (the scalar path runs instead).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn tiles<const R: usize>(
    _job: &Job<'_>,
    _r0: usize,
    _c0: usize,
    _c1: usize,
    _sink: &mut dyn FnMut(usize, &[[f32; LANES]; R]),
) {
    unreachable!("SIMD tiles exist on x86-64 and AArch64 only")
}
