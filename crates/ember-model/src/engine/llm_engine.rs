//! The engine: tokenizer, scheduler and model runner behind one step loop.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ember_core::{
    BackendStats, EngineStats, FinishReason, InvalidParam, Request, RequestId, RequestUpdate, SampledToken,
    Scheduler, SchedulerConfig, SchedulerStats, SchedulingPolicy, ValidSamplingParams,
};

use crate::engine::device::load_on_device;
use crate::engine::engine_args::{EngineArgs, DEFAULT_MAX_NUM_BATCHED_TOKENS};
use crate::engine::executor::StepExecutor;
use crate::engine::loader::open_model;
use crate::engine::lora_registry::{LoraRef, LoraRegistry};
use crate::engine::output_state::OutputState;
use crate::engine::step_output::{StepOutput, StopReason};
use crate::error::EngineError;
use crate::models::lora_adapter::LoraTargets;
use crate::structured::{GrammarCompiler, StructuredOutputs};
use crate::text::chat_template::ChatTemplate;
use crate::text::tokenizer::Tokenizer;

#[path = "engine_faults.rs"]
mod faults;
#[path = "engine_lora.rs"]
mod lora;
pub use faults::{panic_message, StepFault};

/// The engine: owns the model runner, the scheduler and the tokenizer.
pub struct LlmEngine {
    executor: Box<dyn StepExecutor>,
    scheduler: Scheduler,
    tokenizer: Arc<Tokenizer>,
    chat_template: Option<Arc<ChatTemplate>>,
    eos_token_ids: Vec<u32>,
    vocab_size: usize,
    requests: HashMap<RequestId, OutputState>,
    structured: StructuredOutputs,
    jump_forward: bool,
    pending: Vec<StepOutput>,
    max_model_len: usize,
    block_size: usize,
    num_blocks: usize,
    seed: u64,
    num_requests_added: u64,
    model_name: String,
    faults: faults::FaultPlan,
    loras: Option<LoraRegistry>,
}

/// Most forced tokens appended after one step (a chunk of the next step).
const MAX_FORCED_TOKENS: usize = 64;

fn invalid(message: String) -> EngineError {
    EngineError::InvalidRequest(message)
}

/// A request's `cache_salt` as the key its block hashes mix in; empty text is refused.
fn cache_salt_key(cache_salt: &str) -> Result<u64, EngineError> {
    if cache_salt.is_empty() {
        return Err(EngineError::InvalidParam(InvalidParam {
            field: "cache_salt",
            message: "cache_salt must be a non-empty string when given".into(),
        }));
    }
    Ok(ember_core::cache_salt_key(cache_salt))
}

impl LlmEngine {
    /// Opens the model, loads it onto the chosen device's backend and sizes the KV cache.
    pub fn new(args: &EngineArgs) -> Result<Self, EngineError> {
        args.validate().map_err(invalid)?;
        let opened = open_model(&args.model_path)?;
        log::info!(
            "loading {} ({}, {} layers, hidden {}) on device \"{}\"",
            opened.name,
            opened.architecture.name,
            opened.config.num_layers,
            opened.config.hidden_size,
            args.device
        );
        let device_model = load_on_device(args, &opened)?;
        let (executor, kv_spec) = (device_model.executor, device_model.kv_spec);
        opened.weights.warn_unread(&opened.name);
        let config = opened.config;
        drop(opened.weights);
        let cache_tokens = kv_spec.num_blocks * args.block_size;
        let model_len_limit = config.max_position_embeddings;
        let max_model_len = match args.max_model_len {
            Some(len) if len > model_len_limit => {
                return Err(invalid(format!(
                    "max_model_len ({len}) is larger than the model's context length ({model_len_limit})"
                )))
            }
            Some(len) => len,
            None => model_len_limit.min(cache_tokens),
        };
        log::info!(
            "KV cache: {} blocks of {} tokens ({} tokens); max_model_len {}; max concurrency {:.2}x",
            kv_spec.num_blocks,
            args.block_size,
            cache_tokens,
            max_model_len,
            cache_tokens as f64 / max_model_len as f64
        );
        let scheduler = Scheduler::try_new(SchedulerConfig {
            max_num_seqs: args.max_num_seqs,
            max_num_batched_tokens: args
                .max_num_batched_tokens
                .unwrap_or(DEFAULT_MAX_NUM_BATCHED_TOKENS),
            max_model_len,
            block_size: args.block_size,
            num_blocks: kv_spec.num_blocks,
            enable_prefix_caching: args.enable_prefix_caching,
            policy: args.scheduling_policy,
            sliding_window: device_model.kv_release_window,
            max_loras: args.lora.map(|l| l.max_loras),
            speculative: args.speculative.clone(),
            ..SchedulerConfig::default()
        })
        .map_err(|e| invalid(e.to_string()))?;
        let loras = args.lora.map(|limits| {
            let targets = LoraTargets::new(
                opened.architecture.family.weight_names(),
                &config,
                opened.architecture.rope_style,
            );
            LoraRegistry::new(limits, targets)
        });
        let tokenizer = Arc::new(opened.tokenizer);
        let structured =
            StructuredOutputs::new(tokenizer.clone(), config.vocab_size, config.eos_token_ids.clone());
        Ok(Self {
            executor,
            scheduler,
            tokenizer,
            structured,
            jump_forward: args.structured_jump_forward,
            chat_template: opened.chat_template.map(Arc::new),
            eos_token_ids: config.eos_token_ids.clone(),
            vocab_size: config.vocab_size,
            requests: HashMap::new(),
            pending: Vec::new(),
            max_model_len,
            block_size: args.block_size,
            num_blocks: kv_spec.num_blocks,
            seed: args.seed,
            num_requests_added: 0,
            model_name: opened.name,
            faults: faults::FaultPlan::default(),
            loras,
        })
    }

