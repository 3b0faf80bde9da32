//! The model runner: turns a [`SchedulerOutput`] into the step's flat inputs, has the backend
//! run the model over the paged KV cache, and samples (see [`crate::engine::sample_rows`]).

use ember_core::{
    Backend, BackendResult, KvCacheSpec, ModelRunnerOutput, RequestHistories, SchedulerOutput, StepBatch,
    WeightDType,
};

use std::collections::{BTreeMap, HashMap};

use crate::engine::batch::build_step_batch;
use crate::engine::draft_model::DraftModel;
use crate::engine::sample_rows::sample_step;
use crate::models::lora::{LoraStep, LoraWeights};
use crate::models::lora_adapter::LoraAdapter;
use crate::models::Model;

/// Owns the backend, the model, the KV cache and the per-request token histories.
pub struct ModelRunner<B: Backend> {
    backend: B,
    model: Box<dyn Model<B>>,
    kv_cache: B::KvCache,
    kv_spec: KvCacheSpec,
    vocab_size: usize,
    eos_token_ids: Vec<u32>,
    histories: RequestHistories,
    /// Loaded LoRA adapters by `lora_int_id`.
    loras: HashMap<u32, LoraWeights<B>>,
    /// Element type adapter factors are stored in (f32 on the exact path).
    lora_factor_dtype: WeightDType,
    /// The draft model filling in drafts (draft-model speculation).
    draft: Option<DraftModel<B>>,
}

impl<B: Backend> ModelRunner<B> {
    /// Allocates the KV cache described by `kv_spec` next to `model`; `eos_token_ids` are
    /// masked before a request's `min_tokens`.
    pub fn new(
        backend: B,
        model: Box<dyn Model<B>>,
        kv_spec: KvCacheSpec,
        vocab_size: usize,
        eos_token_ids: Vec<u32>,
    ) -> BackendResult<Self> {
        let kv_cache = backend.allocate_kv_cache(&kv_spec)?;
        Ok(Self {
            backend,
            model,
            kv_cache,
            kv_spec,
            vocab_size,
            eos_token_ids,
            histories: RequestHistories::default(),
            loras: HashMap::new(),
            lora_factor_dtype: WeightDType::F16,
            draft: None,
        })
    }

    /// Drafts with `draft` (its cache mirrors this runner's blocks).
    pub fn with_draft(mut self, draft: DraftModel<B>) -> Self {
        self.draft = Some(draft);
        self
    }

    /// Stores adapter factors as `dtype`: f32 with `dtype="float32"` (the exact path), f16
    /// otherwise (half the bytes each step reads; far below the 8-bit arithmetic's error).
    pub fn with_lora_factor_dtype(mut self, dtype: WeightDType) -> Self {
        self.lora_factor_dtype = dtype;
        self
    }

    /// The backend the model runs on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The KV cache geometry.
    pub fn kv_spec(&self) -> &KvCacheSpec {
        &self.kv_spec
    }

    /// Has the draft model (if any) compute this step's tokens and fill in `output`'s drafts;
    /// runs before the structured-output masks, which check the drafts.
    pub fn propose_drafts(&mut self, output: &mut SchedulerOutput) -> BackendResult<()> {
        if let Some(draft) = &mut self.draft {
            draft.fill_drafts(&self.backend, output)?;
        }
        Ok(())
    }

    /// Runs one scheduled step: samples a token for every sequence with `sample == true` and
    /// computes the prompt logprobs of the rows that asked for them.
    pub fn execute(&mut self, output: &SchedulerOutput) -> BackendResult<ModelRunnerOutput> {
        self.histories.apply_schedule(output);
        if output.seqs.is_empty() {
            return Ok(ModelRunnerOutput::default());
        }
        let batch = build_step_batch(output, self.kv_spec.block_size);
        let seq_loras = output.seqs.iter().map(|seq| seq.lora_id);
        let lora = lora_step(&self.loras, seq_loras, &batch.query_start_loc)?;
        let (model, kv_cache, backend) = (&self.model, &mut self.kv_cache, &self.backend);
        let logits = backend.run_forward(batch, &mut |step| model.forward(backend, step, kv_cache, &lora))?;
        sample_step(
            backend,
            logits,
            self.vocab_size,
            output,
            &mut self.histories,
            &self.eos_token_ids,
        )
    }

    /// Logits at `positions` of `token_ids` (`[len(positions), vocab_size]`, row-major; every
    /// position below the prompt length), computed in a scratch KV cache so the serving cache
    /// is untouched; with adapter `lora_id` (loaded) when given.
    pub fn score(
        &self,
        token_ids: &[u32],
        positions: &[u32],
        lora_id: Option<u32>,
    ) -> BackendResult<Vec<f32>> {
        let batch = StepBatch {
            logits_indices: positions.to_vec(),
            ..StepBatch::whole_prompt(token_ids, self.kv_spec.block_size)
        };
        let spec = KvCacheSpec {
            num_blocks: batch.max_blocks_per_seq,
            ..self.kv_spec
        };
        let mut scratch = self.backend.allocate_kv_cache(&spec)?;
        let lora = lora_step(&self.loras, std::iter::once(lora_id), &batch.query_start_loc)?;
        let step = self.backend.prepare_step(batch)?;
        let logits = self.model.forward(&self.backend, &step, &mut scratch, &lora)?;
        self.backend.to_host(&logits)
    }

    /// Loads `adapter` onto the backend as `lora_id` (replacing one of that id).
    pub fn load_lora(&mut self, lora_id: u32, adapter: &LoraAdapter) -> BackendResult<()> {
        for op in ["gather_rows", "scatter_add_rows"] {
            if self.backend.unsupported_ops().contains(&op) {
                return Err(ember_core::BackendError::Unsupported(format!(
                    "LoRA adapters need {op}, which the {} backend does not implement yet",
                    self.backend.name()
                )));
            }
        }
        let num_layers = self.model.shape().kv_layers.len();
        let weights = LoraWeights::load(&self.backend, adapter, num_layers, self.lora_factor_dtype)?;
        self.loras.insert(lora_id, weights);
        Ok(())
    }

    /// Drops adapter `lora_id`; false when it was not loaded.
    pub fn unload_lora(&mut self, lora_id: u32) -> bool {
        self.loras.remove(&lora_id).is_some()
    }
}

/// The step's token rows grouped by adapter, from each sequence's adapter in batch order
/// (rows of sequence `s` are `query_start_loc[s]..query_start_loc[s + 1]`).
fn lora_step<'a, B: Backend>(
    loras: &'a HashMap<u32, LoraWeights<B>>,
    seq_loras: impl Iterator<Item = Option<u32>>,
    query_start_loc: &[u32],
) -> BackendResult<LoraStep<'a, B>> {
    let mut rows_by_lora: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (s, seq_lora) in seq_loras.enumerate() {
        if let Some(lora_id) = seq_lora {
            rows_by_lora
                .entry(lora_id)
                .or_default()
                .extend(query_start_loc[s]..query_start_loc[s + 1]);
        }
    }
    let mut groups = Vec::with_capacity(rows_by_lora.len());
    for (lora_id, row_ids) in rows_by_lora {
        let weights = loras.get(&lora_id).ok_or_else(|| {
            ember_core::BackendError::Device(format!("LoRA adapter {lora_id} is not loaded"))
        })?;
        groups.push((weights, row_ids));
    }
    Ok(LoraStep::new(groups))
}
