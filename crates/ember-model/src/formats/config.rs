//! Model hyperparameters from a Hugging Face `config.json` (plus `generation_config.json`)
//! or from GGUF metadata, the names the files give the architecture, and the rotary inverse
//! frequencies the hyperparameters imply. Nothing here depends on the architecture: what a
//! name means is the model registry's business (`models/registry.rs`).

use crate::error::ConfigError;

mod gguf_config;
mod hf_config;

pub use hf_config::HfConfigJson;

/// Which field of a model's files names its architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameSource {
    /// An entry of Hugging Face `config.json` `architectures` (a class such as `LlamaForCausalLM`).
    HfArchitectures,
    /// Hugging Face `config.json` `model_type`.
    HfModelType,
    /// GGUF `general.architecture`.
    GgufArchitecture,
}

/// One name a model's files give its architecture (a model registry maps it to a model).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchitectureName {
    /// The field it was read from.
    pub source: NameSource,
    /// The name as written.
    pub name: String,
}

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
}

/// Hyperparameters of a decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Residual stream width.
    pub hidden_size: usize,
    /// MLP inner width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Dimensions per head (all of them rotated).
    pub head_dim: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base.
    pub rope_theta: f32,
    /// RoPE frequency scaling.
    pub rope_scaling: RopeScaling,
    /// Longest context the model supports.
    pub max_position_embeddings: usize,
    /// Attention window of the layers that use one (Mistral's `sliding_window`, Qwen2's and
    /// Qwen3's with `use_sliding_window`): such a layer attends to its last `sliding_window`
    /// positions.
    pub sliding_window: Option<usize>,
    /// Which layers use `sliding_window` (one entry per layer; all false without a window).
    pub sliding_layers: Vec<bool>,
    /// True when the output projection reuses the token embedding.
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token, when the model defines one.
    pub bos_token_id: Option<u32>,
    /// Every token id that ends generation.
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// The attention window of layer `layer` (`None`: it attends to the whole context).
    pub fn layer_window(&self, layer: usize) -> Option<usize> {
        self.sliding_window
            .filter(|_| self.sliding_layers.get(layer).copied().unwrap_or(false))
    }

    /// RoPE inverse frequencies (`head_dim / 2` of them), computed in float32 exactly as
    /// Hugging Face transformers does, with the configured scaling applied.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let dim = self.head_dim as f32;
        let base = self.rope_theta as f64;
        // transformers: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), all float32;
        // the power is rounded once from float64, i.e. correctly rounded.
        let inv_freq = (0..self.head_dim)
            .step_by(2)
            .map(|i| 1.0f32 / (base.powf(f64::from(i as f32 / dim)) as f32));
        match &self.rope_scaling {
            RopeScaling::None => inv_freq.collect(),
            RopeScaling::Linear { factor } => inv_freq.map(|f| f / factor).collect(),
            RopeScaling::FreqFactors { factors } => inv_freq
                .zip(factors.iter().chain(std::iter::repeat(&1.0)))
                .map(|(f, d)| f / d)
                .collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old_len = *original_max_position_embeddings as f32;
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
                        let smooth = ((1.0 / wavelen) * old_len - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    })
                    .collect()
            }
        }
    }

    fn validate(&self, source_name: &str) -> Result<(), ConfigError> {
        let invalid = |detail: String| ConfigError::Invalid {
            source_name: source_name.to_string(),
            detail,
        };
        if self.num_heads == 0 || self.num_kv_heads == 0 || !self.num_heads.is_multiple_of(self.num_kv_heads)
        {
            return Err(invalid(format!(
                "{} query heads is not a multiple of {} key/value heads",
                self.num_heads, self.num_kv_heads
            )));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return Err(invalid(format!(
                "head_dim {} must be even and positive",
                self.head_dim
            )));
        }
        self.validate_ranges().map_err(invalid)?;
        if let RopeScaling::FreqFactors { factors } = &self.rope_scaling {
            if factors.len() != self.head_dim / 2 {
                return Err(invalid(format!(
                    "rope_freqs has {} factors, expected head_dim / 2 = {}",
                    factors.len(),
                    self.head_dim / 2
                )));
            }
        }
        Ok(())
    }
}

/// The checks of every size, id and float of a config that no tensor shape covers.
#[path = "config_ranges.rs"]
mod ranges;

fn div_exact(hidden_size: usize, num_heads: usize, source_name: &str) -> Result<usize, ConfigError> {
    if num_heads == 0 || !hidden_size.is_multiple_of(num_heads) {
        return Err(ConfigError::Invalid {
            source_name: source_name.to_string(),
            detail: format!("hidden size {hidden_size} is not a multiple of {num_heads} heads"),
        });
    }
    Ok(hidden_size / num_heads)
}

#[cfg(test)]
#[path = "config_tests.rs"]
pub(crate) mod tests;
