//! `impl Backend for Cuda`: each op is one kernel launch (or a cuBLAS call)
//! on the backend's stream.

use cudarc::cublas::{result as blas, sys as blas_sys, Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::kv::{CudaKv, KvPool, RowHost, RowMeta, PREFILL_ROWS};

/// Keys per prefill tile (`PREFILL_KEYS` in attention.cu).
const PREFILL_KEYS: usize = 16;
use super::{gpu_err, Cuda, GpuData, GpuTensor};
use crate::backend::{
    check_page, check_page_access, rows_of, AttentionShape, Backend, Device, KvGeometry, KvPart, RowSampling,
    SeqSpan,
};
use crate::error::{Error, Result};
use crate::formats::{fp8, DType, Quantize, StoredTensor};

const THREADS: u32 = 256;

fn grid(rows: usize, block: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 }
}

/// Enough blocks for a grid-stride loop over `n` elements.
fn flat(n: usize) -> LaunchConfig {
    grid(n.div_ceil(THREADS as usize).clamp(1, 65_535), THREADS)
}

/// Threads for a per-group reduction over `dim` values: a multiple of 32, at most 1024.
fn reduce_block(dim: usize) -> u32 {
    (dim.div_ceil(32) * 32).clamp(32, 1024) as u32
}

/// Pushes the KV pool as a kernel argument (read only).
fn pool_arg<'a>(b: &mut cudarc::driver::LaunchArgs<'a>, pool: &'a KvPool) {
    match pool {
        KvPool::F32(p) => b.arg(p),
        KvPool::Half { bits, .. } => b.arg(bits),
    };
}

fn half_to_f32(bits: u16, dtype: DType) -> f32 {
    match dtype {
        DType::F16 => half::f16::from_bits(bits).to_f32(),
        _ => half::bf16::from_bits(bits).to_f32(),
    }
}

fn f32_to_half(v: f32, dtype: DType) -> u16 {
    match dtype {
        DType::F16 => half::f16::from_f32(v).to_bits(),
        _ => half::bf16::from_f32(v).to_bits(),
    }
}

fn f32_param(w: &GpuTensor) -> Result<&CudaSlice<f32>> {
    match &w.data {
        GpuData::F32(d) => Ok(d),
        GpuData::Half { .. } => Err(Error::Internal("a 1-D parameter was stored in half precision".into())),
    }
}

impl Cuda {
    fn upload_u32(&self, v: &[u32]) -> Result<CudaSlice<u32>> {
        self.stream.clone_htod(v).map_err(gpu_err("copying to the GPU"))
    }

    fn upload_f32(&self, v: &[f32]) -> Result<CudaSlice<f32>> {
        self.stream.clone_htod(v).map_err(gpu_err("copying to the GPU"))
    }

    /// Launches `name(x, y, n)` from elementwise.cu: `x op= y` over equal lengths.
    fn binary(&self, name: &str, x: &mut CudaSlice<f32>, y: &CudaSlice<f32>) -> Result<()> {
        if x.len() != y.len() {
            return Err(Error::Internal(format!("{name}: buffers of {} and {} values", x.len(), y.len())));
        }
        let n = x.len() as i64;
        let mut b = self.stream.launch_builder(self.function(name));
        b.arg(x).arg(y).arg(&n);
        // SAFETY: elementwise.cu's signature; equal lengths, checked above.
        unsafe { b.launch(flat(n as usize)) }.map_err(gpu_err(name))?;
        Ok(())
    }

    /// Uploads the row metadata unless the previous layer already did.
    fn row_meta<'a>(&self, kv: &'a mut CudaKv, spans: &[SeqSpan]) -> Result<&'a RowMeta> {
        let host = RowHost::new(spans, kv.page_size);
        if kv.meta.as_ref().is_none_or(|m| m.host != host) {
            kv.meta = Some(RowMeta {
                slots: self.upload_u32(&host.slots)?,
                positions: self.upload_u32(&host.positions)?,
                table_start: self.upload_u32(&host.table_start)?,
                tables: self.upload_u32(&host.tables)?,
                tile_first: self.upload_u32(&host.tile_first)?,
                tile_rows: self.upload_u32(&host.tile_rows)?,
                host,
            });
        }
        Ok(kv.meta.as_ref().expect("set above"))
    }
}

