//! Storage formats of weight tensors, shared by loaders and backends.

use std::fmt;

/// How the elements of a stored weight tensor are encoded.
///
/// Quantized formats store blocks of `block_len()` elements in `block_bytes()` bytes,
/// laid out exactly as GGUF (ggml) stores them. The 32-element formats carry one f16 scale
/// per block; the K-quants carry 256-element super-blocks with quantized sub-block scales.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)] // ggml's type names, as users know them
pub enum WeightDType {
    /// IEEE float32.
    F32,
    /// IEEE float16.
    F16,
    /// bfloat16.
    BF16,
    /// 32 elements: f16 scale `d`, then 32 signed bytes; x = d * q.
    Q8_0,
    /// 32 elements: f16 scale `d`, then 16 bytes of nibbles; x = d * (q - 8).
    Q4_0,
    /// 32 elements: f16 scale `d`, f16 min `m`, then 16 bytes of nibbles; x = d * q + m.
    Q4_1,
    /// 32 elements: f16 `d`, 4 bytes of fifth bits, 16 bytes of nibbles; x = d * (q - 16).
    Q5_0,
    /// 32 elements: f16 `d`, f16 `m`, 4 bytes of fifth bits, 16 bytes of nibbles; x = d * q + m.
    Q5_1,
    /// 32 elements: f16 `d`, 16 bytes of nibbles indexing a fixed non-linear table.
    IQ4_NL,
    /// 256 elements: 16 sub-blocks of 16 with 4-bit scales and mins, 2-bit quants.
    Q2_K,
    /// 256 elements: 16 sub-blocks of 16 with 6-bit scales, 3-bit quants (2 low + 1 high bit).
    Q3_K,
    /// 256 elements: 8 sub-blocks of 32 with 6-bit scales and mins, 4-bit quants.
    Q4_K,
    /// 256 elements: 8 sub-blocks of 32 with 6-bit scales and mins, 5-bit quants.
    Q5_K,
    /// 256 elements: 16 sub-blocks of 16 with 8-bit scales, 6-bit quants.
    Q6_K,
    /// 256 elements: f32 scale, 256 signed bytes, 16 sums of 16 quants; x = d * q.
    Q8_K,
}

impl WeightDType {
    /// Every encoding, plain floats first.
    pub const ALL: [WeightDType; 15] = [
        Self::F32,
        Self::F16,
        Self::BF16,
        Self::Q8_0,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::IQ4_NL,
        Self::Q2_K,
        Self::Q3_K,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
        Self::Q8_K,
    ];

    /// Elements per storage block (1 for plain float formats).
    pub const fn block_len(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q8_0 | Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::IQ4_NL => 32,
            Self::Q2_K | Self::Q3_K | Self::Q4_K | Self::Q5_K | Self::Q6_K | Self::Q8_K => 256,
        }
    }

    /// Bytes per storage block.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q8_0 => 34,
            Self::Q4_0 | Self::IQ4_NL => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q2_K => 84,
            Self::Q3_K => 110,
            Self::Q4_K => 144,
            Self::Q5_K => 176,
            Self::Q6_K => 210,
            Self::Q8_K => 292,
        }
    }

    /// Bytes needed for `num_elements` elements, or `None` when the count is not a whole
    /// number of blocks.
    pub const fn bytes_for(self, num_elements: usize) -> Option<usize> {
        if !num_elements.is_multiple_of(self.block_len()) {
            return None;
        }
        Some(num_elements / self.block_len() * self.block_bytes())
    }

    /// True for the block-quantized formats.
    pub const fn is_quantized(self) -> bool {
        self.block_len() > 1
    }

    /// The ggml type name ("Q4_K", "BF16", ...).
    pub const fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q8_0 => "Q8_0",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::IQ4_NL => "IQ4_NL",
            Self::Q2_K => "Q2_K",
            Self::Q3_K => "Q3_K",
            Self::Q4_K => "Q4_K",
            Self::Q5_K => "Q5_K",
            Self::Q6_K => "Q6_K",
            Self::Q8_K => "Q8_K",
        }
    }
}

impl fmt::Display for WeightDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_follow_block_layout() {
        assert_eq!(WeightDType::Q4_1.bytes_for(64), Some(40));
        assert_eq!(WeightDType::Q8_0.bytes_for(33), None);
        assert_eq!(WeightDType::BF16.bytes_for(3), Some(6));
        assert_eq!(WeightDType::Q4_K.bytes_for(512), Some(288));
        assert_eq!(WeightDType::Q6_K.bytes_for(288), None);
    }

    #[test]
    fn k_quant_sizes_match_the_bits_per_weight() {
        // ggml's documented effective sizes: 2.625, 3.4375, 4.5, 5.5, 6.5625 bits per weight.
        let bpw = |t: WeightDType| 8.0 * t.block_bytes() as f64 / t.block_len() as f64;
        assert_eq!(bpw(WeightDType::Q2_K), 2.625);
        assert_eq!(bpw(WeightDType::Q3_K), 3.4375);
        assert_eq!(bpw(WeightDType::Q4_K), 4.5);
        assert_eq!(bpw(WeightDType::Q5_K), 5.5);
        assert_eq!(bpw(WeightDType::Q6_K), 6.5625);
        assert!(WeightDType::ALL.iter().all(|t| t.name() == t.to_string()));
    }
}
