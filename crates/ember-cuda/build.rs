//! Compiles cuda/ember_kernels.cu into one fatbin (sm_90a, sm_80 + compute_80 PTX) when nvcc
//! is found, else embeds the amalgamated source for NVRTC at run time. Never fails for want of
//! CUDA; set EMBER_REQUIRE_FATBIN=1 to make a missing or failing nvcc an error, EMBER_FATBIN to a
//! fatbin compiled from the same sources to embed that one instead.

#[path = "src/kernel_build.rs"]
mod kernel_build;

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cuda_dir = manifest.join("../../cuda");
    println!("cargo::rerun-if-changed={}", cuda_dir.display());
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "VIRTUAL_ENV",
        "EMBER_REQUIRE_FATBIN",
        "EMBER_FATBIN",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    println!("cargo::rustc-check-cfg=cfg(ember_fatbin)");
    let require = std::env::var("EMBER_REQUIRE_FATBIN").is_ok_and(|v| v == "1");
    // A fatbin already compiled from these sources with cuda/nvcc_flags.txt (the kernel compile
    // check writes one), so a wheel build does not compile the module a second time.
    if let Some(prebuilt) = std::env::var_os("EMBER_FATBIN").filter(|p| !p.is_empty()) {
        println!("cargo::rerun-if-changed={}", Path::new(&prebuilt).display());
        std::fs::copy(&prebuilt, out_dir.join("ember_kernels.fatbin"))
            .unwrap_or_else(|e| panic!("EMBER_FATBIN={}: {e}", Path::new(&prebuilt).display()));
        println!("cargo::rustc-cfg=ember_fatbin");
        return;
    }
    let env = |k: &str| std::env::var(k).ok();
    let is_file = |p: &Path| p.is_file();
    let failure = match kernel_build::find_nvcc(&env, &is_file) {
        Some(nvcc) => match compile_fatbin(&nvcc, &cuda_dir, &out_dir) {
            Ok(()) => {
                println!("cargo::rustc-cfg=ember_fatbin");
                return;
            }
            Err(e) => format!(
                "nvcc ({}) failed, falling back to NVRTC at run time: {e}",
                nvcc.display()
            ),
        },
        None => "nvcc not found ($NVCC, $CUDA_HOME/bin, PATH, $VIRTUAL_ENV wheels): kernels will be \
                 compiled with NVRTC at run time"
            .to_string(),
    };
    if require {
        panic!("EMBER_REQUIRE_FATBIN=1: {failure}");
    }
    println!("cargo::warning={failure}");
    let source = kernel_build::amalgamate(&cuda_dir, "ember_kernels.cu").expect("read cuda/ sources");
    std::fs::write(out_dir.join("ember_kernels.cu"), source).expect("write OUT_DIR/ember_kernels.cu");
}

fn compile_fatbin(nvcc: &Path, cuda_dir: &Path, out_dir: &Path) -> Result<(), String> {
    let flags_text = std::fs::read_to_string(cuda_dir.join("nvcc_flags.txt")).map_err(|e| e.to_string())?;
    let output = Command::new(nvcc)
        .args(kernel_build::read_flags(&flags_text))
        .arg(cuda_dir.join("ember_kernels.cu"))
        .arg("-o")
        .arg(out_dir.join("ember_kernels.fatbin"))
        .output()
        .map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(stderr.lines().take(20).collect::<Vec<_>>().join(" | "))
    }
}