    /// The model's tokenizer.
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// The model's chat template, when it ships one.
    pub fn chat_template(&self) -> Option<&Arc<ChatTemplate>> {
        self.chat_template.as_ref()
    }

    /// A handle that compiles structured-output constraints on the caller's thread into the cache
    /// `add_request` reads, so a large grammar does not stall the engine loop.
    pub fn grammar_compiler(&self) -> GrammarCompiler {
        self.structured.compiler().clone()
    }

    /// End-of-sequence token ids of the model.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    /// Longest sequence the engine accepts (prompt + output).
    pub fn max_model_len(&self) -> usize {
        self.max_model_len
    }

    /// Number of KV-cache blocks.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Tokens per KV-cache block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Display name of the loaded model.
    pub fn model_name(&self) -> &str {
        &self.model_name
    }

    /// Queues a request; token ids out of the vocabulary (in the prompt, `logit_bias` or
    /// `stop_token_ids`) and lengths beyond the limits are rejected at once (the parameters
    /// were validated when made).
    ///
    /// `fork_of` names a live sibling with the same prompt (another completion of an `n > 1`
    /// request): this request then shares the sibling's prompt blocks once they are computed
    /// instead of computing them again. `lora` runs it with that adapter (loaded on first use).
    /// `cache_salt` (vLLM's name; non-empty text) joins its block hashes
    /// ([`ember_core::cache_salt_key`]): only requests with the same salt share cached prefixes.
    #[allow(clippy::too_many_arguments)]
    pub fn add_request(
        &mut self,
        request_id: &str,
        prompt_token_ids: Vec<u32>,
        params: ValidSamplingParams,
        priority: i32,
        fork_of: Option<&str>,
        lora: Option<&LoraRef>,
        cache_salt: Option<&str>,
    ) -> Result<(), EngineError> {
        // Ids must have an embedding row and a token text: the smaller vocabulary bounds them.
        let vocab_size = self.tokenizer.vocab_size().min(self.vocab_size);
        params.validate_token_ids(vocab_size)?;
        ember_core::check_prompt_token_ids(&prompt_token_ids, vocab_size)?;
        let policy = self.scheduler.config().policy;
        if priority != 0 && policy == SchedulingPolicy::Fcfs {
            return Err(EngineError::InvalidParam(InvalidParam {
                field: "priority",
                message: format!(
                    "{priority} needs scheduling_policy=\"priority\"; this engine schedules \"{}\" \
                     (first come, first served), which accepts only priority 0",
                    policy.as_str()
                ),
            }));
        }
        let cache_salt = cache_salt.map(cache_salt_key).transpose()?;
        let request_id: RequestId = Arc::from(request_id);
        if self.requests.contains_key(&request_id) {
            return Err(invalid(format!("request_id '{request_id}' is already in use")));
        }
        let lora_id = self.acquire_lora(&request_id, lora)?;
        let seed = params
            .seed
            .unwrap_or_else(|| derive_seed(self.seed, self.num_requests_added));
        if let Some(spec) = &params.structured_outputs {
            // Forced tokens skip the sampler: only where no logprobs or token history are kept.
            let jump_forward =
                (self.jump_forward && params.logprobs.is_none() && !params.needs_token_history())
                    .then(|| params.stop_token_ids.clone());
            if let Err(e) = self.structured.add(&request_id, spec, jump_forward) {
                self.release_lora(&request_id);
                return Err(e.into());
            }
        }
        let state = OutputState::new(&params, prompt_token_ids.len());
        let request = Request::new(
            request_id.clone(),
            prompt_token_ids,
            params.shared(),
            self.eos_token_ids.clone(),
            seed,
            priority,
            now_s(),
        )
        .with_fork_of(fork_of.map(RequestId::from))
        .with_lora_id(lora_id)
        .with_cache_salt(cache_salt);
        if let Err(e) = self.scheduler.add_request(request) {
            self.structured.remove(&request_id);
            self.release_lora(&request_id);
            return Err(invalid(e.to_string()));
        }
        self.num_requests_added += 1;
        self.requests.insert(request_id, state);
        Ok(())
    }

