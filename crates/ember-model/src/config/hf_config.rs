//! `ModelConfig` from a Hugging Face `config.json` and `generation_config.json`.

use std::path::Path;

use ember_core::RopeStyle;
use serde_json::Value;

use super::{div_exact, Architecture, ConfigError, ModelConfig, RopeScaling};

/// Hugging Face architecture names Ember runs.
const SUPPORTED_HF: &str = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM";

impl ModelConfig {
    /// Reads `config.json` (and `generation_config.json` when present) from a Hugging Face
    /// model folder. Rope style is always [`RopeStyle::HalfSplit`].
    pub fn from_hf_dir(dir: &Path) -> Result<Self, ConfigError> {
        let config_path = dir.join("config.json");
        let config = read_json(&config_path)?;
        let gen_path = dir.join("generation_config.json");
        let generation = if gen_path.is_file() {
            Some(read_json(&gen_path)?)
        } else {
            None
        };
        Self::from_hf_json(&config, generation.as_ref(), &config_path.display().to_string())
    }

    /// Builds a config from parsed `config.json` and optional `generation_config.json`
    /// values; `source_name` labels errors.
    pub fn from_hf_json(
        config: &Value,
        generation: Option<&Value>,
        source_name: &str,
    ) -> Result<Self, ConfigError> {
        let f = HfFields {
            json: config,
            source_name,
        };
        let architecture = hf_architecture(config, source_name)?;
        check_mlp(config, architecture, &f)?;
        let hidden_size = f.usize("hidden_size")?;
        let num_heads = f.usize("num_attention_heads")?;
        let num_kv_heads = f.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
        let head_dim = match f.opt_usize("head_dim")? {
            Some(d) => d,
            None => div_exact(hidden_size, num_heads, source_name)?,
        };
        // transformers 5 writes `rope_parameters: {rope_theta, rope_type, ...}` instead.
        let rope_params = config.get("rope_parameters").filter(|v| v.is_object());
        let bias = config
            .get("attention_bias")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut eos_token_ids = token_ids(config.get("eos_token_id"));
        for id in token_ids(generation.and_then(|g| g.get("eos_token_id"))) {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
        let cfg = Self {
            architecture,
            hidden_size,
            intermediate_size: f.usize("intermediate_size")?,
            num_layers: f.usize("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: f.usize("vocab_size")?,
            rms_norm_eps: f.opt_f64("rms_norm_eps")?.unwrap_or(1e-6) as f32,
            rope_theta: match f.opt_f64("rope_theta")? {
                Some(theta) => theta,
                None => HfFields {
                    json: rope_params.unwrap_or(&Value::Null),
                    source_name,
                }
                .opt_f64("rope_parameters.rope_theta")?
                .unwrap_or(10000.0),
            } as f32,
            rope_scaling: hf_rope_scaling(config.get("rope_scaling").or(rope_params), source_name)?,
            max_position_embeddings: f.opt_usize("max_position_embeddings")?.unwrap_or(2048),
            sliding_window: sliding_window(config, architecture, &f)?,
            tie_word_embeddings: config
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            attention_bias: architecture == Architecture::Qwen2 || bias,
            o_proj_bias: architecture != Architecture::Qwen2 && bias,
            rope_style: RopeStyle::HalfSplit,
            bos_token_id: token_ids(config.get("bos_token_id")).first().copied(),
            eos_token_ids,
        };
        cfg.validate(source_name)?;
        Ok(cfg)
    }
}

fn read_json(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ConfigError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Token ids from an int, a list of ints, or null.
fn token_ids(value: Option<&Value>) -> Vec<u32> {
    let to_id = |v: &Value| v.as_u64().and_then(|v| u32::try_from(v).ok());
    match value {
        Some(Value::Array(items)) => items.iter().filter_map(to_id).collect(),
        Some(v) => to_id(v).into_iter().collect(),
        None => Vec::new(),
    }
}

fn hf_architecture(config: &Value, source_name: &str) -> Result<Architecture, ConfigError> {
    let from_class = |name: &str| match name {
        "LlamaForCausalLM" => Some(Architecture::Llama),
        "MistralForCausalLM" => Some(Architecture::Mistral),
        "Qwen2ForCausalLM" => Some(Architecture::Qwen2),
        _ => None,
    };
    let classes: Vec<&str> = config
        .get("architectures")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let Some(arch) = classes.iter().find_map(|c| from_class(c)) {
        return Ok(arch);
    }
    let model_type = config.get("model_type").and_then(Value::as_str);
    match model_type {
        Some("llama") => Ok(Architecture::Llama),
        Some("mistral") => Ok(Architecture::Mistral),
        Some("qwen2") => Ok(Architecture::Qwen2),
        _ => {
            let name = classes
                .first()
                .map(|s| s.to_string())
                .or(model_type.map(str::to_string));
            match name {
                Some(name) => Err(ConfigError::UnsupportedArchitecture {
                    name,
                    supported: SUPPORTED_HF,
                }),
                None => Err(ConfigError::MissingField {
                    source_name: source_name.to_string(),
                    field: "architectures (or model_type)".into(),
                }),
            }
        }
    }
}

/// Rejects MLP settings the Llama-family code would silently compute wrong: an activation
/// other than SiLU, and Llama's `mlp_bias` (the MLP projections have no bias here).
fn check_mlp(config: &Value, architecture: Architecture, f: &HfFields<'_>) -> Result<(), ConfigError> {
    let invalid = |detail: String| ConfigError::Invalid {
        source_name: f.source_name.to_string(),
        detail,
    };
    match f.field("hidden_act") {
        None => {}
        Some(Value::String(act)) if act == "silu" || act == "swish" => {}
        Some(other) => {
            return Err(invalid(format!(
                "hidden_act {other} is not supported (supported: \"silu\")"
            )))
        }
    }
    let mlp_bias = config.get("mlp_bias").and_then(Value::as_bool) == Some(true);
    if architecture == Architecture::Llama && mlp_bias {
        return Err(invalid(
            "mlp_bias true is not supported (MLP projections without biases only)".into(),
        ));
    }
    Ok(())
}

/// The attention window of the layers that use one, as transformers reads it: Mistral's
/// `sliding_window`; Qwen2's only with `use_sliding_window`, for layers from
/// `max_window_layers` on; an explicit `layer_types` list decides for either.
fn sliding_window(
    config: &Value,
    architecture: Architecture,
    f: &HfFields<'_>,
) -> Result<Option<usize>, ConfigError> {
    let use_window = match architecture {
        Architecture::Llama => false,
        Architecture::Mistral => true,
        Architecture::Qwen2 => config.get("use_sliding_window").and_then(Value::as_bool) == Some(true),
    };
    let Some(window) = f.opt_usize("sliding_window")?.filter(|_| use_window) else {
        return Ok(None);
    };
    let any_layer_slides = match config.get("layer_types").and_then(Value::as_array) {
        Some(types) => types.iter().any(|t| t.as_str() == Some("sliding_attention")),
        None if architecture == Architecture::Qwen2 => {
            let num_layers = f.usize("num_hidden_layers")?;
            f.opt_usize("max_window_layers")?.unwrap_or(28) < num_layers
        }
        None => true,
    };
    Ok(any_layer_slides.then_some(window))
}

fn hf_rope_scaling(value: Option<&Value>, source_name: &str) -> Result<RopeScaling, ConfigError> {
    let Some(obj) = value.filter(|v| !v.is_null()) else {
        return Ok(RopeScaling::None);
    };
    let f = HfFields {
        json: obj,
        source_name,
    };
    let kind = obj
        .get("rope_type")
        .or_else(|| obj.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: f.f64("rope_scaling.factor")? as f32,
        }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: f.f64("rope_scaling.factor")? as f32,
            low_freq_factor: f.f64("rope_scaling.low_freq_factor")? as f32,
            high_freq_factor: f.f64("rope_scaling.high_freq_factor")? as f32,
            original_max_position_embeddings: f.usize("rope_scaling.original_max_position_embeddings")?,
        }),
        other => Err(ConfigError::Invalid {
            source_name: source_name.to_string(),
            detail: format!("rope_scaling type {other:?} is not supported (supported: linear, llama3)"),
        }),
    }
}

