//! `ModelConfig` from GGUF metadata.

use super::{
    div_exact, Activation, ArchitectureName, ConfigError, ModelConfig, MoeConfig, NameSource, RopeScaling,
};
use crate::formats::gguf::{GgufFile, GgufValue};

impl ModelConfig {
    /// The architecture name of a GGUF file (`general.architecture`).
    pub fn gguf_architecture_names(file: &GgufFile) -> Result<Vec<ArchitectureName>, ConfigError> {
        let name = gguf_architecture(file)?;
        Ok(vec![ArchitectureName {
            source: NameSource::GgufArchitecture,
            name: name.to_string(),
        }])
    }

    /// Reads the hyperparameters from GGUF metadata (`{arch}.*` and `tokenizer.ggml.*`).
    pub fn from_gguf(file: &GgufFile) -> Result<Self, ConfigError> {
        let source_name = file.path().display().to_string();
        let arch = gguf_architecture(file)?;
        let g = GgufFields {
            file,
            arch,
            source_name: &source_name,
        };
        let hidden_size = g.usize("embedding_length")?;
        let num_heads = g.usize("attention.head_count")?;
        let head_dim = match g.opt_usize("attention.key_length") {
            Some(d) => d,
            None => div_exact(hidden_size, num_heads, &source_name)?,
        };
        if let Some(rope_dim) = g.opt_usize("rope.dimension_count") {
            if rope_dim != head_dim {
                return Err(ConfigError::Invalid {
                    source_name,
                    detail: format!(
                        "partial rotary embedding ({rope_dim} of {head_dim} dims) is not supported"
                    ),
                });
            }
        }
        let vocab_size = match g.opt_usize("vocab_size") {
            Some(v) => v,
            None => file
                .get("tokenizer.ggml.tokens")
                .and_then(GgufValue::as_array)
                .map(<[_]>::len)
                .ok_or_else(|| ConfigError::MissingField {
                    source_name: source_name.clone(),
                    field: format!("{arch}.vocab_size"),
                })?,
        };
        let id = |key: &str| {
            file.get(key)
                .and_then(GgufValue::as_u64)
                .and_then(|v| u32::try_from(v).ok())
        };
        let mut eos_token_ids = Vec::new();
        for key in [
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        ] {
            if let Some(v) = id(key).filter(|v| !eos_token_ids.contains(v)) {
                eos_token_ids.push(v);
            }
        }
        let num_layers = g.usize("block_count")?;
        if file.tensor("rope_factors_long.weight").is_some() {
            return Err(ConfigError::Invalid {
                source_name,
                detail: "long-rope factors (rope_factors_long / rope_factors_short) in a GGUF file are \
                         not supported yet; load the Hugging Face folder"
                    .into(),
            });
        }
        let (sliding_window, sliding_layers) = gguf_sliding_window(&g, num_layers)?;
        let gemma = gguf_gemma(&g, num_layers, hidden_size, num_heads, head_dim);
        let intermediate_size = g.usize("feed_forward_length")?;
        let cfg = Self {
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads: g.opt_usize("attention.head_count_kv").unwrap_or(num_heads),
            head_dim,
            vocab_size,
            rms_norm_eps: g.f64("attention.layer_norm_rms_epsilon")? as f32,
            rope_theta: g.opt_f64("rope.freq_base").unwrap_or(10000.0) as f32,
            rope_scaling: gguf_rope_scaling(&g)?,
            max_position_embeddings: g.opt_usize("context_length").unwrap_or(2048),
            sliding_window,
            sliding_layers,
            rope_local_theta: gemma.as_ref().and_then(|g| g.rope_local_theta),
            hidden_act: match gemma {
                Some(_) => Activation::GeluTanh,
                None => Activation::Silu,
            },
            query_pre_attn_scalar: gemma.as_ref().map(|g| g.query_pre_attn_scalar),
            attn_logit_softcapping: gemma.as_ref().and_then(|g| g.attn_logit_softcapping),
            final_logit_softcapping: gemma.as_ref().and_then(|g| g.final_logit_softcapping),
            moe: gguf_moe(&g, num_layers, intermediate_size)?,
            tie_word_embeddings: file.tensor("output.weight").is_none(),
            bos_token_id: id("tokenizer.ggml.bos_token_id"),
            eos_token_ids,
        };
        cfg.validate(&source_name)?;
        Ok(cfg)
    }
}

fn gguf_architecture(file: &GgufFile) -> Result<&str, ConfigError> {
    file.architecture().ok_or_else(|| ConfigError::MissingField {
        source_name: file.path().display().to_string(),
        field: "general.architecture".into(),
    })
}

