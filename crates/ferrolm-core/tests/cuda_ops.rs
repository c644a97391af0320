//! The CUDA backend against the CPU backend, op by op, through the public
//! [`Backend`] trait: the same inputs go to both and the outputs are
//! compared, on the shapes where a kernel's indexing goes wrong (widths
//! around warp and block sizes, head dims that are not powers of two, GQA,
//! shuffled block tables, sequences crossing pages, ragged batches whose
//! spans are not in row order, split-KV decode over long contexts). The
//! sampling kernel is checked against its host reference draw by draw and
//! against the distribution it should sample (chi-square).
//!
//! Runs on a real GPU when the machine has one, else on the CUDA emulator
//! (cuda-emulator/), which this file turns on itself when
//! `FERROLM_CUDA_EMULATOR` is unset, so a plain `cargo test` runs it
//! everywhere. The tests skip (with a message) only when neither works;
//! under `FERROLM_REQUIRE_GPU=1` or in CI that is a failure instead.
//!
//! Tolerances. Both backends compute in f32 from the same inputs and differ
//! only in the order of sums (a block tree on the GPU, serial or 16 lanes on
//! the CPU, with or without FMA) and in libm against CUDA's `expf`/`cosf`
//! (at most 2 ulp). Rounding errors of an n-term sum random-walk to about
//! sqrt(n) * 2^-24 relative: 4e-6 for the widest norm here (4097 values);
//! the worst measured on the emulator is 3.6e-6 (decode over 5000 keys;
//! 1.8e-6 for a 1025-long dot product). So [`F32_TOL`] = 1e-5 of a row's
//! scale holds with room, while any indexing mistake shows at O(1).
//!
//! Half precision keeps that tolerance where the inputs can be made
//! identical: keys, values and weights are rounded to bf16/f16 on the host
//! for the CPU (which then holds exactly what the GPU stores), products of
//! two halves are exact in f32, and the kernels widen to f32 exactly. Only
//! half-precision GEMMs get a looser [`HALF_GEMM_TOL`]: on a GPU they run on
//! tensor cores, whose f32 accumulation may truncate (align the products and
//! drop bits) rather than round, so errors grow with k instead of averaging
//! out (the emulator's cuBLAS rounds each f32 addition: 2.5e-6 at most here).

use std::sync::{Mutex, OnceLock};

use ferrolm_core::backend::cpu::{Cpu, CpuKv, CpuOptions};
use ferrolm_core::backend::cuda::{self, Cuda, CudaKv, GpuData};
use ferrolm_core::backend::sample::{sample_row, RowSampling};
use ferrolm_core::backend::{AttentionShape, Backend, KvGeometry, KvKind, KvPart, SeqSpan};
use ferrolm_core::formats::{DType, HostTensor, StoredTensor};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Relative error allowed between f32 computations on both backends (see the module doc).
const F32_TOL: f32 = 1e-5;
/// Relative error allowed for GEMMs with bf16/f16 operands (see the module doc).
const HALF_GEMM_TOL: f32 = 1e-4;

// ---------------------------------------------------------------------------
// Where the CUDA backend runs.

struct Setup {
    /// The CUDA emulator rather than a GPU: fewer sampling draws.
    emulator: bool,
    /// `FERROLM_TEST_SAMPLING_DRAWS`: draws per sampling case.
    draws: Option<usize>,
}

/// How this process runs CUDA, decided once; `None`: skip the test.
fn setup() -> Option<&'static Setup> {
    static SETUP: OnceLock<Result<Setup, (String, bool)>> = OnceLock::new();
    // Every test calls this first, so the environment is read and changed
    // only inside this initialiser, while the other test threads wait here.
    let setup = SETUP.get_or_init(|| {
        let required = std::env::var("FERROLM_REQUIRE_GPU").is_ok_and(|v| v.trim() == "1")
            || std::env::var_os("CI").is_some();
        let draws =
            std::env::var("FERROLM_TEST_SAMPLING_DRAWS").ok().map(|v| {
                v.trim().parse::<usize>().ok().filter(|&n| n > 0).unwrap_or_else(|| {
                    panic!("FERROLM_TEST_SAMPLING_DRAWS={v:?} is not a positive whole number")
                })
            });
        if std::env::var_os("FERROLM_CUDA_EMULATOR").is_none() && !has_gpu() {
            // SAFETY: no other thread reads the environment meanwhile (see above).
            unsafe { std::env::set_var("FERROLM_CUDA_EMULATOR", "1") };
        }
        match cuda::probe(0) {
            Ok(()) => Ok(Setup { emulator: cuda::emulator::active(), draws }),
            Err(e) => Err((e.to_string(), required)),
        }
    });
    match setup {
        Ok(s) => Some(s),
        Err((e, true)) => panic!("no CUDA backend (neither a GPU nor the emulator): {e}"),
        Err((e, false)) => {
            eprintln!("skipped: no CUDA backend (neither a GPU nor the emulator): {e}");
            None
        }
    }
}

/// Whether the machine has an NVIDIA GPU: a device node and the driver's
/// library. Checked without initialising cudarc, which could not switch to
/// the emulator afterwards.
fn has_gpu() -> bool {
    let node = std::fs::read_dir("/dev").is_ok_and(|mut d| {
        d.any(|e| {
            e.is_ok_and(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.strip_prefix("nvidia")
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
        })
    });
    // SAFETY: only tries to dlopen libcuda by its usual names.
    node && unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The CUDA backend with weights in `dtype`, one per dtype for the whole run
/// (each opens the device and loads every kernel).
fn gpu(dtype: DType) -> &'static Cuda {
    static BACKENDS: Mutex<Vec<(DType, &'static Cuda)>> = Mutex::new(Vec::new());
    let mut all = BACKENDS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&(_, b)) = all.iter().find(|(d, _)| *d == dtype) {
        return b;
    }
    let backend = Cuda::new(0, dtype).unwrap_or_else(|e| panic!("the CUDA backend ({dtype:?}): {e}"));
    let backend: &'static Cuda = Box::leak(Box::new(backend));
    all.push((dtype, backend));
    backend
}

fn gpu_f32() -> &'static Cuda {
    gpu(DType::F32)
}

