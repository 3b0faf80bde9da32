//! What a model tells a backend about one layer's attention: head geometry, the per-layer
//! attention options, and the rotary embedding tables.

use crate::backend::{BackendError, BackendResult};

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(2i, 2i + 1)`: GGUF's Llama layout (Q/K rows permuted at conversion).
    Interleaved,
    /// Pairs `(i, i + rotary_dim / 2)`: the Hugging Face (NeoX) layout.
    HalfSplit,
}

/// Rotary embedding of the first `2 * inv_freq.len()` dimensions of every head, with the
/// inverse frequencies held where the backend wants them (`V` is a backend's vector type).
#[derive(Clone, Debug)]
pub struct Rope<V> {
    /// Pair layout.
    pub style: RopeStyle,
    /// Inverse frequency of each dimension pair, scaling already applied; `[rotary_dim / 2]`.
    pub inv_freq: V,
}

/// Head geometry of one attention layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (`num_heads` is a multiple of it: grouped-query attention).
    pub num_kv_heads: usize,
    /// Dimensions per head.
    pub head_dim: usize,
}

/// Everything one layer's attention needs besides its inputs; layers of one model may differ
/// (interleaved local and global layers).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionParams {
    /// Head geometry.
    pub shape: AttentionShape,
    /// Factor applied to `q . k` before the softmax (usually `1 / sqrt(head_dim)`).
    pub scale: f32,
    /// Attend only to the last `sliding_window` positions (`None`: the whole context).
    pub sliding_window: Option<usize>,
    /// Scores become `cap * tanh(score / cap)` before the softmax (`None`: no capping).
    pub logit_soft_cap: Option<f32>,
}

impl AttentionParams {
    /// Full causal attention with `1 / sqrt(head_dim)` scaling, no window and no capping.
    pub fn causal(shape: AttentionShape) -> Self {
        Self {
            shape,
            scale: 1.0 / (shape.head_dim as f32).sqrt(),
            sliding_window: None,
            logit_soft_cap: None,
        }
    }

    /// An error naming the first option a backend without windows or soft-capping cannot honour.
    pub fn require_plain(&self, backend: &str) -> BackendResult<()> {
        let unsupported = match (self.sliding_window, self.logit_soft_cap) {
            (Some(window), _) => format!("sliding_window {window}"),
            (None, Some(cap)) => format!("logit_soft_cap {cap}"),
            (None, None) => return Ok(()),
        };
        Err(BackendError::Unsupported(format!(
            "attention with {unsupported} is not implemented by the {backend} backend"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_attention_passes_the_check() {
        let shape = AttentionShape {
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 64,
        };
        let plain = AttentionParams::causal(shape);
        assert_eq!(plain.scale, 0.125);
        assert!(plain.require_plain("cpu").is_ok());
        let windowed = AttentionParams {
            sliding_window: Some(4096),
            ..plain
        };
        let err = windowed.require_plain("cpu").unwrap_err().to_string();
        assert!(
            err.contains("sliding_window 4096") && err.contains("cpu"),
            "{err}"
        );
        let capped = AttentionParams {
            logit_soft_cap: Some(50.0),
            ..plain
        };
        assert!(capped
            .require_plain("cuda")
            .unwrap_err()
            .to_string()
            .contains("logit_soft_cap 50"));
    }
}
