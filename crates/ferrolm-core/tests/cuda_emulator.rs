//! The CUDA emulator (cuda-emulator/) catches what a GPU would corrupt
//! silently, and computes what a GPU computes. Small kernels written to be
//! wrong, launched through cudarc as the backend launches its own.
//!
//! One test function: a failed launch leaves the context unusable (sticky, as
//! on a GPU) until every handle to it is dropped, so the cases run one after
//! another, each with a context of its own.

use std::sync::Arc;

use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use ferrolm_core::backend::cuda;

const KERNELS: &str = r#"
extern "C" __global__ void write_past_end(float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) out[i] = 1.0f;  // one too many
}

extern "C" __global__ void copy(const float* in, float* out, int n) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = in[i];
}

extern "C" __global__ void divergent_barrier(float* out) {
    if (threadIdx.x < 16) return;
    __syncthreads();
    out[threadIdx.x] = 1.0f;
}

extern "C" __global__ void shuffle_after_exit(float* out) {
    if (threadIdx.x == 5) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

// Sum of 0..blockDim.x-1 through warp shuffles and shared memory.
extern "C" __global__ void block_sum(float* out) {
    __shared__ float partial[32];
    float v = (float)threadIdx.x;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        float s = 0.0f;
        for (int w = 0; w < (int)(blockDim.x >> 5); w++) s += partial[w];
        out[blockIdx.x] = s;
    }
}

// Reads shared memory before writing it (when `write_first` is 0).
extern "C" __global__ void read_shared_unwritten(float* out, int write_first) {
    __shared__ float tile[64];
    if (write_first) tile[threadIdx.x] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = tile[threadIdx.x];
}

extern "C" __global__ void dynamic_shared(float* out, int n) {
    extern __shared__ float smem[];
    smem[threadIdx.x] = (float)threadIdx.x;  // past n when the launch gave too little
    __syncthreads();
    out[threadIdx.x] = smem[n - 1 - threadIdx.x];
}
"#;

fn setup() -> bool {
    if std::env::var_os("FERROLM_CUDA_EMULATOR").is_none() {
        // SAFETY: set before any other thread of this test binary reads the environment.
        unsafe { std::env::set_var("FERROLM_CUDA_EMULATOR", "1") };
    }
    match cuda::probe(0) {
        Ok(()) => cuda::emulator::active(),
        Err(e) => {
            assert!(std::env::var_os("CI").is_none(), "the CUDA emulator must work in CI: {e}");
            eprintln!("skipped: {e}");
            false
        }
    }
}

struct Gpu {
    stream: Arc<CudaStream>,
    module: Arc<cudarc::driver::CudaModule>,
}

impl Gpu {
    fn new() -> Gpu {
        let ctx = CudaContext::new(0).unwrap();
        let opts = CompileOptions {
            options: vec!["--gpu-architecture=compute_90".into()],
            name: Some("emulator_checks.cu".into()),
            ..Default::default()
        };
        let ptx = compile_ptx_with_opts(KERNELS, opts).unwrap();
        let module = ctx.load_module(ptx).unwrap();
        Gpu { stream: ctx.default_stream(), module }
    }

    fn function(&self, name: &str) -> CudaFunction {
        self.module.load_function(name).unwrap()
    }
}

fn cfg(grid: u32, block: u32, shared: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: shared }
}

fn err_text<E: std::fmt::Debug, T>(r: Result<T, E>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:?}"),
    }
}

