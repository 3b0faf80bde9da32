//! Model hyperparameters from a Hugging Face `config.json` (plus `generation_config.json`)
//! or from GGUF metadata, the names the files give the architecture, and the rotary inverse
//! frequencies the hyperparameters imply. Nothing here depends on the architecture: what a
//! name means is the model registry's business (`models/registry.rs`).

use crate::error::ConfigError;

mod gguf_config;
mod hf_config;
mod moe;
mod rope;

pub use hf_config::HfConfigJson;
pub use moe::MoeConfig;
pub use rope::{RopeScaling, RopeTables};

/// An error unless `config`'s MLP activation is `supported`, the one `family` computes.
pub fn refuse_activation(
    config: &ModelConfig,
    family: &str,
    supported: Activation,
) -> Result<(), ConfigError> {
    if config.hidden_act == supported {
        return Ok(());
    }
    Err(ConfigError::Invalid {
        source_name: family.to_string(),
        detail: format!(
            "hidden_act \"{}\" is not supported by the {family} family (supported: \"{}\")",
            config.hidden_act.hf_name(),
            supported.hf_name()
        ),
    })
}

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

/// The activation of the MLP's gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `silu` (Llama, Qwen, Mistral, Phi-3).
    Silu,
    /// `gelu_pytorch_tanh`, GELU's tanh approximation (Gemma).
    GeluTanh,
}

impl Activation {
    /// The name Hugging Face configs give it.
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::Silu => "silu",
            Self::GeluTanh => "gelu_pytorch_tanh",
        }
    }
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
    /// RoPE base of the sliding-window layers, when it differs from `rope_theta` (Gemma 3's
    /// `rope_local_base_freq`); those layers take no scaling.
    pub rope_local_theta: Option<f32>,
    /// The MLP gate's activation.
    pub hidden_act: Activation,
    /// Attention scores scale by `query_pre_attn_scalar^-1/2` rather than `head_dim^-1/2`
    /// (Gemma).
    pub query_pre_attn_scalar: Option<f32>,
    /// Attention scores become `cap * tanh(score / cap)` (Gemma 2's `attn_logit_softcapping`).
    pub attn_logit_softcapping: Option<f32>,
    /// Output logits become `cap * tanh(logit / cap)` (Gemma 2's `final_logit_softcapping`).
    pub final_logit_softcapping: Option<f32>,
    /// Mixture-of-experts MLPs (Mixtral, Qwen3-MoE), when the model has them.
    pub moe: Option<MoeConfig>,
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
        let factor_lists: Vec<(&str, &Vec<f32>)> = match &self.rope_scaling {
            RopeScaling::FreqFactors { factors } => vec![("rope_freqs", factors)],
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                ..
            } => vec![("short_factor", short_factor), ("long_factor", long_factor)],
            _ => Vec::new(),
        };
        for (name, factors) in factor_lists {
            if factors.len() != self.head_dim / 2 {
                return Err(invalid(format!(
                    "{name} has {} factors, expected head_dim / 2 = {}",
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
