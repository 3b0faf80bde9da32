//! Mixture-of-experts fields of a Hugging Face config, as Mixtral's and Qwen3-MoE's config
//! classes read them.

use serde_json::Value;

use super::ConfigError;

/// The experts of a mixture-of-experts model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoeConfig {
    /// Experts per MoE layer.
    pub num_experts: usize,
    /// Experts each token is routed to.
    pub num_experts_per_tok: usize,
    /// Renormalize the chosen experts' probabilities to sum to 1 (Mixtral always does;
    /// Qwen3-MoE with `norm_topk_prob`).
    pub norm_topk_prob: bool,
    /// Inner width of each expert's MLP.
    pub expert_intermediate_size: usize,
    /// Which layers route to experts (the others have a dense MLP of `intermediate_size`).
    pub sparse_layers: Vec<bool>,
}

/// The experts `config` declares (`num_local_experts` or `num_experts`; transformers 5 writes
/// the first for both): Mixtral's renormalize their top-k and size experts by
/// `intermediate_size`; Qwen3-MoE's renormalize with `norm_topk_prob` (default false) and size
/// them by `moe_intermediate_size`; sparse layers by `decoder_sparse_step` and
/// `mlp_only_layers`.
pub fn moe_config(
    config: &Value,
    num_layers: usize,
    source_name: &str,
) -> Result<Option<MoeConfig>, ConfigError> {
    let invalid = |detail: String| ConfigError::Invalid {
        source_name: source_name.to_string(),
        detail,
    };
    let count = |field: &str| -> Result<Option<usize>, ConfigError> {
        match config.get(field).filter(|v| !v.is_null()) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| invalid(format!("{field} must be a non-negative integer, got {v}"))),
        }
    };
    if config
        .get("shared_expert_intermediate_size")
        .is_some_and(|v| v.as_u64().unwrap_or(0) > 0)
    {
        return Err(invalid("shared experts (Qwen2-MoE) are not supported".into()));
    }
    let Some(num_experts) = count("num_local_experts")?.or(count("num_experts")?) else {
        return Ok(None);
    };
    let model_type = config.get("model_type").and_then(Value::as_str).unwrap_or("");
    let mixtral = model_type == "mixtral"
        || config
            .get("architectures")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|c| c.as_str() == Some("MixtralForCausalLM")));
    let (norm_default, inter_field) = match mixtral {
        true => (true, "intermediate_size"),
        false => (false, "moe_intermediate_size"),
    };
    if num_experts == 0 {
        return Ok(None);
    }
    let num_experts_per_tok = count("num_experts_per_tok")?.unwrap_or(2);
    if num_experts_per_tok == 0 || num_experts_per_tok > num_experts {
        return Err(invalid(format!(
            "num_experts_per_tok ({num_experts_per_tok}) must be between 1 and the {num_experts} experts"
        )));
    }
    let expert_intermediate_size =
        count(inter_field)?.ok_or_else(|| invalid(format!("{inter_field} is required with experts")))?;
    let step = count("decoder_sparse_step")?.unwrap_or(1).max(1);
    let dense: Vec<u64> = config
        .get("mlp_only_layers")
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let sparse_layers = (0..num_layers)
        .map(|i| !dense.contains(&(i as u64)) && (i + 1) % step == 0)
        .collect();
    Ok(Some(MoeConfig {
        num_experts,
        num_experts_per_tok,
        norm_topk_prob: config
            .get("norm_topk_prob")
            .and_then(Value::as_bool)
            .unwrap_or(norm_default),
        expert_intermediate_size,
        sparse_layers,
    }))
}