/// The reference: the CPU's exact path (f32 weights, f32 KV).
fn cpu() -> &'static Cpu {
    static CPU: OnceLock<Cpu> = OnceLock::new();
    CPU.get_or_init(|| {
        Cpu::new(CpuOptions { threads: Some(2), exact: true, ..Default::default() }).expect("the CPU backend")
    })
}

// ---------------------------------------------------------------------------
// Data and comparisons.

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `n` values uniform in [-scale, scale).
fn uniform(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// `v` as the GPU stores it in `dtype` (round to nearest even, as the half crate and the kernels do).
fn rounded(v: &[f32], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 => v.to_vec(),
        DType::BF16 => v.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect(),
        DType::F16 => v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
    }
}

fn weight<B: Backend>(b: &B, shape: &[usize], data: &[f32]) -> B::Weight {
    b.upload(StoredTensor::F32(HostTensor::new(shape.to_vec(), data.to_vec()).unwrap()), None).unwrap()
}

/// Activations holding `data` (rows of `width`). The trait has no upload of
/// activations, so they come through an embedding lookup of a table that
/// holds them; `data` must be exact in the backend's weight dtype (checked).
fn activations<B: Backend>(b: &B, data: &[f32], width: usize) -> B::Buf {
    let rows = data.len() / width;
    let table = weight(b, &[rows, width], data);
    let mut out = b.zeros(data.len()).unwrap();
    b.embedding(&table, &(0..rows as u32).collect::<Vec<_>>(), &mut out).unwrap();
    assert!(
        b.to_host(&out).unwrap().iter().zip(data).all(|(a, b)| a.to_bits() == b.to_bits()),
        "activations were not uploaded exactly (not representable in the weight dtype?)"
    );
    out
}

/// Asserts that `got` matches `want` row by row (rows of `width`): the
/// largest difference in a row, relative to the row's largest `want`, is at
/// most `tol` (norm-wise, so that elements near zero are measured against
/// their row's scale, as their rounding errors are).
#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f32], width: usize, tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (r, (g, w)) in got.chunks(width).zip(want.chunks(width)).enumerate() {
        let scale = w.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
        let (i, err) = g
            .iter()
            .zip(w)
            // A NaN on either side is an infinite error.
            .map(|(a, b)| if a.is_nan() || b.is_nan() { f32::INFINITY } else { (a - b).abs() })
            .enumerate()
            .fold((0, 0f32), |(bi, be), (i, e)| if e > be { (i, e) } else { (bi, be) });
        let rel = err / scale;
        assert!(
            rel <= tol,
            "{what}: row {r}, column {i}: {} vs {} (relative error {rel:.2e} > {tol:.0e})",
            g[i],
            w[i]
        );
    }
}

// ---------------------------------------------------------------------------
// Embedding, norms, RoPE, elementwise ops, linear layers.

#[test]
fn embedding_gathers_rows_in_any_order_from_f32_bf16_and_f16_tables() {
    if setup().is_none() {
        return;
    }
    let vocab = 50;
    let ids = [49u32, 0, 7, 7, 49, 3, 48, 1, 0];
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let gpu = gpu(dtype);
        for dim in [1, 2, 33, 256, 1025] {
            let table = uniform(&mut rng(dim as u64), vocab * dim, 2.0);
            let stored = rounded(&table, dtype);
            let w = weight(gpu, &[vocab, dim], &table);
            let half = matches!(w.data, GpuData::Half { dtype: d, .. } if d == dtype);
            assert_eq!(half, dtype != DType::F32, "{dtype:?} tables are stored as {dtype:?}");
            let mut out = gpu.zeros(ids.len() * dim).unwrap();
            gpu.embedding(&w, &ids, &mut out).unwrap();
            let got = gpu.to_host(&out).unwrap();
            let cpu_w = weight(cpu(), &[vocab, dim], &stored);
            let mut want = vec![0.0; ids.len() * dim];
            cpu().embedding(&cpu_w, &ids, &mut want).unwrap();
            // A gather and an exact widening: bit for bit.
            assert_eq!(got, want, "{dtype:?} table, dim {dim}");
            let host: Vec<f32> =
                ids.iter().flat_map(|&i| stored[i as usize * dim..][..dim].to_vec()).collect();
            assert_eq!(got, host, "{dtype:?} table, dim {dim}: rows of the table");
        }
    }
}

/// Widths around a warp (32) and the largest block (1024), and one past 4096.
const NORM_WIDTHS: [usize; 10] = [1, 2, 3, 31, 32, 33, 1023, 1024, 1025, 4097];

#[test]
fn rms_norms_at_widths_around_warps_and_blocks() {
    if setup().is_none() {
        return;
    }
    let gpu = gpu_f32();
    for dim in NORM_WIDTHS {
        // Three groups with different scales, so a group reading its neighbour's sum shows.
        let rows = 3;
        let mut r = rng(dim as u64);
        let mut x = uniform(&mut r, rows * dim, 1.0);
        for (g, s) in x.chunks_mut(dim).zip([1.0, 30.0, 0.01]) {
            g.iter_mut().for_each(|v| *v *= s);
        }
        let y = uniform(&mut r, rows * dim, 1.0);
        let w = uniform(&mut r, dim, 2.0);
        let eps = 1e-6;
        let (gw, cw) = (weight(gpu, &[dim], &w), weight(cpu(), &[dim], &w));
        let (gx, gy) = (activations(gpu, &x, dim), activations(gpu, &y, dim));

        let mut out = gpu.zeros(rows * dim).unwrap();
        gpu.rms_norm(&gx, &gw, eps, dim, &mut out).unwrap();
        let mut want = vec![0.0; rows * dim];
        cpu().rms_norm(&x, &cw, eps, dim, &mut want).unwrap();
        assert_close(&format!("rms_norm, width {dim}"), &gpu.to_host(&out).unwrap(), &want, dim, F32_TOL);

        // The fused residual add: both the sum left in x and its norm.
        let mut gx = gx;
        gpu.add_rms_norm(&mut gx, &gy, &gw, eps, dim, &mut out).unwrap();
        let mut cx = x.clone();
        cpu().add_rms_norm(&mut cx, &y, &cw, eps, dim, &mut want).unwrap();
        assert_close(
            &format!("add_rms_norm sum, width {dim}"),
            &gpu.to_host(&gx).unwrap(),
            &cx,
            dim,
            F32_TOL,
        );
        assert_close(&format!("add_rms_norm, width {dim}"), &gpu.to_host(&out).unwrap(), &want, dim, F32_TOL);
    }
}

