//! LoRA on a backend: an adapter's factors as backend matrices ([`LoraWeights`]), one step's
//! rows grouped by adapter ([`LoraStep`]), and the projection every family uses,
//! [`Linear`]: `y = x W^T (+ bias)`, then `y += s * B (A x)` for each adapter's rows. The
//! projections that read the same activations (q/k/v; gate/up) share one shrink by a stacked
//! `lora_A`; each step runs one shrink per input and one expand per projection for all its
//! adapters together (never per token, never per adapter).

use ember_core::{Backend, BackendResult, LoraSegment, WeightDType, WeightView};

use crate::models::lora_adapter::{LoraAdapter, LoraModule, NUM_LORA_MODULES};

/// The activations a shrink reads: the projections of one input share it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoraInput {
    /// The normed hidden state, read by q, k and v.
    Qkv,
    /// The attention context, read by o.
    O,
    /// The normed hidden state, read by gate and up.
    GateUp,
    /// The activated MLP state, read by down.
    Down,
}

/// Number of [`LoraInput`] kinds.
const NUM_LORA_INPUTS: usize = 4;

impl LoraInput {
    /// The input projection `module` reads.
    fn of(module: LoraModule) -> Self {
        match module {
            LoraModule::Q | LoraModule::K | LoraModule::V => Self::Qkv,
            LoraModule::O => Self::O,
            LoraModule::Gate | LoraModule::Up => Self::GateUp,
            LoraModule::Down => Self::Down,
        }
    }
}

/// One layer's factors on the backend.
struct LayerFactors<B: Backend> {
    /// Per input: the `lora_A` of its projections stacked in [`LoraModule`] order,
    /// `[sum of their ranks, num_inputs]`.
    shrinks: [Option<B::Matrix>; NUM_LORA_INPUTS],
    /// Per projection: `lora_B` (`[num_outputs, rank]`, a Q8_0 one as its transpose) and the
    /// first column of its rank in its input's shrink.
    expands: [Option<(B::Matrix, usize)>; NUM_LORA_MODULES],
}

/// An adapter loaded onto a backend: per layer, its stacked shrinks and its expands.
pub struct LoraWeights<B: Backend> {
    layers: Vec<LayerFactors<B>>,
    scale: f32,
}

impl<B: Backend> LoraWeights<B> {
    /// Copies `adapter`'s factors onto `backend` for a model of `num_layers` layers: all f32
    /// when `factor_dtype` is F32 (the exact path); else in Q8_0 (f16 where the quantized
    /// dimension is not a whole number of 32-element blocks): `lora_A` so the shrink runs
    /// through the backend's 8-bit activation kernels, `lora_B` as its transpose (see
    /// [`expand_factor`]).
    pub fn load(
        backend: &B,
        adapter: &LoraAdapter,
        num_layers: usize,
        factor_dtype: WeightDType,
    ) -> BackendResult<Self> {
        let mut layers = Vec::with_capacity(num_layers);
        for layer in 0..num_layers {
            let mut factors = LayerFactors {
                shrinks: std::array::from_fn(|_| None),
                expands: std::array::from_fn(|_| None),
            };
            let mut stacked_a: [(Vec<f32>, usize, usize); NUM_LORA_INPUTS] = Default::default();
            let mut in_order: Vec<_> = adapter.matrices.iter().filter(|m| m.layer == layer).collect();
            in_order.sort_by_key(|m| m.module as usize);
            for m in in_order {
                let f = &m.factors;
                let (a, num_rows, num_inputs) = &mut stacked_a[LoraInput::of(m.module) as usize];
                let b = expand_factor(backend, &f.b, f.num_outputs, f.rank, factor_dtype)?;
                factors.expands[m.module as usize] = Some((b, *num_rows));
                a.extend_from_slice(&f.a);
                *num_rows += f.rank;
                *num_inputs = f.num_inputs;
            }
            for (slot, (a, num_rows, num_inputs)) in factors.shrinks.iter_mut().zip(&stacked_a) {
                if *num_rows > 0 {
                    let shape = [*num_rows, *num_inputs];
                    let a_dtype = match factor_dtype {
                        WeightDType::F32 => WeightDType::F32,
                        _ if num_inputs.is_multiple_of(Q8_0_BLOCK_LEN) => WeightDType::Q8_0,
                        _ => WeightDType::F16,
                    };
                    *slot = Some(factor_matrix(backend, "lora_A", a, shape, a_dtype)?);
                }
            }
            layers.push(factors);
        }
        Ok(Self {
            layers,
            scale: adapter.scale,
        })
    }
}

