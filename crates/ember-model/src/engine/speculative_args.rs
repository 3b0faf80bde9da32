//! `speculative_config` as users write it (vLLM's JSON shape) into an
//! [`ember_core::SpeculativeConfig`], with errors that name the key and the limit.

use ember_core::SpeculativeConfig;
use serde_json::{Map, Value};

/// Keys `speculative_config` accepts.
const KEYS: [&str; 6] = [
    "method",
    "num_speculative_tokens",
    "prompt_lookup_min",
    "prompt_lookup_max",
    "max_num_seqs_to_speculate",
    "adaptive",
];

/// Default longest n-gram suffix tried when `prompt_lookup_max` is not given.
const DEFAULT_PROMPT_LOOKUP_MAX: usize = 4;

/// Parses a JSON object such as `{"method": "ngram", "num_speculative_tokens": 4,
/// "prompt_lookup_min": 1, "prompt_lookup_max": 4}`; every error starts with
/// `speculative_config` and names the key.
pub fn parse_speculative_config(json: &str) -> Result<SpeculativeConfig, String> {
    let value: Value =
        serde_json::from_str(json).map_err(|e| format!("speculative_config is not valid JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err("speculative_config must be a JSON object".into());
    };
    match map.get("method").and_then(Value::as_str) {
        Some("ngram") => {}
        Some("draft_model") => {
            return Err(
                "speculative_config.method \"draft_model\" is not supported by this build of Ember; \
                 use \"ngram\""
                    .into(),
            )
        }
        Some(other) => {
            return Err(format!(
                "speculative_config.method must be \"ngram\", got {other:?}"
            ))
        }
        None => return Err("speculative_config.method is required (\"ngram\")".into()),
    }
    if let Some(key) = map.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(format!(
            "speculative_config has an unknown key {key:?}; accepted keys: {}",
            KEYS.join(", ")
        ));
    }
    let num_speculative_tokens = count(&map, "num_speculative_tokens")?
        .ok_or("speculative_config.num_speculative_tokens is required")?;
    let prompt_lookup_min = count(&map, "prompt_lookup_min")?.unwrap_or(1);
    let prompt_lookup_max =
        count(&map, "prompt_lookup_max")?.unwrap_or(prompt_lookup_min.max(DEFAULT_PROMPT_LOOKUP_MAX));
    let mut config = SpeculativeConfig::ngram(num_speculative_tokens, prompt_lookup_min, prompt_lookup_max);
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
    Ok(config)
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

    #[test]
    fn ngram_config_parses_with_defaults() {
        let config = parse_speculative_config(r#"{"method": "ngram", "num_speculative_tokens": 3}"#).unwrap();
        assert_eq!(config, SpeculativeConfig::ngram(3, 1, 4));
        assert_eq!(config.max_num_seqs_to_speculate, 2);
        let config = parse_speculative_config(
            r#"{"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_min": 2,
                "prompt_lookup_max": 6, "adaptive": false, "max_num_seqs_to_speculate": 8}"#,
        )
        .unwrap();
        assert_eq!((config.prompt_lookup_min, config.prompt_lookup_max), (2, 6));
        assert_eq!((config.adaptive, config.max_num_seqs_to_speculate), (false, 8));
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
            (r#"{"method": "draft_model", "model": "x"}"#, "not supported"),
            (
                r#"{"method": "ngram", "num_speculative_tokens": 2, "k": 1}"#,
                "unknown key \"k\"",
            ),
            (r#"{"method": "draft_model"}"#, "not supported"),
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