struct HfFields<'a> {
    json: &'a Value,
    source_name: &'a str,
}

impl HfFields<'_> {
    fn field(&self, path: &str) -> Option<&Value> {
        let key = path.rsplit('.').next().unwrap_or(path);
        self.json.get(key).filter(|v| !v.is_null())
    }

    fn missing(&self, field: &str) -> ConfigError {
        ConfigError::MissingField {
            source_name: self.source_name.to_string(),
            field: field.to_string(),
        }
    }

    fn opt_usize(&self, field: &str) -> Result<Option<usize>, ConfigError> {
        self.field(field)
            .map(|v| {
                v.as_u64()
                    .and_then(|v| usize::try_from(v).ok())
                    .ok_or_else(|| self.missing(field))
            })
            .transpose()
    }

    fn usize(&self, field: &str) -> Result<usize, ConfigError> {
        self.opt_usize(field)?.ok_or_else(|| self.missing(field))
    }

    fn opt_f64(&self, field: &str) -> Result<Option<f64>, ConfigError> {
        self.field(field)
            .map(|v| v.as_f64().ok_or_else(|| self.missing(field)))
            .transpose()
    }

    fn f64(&self, field: &str) -> Result<f64, ConfigError> {
        self.opt_f64(field)?.ok_or_else(|| self.missing(field))
    }
}

#[cfg(test)]
#[path = "hf_config_tests.rs"]
mod tests;