/// One block of `threads` per head of each row.
fn per_head(rows: usize, heads: usize, threads: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows as u32, heads as u32, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

impl Backend for Cuda {
    type Buf = CudaSlice<f32>;
    type Weight = GpuTensor;
    type Kv = CudaKv;

    fn device(&self) -> Device {
        Cuda::device(self)
    }

    fn memory_available(&self) -> Option<usize> {
        self.stream.context().bind_to_thread().ok()?;
        cudarc::driver::result::mem_get_info().ok().map(|(free, _total)| free)
    }

    /// Every parameter is widened to f32 on the host, then 2-D ones become
    /// the GPU dtype. `quantize="fp8"` rounds a matrix to FP8 E4M3's values
    /// (a scale per 32 weights of a row, as on the CPU) before that, so the
    /// model runs with FP8's values on any GPU; ggml blocks are the CPU's.
    fn upload(&self, tensor: StoredTensor, quantize: Option<Quantize>) -> Result<GpuTensor> {
        let tensor = match quantize {
            None => tensor.into_host()?,
            Some(Quantize::Fp8) => fp8::round_trip(&tensor.into_host()?)?,
            Some(Quantize::Ggml(ty)) => {
                return Err(Error::Unsupported(format!(
                    "quantize={ty} applies to the CPU only; on a GPU use dtype=\"bfloat16\", \"float16\" or \"float32\", or quantize=\"fp8\""
                )))
            }
        };
        let data = if self.dtype != DType::F32 && tensor.shape.len() == 2 {
            let bits: Vec<u16> = match self.dtype {
                DType::F16 => tensor.data.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect(),
                _ => tensor.data.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect(),
            };
            let bits = self.stream.clone_htod(&bits).map_err(gpu_err("uploading weights"))?;
            GpuData::Half { bits, dtype: self.dtype }
        } else {
            GpuData::F32(self.upload_f32(&tensor.data)?)
        };
        Ok(GpuTensor { shape: tensor.shape, data })
    }

    fn weight_dtype(&self) -> Option<DType> {
        Some(self.dtype)
    }

    fn zeros(&self, len: usize) -> Result<CudaSlice<f32>> {
        self.stream
            .alloc_zeros::<f32>(len.max(1))
            .map_err(|e| Error::OutOfMemory { what: format!("GPU activations ({e})"), bytes: len * 4 })
    }

    fn to_host(&self, buf: &CudaSlice<f32>) -> Result<Vec<f32>> {
        self.stream.clone_dtoh(buf).map_err(gpu_err("copying from the GPU"))
    }

    fn sample_rows(
        &self,
        logits: &CudaSlice<f32>,
        vocab: usize,
        rows: &[RowSampling],
    ) -> Result<Vec<(u32, f32)>> {
        let n = logits.len() / vocab;
        if n != rows.len() {
            return Err(Error::Internal(format!("{n} logits rows but {} sampling rows", rows.len())));
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let params = self.upload_f32(&RowSampling::packed(rows))?;
        let mut ids = self.stream.alloc_zeros::<u32>(n.max(1)).map_err(gpu_err("allocating"))?;
        let mut lps = self.zeros(n)?;
        let v = vocab as i32;
        {
            let mut b = self.stream.launch_builder(self.function("sample_f32"));
            b.arg(logits).arg(&params).arg(&mut ids).arg(&mut lps).arg(&v);
            // SAFETY: sampling.cu's signature; logits hold n * vocab values, params 5 * n.
            unsafe { b.launch(grid(n, 1024)) }.map_err(gpu_err("sample"))?;
        }
        let ids = self.stream.clone_dtoh(&ids).map_err(gpu_err("copying from the GPU"))?;
        let lps = self.to_host(&lps)?;
        Ok(ids.into_iter().zip(lps).take(n).collect())
    }

    fn samples_on_device(&self) -> bool {
        true
    }

    fn len(&self, buf: &CudaSlice<f32>) -> usize {
        buf.len()
    }

    fn select_rows(&self, x: &CudaSlice<f32>, width: usize, rows: &[usize]) -> Result<CudaSlice<f32>> {
        let mut out = self.zeros(rows.len() * width)?;
        for (i, &r) in rows.iter().enumerate() {
            let src = x.slice(r * width..(r + 1) * width);
            let mut dst = out.slice_mut(i * width..(i + 1) * width);
            self.stream.memcpy_dtod(&src, &mut dst).map_err(gpu_err("selecting rows"))?;
        }
        Ok(out)
    }

    fn embedding(&self, table: &GpuTensor, ids: &[u32], out: &mut CudaSlice<f32>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let dim = table.shape[1] as i32;
        let ids_dev = self.upload_u32(ids)?;
        let name = match &table.data {
            GpuData::F32(_) => "embedding_f32".to_string(),
            GpuData::Half { dtype, .. } => format!("embedding_{}", dtype.suffix()),
        };
        let cfg = grid(ids.len(), THREADS);
        let mut b = self.stream.launch_builder(self.function(&name));
        match &table.data {
            GpuData::F32(t) => b.arg(t),
            GpuData::Half { bits, .. } => b.arg(bits),
        };
        b.arg(&ids_dev).arg(out).arg(&dim);
        // SAFETY: embedding.cu's signature; ids were checked against the vocabulary.
        unsafe { b.launch(cfg) }.map_err(gpu_err("embedding"))?;
        Ok(())
    }

    fn rms_norm(
        &self,
        x: &CudaSlice<f32>,
        w: &GpuTensor,
        eps: f32,
        dim: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let groups = x.len() / dim;
        if groups == 0 {
            return Ok(()); // no rows (a step whose rows need no logits): CUDA refuses an empty grid
        }
        let d = dim as i32;
        let mut b = self.stream.launch_builder(self.function("rms_norm_f32"));
        b.arg(x).arg(f32_param(w)?).arg(out).arg(&d).arg(&eps);
        // SAFETY: norm.cu's signature; x and out hold `groups * dim` values.
        unsafe { b.launch(grid(groups, reduce_block(dim))) }.map_err(gpu_err("rms_norm"))?;
        Ok(())
    }

    fn add_rms_norm(
        &self,
        x: &mut CudaSlice<f32>,
        y: &CudaSlice<f32>,
        w: &GpuTensor,
        eps: f32,
        dim: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let groups = x.len() / dim;
        if groups == 0 {
            return Ok(());
        }
        let d = dim as i32;
        let mut b = self.stream.launch_builder(self.function("add_rms_norm_f32"));
        b.arg(x).arg(y).arg(f32_param(w)?).arg(out).arg(&d).arg(&eps);
        // SAFETY: norm.cu's signature; all buffers hold `groups * dim` values.
        unsafe { b.launch(grid(groups, reduce_block(dim))) }.map_err(gpu_err("add_rms_norm"))?;
        Ok(())
    }

    fn linear(
        &self,
        x: &CudaSlice<f32>,
        w: &GpuTensor,
        bias: Option<&GpuTensor>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let (n, k) = (w.shape[0], w.shape[1]);
        let m = x.len() / k;
        if m == 0 {
            return Ok(());
        }
        // cuBLAS uses the calling thread's current context (the engine runs
        // on its own thread); the driver-API launches bind it themselves.
        self.stream.context().bind_to_thread().map_err(gpu_err("binding the GPU context"))?;
        // Row-major out[m,n] = x[m,k] @ w[n,k]^T is, column-major,
        // out^T[n,m] = w^T^T (n x k) @ x^T (k x m): op(A)=T on w, op(B)=N on x.
        let (mi, ni, ki) = (n as i32, m as i32, k as i32);
        match &w.data {
            GpuData::F32(wd) => {
                let cfg = GemmConfig {
                    transa: blas_sys::cublasOperation_t::CUBLAS_OP_T,
                    transb: blas_sys::cublasOperation_t::CUBLAS_OP_N,
                    m: mi,
                    n: ni,
                    k: ki,
                    alpha: 1.0f32,
                    lda: ki,
                    ldb: ki,
                    beta: 0.0f32,
                    ldc: mi,
                };
                // SAFETY: w holds n*k, x m*k and out m*n f32 values.
                unsafe { self.blas.gemm(cfg, wd, x, out) }
                    .map_err(|e| Error::Gpu(format!("cuBLAS sgemm: {e}")))?;
            }
            GpuData::Half { bits: wd, dtype } => {
                let mut xb = self.stream.alloc_zeros::<u16>(m * k).map_err(gpu_err("allocating"))?;
                let total = (m * k) as i64;
                let cast = format!("cast_f32_{}", dtype.suffix());
                let mut b = self.stream.launch_builder(self.function(&cast));
                b.arg(x).arg(&mut xb).arg(&total);
                // SAFETY: elementwise.cu's signature; both hold m*k values.
                unsafe { b.launch(flat(m * k)) }.map_err(gpu_err("cast to half precision"))?;
                let (alpha, beta) = (1.0f32, 0.0f32);
                let (a, _ra) = wd.device_ptr(&self.stream);
                let (bp, _rb) = xb.device_ptr(&self.stream);
                let (c, _rc) = out.device_ptr_mut(&self.stream);
                use blas_sys::cudaDataType_t::{CUDA_R_16BF, CUDA_R_16F, CUDA_R_32F};
                let half = if *dtype == DType::F16 { CUDA_R_16F } else { CUDA_R_16BF };
                // SAFETY: as above; A and B are 16-bit, C is f32, accumulation in f32.
                unsafe {
                    blas::gemm_ex(
                        *self.blas.handle(),
                        blas_sys::cublasOperation_t::CUBLAS_OP_T,
                        blas_sys::cublasOperation_t::CUBLAS_OP_N,
                        mi,
                        ni,
                        ki,
                        (&alpha) as *const f32 as *const _,
                        a as *const _,
                        half,
                        ki,
                        bp as *const _,
                        half,
                        ki,
                        (&beta) as *const f32 as *const _,
                        c as *mut _,
                        CUDA_R_32F,
                        mi,
                        blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                        blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                    )
                }
                .map_err(|e| Error::Gpu(format!("cuBLAS {} GEMM: {e}", dtype.suffix())))?;
            }
        }
        if let Some(bias) = bias {
            let (total, cols) = ((m * n) as i64, n as i32);
            let mut b = self.stream.launch_builder(self.function("add_bias_f32"));
            b.arg(out).arg(f32_param(bias)?).arg(&total).arg(&cols);
            // SAFETY: elementwise.cu's signature.
            unsafe { b.launch(flat(m * n)) }.map_err(gpu_err("add_bias"))?;
        }
        Ok(())
    }

    fn rope(
        &self,
        x: &mut CudaSlice<f32>,
        positions: &[u32],
        head_dim: usize,
        inv_freq: &[f32],
    ) -> Result<()> {
        if positions.is_empty() {
            return Ok(());
        }
        let width = x.len() / positions.len();
        let (pos, freq) = (self.upload_u32(positions)?, self.upload_f32(inv_freq)?);
        let (w, hd) = (width as i32, head_dim as i32);
        let mut b = self.stream.launch_builder(self.function("rope_f32"));
        b.arg(x).arg(&pos).arg(&freq).arg(&w).arg(&hd);
        let cfg = per_head(positions.len(), width / head_dim, reduce_block(head_dim / 2));
        // SAFETY: rope.cu's signature; x holds rows * width values.
        unsafe { b.launch(cfg) }.map_err(gpu_err("rope"))?;
        Ok(())
    }

    fn head_norm_rope(
        &self,
        x: &mut CudaSlice<f32>,
        w: &GpuTensor,
        eps: f32,
        positions: &[u32],
        head_dim: usize,
        inv_freq: &[f32],
    ) -> Result<()> {
        if positions.is_empty() {
            return Ok(());
        }
        let width = x.len() / positions.len();
        let (pos, freq) = (self.upload_u32(positions)?, self.upload_f32(inv_freq)?);
        let (wd, hd) = (width as i32, head_dim as i32);
        let mut b = self.stream.launch_builder(self.function("rms_norm_rope_f32"));
        b.arg(x).arg(f32_param(w)?).arg(&pos).arg(&freq).arg(&wd).arg(&hd).arg(&eps);
        let cfg = per_head(positions.len(), width / head_dim, reduce_block(head_dim));
        // SAFETY: rope.cu's signature.
        unsafe { b.launch(cfg) }.map_err(gpu_err("rms_norm_rope"))?;
        Ok(())
    }

    fn silu_mul(&self, gate: &mut CudaSlice<f32>, up: &CudaSlice<f32>) -> Result<()> {
        self.binary("silu_mul_f32", gate, up)
    }

    fn add(&self, x: &mut CudaSlice<f32>, y: &CudaSlice<f32>) -> Result<()> {
        self.binary("add_f32", x, y)
    }

    fn new_kv(&self, geometry: KvGeometry, dtype: DType) -> Result<CudaKv> {
        let KvGeometry { pages, page_size, layers, kv_dim } = geometry;
        let len = [2, layers, page_size, kv_dim]
            .iter()
            .try_fold(pages, |n, &k| n.checked_mul(k))
            .filter(|len| len.checked_mul(dtype.size_in_bytes()).is_some())
            .ok_or_else(|| {
                Error::InvalidInput(format!("a KV pool of {pages} pages overflows the address space"))
            })?
            .max(1);
        let bytes = len * dtype.size_in_bytes();
        let oom = |e: cudarc::driver::DriverError| Error::OutOfMemory {
            what: format!(
                "the GPU KV cache, {pages} pages ({e}); lower num_pages / kv_cache_bytes / max_seq_len"
            ),
            bytes,
        };
        let pool = match dtype {
            DType::F32 => KvPool::F32(self.stream.alloc_zeros::<f32>(len).map_err(oom)?),
            dtype => KvPool::Half { bits: self.stream.alloc_zeros::<u16>(len).map_err(oom)?, dtype },
        };
        Ok(CudaKv { pool, page_size, layers, kv_dim, meta: None })
    }

    fn copy_page(&self, kv: &mut CudaKv, src: u32, dst: u32) -> Result<()> {
        // The kernel would copy from or to memory past the pool.
        check_page(kv.geometry(), src)?;
        check_page(kv.geometry(), dst)?;
        let page_len = kv.page_len() as i64;
        let name = format!("copy_page_{}", kv.pool.dtype().suffix());
        let mut b = self.stream.launch_builder(self.function(&name));
        match &mut kv.pool {
            KvPool::F32(p) => b.arg(p),
            KvPool::Half { bits, .. } => b.arg(bits),
        };
        b.arg(&src).arg(&dst).arg(&page_len);
        // SAFETY: kv_cache.cu's signature; both pages are inside the pool.
        unsafe { b.launch(flat(page_len as usize)) }.map_err(gpu_err("copy_page"))?;
        Ok(())
    }

    fn read_kv_page(&self, kv: &CudaKv, page: u32, part: KvPart) -> Result<Vec<f32>> {
        check_page_access(kv.geometry(), page, part, 0, kv.page_size)?;
        let range = kv.region(page, part, 0)..kv.region(page, part, 0) + kv.page_size * kv.kv_dim;
        let read = gpu_err("reading a KV page");
        match &kv.pool {
            KvPool::F32(p) => self.stream.clone_dtoh(&p.slice(range)).map_err(read),
            KvPool::Half { bits, dtype } => {
                let bits = self.stream.clone_dtoh(&bits.slice(range)).map_err(read)?;
                Ok(bits.into_iter().map(|b| half_to_f32(b, *dtype)).collect())
            }
        }
    }

    fn write_kv_page(
        &self,
        kv: &mut CudaKv,
        page: u32,
        part: KvPart,
        offset: usize,
        data: &[f32],
    ) -> Result<()> {
        let rows = rows_of(data, part)?;
        check_page_access(kv.geometry(), page, part, offset, rows)?;
        let start = kv.region(page, part, offset);
        let write = gpu_err("writing a KV page");
        match &mut kv.pool {
            KvPool::F32(p) => {
                self.stream.memcpy_htod(data, &mut p.slice_mut(start..start + data.len())).map_err(write)
            }
            KvPool::Half { bits, dtype } => {
                let half: Vec<u16> = data.iter().map(|&v| f32_to_half(v, *dtype)).collect();
                self.stream.memcpy_htod(&half, &mut bits.slice_mut(start..start + data.len())).map_err(write)
            }
        }
    }

    fn attention(
        &self,
        kv: &mut CudaKv,
        layer: usize,
        spans: &[SeqSpan],
        shape: AttentionShape,
        q: &CudaSlice<f32>,
        k: &CudaSlice<f32>,
        v: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let AttentionShape { num_heads, num_kv_heads, head_dim, sliding_window } = shape;
        if head_dim > 256 || head_dim % 2 != 0 {
            return Err(Error::Unsupported(format!("head_dim {head_dim} on the GPU (at most 256, even)")));
        }
        let (page_size, layers, kv_dim) = (kv.page_size as i32, kv.layers as i32, kv.kv_dim as i32);
        self.row_meta(kv, spans)?;
        let meta = kv.meta.as_ref().expect("row_meta set it");
        let rows = meta.host.slots.len();
        let layer = layer as i32;

        let suffix = kv.pool.dtype().suffix();
        let kv_write = format!("kv_write_{suffix}");
        let mut b = self.stream.launch_builder(self.function(&kv_write));
        match &mut kv.pool {
            KvPool::F32(p) => b.arg(p),
            KvPool::Half { bits, .. } => b.arg(bits),
        };
        b.arg(k).arg(v).arg(&meta.slots).arg(&layer).arg(&layers).arg(&page_size).arg(&kv_dim);
        // SAFETY: kv_cache.cu's signature; every slot is inside a page of the pool.
        unsafe { b.launch(grid(rows, THREADS.min(reduce_block(kv.kv_dim)))) }.map_err(gpu_err("kv_write"))?;

        let (nh, nkv, hd) = (num_heads as i32, num_kv_heads as i32, head_dim as i32);
        let window = sliding_window.map_or(0, |w| w as i32);
        let scale = 1.0 / (head_dim as f32).sqrt();
        if !meta.host.decode_only {
            // Prompt chunks: tiles of rows share each key/value tile in shared memory.
            let tiles = meta.host.tile_first.len();
            let name = format!("paged_prefill_attention_{suffix}");
            let mut b = self.stream.launch_builder(self.function(&name));
            b.arg(q);
            pool_arg(&mut b, &kv.pool);
            b.arg(out)
                .arg(&meta.tables)
                .arg(&meta.table_start)
                .arg(&meta.positions)
                .arg(&meta.tile_first)
                .arg(&meta.tile_rows)
                .arg(&nh)
                .arg(&nkv)
                .arg(&hd)
                .arg(&layer)
                .arg(&layers)
                .arg(&page_size)
                .arg(&window)
                .arg(&scale);
            let cfg = LaunchConfig {
                grid_dim: (tiles as u32, num_heads as u32, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: ((PREFILL_ROWS + 2 * PREFILL_KEYS) * head_dim * 4) as u32,
            };
            // SAFETY: attention.cu's signature; at most 48 KiB of shared memory
            // (head_dim <= 256); tiles cover every row.
            unsafe { b.launch(cfg) }.map_err(gpu_err("paged_prefill_attention"))?;
            return Ok(());
        }
        // Split long contexts along the sequence when (row, head) pairs alone
        // would leave most of the GPU idle (decode with few sequences).
        let longest = meta
            .host
            .positions
            .iter()
            .map(|&p| sliding_window.map_or(p as usize + 1, |w| w.min(p as usize + 1)))
            .max()
            .unwrap_or(1);
        let pairs = rows * num_heads;
        let splits = if pairs >= 2 * self.sms {
            1
        } else {
            (2 * self.sms).div_ceil(pairs).min(longest.div_ceil(256)).clamp(1, 64)
        };
        let split_len = longest.div_ceil(splits) as i32;
        let (mut part_ml, mut part_acc) = if splits > 1 {
            (self.zeros(pairs * splits * 2)?, self.zeros(pairs * splits * head_dim)?)
        } else {
            (self.zeros(1)?, self.zeros(1)?)
        };
        {
            let name = format!("paged_attention_{suffix}");
            let mut b = self.stream.launch_builder(self.function(&name));
            b.arg(q);
            pool_arg(&mut b, &kv.pool);
            b.arg(&mut *out)
                .arg(&meta.tables)
                .arg(&meta.table_start)
                .arg(&meta.positions)
                .arg(&nh)
                .arg(&nkv)
                .arg(&hd)
                .arg(&layer)
                .arg(&layers)
                .arg(&page_size)
                .arg(&window)
                .arg(&scale)
                .arg(&split_len)
                .arg(&mut part_ml)
                .arg(&mut part_acc);
            let cfg = LaunchConfig {
                grid_dim: (rows as u32, num_heads as u32, splits as u32),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: attention.cu's signature (4 warps per block); tables cover
            // every position; the scratch holds pairs * splits partials.
            unsafe { b.launch(cfg) }.map_err(gpu_err("paged_attention"))?;
        }
        if splits > 1 {
            let s = splits as i32;
            let mut b = self.stream.launch_builder(self.function("attention_merge_f32"));
            b.arg(&part_ml).arg(&part_acc).arg(out).arg(&nh).arg(&hd).arg(&s);
            let cfg = LaunchConfig {
                grid_dim: (rows as u32, num_heads as u32, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: attention.cu's signature.
            unsafe { b.launch(cfg) }.map_err(gpu_err("attention_merge"))?;
        }
        Ok(())
    }
}