/// `inv_freq` of RoPE with base `theta`, as the model computes it.
fn inv_freq(head_dim: usize, theta: f32) -> Vec<f32> {
    (0..head_dim / 2).map(|i| 1.0 / theta.powf(2.0 * i as f32 / head_dim as f32)).collect()
}

#[test]
fn rope_and_fused_head_norm_rope_at_head_dims_64_80_128_256() {
    if setup().is_none() {
        return;
    }
    let gpu = gpu_f32();
    // Positions up to 64K: angles of thousands of radians (rounded to f32
    // first on both sides), where cos and sin need an exact range reduction.
    let positions = [0u32, 1, 15, 16, 4095, 16_383, 65_535];
    let heads = 3;
    for head_dim in [64, 80, 128, 256] {
        for theta in [10_000.0, 1_000_000.0] {
            let width = heads * head_dim;
            let mut r = rng(head_dim as u64);
            let x = uniform(&mut r, positions.len() * width, 1.0);
            let freq = inv_freq(head_dim, theta);

            let mut gx = activations(gpu, &x, width);
            gpu.rope(&mut gx, &positions, head_dim, &freq).unwrap();
            let mut want = x.clone();
            cpu().rope(&mut want, &positions, head_dim, &freq).unwrap();
            let what = format!("rope, head_dim {head_dim}, theta {theta}");
            assert_close(&what, &gpu.to_host(&gx).unwrap(), &want, head_dim, F32_TOL);

            // Qwen3's per-head norm and RoPE (fused on the GPU, two ops on the CPU).
            let w = uniform(&mut r, head_dim, 2.0);
            let mut gx = activations(gpu, &x, width);
            gpu.head_norm_rope(&mut gx, &weight(gpu, &[head_dim], &w), 1e-6, &positions, head_dim, &freq)
                .unwrap();
            let mut want = x.clone();
            cpu()
                .head_norm_rope(&mut want, &weight(cpu(), &[head_dim], &w), 1e-6, &positions, head_dim, &freq)
                .unwrap();
            let what = format!("head_norm_rope, head_dim {head_dim}, theta {theta}");
            assert_close(&what, &gpu.to_host(&gx).unwrap(), &want, head_dim, F32_TOL);
        }
    }
}

#[test]
fn elementwise_ops_and_row_selection() {
    if setup().is_none() {
        return;
    }
    let gpu = gpu_f32();
    // Sizes around the 256-thread blocks of the grid-stride loops.
    for n in [1, 255, 256, 257, 100_003] {
        let mut r = rng(n as u64);
        let (a, b) = (uniform(&mut r, n, 6.0), uniform(&mut r, n, 2.0));
        let (mut ga, gb) = (activations(gpu, &a, n), activations(gpu, &b, n));
        gpu.silu_mul(&mut ga, &gb).unwrap();
        let mut want = a.clone();
        cpu().silu_mul(&mut want, &b).unwrap();
        // Elementwise: each value on its own scale.
        assert_close(&format!("silu_mul, {n} values"), &gpu.to_host(&ga).unwrap(), &want, 1, F32_TOL);
        gpu.add(&mut ga, &gb).unwrap();
        cpu().add(&mut want, &b).unwrap();
        assert_close(&format!("add, {n} values"), &gpu.to_host(&ga).unwrap(), &want, 1, F32_TOL);
    }
    let (width, x) = (33, uniform(&mut rng(1), 7 * 33, 1.0));
    let rows = [6, 0, 3, 3, 6];
    let got = gpu.to_host(&gpu.select_rows(&activations(gpu, &x, width), width, &rows).unwrap()).unwrap();
    assert_eq!(got, cpu().select_rows(&x, width, &rows).unwrap());
}

/// `(rows, in_features, out_features)`: single values, widths around a warp,
/// a long reduction (1025) and a wide output (1023).
const LINEAR_SHAPES: [(usize, usize, usize); 7] =
    [(1, 1, 1), (2, 31, 33), (3, 32, 1), (5, 33, 64), (17, 1025, 65), (1, 64, 1023), (33, 96, 7)];

