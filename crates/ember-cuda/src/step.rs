//! [`CudaStep`], the CUDA backend's handle of one step: the step's inputs packed on the host
//! into one pinned buffer ([`crate::step_buffer`]) and sent with one host-to-device copy, the
//! device address of every input section, and where the step's activations come from (the
//! stream-ordered allocator, or the fixed arena of a CUDA graph being warmed up or captured,
//! with the decode split that graph bakes in). Operations take the handle; nothing is found
//! by looking up host pointers, and no backend-wide mode changes between steps.

use std::sync::Arc;

use cudarc::driver::{result, CudaSlice, PinnedHostSlice};
use ember_core::{BackendError, BackendResult, StepBatch};

use crate::arena::ArenaHandle;
use crate::device::Device;
use crate::error::device_err;
use crate::kernel_args::DevPtr;
use crate::launch::DecodeSplit;
use crate::step_buffer::{pack_step, Section, StepLayout};
use crate::tensor::{CudaTensor, Scratch, TensorData};

/// Device addresses of the step's input sections (`u32` arrays; `slot_mapping` read as `i32`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepAddrs {
    /// Token ids; `[num_tokens]`.
    pub input_ids: DevPtr,
    /// Positions; `[num_tokens]`.
    pub positions: DevPtr,
    /// Cache slots, -1 for padding rows; `[num_tokens]`.
    pub slot_mapping: DevPtr,
    /// Row offsets; `[num_seqs + 1]`.
    pub query_start_loc: DevPtr,
    /// Context lengths; `[num_seqs]`.
    pub seq_lens: DevPtr,
    /// Block tables; `[num_seqs * max_blocks_per_seq]`.
    pub block_tables: DevPtr,
    /// Rows to sample; `[num_logits]`.
    pub logits_indices: DevPtr,
}

impl StepAddrs {
    fn of(base: u64, layout: &StepLayout) -> Self {
        let at = |s: Section| DevPtr(base + s.byte_offset() as u64);
        Self {
            input_ids: at(layout.input_ids),
            positions: at(layout.positions),
            slot_mapping: at(layout.slot_mapping),
            query_start_loc: at(layout.query_start_loc),
            seq_lens: at(layout.seq_lens),
            block_tables: at(layout.block_tables),
            logits_indices: at(layout.logits_indices),
        }
    }
}

/// One `u32` section of the step: the host copy (for checks) and the device array kernels read.
pub struct StepIds<'a> {
    /// Host copy.
    pub host: &'a [u32],
    /// Device address of the same array.
    pub device: DevPtr,
}

/// One step on the device: its host inputs (for checks and launch geometry), their device
/// addresses, and its allocation rules.
pub struct CudaStep {
    pub(crate) batch: StepBatch,
    pub(crate) addrs: StepAddrs,
    /// Activations come from this arena (graph warm-up and capture) instead of the allocator.
    arena: Option<ArenaHandle>,
    /// The decode split a graph fixes for every context of its bucket; `None`: computed from
    /// the step's longest context.
    pub(crate) decode_split: Option<DecodeSplit>,
    /// Keeps an eager step's input buffer alive while the step is (graph steps use a buffer
    /// the graph runtime owns).
    _inputs: Option<Arc<CudaSlice<u32>>>,
}

impl CudaStep {
    /// The step's token ids, as gather indices (embedding lookup).
    pub(crate) fn input_ids(&self) -> StepIds<'_> {
        StepIds {
            host: &self.batch.input_ids,
            device: self.addrs.input_ids,
        }
    }

    /// The rows whose logits the step needs, as gather indices.
    pub(crate) fn logits_indices(&self) -> StepIds<'_> {
        StepIds {
            host: &self.batch.logits_indices,
            device: self.addrs.logits_indices,
        }
    }

    /// A new `[rows, cols]` bf16 activation for this step.
    pub(crate) fn tensor(
        &self,
        device: &Device,
        rows: usize,
        cols: usize,
        what: &str,
    ) -> BackendResult<CudaTensor> {
        let data = match &self.arena {
            Some(arena) => TensorData::Arena(arena_region(arena, rows * cols * 2, what)?),
            None => TensorData::Owned(device.alloc_uninit::<u16>(rows * cols, what)?),
        };
        Ok(CudaTensor { data, rows, cols })
    }

    /// `len` f32 of scratch for this step, placed like [`Self::tensor`].
    pub(crate) fn scratch_f32(&self, device: &Device, len: usize, what: &str) -> BackendResult<Scratch> {
        Ok(match &self.arena {
            Some(arena) => Scratch::Arena(arena_region(arena, len * 4, what)?),
            None => Scratch::Owned(device.alloc_uninit::<f32>(len, what)?),
        })
    }
}

