//! Storage formats of weight tensors, shared by loaders and backends.

use std::fmt;

/// How the elements of a stored weight tensor are encoded.
///
/// Quantized formats store blocks of `block_len()` elements in `block_bytes()` bytes,
/// laid out exactly as GGUF (ggml) stores them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
}

impl WeightDType {
    /// Elements per storage block (1 for plain float formats).
    pub const fn block_len(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q8_0 | Self::Q4_0 | Self::Q4_1 => 32,
        }
    }

    /// Bytes per storage block.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q8_0 => 34,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
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
}

impl fmt::Display for WeightDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q8_0 => "Q8_0",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
        };
        f.write_str(name)
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
    }
}
