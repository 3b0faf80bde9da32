//! [`CudaBackend`]: `ember_core::Backend` on one CUDA device, bf16 activations and KV cache.

use std::collections::HashMap;
use std::sync::Mutex;

use cudarc::driver::CudaSlice;
use ember_core::{
    AttentionShape, Backend, BackendError, BackendResult, DeviceSampleRow, ForwardFn, KvCacheSpec, Rope,
    RopeStyle, StepMetadata, WeightView,
};

use crate::device::{device_err, Arg, Device};
use crate::graph_exec::GraphRuntime;
use crate::launch::{elementwise_geometry, row_geometry};
use crate::step_inputs::StepInputs;
use crate::tensor::{CudaKvCache, CudaMatrix, CudaTensor, CudaVector, Scratch, TensorData};
use crate::{attention, gemm, weights};

/// The CUDA backend (see the crate docs).
pub struct CudaBackend {
    pub(crate) device: Device,
    step: Mutex<StepInputs>,
    inv_freq: Mutex<HashMap<(usize, usize), CudaSlice<f32>>>,
    pub(crate) graphs: Option<GraphRuntime>,
}

fn shape_err(op: &str, detail: String) -> BackendError {
    BackendError::Device(format!("{op}: {detail}"))
}

impl CudaBackend {
    /// Opens CUDA device `ordinal` and loads the kernels.
    pub fn new(ordinal: usize) -> BackendResult<Self> {
        let device = Device::open(ordinal)?;
        let name = device.ctx().name().unwrap_or_else(|_| "unknown".into());
        log::info!(
            "CUDA device {ordinal}: {name}, {} SMs, kernels from the {}",
            device.num_sms(),
            crate::module::KERNEL_IMAGE_KIND
        );
        Ok(Self {
            device,
            step: Mutex::new(StepInputs::default()),
            inv_freq: Mutex::new(HashMap::new()),
            graphs: None,
        })
    }

    /// A new `[rows, cols]` activation: on the graph arena during graph warm-up and capture,
    /// else from the stream-ordered allocator.
    pub(crate) fn tensor(&self, rows: usize, cols: usize, what: &str) -> BackendResult<CudaTensor> {
        let data = match self.arena_region(rows * cols * 2, what)? {
            Some(region) => TensorData::Arena(region),
            None => TensorData::Owned(self.device.alloc::<u16>(rows * cols, what)?),
        };
        Ok(CudaTensor { data, rows, cols })
    }

    /// `len` f32 of scratch, placed like [`Self::tensor`].
    pub(crate) fn scratch_f32(&self, len: usize, what: &str) -> BackendResult<Scratch> {
        Ok(match self.arena_region(len * 4, what)? {
            Some(region) => Scratch::Arena(region),
            None => Scratch::Owned(self.device.alloc::<f32>(len, what)?),
        })
    }

    fn arena_region(&self, bytes: usize, what: &str) -> BackendResult<Option<crate::arena::ArenaRegion>> {
        match &self.graphs {
            Some(g) => g.region(bytes, what),
            None => Ok(None),
        }
    }

