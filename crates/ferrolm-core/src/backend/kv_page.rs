//! Reading and writing one page of one layer's keys or values as plain f32,
//! in MILI's order `[position][kv head][head_dim]` (each backend stores its
//! pages its own way; these are the views the Python `KVCacheAllocator`
//! reads and writes through). [`check_page_access`] (and [`check_page`] for
//! page copies) are the bounds checks both backends run, so a bad page, layer
//! or shape is an error, never a panic (nor, on a GPU, an access outside the pool).

use crate::error::{Error, Result};

/// Keys or values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvKind {
    Key,
    Value,
}

impl KvKind {
    /// MILI's `cache_type`: `"k"` or `"v"` (also `"key"`, `"value"`).
    pub fn parse(s: &str) -> Result<KvKind> {
        match s.trim().to_ascii_lowercase().as_str() {
            "k" | "key" | "keys" => Ok(KvKind::Key),
            "v" | "value" | "values" => Ok(KvKind::Value),
            other => Err(Error::InvalidInput(format!(
                "cache_type `{other}` is not known; use 'k' (keys) or 'v' (values)"
            ))),
        }
    }

    pub(crate) fn is_value(self) -> bool {
        self == KvKind::Value
    }
}

/// Which part of a page a read or write touches: the keys or values of one
/// layer, seen as `[page_size, kv_heads, head_dim]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvPart {
    pub layer: usize,
    pub kind: KvKind,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl KvPart {
    /// f32 values per position (`kv_heads * head_dim`).
    pub fn row_len(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// The storage geometry a backend's KV pool was made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvGeometry {
    pub pages: usize,
    pub page_size: usize,
    pub layers: usize,
    pub kv_dim: usize,
}

/// Checks that page `page` is one of the pool's.
pub fn check_page(geo: KvGeometry, page: u32) -> Result<()> {
    if page as usize >= geo.pages {
        return Err(Error::InvalidInput(format!(
            "page {page} does not exist (the pool has {} pages)",
            geo.pages
        )));
    }
    Ok(())
}

/// Checks that `part` fits `geo` and that `rows` positions starting at
/// `offset` lie inside page `page`.
pub fn check_page_access(geo: KvGeometry, page: u32, part: KvPart, offset: usize, rows: usize) -> Result<()> {
    check_page(geo, page)?;
    if part.layer >= geo.layers {
        return Err(Error::InvalidInput(format!(
            "layer {} is out of range; the KV cache holds layers 0..{}",
            part.layer, geo.layers
        )));
    }
    if part.head_dim == 0 || part.row_len() != geo.kv_dim {
        return Err(Error::InvalidInput(format!(
            "{} kv heads of head_dim {} do not match the KV cache's {} values per position",
            part.kv_heads, part.head_dim, geo.kv_dim
        )));
    }
    if offset + rows > geo.page_size {
        return Err(Error::InvalidInput(format!(
            "positions {offset}..{} do not fit a page of {} positions",
            offset + rows,
            geo.page_size
        )));
    }
    Ok(())
}

/// The number of whole positions in `data` (rows of `part.row_len()`).
pub fn rows_of(data: &[f32], part: KvPart) -> Result<usize> {
    let row = part.row_len();
    if row == 0 {
        return Err(Error::InvalidInput("kv_heads and head_dim must be at least 1".into()));
    }
    if !data.len().is_multiple_of(row) {
        return Err(Error::InvalidInput(format!(
            "data holds {} values, not a whole number of positions of {} kv heads x {} head_dim",
            data.len(),
            part.kv_heads,
            part.head_dim
        )));
    }
    Ok(data.len() / row)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEO: KvGeometry = KvGeometry { pages: 4, page_size: 8, layers: 2, kv_dim: 6 };

    fn part(layer: usize) -> KvPart {
        KvPart { layer, kind: KvKind::Key, kv_heads: 2, head_dim: 3 }
    }

    #[test]
    fn bad_pages_layers_shapes_and_ranges_are_named() {
        assert!(check_page_access(GEO, 3, part(1), 6, 2).is_ok());
        let msg = |r: Result<()>| r.unwrap_err().to_string();
        assert!(msg(check_page_access(GEO, 4, part(0), 0, 1)).contains("page 4 does not exist"));
        assert!(msg(check_page_access(GEO, 0, part(2), 0, 1)).contains("layer 2 is out of range"));
        let wide = KvPart { kv_heads: 3, ..part(0) };
        assert!(msg(check_page_access(GEO, 0, wide, 0, 1)).contains("3 kv heads"));
        assert!(msg(check_page_access(GEO, 0, part(0), 7, 2)).contains("positions 7..9"));
        assert_eq!(rows_of(&[0.0; 12], part(0)).unwrap(), 2);
        assert!(rows_of(&[0.0; 7], part(0)).is_err());
        assert!(rows_of(&[0.0; 6], KvPart { head_dim: 0, ..part(0) }).is_err());
    }

    #[test]
    fn cache_types_parse_as_mili_names_them() {
        assert_eq!(KvKind::parse("k").unwrap(), KvKind::Key);
        assert_eq!(KvKind::parse("V").unwrap(), KvKind::Value);
        assert!(KvKind::parse("q").unwrap_err().to_string().contains("cache_type `q`"));
    }
}
