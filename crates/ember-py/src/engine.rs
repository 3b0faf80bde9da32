//! `ember._core.Engine`: the Rust engine behind a mutex, stepped with the GIL released.

use std::sync::{Arc, Mutex, MutexGuard};

use ember_model::engine::engine_args::EngineArgs;
use ember_model::engine::lora_reader::LoraReader;
use ember_model::engine::lora_registry::{LoraConfig, LoraRef};
use ember_model::engine::speculative_args::parse_speculative_config;
use ember_model::engine::{LlmEngine, LogprobEntry, StepFault, StepOutput, StopReason, TokenLogprobs};
use ember_model::structured::GrammarCompiler;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::convert::{self, type_name};
use crate::errors::{engine_error, invalid_param, invalid_request, py_error, ErrorKind};
use crate::guard::guard;
use crate::lora_read::PyReadLora;
use crate::sampling_params::PySamplingParams;
use crate::tokenizer::PyTokenizer;

/// What one request gained in one engine step.
#[pyclass(name = "StepOutput", module = "ember._core", frozen, get_all)]
pub struct PyStepOutput {
    request_id: String,
    new_token_ids: Vec<u32>,
    new_text: String,
    finish_reason: Option<&'static str>,
    stop_reason: Option<Py<PyAny>>,
    num_cached_tokens: usize,
    num_prompt_tokens: usize,
    new_logprobs: Option<Vec<PyTokenLogprobs>>,
    new_prompt_logprobs: Option<Vec<PyTokenLogprobs>>,
}

/// One alternative's `(token_id, logprob, decoded_token)`.
type PyAlternative = (u32, f32, Option<String>);

/// One position's `(token_id, logprob, rank, decoded_token, [alternatives, best first])`.
type PyTokenLogprobs = (u32, f32, Option<u32>, Option<String>, Vec<PyAlternative>);

fn py_logprobs(entries: Vec<TokenLogprobs>) -> Vec<PyTokenLogprobs> {
    let alternative = |e: LogprobEntry| (e.token_id, e.logprob, e.decoded_token);
    entries
        .into_iter()
        .map(|p| {
            let top = p.top.into_iter().map(alternative).collect();
            (
                p.token.token_id,
                p.token.logprob,
                p.token.rank,
                p.token.decoded_token,
                top,
            )
        })
        .collect()
}

impl PyStepOutput {
    fn new(py: Python<'_>, output: StepOutput) -> PyResult<Self> {
        let stop_reason = match output.stop_reason {
            Some(StopReason::Token(id)) => Some(id.into_pyobject(py)?.into_any().unbind()),
            Some(StopReason::Text(text)) => Some(text.into_pyobject(py)?.into_any().unbind()),
            None => None,
        };
        Ok(Self {
            request_id: output.request_id.to_string(),
            new_token_ids: output.new_token_ids,
            new_text: output.new_text,
            finish_reason: output.finish_reason.map(|r| r.as_str()),
            stop_reason,
            num_cached_tokens: output.num_cached_tokens,
            num_prompt_tokens: output.num_prompt_tokens,
            new_logprobs: output.new_logprobs.map(py_logprobs),
            new_prompt_logprobs: output.new_prompt_logprobs.map(py_logprobs),
        })
    }
}

#[pymethods]
impl PyStepOutput {
    fn __repr__(&self) -> PyResult<String> {
        guard(|| {
            Ok(format!(
                "StepOutput(request_id={:?}, new_token_ids={:?}, new_text={:?}, finish_reason={:?})",
                self.request_id, self.new_token_ids, self.new_text, self.finish_reason
            ))
        })
    }
}

/// The Rust engine: owns the model, the KV cache, the scheduler and the tokenizer.
#[pyclass(name = "Engine", module = "ember._core", frozen)]
pub struct PyEngine {
    inner: Mutex<LlmEngine>,
    /// Reads adapters on callers' threads (`None` without LoRA).
    lora_reader: Option<LoraReader>,
    /// Compiles structured-output constraints on callers' threads, into the engine's cache.
    grammar_compiler: GrammarCompiler,
    tokenizer: Py<PyTokenizer>,
    max_model_len: usize,
    num_blocks: usize,
    block_size: usize,
    model_name: String,
}