#[test]
fn linear_layers_with_f32_bf16_and_f16_weights() {
    if setup().is_none() {
        return;
    }
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let gpu = gpu(dtype);
        let tol = if dtype == DType::F32 { F32_TOL } else { HALF_GEMM_TOL };
        for (m, k, n) in LINEAR_SHAPES {
            let what = |op: &str| format!("{op}, {dtype:?} weights, {m}x{k} @ {n}x{k}^T");
            let mut r = rng((m * 1_000_000 + k * 1000 + n) as u64);
            // The GPU multiplies half weights by activations cast to the same
            // half type: both are rounded here, so the CPU multiplies the same values.
            let x = rounded(&uniform(&mut r, m * k, 1.0), dtype);
            let (w1, w2) =
                (rounded(&uniform(&mut r, n * k, 1.0), dtype), rounded(&uniform(&mut r, n * k, 1.0), dtype));
            let bias = uniform(&mut r, n, 1.0);
            let (gw1, gw2, gb) =
                (weight(gpu, &[n, k], &w1), weight(gpu, &[n, k], &w2), weight(gpu, &[n], &bias));
            assert_eq!(
                matches!(gw1.data, GpuData::Half { dtype: d, .. } if d == dtype),
                dtype != DType::F32,
                "{dtype:?} weights are stored as {dtype:?}"
            );
            let (cw1, cw2, cb) =
                (weight(cpu(), &[n, k], &w1), weight(cpu(), &[n, k], &w2), weight(cpu(), &[n], &bias));
            let gx = activations(gpu, &x, k);

            for with_bias in [false, true] {
                let mut out = gpu.zeros(m * n).unwrap();
                gpu.linear(&gx, &gw1, with_bias.then_some(&gb), &mut out).unwrap();
                let mut want = vec![0.0; m * n];
                cpu().linear(&x, &cw1, with_bias.then_some(&cb), &mut want).unwrap();
                let op = if with_bias { "linear + bias" } else { "linear" };
                assert_close(&what(op), &gpu.to_host(&out).unwrap(), &want, n, tol);
            }

            // Several projections of one input, and the gated MLP's first half.
            let (mut o1, mut o2) = (gpu.zeros(m * n).unwrap(), gpu.zeros(m * n).unwrap());
            gpu.linears(&gx, &[(&gw1, Some(&gb)), (&gw2, None)], &mut [&mut o1, &mut o2]).unwrap();
            let (mut c1, mut c2) = (vec![0.0; m * n], vec![0.0; m * n]);
            cpu().linears(&x, &[(&cw1, Some(&cb)), (&cw2, None)], &mut [&mut c1, &mut c2]).unwrap();
            assert_close(&what("linears, first"), &gpu.to_host(&o1).unwrap(), &c1, n, tol);
            assert_close(&what("linears, second"), &gpu.to_host(&o2).unwrap(), &c2, n, tol);
            gpu.swiglu(&gx, (&gw1, Some(&gb)), (&gw2, None), &mut o1).unwrap();
            cpu().swiglu(&x, (&cw1, Some(&cb)), (&cw2, None), &mut c1).unwrap();
            assert_close(&what("swiglu"), &gpu.to_host(&o1).unwrap(), &c1, n, tol);

            // The norm before the projections. With half weights the GPU casts
            // the normalized rows to half: a value one f32 ulp off from the
            // CPU's can round to the other half, so the CPU's reference
            // projects the GPU's normalized rows (checked against the CPU's first).
            let norm = uniform(&mut r, k, 2.0);
            let (gn, cn) = (weight(gpu, &[k], &norm), weight(cpu(), &[k], &norm));
            gpu.norm_linears(&gx, &gn, 1e-6, k, &[(&gw1, Some(&gb))], &mut [&mut o1]).unwrap();
            let mut gh = gpu.zeros(m * k).unwrap();
            gpu.rms_norm(&gx, &gn, 1e-6, k, &mut gh).unwrap();
            let gh = gpu.to_host(&gh).unwrap();
            let mut h = vec![0.0; m * k];
            cpu().rms_norm(&x, &cn, 1e-6, k, &mut h).unwrap();
            assert_close(&what("norm_linears' norm"), &gh, &h, k, F32_TOL);
            cpu().linear(&rounded(&gh, dtype), &cw1, Some(&cb), &mut c1).unwrap();
            assert_close(&what("norm_linears"), &gpu.to_host(&o1).unwrap(), &c1, n, tol);
        }
    }
}

// ---------------------------------------------------------------------------
// Paged attention.

/// The attention geometry of one case and the KV pool's precision on the GPU.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    page_size: usize,
    window: Option<usize>,
    kv: DType,
}

impl Geometry {
    fn new(heads: usize, kv_heads: usize, head_dim: usize, page_size: usize) -> Geometry {
        Geometry { heads, kv_heads, head_dim, page_size, window: None, kv: DType::F32 }
    }

    fn shape(&self) -> AttentionShape {
        AttentionShape {
            num_heads: self.heads,
            num_kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            sliding_window: self.window,
        }
    }

    fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

const LAYERS: usize = 2;

/// The same sequences in a CPU pool and a GPU pool.
struct Pools {
    g: Geometry,
    gpu: &'static Cuda,
    cpu_kv: CpuKv,
    gpu_kv: CudaKv,
    /// Pages in each pool.
    pages: usize,
    /// Each sequence's block table and its length so far.
    tables: Vec<Vec<u32>>,
    lens: Vec<usize>,
    rng: ChaCha8Rng,
}

impl Pools {
    /// Pools with room for sequences of `capacity` positions each, their
    /// pages drawn from a shuffled pool: no block table of several pages is
    /// contiguous and in order.
    fn new(g: Geometry, capacity: &[usize], seed: u64) -> Pools {
        let mut rng = rng(seed);
        let needed: Vec<usize> = capacity.iter().map(|c| c.div_ceil(g.page_size).max(1)).collect();
        let total = needed.iter().sum::<usize>() + 3;
        let mut ids: Vec<u32> = (0..total as u32).collect();
        ids.shuffle(&mut rng);
        let mut free = ids.into_iter();
        let mut tables: Vec<Vec<u32>> = needed.iter().map(|&n| free.by_ref().take(n).collect()).collect();
        for t in &mut tables {
            // A table that came out ascending and contiguous is read backwards.
            if t.windows(2).all(|w| w[1] == w[0] + 1) {
                t.reverse();
            }
        }
        let gpu = gpu(DType::F32);
        let cpu_kv = cpu()
            .new_kv(
                KvGeometry { pages: total, page_size: g.page_size, layers: LAYERS, kv_dim: g.kv_dim() },
                DType::F32,
            )
            .unwrap();
        let gpu_kv = gpu
            .new_kv(
                KvGeometry { pages: total, page_size: g.page_size, layers: LAYERS, kv_dim: g.kv_dim() },
                g.kv,
            )
            .unwrap();
        Pools { g, gpu, cpu_kv, gpu_kv, pages: total, tables, lens: vec![0; capacity.len()], rng }
    }

    /// Writes `len` positions of history (random keys and values, every
    /// layer) to each sequence through the page views, one page at a time.
    fn fill(&mut self, history: &[usize]) {
        let (ps, kv_dim) = (self.g.page_size, self.g.kv_dim());
        for (s, &len) in history.iter().enumerate() {
            for layer in 0..LAYERS {
                for kind in [KvKind::Key, KvKind::Value] {
                    let part = KvPart { layer, kind, kv_heads: self.g.kv_heads, head_dim: self.g.head_dim };
                    let data = uniform(&mut self.rng, len * kv_dim, 1.0);
                    for start in (0..len).step_by(ps) {
                        let rows = &data[start * kv_dim..(start + ps).min(len) * kv_dim];
                        let page = self.tables[s][start / ps];
                        // The CPU's f32 pool holds what the GPU's pool stores.
                        cpu()
                            .write_kv_page(&mut self.cpu_kv, page, part, 0, &rounded(rows, self.g.kv))
                            .unwrap();
                        self.gpu.write_kv_page(&mut self.gpu_kv, page, part, 0, rows).unwrap();
                    }
                }
            }
            self.lens[s] = len;
        }
    }

