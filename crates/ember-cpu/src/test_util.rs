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
    let f16 = |x: f32| half::f16::from_f32(x).to_bits().to_le_bytes();
    match dtype {
        WeightDType::F32 => return (0..n).flat_map(|_| rng.f32().to_le_bytes()).collect(),
        WeightDType::F16 => return (0..n).flat_map(|_| f16(rng.f32())).collect(),
        WeightDType::BF16 => {
            return (0..n)
                .flat_map(|_| half::bf16::from_f32(rng.f32()).to_bits().to_le_bytes())
                .collect()
        }
        _ => {}
    }
    // (offset, value) of each scale field; every other byte is random.
    let scale = |rng: &mut Rng, lo: f32, span: f32| lo + span * rng.f32().abs();
    let mut out = Vec::with_capacity(dtype.bytes_for(n).unwrap_or(0));
    for _ in 0..n / dtype.block_len() {
        let mut blk: Vec<u8> = (0..dtype.block_bytes()).map(|_| rng.next_u64() as u8).collect();
        let mut put = |off: usize, v: f32| blk[off..off + 2].copy_from_slice(&f16(v));
        match dtype {
            WeightDType::Q8_0 => put(0, scale(rng, 0.001, 0.02)),
            WeightDType::Q4_0 | WeightDType::Q5_0 | WeightDType::IQ4_NL => put(0, scale(rng, 0.01, 0.1)),
            WeightDType::Q4_1 | WeightDType::Q5_1 => {
                put(0, scale(rng, 0.01, 0.1));
                put(2, -scale(rng, 0.0, 0.8));
            }
            WeightDType::Q2_K => {
                put(80, scale(rng, 0.005, 0.05));
                put(82, scale(rng, 0.0, 0.02));
            }
            WeightDType::Q3_K => put(108, scale(rng, 0.001, 0.01)),
            WeightDType::Q4_K | WeightDType::Q5_K => {
                put(0, scale(rng, 0.0005, 0.005));
                put(2, scale(rng, 0.0, 0.005));
            }
            WeightDType::Q6_K => put(208, scale(rng, 0.0002, 0.002)),
            WeightDType::Q8_K => blk[..4].copy_from_slice(&scale(rng, 0.001, 0.02).to_le_bytes()),
            WeightDType::F32 | WeightDType::F16 | WeightDType::BF16 => unreachable!(),
        }
        out.extend(blk);
    }
    out
}
