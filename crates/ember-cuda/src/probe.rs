//! Is a usable CUDA device here? Probed without ever panicking: every library cudarc will
//! load (the driver, cuBLAS, and NVRTC when the kernels are compiled at run time) is opened and
//! version-checked first ([`crate::libraries`]; cudarc's dynamic loading panics when one is
//! missing), and the driver calls run under `catch_unwind`.

use std::sync::OnceLock;

use cudarc::driver::CudaContext;

use crate::libraries::{check_installed, CUBLAS, DRIVER, NVRTC};

static PROBE: OnceLock<Result<usize, String>> = OnceLock::new();

/// Number of CUDA devices, or why none is usable. Computed once per process.
pub fn probe() -> Result<usize, String> {
    PROBE.get_or_init(probe_uncached).clone()
}

/// True when at least one CUDA device is usable. Never panics.
pub fn is_available() -> bool {
    probe().is_ok()
}

fn probe_uncached() -> Result<usize, String> {
    check_libraries()?;
    let count = std::panic::catch_unwind(|| CudaContext::device_count().map_err(|e| format!("{e:?}")))
        .map_err(|_| "the CUDA driver library could not be initialized".to_string())??;
    if count <= 0 {
        return Err("the CUDA driver reports no devices".into());
    }
    Ok(count as usize)
}

/// The libraries this build loads, each present, of the right version and complete.
fn check_libraries() -> Result<(), String> {
    check_installed(&DRIVER)?;
    check_installed(&CUBLAS)?;
    if crate::module::KERNEL_IMAGE_KIND == "nvrtc" {
        check_installed(&NVRTC)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_answers_without_panicking() {
        // On this CPU-only CI machine the answer is "no"; on a GPU machine it is a count.
        match probe() {
            Ok(count) => assert!(count > 0),
            Err(reason) => {
                assert!(!reason.is_empty());
                assert!(!is_available());
            }
        }
        assert_eq!(probe(), probe());
    }
}
