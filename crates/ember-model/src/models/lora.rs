//! LoRA on a backend: an adapter's factors as backend matrices ([`LoraWeights`]), one step's
//! rows grouped by adapter ([`LoraStep`]), and the projection every family uses,
//! [`Linear`]: `y = x W^T (+ bias)`, then `y += s * B (A x)` for each adapter's rows, one
//! batched pair of matmuls per adapter and projection (never per token).

use ember_core::{Backend, BackendResult, WeightDType, WeightView};

use crate::models::lora_adapter::{LoraAdapter, LoraModule, NUM_LORA_MODULES};

/// One projection's factors on the backend.
struct LoraPair<B: Backend> {
    /// `[rank, num_inputs]`.
    a: B::Matrix,
    /// `[num_outputs, rank]`.
    b: B::Matrix,
}

/// An adapter loaded onto a backend: per layer, per projection, its factors.
pub struct LoraWeights<B: Backend> {
    layers: Vec<[Option<LoraPair<B>>; NUM_LORA_MODULES]>,
    scale: f32,
}

impl<B: Backend> LoraWeights<B> {
    /// Copies `adapter`'s factors (f32) onto `backend` for a model of `num_layers` layers.
    pub fn load(backend: &B, adapter: &LoraAdapter, num_layers: usize) -> BackendResult<Self> {
        let mut layers: Vec<[Option<LoraPair<B>>; NUM_LORA_MODULES]> =
            (0..num_layers).map(|_| std::array::from_fn(|_| None)).collect();
        for m in &adapter.matrices {
            let f = &m.factors;
            let a = f32_matrix(backend, "lora_A", &f.a, f.rank, f.num_inputs)?;
            let b = f32_matrix(backend, "lora_B", &f.b, f.num_outputs, f.rank)?;
            if let Some(layer) = layers.get_mut(m.layer) {
                layer[m.module as usize] = Some(LoraPair { a, b });
            }
        }
        Ok(Self {
            layers,
            scale: adapter.scale,
        })
    }
}

/// `values` (`[rows, cols]`, row-major) as a backend matrix.
fn f32_matrix<B: Backend>(
    backend: &B,
    name: &str,
    values: &[f32],
    rows: usize,
    cols: usize,
) -> BackendResult<B::Matrix> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    backend.load_matrix(&WeightView {
        name,
        dtype: WeightDType::F32,
        shape: &[rows, cols],
        bytes: &bytes,
    })
}

/// The rows of one step that run with one adapter.
struct LoraGroup<'a, B: Backend> {
    weights: &'a LoraWeights<B>,
    /// Token rows, ascending.
    row_ids: Vec<u32>,
    /// The adapter's scale, once per row (what `scatter_add_rows` multiplies by).
    row_scales: Vec<f32>,
}

/// One step's adapters: which token rows run with which adapter (rows of the base model are
/// in no group).
pub struct LoraStep<'a, B: Backend> {
    groups: Vec<LoraGroup<'a, B>>,
    num_tokens: usize,
}

impl<'a, B: Backend> LoraStep<'a, B> {
    /// A step with no adapter.
    pub fn none() -> Self {
        Self {
            groups: Vec::new(),
            num_tokens: 0,
        }
    }

    /// A step of `num_tokens` rows whose `row_ids` run with `weights`, per group.
    pub fn new(num_tokens: usize, groups: Vec<(&'a LoraWeights<B>, Vec<u32>)>) -> Self {
        let groups = groups
            .into_iter()
            .filter(|(_, row_ids)| !row_ids.is_empty())
            .map(|(weights, row_ids)| LoraGroup {
                weights,
                row_scales: vec![weights.scale; row_ids.len()],
                row_ids,
            })
            .collect();
        Self { groups, num_tokens }
    }

    /// The same step seen from decoder layer `layer`.
    pub fn layer(&self, layer: usize) -> LayerLora<'_, 'a, B> {
        LayerLora { step: self, layer }
    }

    /// `y[rows] += s * B (A x[rows])` of `module` in `layer` for each group whose adapter
    /// changes it.
    fn add(
        &self,
        backend: &B,
        step: &B::Step,
        layer: usize,
        module: LoraModule,
        x: &B::Tensor,
        y: &mut B::Tensor,
    ) -> BackendResult<()> {
        for group in &self.groups {
            let Some(pair) = group
                .weights
                .layers
                .get(layer)
                .and_then(|l| l[module as usize].as_ref())
            else {
                continue;
            };
            let shrunk = if group.row_ids.len() == self.num_tokens {
                backend.matmul(step, x, &pair.a, None)?
            } else {
                let rows = backend.gather_rows(step, x, &group.row_ids)?;
                backend.matmul(step, &rows, &pair.a, None)?
            };
            let delta = backend.matmul(step, &shrunk, &pair.b, None)?;
            backend.scatter_add_rows(y, &delta, &group.row_ids, &group.row_scales)?;
        }
        Ok(())
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

    /// `x W^T (+ bias)` plus the step's adapters' `s * B (A x)` on their rows.
    pub fn forward(
        &self,
        backend: &B,
        step: &B::Step,
        x: &B::Tensor,
        lora: Option<LayerLora<'_, '_, B>>,
    ) -> BackendResult<B::Tensor> {
        let mut y = backend.matmul(step, x, &self.weight, self.bias.as_ref())?;
        if let Some(lora) = lora {
            lora.step.add(backend, step, lora.layer, self.module, x, &mut y)?;
        }
        Ok(y)
    }
}