fn arena_region(arena: &ArenaHandle, bytes: usize, what: &str) -> BackendResult<crate::arena::ArenaRegion> {
    arena.alloc(bytes).ok_or_else(|| {
        let (used, capacity) = arena.usage();
        BackendError::OutOfMemory {
            what: format!("{what} (graph arena)"),
            requested_bytes: bytes as u64,
            available_bytes: (capacity - used) as u64,
        }
    })
}

/// Words the packed step needs.
pub fn step_words(batch: &StepBatch) -> usize {
    StepLayout::new(
        batch.num_tokens(),
        batch.num_seqs(),
        batch.max_blocks_per_seq,
        batch.logits_indices.len(),
    )
    .total_words
    .max(4)
}

/// The pinned staging buffer and the eager steps' device buffer, reused from step to step.
#[derive(Default)]
pub(crate) struct StepStaging {
    pinned: Option<PinnedHostSlice<u32>>,
    eager: Option<Arc<CudaSlice<u32>>>,
}

impl StepStaging {
    /// Uploads `batch` into the reusable device buffer (a fresh one when it is too small or a
    /// live step still reads it) and returns the eager step.
    pub fn eager(&mut self, device: &Device, batch: StepBatch) -> BackendResult<CudaStep> {
        let needed = step_words(&batch);
        let reusable = self
            .eager
            .as_mut()
            .filter(|d| d.len() >= needed)
            .is_some_and(|d| Arc::get_mut(d).is_some());
        if !reusable {
            let buffer = device.alloc_uninit::<u32>(needed.next_power_of_two(), "step inputs")?;
            self.eager = Some(Arc::new(buffer));
        }
        let buffer = self
            .eager
            .clone()
            .ok_or_else(|| device_err("step inputs", "no device buffer"))?;
        let addrs = self.upload(device, &batch, device.ptr(&buffer), buffer.len())?;
        Ok(CudaStep {
            batch,
            addrs,
            arena: None,
            decode_split: None,
            _inputs: Some(buffer),
        })
    }

    /// Uploads a graph step into `fixed` (`capacity` words, owned by the graph runtime, whose
    /// addresses the captured graphs read); its activations come from `arena` when given.
    pub fn fixed(
        &mut self,
        device: &Device,
        batch: StepBatch,
        fixed: u64,
        capacity: usize,
        arena: Option<ArenaHandle>,
        decode_split: DecodeSplit,
    ) -> BackendResult<CudaStep> {
        let addrs = self.upload(device, &batch, fixed, capacity)?;
        Ok(CudaStep {
            batch,
            addrs,
            arena,
            decode_split: Some(decode_split),
            _inputs: None,
        })
    }

    fn upload(
        &mut self,
        device: &Device,
        batch: &StepBatch,
        dst: u64,
        capacity: usize,
    ) -> BackendResult<StepAddrs> {
        let needed = step_words(batch);
        if needed > capacity {
            return Err(device_err(
                "step inputs",
                format!("{needed} words, room for {capacity}"),
            ));
        }
        // The previous step's copy must be done before the pinned buffer is rewritten or
        // replaced (freed while the copy still reads it); steps end with a device-to-host read,
        // so this returns at once.
        device
            .stream()
            .synchronize()
            .map_err(|e| device_err("step inputs", e))?;
        if self.pinned.as_ref().is_none_or(|p| p.len() < needed) {
            // SAFETY: the buffer is fully written by `pack_step` before it is read.
            let pinned = unsafe { device.ctx().alloc_pinned::<u32>(needed.next_power_of_two()) }
                .map_err(|e| device_err("pinned buffer", e))?;
            self.pinned = Some(pinned);
        }
        let pinned = self
            .pinned
            .as_mut()
            .ok_or_else(|| device_err("step inputs", "no pinned buffer"))?;
        let host = pinned
            .as_mut_slice()
            .map_err(|e| device_err("pinned buffer", e))?;
        let layout = pack_step(batch, batch.num_seqs(), host)
            .ok_or_else(|| device_err("step inputs", "metadata does not match the token ids"))?;
        // SAFETY: `dst` holds `capacity >= total_words` words on this device; the pinned source
        // stays alive and untouched until the synchronize above in the next step.
        unsafe { result::memcpy_htod_async(dst, &host[..layout.total_words], device.stream().cu_stream()) }
            .map_err(|e| device_err("step inputs copy", e))?;
        Ok(StepAddrs::of(dst, &layout))
    }
}
