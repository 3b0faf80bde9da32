//! The Llama family (Llama 2/3, Mistral, Qwen2/2.5 with qkv bias, SmolLM), written once over
//! [`Backend`].

use ember_core::{
    AttentionParams, AttentionShape, Backend, BackendResult, LayerKv, ModelShape, Rope, WeightDType,
    WeightView,
};

use crate::error::ModelLoadError;
use crate::formats::config::ModelConfig;
use crate::formats::weights::WeightSource;

/// Weights of one decoder layer.
struct LlamaLayer<B: Backend> {
    input_norm: B::Vector,
    q_proj: B::Matrix,
    k_proj: B::Matrix,
    v_proj: B::Matrix,
    q_bias: Option<B::Vector>,
    k_bias: Option<B::Vector>,
    v_bias: Option<B::Vector>,
    o_proj: B::Matrix,
    o_bias: Option<B::Vector>,
    post_attention_norm: B::Vector,
    gate_proj: B::Matrix,
    up_proj: B::Matrix,
    down_proj: B::Matrix,
}

/// A loaded Llama-family decoder.
pub struct LlamaModel<B: Backend> {
    embed_tokens: B::Matrix,
    layers: Vec<LlamaLayer<B>>,
    norm: B::Vector,
    /// `None` when the output projection is tied to `embed_tokens`.
    lm_head: Option<B::Matrix>,
    attention: AttentionParams,
    rope: Rope<B::Vector>,
    rms_norm_eps: f32,
    shape: ModelShape,
}

fn load_optional_vector<B: Backend>(
    backend: &B,
    weights: &WeightSource,
    name: &str,
) -> Result<Option<B::Vector>, ModelLoadError> {
    if !weights.contains(name) {
        return Ok(None);
    }
    Ok(Some(backend.load_vector(&weights.get(name)?)?))
}

fn shape_error(name: &str, expected: &[usize], found: &[usize]) -> ModelLoadError {
    ModelLoadError::BadTensor {
        tensor: name.to_string(),
        detail: format!("shape {found:?} does not match the config's {expected:?}"),
    }
}

