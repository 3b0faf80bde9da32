//! The kernel module: the embedded fatbin when build.rs found nvcc, else the embedded source
//! compiled by NVRTC for the device's architecture (cached on disk, see [`crate::nvrtc_cache`]).

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaModule};
use cudarc::nvrtc::Ptx;

#[cfg(ember_fatbin)]
const FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ember_kernels.fatbin"));
#[cfg(not(ember_fatbin))]
const SOURCE: &str = include_str!(concat!(env!("OUT_DIR"), "/ember_kernels.cu"));

/// How the kernels were built into this binary ("fatbin" or "nvrtc").
pub const KERNEL_IMAGE_KIND: &str = if cfg!(ember_fatbin) { "fatbin" } else { "nvrtc" };

/// Loads every kernel of `cuda/` into `ctx`.
pub fn load_kernels(ctx: &Arc<CudaContext>) -> Result<Arc<CudaModule>, String> {
    #[cfg(ember_fatbin)]
    let image = Ptx::from_binary(FATBIN.to_vec());
    #[cfg(not(ember_fatbin))]
    let image = {
        let (major, minor) = ctx.compute_capability().map_err(|e| format!("{e:?}"))?;
        Ptx::from_src(crate::nvrtc_cache::compile_cached(
            SOURCE,
            &crate::nvrtc_cache::arch_name(major, minor),
        )?)
    };
    ctx.load_module(image)
        .map_err(|e| format!("loading the {KERNEL_IMAGE_KIND} kernels: {e:?}"))
}
