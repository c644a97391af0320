//! Eight weight rows interleaved, so that one SIMD instruction works on the
//! same block of eight rows at once (the layout llama.cpp calls "repacked").
//!
//! A row-by-row kernel ends every block with a horizontal step (convert the
//! block's integer sum, scale it, add it) that SIMD does for one row at a
//! time. With eight rows side by side, each 32-bit lane of a vector belongs
//! to one row: the integer sums of a block land in eight lanes, and one
//! convert and one FMA scale all eight rows. For a block index `b`, a group
//! stores the eight rows' scales together, then their quants in chunks of
//! four bytes per row:
//!
//! | type | group block | layout |
//! |------|-------------|--------|
//! | Q4_0 | 144 B | `d[8]: f16`, 4 chunks `[row][4 bytes]` of nibble pairs |
//! | Q4_1 | 160 B | `d[8]`, `m[8]: f16`, 4 chunks as Q4_0 |
//! | Q8_0 | 272 B | `d[8]`, 8 chunks `[row][4 bytes]` of i8 |
//!
//! Chunk `c` holds bytes `4c..4c + 4` of each row's quants, so for the 4-bit
//! types its low nibbles are values `4c..4c + 4` and its high nibbles
//! values `16 + 4c..`. The same bytes as the file, reordered: no precision
//! changes.

use crate::formats::GgmlType;
use crate::formats::PackedTensor;

/// Rows per group.
pub const ROWS: usize = 8;

/// A matrix of Q4_0, Q4_1 or Q8_0 in groups of [`ROWS`] interleaved rows.
#[derive(Debug, Clone)]
pub struct Interleaved {
    pub ty: GgmlType,
    pub shape: Vec<usize>,
    /// Blocks per row.
    pub blocks: usize,
    pub data: Vec<u8>,
}

/// `(bytes of a row's block, offset of its quants, scale fields (d, m))`.
fn layout(ty: GgmlType) -> Option<(usize, usize, usize)> {
    match ty {
        GgmlType::Q4_0 => Some((18, 2, 1)),
        GgmlType::Q4_1 => Some((20, 4, 2)),
        GgmlType::Q8_0 => Some((34, 2, 1)),
        _ => None,
    }
}

impl Interleaved {
    /// Whether `p` can be interleaved (a supported type, rows a multiple of 8).
    pub fn fits(p: &PackedTensor) -> bool {
        layout(p.ty).is_some() && p.shape.len() == 2 && p.rows().is_multiple_of(ROWS)
    }

    /// Reorders `p` (see [`Interleaved::fits`]), releasing the source's
    /// mapped pages as it goes (see [`crate::formats::Bytes::release`]), so
    /// that the copy and the mapped original are never both resident.
    pub fn new(p: &PackedTensor) -> Interleaved {
        let (block, quants, scales) = layout(p.ty).expect("an interleavable type");
        let blocks = p.row_bytes() / block;
        let group_bytes = ROWS * block * blocks;
        let mut data = vec![0u8; p.data.len()];
        // Release the source in steps of about a megabyte.
        let groups_per_release = (1 << 20) / group_bytes + 1;
        for (g, out) in data.chunks_exact_mut(group_bytes).enumerate() {
            if g % groups_per_release == 0 && g > 0 {
                p.data.release((g - groups_per_release) * group_bytes..g * group_bytes);
            }
            for (b, out) in out.chunks_exact_mut(ROWS * block).enumerate() {
                for r in 0..ROWS {
                    let src = &p.row(g * ROWS + r)[b * block..(b + 1) * block];
                    for s in 0..scales {
                        out[s * 2 * ROWS + 2 * r..][..2].copy_from_slice(&src[2 * s..2 * s + 2]);
                    }
                    let base = scales * 2 * ROWS;
                    for (c, chunk) in src[quants..].chunks_exact(4).enumerate() {
                        out[base + c * 4 * ROWS + 4 * r..][..4].copy_from_slice(chunk);
                    }
                }
            }
        }
        p.data.release_map_to_end();
        Interleaved { ty: p.ty, shape: p.shape.clone(), blocks, data }
    }

    pub fn rows(&self) -> usize {
        self.shape[0]
    }

    pub fn cols(&self) -> usize {
        self.shape[1]
    }

    /// Bytes of one group (eight rows, every block).
    pub fn group_bytes(&self) -> usize {
        self.data.len() / (self.rows() / ROWS)
    }

    pub fn group(&self, g: usize) -> &[u8] {
        let n = self.group_bytes();
        &self.data[g * n..(g + 1) * n]
    }

    /// Row `r` in the file's layout (for embedding lookups and tests).
    pub fn row(&self, r: usize) -> Vec<u8> {
        let (block, quants, scales) = layout(self.ty).expect("an interleavable type");
        let (g, i) = (r / ROWS, r % ROWS);
        let mut out = vec![0u8; block * self.blocks];
        for (dst, src) in out.chunks_exact_mut(block).zip(self.group(g).chunks_exact(ROWS * block)) {
            for s in 0..scales {
                dst[2 * s..2 * s + 2].copy_from_slice(&src[s * 2 * ROWS + 2 * i..][..2]);
            }
            let base = scales * 2 * ROWS;
            for (c, chunk) in dst[quants..].chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&src[base + c * 4 * ROWS + 4 * i..][..4]);
            }
        }
        out
    }
}
