//! FP8 against torch (`tests/fixtures/quantize/fp8_e4m3.safetensors`, made
//! by `make_fp8_fixture.py`): codes bit for bit, quantized matrices code for
//! code, and the rounding error bound of three mantissa bits.

use half::f16;
use safetensors::SafeTensors;

use super::e4m3::{self, decode, encode};
use super::{Fp8Layout, Fp8Tensor};
use crate::formats::HostTensor;

struct Fixture(Vec<u8>);

impl Fixture {
    fn open() -> Fixture {
        let path =
            format!("{}/../../tests/fixtures/quantize/fp8_e4m3.safetensors", env!("CARGO_MANIFEST_DIR"));
        Fixture(std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
    }

    fn tensor(&self, name: &str) -> (Vec<usize>, Vec<u8>) {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let t = st.tensor(name).unwrap();
        (t.shape().to_vec(), t.data().to_vec())
    }

    fn floats(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let (shape, bytes) = self.tensor(name);
        (shape, bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect())
    }
}

#[test]
fn every_code_decodes_as_torch_does() {
    let (_, torch) = Fixture::open().floats("decoded");
    assert_eq!(torch.len(), 256);
    for (code, &expected) in torch.iter().enumerate() {
        let ours = decode(code as u8);
        if expected.is_nan() {
            assert!(ours.is_nan(), "code {code:#04x}: {ours} is not NaN");
        } else {
            assert_eq!(ours.to_bits(), expected.to_bits(), "code {code:#04x}: {ours} vs torch {expected}");
        }
    }
    assert_eq!(decode(0x7e), e4m3::MAX);
    assert_eq!(decode(0x01), 2f32.powi(-9));
}

#[test]
fn encoding_is_torchs_cast_bit_for_bit() {
    let fixture = Fixture::open();
    let (_, inputs) = fixture.floats("inputs");
    let (_, codes) = fixture.tensor("codes");
    assert!(inputs.len() > 5000);
    let wrong: Vec<String> = inputs
        .iter()
        .zip(&codes)
        .filter(|(&x, &c)| encode(x) != c)
        .map(|(&x, &c)| format!("{x:e} ({:#010x}): ours {:#04x}, torch {c:#04x}", x.to_bits(), encode(x)))
        .collect();
    assert!(wrong.is_empty(), "{} of {} differ:\n{}", wrong.len(), inputs.len(), wrong.join("\n"));
}

/// Every finite code round-trips, and the f16 widening the SIMD kernels
/// use is the same value times 2^-8.
#[test]
fn codes_round_trip_and_widen_through_f16() {
    for code in 0..=255u8 {
        let v = decode(code);
        if v.is_nan() {
            continue;
        }
        // -0.0 encodes back to 0x80 and +0.0 to 0x00: codes are unique.
        assert_eq!(encode(v), code, "{v}");
        let widened = f16::from_bits(e4m3::to_f16_bits_scaled(code)).to_f32() * 256.0;
        assert_eq!(widened.to_bits(), v.to_bits(), "code {code:#04x}");
    }
}

fn fixture_weight(fixture: &Fixture) -> HostTensor {
    let (shape, data) = fixture.floats("weight");
    HostTensor::new(shape, data).unwrap()
}

#[test]
fn matrices_quantize_as_torch_per_row_and_per_block() {
    let fixture = Fixture::open();
    let w = fixture_weight(&fixture);
    for (layout, codes, scales) in [
        (Fp8Layout::PerRow, "row_codes", "row_scales"),
        (Fp8Layout::Blocks(super::HF_BLOCK), "block_codes", "block_scales"),
    ] {
        let q = Fp8Tensor::quantize(&w, layout).unwrap();
        let (scale_shape, torch_scales) = fixture.floats(scales);
        assert_eq!(layout.scale_shape(q.rows(), q.cols()), scale_shape);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&q.scales), bits(&torch_scales), "{layout:?} scales");
        assert!(q.codes == fixture.tensor(codes).1, "{layout:?} codes differ from torch's");
    }
}

/// The per-element error of quantize-then-dequantize, from the format: a
/// normal E4M3 value `q` has 3 mantissa bits, so `|x/s - q| <= 2^-4 |q|`
/// (half an ulp, where ulp = 2^(exponent - 3) <= |q| / 8); a subnormal is a
/// multiple of 2^-9, so `|x/s - q| <= 2^-10`. On top, the f32 division
/// `x / s` and the product `q * s` each round once (relative 2^-24).
fn assert_within_bound(w: &HostTensor, q: &Fp8Tensor) {
    let deq = q.dequantize().unwrap();
    let u = f32::EPSILON / 2.0;
    for (i, (&x, &y)) in w.data.iter().zip(&deq.data).enumerate() {
        let (r, c) = (i / q.cols(), i % q.cols());
        let s = match q.layout {
            Fp8Layout::PerRow => q.scales[r],
            Fp8Layout::Blocks(b) => q.scales[(r / b) * q.cols().div_ceil(b) + c / b],
            Fp8Layout::Groups(g) => q.group_scales(r)[c / g],
        };
        let code = decode(q.codes[i]).abs();
        let step = if code < 2f32.powi(-6) { 2f32.powi(-10) } else { code / 16.0 };
        let bound = s * step + (x / s).abs() * u * s + code * s * u;
        assert!(
            (x - y).abs() <= bound * 1.000_001,
            "[{r}, {c}]: {x} -> {y}, error {} > {bound}",
            (x - y).abs()
        );
    }
}