#[test]
fn the_emulator_catches_what_a_gpu_corrupts_silently() {
    if !setup() {
        return;
    }
    // A correct kernel: shuffles, shared memory and a barrier give the exact sum.
    {
        let gpu = Gpu::new();
        let mut out = gpu.stream.alloc_zeros::<f32>(3).unwrap();
        let f = gpu.function("block_sum");
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&mut out);
        unsafe { b.launch(cfg(3, 256, 0)) }.unwrap();
        assert_eq!(gpu.stream.clone_dtoh(&out).unwrap(), vec![32640.0; 3]);
    }
    // Fresh device memory is NaN, so a read before a write shows.
    {
        let gpu = Gpu::new();
        let fresh = unsafe { gpu.stream.alloc::<f32>(8) }.unwrap();
        assert!(gpu.stream.clone_dtoh(&fresh).unwrap().iter().all(|v| v.is_nan()));
        let mut out = gpu.stream.alloc_zeros::<f32>(64).unwrap();
        let (f, write_first) = (gpu.function("read_shared_unwritten"), 0i32);
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&mut out).arg(&write_first);
        unsafe { b.launch(cfg(1, 64, 0)) }.unwrap();
        assert!(
            gpu.stream.clone_dtoh(&out).unwrap().iter().all(|v| v.is_nan()),
            "shared memory starts as NaN"
        );
    }
    // One element past the end of an allocation is an illegal address, and sticks.
    {
        let gpu = Gpu::new();
        let mut out = gpu.stream.alloc_zeros::<f32>(100).unwrap();
        let (f, n) = (gpu.function("write_past_end"), 100i32);
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&mut out).arg(&n);
        let e = err_text(unsafe { b.launch(cfg(1, 128, 0)) });
        assert!(
            e.contains("CUDA_ERROR_ILLEGAL_ADDRESS") && e.contains("0 bytes past the end of a 400-byte"),
            "{e}"
        );
        assert!(e.contains("thread (100,0,0) of block (0,0,0)"), "{e}");
        let e = err_text(gpu.stream.clone_dtoh(&out));
        assert!(e.contains("ILLEGAL_ADDRESS"), "later calls fail too: {e}");
    }
    // Memory stays inaccessible after it is freed.
    {
        let gpu = Gpu::new();
        let input = gpu.stream.alloc_zeros::<f32>(16).unwrap();
        let stale: u64 = input.device_ptr(&gpu.stream).0;
        drop(input);
        let mut out = gpu.stream.alloc_zeros::<f32>(16).unwrap();
        let (f, n) = (gpu.function("copy"), 16i32);
        let mut b = gpu.stream.launch_builder(&f);
        // The freed pointer as a raw address: the emulator refuses it at launch.
        b.arg(&stale).arg(&mut out).arg(&n);
        let e = err_text(unsafe { b.launch(cfg(1, 32, 0)) });
        assert!(e.contains("argument 0") && e.contains("freed"), "{e}");
    }
    // A barrier that half the block never reaches.
    {
        let gpu = Gpu::new();
        let mut out = gpu.stream.alloc_zeros::<f32>(32).unwrap();
        let f = gpu.function("divergent_barrier");
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&mut out);
        let e = err_text(unsafe { b.launch(cfg(1, 32, 0)) });
        assert!(e.contains("CUDA_ERROR_LAUNCH_FAILED") && e.contains("not reached by every thread"), "{e}");
    }
    // A shuffle whose mask names a lane that exited.
    {
        let gpu = Gpu::new();
        let mut out = gpu.stream.alloc_zeros::<f32>(32).unwrap();
        let f = gpu.function("shuffle_after_exit");
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&mut out);
        let e = err_text(unsafe { b.launch(cfg(1, 32, 0)) });
        assert!(e.contains("__shfl_xor_sync") && e.contains("thread (5,0,0)"), "{e}");
    }
    // Launches beyond CUDA's limits, unknown names and misplaced arguments are refused.
    {
        let gpu = Gpu::new();
        let mut out = gpu.stream.alloc_zeros::<f32>(2048).unwrap();
        let f = gpu.function("block_sum");
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&mut out);
        let e = err_text(unsafe { b.launch(cfg(1, 1056, 0)) });
        assert!(e.contains("CUDA_ERROR_INVALID_VALUE") && e.contains("is over CUDA"), "{e}");
        let grid = LaunchConfig { grid_dim: (1, 65536, 1), block_dim: (32, 1, 1), shared_mem_bytes: 0 };
        let e = err_text(unsafe { b.launch(grid) });
        assert!(e.contains("grid (1,65536,1)"), "{e}");
        let e = err_text(gpu.module.load_function("no_such_kernel"));
        assert!(e.contains("CUDA_ERROR_NOT_FOUND"), "{e}");
        // `copy(in, out, n)` given (n, in, out): a pointer parameter holding 16.
        let (input, n) = (gpu.stream.alloc_zeros::<f32>(16).unwrap(), 16i64);
        let f = gpu.function("copy");
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&n).arg(&input).arg(&mut out);
        let e = err_text(unsafe { b.launch(cfg(1, 32, 0)) });
        assert!(e.contains("argument 0") && e.contains("not device memory"), "{e}");
    }
    // Dynamic shared memory: 48 KiB without opting in; its end is guarded.
    {
        let gpu = Gpu::new();
        let mut out = gpu.stream.alloc_zeros::<f32>(64).unwrap();
        let (f, n) = (gpu.function("dynamic_shared"), 64i32);
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&mut out).arg(&n);
        let e = err_text(unsafe { b.launch(cfg(1, 64, 49 * 1024)) });
        assert!(e.contains("without opting in"), "{e}");
        unsafe { b.launch(cfg(1, 64, 64 * 4)) }.unwrap();
        drop(b);
        let got = gpu.stream.clone_dtoh(&out).unwrap();
        assert_eq!(got, (0..64).rev().map(|i| i as f32).collect::<Vec<_>>());
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&mut out).arg(&n);
        let e = err_text(unsafe { b.launch(cfg(1, 64, 32 * 4)) });
        assert!(e.contains("dynamic shared memory"), "{e}");
        drop(b);
        assert!(err_text(gpu.stream.clone_dtoh(&out)).contains("ILLEGAL_ADDRESS"), "sticky after the fault");
    }
    // The kernels' f32 -> f16/bf16 casts round as the half crate (and torch) do, bit for bit.
    {
        let gpu = Gpu::new();
        let (_, source, _) = cuda::kernels::SOURCES.iter().find(|(n, _, _)| *n == "elementwise").unwrap();
        let opts =
            CompileOptions { options: vec!["--gpu-architecture=compute_90".into()], ..Default::default() };
        let module = gpu
            .stream
            .context()
            .load_module(compile_ptx_with_opts(cuda::kernels::program(source), opts).unwrap())
            .unwrap();
        let mut values: Vec<f32> = vec![
            0.0,
            -0.0,
            1.0,
            65504.0,
            65519.99,
            65520.0,
            -65520.0,
            1e-8,
            5.96e-8,
            2.98e-8,
            2.9802322e-8,
            8.940697e-8,
            6.1e-5,
            6.097e-5,
            1.0009766,
            1.0004883,
            1.0014648,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            3.4e38,
            1.401e-45,
        ];
        values.extend(
            (0..4000u32).map(|i| f32::from_bits(0x3300_0000u32.wrapping_add(i.wrapping_mul(0x0013_5791)))),
        );
        let x = gpu.stream.clone_htod(&values).unwrap();
        for (kernel, reference) in [
            ("cast_f32_f16", (|v: f32| half::f16::from_f32(v).to_bits()) as fn(f32) -> u16),
            ("cast_f32_bf16", |v: f32| half::bf16::from_f32(v).to_bits()),
        ] {
            let mut out = gpu.stream.alloc_zeros::<u16>(values.len()).unwrap();
            let f = module.load_function(kernel).unwrap();
            let n = values.len() as i64;
            let mut b = gpu.stream.launch_builder(&f);
            b.arg(&x).arg(&mut out).arg(&n);
            unsafe { b.launch(cfg(4, 256, 0)) }.unwrap();
            drop(b);
            for (v, got) in values.iter().zip(gpu.stream.clone_dtoh(&out).unwrap()) {
                let want = reference(*v);
                if v.is_nan() {
                    assert_eq!(got & 0x7fff, want & 0x7fff, "{kernel}: NaN stays a quiet NaN");
                } else {
                    assert_eq!(got, want, "{kernel}({v:e}): {got:#06x}, the half crate gives {want:#06x}");
                }
            }
        }
    }
    // cuBLAS: f32 GEMMs in f32; bf16 inputs as stored, summed in f32; operands checked.
    {
        let gpu = Gpu::new();
        let blas_handle = CudaBlas::new(gpu.stream.clone()).unwrap();
        let (m, n, k) = (3usize, 5usize, 7usize);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect(); // row-major [m, k]
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect(); // row-major [n, k]
        let expect = |a: &[f32], w: &[f32]| -> Vec<f32> {
            let mut out = vec![0.0f32; m * n];
            for i in 0..m {
                for j in 0..n {
                    out[i * n + j] = (0..k).fold(0.0f32, |s, p| s + a[i * k + p] * w[j * k + p]);
                }
            }
            out
        };
        let (ad, wd) = (gpu.stream.clone_htod(&a).unwrap(), gpu.stream.clone_htod(&w).unwrap());
        let mut out = unsafe { gpu.stream.alloc::<f32>(m * n) }.unwrap(); // NaN: beta = 0 must not read it
        let cfg = GemmConfig {
            transa: blas_sys::cublasOperation_t::CUBLAS_OP_T,
            transb: blas_sys::cublasOperation_t::CUBLAS_OP_N,
            m: n as i32,
            n: m as i32,
            k: k as i32,
            alpha: 1.0f32,
            lda: k as i32,
            ldb: k as i32,
            beta: 0.0f32,
            ldc: n as i32,
        };
        unsafe { blas_handle.gemm(cfg, &wd, &ad, &mut out) }.unwrap();
        assert_eq!(gpu.stream.clone_dtoh(&out).unwrap(), expect(&a, &w));

        let bf = |v: &[f32]| v.iter().map(|&x| half::bf16::from_f32(x)).collect::<Vec<_>>();
        let (ab, wb) = (bf(&a), bf(&w));
        let widen = |v: &[half::bf16]| v.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
        let bits = |v: &[half::bf16]| v.iter().map(|x| x.to_bits()).collect::<Vec<u16>>();
        let (abd, wbd) =
            (gpu.stream.clone_htod(&bits(&ab)).unwrap(), gpu.stream.clone_htod(&bits(&wb)).unwrap());
        let run =
            |wd: &cudarc::driver::CudaSlice<u16>, k_used: i32, out: &mut cudarc::driver::CudaSlice<f32>| {
                let (alpha, beta) = (1.0f32, 0.0f32);
                let (wp, _a) = wd.device_ptr(&gpu.stream);
                let (xp, _b) = abd.device_ptr(&gpu.stream);
                let (cp, _c) = out.device_ptr_mut(&gpu.stream);
                use blas_sys::cudaDataType_t::{CUDA_R_16BF, CUDA_R_32F};
                unsafe {
                    blas::gemm_ex(
                        *blas_handle.handle(),
                        blas_sys::cublasOperation_t::CUBLAS_OP_T,
                        blas_sys::cublasOperation_t::CUBLAS_OP_N,
                        n as i32,
                        m as i32,
                        k_used,
                        (&alpha) as *const f32 as *const _,
                        wp as *const _,
                        CUDA_R_16BF,
                        k_used,
                        xp as *const _,
                        CUDA_R_16BF,
                        k_used,
                        (&beta) as *const f32 as *const _,
                        cp as *mut _,
                        CUDA_R_32F,
                        n as i32,
                        blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                        blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                    )
                }
            };
        run(&wbd, k as i32, &mut out).unwrap();
        assert_eq!(gpu.stream.clone_dtoh(&out).unwrap(), expect(&widen(&ab), &widen(&wb)));
        // k one too large: B's columns run past its allocation.
        let e = err_text(run(&wbd, k as i32 + 1, &mut out));
        assert!(e.contains("EXECUTION_FAILED"), "{e}");
    }
}
