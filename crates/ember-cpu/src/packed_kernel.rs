//! Pieces shared by the packed-layout SIMD kernels: format tags (const generic parameters)
//! and raw per-row views of the quantized activations.

use crate::packed::{Layout, LANES};
use crate::quant::QuantActs;
use ember_core::WeightDType;

/// The const-generic tag of a quantized format: its index in `WeightDType::ALL`.
pub const fn tag_of(dtype: WeightDType) -> u8 {
    let mut i = 0;
    while i < WeightDType::ALL.len() {
        if WeightDType::ALL[i] as u8 == dtype as u8 {
            return i as u8;
        }
        i += 1;
    }
    unreachable!()
}

/// The packed layout of format tag `t` (compile-time constant in the kernels).
pub const fn layout_of_tag(t: u8) -> Layout {
    match Layout::of(WeightDType::ALL[t as usize]) {
        Some(l) => l,
        None => panic!("not a quantized format"),
    }
}

/// Receives each group's tile: `(group index from the first, out[r][lane])`.
pub type TileSink<'a, const R: usize> = dyn FnMut(usize, &[[f32; LANES]; R]) + 'a;

/// Raw pointers into one activation row of a [`QuantActs`].
#[derive(Clone, Copy)]
pub struct ActRow {
    /// Quants; `[cols]`.
    pub qs: *const i8,
    /// Block scales; `[cols / block_len]`.
    pub d: *const f32,
    /// Q8_1 `s` per 32 elements (dangling for Q8_K activations); `[cols / 32]`.
    pub s: *const f32,
    /// Sums of 16 quants; `[cols / 16]`.
    pub bsums: *const i32,
}

/// Views of rows `r0..r0 + R`, after checking they exist, hold `cols` elements and were
/// quantized in blocks of `block_len`.
pub fn act_rows<const R: usize>(acts: &QuantActs, r0: usize, cols: usize, block_len: usize) -> [ActRow; R] {
    assert!(
        r0 + R <= acts.rows && cols <= acts.cols,
        "activation rows out of range"
    );
    assert_eq!(acts.block_len, block_len, "activation block length");
    std::array::from_fn(|i| {
        let r = r0 + i;
        ActRow {
            qs: acts.row_qs(r).as_ptr(),
            d: acts.d[r * (acts.cols / acts.block_len)..].as_ptr(),
            s: if acts.s.is_empty() {
                std::ptr::NonNull::dangling().as_ptr()
            } else {
                acts.s[r * (acts.cols / 32)..].as_ptr()
            },
            bsums: acts.bsums[r * (acts.cols / 16)..].as_ptr(),
        }
    })
}
