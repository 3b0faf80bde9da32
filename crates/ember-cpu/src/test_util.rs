//! Deterministic random data for the kernel tests.

use ember_core::WeightDType;

/// xorshift64* generator.
pub struct Rng(u64);

impl Rng {
    /// A generator from a non-zero seed.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform u64.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[-1, 1)`.
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// `n` values uniform in `[-scale, scale)`.
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32() * scale).collect()
    }
}

/// Random bytes of a `[rows, cols]` matrix in `dtype` (valid scales, any quant values).
pub fn random_weight_bytes(rng: &mut Rng, dtype: WeightDType, rows: usize, cols: usize) -> Vec<u8> {
    let n = rows * cols;
    let mut out = Vec::new();
    let f16 = |x: f32| half::f16::from_f32(x).to_bits().to_le_bytes();
    match dtype {
        WeightDType::F32 => (0..n).for_each(|_| out.extend(rng.f32().to_le_bytes())),
        WeightDType::F16 => (0..n).for_each(|_| out.extend(f16(rng.f32()))),
        WeightDType::BF16 => {
            (0..n).for_each(|_| out.extend(half::bf16::from_f32(rng.f32()).to_bits().to_le_bytes()))
        }
        WeightDType::Q8_0 => {
            for _ in 0..n / 32 {
                out.extend(f16(0.001 + 0.02 * rng.f32().abs()));
                (0..32).for_each(|_| out.push(rng.next_u64() as u8));
            }
        }
        WeightDType::Q4_0 => {
            for _ in 0..n / 32 {
                out.extend(f16(0.01 + 0.1 * rng.f32().abs()));
                (0..16).for_each(|_| out.push(rng.next_u64() as u8));
            }
        }
        WeightDType::Q4_1 => {
            for _ in 0..n / 32 {
                out.extend(f16(0.01 + 0.1 * rng.f32().abs()));
                out.extend(f16(-0.8 * rng.f32().abs()));
                (0..16).for_each(|_| out.push(rng.next_u64() as u8));
            }
        }
    }
    out
}

/// All weight encodings.
pub const ALL_DTYPES: [WeightDType; 6] = [
    WeightDType::F32,
    WeightDType::F16,
    WeightDType::BF16,
    WeightDType::Q8_0,
    WeightDType::Q4_0,
    WeightDType::Q4_1,
];
