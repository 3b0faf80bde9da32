//! RoPE frequency scalings and the rotary tables a config implies, computed as transformers
//! computes them (`modeling_rope_utils.py`).

use super::ModelConfig;

/// RoPE frequency scaling.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Position interpolation: every inverse frequency divided by `factor`.
    Linear {
        /// Divisor.
        factor: f32,
    },
    /// Llama 3.1 frequency-dependent scaling.
    Llama3 {
        /// Divisor for low frequencies.
        factor: f32,
        /// Wavelengths above `original / low_freq_factor` are fully scaled.
        low_freq_factor: f32,
        /// Wavelengths below `original / high_freq_factor` are unscaled.
        high_freq_factor: f32,
        /// Context length the model was pre-trained with.
        original_max_position_embeddings: usize,
    },
    /// Per-frequency divisors as stored in a GGUF `rope_freqs.weight` tensor (llama.cpp's
    /// form of Llama 3 scaling): `inv_freq[i] / factors[i]`.
    FreqFactors {
        /// One divisor per dimension pair.
        factors: Vec<f32>,
    },
    /// YaRN: interpolation blended into extrapolation between two wavelengths, and an
    /// attention factor on the rotated q and k.
    Yarn {
        /// Interpolation divisor.
        factor: f32,
        /// Context length the model was pre-trained with.
        original_max_position_embeddings: usize,
        /// Rotations above which a dimension extrapolates.
        beta_fast: f32,
        /// Rotations below which a dimension interpolates.
        beta_slow: f32,
        /// Rounds the correction range outward.
        truncate: bool,
        /// Factor on cos and sin.
        attention_factor: f32,
    },
    /// Phi-3's long-rope ("su"): per-frequency divisors, the long ones once the context
    /// exceeds the original one, and an attention factor on the rotated q and k.
    LongRope {
        /// Divisors up to `original_max_position_embeddings` positions, one per pair.
        short_factor: Vec<f32>,
        /// Divisors past it.
        long_factor: Vec<f32>,
        /// Context length the model was pre-trained with.
        original_max_position_embeddings: usize,
        /// Factor on cos and sin.
        attention_factor: f32,
    },
}

/// The rotary tables of one model for one engine: inverse frequencies and the factor cos and
/// sin are multiplied by.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeTables {
    /// Inverse frequency of each dimension pair, `[head_dim / 2]`.
    pub inv_freq: Vec<f32>,
    /// Factor on cos and sin (1 except for YaRN and long-rope): q . k grows by its square.
    pub attention_factor: f32,
}

/// YaRN's attention factor for `factor` (transformers' `get_mscale`).
pub fn yarn_mscale(factor: f64) -> f64 {
    if factor <= 1.0 {
        1.0
    } else {
        0.1 * factor.ln() + 1.0
    }
}

/// Long-rope's default attention factor for a context extended by `factor` over `original`.
pub fn long_rope_mscale(factor: f64, original: usize) -> f64 {
    if factor <= 1.0 {
        1.0
    } else {
        (1.0 + factor.ln() / (original as f64).ln()).sqrt()
    }
}

impl ModelConfig {
    /// The rotary tables for sequences of up to `max_model_len` tokens, in float32 exactly as
    /// transformers computes them. Long-rope takes its long factors when `max_model_len`
    /// exceeds the original context (llama.cpp's rule; transformers switches per forward pass
    /// on the sequence's length, which a KV cache cannot follow).
    pub fn rope_tables(&self, max_model_len: usize) -> RopeTables {
        let dim = self.head_dim as f32;
        let base = self.rope_theta as f64;
        // transformers: base ** (arange(0, dim, 2).float() / dim), all float32; the power is
        // rounded once from float64, i.e. correctly rounded.
        let pos_freq: Vec<f32> = (0..self.head_dim)
            .step_by(2)
            .map(|i| base.powf(f64::from(i as f32 / dim)) as f32)
            .collect();
        let plain = || pos_freq.iter().map(|p| 1.0 / p);
        let (inv_freq, attention_factor) = match &self.rope_scaling {
            RopeScaling::None => (plain().collect(), 1.0),
            RopeScaling::Linear { factor } => (plain().map(|f| f / factor).collect(), 1.0),
            RopeScaling::FreqFactors { factors } => (
                plain()
                    .zip(factors.iter().chain(std::iter::repeat(&1.0)))
                    .map(|(f, d)| f / d)
                    .collect(),
                1.0,
            ),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => (
                llama3(
                    plain(),
                    *factor,
                    *low_freq_factor,
                    *high_freq_factor,
                    *original_max_position_embeddings,
                ),
                1.0,
            ),
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                truncate,
                attention_factor,
            } => {
                let (low, high) = yarn_correction_range(
                    *beta_fast,
                    *beta_slow,
                    self.head_dim,
                    base,
                    *original_max_position_embeddings,
                    *truncate,
                );
                let span = if low == high {
                    high + 0.001 - low
                } else {
                    high - low
                };
                let inv = pos_freq.iter().enumerate().map(|(i, &p)| {
                    let ramp = ((i as f32 - low as f32) / span as f32).clamp(0.0, 1.0);
                    let extrapolation = 1.0 - ramp;
                    let (extra, inter) = (1.0 / p, 1.0 / (factor * p));
                    inter * (1.0 - extrapolation) + extra * extrapolation
                });
                (inv.collect(), *attention_factor)
            }
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings,
                attention_factor,
            } => {
                let factors = if max_model_len > *original_max_position_embeddings {
                    long_factor
                } else {
                    short_factor
                };
                let inv = pos_freq.iter().zip(factors).map(|(&p, &e)| 1.0 / (e * p));
                (inv.collect(), *attention_factor)
            }
        };
        RopeTables {
            inv_freq,
            attention_factor,
        }
    }
}

/// Llama 3.1's smooth blend between scaled low and unscaled high frequencies.
fn llama3(
    inv_freq: impl Iterator<Item = f32>,
    factor: f32,
    low_freq_factor: f32,
    high_freq_factor: f32,
    original_max_position_embeddings: usize,
) -> Vec<f32> {
    let old_len = original_max_position_embeddings as f32;
    let low_freq_wavelen = old_len / low_freq_factor;
    let high_freq_wavelen = old_len / high_freq_factor;
    let two_pi = 2.0 * std::f32::consts::PI;
    inv_freq
        .map(|f| {
            // `scalar / tensor` in PyTorch is `reciprocal(tensor) * scalar`.
            let wavelen = (1.0 / f) * two_pi;
            let scaled = if wavelen > low_freq_wavelen { f / factor } else { f };
            if wavelen < high_freq_wavelen || wavelen > low_freq_wavelen {
                return scaled;
            }
            let smooth = ((1.0 / wavelen) * old_len - low_freq_factor) / (high_freq_factor - low_freq_factor);
            (1.0 - smooth) * scaled / factor + smooth * scaled
        })
        .collect()
}

/// YaRN's dimension range between full extrapolation and full interpolation (float64, as
/// transformers computes it in Python).
fn yarn_correction_range(
    beta_fast: f32,
    beta_slow: f32,
    dim: usize,
    base: f64,
    original: usize,
    truncate: bool,
) -> (f64, f64) {
    let dim_of = |rotations: f32| {
        (dim as f64 * (original as f64 / (f64::from(rotations) * 2.0 * std::f64::consts::PI)).ln())
            / (2.0 * base.ln())
    };
    let (mut low, mut high) = (dim_of(beta_fast), dim_of(beta_slow));
    if truncate {
        (low, high) = (low.floor(), high.ceil());
    }
    (low.max(0.0), high.min(dim as f64 - 1.0))
}
