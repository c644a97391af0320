//! `_core.PagedKVCache`: the engine's paged KV cache (`KvCache`: page pool,
//! prefix cache, page storage) behind the Python views `ferrolm.PagedKVCache`,
//! `mili.kv_cache.KVCacheAllocator` and `mili.radix.RadixAttentionCache`.
//! Without a geometry it is bookkeeping only (page ids, reference counts,
//! prefix sharing); with one, pages also hold keys and values that are read
//! and written as numpy float32 `[positions, kv_heads, head_dim]`.

use std::sync::Mutex;

use ferrolm_core::backend::cpu::Cpu;
use ferrolm_core::backend::cuda::Cuda;
use ferrolm_core::backend::{AnyBackend, KvKind, KvPart, OnDevice};
use ferrolm_core::kv::{KvShape, PoolStats};
use ferrolm_core::{on_device, DType, Device, Error, KvCache, KvLayout, Result};
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{run, to_py};
use crate::tokens::token_ids;

/// The cache with the backend that owns its storage.
type Pages = OnDevice<(Cpu, KvCache<Cpu>), (Cuda, KvCache<Cuda>)>;

/// What each page stores per position when the cache holds data.
#[derive(Clone, Copy)]
struct Geometry {
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
}

#[pyclass(module = "ferrolm._core")]
pub struct PagedKVCache {
    pages: Mutex<Pages>,
    page_size: usize,
    num_pages: usize,
    geometry: Option<Geometry>,
    dtype: &'static str,
    device: String,
}

/// One page id from Python (negative ids name no page).
fn page_id(p: i64) -> Result<u32> {
    u32::try_from(p).map_err(|_| Error::InvalidInput(format!("page {p} does not exist")))
}

fn page_ids(ps: Vec<i64>) -> Result<Vec<u32>> {
    ps.into_iter().map(page_id).collect()
}

fn seq_id(s: i64) -> Result<usize> {
    usize::try_from(s).map_err(|_| Error::InvalidInput(format!("no live sequence {s} in this KV cache")))
}

/// Opens the backend that stores the pages (on the CPU one thread: it only
/// copies; no weights are loaded) and the cache of `dtype` values.
fn open(device: &str, dtype: DType, geo: Geometry, layout: KvLayout) -> Result<Pages> {
    let shape = KvShape { layers: geo.layers, kv_dim: geo.kv_heads * geo.head_dim, dtype };
    let max_len = layout.num_pages * layout.page_size;
    Ok(match AnyBackend::open(Device::parse(device)?, Some(DType::F32), Some(1))? {
        OnDevice::Cpu(cpu) => {
            let cache = KvCache::new(&cpu, shape, layout, max_len, true)?;
            OnDevice::Cpu((cpu, cache))
        }
        OnDevice::Cuda(gpu) => {
            let cache = KvCache::new(&gpu, shape, layout, max_len, true)?;
            OnDevice::Cuda((gpu, cache))
        }
    })
}

/// A pool's page counts as dict items (free = on the free list, available =
/// free + cached), shared by every stats dict that reports a pool.
pub fn set_page_counts(d: &Bound<'_, PyDict>, s: &PoolStats) -> PyResult<()> {
    d.set_item("total_pages", s.total_pages)?;
    d.set_item("used_pages", s.used_pages)?;
    d.set_item("cached_pages", s.cached_pages)?;
    d.set_item("free_pages", s.free_pages)?;
    d.set_item("available_pages", s.available_pages)
}

impl PagedKVCache {
    fn with<T: Send>(&self, py: Python<'_>, f: impl FnOnce(&mut Pages) -> Result<T> + Send) -> PyResult<T> {
        run(py, || f(&mut self.pages.lock().unwrap_or_else(|e| e.into_inner())))
    }

    /// The part of a page `cache_type` and `layer` name.
    fn part(&self, cache_type: &str, layer: i64) -> Result<KvPart> {
        let geo = self.geometry.ok_or_else(|| {
            Error::InvalidInput(
                "this PagedKVCache holds no keys or values (bookkeeping only); create it with a \
                 config (or num_layers, num_kv_heads and head_dim) to store them"
                    .into(),
            )
        })?;
        let kind = KvKind::parse(cache_type)?;
        let layer = usize::try_from(layer).ok().filter(|&l| l < geo.layers).ok_or_else(|| {
            Error::InvalidInput(format!(
                "layer {layer} is out of range; the KV cache holds layers 0..{}",
                geo.layers
            ))
        })?;
        Ok(KvPart { layer, kind, kv_heads: geo.kv_heads, head_dim: geo.head_dim })
    }

    /// `[rows, kv_heads, head_dim]` float32 for Python.
    fn array<'py>(py: Python<'py>, data: Vec<f32>, part: KvPart) -> PyResult<Bound<'py, PyAny>> {
        let rows = data.len() / part.row_len();
        Ok(PyArray1::from_vec(py, data).reshape([rows, part.kv_heads, part.head_dim])?.into_any())
    }
}