impl<B: Backend> LlamaModel<B> {
    /// Loads every weight of `config` from `weights` into `backend`, checking shapes.
    pub fn load(backend: &B, config: &ModelConfig, weights: &WeightSource) -> Result<Self, ModelLoadError> {
        let matrix = |name: &str, rows: usize, cols: usize| -> Result<B::Matrix, ModelLoadError> {
            let view = weights.get(name)?;
            if view.shape != [rows, cols] {
                return Err(shape_error(name, &[rows, cols], view.shape));
            }
            Ok(backend.load_matrix(&view)?)
        };
        let vector = |name: &str, len: usize| -> Result<B::Vector, ModelLoadError> {
            let view = weights.get(name)?;
            if view.shape != [len] {
                return Err(shape_error(name, &[len], view.shape));
            }
            Ok(backend.load_vector(&view)?)
        };
        let hidden = config.hidden_size;
        let q_dim = config.num_heads * config.head_dim;
        let kv_dim = config.num_kv_heads * config.head_dim;
        let mut layers = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let name = |suffix: &str| format!("layers.{i}.{suffix}");
            layers.push(LlamaLayer {
                input_norm: vector(&name("input_layernorm"), hidden)?,
                q_proj: matrix(&name("q_proj"), q_dim, hidden)?,
                k_proj: matrix(&name("k_proj"), kv_dim, hidden)?,
                v_proj: matrix(&name("v_proj"), kv_dim, hidden)?,
                q_bias: load_optional_vector(backend, weights, &name("q_proj.bias"))?,
                k_bias: load_optional_vector(backend, weights, &name("k_proj.bias"))?,
                v_bias: load_optional_vector(backend, weights, &name("v_proj.bias"))?,
                o_proj: matrix(&name("o_proj"), hidden, q_dim)?,
                o_bias: load_optional_vector(backend, weights, &name("o_proj.bias"))?,
                post_attention_norm: vector(&name("post_attention_layernorm"), hidden)?,
                gate_proj: matrix(&name("gate_proj"), config.intermediate_size, hidden)?,
                up_proj: matrix(&name("up_proj"), config.intermediate_size, hidden)?,
                down_proj: matrix(&name("down_proj"), hidden, config.intermediate_size)?,
            });
        }
        let lm_head = if config.tie_word_embeddings && !weights.contains("lm_head") {
            None
        } else {
            Some(matrix("lm_head", config.vocab_size, hidden)?)
        };
        let inv_freq = config.rope_inv_freq();
        let inv_freq_bytes: Vec<u8> = inv_freq.iter().flat_map(|f| f.to_le_bytes()).collect();
        let inv_freq = backend.load_vector(&WeightView {
            name: "rope inv_freq",
            dtype: WeightDType::F32,
            shape: &[inv_freq.len()],
            bytes: &inv_freq_bytes,
        })?;
        Ok(Self {
            embed_tokens: matrix("embed_tokens", config.vocab_size, hidden)?,
            layers,
            norm: vector("norm", hidden)?,
            lm_head,
            attention: AttentionParams::causal(AttentionShape {
                num_heads: config.num_heads,
                num_kv_heads: config.num_kv_heads,
                head_dim: config.head_dim,
            }),
            rope: Rope {
                style: config.rope_style,
                inv_freq,
            },
            rms_norm_eps: config.rms_norm_eps,
            shape: ModelShape {
                hidden_size: hidden,
                intermediate_size: config.intermediate_size,
                vocab_size: config.vocab_size,
                num_heads: config.num_heads,
                head_dim: config.head_dim,
                kv_layers: vec![
                    LayerKv {
                        num_kv_heads: config.num_kv_heads,
                        head_dim: config.head_dim,
                    };
                    config.num_layers
                ],
            },
        })
    }

    /// The sizes the backend plans memory for.
    pub fn shape(&self) -> &ModelShape {
        &self.shape
    }

    /// Runs the step's tokens through the model, writing their K/V into `kv_cache`, and
    /// returns the logits `[logits_indices.len(), vocab_size]`.
    pub fn forward(
        &self,
        backend: &B,
        step: &B::Step,
        kv_cache: &mut B::KvCache,
    ) -> BackendResult<B::Tensor> {
        let mut residual = backend.embed(step, &self.embed_tokens)?;
        let mut hidden = backend.rms_norm(step, &residual, &self.layers[0].input_norm, self.rms_norm_eps)?;
        for (index, layer) in self.layers.iter().enumerate() {
            let attn_out = self.attention(backend, step, kv_cache, index, layer, &hidden)?;
            hidden = backend.add_rms_norm(
                step,
                &mut residual,
                &attn_out,
                &layer.post_attention_norm,
                self.rms_norm_eps,
            )?;
            let gate = backend.matmul(step, &hidden, &layer.gate_proj, None)?;
            let up = backend.matmul(step, &hidden, &layer.up_proj, None)?;
            let mlp_out =
                backend.matmul(step, &backend.silu_mul(step, &gate, &up)?, &layer.down_proj, None)?;
            match self.layers.get(index + 1) {
                Some(next) => {
                    hidden = backend.add_rms_norm(
                        step,
                        &mut residual,
                        &mlp_out,
                        &next.input_norm,
                        self.rms_norm_eps,
                    )?;
                }
                None => backend.add_assign(&mut residual, &mlp_out)?,
            }
        }
        let last_rows = backend.logits_rows(step, &residual)?;
        let normed = backend.rms_norm(step, &last_rows, &self.norm, self.rms_norm_eps)?;
        backend.matmul(
            step,
            &normed,
            self.lm_head.as_ref().unwrap_or(&self.embed_tokens),
            None,
        )
    }

    fn attention(
        &self,
        backend: &B,
        step: &B::Step,
        kv_cache: &mut B::KvCache,
        index: usize,
        layer: &LlamaLayer<B>,
        hidden: &B::Tensor,
    ) -> BackendResult<B::Tensor> {
        let shape = self.attention.shape;
        let mut query = backend.matmul(step, hidden, &layer.q_proj, layer.q_bias.as_ref())?;
        let mut key = backend.matmul(step, hidden, &layer.k_proj, layer.k_bias.as_ref())?;
        let value = backend.matmul(step, hidden, &layer.v_proj, layer.v_bias.as_ref())?;
        backend.rope(step, &mut query, shape.num_heads, &self.rope)?;
        backend.rope(step, &mut key, shape.num_kv_heads, &self.rope)?;
        backend.write_kv(step, kv_cache, index, &key, &value)?;
        let context = backend.attention(step, &query, kv_cache, index, &self.attention)?;
        backend.matmul(step, &context, &layer.o_proj, layer.o_bias.as_ref())
    }
}
