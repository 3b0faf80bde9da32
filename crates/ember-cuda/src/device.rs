//! One CUDA device: context, stream, the kernels (typed launchers), cuBLAS, and memory.

use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::driver::{sys, CudaContext, CudaSlice, CudaStream, DevicePtr, DeviceRepr, ValidAsZeroBits};
use ember_core::{BackendError, BackendResult};

use crate::error::device_err;
use crate::kernel_args::DevPtr;
use crate::kernels::Kernels;

/// The device a [`crate::CudaBackend`] runs on.
pub struct Device {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    blas: CudaBlas,
    num_sms: usize,
    /// cuBLAS's workspace, set once for eager and captured GEMMs alike: captured GEMMs must not
    /// allocate, and the same workspace gives both the same algorithm choice (same sums).
    /// Declared after `blas`, so the handle is destroyed first.
    blas_workspace: CudaSlice<u8>,
}

/// cuBLAS workspace bytes.
const BLAS_WORKSPACE_BYTES: usize = 32 << 20;

impl Device {
    /// Opens device `ordinal`, loads the kernels and creates the stream and cuBLAS handle.
    /// A panic inside cudarc (a library or symbol the probe did not foresee) is an error.
    pub fn open(ordinal: usize) -> BackendResult<Self> {
        crate::probe::probe().map_err(BackendError::Device)?;
        std::panic::catch_unwind(|| Self::open_checked(ordinal)).unwrap_or_else(|payload| {
            Err(BackendError::Device(format!(
                "opening CUDA device {ordinal} failed inside cudarc: {}",
                ember_core::panic_message(payload.as_ref())
            )))
        })
    }

