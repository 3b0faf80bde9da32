//! `ModelConfig` from a Hugging Face `config.json` and `generation_config.json`.

use std::path::Path;

use serde_json::Value;

use super::rope::{long_rope_mscale, yarn_mscale};
use super::{div_exact, Activation, ArchitectureName, ConfigError, ModelConfig, NameSource, RopeScaling};

/// A Hugging Face model folder's `config.json` and `generation_config.json`, read as JSON.
pub struct HfConfigJson {
    /// `config.json`.
    pub config: Value,
    /// `generation_config.json`, when present.
    pub generation: Option<Value>,
    /// The path of `config.json`, for errors.
    pub source_name: String,
}

impl HfConfigJson {
    /// Reads `config.json` (and `generation_config.json` when present) from `dir`.
    pub fn read(dir: &Path) -> Result<Self, ConfigError> {
        let config_path = dir.join("config.json");
        let config = read_json(&config_path)?;
        let gen_path = dir.join("generation_config.json");
        let generation = if gen_path.is_file() {
            Some(read_json(&gen_path)?)
        } else {
            None
        };
        Ok(Self {
            config,
            generation,
            source_name: config_path.display().to_string(),
        })
    }

    /// The architecture names, most specific first: each class of `architectures`, then
    /// `model_type`; an error when there is neither.
    pub fn architecture_names(&self) -> Result<Vec<ArchitectureName>, ConfigError> {
        let name = |source, value: &Value| {
            value.as_str().map(|name| ArchitectureName {
                source,
                name: name.to_string(),
            })
        };
        let classes = self.config.get("architectures").and_then(Value::as_array);
        let mut names: Vec<ArchitectureName> = classes
            .into_iter()
            .flatten()
            .filter_map(|c| name(NameSource::HfArchitectures, c))
            .collect();
        names.extend(
            self.config
                .get("model_type")
                .and_then(|t| name(NameSource::HfModelType, t)),
        );
        if names.is_empty() {
            return Err(ConfigError::MissingField {
                source_name: self.source_name.clone(),
                field: "architectures (or model_type)".into(),
            });
        }
        Ok(names)
    }
}

