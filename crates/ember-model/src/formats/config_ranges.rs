//! Range checks of a model config's numbers (sizes at least 1, finite positive RoPE and norm
//! constants, token ids inside the vocabulary), so a corrupt or hostile file is refused with the
//! field's name before anything is sized from it. Sizes that tensors carry are checked against
//! the tensors themselves when the weights are opened.

use super::{ModelConfig, RopeScaling};

impl ModelConfig {
    /// Checks every count, float and token id against its allowed range.
    pub(super) fn validate_ranges(&self) -> Result<(), String> {
        for (field, value) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_layers (block_count / num_hidden_layers)", self.num_layers),
            ("vocab_size", self.vocab_size),
            (
                "max_position_embeddings (context_length)",
                self.max_position_embeddings,
            ),
        ] {
            if value == 0 {
                return Err(format!("{field} must be at least 1, got 0"));
            }
        }
        if self.num_heads.checked_mul(self.head_dim).is_none() {
            return Err(format!(
                "{} heads of {} dimensions overflow",
                self.num_heads, self.head_dim
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return Err(format!(
                "rms_norm_eps (layer_norm_rms_epsilon) must be a finite number >= 0, got {}",
                self.rms_norm_eps
            ));
        }
        positive("rope_theta (rope.freq_base)", self.rope_theta)?;
        self.validate_rope_scaling()?;
        for (field, id) in self
            .bos_token_id
            .iter()
            .map(|&id| ("bos_token_id", id))
            .chain(self.eos_token_ids.iter().map(|&id| ("eos_token_id", id)))
        {
            if id as usize >= self.vocab_size {
                return Err(format!(
                    "{field} {id} is out of range (vocab_size {})",
                    self.vocab_size
                ));
            }
        }
        Ok(())
    }

    fn validate_rope_scaling(&self) -> Result<(), String> {
        match &self.rope_scaling {
            RopeScaling::None => Ok(()),
            RopeScaling::Linear { factor } => positive("rope_scaling.factor", *factor),
            RopeScaling::FreqFactors { factors } => factors
                .iter()
                .try_for_each(|&f| positive("rope_freqs.weight entries", f)),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                positive("rope_scaling.factor", *factor)?;
                positive("rope_scaling.low_freq_factor", *low_freq_factor)?;
                positive("rope_scaling.high_freq_factor", *high_freq_factor)?;
                if high_freq_factor <= low_freq_factor {
                    return Err(format!(
                        "rope_scaling.high_freq_factor ({high_freq_factor}) must be larger than low_freq_factor ({low_freq_factor})"
                    ));
                }
                original_at_least_one(*original_max_position_embeddings)
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                ..
            } => {
                positive("rope_scaling.factor", *factor)?;
                positive("rope_scaling.beta_fast", *beta_fast)?;
                positive("rope_scaling.beta_slow", *beta_slow)?;
                positive("rope_scaling.attention_factor", *attention_factor)?;
                original_at_least_one(*original_max_position_embeddings)
            }
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings,
                attention_factor,
            } => {
                for &f in short_factor.iter().chain(long_factor) {
                    positive("rope_scaling.short_factor / long_factor entries", f)?;
                }
                positive("rope_scaling.attention_factor", *attention_factor)?;
                original_at_least_one(*original_max_position_embeddings)
            }
        }
    }
}

fn original_at_least_one(original_max_position_embeddings: usize) -> Result<(), String> {
    if original_max_position_embeddings == 0 {
        return Err("rope_scaling.original_max_position_embeddings must be at least 1, got 0".into());
    }
    Ok(())
}

fn positive(field: &str, value: f32) -> Result<(), String> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(format!("{field} must be a finite number > 0, got {value}"))
    }
}
