//! Gemma 2 and Gemma 3 (text), written once over [`Backend`]: the embedding scaled by
//! `sqrt(hidden_size)`, `(1 + w)` RMSNorms, a norm after attention and around the GeGLU MLP
//! (`gelu_pytorch_tanh`), attention scaled by `query_pre_attn_scalar^-1/2`, interleaved
//! sliding-window and global layers, attention and final logit soft-capping (Gemma 2),
//! per-head q/k norms and a separate RoPE base for the sliding layers (Gemma 3).

use ember_core::{AttentionParams, AttentionShape, Backend, BackendResult, ModelShape, Rope};

use crate::error::ModelLoadError;
use crate::formats::config::{refuse_activation, Activation, RopeScaling};
use crate::formats::weights::WeightNames;
use crate::models::blocks::{
    decoder_shape, names, require_ops, AttentionBlock, GatedMlp, Loader, GLOBAL_NAMES,
};
use crate::models::lora::LoraStep;
use crate::models::{Model, ModelSource};

/// The family's tensors (llama.cpp's names for the GGUF side).
pub static GEMMA_WEIGHT_NAMES: WeightNames = WeightNames {
    global: GLOBAL_NAMES,
    layer: &[
        names("input_layernorm", "input_layernorm", "attn_norm"),
        names(
            "post_attention_layernorm",
            "post_attention_layernorm",
            "post_attention_norm",
        ),
        names(
            "pre_feedforward_layernorm",
            "pre_feedforward_layernorm",
            "ffn_norm",
        ),
        names(
            "post_feedforward_layernorm",
            "post_feedforward_layernorm",
            "post_ffw_norm",
        ),
        names("q_proj", "self_attn.q_proj", "attn_q"),
        names("k_proj", "self_attn.k_proj", "attn_k"),
        names("v_proj", "self_attn.v_proj", "attn_v"),
        names("o_proj", "self_attn.o_proj", "attn_output"),
        names("q_norm", "self_attn.q_norm", "attn_q_norm"),
        names("k_norm", "self_attn.k_norm", "attn_k_norm"),
        names("gate_proj", "mlp.gate_proj", "ffn_gate"),
        names("up_proj", "mlp.up_proj", "ffn_up"),
        names("down_proj", "mlp.down_proj", "ffn_down"),
    ],
};

/// One decoder layer.
struct GemmaLayer<B: Backend> {
    input_norm: B::Vector,
    attention: AttentionBlock<B>,
    post_attention_norm: B::Vector,
    pre_feedforward_norm: B::Vector,
    mlp: GatedMlp<B>,
    post_feedforward_norm: B::Vector,
    /// Rotated with the sliding layers' RoPE base (Gemma 3).
    local_rope: bool,
}

/// A loaded Gemma 2 or Gemma 3 text decoder.
pub struct GemmaModel<B: Backend> {
    embed_tokens: B::Matrix,
    /// `sqrt(hidden_size)` in float32, as transformers rounds it.
    embed_scale: f32,
    layers: Vec<GemmaLayer<B>>,
    norm: B::Vector,
    /// `None` when the output projection is tied to `embed_tokens` (Gemma's default).
    lm_head: Option<B::Matrix>,
    rope: Rope<B::Vector>,
    /// The sliding layers' RoPE (Gemma 3's `rope_local_base_freq`), when it differs.
    local_rope: Option<Rope<B::Vector>>,
    final_logit_softcapping: Option<f32>,
    rms_norm_eps: f32,
    shape: ModelShape,
}