/// The attention window and which layers use it, as llama.cpp reads them: Phi-3's
/// `attention.sliding_window` applies to every layer (llama.cpp's `llama`, which Mistral
/// converts to, has none); Gemma 2's and Gemma 3's to the layers
/// `attention.sliding_window_pattern` marks (a list of flags, or a period `n`: all but every
/// `n`-th layer; by default 2 for Gemma 2 and 6 for Gemma 3; Gemma 2's window is 4096 when
/// unset).
fn gguf_sliding_window(
    g: &GgufFields<'_>,
    num_layers: usize,
) -> Result<(Option<usize>, Vec<bool>), ConfigError> {
    let window = g.opt_usize("attention.sliding_window");
    let (window, default_period) = match g.arch {
        "phi3" => match window.filter(|&w| w > 0) {
            Some(window) => return Ok((Some(window), vec![true; num_layers])),
            None => return Ok((None, Vec::new())),
        },
        "gemma2" => (window.or(Some(4096)), 2),
        "gemma3" => (window, 6),
        _ => return Ok((None, Vec::new())),
    };
    let Some(window) = window.filter(|&w| w > 0) else {
        return Ok((None, Vec::new()));
    };
    let key = "attention.sliding_window_pattern";
    let sliding_layers: Vec<bool> = match g.value(key) {
        Some(GgufValue::Array(flags)) => flags
            .iter()
            .map(|f| f.as_bool())
            .collect::<Option<_>>()
            .ok_or_else(|| g.invalid(format!("{}.{key} must be a list of booleans", g.arch)))?,
        Some(value) => {
            let period = value
                .as_u64()
                .and_then(|p| usize::try_from(p).ok())
                .ok_or_else(|| {
                    g.invalid(format!("{}.{key} must be a count or a list of booleans", g.arch))
                })?;
            sliding_by_period(num_layers, period)
        }
        None => sliding_by_period(num_layers, default_period),
    };
    if sliding_layers.len() != num_layers {
        return Err(g.invalid(format!(
            "{}.{key} has {} entries for {num_layers} layers",
            g.arch,
            sliding_layers.len()
        )));
    }
    match sliding_layers.contains(&true) {
        true => Ok((Some(window), sliding_layers)),
        false => Ok((None, Vec::new())),
    }
}

/// llama.cpp's period rule: every layer slides when `period` is 0, otherwise all but the last
/// of every `period` layers.
fn sliding_by_period(num_layers: usize, period: usize) -> Vec<bool> {
    (0..num_layers)
        .map(|i| period == 0 || i % period < period - 1)
        .collect()
}

/// What a Gemma 2 / Gemma 3 GGUF file says beside the Llama fields.
struct GemmaFields {
    rope_local_theta: Option<f32>,
    query_pre_attn_scalar: f32,
    attn_logit_softcapping: Option<f32>,
    final_logit_softcapping: Option<f32>,
}

/// Gemma's fields as llama.cpp reads them (`None` for other architectures). The converter
/// writes no `query_pre_attn_scalar`: llama.cpp scales queries by `head_dim^-1/2`, and by
/// `(hidden_size / num_heads)^-1/2` for the 27B models (46 layers for Gemma 2, 62 for Gemma 3),
/// which is what their configs say. Gemma 2 always soft-caps (50 and 30 unless the file says);
/// Gemma 3 caps the final logits only when the file says, and its sliding layers rotate with
/// `rope.freq_base_swa` (10000 unless the file says).
fn gguf_gemma(
    g: &GgufFields<'_>,
    num_layers: usize,
    hidden_size: usize,
    num_heads: usize,
    head_dim: usize,
) -> Option<GemmaFields> {
    let float = |key: &str| g.opt_f64(key).map(|v| v as f32);
    let (layers_27b, attn_cap, final_cap, local_theta) = match g.arch {
        "gemma2" => (46, Some(50.0), Some(30.0), None),
        "gemma3" => (62, None, None, Some(10_000.0)),
        _ => return None,
    };
    let query_pre_attn_scalar = match num_layers == layers_27b {
        true => (hidden_size / num_heads.max(1)) as f32,
        false => head_dim as f32,
    };
    Some(GemmaFields {
        rope_local_theta: float("rope.freq_base_swa").or(local_theta),
        query_pre_attn_scalar,
        attn_logit_softcapping: match g.arch {
            "gemma2" => float("attn_logit_softcapping").or(attn_cap),
            _ => None,
        },
        final_logit_softcapping: float("final_logit_softcapping")
            .or(final_cap)
            .filter(|&c| c != 0.0),
    })
}

