//! The pieces decoder families share: loading canonical tensors with their shapes checked
//! ([`Loader`]), grouped-query attention over the paged cache with optional biases and
//! per-head q/k norms ([`AttentionBlock`]), the gated MLP ([`GatedMlp`]) and the rotary tables.

use ember_core::{
    AttentionParams, Backend, BackendResult, LayerKv, ModelShape, Rope, RopeStyle, WeightDType, WeightView,
};

use crate::error::ModelLoadError;
use crate::formats::config::{Activation, ModelConfig};
use crate::formats::weights::TensorNames;
use crate::models::decoder_tensors::DecoderTensors;
use crate::models::lora::{LayerLora, Linear, LoraInput, LoraStep};
use crate::models::lora_adapter::LoraModule;

/// A tensor's canonical, Hugging Face and GGUF (llama.cpp) names.
pub const fn names(canonical: &'static str, hf: &'static str, gguf: &'static str) -> TensorNames {
    TensorNames { canonical, hf, gguf }
}

/// The model-wide tensors of every decoder family here.
pub const GLOBAL_NAMES: &[TensorNames] = &[
    names("embed_tokens", "model.embed_tokens.weight", "token_embd.weight"),
    names("norm", "model.norm.weight", "output_norm.weight"),
    names("lm_head", "lm_head.weight", "output.weight"),
];

/// A layer-name table: the Llama layer's norms and attention projections, then `$extra`.
macro_rules! llama_layer_names {
    ($($extra:expr),* $(,)?) => {
        &[
            $crate::models::blocks::names("input_layernorm", "input_layernorm", "attn_norm"),
            $crate::models::blocks::names("post_attention_layernorm", "post_attention_layernorm", "ffn_norm"),
            $crate::models::blocks::names("q_proj", "self_attn.q_proj", "attn_q"),
            $crate::models::blocks::names("k_proj", "self_attn.k_proj", "attn_k"),
            $crate::models::blocks::names("v_proj", "self_attn.v_proj", "attn_v"),
            $crate::models::blocks::names("o_proj", "self_attn.o_proj", "attn_output"),
            $($extra),*
        ]
    };
}
pub(crate) use llama_layer_names;

/// The error of a tensor whose shape is not the config's.
pub fn shape_error(name: &str, expected: &[usize], found: &[usize]) -> ModelLoadError {
    ModelLoadError::BadTensor {
        tensor: name.to_string(),
        detail: format!("shape {found:?} does not match the config's {expected:?}"),
    }
}

/// Loads canonical tensors onto a backend, checking each one's shape.
pub struct Loader<'a, B: Backend> {
    /// The backend the weights go to.
    pub backend: &'a B,
    /// Where they come from.
    pub weights: &'a dyn DecoderTensors,
    /// Added to every RMSNorm weight at load: 1 for Gemma's `(1 + w)` norms stored as `w`.
    pub norm_offset: f32,
}

