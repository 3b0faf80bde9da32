//! The current step's inputs on the device: packed on the host into one pinned buffer
//! ([`crate::step_buffer`]) and copied with one host-to-device transfer per step, into a
//! growable buffer (eager steps) or the fixed buffer of the graph path (its addresses are
//! baked into the captured graphs). Operations find their metadata there by the identity of
//! the host slice they are handed; anything else (direct calls outside a step) is uploaded
//! on its own.

use cudarc::driver::{result, CudaSlice, PinnedHostSlice};
use ember_core::{BackendResult, StepMetadata};

use crate::device::{device_err, Device};
use crate::launch::DecodeSplit;
use crate::step_buffer::{pack_step, StepLayout};

/// Host slices of the step, remembered by address and length.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct HostKey(usize, usize);

impl HostKey {
    fn of(s: &[u32]) -> Self {
        Self(s.as_ptr() as usize, s.len())
    }
}

/// A device array of `u32`: inside the step buffer, or uploaded for one call.
pub enum DeviceWords {
    /// Address inside the step buffer.
    Step(u64),
    /// A buffer of its own.
    Owned(CudaSlice<u32>),
}

impl DeviceWords {
    /// The device address.
    pub fn ptr(&self, device: &Device) -> u64 {
        match self {
            Self::Step(p) => *p,
            Self::Owned(s) => device.ptr(s),
        }
    }
}

/// The pinned staging buffer, the eager device twin, and what the current step put where.
#[derive(Default)]
pub struct StepInputs {
    pinned: Option<PinnedHostSlice<u32>>,
    device: Option<CudaSlice<u32>>,
    keys: Vec<(HostKey, u64)>,
    staged: bool,
    /// The decode split fixed by the graph being warmed up or captured (`None`: eager, the
    /// split follows the step's longest context).
    pub graph_split: Option<DecodeSplit>,
}

/// Words the packed step needs.
pub fn step_words(meta: &StepMetadata) -> usize {
    StepLayout::new(
        meta.num_tokens(),
        meta.num_seqs(),
        meta.max_blocks_per_seq,
        meta.logits_indices.len(),
    )
    .total_words
    .max(4)
}

impl StepInputs {
    /// Packs and uploads an eager step into the growable buffer, unless the graph path
    /// already staged exactly these inputs ([`Self::stage`]).
    pub fn begin(&mut self, device: &Device, token_ids: &[u32], meta: &StepMetadata) -> BackendResult<()> {
        let staged = std::mem::take(&mut self.staged);
        if staged
            && self
                .keys
                .first()
                .is_some_and(|(k, _)| *k == HostKey::of(token_ids))
        {
            return Ok(());
        }
        let needed = step_words(meta);
        if self.device.as_ref().is_none_or(|d| d.len() < needed) {
            self.device = Some(device.alloc::<u32>(needed.next_power_of_two(), "step inputs")?);
        }
        let dst = self.device.as_ref().map_or(0, |d| device.ptr(d));
        self.upload(device, token_ids, meta, dst, needed)
    }

    /// Packs and uploads a graph step into `fixed` (`capacity` words); the forward pass that
    /// follows finds its inputs there.
    pub fn stage(
        &mut self,
        device: &Device,
        token_ids: &[u32],
        meta: &StepMetadata,
        fixed: u64,
        capacity: usize,
    ) -> BackendResult<()> {
        self.upload(device, token_ids, meta, fixed, capacity)?;
        self.staged = true;
        Ok(())
    }

    /// Ends a graph step: the next [`Self::begin`] uploads whatever it is given.
    pub fn unstage(&mut self) {
        self.staged = false;
    }

    fn upload(
        &mut self,
        device: &Device,
        token_ids: &[u32],
        meta: &StepMetadata,
        dst: u64,
        capacity: usize,
    ) -> BackendResult<()> {
        let needed = step_words(meta);
        if needed > capacity {
            return Err(device_err(
                "step inputs",
                format!("{needed} words, room for {capacity}"),
            ));
        }
        if self.pinned.as_ref().is_none_or(|p| p.len() < needed) {
            // SAFETY: the buffer is fully written by `pack_step` before it is read.
            let pinned = unsafe { device.ctx().alloc_pinned::<u32>(needed.next_power_of_two()) }
                .map_err(|e| device_err("pinned buffer", e))?;
            self.pinned = Some(pinned);
        }
        // The previous step's copy must be done before the pinned buffer is rewritten (steps
        // end with a device-to-host read, so this returns at once).
        device
            .stream()
            .synchronize()
            .map_err(|e| device_err("step inputs", e))?;
        let pinned = self
            .pinned
            .as_mut()
            .ok_or_else(|| device_err("step inputs", "no pinned buffer"))?;
        let host = pinned
            .as_mut_slice()
            .map_err(|e| device_err("pinned buffer", e))?;
        let layout = pack_step(token_ids, meta, meta.num_seqs(), host)
            .ok_or_else(|| device_err("step inputs", "metadata does not match the token ids"))?;
        // SAFETY: `dst` holds `capacity >= total_words` words on this device; the pinned source
        // stays alive and untouched until the synchronize above in the next step.
        unsafe { result::memcpy_htod_async(dst, &host[..layout.total_words], device.stream().cu_stream()) }
            .map_err(|e| device_err("step inputs copy", e))?;
        let at = |s: crate::step_buffer::Section| dst + s.byte_offset() as u64;
        self.keys = vec![
            (HostKey::of(token_ids), at(layout.input_ids)),
            (HostKey::of(&meta.positions), at(layout.positions)),
            (HostKey::of(&meta.slot_mapping), at(layout.slot_mapping)),
            (HostKey::of(&meta.query_start_loc), at(layout.query_start_loc)),
            (HostKey::of(&meta.seq_lens), at(layout.seq_lens)),
            (HostKey::of(&meta.block_tables), at(layout.block_tables)),
            (HostKey::of(&meta.logits_indices), at(layout.logits_indices)),
        ];
        Ok(())
    }

    /// `host` on the device: the step buffer's copy when `host` is one of the step's slices.
    pub fn words(&self, device: &Device, host: &[u32], what: &str) -> BackendResult<DeviceWords> {
        let key = HostKey::of(host);
        if let Some((_, ptr)) = self.keys.iter().find(|(k, _)| *k == key) {
            return Ok(DeviceWords::Step(*ptr));
        }
        Ok(DeviceWords::Owned(device.upload(host, what)?))
    }
}