/// Elements per Q8_0 block.
const Q8_0_BLOCK_LEN: usize = WeightDType::Q8_0.block_len();

/// `lora_B` (`b`, `[num_outputs, rank]`) on the backend for `lora_expand`: in `factor_dtype`,
/// except off the exact path (`factor_dtype` not F32) where `num_outputs` is whole 32-element
/// blocks: then Q8_0 of its transpose `[rank, num_outputs]` (blocks along the outputs), half
/// the bytes of f16.
fn expand_factor<B: Backend>(
    backend: &B,
    b: &[f32],
    num_outputs: usize,
    rank: usize,
    factor_dtype: WeightDType,
) -> BackendResult<B::Matrix> {
    if factor_dtype == WeightDType::F32 || !num_outputs.is_multiple_of(Q8_0_BLOCK_LEN) {
        return factor_matrix(backend, "lora_B", b, [num_outputs, rank], factor_dtype);
    }
    let mut b_t = vec![0.0f32; b.len()];
    for (i, &v) in b.iter().enumerate() {
        b_t[(i % rank) * num_outputs + i / rank] = v;
    }
    factor_matrix(backend, "lora_B", &b_t, [rank, num_outputs], WeightDType::Q8_0)
}

/// `values` (`shape`, row-major) as a backend matrix of `dtype` (F16 rounds to nearest, Q8_0
/// by ember-cpu's block encoder; any other stores F32). Q8_0 needs `shape[1]` to be a
/// multiple of 32.
fn factor_matrix<B: Backend>(
    backend: &B,
    name: &str,
    values: &[f32],
    shape: [usize; 2],
    dtype: WeightDType,
) -> BackendResult<B::Matrix> {
    let (dtype, bytes): (_, Vec<u8>) = match dtype {
        WeightDType::F16 => (
            dtype,
            values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
        ),
        WeightDType::Q8_0 => {
            let block_bytes = WeightDType::Q8_0.block_bytes();
            let mut bytes = vec![0u8; values.len() / Q8_0_BLOCK_LEN * block_bytes];
            for (block, out) in values
                .chunks_exact(Q8_0_BLOCK_LEN)
                .zip(bytes.chunks_exact_mut(block_bytes))
            {
                ember_cpu::quant::encode_q8_0_block(block, out);
            }
            (dtype, bytes)
        }
        _ => (
            WeightDType::F32,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
    };
    backend.load_matrix(&WeightView {
        name,
        dtype,
        shape: &shape,
        bytes: &bytes,
    })
}

/// The rows of one step that run with one adapter.
struct LoraGroup<'a, B: Backend> {
    weights: &'a LoraWeights<B>,
    /// Token rows, ascending.
    row_ids: Vec<u32>,
}

/// One step's adapters: which token rows run with which adapter (rows of the base model are
/// in no group).
pub struct LoraStep<'a, B: Backend> {
    groups: Vec<LoraGroup<'a, B>>,
}

impl<'a, B: Backend> LoraStep<'a, B> {
    /// A step with no adapter.
    pub fn none() -> Self {
        Self { groups: Vec::new() }
    }