    /// Aborts a request; its blocks are freed at once and its final output (finish reason
    /// "abort") comes with the next step. Returns false when the id is unknown or finished.
    pub fn abort(&mut self, request_id: &str) -> bool {
        match self.scheduler.finish_request(request_id, FinishReason::Abort) {
            Some(update) => {
                let output = self.apply_update(update);
                self.pending.extend(output);
                true
            }
            None => false,
        }
    }

    /// True while any request is queued, running, or has output not yet returned.
    pub fn has_unfinished_requests(&self) -> bool {
        self.scheduler.has_unfinished_requests() || !self.pending.is_empty()
    }

    /// Scheduler, cache and structured-output counters.
    pub fn stats(&self) -> SchedulerStats {
        let (num_structured_masks, structured_mask_s) = self.structured.mask_counters();
        SchedulerStats {
            num_structured_masks,
            structured_mask_s,
            ..self.scheduler.stats()
        }
    }

    /// The backend's counters (CUDA graphs captured, replayed, failed).
    pub fn backend_stats(&self) -> BackendStats {
        self.executor.backend_stats()
    }

    /// Every statistic of `Engine.stats()`: scheduler, backend and LoRA.
    pub fn engine_stats(&self) -> EngineStats {
        EngineStats {
            scheduler: self.stats(),
            backend: self.backend_stats(),
            lora: self.lora_stats(),
        }
    }

    /// Forgets every cached prefix; false when blocks are still in use.
    pub fn reset_prefix_cache(&mut self) -> bool {
        self.scheduler.reset_prefix_cache()
    }

    /// Logits of one prompt, outside the scheduler (for testing against reference
    /// implementations and evaluation): at every position, or at `positions` only (in their
    /// order); `[len(positions)][vocab_size]`; with adapter `lora` (loaded on first use) when given.
    pub fn score(
        &mut self,
        token_ids: &[u32],
        positions: Option<&[u32]>,
        lora: Option<&LoraRef>,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        if token_ids.is_empty() || token_ids.len() > self.max_model_len {
            return Err(invalid(format!(
                "prompt_token_ids must have 1 to max_model_len ({}) tokens, got {}",
                self.max_model_len,
                token_ids.len()
            )));
        }
        let all: Vec<u32> = (0..token_ids.len() as u32).collect();
        let positions = positions.unwrap_or(&all);
        if let Some(&bad) = positions.iter().find(|&&p| p as usize >= token_ids.len()) {
            return Err(invalid(format!(
                "positions must be below the prompt length ({}), got {bad}",
                token_ids.len()
            )));
        }
        if positions.is_empty() {
            return Ok(Vec::new());
        }
        let score_id = RequestId::from("\0score");
        let lora_id = self.acquire_lora(&score_id, lora)?;
        let logits = self.executor.score(token_ids, positions, lora_id);
        self.release_lora(&score_id);
        let logits = logits?;
        let vocab_size = logits.len() / positions.len();
        Ok(logits.chunks(vocab_size).map(<[f32]>::to_vec).collect())
    }

