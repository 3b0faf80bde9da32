//! The current step's inputs on the device: packed on the host into one pinned buffer
//! ([`crate::step_buffer`]) and copied with one host-to-device transfer per step. Operations
//! find their metadata there by the identity of the host slice they are handed; anything else
//! (direct calls outside a step) is uploaded on its own.

use cudarc::driver::{CudaSlice, PinnedHostSlice};
use ember_core::{BackendResult, StepMetadata};

use crate::device::{device_err, Device};
use crate::step_buffer::{pack_step, Section, StepLayout};

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

/// The pinned staging buffer, its device twin, and what the current step put there.
#[derive(Default)]
pub struct StepInputs {
    pinned: Option<PinnedHostSlice<u32>>,
    device: Option<CudaSlice<u32>>,
    layout: StepLayout,
    keys: Vec<(HostKey, Section)>,
}

impl StepInputs {
    /// Packs and uploads the step (one copy), growing the buffers to a power of two.
    pub fn begin(&mut self, device: &Device, token_ids: &[u32], meta: &StepMetadata) -> BackendResult<()> {
        let needed = StepLayout::new(
            meta.num_tokens(),
            meta.num_seqs(),
            meta.max_blocks_per_seq,
            meta.logits_indices.len(),
        )
        .total_words
        .max(4);
        if self.pinned.as_ref().is_none_or(|p| p.len() < needed) {
            let words = needed.next_power_of_two();
            // SAFETY: the buffer is fully written by `pack_step` before it is read.
            let pinned = unsafe { device.ctx().alloc_pinned::<u32>(words) }
                .map_err(|e| device_err("pinned buffer", e))?;
            self.pinned = Some(pinned);
            self.device = Some(device.alloc::<u32>(words, "step inputs")?);
        }
        let (Some(pinned), Some(dev)) = (self.pinned.as_mut(), self.device.as_mut()) else {
            return Err(device_err("step inputs", "buffers missing"));
        };
        let host = pinned
            .as_mut_slice()
            .map_err(|e| device_err("pinned buffer", e))?;
        let layout = pack_step(token_ids, meta, meta.num_seqs(), host)
            .ok_or_else(|| device_err("step inputs", "metadata does not match the token ids"))?;
        device
            .stream()
            .memcpy_htod(pinned, dev)
            .map_err(|e| device_err("step inputs copy", e))?;
        self.layout = layout;
        self.keys = vec![
            (HostKey::of(token_ids), layout.input_ids),
            (HostKey::of(&meta.positions), layout.positions),
            (HostKey::of(&meta.slot_mapping), layout.slot_mapping),
            (HostKey::of(&meta.query_start_loc), layout.query_start_loc),
            (HostKey::of(&meta.seq_lens), layout.seq_lens),
            (HostKey::of(&meta.block_tables), layout.block_tables),
            (HostKey::of(&meta.logits_indices), layout.logits_indices),
        ];
        Ok(())
    }

    /// `host` on the device: the step buffer's copy when `host` is one of the step's slices.
    pub fn words(&self, device: &Device, host: &[u32], what: &str) -> BackendResult<DeviceWords> {
        let key = HostKey::of(host);
        if let (Some(dev), Some((_, section))) = (&self.device, self.keys.iter().find(|(k, _)| *k == key)) {
            return Ok(DeviceWords::Step(device.ptr(dev) + section.byte_offset() as u64));
        }
        Ok(DeviceWords::Owned(device.upload(host, what)?))
    }
}
