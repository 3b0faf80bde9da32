//! The Llama family (Llama 2/3, Mistral with its sliding window, Qwen2/2.5 with qkv bias, Qwen3
//! with per-head q/k norms, SmolLM), written once over [`Backend`]: pre-norm decoder layers of
//! grouped-query attention with RoPE and a SiLU-gated MLP, optional q/k/v/o biases and q/k
//! norms (loaded when the file has them), per-layer sliding windows from the config, tied or
//! untied output, and mixture-of-experts MLPs where the config has experts (Mixtral,
//! Qwen3-MoE; `moe.rs`).

use ember_core::{AttentionParams, AttentionShape, Backend, BackendResult, ModelShape, Rope};

use crate::error::ModelLoadError;
use crate::formats::config::{refuse_activation, Activation, ModelConfig};
use crate::formats::weights::WeightNames;
use crate::models::blocks::{
    decoder_shape, llama_layer_names, names, require_ops, shape_error, AttentionBlock, GatedMlp, Loader,
    GLOBAL_NAMES,
};
use crate::models::decoder_tensors::DecoderTensors;
use crate::models::lora::LoraStep;
use crate::models::moe::MoeBlock;
use crate::models::{Model, ModelSource};

/// The family's tensors: `embed_tokens`, `norm`, `lm_head`, and per layer
/// `layers.{i}.X` (`.bias` for a bias) with X one of the `layer` names.
pub static LLAMA_WEIGHT_NAMES: WeightNames = WeightNames {
    global: GLOBAL_NAMES,
    layer: llama_layer_names![
        names("q_norm", "self_attn.q_norm", "attn_q_norm"),
        names("k_norm", "self_attn.k_norm", "attn_k_norm"),
        names("gate_proj", "mlp.gate_proj", "ffn_gate"),
        names("up_proj", "mlp.up_proj", "ffn_up"),
        names("down_proj", "mlp.down_proj", "ffn_down"),
    ],
};

/// A layer's feed-forward part: one MLP, or experts behind a router.
enum FeedForward<B: Backend> {
    Dense(GatedMlp<B>),
    Experts(MoeBlock<B>),
}

/// One decoder layer.
struct LlamaLayer<B: Backend> {
    input_norm: B::Vector,
    attention: AttentionBlock<B>,
    post_attention_norm: B::Vector,
    mlp: FeedForward<B>,
}

/// A loaded Llama-family decoder.
pub struct LlamaModel<B: Backend> {
    embed_tokens: B::Matrix,
    layers: Vec<LlamaLayer<B>>,
    norm: B::Vector,
    /// `None` when the output projection is tied to `embed_tokens`.
    lm_head: Option<B::Matrix>,
    rope: Rope<B::Vector>,
    rms_norm_eps: f32,
    shape: ModelShape,
}

/// Checks, before anything is allocated, that every tensor `config` implies is present with
/// the shape it implies (and every optional bias or norm, when present, too). A config value no
/// tensor confirms (a layer count larger than the file holds, a width that no matrix has) is
/// refused here, so loading never sizes anything from an unconfirmed number.
pub fn check_weight_shapes(config: &ModelConfig, weights: &dyn DecoderTensors) -> Result<(), ModelLoadError> {
    let check = |name: &str, expected: &[usize]| -> Result<(), ModelLoadError> {
        let tensor = weights.tensor(name)?;
        if tensor.shape != expected {
            return Err(shape_error(name, expected, &tensor.shape));
        }
        Ok(())
    };
    let hidden = config.hidden_size;
    let q_dim = config.num_heads * config.head_dim;
    let kv_dim = config.num_kv_heads * config.head_dim;
    let inter = config.intermediate_size;
    check("embed_tokens", &[config.vocab_size, hidden])?;
    check("norm", &[hidden])?;
    if !config.tie_word_embeddings || weights.contains("lm_head") {
        check("lm_head", &[config.vocab_size, hidden])?;
    }
    let attention: [(&str, &[usize]); 6] = [
        ("input_layernorm", &[hidden]),
        ("post_attention_layernorm", &[hidden]),
        ("q_proj", &[q_dim, hidden]),
        ("k_proj", &[kv_dim, hidden]),
        ("v_proj", &[kv_dim, hidden]),
        ("o_proj", &[hidden, q_dim]),
    ];
    let dense: [(&str, &[usize]); 3] = [
        ("gate_proj", &[inter, hidden]),
        ("up_proj", &[inter, hidden]),
        ("down_proj", &[hidden, inter]),
    ];
    // Stops at the first missing tensor, so a huge layer count costs one lookup per real layer
    // (experts are checked as they load, after the router confirmed their count).
    for layer in 0..config.num_layers {
        let mlp = match sparse_layer(config, layer) {
            true => &[][..],
            false => &dense[..],
        };
        for (suffix, shape) in attention.iter().chain(mlp) {
            check(&format!("layers.{layer}.{suffix}"), shape)?;
        }
    }
    Ok(())
}