#[test]
fn quantization_error_is_within_three_mantissa_bits() {
    let fixture = Fixture::open();
    let w = fixture_weight(&fixture);
    for layout in [
        Fp8Layout::PerRow,
        Fp8Layout::Blocks(128),
        Fp8Layout::Blocks(7),
        Fp8Layout::Groups(32),
        Fp8Layout::Groups(7),
    ] {
        assert_within_bound(&w, &Fp8Tensor::quantize(&w, layout).unwrap());
    }
    // A row spanning E4M3's whole range: its small values are subnormal codes.
    let row: Vec<f32> =
        (0..64).map(|i| 2f32.powf(-(i as f32) / 4.0) * if i % 2 == 0 { 1.0 } else { -1.0 }).collect();
    let w = HostTensor::new(vec![1, 64], row).unwrap();
    let q = Fp8Tensor::quantize(&w, Fp8Layout::PerRow).unwrap();
    assert!(q.codes.iter().any(|&c| c & 0x78 == 0 && c & 7 != 0), "some codes are subnormal");
    assert_within_bound(&w, &q);
}

#[test]
fn zero_rows_and_extremes() {
    let w =
        HostTensor::new(vec![3, 4], vec![0.0, -0.0, 0.0, 0.0, 1.0, -448.0, 0.5, 3.0, 1e-30, 0.0, 0.0, 0.0])
            .unwrap();
    let q = Fp8Tensor::quantize(&w, Fp8Layout::PerRow).unwrap();
    assert_eq!(q.scales, vec![1.0, 1.0, 1e-30 / 448.0]);
    // The row's largest magnitude maps onto +-448 exactly.
    assert_eq!(&q.codes[4..8], &[encode(1.0), 0xfe, encode(0.5), encode(3.0)]);
    assert_eq!(q.dequantize().unwrap().data[..8], w.data[..8]);
    assert_eq!(q.dequantize().unwrap().data[8], 1e-30 / 448.0 * 448.0);
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    let err = |r: crate::error::Result<Fp8Tensor>| r.unwrap_err().to_string();
    let nan = HostTensor::new(vec![1, 2], vec![1.0, f32::NAN]).unwrap();
    assert!(err(Fp8Tensor::quantize(&nan, Fp8Layout::PerRow)).contains("not finite"));
    let flat = HostTensor::new(vec![4], vec![1.0; 4]).unwrap();
    assert!(err(Fp8Tensor::quantize(&flat, Fp8Layout::PerRow)).contains("2-D"));
    let empty = HostTensor::new(vec![0, 4], vec![]).unwrap();
    assert!(err(Fp8Tensor::quantize(&empty, Fp8Layout::PerRow)).contains("non-empty"));
    assert!(Fp8Layout::from_block_size(Some(0)).unwrap_err().to_string().contains("block_size"));
    let scales =
        |shape: Vec<usize>| HostTensor::new(shape.clone(), vec![1.0; shape.iter().product()]).unwrap();
    let codes_err = err(Fp8Tensor::from_parts(&[2, 3], vec![0; 5], Fp8Layout::PerRow, scales(vec![2])));
    assert!(codes_err.contains("codes hold 5"), "{codes_err}");
    assert!(err(Fp8Tensor::from_parts(&[6], vec![0; 6], Fp8Layout::PerRow, scales(vec![2]))).contains("2-D"));
    let msg =
        err(Fp8Tensor::from_parts(&[200, 300], vec![0; 60000], Fp8Layout::Blocks(128), scales(vec![2, 2])));
    assert!(msg.contains("[2, 3]") && msg.contains("128x128") && msg.contains("block_size"), "{msg}");
    assert!(Fp8Tensor::from_parts(&[200, 300], vec![0; 60000], Fp8Layout::Blocks(128), scales(vec![2, 3]))
        .is_ok());
}

/// Groups: each run of `g` values of a row gets the scale of its own largest
/// magnitude (the last run may be shorter).
#[test]
fn group_scales_follow_each_run() {
    let w = HostTensor::new(vec![2, 5], vec![1.0, -4.0, 0.5, 0.0, 0.0, 2.0, 8.0, -16.0, 3.0, 0.0]).unwrap();
    let q = Fp8Tensor::quantize(&w, Fp8Layout::Groups(2)).unwrap();
    let m = e4m3::MAX;
    assert_eq!(q.scales, vec![4.0 / m, 0.5 / m, 1.0, 8.0 / m, 16.0 / m, 1.0]);
    assert_eq!(Fp8Layout::Groups(2).scale_shape(2, 5), vec![2, 3]);
    let deq = q.dequantize().unwrap();
    assert_eq!(deq.data[1], -4.0, "a run's largest magnitude maps onto +-448 exactly");
    assert_eq!(deq.data[7], -16.0);
}
