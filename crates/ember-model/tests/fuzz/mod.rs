//! Mutation fuzzing of model files: a tiny valid GGUF file and Hugging Face folder are
//! corrupted one field at a time, truncated, and randomly overwritten; every case is loaded
//! into an engine that then generates, and none may panic, abort, hang or grow memory without
//! bound (the process runs under an address-space limit and a per-case watchdog).

pub mod gguf_writer;
pub mod hf_writer;
pub mod mutate;
pub mod run;

/// A small deterministic generator (splitmix64).
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        ember_core::sampler::splitmix64(self.0)
    }

    /// A uniform float in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// A uniform integer in [0, n) (0 when n is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}
