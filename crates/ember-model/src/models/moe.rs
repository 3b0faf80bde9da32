//! Mixture-of-experts MLPs (Mixtral, Qwen3-MoE) for the Llama decoder: a router picks each
//! token's top-k experts from the softmax of its logits (renormalized when the config says),
//! then every expert runs once on the rows routed to it (grouped by expert) and adds its
//! weighted output back, experts in ascending order as transformers adds them.

use ember_core::{Backend, BackendResult};

use crate::error::ModelLoadError;
use crate::formats::config::{Activation, ModelConfig, MoeConfig};
use crate::formats::weights::WeightNames;
use crate::models::blocks::{llama_layer_names, names, GatedMlp, Loader, GLOBAL_NAMES};

/// The Llama layer table plus an MoE block's tensors: the router and each expert's gate / up /
/// down projections under their Hugging Face names (`{e}` is the expert), GGUF's per-expert
/// names, and GGUF's stacked expert tensors (`expert_stack.*`, cut per expert by
/// `expert_stack.rs`; no Hugging Face name). Extra family rows come last.
macro_rules! moe_layer_names {
    (router: $router:literal, experts: [$gate:literal, $up:literal, $down:literal] $(, $extra:expr)* $(,)?) => {
        llama_layer_names![
            names("router", $router, "ffn_gate_inp"),
            names("experts.{e}.gate_proj", $gate, "ffn_gate_exps.{e}"),
            names("experts.{e}.up_proj", $up, "ffn_up_exps.{e}"),
            names("experts.{e}.down_proj", $down, "ffn_down_exps.{e}"),
            names("expert_stack.gate_proj", "", "ffn_gate_exps"),
            names("expert_stack.up_proj", "", "ffn_up_exps"),
            names("expert_stack.down_proj", "", "ffn_down_exps"),
            $($extra),*
        ]
    };
}

/// Mixtral's tensors: `block_sparse_moe.gate` routes to `experts.{e}.w1` (gate), `w3` (up)
/// and `w2` (down).
pub static MIXTRAL_WEIGHT_NAMES: WeightNames = WeightNames {
    global: GLOBAL_NAMES,
    layer: moe_layer_names!(
        router: "block_sparse_moe.gate",
        experts: [
            "block_sparse_moe.experts.{e}.w1",
            "block_sparse_moe.experts.{e}.w3",
            "block_sparse_moe.experts.{e}.w2"
        ],
    ),
};

/// Qwen3-MoE's tensors: `mlp.gate` routes to `mlp.experts.{e}.*_proj`; layers listed in
/// `mlp_only_layers` keep a dense `mlp.*_proj`; per-head q/k norms as Qwen3.
pub static QWEN3_MOE_WEIGHT_NAMES: WeightNames = WeightNames {
    global: GLOBAL_NAMES,
    layer: moe_layer_names!(
        router: "mlp.gate",
        experts: [
            "mlp.experts.{e}.gate_proj",
            "mlp.experts.{e}.up_proj",
            "mlp.experts.{e}.down_proj"
        ],
        names("q_norm", "self_attn.q_norm", "attn_q_norm"),
        names("k_norm", "self_attn.k_norm", "attn_k_norm"),
        names("gate_proj", "mlp.gate_proj", "ffn_gate"),
        names("up_proj", "mlp.up_proj", "ffn_up"),
        names("down_proj", "mlp.down_proj", "ffn_down"),
    ),
};

/// The experts a token is routed to, with their weights, in descending probability (ties:
/// the lower expert first): the top `k` of `softmax(logits)` in float32, divided by their sum
/// when `normalize`.
pub fn route(logits: &[f32], k: usize, normalize: bool) -> Vec<(usize, f32)> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let exps: Vec<f32> = logits.iter().map(|&v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    // Stable: equal probabilities keep ascending expert order.
    order.sort_by(|&a, &b| exps[b].total_cmp(&exps[a]));
    let mut chosen: Vec<(usize, f32)> = order.into_iter().take(k).map(|e| (e, exps[e] / sum)).collect();
    if normalize {
        let total: f32 = chosen.iter().map(|&(_, p)| p).sum();
        chosen.iter_mut().for_each(|(_, p)| *p /= total);
    }
    chosen
}

/// The router and experts of one layer.
pub struct MoeBlock<B: Backend> {
    /// `[num_experts, hidden]`.
    router: B::Matrix,
    experts: Vec<GatedMlp<B>>,
    num_experts_per_tok: usize,
    norm_topk_prob: bool,
    hidden_size: usize,
}

