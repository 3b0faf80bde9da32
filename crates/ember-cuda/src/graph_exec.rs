//! CUDA-graph execution of pure-decode steps. Planning (keys, padding, the state machine) is
//! [`crate::graph`]; the fixed-address memory is [`crate::arena`]. A graph step pads the batch
//! to its key, packs the inputs with one pinned copy into a fixed device buffer, and then:
//! first use of a key runs the forward pass eagerly on the arena (warm-up), the second
//! captures it into a graph and launches it, later ones only launch the graph.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use cudarc::driver::{sys, CudaGraph, CudaSlice};
use ember_core::{BackendError, BackendResult, ForwardFn, StepMetadata};

use crate::arena::{step_bytes, ArenaHandle, ArenaRegion, ModelDims};
use crate::backend::CudaBackend;
use crate::device::device_err;
use crate::graph::{pad_decode_step, GraphAction, GraphKey, GraphPlan, GraphTable};
use crate::launch::{decode_split, DecodeSplit};
use crate::step_inputs::step_words;
use crate::tensor::{CudaTensor, TensorData};

/// cuBLAS workspace bytes (set once, so captured GEMMs never allocate).
const BLAS_WORKSPACE_BYTES: usize = 32 << 20;

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
    arena_on: AtomicBool,
    inputs: CudaSlice<u32>,
    inputs_words: usize,
    table: Mutex<GraphTable<CapturedGraph>>,
    _arena_buffer: CudaSlice<u8>,
    _blas_workspace: CudaSlice<u8>,
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
    /// A region of the arena while a graph step runs on it, else `None`.
    pub(crate) fn region(&self, bytes: usize, what: &str) -> BackendResult<Option<ArenaRegion>> {
        if !self.arena_on.load(Ordering::Acquire) {
            return Ok(None);
        }
        let (used, capacity) = self.arena.usage();
        self.arena
            .alloc(bytes)
            .map(Some)
            .ok_or_else(|| BackendError::OutOfMemory {
                what: format!("{what} (graph arena)"),
                requested_bytes: bytes as u64,
                available_bytes: (capacity - used) as u64,
            })
    }
}

impl CudaBackend {
    /// Turns on CUDA graphs for pure-decode steps: allocates the activation arena, the fixed
    /// input buffer and the cuBLAS workspace (call after loading the weights, before sizing
    /// the KV cache, so the memory plan sees them).
    pub fn enable_graphs(&mut self, config: GraphConfig) -> BackendResult<()> {
        let plan = GraphPlan::new(config.max_num_seqs, config.max_model_len, config.block_size);
        let d = &self.device;
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
        let blas_workspace = d.alloc::<u8>(BLAS_WORKSPACE_BYTES, "cuBLAS workspace")?;
        d.set_blas_workspace(&blas_workspace)?;
        log::info!(
            "CUDA graphs: batch sizes {:?}, contexts up to {} tokens, arena {:.1} MiB",
            plan.sizes,
            plan.max_context,
            arena_len as f64 / (1 << 20) as f64
        );
        self.graphs = Some(GraphRuntime {
            arena: ArenaHandle::new(d.ptr(&arena_buffer), arena_len),
            arena_on: AtomicBool::new(false),
            plan,
            dims: config.dims,
            inputs,
            inputs_words,
            table: Mutex::new(GraphTable::default()),
            _arena_buffer: arena_buffer,
            _blas_workspace: blas_workspace,
        });
        Ok(())
    }

    /// The forward pass of one step: as a graph when it is a pure-decode step that fits a
    /// key (see [`GraphPlan::key_for`]), else eagerly.
    pub(crate) fn graph_forward(
        &self,
        token_ids: &[u32],
        meta: &StepMetadata,
        forward: &mut ForwardFn<'_, CudaTensor>,
    ) -> BackendResult<CudaTensor> {
        let Some(g) = &self.graphs else {
            return forward(token_ids, meta);
        };
        let Some(key) = g.plan.key_for(token_ids.len(), meta) else {
            return forward(token_ids, meta);
        };
        let action = self.table(g)?.action(key);
        if action == GraphAction::Eager {
            return forward(token_ids, meta);
        }
        let split = graph_split(&g.dims, key, self.device.num_sms());
        let (ids, padded) = pad_decode_step(token_ids, meta, key, g.plan.blocks_per_seq(key));
        debug_assert!(step_words(&padded) <= g.inputs_words);
        let inputs = self.device.ptr(&g.inputs);
        self.step()?
            .stage(&self.device, &ids, &padded, inputs, g.inputs_words)?;
        let rows = meta.logits_indices.len();
        let result = match action {
            GraphAction::Replay => self.replay(g, key, rows),
            GraphAction::Warmup => self.on_arena(g, split, &mut || forward(&ids, &padded)),
            _ => self.capture(g, key, split, rows, &mut || forward(&ids, &padded)),
        };
        self.step()?.unstage();
        match result {
            Ok(mut logits) => {
                if action == GraphAction::Warmup {
                    self.table(g)?.warmed(key);
                }
                logits.rows = rows;
                Ok(logits)
            }
            Err(e) => {
                log::warn!("CUDA graph {key:?} ({action:?}) failed, running its steps eagerly: {e}");
                self.table(g)?.failed(key);
                forward(token_ids, meta)
            }
        }
    }

    fn table<'a>(
        &self,
        g: &'a GraphRuntime,
    ) -> BackendResult<std::sync::MutexGuard<'a, GraphTable<CapturedGraph>>> {
        g.table.lock().map_err(|_| device_err("graphs", "poisoned lock"))
    }

    /// Runs `f` with activations on the arena and the decode split fixed.
    fn on_arena(
        &self,
        g: &GraphRuntime,
        split: DecodeSplit,
        f: &mut dyn FnMut() -> BackendResult<CudaTensor>,
    ) -> BackendResult<CudaTensor> {
        if !g.arena.reset() {
            return Err(device_err(
                "graph arena",
                "a tensor of the last step is still alive",
            ));
        }
        self.step()?.graph_split = Some(split);
        g.arena_on.store(true, Ordering::Release);
        let out = f();
        g.arena_on.store(false, Ordering::Release);
        self.step()?.graph_split = None;
        out
    }

    fn capture(
        &self,
        g: &GraphRuntime,
        key: GraphKey,
        split: DecodeSplit,
        rows: usize,
        f: &mut dyn FnMut() -> BackendResult<CudaTensor>,
    ) -> BackendResult<CudaTensor> {
        let stream = self.device.stream();
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| device_err("graph capture", e))?;
        let out = self.on_arena(g, split, f);
        // Always end the capture, so the stream is usable again whatever happened.
        let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0));
        let (logits, cols) = {
            let out = out?;
            (out.ptr(&self.device), out.cols)
        };
        let graph = graph
            .map_err(|e| device_err("graph instantiate", e))?
            .ok_or_else(|| device_err("graph capture", "empty graph"))?;
        self.table(g)?
            .captured(key, CapturedGraph { graph, logits, cols });
        self.replay(g, key, rows)
    }

    fn replay(&self, g: &GraphRuntime, key: GraphKey, rows: usize) -> BackendResult<CudaTensor> {
        let table = self.table(g)?;
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