/// Whether layer `layer` routes to experts.
fn sparse_layer(config: &ModelConfig, layer: usize) -> bool {
    config
        .moe
        .as_ref()
        .is_some_and(|moe| moe.sparse_layers.get(layer).copied().unwrap_or(false))
}

impl<B: Backend> Model<B> for LlamaModel<B> {
    fn load(backend: &B, source: &ModelSource<'_>) -> Result<Self, ModelLoadError> {
        Self::load_from(backend, source, source.weights)
    }

    fn shape(&self) -> &ModelShape {
        &self.shape
    }

    fn forward(
        &self,
        backend: &B,
        step: &B::Step,
        kv_cache: &mut B::KvCache,
        lora: &LoraStep<'_, B>,
    ) -> BackendResult<B::Tensor> {
        let eps = self.rms_norm_eps;
        let mut residual = backend.embed(step, &self.embed_tokens)?;
        let mut hidden = backend.rms_norm(step, &residual, &self.layers[0].input_norm, eps)?;
        for (index, layer) in self.layers.iter().enumerate() {
            let attn_out = layer
                .attention
                .forward(backend, step, kv_cache, index, &hidden, &self.rope, eps, lora)?;
            hidden = backend.add_rms_norm(step, &mut residual, &attn_out, &layer.post_attention_norm, eps)?;
            let mlp_out = match &layer.mlp {
                FeedForward::Dense(mlp) => mlp.forward(backend, step, &hidden, Some(lora.layer(index)))?,
                FeedForward::Experts(experts) => experts.forward(backend, step, &hidden)?,
            };
            match self.layers.get(index + 1) {
                Some(next) => {
                    hidden = backend.add_rms_norm(step, &mut residual, &mlp_out, &next.input_norm, eps)?;
                }
                None => backend.add_assign(&mut residual, &mlp_out)?,
            }
        }
        let last_rows = backend.logits_rows(step, &residual)?;
        let normed = backend.rms_norm(step, &last_rows, &self.norm, eps)?;
        backend.matmul(
            step,
            &normed,
            self.lm_head.as_ref().unwrap_or(&self.embed_tokens),
            None,
        )
    }
}

impl<B: Backend> LlamaModel<B> {
    /// Loads the decoder of `source`'s config from `weights` (its own tensors, or a family's
    /// fused ones cut into the canonical ones).
    pub fn load_from(
        backend: &B,
        source: &ModelSource<'_>,
        weights: &dyn DecoderTensors,
    ) -> Result<Self, ModelLoadError> {
        let config = source.config;
        refuse_activation(config, "Llama", Activation::Silu)?;
        if config.moe.is_some() {
            require_ops(
                backend,
                "mixture-of-experts",
                &["zeros", "gather_rows", "scatter_add_rows"],
            )?;
        }
        check_weight_shapes(config, weights)?;
        let loader = Loader {
            backend,
            weights,
            norm_offset: 0.0,
        };
        let hidden = config.hidden_size;
        let shape = AttentionShape {
            num_heads: config.num_heads,
            num_kv_heads: config.num_kv_heads,
            head_dim: config.head_dim,
        };
        let rope_tables = config.rope_tables(source.max_model_len);
        // YaRN and long-rope scale cos and sin, hence every q . k by the factor's square.
        let scale = AttentionParams::causal(shape).scale * rope_tables.attention_factor.powi(2);
        let windows: Vec<Option<usize>> = (0..config.num_layers).map(|i| config.layer_window(i)).collect();
        let mut layers = Vec::new();
        for (i, &sliding_window) in windows.iter().enumerate() {
            let params = AttentionParams {
                scale,
                sliding_window,
                ..AttentionParams::causal(shape)
            };
            layers.push(LlamaLayer {
                input_norm: loader.norm(&format!("layers.{i}.input_layernorm"), hidden)?,
                attention: AttentionBlock::load(&loader, i, config, params)?,
                post_attention_norm: loader.norm(&format!("layers.{i}.post_attention_layernorm"), hidden)?,
                mlp: match (&config.moe, sparse_layer(config, i)) {
                    (Some(moe), true) => FeedForward::Experts(MoeBlock::load(&loader, i, config, moe)?),
                    _ => FeedForward::Dense(GatedMlp::load(
                        &loader,
                        &format!("layers.{i}"),
                        config,
                        config.intermediate_size,
                        Activation::Silu,
                    )?),
                },
            });
        }
        let lm_head = if config.tie_word_embeddings && !weights.contains("lm_head") {
            None
        } else {
            Some(loader.matrix("lm_head", config.vocab_size, hidden)?)
        };
        Ok(Self {
            embed_tokens: loader.matrix("embed_tokens", config.vocab_size, hidden)?,
            layers,
            norm: loader.norm("norm", hidden)?,
            lm_head,
            rope: loader.rope(&rope_tables.inv_freq, source.rope_style)?,
            rms_norm_eps: config.rms_norm_eps,
            shape: decoder_shape(config, &windows),
        })
    }
}

