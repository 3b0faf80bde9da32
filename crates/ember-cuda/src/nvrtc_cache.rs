//! NVRTC fallback: compiles the embedded kernel source to PTX for one architecture and caches
//! it on disk under a key of (source hash, architecture), so only the first start pays.

use std::path::{Path, PathBuf};

/// NVRTC's virtual architecture for compute capability `major.minor` (`compute_90a` on Hopper,
/// whose arch-specific features the kernels may use).
#[cfg_attr(ember_fatbin, allow(dead_code))]
pub fn arch_name(major: i32, minor: i32) -> String {
    let suffix = if (major, minor) == (9, 0) { "a" } else { "" };
    format!("compute_{major}{minor}{suffix}")
}

/// FNV-1a hash of the source and architecture: stable across Rust releases, unlike `DefaultHasher`.
pub fn cache_key(source: &str, arch: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in source.bytes().chain([0u8]).chain(arch.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The cache file of `source` compiled for `arch` under `dir`.
pub fn cache_path(dir: &Path, source: &str, arch: &str) -> PathBuf {
    dir.join(format!(
        "ember-kernels-{:016x}-{arch}.ptx",
        cache_key(source, arch)
    ))
}

/// `$EMBER_CACHE/kernels`, else `$XDG_CACHE_HOME/ember/kernels`, else `~/.cache/ember/kernels`.
pub fn cache_dir(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(dir) = env("EMBER_CACHE").filter(|s| !s.is_empty()) {
        return Path::new(&dir).join("kernels");
    }
    let base = env("XDG_CACHE_HOME")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&env("HOME").unwrap_or_else(|| ".".into())).join(".cache"));
    base.join("ember").join("kernels")
}

/// PTX of `source` for `arch`, from the cache or compiled (and then cached; a failed write is
/// only logged). Never panics when libnvrtc is missing.
#[cfg_attr(ember_fatbin, allow(dead_code))]
pub fn compile_cached(source: &str, arch: &str) -> Result<String, String> {
    let path = cache_path(&cache_dir(&|k| std::env::var(k).ok()), source, arch);
    if let Ok(ptx) = std::fs::read_to_string(&path) {
        return Ok(ptx);
    }
    let options = cudarc::nvrtc::CompileOptions {
        options: vec![format!("--gpu-architecture={arch}"), "-std=c++17".into()],
        include_paths: include_paths(),
        ..Default::default()
    };
    let compiled = std::panic::catch_unwind(|| cudarc::nvrtc::compile_ptx_with_opts(source, options))
        .map_err(|_| "libnvrtc could not be loaded (install the CUDA 13.0 NVRTC library)".to_string())?
        .map_err(|e| format!("NVRTC failed for {arch}: {e:?}"))?;
    let ptx = compiled.to_src();
    let written = path
        .parent()
        .map(std::fs::create_dir_all)
        .transpose()
        .and_then(|_| std::fs::write(&path, &ptx));
    if let Err(e) = written {
        log::warn!("cannot cache compiled kernels at {}: {e}", path.display());
    }
    Ok(ptx)
}

/// Header directories for NVRTC: `$CUDA_HOME/include` when set.
#[cfg_attr(ember_fatbin, allow(dead_code))]
fn include_paths() -> Vec<String> {
    ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .map(|home| format!("{home}/include"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_keys_depend_on_source_and_arch() {
        assert_eq!(arch_name(9, 0), "compute_90a");
        assert_eq!(arch_name(8, 6), "compute_86");
        let dir = Path::new("/tmp/c");
        assert_ne!(
            cache_path(dir, "a", "compute_80"),
            cache_path(dir, "b", "compute_80")
        );
        assert_ne!(
            cache_path(dir, "a", "compute_80"),
            cache_path(dir, "a", "compute_90a")
        );
        assert_eq!(cache_key("x", "y"), cache_key("x", "y"));
        let env = |k: &str| (k == "EMBER_CACHE").then(|| "/e".to_string());
        assert_eq!(cache_dir(&env), PathBuf::from("/e/kernels"));
        let env = |k: &str| (k == "HOME").then(|| "/h".to_string());
        assert_eq!(cache_dir(&env), PathBuf::from("/h/.cache/ember/kernels"));
    }
}