impl<B: Backend> Model<B> for GemmaModel<B> {
    fn load(backend: &B, source: &ModelSource<'_>) -> Result<Self, ModelLoadError> {
        let config = source.config;
        refuse_activation(config, "Gemma", Activation::GeluTanh)?;
        require_ops(backend, "Gemma", &["gelu_tanh_mul", "scale", "soft_cap"])?;
        // llama.cpp's converter stores Gemma's norms as `1 + w` already.
        let norm_offset = if source.weights.gguf().is_some() { 0.0 } else { 1.0 };
        let loader = Loader {
            backend,
            weights: source.weights,
            norm_offset,
        };
        let (hidden, inter) = (config.hidden_size, config.intermediate_size);
        let shape = AttentionShape {
            num_heads: config.num_heads,
            num_kv_heads: config.num_kv_heads,
            head_dim: config.head_dim,
        };
        let rope_tables = config.rope_tables(source.max_model_len);
        let query_scale = config.query_pre_attn_scalar.unwrap_or(config.head_dim as f32);
        let scale = query_scale.powf(-0.5) * rope_tables.attention_factor.powi(2);
        let local_rope = match config.rope_local_theta {
            Some(theta) => {
                let local = crate::formats::config::ModelConfig {
                    rope_theta: theta,
                    rope_scaling: RopeScaling::None,
                    ..config.clone()
                };
                Some(loader.rope(
                    &local.rope_tables(source.max_model_len).inv_freq,
                    source.rope_style,
                )?)
            }
            None => None,
        };
        let windows: Vec<Option<usize>> = (0..config.num_layers).map(|i| config.layer_window(i)).collect();
        let mut layers = Vec::new();
        for (i, &sliding_window) in windows.iter().enumerate() {
            let params = AttentionParams {
                scale,
                sliding_window,
                logit_soft_cap: config.attn_logit_softcapping,
                ..AttentionParams::causal(shape)
            };
            let norm = |suffix: &str| loader.norm(&format!("layers.{i}.{suffix}"), hidden);
            layers.push(GemmaLayer {
                input_norm: norm("input_layernorm")?,
                attention: AttentionBlock::load(&loader, i, config, params)?,
                post_attention_norm: norm("post_attention_layernorm")?,
                pre_feedforward_norm: norm("pre_feedforward_layernorm")?,
                mlp: GatedMlp::load(
                    &loader,
                    &format!("layers.{i}"),
                    config,
                    inter,
                    Activation::GeluTanh,
                )?,
                post_feedforward_norm: norm("post_feedforward_layernorm")?,
                local_rope: sliding_window.is_some(),
            });
        }
        let lm_head = if config.tie_word_embeddings && !source.weights.contains("lm_head") {
            None
        } else {
            Some(loader.matrix("lm_head", config.vocab_size, hidden)?)
        };
        Ok(Self {
            embed_tokens: loader.matrix("embed_tokens", config.vocab_size, hidden)?,
            embed_scale: (hidden as f64).sqrt() as f32,
            layers,
            norm: loader.norm("norm", hidden)?,
            lm_head,
            rope: loader.rope(&rope_tables.inv_freq, source.rope_style)?,
            local_rope,
            final_logit_softcapping: config.final_logit_softcapping,
            rms_norm_eps: config.rms_norm_eps,
            shape: decoder_shape(config, &windows),
        })
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
        backend.scale(&mut residual, self.embed_scale)?;
        let mut hidden = backend.rms_norm(step, &residual, &self.layers[0].input_norm, eps)?;
        for (index, layer) in self.layers.iter().enumerate() {
            let rope = match (&self.local_rope, layer.local_rope) {
                (Some(local), true) => local,
                _ => &self.rope,
            };
            let attn_out = layer
                .attention
                .forward(backend, step, kv_cache, index, &hidden, rope, eps, lora)?;
            let attn_out = backend.rms_norm(step, &attn_out, &layer.post_attention_norm, eps)?;
            hidden =
                backend.add_rms_norm(step, &mut residual, &attn_out, &layer.pre_feedforward_norm, eps)?;
            let mlp_out = layer
                .mlp
                .forward(backend, step, &hidden, Some(lora.layer(index)))?;
            let mlp_out = backend.rms_norm(step, &mlp_out, &layer.post_feedforward_norm, eps)?;
            match self.layers.get(index + 1) {
                Some(next) => {
                    hidden = backend.add_rms_norm(step, &mut residual, &mlp_out, &next.input_norm, eps)?;
                }
                None => backend.add_assign(&mut residual, &mlp_out)?,
            }
        }
        let last_rows = backend.logits_rows(step, &residual)?;
        let normed = backend.rms_norm(step, &last_rows, &self.norm, eps)?;
        let lm_head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        let mut logits = backend.matmul(step, &normed, lm_head, None)?;
        if let Some(cap) = self.final_logit_softcapping {
            backend.soft_cap(&mut logits, cap)?;
        }
        Ok(logits)
    }
}