    fn open_checked(ordinal: usize) -> BackendResult<Self> {
        let ctx = CudaContext::new(ordinal).map_err(|e| device_err("cuda context", e))?;
        // One stream, in-order: cudarc's per-allocation event tracking is unnecessary, and its
        // events would break CUDA-graph capture.
        // SAFETY: no allocation exists yet, and all work goes to the single stream below.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| device_err("cuda stream", e))?;
        let module = crate::module::load_kernels(&ctx).map_err(BackendError::Device)?;
        let kernels = Kernels::load(&module, stream.clone()).map_err(BackendError::Device)?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| device_err("cublas", e))?;
        let num_sms = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| device_err("device attribute", e))? as usize;
        keep_pool_memory(&ctx)?;
        let blas_workspace = stream
            .alloc_zeros::<u8>(BLAS_WORKSPACE_BYTES)
            .map_err(|e| device_err("cuBLAS workspace", e))?;
        let device = Self {
            ctx,
            stream,
            kernels,
            blas,
            num_sms,
            blas_workspace,
        };
        device.setblas_workspace(&device.blas_workspace)?;
        Ok(device)
    }

    /// The context.
    pub fn ctx(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every operation runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The kernels, launched on the stream.
    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    /// cuBLAS bound to the stream.
    pub fn blas(&self) -> &CudaBlas {
        &self.blas
    }

    /// Streaming multiprocessors.
    pub fn num_sms(&self) -> usize {
        self.num_sms
    }

    /// `(free, total)` device memory in bytes.
    pub fn mem_info(&self) -> BackendResult<(u64, u64)> {
        let (free, total) = self
            .ctx
            .mem_get_info()
            .map_err(|e| device_err("memory info", e))?;
        Ok((free as u64, total as u64))
    }

    /// Allocates `len` zeroed elements (weights, the KV cache, buffers made once);
    /// out-of-memory becomes [`BackendError::OutOfMemory`].
    pub fn alloc<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        len: usize,
        what: &str,
    ) -> BackendResult<CudaSlice<T>> {
        self.stream
            .alloc_zeros::<T>(len.max(1))
            .map_err(|e| self.alloc_error(e, len * std::mem::size_of::<T>(), what))
    }

    /// Allocates `len` elements left undefined, for buffers whose every element is written
    /// before it is read (a step's activations and inputs): no memset per allocation.
    pub fn alloc_uninit<T: DeviceRepr>(&self, len: usize, what: &str) -> BackendResult<CudaSlice<T>> {
        // SAFETY: callers pass only buffers that the op making them writes in full (an
        // activation is its op's output; step inputs are copied in) before anything reads them.
        unsafe { self.stream.alloc::<T>(len.max(1)) }
            .map_err(|e| self.alloc_error(e, len * std::mem::size_of::<T>(), what))
    }

    fn alloc_error(&self, e: impl std::fmt::Debug, requested_bytes: usize, what: &str) -> BackendError {
        let (free, _) = self.mem_info().unwrap_or((0, 0));
        if format!("{e:?}").contains("OUT_OF_MEMORY") {
            BackendError::OutOfMemory {
                what: what.to_string(),
                requested_bytes: requested_bytes as u64,
                available_bytes: free,
            }
        } else {
            device_err(what, e)
        }
    }

    /// Copies host data into a new device buffer.
    pub fn upload<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        host: &[T],
        what: &str,
    ) -> BackendResult<CudaSlice<T>> {
        let mut dst = self.alloc_uninit::<T>(host.len(), what)?;
        self.stream
            .memcpy_htod(host, &mut dst)
            .map_err(|e| device_err(what, e))?;
        Ok(dst)
    }

    /// Copies a device buffer to the host (synchronizing the stream).
    pub fn download<T: DeviceRepr>(&self, src: &CudaSlice<T>) -> BackendResult<Vec<T>> {
        self.stream
            .clone_dtoh(src)
            .map_err(|e| device_err("device to host copy", e))
    }

    /// Copies `len` elements at device address `ptr` to the host (synchronizing the stream).
    pub fn download_raw<T: DeviceRepr + Default + Clone>(
        &self,
        ptr: u64,
        len: usize,
    ) -> BackendResult<Vec<T>> {
        let mut host = vec![T::default(); len];
        // SAFETY: the caller passes an address of at least `len` elements on this device; the
        // host buffer outlives the copy because the stream is synchronized before returning.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(&mut host, ptr, self.stream.cu_stream()) }
            .map_err(|e| device_err("device to host copy", e))?;
        self.stream
            .synchronize()
            .map_err(|e| device_err("device to host copy", e))?;
        Ok(host)
    }

    /// Gives cuBLAS `workspace` for its GEMMs (graph capture must not allocate).
    pub fn setblas_workspace(&self, workspace: &CudaSlice<u8>) -> BackendResult<()> {
        // SAFETY: the workspace is a live device buffer the caller keeps for the handle's life.
        unsafe {
            cudarc::cublas::sys::cublasSetWorkspace_v2(
                *self.blas.handle(),
                self.ptr(workspace) as *mut _,
                workspace.len(),
            )
        }
        .result()
        .map_err(|e| device_err("cublasSetWorkspace", e))
    }

    /// The raw address of a buffer.
    pub fn ptr<T>(&self, slice: &CudaSlice<T>) -> u64 {
        slice.device_ptr(&self.stream).0
    }

    /// The address of a buffer as a kernel argument.
    pub fn dev<T>(&self, slice: &CudaSlice<T>) -> DevPtr {
        DevPtr(self.ptr(slice))
    }
}

/// Sets the release threshold of the device's default memory pool to the maximum, so memory a
/// step frees stays in the pool for the next step instead of going back to the driver at every
/// synchronize (the default threshold, 0, makes each step's activations a fresh driver
/// allocation).
fn keep_pool_memory(ctx: &CudaContext) -> BackendResult<()> {
    if !ctx.has_async_alloc() {
        return Ok(());
    }
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold: u64 = u64::MAX;
    // SAFETY: `pool` receives the device's default pool handle; the attribute value is a u64
    // read by the driver during the call.
    unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device())
            .result()
            .map_err(|e| device_err("default memory pool", e))?;
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
        .result()
        .map_err(|e| device_err("memory pool release threshold", e))
    }
}