impl<B: Backend> Loader<'_, B> {
    /// The `[rows, cols]` matrix `name`.
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<B::Matrix, ModelLoadError> {
        let tensor = self.weights.tensor(name)?;
        if tensor.shape != [rows, cols] {
            return Err(shape_error(name, &[rows, cols], &tensor.shape));
        }
        Ok(self.backend.load_matrix(&tensor.view())?)
    }

    /// The `[len]` vector `name`, or `None` when the model has none.
    pub fn optional_vector(&self, name: &str, len: usize) -> Result<Option<B::Vector>, ModelLoadError> {
        if !self.weights.contains(name) {
            return Ok(None);
        }
        let tensor = self.weights.tensor(name)?;
        if tensor.shape != [len] {
            return Err(shape_error(name, &[len], &tensor.shape));
        }
        Ok(Some(self.backend.load_vector(&tensor.view())?))
    }

    /// The `[len]` RMSNorm weight `name` (plus `norm_offset`), or `None` when absent.
    pub fn optional_norm(&self, name: &str, len: usize) -> Result<Option<B::Vector>, ModelLoadError> {
        if self.norm_offset == 0.0 {
            return self.optional_vector(name, len);
        }
        if !self.weights.contains(name) {
            return Ok(None);
        }
        let tensor = self.weights.tensor(name)?;
        if tensor.shape != [len] {
            return Err(shape_error(name, &[len], &tensor.shape));
        }
        let mut values = vec![0.0f32; len];
        ember_cpu::blocks::dequantize_row(tensor.dtype, tensor.bytes, &mut values);
        values.iter_mut().for_each(|v| *v += self.norm_offset);
        Ok(Some(self.f32_vector(name, &values)?))
    }

    /// The `[len]` RMSNorm weight `name` (plus `norm_offset`).
    pub fn norm(&self, name: &str, len: usize) -> Result<B::Vector, ModelLoadError> {
        match self.optional_norm(name, len)? {
            Some(vector) => Ok(vector),
            None => Err(self
                .weights
                .tensor(name)
                .err()
                .unwrap_or_else(|| shape_error(name, &[len], &[]))),
        }
    }

    /// The `[rows, cols]` projection `name` (with `name.bias` when `with_bias` and present),
    /// adapted by LoRA as projection `module`.
    pub fn linear(
        &self,
        name: &str,
        (rows, cols): (usize, usize),
        module: LoraModule,
        with_bias: bool,
    ) -> Result<Linear<B>, ModelLoadError> {
        let bias = match with_bias {
            true => self.optional_vector(&format!("{name}.bias"), rows)?,
            false => None,
        };
        Ok(Linear::new(self.matrix(name, rows, cols)?, bias, module))
    }

    /// `values` as a backend vector named `name`.
    pub fn f32_vector(&self, name: &str, values: &[f32]) -> Result<B::Vector, ModelLoadError> {
        let bytes: Vec<u8> = values.iter().flat_map(|f| f.to_le_bytes()).collect();
        Ok(self.backend.load_vector(&WeightView {
            name,
            dtype: WeightDType::F32,
            shape: &[values.len()],
            bytes: &bytes,
        })?)
    }

    /// The rotary embedding of `inv_freq` in pair layout `style`.
    pub fn rope(&self, inv_freq: &[f32], style: RopeStyle) -> Result<Rope<B::Vector>, ModelLoadError> {
        Ok(Rope {
            style,
            inv_freq: self.f32_vector("rope inv_freq", inv_freq)?,
        })
    }
}

/// Grouped-query self-attention of one layer: q/k/v projections (optional biases), optional
/// per-head q/k RMS norms before RoPE, paged attention, the output projection.
pub struct AttentionBlock<B: Backend> {
    q_proj: Linear<B>,
    k_proj: Linear<B>,
    v_proj: Linear<B>,
    o_proj: Linear<B>,
    /// Per-head RMS norms of queries and keys before RoPE (Qwen3, Gemma 3), `[head_dim]`.
    q_norm: Option<B::Vector>,
    k_norm: Option<B::Vector>,
    /// This layer's attention options (scale, window, soft-cap).
    pub params: AttentionParams,
}

impl<B: Backend> AttentionBlock<B> {
    /// Loads `layers.{layer}`'s attention tensors; the backend must honour `params`.
    pub fn load(
        loader: &Loader<'_, B>,
        layer: usize,
        config: &ModelConfig,
        params: AttentionParams,
    ) -> Result<Self, ModelLoadError> {
        loader.backend.check_attention(&params)?;
        let name = |suffix: &str| format!("layers.{layer}.{suffix}");
        let hidden = config.hidden_size;
        let q_dim = config.num_heads * config.head_dim;
        let kv_dim = config.num_kv_heads * config.head_dim;
        Ok(Self {
            q_proj: loader.linear(&name("q_proj"), (q_dim, hidden), LoraModule::Q, true)?,
            k_proj: loader.linear(&name("k_proj"), (kv_dim, hidden), LoraModule::K, true)?,
            v_proj: loader.linear(&name("v_proj"), (kv_dim, hidden), LoraModule::V, true)?,
            o_proj: loader.linear(&name("o_proj"), (hidden, q_dim), LoraModule::O, true)?,
            q_norm: loader.optional_norm(&name("q_norm"), config.head_dim)?,
            k_norm: loader.optional_norm(&name("k_norm"), config.head_dim)?,
            params,
        })
    }