#[cfg(test)]
mod tests {
    use ember_core::WeightDType;

    use super::*;
    use crate::formats::config::tests::{SMOLLM2_VAR, SMOLLM2_WHAT};
    use crate::formats::gguf::GgufFile;
    use crate::formats::weights::{NameScheme, TensorName, WeightSource};
    use crate::reference_env::reference_path;

    #[test]
    fn llama_names_round_trip() {
        for (canonical, hf, gguf) in [
            ("embed_tokens", "model.embed_tokens.weight", "token_embd.weight"),
            ("norm", "model.norm.weight", "output_norm.weight"),
            ("lm_head", "lm_head.weight", "output.weight"),
            (
                "layers.0.input_layernorm",
                "model.layers.0.input_layernorm.weight",
                "blk.0.attn_norm.weight",
            ),
            (
                "layers.7.post_attention_layernorm",
                "model.layers.7.post_attention_layernorm.weight",
                "blk.7.ffn_norm.weight",
            ),
            (
                "layers.3.q_proj",
                "model.layers.3.self_attn.q_proj.weight",
                "blk.3.attn_q.weight",
            ),
            (
                "layers.3.k_proj.bias",
                "model.layers.3.self_attn.k_proj.bias",
                "blk.3.attn_k.bias",
            ),
            (
                "layers.12.o_proj",
                "model.layers.12.self_attn.o_proj.weight",
                "blk.12.attn_output.weight",
            ),
            (
                "layers.1.gate_proj",
                "model.layers.1.mlp.gate_proj.weight",
                "blk.1.ffn_gate.weight",
            ),
            (
                "layers.1.up_proj",
                "model.layers.1.mlp.up_proj.weight",
                "blk.1.ffn_up.weight",
            ),
            (
                "layers.1.down_proj",
                "model.layers.1.mlp.down_proj.weight",
                "blk.1.ffn_down.weight",
            ),
        ] {
            let names = &LLAMA_WEIGHT_NAMES;
            let name = TensorName::parse(names, canonical).expect(canonical);
            assert_eq!(name.canonical(names), canonical);
            assert_eq!(name.stored_name(names, NameScheme::HuggingFace), hf);
            assert_eq!(name.stored_name(names, NameScheme::Gguf), gguf);
            assert_eq!(
                TensorName::from_stored(names, hf, NameScheme::HuggingFace),
                Some(name)
            );
            assert_eq!(TensorName::from_stored(names, gguf, NameScheme::Gguf), Some(name));
        }
    }

    #[test]
    fn smollm2_gguf_tensors() {
        let Some(path) = reference_path(SMOLLM2_VAR, SMOLLM2_WHAT) else {
            return;
        };
        let file = GgufFile::open(&path).expect("open");
        let source = WeightSource::from_gguf(file, &LLAMA_WEIGHT_NAMES);
        assert!(!source.contains("lm_head"));
        let embed = source.get("embed_tokens").expect("embed");
        assert_eq!(
            (embed.dtype, embed.shape),
            (WeightDType::Q8_0, &[49152usize, 576][..])
        );
        for i in 0..30 {
            for part in [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
                "input_layernorm",
            ] {
                let view = source.get(&format!("layers.{i}.{part}")).expect("layer tensor");
                assert_eq!(Some(view.bytes.len()), view.dtype.bytes_for(view.num_elements()));
            }
        }
        assert_eq!(source.get("layers.0.k_proj").expect("k").shape, &[192, 576]);
    }
}
