//! Eight weight rows interleaved, so that one SIMD instruction works on the
//! same block of eight rows at once (the layout llama.cpp calls "repacked").
//!
//! A row-by-row kernel ends every block with a horizontal step (convert the
//! block's integer sum, scale it, add it) that SIMD does for one row at a
//! time. With eight rows side by side, each 32-bit lane of a vector belongs
//! to one row: the integer sums of a block land in eight lanes, and one
//! convert and one FMA scale all eight rows. For a block index `b`, a group
//! stores the eight rows' per-block fields ("units") unit by unit
//! (`[unit][row][width]`), then their quants in chunks of four bytes per row
//! (`[chunk][row][4 bytes]`):
//!
//! | type | group block | units (width) | chunked quants |
//! |------|-------------|---------------|----------------|
//! | Q4_0 | 144 B | `d` (2) | `qs` 16 B |
//! | Q4_1 | 160 B | `d`, `m` (2) | `qs` |
//! | Q5_0 | 176 B | `d` (2), `qh` (4, bits transposed) | `qs` |
//! | Q5_1 | 192 B | `d`, `m` (2), `qh` (4, bits transposed) | `qs` |
//! | Q8_0 | 272 B | `d` (2) | `qs` 32 B |
//! | Q4_K | 1152 B | `d`, `dmin` (2), 12 scale bytes (1 each) | `qs` 128 B |
//! | Q5_K | 1408 B | `d`, `dmin` (2), 12 scale bytes (1 each) | `qh` 32 B, `qs` 128 B |
//! | Q6_K | 1680 B | `d` (2), 16 scales (1 each) | `ql` 128 B, `qh` 64 B |
//!
//! Chunk `c` of a range holds its bytes `4c..4c + 4` of each row, so for
//! Q4_0/Q4_1/Q5_0/Q5_1 its low nibbles are values `4c..4c + 4` and its high
//! nibbles values `16 + 4c..`. One-byte units put a byte of eight rows in
//! one 64-bit word, which is how the kernels unpack the K-quants' packed
//! scales for eight rows at once. A Q5 `qh` word is stored with its bits
//! transposed (see [`transpose_q5_bits`]) so that a shift and a mask give
//! the fifth bits of a chunk. The same bits as the file, reordered: no
//! precision changes.

use crate::formats::GgmlType;
use crate::formats::PackedTensor;

/// Rows per group.
pub const ROWS: usize = 8;

/// A quantized matrix in groups of [`ROWS`] interleaved rows.
#[derive(Debug, Clone)]
pub struct Interleaved {
    pub ty: GgmlType,
    pub shape: Vec<usize>,
    /// Blocks per row.
    pub blocks: usize,
    pub data: Vec<u8>,
}

/// Where a row block's bytes go in a group block.
struct Layout {
    /// Bytes of one row's block.
    block: usize,
    /// Per-row fields `(offset, width)`, stored `[unit][row][width]`.
    units: Vec<(usize, usize)>,
    /// Byte ranges `(offset, len)` stored `[chunk][row][4]`, after the units.
    quants: Vec<(usize, usize)>,
    /// The offset of a Q5_0/Q5_1 `qh` unit, stored bit-transposed.
    q5_bits: Option<usize>,
}

fn layout(ty: GgmlType) -> Option<Layout> {
    let fields = |f: &[(usize, usize)]| f.to_vec();
    // K-quant scales: one unit per byte, so one word holds a byte of eight rows.
    let bytes = |head: &[(usize, usize)], offset: usize, n: usize| {
        head.iter().copied().chain((offset..offset + n).map(|o| (o, 1))).collect()
    };
    let (block, units, quants, q5_bits) = match ty {
        GgmlType::Q4_0 => (18, fields(&[(0, 2)]), fields(&[(2, 16)]), None),
        GgmlType::Q4_1 => (20, fields(&[(0, 2), (2, 2)]), fields(&[(4, 16)]), None),
        GgmlType::Q5_0 => (22, fields(&[(0, 2), (2, 4)]), fields(&[(6, 16)]), Some(2)),
        GgmlType::Q5_1 => (24, fields(&[(0, 2), (2, 2), (4, 4)]), fields(&[(8, 16)]), Some(4)),
        GgmlType::Q8_0 => (34, fields(&[(0, 2)]), fields(&[(2, 32)]), None),
        GgmlType::Q4_K => (144, bytes(&[(0, 2), (2, 2)], 4, 12), fields(&[(16, 128)]), None),
        GgmlType::Q5_K => (176, bytes(&[(0, 2), (2, 2)], 4, 12), fields(&[(16, 32), (48, 128)]), None),
        GgmlType::Q6_K => (210, bytes(&[(208, 2)], 192, 16), fields(&[(0, 128), (128, 64)]), None),
        _ => return None,
    };
    Some(Layout { block, units, quants, q5_bits })
}

