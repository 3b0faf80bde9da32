//! The packed-layout tile kernels on AArch64: [`TileVec`] for NEON (4 lanes per 128-bit vector,
//! a tile in four quarters), with the integer dot of each 4-byte lane slot either by widening
//! multiplies and pairwise adds (baseline NEON) or by one `sdot` (the `dotprod` extension), and
//! the `#[target_feature]` entry points that instantiate `packed_tile::tile_lanes` for them.
//!
//! Both sum exact integer products, and the float stage is the reference's `fma` sequence lane
//! by lane, so results equal `dot_scalar` (and the x86-64 kernels) bit for bit.

use crate::packed::LANES;
use crate::packed_kernel::{act_rows, layout_of_tag, TileSink};
use crate::packed_tile::{tile_lanes, TileVec};
use crate::quant::QuantActs;
use std::arch::aarch64::*;
use std::arch::asm;

/// NEON vectors; `DOT` selects the `sdot` instruction for [`TileVec::dot4`].
struct Neon<const DOT: bool>;

/// `acc + sum of the products of each 4-byte group of `u` with `x`` by `sdot`.
///
/// # Safety
/// The CPU has the `dotprod` extension.
#[inline(always)]
unsafe fn sdot(acc: int32x4_t, u: int8x16_t, x: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // The intrinsic `vdotq_s32` is not stable in the Rust versions the wheels are built with;
    // the instruction is the same.
    // SAFETY: register-only arithmetic; the caller guarantees the extension.
    unsafe {
        asm!(
            ".arch_extension dotprod",
            "sdot {acc:v}.4s, {u:v}.16b, {x:v}.16b",
            acc = inout(vreg) acc,
            u = in(vreg) u,
            x = in(vreg) x,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

// SAFETY: only instantiated inside `tiles_neon` / `tiles_neon_dotprod`, which enable NEON (and
// `dotprod` when `DOT`). Each method is a thin intrinsic wrapper; the trait's contract
// (features, readable bytes) is what makes its body sound, so the bodies are not wrapped one by
// one.
#[allow(unsafe_op_in_unsafe_fn)]
unsafe impl<const DOT: bool> TileVec for Neon<DOT> {
    const WIDTH: usize = 4;
    // `sdot` and `smull` multiply signed bytes; unsigned field values stay below 64.
    const SIGNED_BYTES: bool = true;
    type I = int32x4_t;
    type F = float32x4_t;
    #[inline(always)]
    unsafe fn zero_i() -> int32x4_t {
        vdupq_n_s32(0)
    }
    #[inline(always)]
    unsafe fn zero_f() -> float32x4_t {
        vdupq_n_f32(0.0)
    }
    #[inline(always)]
    unsafe fn load(p: *const u8) -> int32x4_t {
        // SAFETY: 16 readable bytes (the trait's contract).
        vreinterpretq_s32_u8(unsafe { vld1q_u8(p) })
    }
    #[inline(always)]
    unsafe fn field(w: int32x4_t, shift: u32, low: u8) -> int32x4_t {
        let shifted = vshlq_u8(vreinterpretq_u8_s32(w), vdupq_n_s8(-(shift as i8)));
        vreinterpretq_s32_u8(vandq_u8(shifted, vdupq_n_u8(low)))
    }
    #[inline(always)]
    unsafe fn add_masked(u: int32x4_t, mask: *const u8, add: i8) -> int32x4_t {
        // SAFETY: 2 readable bytes.
        let k = unsafe { mask.cast::<u16>().read_unaligned() };
        // Byte j takes bit j: bytes 0..8 test the mask's low byte, bytes 8..16 its high byte.
        let spread = vcombine_u8(vdup_n_u8(k as u8), vdup_n_u8((k >> 8) as u8));
        let bits = vreinterpretq_u8_u64(vdupq_n_u64(0x8040_2010_0804_0201));
        let set = vtstq_u8(spread, bits);
        let added = vandq_u8(set, vdupq_n_u8(add as u8));
        vreinterpretq_s32_u8(vaddq_u8(vreinterpretq_u8_s32(u), added))
    }
    #[inline(always)]
    unsafe fn table(u: int32x4_t) -> int32x4_t {
        // SAFETY: 16 readable bytes.
        let t = unsafe { vld1q_s8(crate::blocks::IQ4_NL_VALUES.as_ptr()) };
        vreinterpretq_s32_s8(vqtbl1q_s8(t, vreinterpretq_u8_s32(u)))
    }
    #[inline(always)]
    unsafe fn dot4(acc: int32x4_t, u: int32x4_t, x: i32, _signed: bool) -> int32x4_t {
        let (u, x) = (vreinterpretq_s8_s32(u), vreinterpretq_s8_s32(vdupq_n_s32(x)));
        if DOT {
            // SAFETY: `DOT` is only instantiated under the `dotprod` feature.
            return unsafe { sdot(acc, u, x) };
        }
        // Byte products as i16 (|product| <= 128 * 128), pairs summed to i32, then the two
        // pairs of each lane.
        let lo = vpaddlq_s16(vmull_s8(vget_low_s8(u), vget_low_s8(x)));
        let hi = vpaddlq_s16(vmull_high_s8(u, x));
        vaddq_s32(acc, vpaddq_s32(lo, hi))
    }
    #[inline(always)]
    unsafe fn splat_i(v: i32) -> int32x4_t {
        vdupq_n_s32(v)
    }
    #[inline(always)]
    unsafe fn add_i(a: int32x4_t, b: int32x4_t) -> int32x4_t {
        vaddq_s32(a, b)
    }
    #[inline(always)]
    unsafe fn xor_i(a: int32x4_t, b: int32x4_t) -> int32x4_t {
        veorq_s32(a, b)
    }
    #[inline(always)]
    unsafe fn mul_i(a: int32x4_t, b: int32x4_t) -> int32x4_t {
        vmulq_s32(a, b)
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const u8) -> int32x4_t {
        // SAFETY: 4 readable bytes.
        let bytes = vreinterpret_s8_u32(vdup_n_u32(unsafe { p.cast::<u32>().read_unaligned() }));
        vmovl_s16(vget_low_s16(vmovl_s8(bytes)))
    }
    #[inline(always)]
    unsafe fn load_u8(p: *const u8) -> int32x4_t {
        // SAFETY: 4 readable bytes.
        let bytes = vreinterpret_u8_u32(vdup_n_u32(unsafe { p.cast::<u32>().read_unaligned() }));
        vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(vmovl_u8(bytes))))
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u8) -> float32x4_t {
        // f16 to f32 is exact, so the scalar conversion gives the vector one's values.
        // SAFETY: 8 readable bytes.
        let h: [f32; 4] = std::array::from_fn(|i| {
            crate::quant::f16_to_f32(unsafe { p.cast::<u16>().add(i).read_unaligned() })
        });
        // SAFETY: `h` holds 4 floats.
        unsafe { vld1q_f32(h.as_ptr()) }
    }
    #[inline(always)]
    unsafe fn load_f32(p: *const u8) -> float32x4_t {
        // SAFETY: 16 readable bytes.
        unsafe { vld1q_f32(p.cast()) }
    }
    #[inline(always)]
    unsafe fn splat_f(v: f32) -> float32x4_t {
        vdupq_n_f32(v)
    }
    #[inline(always)]
    unsafe fn mul_f(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        vmulq_f32(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
        vfmaq_f32(c, a, b)
    }
    #[inline(always)]
    unsafe fn fnmadd(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
        vfmsq_f32(c, a, b)
    }
    #[inline(always)]
    unsafe fn to_f(a: int32x4_t) -> float32x4_t {
        vcvtq_f32_s32(a)
    }
    #[inline(always)]
    unsafe fn store_f(p: *mut f32, v: float32x4_t) {
        // SAFETY: 4 writable f32.
        unsafe { vst1q_f32(p, v) }
    }
}

/// For each of the `num_groups` consecutive packed groups in `groups` (16 weight rows,
/// `num_blocks` blocks of format tag `T` each), the tile against activation rows `r0..r0 + R`,
/// handed to `sink`, on NEON vectors `V`.
///
/// # Safety
/// The CPU supports `V`.
#[inline(always)]
unsafe fn tiles_with<V: TileVec, const T: u8, const R: usize>(
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
        for lane0 in (0..LANES).step_by(V::WIDTH) {
            // SAFETY: the caller's features; groups and rows checked above; lanes in range.
            unsafe { tile_lanes::<V, R>(&l, p, num_blocks, &rows, lane0, &mut out) };
        }
        sink(g, &out);
    }
}

/// Tiles on baseline NEON: see [`tiles_with`] (the scalar reference's results, bit for bit).
///
/// # Safety
/// The CPU supports NEON (every AArch64 CPU does).
#[target_feature(enable = "neon")]
pub unsafe fn tiles_neon<const T: u8, const R: usize>(
    groups: &[u8],
    num_groups: usize,
    num_blocks: usize,
    acts: &QuantActs,
    r0: usize,
    sink: &mut TileSink<'_, R>,
) {
    // SAFETY: NEON is enabled here.
    unsafe { tiles_with::<Neon<false>, T, R>(groups, num_groups, num_blocks, acts, r0, sink) }
}

/// Tiles on NEON with `sdot`: see [`tiles_with`] (the same results as [`tiles_neon`]).
///
/// # Safety
/// The CPU supports NEON and the `dotprod` extension.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn tiles_neon_dotprod<const T: u8, const R: usize>(
    groups: &[u8],
    num_groups: usize,
    num_blocks: usize,
    acts: &QuantActs,
    r0: usize,
    sink: &mut TileSink<'_, R>,
) {
    // SAFETY: NEON and `dotprod` are enabled here.
    unsafe { tiles_with::<Neon<true>, T, R>(groups, num_groups, num_blocks, acts, r0, sink) }
}
