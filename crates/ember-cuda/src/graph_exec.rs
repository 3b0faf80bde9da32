//! CUDA-graph execution of pure-decode steps. Planning (keys, padding, the state machine) is
//! [`crate::graph`]; the fixed-address memory is [`crate::arena`]. A graph step pads the batch
//! to its key and sends it with the one pinned copy into a fixed device buffer, as a
//! [`CudaStep`] that allocates from the arena and carries the key's decode split; then the
//! first use of a key runs the forward pass eagerly on the arena (warm-up), the second
//! captures it into a graph and launches it, later ones only launch the graph.

use std::sync::Mutex;

use cudarc::driver::{sys, CudaGraph, CudaSlice};
use ember_core::{BackendResult, BackendStats, StepBatch};

use crate::arena::{step_bytes, ArenaHandle, ModelDims};
use crate::device::Device;
use crate::error::device_err;
use crate::graph::{pad_decode_step, GraphAction, GraphKey, GraphPlan, GraphTable};
use crate::launch::{decode_split, DecodeSplit};
use crate::step::{step_words, CudaStep, StepStaging};
use crate::tensor::{CudaTensor, TensorData};

/// The forward pass of one step, as the backend's `run_forward` receives it.
pub(crate) type Forward<'a> = dyn FnMut(&CudaStep) -> BackendResult<CudaTensor> + 'a;

/// What graph capture needs to know about the engine and the model.
#[derive(Clone, Copy, Debug)]
pub struct GraphConfig {
    /// Most sequences per step (largest captured batch, at most 256).
    pub max_num_seqs: usize,
    /// Longest sequence (graphs cover contexts up to `min(max_model_len, 16384)`).
    pub max_model_len: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Activation sizes.
    pub dims: ModelDims,
}

/// A captured decode step: the graph and where its logits land.
struct CapturedGraph {
    graph: CudaGraph,
    logits: u64,
    cols: usize,
}

// SAFETY: a graph is only launched under the table's mutex, so its use is serialized, which is
// all the driver asks of graph objects shared between threads.
unsafe impl Send for CapturedGraph {}

/// The graph state of a backend: plan, arena, fixed input buffer, captured graphs.
pub(crate) struct GraphRuntime {
    plan: GraphPlan,
    dims: ModelDims,
    arena: ArenaHandle,
    inputs: CudaSlice<u32>,
    inputs_words: usize,
    table: Mutex<GraphTable<CapturedGraph>>,
    _arena_buffer: CudaSlice<u8>,
}

/// The decode split of a graph: fixed by its context bucket and batch.
fn graph_split(dims: &ModelDims, key: GraphKey, num_sms: usize) -> DecodeSplit {
    decode_split(key.context, key.batch, dims.num_heads, dims.num_kv_heads, num_sms)
}

/// Arena bytes for every key of `plan` (the largest step of any batch size at the longest
/// context; a smaller context never needs more).
pub fn arena_bytes(plan: &GraphPlan, dims: &ModelDims, num_sms: usize) -> usize {
    plan.sizes
        .iter()
        .map(|&batch| {
            let key = GraphKey {
                batch,
                context: plan.max_context,
            };
            step_bytes(dims, batch, graph_split(dims, key, num_sms))
        })
        .max()
        .unwrap_or(0)
}

impl GraphRuntime {
    /// Allocates the activation arena and the fixed input buffer of
    /// `config`'s graphs (made after the weights are loaded, before the KV cache is sized, so
    /// the memory plan sees them).
    pub fn new(d: &Device, config: GraphConfig) -> BackendResult<Self> {
        let plan = GraphPlan::new(config.max_num_seqs, config.max_model_len, config.block_size);
        let arena_len = arena_bytes(&plan, &config.dims, d.num_sms());
        let arena_buffer = d.alloc::<u8>(arena_len, "graph arena")?;
        let largest = plan.largest();
        let inputs_words = crate::step_buffer::StepLayout::new(
            largest.batch,
            largest.batch,
            plan.blocks_per_seq(largest),
            largest.batch,
        )
        .total_words;
        let inputs = d.alloc::<u32>(inputs_words, "graph step inputs")?;
        log::info!(
            "CUDA graphs: batch sizes {:?}, contexts up to {} tokens, arena {:.1} MiB",
            plan.sizes,
            plan.max_context,
            arena_len as f64 / (1 << 20) as f64
        );
        Ok(Self {
            arena: ArenaHandle::new(d.ptr(&arena_buffer), arena_len),
            plan,
            dims: config.dims,
            inputs,
            inputs_words,
            table: Mutex::new(GraphTable::default()),
            _arena_buffer: arena_buffer,
        })
    }