    /// A step whose `row_ids` run with `weights`, per group (groups share no row).
    pub fn new(groups: Vec<(&'a LoraWeights<B>, Vec<u32>)>) -> Self {
        let groups = groups
            .into_iter()
            .filter(|(_, row_ids)| !row_ids.is_empty())
            .map(|(weights, row_ids)| LoraGroup { weights, row_ids })
            .collect();
        Self { groups }
    }

    /// The same step seen from decoder layer `layer`.
    pub fn layer(&self, layer: usize) -> LayerLora<'_, 'a, B> {
        LayerLora { step: self, layer }
    }
}

/// A step's adapters at one decoder layer (what a [`Linear`] applies).
pub struct LayerLora<'s, 'a, B: Backend> {
    step: &'s LoraStep<'a, B>,
    layer: usize,
}

impl<B: Backend> Clone for LayerLora<'_, '_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend> Copy for LayerLora<'_, '_, B> {}

impl<'s, 'a, B: Backend> LayerLora<'s, 'a, B> {
    /// Each group's factors in this layer, where its adapter has them.
    fn factors(self) -> impl Iterator<Item = (&'s LoraGroup<'a, B>, &'a LayerFactors<B>)> {
        let layer = self.layer;
        self.step
            .groups
            .iter()
            .filter_map(move |g| g.weights.layers.get(layer).map(|f| (g, f)))
    }

    /// `A x` of every adapter of the step that changes a projection reading `input` (`x`, the
    /// step's `[tokens, in]`), for the projections' [`Linear::forward`]; `None` when no adapter
    /// of the step changes them.
    pub fn shrink(
        self,
        backend: &B,
        step: &B::Step,
        input: LoraInput,
        x: &B::Tensor,
    ) -> BackendResult<Option<LoraShrunk<'s, 'a, B>>> {
        let segments: Vec<_> = self
            .factors()
            .filter_map(|(g, f)| {
                f.shrinks[input as usize].as_ref().map(|a| LoraSegment {
                    row_ids: &g.row_ids,
                    matrix: a,
                    col_offset: 0,
                    scale: 1.0,
                })
            })
            .collect();
        if segments.is_empty() {
            return Ok(None);
        }
        let shrunk = backend.lora_shrink(step, x, &segments)?;
        Ok(Some(LoraShrunk { lora: self, shrunk }))
    }
}

/// One input's shrink for a step's adapters at one layer (see [`LayerLora::shrink`]).
pub struct LoraShrunk<'s, 'a, B: Backend> {
    lora: LayerLora<'s, 'a, B>,
    /// `[tokens, widest stacked rank]`.
    shrunk: B::Tensor,
}

impl<B: Backend> LoraShrunk<'_, '_, B> {
    /// `y[rows] += s * B (A x[rows])` of `module` for each adapter that changes it.
    fn expand(
        &self,
        backend: &B,
        step: &B::Step,
        module: LoraModule,
        y: &mut B::Tensor,
    ) -> BackendResult<()> {
        let segments: Vec<_> = self
            .lora
            .factors()
            .filter_map(|(g, f)| {
                f.expands[module as usize]
                    .as_ref()
                    .map(|(b, col_offset)| LoraSegment {
                        row_ids: &g.row_ids,
                        matrix: b,
                        col_offset: *col_offset,
                        scale: g.weights.scale,
                    })
            })
            .collect();
        if segments.is_empty() {
            return Ok(());
        }
        backend.lora_expand(step, &self.shrunk, &segments, y)
    }
}

/// A projection of a decoder layer: its weight, optional bias, and which adapter projection
/// it is.
pub struct Linear<B: Backend> {
    weight: B::Matrix,
    bias: Option<B::Vector>,
    module: LoraModule,
}

impl<B: Backend> Linear<B> {
    /// The projection `x W^T (+ bias)` of `weight` (`[out, in]`), adapted as projection `module`.
    pub fn new(weight: B::Matrix, bias: Option<B::Vector>, module: LoraModule) -> Self {
        Self { weight, bias, module }
    }

    /// `x W^T (+ bias)` plus the step's adapters' `s * B (A x)` on their rows, from `lora`, the
    /// shrink of `x` for this projection's input.
    pub fn forward(
        &self,
        backend: &B,
        step: &B::Step,
        x: &B::Tensor,
        lora: Option<&LoraShrunk<'_, '_, B>>,
    ) -> BackendResult<B::Tensor> {
        let mut y = backend.matmul(step, x, &self.weight, self.bias.as_ref())?;
        if let Some(lora) = lora {
            lora.expand(backend, step, self.module, &mut y)?;
        }
        Ok(y)
    }
}