    /// One batch: `spans[i] = (sequence, new rows)`, in span order, with
    /// rows laid out in a different order than the spans (each span's rows
    /// stay consecutive). Runs attention on every layer (last first) on both
    /// backends and compares the outputs.
    fn step(&mut self, what: &str, spans: &[(usize, usize)]) {
        let g = self.g;
        // Row ranges: spans take rows in a shuffled order, never their own order.
        let mut order: Vec<usize> = (0..spans.len()).collect();
        order.shuffle(&mut self.rng);
        if spans.len() > 1 && order.windows(2).all(|w| w[0] < w[1]) {
            order.reverse();
        }
        let mut first_row = vec![0; spans.len()];
        let mut next = 0;
        for &i in &order {
            first_row[i] = next;
            next += spans[i].1;
        }
        let rows = next;
        let tables = self.tables.clone();
        let seq_spans: Vec<SeqSpan> = spans
            .iter()
            .zip(&first_row)
            .map(|(&(s, len), &row)| SeqSpan { pages: &tables[s], start_pos: self.lens[s], row, len })
            .collect();
        for span in &seq_spans {
            assert!(span.start_pos + span.len <= span.pages.len() * g.page_size, "{what}: capacity");
        }
        let (q_width, kv_dim) = (g.heads * g.head_dim, g.kv_dim());
        for layer in (0..LAYERS).rev() {
            // Queries large enough that scores spread over several units:
            // attention is not a plain average, so every key counts.
            let q = uniform(&mut self.rng, rows * q_width, 4.0);
            let (k, v) =
                (uniform(&mut self.rng, rows * kv_dim, 1.0), uniform(&mut self.rng, rows * kv_dim, 1.0));
            let gpu = self.gpu;
            let (gq, gk, gv) =
                (activations(gpu, &q, q_width), activations(gpu, &k, kv_dim), activations(gpu, &v, kv_dim));
            let mut out = gpu.zeros(rows * q_width).unwrap();
            gpu.attention(&mut self.gpu_kv, layer, &seq_spans, g.shape(), &gq, &gk, &gv, &mut out).unwrap();
            let mut want = vec![0.0; rows * q_width];
            let (ck, cv) = (rounded(&k, g.kv), rounded(&v, g.kv));
            cpu().attention(&mut self.cpu_kv, layer, &seq_spans, g.shape(), &q, &ck, &cv, &mut want).unwrap();
            // Per (row, head): each is a weighted mean of its own values.
            let what = format!("{what}, layer {layer}, {g:?}");
            assert_close(&what, &gpu.to_host(&out).unwrap(), &want, g.head_dim, F32_TOL);
        }
        for &(s, len) in spans {
            self.lens[s] += len;
        }
    }

    /// Copies page `src` over `dst` in both pools; the results of both.
    fn copy_page(&mut self, src: u32, dst: u32) -> [Result<(), String>; 2] {
        [
            self.gpu.copy_page(&mut self.gpu_kv, src, dst).map_err(|e| e.to_string()),
            cpu().copy_page(&mut self.cpu_kv, src, dst).map_err(|e| e.to_string()),
        ]
    }