impl PyEngine {
    fn lock(&self) -> PyResult<MutexGuard<'_, LlmEngine>> {
        self.inner
            .lock()
            .map_err(|_| py_error(ErrorKind::Ember, "the engine is unusable after an internal panic"))
    }
}

/// The adapter of a `(lora_name, lora_int_id, lora_path)` tuple.
fn lora_ref((name, lora_id, path): (String, u32, String)) -> LoraRef {
    LoraRef {
        name,
        lora_id,
        path: path.into(),
    }
}

#[pymethods]
impl PyEngine {
    /// Loads a model (GGUF file or Hugging Face folder) and sizes the KV cache.
    #[new]
    #[pyo3(signature = (model_path, *, max_model_len=None, max_num_seqs=256, max_num_batched_tokens=None,
        kv_cache_memory_bytes=None, block_size=16, seed=0, dtype="auto".to_string(), num_threads=None,
        enable_prefix_caching=true, device="auto".to_string(), gpu_memory_utilization=0.9,
        kv_cache_dtype="auto".to_string(), scheduling_policy="fcfs".to_string(), structured_jump_forward=true,
        enable_lora=false, max_loras=1, max_lora_rank=16, max_cpu_loras=None,
        speculative_config=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model_path: String,
        max_model_len: Option<usize>,
        max_num_seqs: usize,
        max_num_batched_tokens: Option<usize>,
        kv_cache_memory_bytes: Option<u64>,
        block_size: usize,
        seed: u64,
        dtype: String,
        num_threads: Option<usize>,
        enable_prefix_caching: bool,
        device: String,
        gpu_memory_utilization: f32,
        kv_cache_dtype: String,
        scheduling_policy: String,
        structured_jump_forward: bool,
        enable_lora: bool,
        max_loras: usize,
        max_lora_rank: usize,
        max_cpu_loras: Option<usize>,
        speculative_config: Option<String>,
    ) -> PyResult<Self> {
        guard(|| {
            let speculative = speculative_config
                .map(|json| parse_speculative_config(&json))
                .transpose()
                .map_err(|message| invalid_param("speculative_config", message))?;
            let (speculative, draft_model) = match speculative {
                Some(parsed) => (Some(parsed.config), parsed.draft_model),
                None => (None, None),
            };
            let scheduling_policy = scheduling_policy
                .parse()
                .map_err(|message: String| invalid_param("scheduling_policy", message))?;
            let args = EngineArgs {
                max_model_len,
                max_num_seqs,
                max_num_batched_tokens,
                kv_cache_memory_bytes,
                block_size,
                seed,
                dtype,
                num_threads,
                enable_prefix_caching,
                device,
                gpu_memory_utilization,
                kv_cache_dtype,
                scheduling_policy,
                structured_jump_forward,
                lora: enable_lora.then_some(LoraConfig {
                    max_loras,
                    max_lora_rank,
                    max_cpu_loras: max_cpu_loras.unwrap_or(max_loras),
                }),
                speculative,
                draft_model,
                ..EngineArgs::new(model_path)
            };
            let engine = py.detach(|| LlmEngine::new(&args)).map_err(engine_error)?;
            let tokenizer = PyTokenizer::new(Arc::clone(engine.tokenizer()), engine.chat_template().cloned());
            Ok(Self {
                tokenizer: Py::new(py, tokenizer)?,
                max_model_len: engine.max_model_len(),
                num_blocks: engine.num_blocks(),
                block_size: engine.block_size(),
                model_name: engine.model_name().to_string(),
                lora_reader: engine.lora_reader(),
                grammar_compiler: engine.grammar_compiler(),
                inner: Mutex::new(engine),
            })
        })
    }

    /// The model's tokenizer.
    #[getter]
    fn tokenizer(&self, py: Python<'_>) -> PyResult<Py<PyTokenizer>> {
        guard(|| Ok(self.tokenizer.clone_ref(py)))
    }

    /// Longest sequence (prompt + output) the engine accepts.
    #[getter]
    fn max_model_len(&self) -> PyResult<usize> {
        guard(|| Ok(self.max_model_len))
    }

    /// Number of KV-cache blocks.
    #[getter]
    fn num_blocks(&self) -> PyResult<usize> {
        guard(|| Ok(self.num_blocks))
    }

    /// Tokens per KV-cache block.
    #[getter]
    fn block_size(&self) -> PyResult<usize> {
        guard(|| Ok(self.block_size))
    }

    /// Display name of the model.
    #[getter]
    fn model_name(&self) -> PyResult<String> {
        guard(|| Ok(self.model_name.clone()))
    }

    /// End-of-sequence token ids of the model.
    #[getter]
    fn eos_token_ids(&self) -> PyResult<Vec<u32>> {
        guard(|| Ok(self.lock()?.eos_token_ids().to_vec()))
    }

    /// Reads and checks adapter `lora` (`(lora_name, lora_int_id, lora_path)`) on the calling
    /// thread, without the engine lock; None when the engine holds it already. Raises
    /// ModelLoadError naming the file and key.
    fn read_lora(&self, py: Python<'_>, lora: (String, u32, String)) -> PyResult<Option<PyReadLora>> {
        guard(|| {
            let Some(reader) = &self.lora_reader else {
                return Ok(None);
            };
            let lora = lora_ref(lora);
            let read = py
                .detach(|| reader.read_unless_loaded(&lora))
                .map_err(engine_error)?;
            Ok(read.map(PyReadLora::new))
        })
    }

    /// Compiles the structured-output constraint of `params` (an ember.SamplingParams) on the
    /// calling thread, without the engine lock, into the cache `add_request` reads, so a large
    /// grammar does not stall the engine loop; nothing without a constraint. Raises
    /// InvalidRequestError naming `structured_outputs` when it does not compile.
    fn compile_structured(&self, py: Python<'_>, params: PyRef<'_, PySamplingParams>) -> PyResult<()> {
        guard(|| {
            let Some(spec) = params.params().structured_outputs.clone() else {
                return Ok(());
            };
            py.detach(|| self.grammar_compiler.compile(&spec).map(drop))
                .map_err(|e| engine_error(e.into()))
        })
    }

    /// Queues a request; raises InvalidRequestError naming the field and limit. `fork_of` names
    /// a sibling with the same prompt whose prompt blocks this request shares (`n > 1`); `lora`
    /// is `(lora_name, lora_int_id, lora_path)` of its adapter (loaded on first use, from
    /// `read_lora` when given: what `read_lora` returned for it); `cache_salt` (non-empty text)
    /// keeps its cached prefixes apart from those of requests with another salt or none.
    #[pyo3(signature = (request_id, prompt_token_ids, params, priority=None, fork_of=None, lora=None, read_lora=None, cache_salt=None))]
    #[allow(clippy::too_many_arguments)]
    fn add_request(
        &self,
        py: Python<'_>,
        request_id: &Bound<'_, PyAny>,
        prompt_token_ids: &Bound<'_, PyAny>,
        params: &Bound<'_, PyAny>,
        priority: Option<&Bound<'_, PyAny>>,
        fork_of: Option<&str>,
        lora: Option<(String, u32, String)>,
        read_lora: Option<PyRef<'_, PyReadLora>>,
        cache_salt: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        guard(|| {
            let request_id = convert::text(request_id, "request_id")?;
            let cache_salt = cache_salt.map(|s| convert::text(s, "cache_salt")).transpose()?;
            let prompt_token_ids = convert::token_ids(prompt_token_ids, "prompt_token_ids")?;
            let params = params
                .cast::<PySamplingParams>()
                .map_err(|_| {
                    invalid_param(
                        "params",
                        format!(
                            "params must be an ember.SamplingParams, got {}",
                            type_name(params)
                        ),
                    )
                })?
                .get()
                .params()
                .clone();
            let priority = match priority {
                Some(value) => convert::int(value, "priority", (i32::MIN.into(), i32::MAX.into()))?,
                None => 0,
            };
            let lora = lora.map(lora_ref);
            let read = read_lora.and_then(|r| r.take());
            py.detach(|| {
                let mut engine = self.lock()?;
                if let Some(read) = read {
                    engine.stage_lora(read);
                }
                engine
                    .add_request(
                        &request_id,
                        prompt_token_ids,
                        params,
                        priority,
                        fork_of,
                        lora.as_ref(),
                        cache_salt.as_deref(),
                    )
                    .map_err(engine_error)
            })
        })
    }

    /// Unloads LoRA adapter `lora_int_id` (an error while requests use it); False when it was
    /// not loaded.
    fn unload_lora(&self, lora_int_id: u32) -> PyResult<bool> {
        guard(|| self.lock()?.unload_lora(lora_int_id).map_err(engine_error))
    }

    /// `(lora_int_id, lora_name, lora_path)` of every loaded LoRA adapter.
    fn loaded_loras(&self) -> PyResult<Vec<(u32, String, String)>> {
        guard(|| {
            let loaded = self.lock()?.loaded_loras();
            Ok(loaded
                .into_iter()
                .map(|(id, name, path)| (id, name, path.display().to_string()))
                .collect())
        })
    }

    /// Runs one scheduler step with the GIL released.
    ///
    /// When the step fails, only the requests it was computing have ended: the raised
    /// `EmberError` lists them in `request_ids`, and the engine keeps serving the others.
    fn step(&self, py: Python<'_>) -> PyResult<Vec<PyStepOutput>> {
        guard(|| {
            let outputs =
                py.detach(|| -> PyResult<Vec<StepOutput>> { self.lock()?.step().map_err(engine_error) })?;
            outputs.into_iter().map(|o| PyStepOutput::new(py, o)).collect()
        })
    }

    /// Aborts a request; False when the id is unknown or already finished.
    fn abort(&self, request_id: &str) -> PyResult<bool> {
        guard(|| Ok(self.lock()?.abort(request_id)))
    }

    /// True while any request is queued, running, or has output not yet returned.
    fn has_unfinished_requests(&self) -> PyResult<bool> {
        guard(|| Ok(self.lock()?.has_unfinished_requests()))
    }

    /// Every statistic of `ember_core::STAT_SPECS`: scheduler, KV cache, backend (CUDA graphs), LoRA.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        guard(|| {
            let stats = self.lock()?.engine_stats();
            let dict = PyDict::new(py);
            for (key, value) in stats.as_pairs() {
                dict.set_item(key, value)?;
            }
            Ok(dict)
        })
    }

    /// Forgets every cached prefix; False when blocks are still in use.
    fn reset_prefix_cache(&self) -> PyResult<bool> {
        guard(|| Ok(self.lock()?.reset_prefix_cache()))
    }

    /// Logits at every position of one prompt, or at `positions` only (a prefill outside the
    /// scheduler; for tests and evaluation).
    #[pyo3(signature = (prompt_token_ids, positions=None, lora=None))]
    fn score(
        &self,
        py: Python<'_>,
        prompt_token_ids: &Bound<'_, PyAny>,
        positions: Option<Vec<u32>>,
        lora: Option<(String, u32, String)>,
    ) -> PyResult<Vec<Vec<f32>>> {
        guard(|| {
            let prompt_token_ids = convert::token_ids(prompt_token_ids, "prompt_token_ids")?;
            py.detach(|| -> PyResult<Vec<Vec<f32>>> {
                self.lock()?
                    .score(
                        &prompt_token_ids,
                        positions.as_deref(),
                        lora.map(lora_ref).as_ref(),
                    )
                    .map_err(engine_error)
            })
        })
    }

    /// Test hook: the next `num_steps` steps that compute anything fail, as a device error
    /// (`fault="error"`) or a panic in the model (`fault="panic"`) would.
    fn _inject_step_faults(&self, fault: &str, num_steps: usize) -> PyResult<()> {
        guard(|| {
            let fault = StepFault::parse(fault).ok_or_else(|| {
                invalid_request(format!("fault must be \"error\" or \"panic\", got {fault:?}"))
            })?;
            self.lock()?.inject_step_faults(fault, num_steps);
            Ok(())
        })
    }
}
