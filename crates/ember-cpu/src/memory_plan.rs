//! How much memory the CPU KV cache takes when the engine does not say: enough for a laptop
//! user not to be surprised (1 GiB, or one full-length sequence when a model needs more), and
//! never more than a quarter of the memory available at start.

/// The KV-cache budget by default, unless one full-length sequence needs more.
pub const DEFAULT_KV_CACHE_BYTES: u64 = 1 << 30;
/// Most of the currently available memory the default KV-cache budget takes.
pub const DEFAULT_KV_CACHE_FRACTION: f64 = 0.25;
/// Memory assumed available when the OS does not say.
const UNKNOWN_AVAILABLE_BYTES: u64 = 16 << 30;

/// Bytes of memory the OS reports as available (`MemAvailable`), when it can be read.
pub fn available_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The default KV-cache size: [`DEFAULT_KV_CACHE_BYTES`], or more when one sequence of the full
/// context (`full_context_bytes`) needs it, but at most a quarter of `available` (unknown: taken
/// as 16 GiB) and at least one block (`block_bytes`).
pub fn default_kv_cache_bytes(available: Option<u64>, full_context_bytes: u64, block_bytes: u64) -> u64 {
    let available = available.unwrap_or(UNKNOWN_AVAILABLE_BYTES);
    let cap = (available as f64 * DEFAULT_KV_CACHE_FRACTION) as u64;
    DEFAULT_KV_CACHE_BYTES
        .max(full_context_bytes)
        .min(cap)
        .max(block_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_kv_cache_fits_one_full_context_within_a_quarter_of_memory() {
        let gib = 1u64 << 30;
        // The default model (23 KB per token in f16, 8192 tokens): the 1 GiB default.
        assert_eq!(default_kv_cache_bytes(Some(16 * gib), 188 << 20, 1 << 20), gib);
        // A 7B model whose full context needs 2 GiB gets it, if a quarter of memory allows.
        assert_eq!(default_kv_cache_bytes(Some(16 * gib), 2 * gib, 1 << 20), 2 * gib);
        assert_eq!(default_kv_cache_bytes(Some(4 * gib), 2 * gib, 1 << 20), gib);
        // Little memory: a quarter of it, but never less than one block.
        assert_eq!(default_kv_cache_bytes(Some(gib), 188 << 20, 1 << 20), gib / 4);
        assert_eq!(default_kv_cache_bytes(Some(1 << 20), 188 << 20, 1 << 20), 1 << 20);
        assert_eq!(default_kv_cache_bytes(None, 188 << 20, 1 << 20), gib);
    }
}
