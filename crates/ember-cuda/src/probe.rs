//! Is a usable CUDA device here? Probed without ever panicking: the driver library is
//! opened with `dlopen` first (cudarc's dynamic loading panics when it is missing), and the
//! driver calls run under `catch_unwind`.

use std::sync::OnceLock;

use cudarc::driver::CudaContext;

/// Names of the driver library, most specific first.
const LIBCUDA_NAMES: [&str; 2] = ["libcuda.so.1", "libcuda.so"];

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
    open_driver_library()?;
    let count = std::panic::catch_unwind(|| CudaContext::device_count().map_err(|e| format!("{e:?}")))
        .map_err(|_| "the CUDA driver library could not be initialized".to_string())??;
    if count <= 0 {
        return Err("the CUDA driver reports no devices".into());
    }
    Ok(count as usize)
}

/// Opens (and closes) the driver library; the error lists the names tried.
fn open_driver_library() -> Result<(), String> {
    for name in LIBCUDA_NAMES {
        // SAFETY: loading the NVIDIA driver library runs its initializers, which have no
        // preconditions; the handle is dropped at once (cudarc opens its own).
        if unsafe { libloading::Library::new(name) }.is_ok() {
            return Ok(());
        }
    }
    Err(format!(
        "no CUDA driver library ({} not found)",
        LIBCUDA_NAMES.join(", ")
    ))
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