    /// Every page of every sequence (all layers, keys and values) holds the
    /// same values in both pools: each row was stored at its own slot.
    fn check_pages(&self, what: &str) {
        for (s, table) in self.tables.iter().enumerate() {
            for &page in table {
                for layer in 0..LAYERS {
                    for kind in [KvKind::Key, KvKind::Value] {
                        let part =
                            KvPart { layer, kind, kv_heads: self.g.kv_heads, head_dim: self.g.head_dim };
                        let got = self.gpu.read_kv_page(&self.gpu_kv, page, part).unwrap();
                        let want = cpu().read_kv_page(&self.cpu_kv, page, part).unwrap();
                        assert!(
                            got == want,
                            "{what}: sequence {s}, page {page}, layer {layer}, {kind:?} differ"
                        );
                    }
                }
            }
        }
    }
}

/// A ragged batch and then a decode step over five sequences placed where
/// pages end: a chunk continuing a prompt across a page boundary, a decode
/// row deep in the cache, a fresh prompt longer than a page (and than a
/// prefill tile), a decode row on a page's last slot, a first token.
fn ragged_batch_then_decode(what: &str, g: Geometry, seed: u64) {
    let ps = g.page_size;
    let history = [0, 2 * ps + 8, ps - 3, 0, ps - 1];
    let mixed = [(2, 7), (1, 1), (0, ps + 5), (4, 1), (3, 1)];
    let capacity: Vec<usize> = history.iter().map(|h| h + ps + 7).collect();
    let mut pools = Pools::new(g, &capacity, seed);
    pools.fill(&history);
    pools.step(&format!("{what}, prefill chunks and decode rows"), &mixed);
    pools.step(&format!("{what}, decode"), &[(3, 1), (0, 1), (4, 1), (1, 1), (2, 1)]);
    pools.check_pages(what);
}

#[test]
fn paged_attention_head_dims_gqa_ratios_and_page_sizes() {
    if setup().is_none() {
        return;
    }
    for head_dim in [64, 80, 128, 256] {
        for gqa in [1, 2, 4, 8] {
            for page_size in [16, 32] {
                let kv_heads = if gqa <= 2 { 2 } else { 1 };
                let g = Geometry::new(kv_heads * gqa, kv_heads, head_dim, page_size);
                let seed = (head_dim * 100 + gqa * 10 + page_size) as u64;
                ragged_batch_then_decode(
                    &format!("head_dim {head_dim}, gqa {gqa}, pages of {page_size}"),
                    g,
                    seed,
                );
            }
        }
    }
}

#[test]
fn paged_attention_with_bf16_and_f16_kv() {
    if setup().is_none() {
        return;
    }
    for kv in [DType::BF16, DType::F16] {
        for (heads, kv_heads, head_dim, page_size) in [(8, 2, 80, 16), (4, 2, 128, 32), (8, 1, 64, 16)] {
            let g = Geometry { kv, ..Geometry::new(heads, kv_heads, head_dim, page_size) };
            ragged_batch_then_decode(&format!("{kv:?} KV"), g, head_dim as u64);
        }
    }
}

#[test]
fn paged_attention_with_a_sliding_window() {
    if setup().is_none() {
        return;
    }
    for (page_size, kv) in [(16, DType::F32), (32, DType::BF16)] {
        let g = Geometry { window: Some(24), kv, ..Geometry::new(4, 2, 64, page_size) };
        // A chunk whose window starts inside a page, a short sequence inside
        // the window, a fresh prompt longer than the window (its later tiles
        // skip keys), then decode rows past the window.
        let history = [50, 10, 0];
        let mut pools = Pools::new(g, &[80, 20, 50], page_size as u64);
        pools.fill(&history);
        pools.step("sliding window, prefill", &[(0, 20), (1, 1), (2, 40)]);
        pools.step("sliding window, decode", &[(2, 1), (0, 1), (1, 1)]);
        pools.check_pages("sliding window");
    }
}

/// Prompt chunks continuing deep in a sequence (chunked prefill): the
/// prefill kernel walks a long cache in key tiles, here beside a decode row
/// of a longer sequence and, under a window, from inside a page. Few heads
/// and a small head_dim keep the emulator fast.
#[test]
fn prefill_chunks_deep_in_long_contexts() {
    if setup().is_none() {
        return;
    }
    for (window, kv) in [(None, DType::F32), (Some(300), DType::F16)] {
        let g = Geometry { window, kv, ..Geometry::new(2, 1, 32, 16) };
        let mut pools = Pools::new(g, &[1030, 1502], 7);
        pools.fill(&[1003, 1500]);
        pools.step(&format!("prefill at position 1003, window {window:?}"), &[(1, 1), (0, 20)]);
        pools.check_pages(&format!("prefill at position 1003, window {window:?}"));
    }
}

/// A decode step of many sequences: enough (row, head) pairs to fill the
/// GPU without splitting, and a block table per row.
#[test]
fn decode_steps_of_many_sequences() {
    if setup().is_none() {
        return;
    }
    let g = Geometry::new(8, 2, 64, 16);
    let history: Vec<usize> = (0..40).map(|i| (i * 37) % 101).collect();
    let capacity: Vec<usize> = history.iter().map(|h| h + 2).collect();
    let mut pools = Pools::new(g, &capacity, 40);
    pools.fill(&history);
    let decode: Vec<(usize, usize)> = (0..history.len()).map(|s| (s, 1)).collect();
    pools.step("decode of 40 sequences", &decode);
    pools.step("decode of 40 sequences", &decode);
    pools.check_pages("decode of 40 sequences");
}

/// Decode over long contexts, split along the sequence into partial
/// softmaxes that are merged after. Few heads and a small head_dim keep the
/// emulator fast. The split counts in the comments are those of a GPU of 132
/// SMs (the emulator, H100, H200): `min(2 * SMs / (rows * heads), context / 256)`, at most 64.
#[test]
fn split_kv_decode_over_long_contexts() {
    if setup().is_none() {
        return;
    }
    // (contexts before the step, sliding window, page size, KV precision).
    let cases: [(&[usize], Option<usize>, usize, DType); 5] = [
        // 3 splits.
        (&[700], None, 16, DType::F32),
        // 8 splits; the short row's later splits see no key at all.
        (&[1900, 4], None, 32, DType::BF16),
        // 20 splits, with a first token.
        (&[5000, 0, 4998, 299], None, 16, DType::F16),
        // 64 splits (65 would be needed for 256 keys each).
        (&[16_499, 1000], None, 32, DType::F32),
        // Only the window is split: 16 splits of 256 keys from position 11,904 on.
        (&[16_000, 100], Some(4096), 16, DType::F32),
    ];
    for (i, (history, window, page_size, kv)) in cases.into_iter().enumerate() {
        let g = Geometry { window, kv, ..Geometry::new(2, 1, 32, page_size) };
        let capacity: Vec<usize> = history.iter().map(|h| h + 1).collect();
        let mut pools = Pools::new(g, &capacity, i as u64);
        pools.fill(history);
        let decode: Vec<(usize, usize)> = (0..history.len()).rev().map(|s| (s, 1)).collect();
        let what = format!("split-KV decode, contexts {history:?}");
        pools.step(&what, &decode);
        pools.check_pages(&what);
    }
}

#[test]
fn copied_pages_carry_every_layer_and_diverge_after() {
    if setup().is_none() {
        return;
    }
    for kv in [DType::F32, DType::BF16, DType::F16] {
        let g = Geometry { kv, ..Geometry::new(4, 2, 64, 16) };
        // Sequence 1 forks sequence 0 after 20 positions: it shares the full
        // first page and gets a copy of the partly written second one.
        let mut pools = Pools::new(g, &[40, 40], kv as u64);
        pools.fill(&[20, 0]);
        let (src, dst) = (pools.tables[0][1], pools.tables[1][1]);
        pools.tables[1][0] = pools.tables[0][0];
        pools.lens[1] = 20;
        assert_eq!(pools.copy_page(src, dst), [Ok(()), Ok(())]);
        pools.check_pages(&format!("{kv:?} KV, after the copy"));
        pools.step(&format!("{kv:?} KV, after the fork"), &[(1, 3), (0, 1)]);
        pools.step(&format!("{kv:?} KV, after the fork"), &[(0, 1), (1, 1)]);
        pools.check_pages(&format!("{kv:?} KV, after the fork"));
    }
}

/// A page copied from one never written reads as zeros, as its source does;
/// a page outside the pool is an error on both backends (on the GPU, never a
/// copy beyond the pool's memory).
#[test]
fn copies_of_unwritten_and_missing_pages() {
    if setup().is_none() {
        return;
    }
    for kv in [DType::F32, DType::BF16] {
        let g = Geometry { kv, ..Geometry::new(2, 1, 64, 16) };
        let mut pools = Pools::new(g, &[32, 16], 5);
        pools.fill(&[32, 0]);
        let (written, unwritten) = (pools.tables[0][1], pools.tables[1][0]);
        assert_eq!(pools.copy_page(unwritten, written), [Ok(()), Ok(())]);
        pools.check_pages(&format!("{kv:?} KV, a copy of an unwritten page"));
        for layer in 0..LAYERS {
            let part = KvPart { layer, kind: KvKind::Value, kv_heads: 1, head_dim: 64 };
            let page = cpu().read_kv_page(&pools.cpu_kv, written, part).unwrap();
            assert!(
                page.iter().all(|&v| v == 0.0),
                "{kv:?} KV: the copy of an unwritten page reads as zeros"
            );
        }
        let pages = pools.pages as u32;
        for (src, dst) in [(pages, 0), (0, pages), (u32::MAX, u32::MAX)] {
            for (backend, r) in ["GPU", "CPU"].iter().zip(pools.copy_page(src, dst)) {
                let e =
                    r.expect_err(&format!("{backend}: copy_page({src}, {dst}) of a pool of {pages} pages"));
                assert!(e.contains("does not exist"), "{backend}: {e}");
            }
        }
        // The pools are still whole (on the GPU, no fault made the context unusable).
        pools.step(&format!("{kv:?} KV, after refused copies"), &[(1, 1)]);
        pools.check_pages(&format!("{kv:?} KV, after refused copies"));
    }
}

// ---------------------------------------------------------------------------
// Sampling.

fn row(temperature: f32, top_k: u32, top_p: f32, min_p: f32, uniform: f32) -> RowSampling {
    RowSampling { temperature, top_k, top_p, min_p, uniform }
}

/// `log_softmax(logits)[token]`, in f64.
fn log_prob(logits: &[f32], token: u32) -> f64 {
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let z: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    logits[token as usize] as f64 - max - z.ln()
}

/// Samples every row of `params` on the GPU, each over the same `logits`,
/// in one launch; checks each log-probability.
fn sample_on_gpu(logits: &[f32], params: &[RowSampling]) -> Vec<u32> {
    let gpu = gpu_f32();
    let vocab = logits.len();
    let batch: Vec<f32> = params.iter().flat_map(|_| logits.iter().copied()).collect();
    let got = gpu.sample_rows(&activations(gpu, &batch, vocab), vocab, params).unwrap();
    assert_eq!(got.len(), params.len());
    for (&(token, lp), p) in got.iter().zip(params) {
        assert!((token as usize) < vocab, "token {token} of a vocabulary of {vocab} ({p:?})");
        let want = log_prob(logits, token);
        // A log-sum-exp of up to 3000 terms in f32.
        assert!(
            (lp as f64 - want).abs() <= 1e-5 * want.abs().max(1.0),
            "log-prob of {token}: {lp} vs {want}"
        );
    }
    got.into_iter().map(|(t, _)| t).collect()
}

#[test]
fn greedy_sampling_picks_the_first_of_tied_maxima() {
    if setup().is_none() {
        return;
    }
    // (vocab, tied maxima): ties within a thread's strided slice, across
    // threads, across a 1024-wide block, and at the last index.
    let cases: [(usize, &[usize]); 6] = [
        (1, &[0]),
        (7, &[0, 1, 2, 3, 4, 5, 6]),
        (1025, &[1024, 5]),
        (1025, &[1000, 1024]),
        (3000, &[1027, 3, 2999]),
        (3000, &[2999]),
    ];
    for (i, (vocab, ties)) in cases.into_iter().enumerate() {
        let mut logits = uniform(&mut rng(i as u64), vocab, 2.0);
        ties.iter().for_each(|&t| logits[t] = 3.5);
        let first = *ties.iter().min().unwrap() as u32;
        let mut params = vec![];
        for u in [0.0, 0.3, 0.999] {
            params.push(row(0.0, 0, 1.0, 0.0, u));
            params.push(row(0.0, 7, 0.5, 0.2, u)); // filters do not apply at temperature 0
        }
        let got = sample_on_gpu(&logits, &params);
        for (t, p) in got.iter().zip(&params) {
            assert_eq!(*t, first, "vocab {vocab}, maxima at {ties:?}: {p:?}");
            assert_eq!(*t, sample_row(&logits, p).0, "the host reference agrees ({p:?})");
        }
    }
    // Filters that leave only the (single) best token pick it whatever the random number.
    let mut logits = uniform(&mut rng(9), 3000, 2.0);
    logits[1777] = 2.5;
    let mut params = vec![];
    for u in [0.0, 0.25, 0.5, 0.999_999] {
        params.extend([row(1.0, 1, 1.0, 0.0, u), row(0.7, 0, 1e-6, 0.0, u), row(1.3, 0, 1.0, 1.0, u)]);
    }
    let got = sample_on_gpu(&logits, &params);
    for (t, p) in got.iter().zip(&params) {
        assert_eq!(*t, 1777, "{p:?}");
    }
}

/// The distribution `p` samples from, computed independently of the
/// kernel's bisections: softmax at the temperature, the k largest logits,
/// the smallest set of the heaviest tokens holding `top_p` of the mass, then
/// the weights at least `min_p` of the best one's. Panics when the case is
/// designed on an edge where rounding could decide what is kept.
fn expected_distribution(logits: &[f32], p: &RowSampling) -> Vec<f64> {
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let w: Vec<f64> = logits.iter().map(|&x| ((x as f64 - max) / p.temperature as f64).exp()).collect();
    let mut keep = vec![true; logits.len()];
    let k = p.top_k as usize;
    if k > 0 && k < logits.len() {
        let mut sorted = logits.to_vec();
        sorted.sort_by(|a, b| b.total_cmp(a));
        assert!(sorted[k - 1] > sorted[k], "test design: a tie at the top-k boundary");
        keep = logits.iter().map(|&x| x >= sorted[k - 1]).collect();
    }
    if p.top_p < 1.0 {
        let total: f64 = (0..w.len()).filter(|&i| keep[i]).map(|i| w[i]).sum();
        let mut heavy: Vec<usize> = (0..w.len()).filter(|&i| keep[i]).collect();
        heavy.sort_by(|&a, &b| w[b].total_cmp(&w[a]));
        let mut acc = 0.0;
        let mut cutoff = 0.0;
        for &i in &heavy {
            let before = acc / total;
            acc += w[i];
            if acc >= p.top_p as f64 * total {
                assert!(p.top_p as f64 - before > 1e-3, "test design: top-p lands on a token boundary");
                cutoff = w[i];
                break;
            }
        }
        keep.iter_mut().zip(&w).for_each(|(k, &w)| *k &= w >= cutoff);
    }
    for (k, &w) in keep.iter_mut().zip(&w) {
        if *k && p.min_p > 0.0 {
            assert!((w / p.min_p as f64 - 1.0).abs() > 1e-3, "test design: a weight on the min-p floor");
        }
        *k &= w >= p.min_p as f64;
    }
    let kept: f64 = (0..w.len()).filter(|&i| keep[i]).map(|i| w[i]).sum();
    (0..w.len()).map(|i| if keep[i] { w[i] / kept } else { 0.0 }).collect()
}

/// The upper 1e-6 quantile of chi-square with `df` degrees of freedom
/// (Wilson-Hilferty; above the exact value for small `df`, so conservative).
fn chi_square_critical(df: usize) -> f64 {
    let (df, z) = (df as f64, 4.7534); // z: the standard normal's upper 1e-6 quantile
    let a = 2.0 / (9.0 * df);
    df * (1.0 - a + z * a.sqrt()).powi(3)
}

/// Pearson's chi-square of `counts` against `probs`, over the tokens
/// expected at least 5 times, the others pooled.
/// Tokens of probability 0 must never come up.
fn check_distribution(what: &str, counts: &[usize], probs: &[f64]) {
    let n: usize = counts.iter().sum();
    let (mut cells, mut pooled) = (vec![], (0.0, 0.0));
    for (&c, &p) in counts.iter().zip(probs) {
        assert!(p > 0.0 || c == 0, "{what}: a token outside the kept set came up {c} times");
        let expected = p * n as f64;
        if expected >= 5.0 {
            cells.push((c as f64, expected));
        } else if p > 0.0 {
            pooled = (pooled.0 + c as f64, pooled.1 + expected);
        }
    }
    // The pool is a cell of its own when it expects 5 draws too, else part
    // of the least likely cell (a stray draw in a cell expecting 0.01 would
    // weigh 100 alone: chi-square needs cells of a few expected draws).
    let smallest = (0..cells.len()).min_by(|&a, &b| cells[a].1.total_cmp(&cells[b].1));
    match smallest {
        Some(i) if pooled.1 < 5.0 => cells[i] = (cells[i].0 + pooled.0, cells[i].1 + pooled.1),
        _ if pooled.1 > 0.0 => cells.push(pooled),
        _ => {}
    }
    if cells.len() < 2 {
        return; // one outcome: the check above says it all
    }
    let stat: f64 = cells.iter().map(|(o, e)| (o - e) * (o - e) / e).sum();
    let critical = chi_square_critical(cells.len() - 1);
    assert!(stat <= critical, "{what}: chi-square {stat:.1} > {critical:.1} over {} cells", cells.len());
}

/// Draws of a case checked one by one against the host reference.
const HOST_CHECKED_DRAWS: usize = 2000;

#[test]
fn sampled_tokens_follow_the_host_reference_and_the_filtered_distribution() {
    let Some(setup) = setup() else { return };
    // Logits of 64 distinct values; and a large vocabulary whose 40
    // plausible tokens are scattered over the kernel's per-thread chunks.
    let small = uniform(&mut rng(64), 64, 3.0);
    let mut large = vec![-12.0f32; 3000];
    let mut r = rng(3000);
    for _ in 0..40 {
        let i = r.random_range(0..large.len());
        large[i] = r.random_range(0.0..3.0);
    }
    // (what, logits, parameters, draws on the emulator). A row is a block of
    // 1024 threads, which the emulator runs as fibers switching at every
    // barrier and shuffle: about 3 ms of CPU a row at a temperature, 30 ms
    // with a top-k or a top-p (40 bisection steps each), 60 ms with both. So
    // the emulator draws 1000 (100 to 200 for the costly cases), about 25 s
    // of CPU in all, where a GPU draws 10,000.
    let cases: [(&str, &[f32], RowSampling, usize); 5] = [
        ("temperature 0.7", &large, row(0.7, 0, 1.0, 0.0, 0.0), 1000),
        ("top-k 5", &small, row(1.0, 5, 1.0, 0.0, 0.0), 200),
        ("top-p 0.8", &small, row(1.2, 0, 0.8, 0.0, 0.0), 200),
        ("min-p 0.1", &small, row(1.0, 0, 1.0, 0.1, 0.0), 1000),
        ("top-k 20, top-p 0.9, min-p 0.05", &large, row(0.8, 20, 0.9, 0.05, 0.0), 100),
    ];
    for (i, (what, logits, p, emulated)) in cases.into_iter().enumerate() {
        let draws = setup.draws.unwrap_or(if setup.emulator { emulated } else { 10_000 });
        let mut r = rng(1000 + i as u64);
        let params: Vec<RowSampling> = (0..draws).map(|_| RowSampling { uniform: r.random(), ..p }).collect();
        let got = sample_on_gpu(logits, &params);
        // Draw by draw, the kernel picks what its host reference picks, but
        // for a random number within rounding of the boundary between two
        // tokens (the two sum the same weights in different orders). The
        // reference is a debug build's serial loop: the first draws suffice.
        let mut near_boundary = 0;
        for (&t, q) in got.iter().zip(&params).take(HOST_CHECKED_DRAWS) {
            if t == sample_row(logits, q).0 {
                continue;
            }
            let nudged = |d: f32| {
                sample_row(logits, &RowSampling { uniform: (q.uniform + d).clamp(0.0, 0.999_999_9), ..*q }).0
            };
            assert!(
                t == nudged(-1e-4) || t == nudged(1e-4),
                "{what}: the kernel picked {t} for {q:?}, the host {}",
                sample_row(logits, q).0
            );
            near_boundary += 1;
        }
        assert!(
            near_boundary * 100 <= draws.min(HOST_CHECKED_DRAWS),
            "{what}: {near_boundary} draws differ from the host's"
        );
        let mut counts = vec![0; logits.len()];
        got.iter().for_each(|&t| counts[t as usize] += 1);
        check_distribution(&format!("{what}, {draws} draws"), &counts, &expected_distribution(logits, &p));
    }
}