impl ModelConfig {
    /// The hyperparameters of a Hugging Face model folder's config files.
    pub fn from_hf(json: &HfConfigJson) -> Result<Self, ConfigError> {
        Self::from_hf_json(&json.config, json.generation.as_ref(), &json.source_name)
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
        let hidden_act = check_mlp(config, &f)?;
        let hidden_size = f.usize("hidden_size")?;
        let num_heads = f.usize("num_attention_heads")?;
        let num_kv_heads = f.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
        let head_dim = match f.opt_usize("head_dim")? {
            Some(d) => d,
            None => div_exact(hidden_size, num_heads, source_name)?,
        };
        // transformers 5 writes `rope_parameters: {rope_theta, rope_type, ...}` instead, or one
        // such object per layer type (Gemma 3: `full_attention`, `sliding_attention`).
        let all_rope_params = config.get("rope_parameters").filter(|v| v.is_object());
        let per_layer_type = all_rope_params.and_then(|p| p.get("full_attention"));
        let rope_params = per_layer_type.or(all_rope_params);
        let local_rope_params = all_rope_params
            .and_then(|p| p.get("sliding_attention"))
            .filter(|_| per_layer_type.is_some());
        let rope_local_theta = match f.opt_f64("rope_local_base_freq")? {
            Some(theta) => Some(theta),
            None => local_rope_params
                .and_then(|p| p.get("rope_theta"))
                .and_then(Value::as_f64),
        };
        if let Some(kind) = local_rope_params
            .and_then(|p| p.get("rope_type"))
            .and_then(Value::as_str)
            .filter(|&k| k != "default")
        {
            return Err(ConfigError::Invalid {
                source_name: source_name.to_string(),
                detail: format!("rope_parameters.sliding_attention type {kind:?} is not supported"),
            });
        }
        let mut eos_token_ids = token_ids(config.get("eos_token_id"));
        for id in token_ids(generation.and_then(|g| g.get("eos_token_id"))) {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
        let (sliding_window, sliding_layers) = sliding_window(config, &f)?;
        let cfg = Self {
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
            rope_scaling: hf_rope_scaling(config, config.get("rope_scaling").or(rope_params), source_name)?,
            max_position_embeddings: f.opt_usize("max_position_embeddings")?.unwrap_or(2048),
            sliding_window,
            sliding_layers,
            rope_local_theta: rope_local_theta.map(|t| t as f32),
            hidden_act,
            query_pre_attn_scalar: f.opt_f64("query_pre_attn_scalar")?.map(|v| v as f32),
            attn_logit_softcapping: f.opt_f64("attn_logit_softcapping")?.map(|v| v as f32),
            final_logit_softcapping: f.opt_f64("final_logit_softcapping")?.map(|v| v as f32),
            moe: super::moe::moe_config(config, f.usize("num_hidden_layers")?, source_name)?,
            tie_word_embeddings: config
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
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

/// The MLP's activation (`hidden_activation`, Gemma's name, or `hidden_act`); rejects one no
/// family computes, and `mlp_bias` (the MLP projections have no bias here).
fn check_mlp(config: &Value, f: &HfFields<'_>) -> Result<Activation, ConfigError> {
    let invalid = |detail: String| ConfigError::Invalid {
        source_name: f.source_name.to_string(),
        detail,
    };
    let (field, value) = match f.field("hidden_activation") {
        Some(v) => ("hidden_activation", Some(v)),
        None => ("hidden_act", f.field("hidden_act")),
    };
    let activation = match value {
        None => Activation::Silu,
        Some(Value::String(act)) if act == "silu" || act == "swish" => Activation::Silu,
        Some(Value::String(act)) if act == "gelu_pytorch_tanh" => Activation::GeluTanh,
        Some(other) => {
            return Err(invalid(format!(
                "{field} {other} is not supported (supported: \"silu\", \"gelu_pytorch_tanh\")"
            )))
        }
    };
    if config.get("mlp_bias").and_then(Value::as_bool) == Some(true) {
        return Err(invalid(
            "mlp_bias true is not supported (MLP projections without biases only)".into(),
        ));
    }
    Ok(activation)
}

/// When a config's `sliding_window` applies; transformers' config classes read it differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WindowRule {
    /// Llama (and any config not listed): the field is ignored.
    Never,
    /// Mistral, Mixtral and Phi-3: whenever it is set.
    WhenSet,
    /// Gemma 2: whenever it is set, on every other layer from the first.
    Gemma2,
    /// Gemma 3: whenever it is set, on all but every `sliding_window_pattern`-th layer.
    Gemma3,
    /// Qwen2, Qwen3 and Qwen3-MoE: only with `use_sliding_window`, for layers from
    /// `max_window_layers` on.
    Qwen2,
}

/// The window rule of the config class `config` names (its `architectures`, then `model_type`).
fn window_rule(config: &Value) -> WindowRule {
    let classes = config.get("architectures").and_then(Value::as_array);
    let names = classes
        .into_iter()
        .flatten()
        .chain(config.get("model_type"))
        .filter_map(Value::as_str);
    for name in names {
        match name {
            "MistralForCausalLM" | "mistral" | "Phi3ForCausalLM" | "phi3" | "MixtralForCausalLM"
            | "mixtral" => return WindowRule::WhenSet,
            "Gemma2ForCausalLM" | "gemma2" => return WindowRule::Gemma2,
            "Gemma3ForCausalLM" | "gemma3_text" => return WindowRule::Gemma3,
            "Qwen2ForCausalLM"
            | "qwen2"
            | "Qwen3ForCausalLM"
            | "qwen3"
            | "Qwen3MoeForCausalLM"
            | "qwen3_moe" => return WindowRule::Qwen2,
            "LlamaForCausalLM" | "llama" => return WindowRule::Never,
            _ => {}
        }
    }
    WindowRule::Never
}

/// The attention window and which layers use it, as transformers reads them (see
/// [`WindowRule`]); an explicit `layer_types` list decides the layers for either.
fn sliding_window(config: &Value, f: &HfFields<'_>) -> Result<(Option<usize>, Vec<bool>), ConfigError> {
    let rule = window_rule(config);
    let use_window = match rule {
        WindowRule::Never => false,
        WindowRule::WhenSet | WindowRule::Gemma2 | WindowRule::Gemma3 => true,
        WindowRule::Qwen2 => config.get("use_sliding_window").and_then(Value::as_bool) == Some(true),
    };
    let Some(window) = f.opt_usize("sliding_window")?.filter(|_| use_window) else {
        return Ok((None, Vec::new()));
    };
    let num_layers = f.usize("num_hidden_layers")?;
    let sliding_layers: Vec<bool> = match config.get("layer_types").and_then(Value::as_array) {
        Some(types) => types
            .iter()
            .map(|t| t.as_str() == Some("sliding_attention"))
            .collect(),
        None if rule == WindowRule::Qwen2 => {
            let first = f.opt_usize("max_window_layers")?.unwrap_or(28);
            (0..num_layers).map(|i| i >= first).collect()
        }
        None if rule == WindowRule::Gemma2 => (0..num_layers).map(|i| i % 2 == 0).collect(),
        None if rule == WindowRule::Gemma3 => {
            let pattern = f.opt_usize("sliding_window_pattern")?.unwrap_or(6).max(1);
            (0..num_layers).map(|i| (i + 1) % pattern != 0).collect()
        }
        None => vec![true; num_layers],
    };
    if sliding_layers.len() != num_layers {
        return Err(ConfigError::Invalid {
            source_name: f.source_name.to_string(),
            detail: format!(
                "layer_types has {} entries for {num_layers} layers",
                sliding_layers.len()
            ),
        });
    }
    if !sliding_layers.contains(&true) {
        return Ok((None, Vec::new()));
    }
    if window == 0 {
        return Err(ConfigError::Invalid {
            source_name: f.source_name.to_string(),
            detail: "sliding_window must be at least 1".into(),
        });
    }
    Ok((Some(window), sliding_layers))
}

/// The RoPE scaling of `value` (`rope_scaling`, or transformers 5's `rope_parameters`);
/// `config` gives the top-level fields some scalings fall back to.
fn hf_rope_scaling(
    config: &Value,
    value: Option<&Value>,
    source_name: &str,
) -> Result<RopeScaling, ConfigError> {
    let top = HfFields {
        json: config,
        source_name,
    };
    let invalid = |detail: String| ConfigError::Invalid {
        source_name: source_name.to_string(),
        detail,
    };
    let partial = match value.and_then(|v| v.get("partial_rotary_factor")) {
        Some(v) if !v.is_null() => v.as_f64(),
        _ => top.opt_f64("partial_rotary_factor")?,
    };
    if let Some(partial) = partial.filter(|&p| p != 1.0) {
        return Err(invalid(format!(
            "partial_rotary_factor {partial} is not supported (every head dimension is rotated)"
        )));
    }
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
    // transformers prefers a top-level original context (Phi-3 writes it there), then the
    // scaling's own, then max_position_embeddings.
    let original = || -> Result<usize, ConfigError> {
        match top.opt_usize("original_max_position_embeddings")? {
            Some(n) => Ok(n),
            None => match f.opt_usize("rope_scaling.original_max_position_embeddings")? {
                Some(n) => Ok(n),
                None => top.usize("max_position_embeddings"),
            },
        }
    };
    // The context the scaling stretches to: `factor`, else max_position_embeddings / original.
    let factor = |original: usize| -> Result<f64, ConfigError> {
        match f.opt_f64("rope_scaling.factor")? {
            Some(factor) => Ok(factor),
            None => Ok(top.usize("max_position_embeddings")? as f64 / original.max(1) as f64),
        }
    };
    let factors = |field: &str| -> Result<Vec<f32>, ConfigError> {
        obj.get(field)
            .and_then(Value::as_array)
            .and_then(|items| items.iter().map(|v| v.as_f64().map(|x| x as f32)).collect())
            .ok_or_else(|| f.missing(&format!("rope_scaling.{field}")))
    };
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
        "yarn" => {
            let original = original()?;
            let factor = factor(original)?;
            let mscale = (
                f.opt_f64("rope_scaling.mscale")?,
                f.opt_f64("rope_scaling.mscale_all_dim")?,
            );
            let attention_factor = match (f.opt_f64("rope_scaling.attention_factor")?, mscale) {
                (Some(explicit), _) => explicit,
                (None, (Some(m), Some(all))) if m != 0.0 && all != 0.0 => {
                    (0.1 * m * factor.ln() + 1.0) / (0.1 * all * factor.ln() + 1.0)
                }
                (None, _) => yarn_mscale(factor),
            };
            Ok(RopeScaling::Yarn {
                factor: factor as f32,
                original_max_position_embeddings: original,
                beta_fast: f.opt_f64("rope_scaling.beta_fast")?.unwrap_or(32.0) as f32,
                beta_slow: f.opt_f64("rope_scaling.beta_slow")?.unwrap_or(1.0) as f32,
                truncate: obj.get("truncate").and_then(Value::as_bool).unwrap_or(true),
                attention_factor: attention_factor as f32,
            })
        }
        "longrope" | "su" => {
            let original = original()?;
            let attention_factor = match f.opt_f64("rope_scaling.attention_factor")? {
                Some(explicit) => explicit,
                None => long_rope_mscale(factor(original)?, original),
            };
            Ok(RopeScaling::LongRope {
                short_factor: factors("short_factor")?,
                long_factor: factors("long_factor")?,
                original_max_position_embeddings: original,
                attention_factor: attention_factor as f32,
            })
        }
        "dynamic" => Err(invalid(
            "rope_scaling type \"dynamic\" is not supported: transformers recomputes its frequencies \
             from each forward pass's length, which cached keys cannot follow"
                .into(),
        )),
        other => Err(invalid(format!(
            "rope_scaling type {other:?} is not supported (supported: linear, llama3, yarn, longrope)"
        ))),
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