    /// Runs `batch` as a graph when it is a pure-decode step that fits a key (see
    /// [`GraphPlan::key_for`]) whose graph works: `Ok(None)` tells the caller to run it
    /// eagerly (not a graph step, or its key failed, now or before; failures are logged).
    pub fn run(
        &self,
        d: &Device,
        staging: &Mutex<StepStaging>,
        batch: &StepBatch,
        forward: &mut Forward<'_>,
    ) -> BackendResult<Option<CudaTensor>> {
        let Some(key) = self.plan.key_for(batch) else {
            return Ok(None);
        };
        let action = self.table()?.action(key);
        if action == GraphAction::Eager {
            return Ok(None);
        }
        let rows = batch.logits_indices.len();
        let padded = pad_decode_step(batch, key, self.plan.blocks_per_seq(key));
        debug_assert!(step_words(&padded) <= self.inputs_words);
        let arena = (action != GraphAction::Replay).then(|| self.arena.clone());
        let split = graph_split(&self.dims, key, d.num_sms());
        let step = staging
            .lock()
            .map_err(|_| device_err("step inputs", "poisoned lock"))?
            .fixed(d, padded, d.ptr(&self.inputs), self.inputs_words, arena, split)?;
        let result = match action {
            GraphAction::Replay => self.replay(key, rows),
            GraphAction::Warmup => self.on_arena(&step, forward),
            _ => self.capture(d, key, &step, rows, forward),
        };
        match result {
            Ok(mut logits) => {
                let mut table = self.table()?;
                if action == GraphAction::Warmup {
                    table.warmed(key);
                } else {
                    table.replayed();
                }
                logits.rows = rows;
                Ok(Some(logits))
            }
            Err(e) => {
                log::warn!("CUDA graph {key:?} ({action:?}) failed, running its steps eagerly: {e}");
                self.table()?.failed(key);
                Ok(None)
            }
        }
    }

    /// Graphs captured, replayed and failed so far.
    pub fn stats(&self) -> BackendStats {
        self.table().map(|t| t.stats()).unwrap_or_default()
    }

    fn table(&self) -> BackendResult<std::sync::MutexGuard<'_, GraphTable<CapturedGraph>>> {
        self.table
            .lock()
            .map_err(|_| device_err("graphs", "poisoned lock"))
    }

    /// Runs the forward pass of `step`, whose activations come from the arena, from an empty arena.
    fn on_arena(&self, step: &CudaStep, forward: &mut Forward<'_>) -> BackendResult<CudaTensor> {
        if !self.arena.reset() {
            return Err(device_err(
                "graph arena",
                "a tensor of the last step is still alive",
            ));
        }
        forward(step)
    }

    fn capture(
        &self,
        d: &Device,
        key: GraphKey,
        step: &CudaStep,
        rows: usize,
        forward: &mut Forward<'_>,
    ) -> BackendResult<CudaTensor> {
        let stream = d.stream();
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| device_err("graph capture", e))?;
        let out = self.on_arena(step, forward);
        // Always end the capture, so the stream is usable again whatever happened.
        let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0));
        let (logits, cols) = {
            let out = out?;
            (out.ptr(d), out.cols)
        };
        let graph = graph
            .map_err(|e| device_err("graph instantiate", e))?
            .ok_or_else(|| device_err("graph capture", "empty graph"))?;
        self.table()?.captured(key, CapturedGraph { graph, logits, cols });
        self.replay(key, rows)
    }

    fn replay(&self, key: GraphKey, rows: usize) -> BackendResult<CudaTensor> {
        let table = self.table()?;
        let c = table
            .graph(key)
            .ok_or_else(|| device_err("graph replay", "no graph"))?;
        c.graph.launch().map_err(|e| device_err("graph launch", e))?;
        Ok(CudaTensor {
            data: TensorData::Replayed(c.logits),
            rows,
            cols: c.cols,
        })
    }
}
