//! `speculative_config` as users write it (vLLM's JSON shape) into an
//! [`ember_core::SpeculativeConfig`], with errors that name the key and the limit.

use ember_core::SpeculativeConfig;
use serde_json::{Map, Value};

use crate::engine::engine_args::DraftModelArgs;

/// Keys every `speculative_config` accepts.
const COMMON_KEYS: [&str; 4] = [
    "method",
    "num_speculative_tokens",
    "max_num_seqs_to_speculate",
    "adaptive",
];
/// Keys of `method: "ngram"` only.
const NGRAM_KEYS: [&str; 2] = ["prompt_lookup_min", "prompt_lookup_max"];
/// Keys of `method: "draft_model"` only.
const DRAFT_KEYS: [&str; 2] = ["model", "dtype"];

/// A parsed `speculative_config`: the scheduler's part and, for a draft model, what to load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpeculativeArgs {
    /// Proposer, draft length and adaptivity.
    pub config: SpeculativeConfig,
    /// The draft model (`method: "draft_model"`).
    pub draft_model: Option<DraftModelArgs>,
}

/// Default longest n-gram suffix tried when `prompt_lookup_max` is not given.
const DEFAULT_PROMPT_LOOKUP_MAX: usize = 4;

/// Parses a JSON object such as `{"method": "ngram", "num_speculative_tokens": 4,
/// "prompt_lookup_min": 1, "prompt_lookup_max": 4}` or `{"method": "draft_model", "model":
/// PATH, "num_speculative_tokens": 4, "dtype": "auto"}`; every error starts with
/// `speculative_config` and names the key.
pub fn parse_speculative_config(json: &str) -> Result<SpeculativeArgs, String> {
    let value: Value =
        serde_json::from_str(json).map_err(|e| format!("speculative_config is not valid JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err("speculative_config must be a JSON object".into());
    };
    let method_keys: &[&str] = match map.get("method").and_then(Value::as_str) {
        Some("ngram") => &NGRAM_KEYS,
        Some("draft_model") => &DRAFT_KEYS,
        Some(other) => {
            return Err(format!(
                "speculative_config.method must be \"ngram\" or \"draft_model\", got {other:?}"
            ))
        }
        None => return Err("speculative_config.method is required (\"ngram\" or \"draft_model\")".into()),
    };
    let is_known = |k: &str| COMMON_KEYS.contains(&k) || method_keys.contains(&k);
    if let Some(key) = map.keys().find(|k| !is_known(k)) {
        let accepted: Vec<&str> = COMMON_KEYS.iter().chain(method_keys).copied().collect();
        return Err(format!(
            "speculative_config has an unknown key {key:?} for this method; accepted keys: {}",
            accepted.join(", ")
        ));
    }
    let num_speculative_tokens = count(&map, "num_speculative_tokens")?
        .ok_or("speculative_config.num_speculative_tokens is required")?;
    let draft_model = if method_keys == DRAFT_KEYS {
        Some(draft_model_args(&map)?)
    } else {
        None
    };
    let mut config = match draft_model {
        Some(_) => SpeculativeConfig::draft_model(num_speculative_tokens),
        None => {
            let prompt_lookup_min = count(&map, "prompt_lookup_min")?.unwrap_or(1);
            let prompt_lookup_max =
                count(&map, "prompt_lookup_max")?.unwrap_or(prompt_lookup_min.max(DEFAULT_PROMPT_LOOKUP_MAX));
            SpeculativeConfig::ngram(num_speculative_tokens, prompt_lookup_min, prompt_lookup_max)
        }
    };
    if let Some(max_num_seqs) = count(&map, "max_num_seqs_to_speculate")? {
        config.max_num_seqs_to_speculate = max_num_seqs;
    }
    match map.get("adaptive") {
        None => {}
        Some(Value::Bool(adaptive)) => config.adaptive = *adaptive,
        Some(other) => {
            return Err(format!(
                "speculative_config.adaptive must be true or false, got {other}"
            ))
        }
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(SpeculativeArgs { config, draft_model })
}

/// `model` (required) and `dtype` ("auto" or "float32") of a draft-model config.
fn draft_model_args(map: &Map<String, Value>) -> Result<DraftModelArgs, String> {
    let model_path = match map.get("model") {
        Some(Value::String(path)) if !path.is_empty() => path.into(),
        None | Some(Value::Null) => {
            return Err("speculative_config.model is required for method \"draft_model\"".into())
        }
        Some(other) => {
            return Err(format!(
                "speculative_config.model must be a model path or name, got {other}"
            ))
        }
    };
    let dtype = match map.get("dtype") {
        None | Some(Value::Null) => "auto".to_string(),
        Some(Value::String(d)) if d == "auto" || d == "float32" => d.clone(),
        Some(other) => {
            return Err(format!(
                "speculative_config.dtype must be \"auto\" or \"float32\", got {other}"
            ))
        }
    };
    Ok(DraftModelArgs { model_path, dtype })
}

/// The non-negative integer under `key`, if present.
fn count(map: &Map<String, Value>, key: &str) -> Result<Option<usize>, String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .map(Some)
            .ok_or_else(|| format!("speculative_config.{key} must be a non-negative integer, got {value}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_core::SpeculativeMethod;

    #[test]
    fn ngram_config_parses_with_defaults() {
        let args = parse_speculative_config(r#"{"method": "ngram", "num_speculative_tokens": 3}"#).unwrap();
        assert_eq!(args.draft_model, None);
        let config = args.config;
        assert_eq!(config, SpeculativeConfig::ngram(3, 1, 4));
        assert_eq!(config.max_num_seqs_to_speculate, 1);
        let config = parse_speculative_config(
            r#"{"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_min": 2,
                "prompt_lookup_max": 6, "adaptive": false, "max_num_seqs_to_speculate": 8}"#,
        )
        .unwrap()
        .config;
        assert_eq!(
            config.method,
            SpeculativeMethod::Ngram {
                prompt_lookup_min: 2,
                prompt_lookup_max: 6
            }
        );
        assert_eq!((config.adaptive, config.max_num_seqs_to_speculate), (false, 8));
    }

    #[test]
    fn draft_model_config_parses() {
        let args = parse_speculative_config(
            r#"{"method": "draft_model", "model": "/m.gguf", "num_speculative_tokens": 4, "dtype": "float32"}"#,
        )
        .unwrap();
        assert_eq!(args.config, SpeculativeConfig::draft_model(4));
        assert_eq!(args.config.max_num_seqs_to_speculate, 2);
        let draft = args.draft_model.unwrap();
        assert_eq!(
            (draft.model_path.to_str(), draft.dtype.as_str()),
            (Some("/m.gguf"), "float32")
        );
        let args = parse_speculative_config(
            r#"{"method": "draft_model", "model": "x", "num_speculative_tokens": 2}"#,
        );
        assert_eq!(args.unwrap().draft_model.unwrap().dtype, "auto");
    }

    #[test]
    fn bad_configs_name_the_key() {
        for (json, needle) in [
            ("[1]", "must be a JSON object"),
            ("{", "not valid JSON"),
            (r#"{"num_speculative_tokens": 3}"#, "method is required"),
            (
                r#"{"method": "eagle", "num_speculative_tokens": 3}"#,
                "method must be",
            ),
            (
                r#"{"method": "draft_model", "model": "x"}"#,
                "num_speculative_tokens is required",
            ),
            (
                r#"{"method": "draft_model", "num_speculative_tokens": 2, "prompt_lookup_min": 1, "model": "x"}"#,
                "unknown key \"prompt_lookup_min\"",
            ),
            (
                r#"{"method": "draft_model", "num_speculative_tokens": 2, "model": "x", "dtype": "bfloat16"}"#,
                "dtype must be",
            ),
            (
                r#"{"method": "draft_model", "num_speculative_tokens": 2, "model": 3}"#,
                "model must be",
            ),
            (
                r#"{"method": "ngram", "num_speculative_tokens": 2, "k": 1}"#,
                "unknown key \"k\"",
            ),
            (
                r#"{"method": "draft_model", "num_speculative_tokens": 2}"#,
                "model is required",
            ),
            (r#"{"method": "ngram"}"#, "num_speculative_tokens is required"),
            (
                r#"{"method": "ngram", "num_speculative_tokens": -1}"#,
                "num_speculative_tokens must be a non-negative",
            ),
            (
                r#"{"method": "ngram", "num_speculative_tokens": 99}"#,
                "num_speculative_tokens must be in [1, 32], got 99",
            ),
            (
                r#"{"method": "ngram", "num_speculative_tokens": 2, "adaptive": 1}"#,
                "adaptive must be",
            ),
        ] {
            let err = parse_speculative_config(json).unwrap_err();
            assert!(
                err.contains(needle) && err.contains("speculative_config"),
                "{json}: {err}"
            );
        }
    }
}