/// A Q5 `qh` word reordered so that byte `k` holds, in bit `4h + c`, the
/// fifth bit of value `16h + 4c + k` (the value in byte `k` of chunk `c`,
/// low nibble for `h = 0`, high for `h = 1`). The file's word has that bit
/// at position `16h + 4c + k`.
pub fn transpose_q5_bits(qh: u32) -> u32 {
    let mut out = 0;
    for v in 0..32 {
        let (h, c, k) = (v / 16, v % 16 / 4, v % 4);
        out |= ((qh >> v) & 1) << (8 * k + 4 * h + c);
    }
    out
}

/// The inverse of [`transpose_q5_bits`].
fn untranspose_q5_bits(t: u32) -> u32 {
    let mut out = 0;
    for v in 0..32 {
        let (h, c, k) = (v / 16, v % 16 / 4, v % 4);
        out |= ((t >> (8 * k + 4 * h + c)) & 1) << v;
    }
    out
}

impl Layout {
    /// Calls `f(position in the row block, position in the group block, len)`
    /// for every piece of row `r`'s block.
    fn pieces(&self, r: usize, mut f: impl FnMut(usize, usize, usize)) {
        let mut at = 0;
        for &(offset, width) in &self.units {
            f(offset, at + width * r, width);
            at += width * ROWS;
        }
        for &(offset, len) in &self.quants {
            for c in 0..len / 4 {
                f(offset + 4 * c, at + 4 * ROWS * c + 4 * r, 4);
            }
            at += len * ROWS;
        }
    }

    /// Applies `f` to the Q5 `qh` word of row `r` in a group block.
    fn map_q5_bits(&self, group_block: &mut [u8], r: usize, f: fn(u32) -> u32) {
        if let Some(qh) = self.q5_bits {
            let unit = self.units.iter().position(|&(o, _)| o == qh).expect("qh is a unit");
            let at: usize = self.units[..unit].iter().map(|&(_, w)| w * ROWS).sum::<usize>() + 4 * r;
            let word = &mut group_block[at..at + 4];
            let v = f(u32::from_le_bytes(word.try_into().expect("4 bytes")));
            word.copy_from_slice(&v.to_le_bytes());
        }
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
        let layout = layout(p.ty).expect("an interleavable type");
        let block = layout.block;
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
                    layout.pieces(r, |from, to, n| out[to..to + n].copy_from_slice(&src[from..from + n]));
                    layout.map_q5_bits(out, r, transpose_q5_bits);
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
        let layout = layout(self.ty).expect("an interleavable type");
        let (g, i) = (r / ROWS, r % ROWS);
        let mut out = vec![0u8; layout.block * self.blocks];
        for (dst, src) in
            out.chunks_exact_mut(layout.block).zip(self.group(g).chunks_exact(ROWS * layout.block))
        {
            let mut src = src.to_vec();
            layout.map_q5_bits(&mut src, i, untranspose_q5_bits);
            layout.pieces(i, |to, from, n| dst[to..to + n].copy_from_slice(&src[from..from + n]));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q5_bits_transpose_and_back() {
        for v in [0u32, 1, 0x8000_0001, 0xdead_beef, u32::MAX, 0x0001_0000] {
            assert_eq!(untranspose_q5_bits(transpose_q5_bits(v)), v);
        }
        // Value 16 + 4 * 2 + 3 (high nibble, chunk 2, byte 3) -> byte 3, bit 4 + 2.
        assert_eq!(transpose_q5_bits(1 << 27), 1 << (24 + 6));
    }

    #[test]
    fn every_layout_covers_its_block_once() {
        for ty in super::super::INTERLEAVED {
            let l = layout(ty).unwrap();
            assert_eq!(l.block, ty.block_layout().unwrap().1, "{ty}");
            let (mut row, mut group) = (vec![0; l.block], vec![0; l.block * ROWS]);
            for r in 0..ROWS {
                l.pieces(r, |from, to, n| {
                    row[from..from + n].iter_mut().for_each(|v| *v += 1);
                    group[to..to + n].iter_mut().for_each(|v| *v += 1);
                });
            }
            assert!(row.iter().all(|&v| v == ROWS), "{ty}: a row byte is not used once per row");
            assert!(group.iter().all(|&v| v == 1), "{ty}: a group byte is not written once");
        }
    }
}
