//! The geometry of a page pool: how pages are sized ([`KvLayout`]) and what
//! one position of one layer holds ([`KvShape`]).

use crate::backend::KvGeometry;
use crate::formats::DType;

/// Geometry of a page pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    /// Token positions per page.
    pub page_size: usize,
    pub num_pages: usize,
}

impl KvLayout {
    pub const DEFAULT_PAGE_SIZE: usize = 16;
}

/// What a model keeps per position: `kv_dim` key and `kv_dim` value
/// features in each of `layers` layers, stored as `dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvShape {
    pub layers: usize,
    pub kv_dim: usize,
    pub dtype: DType,
}

impl KvShape {
    /// The storage geometry of a pool of `layout` pages.
    pub fn geometry(&self, layout: KvLayout) -> KvGeometry {
        KvGeometry {
            pages: layout.num_pages,
            page_size: layout.page_size,
            layers: self.layers,
            kv_dim: self.kv_dim,
        }
    }

    /// Bytes one page of `page_size` positions takes.
    pub fn page_bytes(&self, page_size: usize) -> usize {
        2 * self.layers * page_size * self.kv_dim * self.dtype.size_in_bytes()
    }

    /// Bytes a full pool of `layout` takes; `usize::MAX` when past the
    /// address space (the sizes come from untrusted input).
    pub fn pool_bytes(&self, layout: KvLayout) -> usize {
        [2, self.layers, layout.page_size, self.kv_dim, self.dtype.size_in_bytes()]
            .iter()
            .try_fold(layout.num_pages, |n, &k| n.checked_mul(k))
            .unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_counts_the_bytes_of_its_dtype() {
        let shape = |dtype| KvShape { layers: 3, kv_dim: 8, dtype };
        assert_eq!(shape(DType::F32).page_bytes(16), 2 * 3 * 16 * 8 * 4);
        assert_eq!(shape(DType::F16).page_bytes(16), 2 * 3 * 16 * 8 * 2);
        assert_eq!(shape(DType::BF16).page_bytes(16), shape(DType::F16).page_bytes(16));
        let layout = |num_pages| KvLayout { page_size: 16, num_pages };
        assert_eq!(shape(DType::F32).pool_bytes(layout(5)), 5 * shape(DType::F32).page_bytes(16));
        assert_eq!(shape(DType::F32).pool_bytes(layout(usize::MAX / 2)), usize::MAX, "saturates");
    }
}
