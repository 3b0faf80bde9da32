//! `ModelConfig` from GGUF metadata.

use super::{div_exact, Activation, ArchitectureName, ConfigError, ModelConfig, NameSource, RopeScaling};
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
        // llama.cpp applies `phi3.attention.sliding_window` to every layer (its Llama arch,
        // which Mistral converts to, has no window).
        let (sliding_window, sliding_layers) = match (arch, g.opt_usize("attention.sliding_window")) {
            ("phi3", Some(window)) if window > 0 => (Some(window), vec![true; num_layers]),
            _ => (None, Vec::new()),
        };
        let cfg = Self {
            hidden_size,
            intermediate_size: g.usize("feed_forward_length")?,
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
            rope_local_theta: None,
            hidden_act: Activation::Silu,
            query_pre_attn_scalar: None,
            attn_logit_softcapping: None,
            final_logit_softcapping: None,
            moe: None,
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