    pub(crate) fn step(&self) -> BackendResult<std::sync::MutexGuard<'_, StepInputs>> {
        self.step
            .lock()
            .map_err(|_| device_err("step inputs", "poisoned lock"))
    }

    fn add_rms_norm_launch(
        &self,
        out: &CudaTensor,
        residual: u64,
        x: u64,
        weight: &CudaVector,
        eps: f32,
    ) -> BackendResult<()> {
        if weight.len != out.cols {
            return Err(shape_err(
                "rms_norm",
                format!("weight has {} elements, rows have {}", weight.len, out.cols),
            ));
        }
        let d = &self.device;
        d.launch(
            "ember_add_rms_norm_bf16",
            row_geometry(out.rows, out.cols),
            &[
                Arg::Ptr(out.ptr(d)),
                Arg::Ptr(residual),
                Arg::Ptr(x),
                Arg::Ptr(d.ptr(&weight.data)),
                Arg::I32(out.cols as i32),
                Arg::F32(eps),
            ],
        )
    }

    fn same_shape(op: &str, a: &CudaTensor, b: &CudaTensor) -> BackendResult<()> {
        if (a.rows, a.cols) != (b.rows, b.cols) {
            return Err(shape_err(
                op,
                format!(
                    "shapes [{}, {}] and [{}, {}] differ",
                    a.rows, a.cols, b.rows, b.cols
                ),
            ));
        }
        Ok(())
    }

    fn gather(
        &self,
        table: u64,
        table_rows: usize,
        cols: usize,
        ids: &[u32],
        what: &str,
    ) -> BackendResult<CudaTensor> {
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= table_rows) {
            return Err(shape_err(
                what,
                format!("index {bad} out of range ({table_rows} rows)"),
            ));
        }
        let out = self.tensor(ids.len(), cols, what)?;
        let d = &self.device;
        let dev_ids = self.step()?.words(d, ids, what)?;
        d.launch(
            "ember_gather_rows_bf16",
            row_geometry(ids.len(), cols),
            &[
                Arg::Ptr(out.ptr(d)),
                Arg::Ptr(table),
                Arg::Ptr(dev_ids.ptr(d)),
                Arg::I32(ids.len() as i32),
                Arg::I32(cols as i32),
                Arg::I32(table_rows as i32),
            ],
        )?;
        Ok(out)
    }
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type Matrix = CudaMatrix;
    type Vector = CudaVector;
    type KvCache = CudaKvCache;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn begin_step(&self, token_ids: &[u32], meta: &StepMetadata) -> BackendResult<()> {
        self.step()?.begin(&self.device, token_ids, meta)
    }

    fn run_forward(
        &self,
        token_ids: &[u32],
        meta: &StepMetadata,
        forward: &mut ForwardFn<'_, CudaTensor>,
    ) -> BackendResult<CudaTensor> {
        self.graph_forward(token_ids, meta, forward)
    }

    fn sample_on_device(
        &self,
        logits: &CudaTensor,
        rows: &[DeviceSampleRow],
    ) -> BackendResult<Option<Vec<(u32, f32)>>> {
        crate::sampling::sample(self, logits, rows).map(Some)
    }

    fn load_matrix(&self, weight: &WeightView<'_>) -> BackendResult<CudaMatrix> {
        weights::load_matrix(&self.device, weight)
    }

    fn load_vector(&self, weight: &WeightView<'_>) -> BackendResult<CudaVector> {
        weights::load_vector(weight).and_then(|v| {
            Ok(CudaVector {
                len: v.len(),
                data: self.device.upload(&v, weight.name)?,
            })
        })
    }

    fn allocate_kv_cache(&self, spec: &KvCacheSpec) -> BackendResult<CudaKvCache> {
        if !crate::launch::HEAD_DIMS.contains(&spec.head_dim)
            || !crate::launch::BLOCK_SIZES.contains(&spec.block_size)
        {
            return Err(shape_err("allocate_kv_cache", format!("head_dim {} / block_size {} have no CUDA attention kernel (head_dim 64 or 128, block_size 16 or 32)", spec.head_dim, spec.block_size)));
        }
        let per_layer = spec.num_blocks * spec.block_size * spec.num_kv_heads * spec.head_dim;
        let mut keys = Vec::with_capacity(spec.num_layers);
        let mut values = Vec::with_capacity(spec.num_layers);
        for _ in 0..spec.num_layers {
            keys.push(self.device.alloc::<u16>(per_layer, "KV cache")?);
            values.push(self.device.alloc::<u16>(per_layer, "KV cache")?);
        }
        Ok(CudaKvCache {
            keys,
            values,
            spec: *spec,
        })
    }

    fn kv_cache_bytes_per_element(&self) -> usize {
        2
    }

    fn embed(&self, table: &CudaMatrix, token_ids: &[u32]) -> BackendResult<CudaTensor> {
        let table_ptr = self.device.ptr(&table.data);
        self.gather(table_ptr, table.rows, table.cols, token_ids, "embed")
    }

    fn rms_norm(&self, x: &CudaTensor, weight: &CudaVector, eps: f32) -> BackendResult<CudaTensor> {
        let out = self.tensor(x.rows, x.cols, "rms_norm")?;
        self.add_rms_norm_launch(&out, x.ptr(&self.device), 0, weight, eps)?;
        Ok(out)
    }

    fn add_rms_norm(
        &self,
        residual: &mut CudaTensor,
        x: &CudaTensor,
        weight: &CudaVector,
        eps: f32,
    ) -> BackendResult<CudaTensor> {
        Self::same_shape("add_rms_norm", residual, x)?;
        let out = self.tensor(x.rows, x.cols, "add_rms_norm")?;
        self.add_rms_norm_launch(&out, residual.ptr(&self.device), x.ptr(&self.device), weight, eps)?;
        Ok(out)
    }

    fn matmul(
        &self,
        x: &CudaTensor,
        weight: &CudaMatrix,
        bias: Option<&CudaVector>,
    ) -> BackendResult<CudaTensor> {
        if x.cols != weight.cols || bias.is_some_and(|b| b.len != weight.rows) {
            return Err(shape_err(
                "matmul",
                format!(
                    "x [{}, {}] @ W^T [{}, {}] (bias {:?})",
                    x.rows,
                    x.cols,
                    weight.rows,
                    weight.cols,
                    bias.map(|b| b.len)
                ),
            ));
        }
        let out = self.tensor(x.rows, weight.rows, "matmul")?;
        gemm::gemm_bf16(&self.device, &out, x, weight)?;
        if let Some(b) = bias {
            let d = &self.device;
            let n = out.rows * out.cols;
            d.launch(
                "ember_add_bf16",
                elementwise_geometry(n, d.num_sms()),
                &[
                    Arg::Ptr(out.ptr(d)),
                    Arg::Ptr(0),
                    Arg::Ptr(d.ptr(&b.data)),
                    Arg::I64(n as i64),
                    Arg::I32(out.cols as i32),
                ],
            )?;
        }
        Ok(out)
    }

    fn rope(
        &self,
        x: &mut CudaTensor,
        num_heads: usize,
        positions: &[u32],
        rope: &Rope,
    ) -> BackendResult<()> {
        let rotary_dim = 2 * rope.inv_freq.len();
        if num_heads == 0
            || !x.cols.is_multiple_of(num_heads)
            || rotary_dim > x.cols / num_heads
            || rotary_dim > 512
            || positions.len() != x.rows
        {
            return Err(shape_err(
                "rope",
                format!(
                    "[{}, {}], {num_heads} heads, rotary dim {rotary_dim}, {} positions",
                    x.rows,
                    x.cols,
                    positions.len()
                ),
            ));
        }
        let d = &self.device;
        let key = (rope.inv_freq.as_ptr() as usize, rope.inv_freq.len());
        let mut freqs = self
            .inv_freq
            .lock()
            .map_err(|_| device_err("rope", "poisoned lock"))?;
        if let std::collections::hash_map::Entry::Vacant(slot) = freqs.entry(key) {
            slot.insert(d.upload(&rope.inv_freq, "rope inv_freq")?);
        }
        let inv_freq = d.ptr(&freqs[&key]);
        let pos = self.step()?.words(d, positions, "positions")?;
        d.launch(
            "ember_rope_bf16",
            row_geometry(x.rows, num_heads * rotary_dim / 2 * 8),
            &[
                Arg::Ptr(x.ptr(d)),
                Arg::Ptr(pos.ptr(d)),
                Arg::Ptr(inv_freq),
                Arg::I32(num_heads as i32),
                Arg::I32((x.cols / num_heads) as i32),
                Arg::I32(rotary_dim as i32),
                Arg::I32(i32::from(rope.style == RopeStyle::Interleaved)),
            ],
        )
    }

    fn write_kv(
        &self,
        cache: &mut CudaKvCache,
        layer: usize,
        key: &CudaTensor,
        value: &CudaTensor,
        slot_mapping: &[u32],
    ) -> BackendResult<()> {
        attention::write_kv(self, cache, layer, key, value, slot_mapping)
    }

    fn attention(
        &self,
        query: &CudaTensor,
        cache: &CudaKvCache,
        layer: usize,
        shape: AttentionShape,
        scale: f32,
        meta: &StepMetadata,
    ) -> BackendResult<CudaTensor> {
        attention::attention(self, query, cache, layer, shape, scale, meta)
    }

    fn silu_mul(&self, gate: &CudaTensor, up: &CudaTensor) -> BackendResult<CudaTensor> {
        Self::same_shape("silu_mul", gate, up)?;
        let out = self.tensor(gate.rows, gate.cols, "silu_mul")?;
        let d = &self.device;
        let n = gate.rows * gate.cols;
        d.launch(
            "ember_silu_mul_bf16",
            elementwise_geometry(n.div_ceil(8), d.num_sms()),
            &[
                Arg::Ptr(out.ptr(d)),
                Arg::Ptr(gate.ptr(d)),
                Arg::Ptr(up.ptr(d)),
                Arg::I64(n as i64),
            ],
        )?;
        Ok(out)
    }

    fn add_assign(&self, x: &mut CudaTensor, y: &CudaTensor) -> BackendResult<()> {
        Self::same_shape("add_assign", x, y)?;
        let d = &self.device;
        let n = x.rows * x.cols;
        d.launch(
            "ember_add_bf16",
            elementwise_geometry(n, d.num_sms()),
            &[
                Arg::Ptr(x.ptr(d)),
                Arg::Ptr(y.ptr(d)),
                Arg::Ptr(0),
                Arg::I64(n as i64),
                Arg::I32(x.cols.max(1) as i32),
            ],
        )
    }

    fn gather_rows(&self, x: &CudaTensor, rows: &[u32]) -> BackendResult<CudaTensor> {
        self.gather(x.ptr(&self.device), x.rows, x.cols, rows, "gather_rows")
    }

    fn to_host(&self, x: &CudaTensor) -> BackendResult<Vec<f32>> {
        let len = x.rows * x.cols;
        let bits = match &x.data {
            TensorData::Owned(s) => self.device.download(s)?,
            _ => self.device.download_raw::<u16>(x.ptr(&self.device), len)?,
        };
        Ok(bits[..len]
            .iter()
            .map(|&b| half::bf16::from_bits(b).to_f32())
            .collect())
    }
}