/// The experts llama.cpp's converter declares (`{arch}.expert_count`, `expert_used_count`,
/// `expert_feed_forward_length`, else `feed_forward_length` as Mixtral's): llama.cpp
/// renormalizes the chosen experts' weights for Mixtral and Qwen3-MoE unless
/// `expert_weights_norm` says otherwise; the layers with a router (`blk.N.ffn_gate_inp`) are
/// the sparse ones.
fn gguf_moe(
    g: &GgufFields<'_>,
    num_layers: usize,
    intermediate_size: usize,
) -> Result<Option<MoeConfig>, ConfigError> {
    let num_experts = g.opt_usize("expert_count").unwrap_or(0);
    if num_experts == 0 {
        return Ok(None);
    }
    let invalid = |detail: String| g.invalid(detail);
    if g.opt_usize("expert_shared_count").unwrap_or(0) > 0 {
        return Err(invalid(format!(
            "{}.expert_shared_count: shared experts are not supported",
            g.arch
        )));
    }
    let num_experts_per_tok = g.usize("expert_used_count")?;
    if num_experts_per_tok == 0 || num_experts_per_tok > num_experts {
        return Err(invalid(format!(
            "{}.expert_used_count ({num_experts_per_tok}) must be between 1 and the {num_experts} experts",
            g.arch
        )));
    }
    let sparse_layers = (0..num_layers)
        .map(|i| g.file.tensor(&format!("blk.{i}.ffn_gate_inp.weight")).is_some())
        .collect();
    Ok(Some(MoeConfig {
        num_experts,
        num_experts_per_tok,
        norm_topk_prob: g
            .value("expert_weights_norm")
            .and_then(GgufValue::as_bool)
            .unwrap_or(true),
        expert_intermediate_size: g
            .opt_usize("expert_feed_forward_length")
            .unwrap_or(intermediate_size),
        sparse_layers,
    }))
}

fn gguf_rope_scaling(g: &GgufFields<'_>) -> Result<RopeScaling, ConfigError> {
    if let Some(info) = g.file.tensor("rope_freqs.weight") {
        let bytes = g.file.tensor_bytes(info);
        if info.ggml_type != 0 || bytes.len() != info.num_elements() * 4 {
            return Err(ConfigError::Invalid {
                source_name: g.source_name.to_string(),
                detail: "rope_freqs.weight must be an F32 vector".into(),
            });
        }
        let factors = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        return Ok(RopeScaling::FreqFactors { factors });
    }
    let kind = g
        .file
        .get(&format!("{}.rope.scaling.type", g.arch))
        .and_then(GgufValue::as_str);
    let factor = g
        .opt_f64("rope.scaling.factor")
        .or_else(|| g.opt_f64("rope.scale_linear"));
    match (kind, factor) {
        (None | Some("none"), None) => Ok(RopeScaling::None),
        (None | Some("linear"), Some(1.0)) => Ok(RopeScaling::None),
        (None | Some("linear"), Some(factor)) => Ok(RopeScaling::Linear {
            factor: factor as f32,
        }),
        (Some("none"), Some(_)) => Ok(RopeScaling::None),
        (Some(other), _) => Err(ConfigError::Invalid {
            source_name: g.source_name.to_string(),
            detail: format!("rope scaling type {other:?} is not supported (supported: none, linear)"),
        }),
    }
}

struct GgufFields<'a> {
    file: &'a GgufFile,
    arch: &'a str,
    source_name: &'a str,
}

impl GgufFields<'_> {
    fn value(&self, key: &str) -> Option<&GgufValue> {
        self.file.get(&format!("{}.{key}", self.arch))
    }

    fn missing(&self, key: &str) -> ConfigError {
        ConfigError::MissingField {
            source_name: self.source_name.to_string(),
            field: format!("{}.{key}", self.arch),
        }
    }

    fn invalid(&self, detail: String) -> ConfigError {
        ConfigError::Invalid {
            source_name: self.source_name.to_string(),
            detail,
        }
    }

    fn opt_usize(&self, key: &str) -> Option<usize> {
        self.value(key)
            .and_then(GgufValue::as_u64)
            .and_then(|v| usize::try_from(v).ok())
    }

    fn usize(&self, key: &str) -> Result<usize, ConfigError> {
        self.opt_usize(key).ok_or_else(|| self.missing(key))
    }

    fn opt_f64(&self, key: &str) -> Option<f64> {
        self.value(key).and_then(GgufValue::as_f64)
    }

    fn f64(&self, key: &str) -> Result<f64, ConfigError> {
        self.opt_f64(key).ok_or_else(|| self.missing(key))
    }
}

#[cfg(test)]
#[path = "gguf_config_tests.rs"]
mod tests;