#[pymethods]
impl PagedKVCache {
    /// `num_pages` pages of `page_size` positions. With `num_layers`,
    /// `num_kv_heads` and `head_dim`, every page also stores keys and values
    /// of every layer in `dtype` ("float16" or "float32") on `device`.
    #[new]
    #[pyo3(signature = (num_pages, page_size=16, num_layers=None, num_kv_heads=None, head_dim=None,
                        dtype="float16", device="cpu"))]
    fn new(
        num_pages: usize,
        page_size: usize,
        num_layers: Option<usize>,
        num_kv_heads: Option<usize>,
        head_dim: Option<usize>,
        dtype: &str,
        device: &str,
    ) -> PyResult<Self> {
        let layout = KvLayout { page_size, num_pages };
        let kv_dtype = DType::parse(dtype).map_err(to_py)?;
        let geometry = match (num_layers, num_kv_heads, head_dim) {
            (Some(layers), Some(kv_heads), Some(head_dim)) => Some(Geometry { layers, kv_heads, head_dim }),
            (None, None, None) => None,
            _ => {
                return Err(to_py(Error::InvalidInput(
                    "pass all of num_layers, num_kv_heads and head_dim (to store keys and values) or none \
                     (bookkeeping only)"
                        .into(),
                )))
            }
        };
        if let Some(g) = geometry.filter(|g| g.layers == 0 || g.kv_heads == 0 || g.head_dim == 0) {
            return Err(to_py(Error::InvalidInput(format!(
                "num_layers, num_kv_heads and head_dim must be at least 1, got {}, {} and {}",
                g.layers, g.kv_heads, g.head_dim
            ))));
        }
        // Bookkeeping only: a pool whose pages store nothing (zero layers).
        let storage = geometry.unwrap_or(Geometry { layers: 0, kv_heads: 0, head_dim: 1 });
        let pages = open(device, kv_dtype, storage, layout).map_err(to_py)?;
        let dtype = kv_dtype.name();
        let device = Device::parse(device).map_err(to_py)?.to_string();
        Ok(PagedKVCache { pages: Mutex::new(pages), page_size, num_pages, geometry, dtype, device })
    }

    /// Takes `num_pages` pages (each with one reference), or None if the pool has fewer free.
    fn allocate_pages(&self, py: Python<'_>, num_pages: usize) -> PyResult<Option<Vec<u32>>> {
        self.with(py, |p| Ok(on_device!(p, |(_, c)| c.allocate_pages(num_pages))))
    }

    /// Takes one page (one reference); KVCacheFullError when none is free.
    fn allocate_page(&self, py: Python<'_>) -> PyResult<u32> {
        self.with(py, |p| on_device!(p, |(_, c)| c.allocate_page()))
    }

    /// Adds a reference to each page (sharing it).
    fn add_reference(&self, py: Python<'_>, page_ids: Vec<i64>) -> PyResult<()> {
        self.with(py, |p| on_device!(p, |(_, c)| c.add_page_refs(&self::page_ids(page_ids)?)))
    }

    /// Drops one reference from each page; pages left unreferenced are free again.
    fn free_pages(&self, py: Python<'_>, page_ids: Vec<i64>) -> PyResult<()> {
        self.with(py, |p| on_device!(p, |(_, c)| c.release_pages(&self::page_ids(page_ids)?)))
    }

    fn ref_count(&self, py: Python<'_>, page_id: i64) -> PyResult<u32> {
        self.with(py, |p| {
            let page = self::page_id(page_id)?;
            let pool = on_device!(p, |(_, c)| c.pool());
            if page as usize >= pool.total() {
                return Err(Error::InvalidInput(format!("page {page_id} does not exist")));
            }
            Ok(pool.ref_count(page))
        })
    }

    #[getter]
    fn page_size(&self) -> usize {
        self.page_size
    }

    #[getter]
    fn num_pages(&self) -> usize {
        self.num_pages
    }

    /// `(num_layers, num_kv_heads, head_dim)`, or None when bookkeeping only.
    #[getter]
    fn geometry(&self) -> Option<(usize, usize, usize)> {
        self.geometry.map(|g| (g.layers, g.kv_heads, g.head_dim))
    }

    #[getter]
    fn dtype(&self) -> &'static str {
        self.dtype
    }

    #[getter]
    fn device(&self) -> &str {
        &self.device
    }

    /// `{"total_pages", "used_pages", "cached_pages", "free_pages", "available_pages", "page_size"}`
    /// (the core's `PoolStats`: free = on the free list, available = free + cached).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.with(py, |p| Ok(on_device!(p, |(_, c)| c.stats())))?;
        let d = PyDict::new(py);
        set_page_counts(&d, &s)?;
        d.set_item("page_size", self.page_size)?;
        Ok(d)
    }

    /// `(prefix_queries, prefix_hits)`: prefix-cache lookups and how many found a page.
    fn prefix_stats(&self, py: Python<'_>) -> PyResult<(u64, u64)> {
        let s = self.with(py, |p| Ok(on_device!(p, |(_, c)| c.stats())))?;
        Ok((s.prefix_queries, s.prefix_hits))
    }

    /// One allocated page's keys or values of `layer`: `[page_size, kv_heads, head_dim]`.
    #[pyo3(signature = (page_id, cache_type="k", layer=0))]
    fn read_page<'py>(
        &self,
        py: Python<'py>,
        page_id: i64,
        cache_type: &str,
        layer: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let part = self.part(cache_type, layer).map_err(to_py)?;
        let data =
            self.with(py, |p| on_device!(p, |(b, c)| c.read_page(b, self::page_id(page_id)?, part)))?;
        Self::array(py, data, part)
    }

    /// Positions `0..seq_len` over `page_ids` in order: `[seq_len, kv_heads, head_dim]`.
    #[pyo3(signature = (page_ids, seq_len, cache_type="k", layer=0))]
    fn gather_pages<'py>(
        &self,
        py: Python<'py>,
        page_ids: Vec<i64>,
        seq_len: usize,
        cache_type: &str,
        layer: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let part = self.part(cache_type, layer).map_err(to_py)?;
        let data = self
            .with(py, |p| on_device!(p, |(b, c)| c.gather(b, &self::page_ids(page_ids)?, seq_len, part)))?;
        Self::array(py, data, part)
    }

    /// Writes `data` (float32 `[n, kv_heads, head_dim]`) to positions `0..n` over `page_ids`.
    #[pyo3(signature = (page_ids, data, cache_type="k", layer=0))]
    fn write_pages(
        &self,
        py: Python<'_>,
        page_ids: Vec<i64>,
        data: PyReadonlyArrayDyn<'_, f32>,
        cache_type: &str,
        layer: i64,
    ) -> PyResult<()> {
        let part = self.part(cache_type, layer).map_err(to_py)?;
        let shape = data.shape().to_vec();
        if shape.len() != 3 || shape[1..] != [part.kv_heads, part.head_dim] {
            return Err(to_py(Error::ShapeMismatch {
                name: "data".into(),
                expected: vec![shape.first().copied().unwrap_or(0), part.kv_heads, part.head_dim],
                got: shape,
            }));
        }
        // Read in place (the Python view passes a C-contiguous array); copy otherwise.
        let copied: Vec<f32>;
        let data = match data.as_slice() {
            Ok(slice) => slice,
            Err(_) => {
                copied = data.as_array().iter().copied().collect();
                &copied
            }
        };
        self.with(py, |p| on_device!(p, |(b, c)| c.write(b, &self::page_ids(page_ids)?, part, data)))
    }

    /// Starts a sequence holding `tokens`, sharing the prefix cache's pages:
    /// `(seq_id, shared_pages, allocated_pages, cached_tokens)`.
    fn add_sequence(&self, py: Python<'_>, tokens: Vec<i64>) -> PyResult<(usize, Vec<u32>, Vec<u32>, usize)> {
        let tokens = token_ids(tokens).map_err(to_py)?;
        let p = self.with(py, |p| on_device!(p, |(b, c)| c.add_prompt(b, &tokens)))?;
        Ok((p.seq, p.shared, p.allocated, p.cached_tokens))
    }

    /// Ends a sequence; its full pages stay cached for later prompts.
    fn remove_sequence(&self, py: Python<'_>, seq_id: i64) -> PyResult<()> {
        self.with(py, |p| on_device!(p, |(_, c)| c.remove_sequence(self::seq_id(seq_id)?)))
    }

    /// The block table of a live sequence.
    fn sequence_pages(&self, py: Python<'_>, seq_id: i64) -> PyResult<Vec<u32>> {
        self.with(py, |p| {
            let id = self::seq_id(seq_id)?;
            on_device!(p, |(_, c)| c.contains(id).then(|| c.pages(id).to_vec()))
                .ok_or_else(|| Error::InvalidInput(format!("no live sequence {seq_id} in this KV cache")))
        })
    }

    /// Positions a live sequence holds.
    fn sequence_len(&self, py: Python<'_>, seq_id: i64) -> PyResult<usize> {
        self.with(py, |p| {
            let id = self::seq_id(seq_id)?;
            on_device!(p, |(_, c)| c.contains(id).then(|| c.len(id)))
                .ok_or_else(|| Error::InvalidInput(format!("no live sequence {seq_id} in this KV cache")))
        })
    }

    /// Every position of a live sequence: `[len, kv_heads, head_dim]`.
    #[pyo3(signature = (seq_id, cache_type="k", layer=0))]
    fn read_sequence<'py>(
        &self,
        py: Python<'py>,
        seq_id: i64,
        cache_type: &str,
        layer: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let part = self.part(cache_type, layer).map_err(to_py)?;
        let data =
            self.with(py, |p| on_device!(p, |(b, c)| c.read_sequence(b, self::seq_id(seq_id)?, part)))?;
        Self::array(py, data, part)
    }
}
