//! The packed-layout tile kernels on x86-64: [`TileVec`] for AVX-512 VNNI (16 lanes,
//! `vpdpbusd` on unsigned field values) and AVX2 (8 lanes, `vpmaddubsw` + `vpmaddwd`, with the
//! sign trick `|w| * sign(x, w)` for signed 8-bit weights), and the `#[target_feature]` entry
//! points that instantiate `packed_tile::tile_lanes` for them.

use crate::packed::LANES;
use crate::packed_kernel::{act_rows, layout_of_tag, TileSink};
use crate::packed_tile::{tile_lanes, TileVec};
use crate::quant::QuantActs;
use std::arch::x86_64::*;

/// AVX-512 (F, BW, VL, VNNI) vectors: all 16 lanes at once.
struct Vnni;

/// AVX2 (with FMA, F16C) vectors: 8 lanes, a tile in two halves.
struct Avx2;

// SAFETY: only instantiated inside `tiles_vnni`, which enables these features.
// Each method is a thin intrinsic wrapper; the trait's contract (features, readable bytes) is
// what makes its body sound, so the bodies are not wrapped one by one.
#[allow(unsafe_op_in_unsafe_fn)]
unsafe impl TileVec for Vnni {
    const WIDTH: usize = 16;
    const SIGNED_BYTES: bool = false;
    type I = __m512i;
    type F = __m512;
    #[inline(always)]
    unsafe fn zero_i() -> __m512i {
        _mm512_setzero_si512()
    }
    #[inline(always)]
    unsafe fn zero_f() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m512i {
        // SAFETY: 64 readable bytes (the trait's contract).
        unsafe { _mm512_loadu_si512(p.cast()) }
    }
    #[inline(always)]
    unsafe fn field(w: __m512i, shift: u32, low: u8) -> __m512i {
        let shifted = _mm512_srl_epi16(w, _mm_cvtsi32_si128(shift as i32));
        _mm512_and_si512(shifted, _mm512_set1_epi8(low as i8))
    }
    #[inline(always)]
    unsafe fn add_masked(u: __m512i, mask: *const u8, add: i8) -> __m512i {
        // SAFETY: 8 readable bytes.
        let k: __mmask64 = unsafe { mask.cast::<u64>().read_unaligned() };
        _mm512_mask_add_epi8(u, k, u, _mm512_set1_epi8(add))
    }
    #[inline(always)]
    unsafe fn table(u: __m512i) -> __m512i {
        let shifted = crate::blocks::IQ4_NL_VALUES.map(|v| (i16::from(v) + 128) as u8 as i8);
        // SAFETY: 16 readable bytes.
        let t = unsafe { _mm_loadu_si128(shifted.as_ptr().cast()) };
        _mm512_shuffle_epi8(_mm512_broadcast_i32x4(t), u)
    }
    #[inline(always)]
    unsafe fn dot4(acc: __m512i, u: __m512i, x: i32, _signed: bool) -> __m512i {
        _mm512_dpbusd_epi32(acc, u, _mm512_set1_epi32(x))
    }
    #[inline(always)]
    unsafe fn splat_i(v: i32) -> __m512i {
        _mm512_set1_epi32(v)
    }
    #[inline(always)]
    unsafe fn add_i(a: __m512i, b: __m512i) -> __m512i {
        _mm512_add_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn xor_i(a: __m512i, b: __m512i) -> __m512i {
        _mm512_xor_si512(a, b)
    }
    #[inline(always)]
    unsafe fn mul_i(a: __m512i, b: __m512i) -> __m512i {
        _mm512_mullo_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const u8) -> __m512i {
        // SAFETY: 16 readable bytes.
        _mm512_cvtepi8_epi32(unsafe { _mm_loadu_si128(p.cast()) })
    }
    #[inline(always)]
    unsafe fn load_u8(p: *const u8) -> __m512i {
        // SAFETY: 16 readable bytes.
        _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(p.cast()) })
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u8) -> __m512 {
        // SAFETY: 32 readable bytes.
        _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(p.cast()) })
    }
    #[inline(always)]
    unsafe fn load_f32(p: *const u8) -> __m512 {
        // SAFETY: 64 readable bytes.
        unsafe { _mm512_loadu_ps(p.cast()) }
    }
    #[inline(always)]
    unsafe fn splat_f(v: f32) -> __m512 {
        _mm512_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn mul_f(a: __m512, b: __m512) -> __m512 {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn fnmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fnmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn to_f(a: __m512i) -> __m512 {
        _mm512_cvtepi32_ps(a)
    }
    #[inline(always)]
    unsafe fn store_f(p: *mut f32, v: __m512) {
        // SAFETY: 16 writable f32.
        unsafe { _mm512_storeu_ps(p, v) }
    }
}

// SAFETY: only instantiated inside `tiles_avx2`, which enables these features (methods: as for
// `Vnni`).
#[allow(unsafe_op_in_unsafe_fn)]
unsafe impl TileVec for Avx2 {
    const WIDTH: usize = 8;
    const SIGNED_BYTES: bool = true;
    type I = __m256i;
    type F = __m256;
    #[inline(always)]
    unsafe fn zero_i() -> __m256i {
        _mm256_setzero_si256()
    }
    #[inline(always)]
    unsafe fn zero_f() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m256i {
        // SAFETY: 32 readable bytes.
        unsafe { _mm256_loadu_si256(p.cast()) }
    }
    #[inline(always)]
    unsafe fn field(w: __m256i, shift: u32, low: u8) -> __m256i {
        let shifted = _mm256_srl_epi16(w, _mm_cvtsi32_si128(shift as i32));
        _mm256_and_si256(shifted, _mm256_set1_epi8(low as i8))
    }
    #[inline(always)]
    unsafe fn add_masked(u: __m256i, mask: *const u8, add: i8) -> __m256i {
        // SAFETY: 4 readable bytes.
        let k = unsafe { mask.cast::<u32>().read_unaligned() };
        // Byte j takes bit j: broadcast, pick byte j / 8 into byte j, test bit j % 8.
        let pick = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
        );
        let bits = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let picked = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(k as i32), pick), bits);
        let set = _mm256_cmpeq_epi8(picked, bits);
        _mm256_add_epi8(u, _mm256_and_si256(set, _mm256_set1_epi8(add)))
    }
    #[inline(always)]
    unsafe fn table(u: __m256i) -> __m256i {
        // SAFETY: 16 readable bytes.
        let t = unsafe { _mm_loadu_si128(crate::blocks::IQ4_NL_VALUES.as_ptr().cast()) };
        _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(t), u)
    }
    #[inline(always)]
    unsafe fn dot4(acc: __m256i, u: __m256i, x: i32, signed: bool) -> __m256i {
        let x = _mm256_set1_epi32(x);
        let pairs = if signed {
            _mm256_maddubs_epi16(_mm256_abs_epi8(u), _mm256_sign_epi8(x, u))
        } else {
            _mm256_maddubs_epi16(u, x)
        };
        _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }
    #[inline(always)]
    unsafe fn splat_i(v: i32) -> __m256i {
        _mm256_set1_epi32(v)
    }
    #[inline(always)]
    unsafe fn add_i(a: __m256i, b: __m256i) -> __m256i {
        _mm256_add_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn xor_i(a: __m256i, b: __m256i) -> __m256i {
        _mm256_xor_si256(a, b)
    }
    #[inline(always)]
    unsafe fn mul_i(a: __m256i, b: __m256i) -> __m256i {
        _mm256_mullo_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const u8) -> __m256i {
        // SAFETY: 8 readable bytes.
        _mm256_cvtepi8_epi32(_mm_cvtsi64_si128(unsafe { p.cast::<i64>().read_unaligned() }))
    }
    #[inline(always)]
    unsafe fn load_u8(p: *const u8) -> __m256i {
        // SAFETY: 8 readable bytes.
        _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(unsafe { p.cast::<i64>().read_unaligned() }))
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u8) -> __m256 {
        // SAFETY: 16 readable bytes.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p.cast()) })
    }
    #[inline(always)]
    unsafe fn load_f32(p: *const u8) -> __m256 {
        // SAFETY: 32 readable bytes.
        unsafe { _mm256_loadu_ps(p.cast()) }
    }
    #[inline(always)]
    unsafe fn splat_f(v: f32) -> __m256 {
        _mm256_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn mul_f(a: __m256, b: __m256) -> __m256 {
        _mm256_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn fnmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fnmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn to_f(a: __m256i) -> __m256 {
        _mm256_cvtepi32_ps(a)
    }
    #[inline(always)]
    unsafe fn store_f(p: *mut f32, v: __m256) {
        // SAFETY: 8 writable f32.
        unsafe { _mm256_storeu_ps(p, v) }
    }
}

/// Tiles on AVX-512 VNNI: for each of the `num_groups` consecutive packed groups in `groups`
/// (16 weight rows, `num_blocks` blocks of format tag `T` each), the tile against activation
/// rows `r0..r0 + R`, handed to `sink`.
///
/// # Safety
/// The CPU supports AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn tiles_vnni<const T: u8, const R: usize>(
    groups: &[u8],
    num_groups: usize,
    num_blocks: usize,
    acts: &QuantActs,
    r0: usize,
    sink: &mut TileSink<'_, R>,
) {
    let l = const { layout_of_tag(T) };
    let group_bytes = num_blocks * l.block_bytes;
    assert!(groups.len() >= num_groups * group_bytes);
    let rows = act_rows::<R>(acts, r0, num_blocks * l.fmt.block_len, l.fmt.block_len);
    let mut out = [[0.0f32; LANES]; R];
    for g in 0..num_groups {
        // SAFETY: features enabled here; groups and rows checked above.
        unsafe {
            tile_lanes::<Vnni, R>(
                &l,
                groups.as_ptr().add(g * group_bytes),
                num_blocks,
                &rows,
                0,
                &mut out,
            )
        };
        sink(g, &out);
    }
}

/// Tiles on AVX2: see [`tiles_vnni`] (same results, bit for bit).
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tiles_avx2<const T: u8, const R: usize>(
    groups: &[u8],
    num_groups: usize,
    num_blocks: usize,
    acts: &QuantActs,
    r0: usize,
    sink: &mut TileSink<'_, R>,
) {
    let l = const { layout_of_tag(T) };
    let group_bytes = num_blocks * l.block_bytes;
    assert!(groups.len() >= num_groups * group_bytes);
    let rows = act_rows::<R>(acts, r0, num_blocks * l.fmt.block_len, l.fmt.block_len);
    let mut out = [[0.0f32; LANES]; R];
    for g in 0..num_groups {
        let p = groups[g * group_bytes..].as_ptr();
        for lane0 in [0, Avx2::WIDTH] {
            // SAFETY: features enabled here; groups and rows checked above; 8 + 8 <= 16 lanes.
            unsafe { tile_lanes::<Avx2, R>(&l, p, num_blocks, &rows, lane0, &mut out) };
        }
        sink(g, &out);
    }
}