impl<B: Backend> MoeBlock<B> {
    /// Loads `layers.{layer}`'s router and experts.
    pub fn load(
        loader: &Loader<'_, B>,
        layer: usize,
        config: &ModelConfig,
        moe: &MoeConfig,
    ) -> Result<Self, ModelLoadError> {
        let router = loader.matrix(
            &format!("layers.{layer}.router"),
            moe.num_experts,
            config.hidden_size,
        )?;
        let experts = (0..moe.num_experts)
            .map(|e| {
                let prefix = format!("layers.{layer}.experts.{e}");
                GatedMlp::load(
                    loader,
                    &prefix,
                    config,
                    moe.expert_intermediate_size,
                    Activation::Silu,
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            router,
            experts,
            num_experts_per_tok: moe.num_experts_per_tok,
            norm_topk_prob: moe.norm_topk_prob,
            hidden_size: config.hidden_size,
        })
    }

    /// The experts' weighted outputs for `hidden` (`[tokens, hidden]`).
    pub fn forward(&self, backend: &B, step: &B::Step, hidden: &B::Tensor) -> BackendResult<B::Tensor> {
        let logits = backend.to_host(&backend.matmul(step, hidden, &self.router, None)?)?;
        let num_experts = self.experts.len();
        let num_tokens = logits.len() / num_experts.max(1);
        let mut routed: Vec<(Vec<u32>, Vec<f32>)> = vec![(Vec::new(), Vec::new()); num_experts];
        for (token, row) in logits.chunks_exact(num_experts).enumerate() {
            for (expert, weight) in route(row, self.num_experts_per_tok, self.norm_topk_prob) {
                routed[expert].0.push(token as u32);
                routed[expert].1.push(weight);
            }
        }
        let mut out = backend.zeros(step, num_tokens, self.hidden_size)?;
        for (expert, (row_ids, weights)) in self.experts.iter().zip(&routed) {
            if row_ids.is_empty() {
                continue;
            }
            let rows = backend.gather_rows(step, hidden, row_ids)?;
            let y = expert.forward(backend, step, &rows, None)?;
            backend.scatter_add_rows(&mut out, &y, row_ids, weights)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::weights::{NameScheme, TensorName};

    #[test]
    fn route_takes_the_top_k_of_the_softmax() {
        let logits = [0.5f32, 2.0, -1.0, 1.0];
        let exps: Vec<f64> = logits.iter().map(|&v| f64::from(v - 2.0).exp()).collect();
        let sum: f64 = exps.iter().sum();
        let chosen = route(&logits, 2, false);
        assert_eq!(chosen.iter().map(|c| c.0).collect::<Vec<_>>(), [1, 3]);
        assert!((f64::from(chosen[0].1) - exps[1] / sum).abs() < 1e-6);
        let normalized = route(&logits, 2, true);
        assert!((normalized[0].1 + normalized[1].1 - 1.0).abs() < 1e-6);
        assert!((f64::from(normalized[1].1) - exps[3] / (exps[1] + exps[3])).abs() < 1e-6);
    }

    #[test]
    fn ties_go_to_the_lower_expert() {
        let chosen = route(&[1.0, 3.0, 1.0, 3.0, 1.0], 3, true);
        assert_eq!(chosen.iter().map(|c| c.0).collect::<Vec<_>>(), [1, 3, 0]);
        assert_eq!(chosen[0].1, chosen[1].1);
    }

    #[test]
    fn expert_names_round_trip() {
        for (names, canonical, hf) in [
            (
                &MIXTRAL_WEIGHT_NAMES,
                "layers.2.experts.7.gate_proj",
                "model.layers.2.block_sparse_moe.experts.7.w1.weight",
            ),
            (
                &MIXTRAL_WEIGHT_NAMES,
                "layers.0.router",
                "model.layers.0.block_sparse_moe.gate.weight",
            ),
            (
                &QWEN3_MOE_WEIGHT_NAMES,
                "layers.11.experts.123.down_proj",
                "model.layers.11.mlp.experts.123.down_proj.weight",
            ),
            (
                &QWEN3_MOE_WEIGHT_NAMES,
                "layers.1.up_proj",
                "model.layers.1.mlp.up_proj.weight",
            ),
        ] {
            let name = TensorName::parse(names, canonical).expect(canonical);
            assert_eq!(name.stored_name(names, NameScheme::HuggingFace), hf);
            assert_eq!(
                TensorName::from_stored(names, hf, NameScheme::HuggingFace),
                Some(name)
            );
            assert_eq!(name.canonical(names), canonical);
        }
        let bad = "model.layers.0.mlp.experts.x1.gate_proj.weight";
        assert_eq!(
            TensorName::from_stored(&QWEN3_MOE_WEIGHT_NAMES, bad, NameScheme::HuggingFace),
            None
        );
    }
}