    /// Runs one step: schedule, execute, update; returns what changed for each request.
    pub fn step(&mut self) -> Result<Vec<StepOutput>, EngineError> {
        let mut outputs = std::mem::take(&mut self.pending);
        let mut scheduled = self.scheduler.schedule();
        let proposed = self.propose_guarded(&mut scheduled);
        self.structured.fill_masks(&mut scheduled);
        let mut runner_output = match proposed.and_then(|()| self.execute_guarded(&scheduled)) {
            Ok(output) => output,
            Err(source) => {
                // Outputs of aborts and stops from before the step still belong to their callers.
                self.pending = outputs;
                return Err(self.fail_step(&scheduled, source));
            }
        };
        for chunk in std::mem::take(&mut runner_output.prompt_logprobs) {
            if let Some(state) = self.requests.get_mut(&chunk.request_id) {
                state.add_prompt_logprobs(chunk);
            }
        }
        for mut update in self.scheduler.update(&scheduled, &runner_output) {
            if let Some(reason) = self.structured.accept(&mut update) {
                if update.finish_reason.is_none() {
                    self.scheduler.finish_request(&update.request_id, reason);
                    update.finish_reason = Some(reason);
                }
            }
            if update.finish_reason.is_none() {
                self.jump_forward(&mut update);
            }
            if let Some(output) = self.apply_update(update) {
                outputs.push(output);
            }
        }
        Ok(outputs)
    }

    /// Appends the tokens a constrained request's grammar forces after this step's token
    /// (structured output's jump-forward): their KV is computed in the next step's chunk, not
    /// one decode step each. They carry no logprob: jump-forward is on only for requests that ask
    /// for none.
    fn jump_forward(&mut self, update: &mut RequestUpdate) {
        let id = update.request_id.clone();
        let (forced, complete) = self.structured.take_forced_tokens(&id, MAX_FORCED_TOKENS);
        if forced.is_empty() {
            return;
        }
        let (num_appended, finish_reason, stop_token_id) = self.scheduler.append_forced_tokens(&id, &forced);
        update
            .new_tokens
            .extend(forced[..num_appended].iter().map(|&token_id| SampledToken {
                request_id: id.clone(),
                token_id,
                logprob: None,
                rank: None,
                top_logprobs: Vec::new(),
            }));
        if finish_reason.is_some() {
            update.finish_reason = finish_reason;
            update.stop_token_id = stop_token_id;
        } else if num_appended < forced.len() {
            // Not appended (the request was not waiting for its next token): undo them.
            if let Err(e) = self.structured.rollback(&id, forced.len() - num_appended) {
                log::error!("request {id}: cannot roll the grammar back: {e}");
            }
        } else if complete {
            self.scheduler.finish_request(&id, FinishReason::Stop);
            update.finish_reason = Some(FinishReason::Stop);
        }
    }

    /// Detokenizes a request's new tokens, applies stop strings and builds its output.
    fn apply_update(&mut self, update: RequestUpdate) -> Option<StepOutput> {
        let state = self.requests.get_mut(&update.request_id)?;
        let absorbed = state.absorb(&self.tokenizer, &update.new_tokens);
        let mut new_text = absorbed.new_text;
        let mut finish_reason = update.finish_reason;
        let mut stop_reason = update.stop_token_id.map(StopReason::Token);
        if let Some(stop) = absorbed.matched_stop {
            if finish_reason.is_none() {
                self.scheduler
                    .finish_request(&update.request_id, FinishReason::Stop);
            }
            finish_reason = Some(FinishReason::Stop);
            stop_reason = Some(StopReason::Text(stop));
        } else if finish_reason.is_some() {
            new_text.push_str(&state.flush());
        }
        let num_prompt_tokens = state.num_prompt_tokens;
        let new_prompt_logprobs = state.take_prompt_logprobs(&self.tokenizer);
        if finish_reason.is_some() {
            self.forget_request(&update.request_id);
        }
        Some(StepOutput {
            request_id: update.request_id,
            new_token_ids: update.new_tokens[..absorbed.num_tokens]
                .iter()
                .map(|t| t.token_id)
                .collect(),
            new_text,
            finish_reason,
            stop_reason,
            num_cached_tokens: update.num_cached_tokens,
            num_prompt_tokens,
            new_logprobs: absorbed.new_logprobs,
            new_prompt_logprobs,
        })
    }
}

/// A request seed derived from the engine seed and the request's arrival index.
fn derive_seed(engine_seed: u64, index: u64) -> u64 {
    ember_core::sampler::splitmix64(engine_seed ^ ember_core::sampler::splitmix64(index))
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
