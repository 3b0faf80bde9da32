//! How much memory the CPU KV cache takes when the engine does not say: a fraction of the
//! memory available at start, capped.

/// Most KV-cache memory the CPU backend takes by default.
pub const DEFAULT_KV_CACHE_CAP_BYTES: u64 = 4 << 30;
/// Fraction of currently available memory the CPU backend takes by default (before the cap).
pub const DEFAULT_KV_CACHE_FRACTION: f64 = 0.25;

/// Bytes of memory the OS reports as available (`MemAvailable`), when it can be read.
pub fn available_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The default KV-cache size for `available` bytes of free memory.
pub fn default_kv_cache_bytes(available: Option<u64>) -> u64 {
    let available = available.unwrap_or(4 * DEFAULT_KV_CACHE_CAP_BYTES);
    ((available as f64 * DEFAULT_KV_CACHE_FRACTION) as u64).min(DEFAULT_KV_CACHE_CAP_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_kv_cache_is_a_capped_fraction() {
        assert_eq!(default_kv_cache_bytes(Some(1 << 30)), 1 << 28);
        assert_eq!(default_kv_cache_bytes(Some(1 << 40)), DEFAULT_KV_CACHE_CAP_BYTES);
        assert_eq!(default_kv_cache_bytes(None), DEFAULT_KV_CACHE_CAP_BYTES);
    }
}