    /// Attention of the step's `hidden` rows (`[tokens, hidden]`) through layer `layer` of the
    /// cache, rotated by `rope`, with the step's adapters; returns `[tokens, hidden]`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        backend: &B,
        step: &B::Step,
        kv_cache: &mut B::KvCache,
        layer: usize,
        hidden: &B::Tensor,
        rope: &Rope<B::Vector>,
        eps: f32,
        lora: &LoraStep<'_, B>,
    ) -> BackendResult<B::Tensor> {
        let shape = self.params.shape;
        let lora = lora.layer(layer);
        let qkv = lora.shrink(backend, step, LoraInput::Qkv, hidden)?;
        let mut query = self.q_proj.forward(backend, step, hidden, qkv.as_ref())?;
        let mut key = self.k_proj.forward(backend, step, hidden, qkv.as_ref())?;
        let value = self.v_proj.forward(backend, step, hidden, qkv.as_ref())?;
        if let Some(norm) = &self.q_norm {
            query = backend.rms_norm(step, &query, norm, eps)?;
        }
        if let Some(norm) = &self.k_norm {
            key = backend.rms_norm(step, &key, norm, eps)?;
        }
        backend.rope(step, &mut query, shape.num_heads, rope)?;
        backend.rope(step, &mut key, shape.num_kv_heads, rope)?;
        backend.write_kv(step, kv_cache, layer, &key, &value)?;
        let context = backend.attention(step, &query, kv_cache, layer, &self.params)?;
        let o = lora.shrink(backend, step, LoraInput::O, &context)?;
        self.o_proj.forward(backend, step, &context, o.as_ref())
    }
}

/// The gated MLP: `down(act(gate(x)) * up(x))`.
pub struct GatedMlp<B: Backend> {
    gate_proj: Linear<B>,
    up_proj: Linear<B>,
    down_proj: Linear<B>,
    activation: Activation,
}

impl<B: Backend> GatedMlp<B> {
    /// Loads `prefix.{gate,up,down}_proj` for an MLP of `intermediate_size` with `activation`.
    pub fn load(
        loader: &Loader<'_, B>,
        prefix: &str,
        config: &ModelConfig,
        intermediate_size: usize,
        activation: Activation,
    ) -> Result<Self, ModelLoadError> {
        let (hidden, inter) = (config.hidden_size, intermediate_size);
        Ok(Self {
            gate_proj: loader.linear(
                &format!("{prefix}.gate_proj"),
                (inter, hidden),
                LoraModule::Gate,
                false,
            )?,
            up_proj: loader.linear(
                &format!("{prefix}.up_proj"),
                (inter, hidden),
                LoraModule::Up,
                false,
            )?,
            down_proj: loader.linear(
                &format!("{prefix}.down_proj"),
                (hidden, inter),
                LoraModule::Down,
                false,
            )?,
            activation,
        })
    }

    /// The MLP of `hidden` (`[tokens, hidden]`), with the step's adapters of its layer when
    /// `lora` is given (MoE experts take none).
    pub fn forward(
        &self,
        backend: &B,
        step: &B::Step,
        hidden: &B::Tensor,
        lora: Option<LayerLora<'_, '_, B>>,
    ) -> BackendResult<B::Tensor> {
        let shrink = |input, x| lora.map_or(Ok(None), |l| l.shrink(backend, step, input, x));
        let gate_up = shrink(LoraInput::GateUp, hidden)?;
        let gate = self.gate_proj.forward(backend, step, hidden, gate_up.as_ref())?;
        let up = self.up_proj.forward(backend, step, hidden, gate_up.as_ref())?;
        let act = match self.activation {
            Activation::Silu => backend.silu_mul(step, &gate, &up)?,
            Activation::GeluTanh => backend.gelu_tanh_mul(step, &gate, &up)?,
        };
        let down = shrink(LoraInput::Down, &act)?;
        self.down_proj.forward(backend, step, &act, down.as_ref())
    }
}

/// The ops the backend must implement for a model, refused at load otherwise.
pub fn require_ops<B: Backend>(backend: &B, family: &str, ops: &[&str]) -> Result<(), ModelLoadError> {
    match ops.iter().find(|op| backend.unsupported_ops().contains(op)) {
        Some(op) => Err(ModelLoadError::Backend(ember_core::BackendError::Unsupported(
            format!(
                "the {family} family needs {op}, which the {} backend does not implement yet",
                backend.name()
            ),
        ))),
        None => Ok(()),
    }
}

/// The shape of a decoder of `config` whose layer `i` attends within `windows[i]`.
pub fn decoder_shape(config: &ModelConfig, windows: &[Option<usize>]) -> ModelShape {
    ModelShape {
        hidden_size: config.hidden_size,
        intermediate_size: config.intermediate_size,
        vocab_size: config.vocab_size,
        num_heads: config.num_heads,
        head_dim: config.head_dim,
        kv_layers: windows
            .iter()
            .map(|&sliding_window| LayerKv {
                num_kv_heads: config.num_kv_heads,
                head_dim: config.head_dim,
                sliding_window,
            })
            .collect(),
    }
}
