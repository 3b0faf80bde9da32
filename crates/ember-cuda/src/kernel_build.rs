//! Kernel build helpers shared by `build.rs` (which includes this file with `#[path]`) and
//! the crate's tests: finding nvcc, the nvcc flags, and the one-file kernel source for NVRTC.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Candidate nvcc paths in priority order: `$NVCC`, `$CUDA_HOME/bin`, `$CUDA_PATH/bin`, each
/// `PATH` entry, the CUDA wheel inside `$VIRTUAL_ENV` (`lib/python3.*/site-packages/nvidia/cu13/bin`),
/// then `/usr/local/cuda/bin`.
pub fn nvcc_candidates(env: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(nvcc) = env("NVCC").filter(|s| !s.is_empty()) {
        out.push(PathBuf::from(nvcc));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = env(var).filter(|s| !s.is_empty()) {
            out.push(Path::new(&home).join("bin").join("nvcc"));
        }
    }
    if let Some(path) = env("PATH") {
        out.extend(std::env::split_paths(&path).map(|dir| dir.join("nvcc")));
    }
    if let Some(venv) = env("VIRTUAL_ENV").filter(|s| !s.is_empty()) {
        out.extend(wheel_nvcc_candidates(Path::new(&venv)));
    }
    out.push(PathBuf::from("/usr/local/cuda/bin/nvcc"));
    out
}

/// nvcc paths of the pip CUDA 13 wheels under a Python prefix (a virtual environment).
pub fn wheel_nvcc_candidates(prefix: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(prefix.join("lib")) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path().join("site-packages/nvidia/cu13/bin/nvcc"))
        .collect();
    found.sort();
    found
}

/// The first candidate that `is_file` accepts.
pub fn find_nvcc(env: &dyn Fn(&str) -> Option<String>, is_file: &dyn Fn(&Path) -> bool) -> Option<PathBuf> {
    nvcc_candidates(env).into_iter().find(|p| is_file(p))
}

/// nvcc flags from `cuda/nvcc_flags.txt` (one per line; the compile-check script reads the same).
pub fn read_flags(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// `file` with every local `#include "..."` inlined once (recursively), so NVRTC can compile
/// the module from one string. System includes (`<...>`) are kept.
pub fn amalgamate(dir: &Path, file: &str) -> std::io::Result<String> {
    let mut seen = HashSet::new();
    let mut out = String::new();
    inline_file(dir, file, &mut seen, &mut out)?;
    Ok(out)
}

fn inline_file(dir: &Path, file: &str, seen: &mut HashSet<String>, out: &mut String) -> std::io::Result<()> {
    if !seen.insert(file.to_string()) {
        return Ok(());
    }
    let text = std::fs::read_to_string(dir.join(file))?;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed == "#pragma once" {
            continue;
        }
        let local = trimmed
            .strip_prefix("#include \"")
            .and_then(|rest| rest.strip_suffix('"'));
        match local {
            Some(name) => inline_file(dir, name, seen, out)?,
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| owned.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn nvcc_is_searched_in_priority_order() {
        let env = env_of(&[("NVCC", "/x/nvcc"), ("CUDA_HOME", "/cuda"), ("PATH", "/a:/b")]);
        let c = nvcc_candidates(&env);
        assert_eq!(c[0], PathBuf::from("/x/nvcc"));
        assert_eq!(c[1], PathBuf::from("/cuda/bin/nvcc"));
        assert_eq!(&c[2..4], &[PathBuf::from("/a/nvcc"), PathBuf::from("/b/nvcc")]);
        assert_eq!(c.last(), Some(&PathBuf::from("/usr/local/cuda/bin/nvcc")));
        let found = find_nvcc(&env, &|p: &Path| p == Path::new("/b/nvcc"));
        assert_eq!(found, Some(PathBuf::from("/b/nvcc")));
        assert_eq!(find_nvcc(&env_of(&[]), &|_: &Path| false), None);
    }

    #[test]
    fn wheel_layout_is_found_in_a_virtual_env() {
        let venv = std::env::temp_dir().join(format!("ember-wheel-{}", std::process::id()));
        let bin = venv.join("lib/python3.11/site-packages/nvidia/cu13/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("nvcc"), "").unwrap();
        let env = env_of(&[("VIRTUAL_ENV", venv.to_str().unwrap())]);
        assert_eq!(find_nvcc(&env, &|p: &Path| p.is_file()), Some(bin.join("nvcc")));
        std::fs::remove_dir_all(&venv).unwrap();
    }

    #[test]
    fn flags_and_amalgamation_match_the_cuda_folder() {
        let cuda = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../cuda");
        let flags = read_flags(&std::fs::read_to_string(cuda.join("nvcc_flags.txt")).unwrap());
        assert!(flags.contains(&"arch=compute_90a,code=sm_90a".to_string()));
        assert!(flags.contains(&"arch=compute_80,code=[sm_80,compute_80]".to_string()));
        let source = amalgamate(&cuda, "ember_kernels.cu").unwrap();
        assert!(!source.contains("#include \""), "local includes are inlined");
        assert_eq!(
            source.matches("ember_warp_sum(T value)").count(),
            1,
            "headers inlined once"
        );
        for entry in [
            "EMBER_DECODE_ENTRIES(bf16, bf16)",
            "EMBER_PREFILL_ENTRIES(f16, f16)",
            "ember_sample_f32",
        ] {
            assert!(source.contains(entry), "{entry}");
        }
    }
}
