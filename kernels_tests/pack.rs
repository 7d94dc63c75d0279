//! Packing (`shaders/pack.wgsl`) against `cpu::pack`: layout copies, so exact, from f32
//! tensors into f32 texels and from f16 tensors into f16 texels (the reference then packs
//! the f16 values).

use crate::common::*;
use siamese_gpu::cpu::pack as cpu;
use siamese_gpu::ops::pack;

/// ([N, C, H, W], pad, unfold) of pack_nhwc4: channel counts around the texel's four,
/// padding 0–2, batch 1, and unfolding 1, 3 and 5 taps (5 with padding 2: every packed
/// column has taps outside x).
const NHWC4_SHAPES: &[([usize; 4], usize, usize)] = &[
    ([1, 1, 1, 1], 0, 1),
    ([2, 3, 5, 4], 1, 1),
    ([1, 4, 3, 3], 2, 1),
    ([3, 9, 4, 6], 0, 1),
    ([2, 32, 12, 12], 0, 1),
    ([2, 1, 28, 28], 0, 5),
    ([1, 3, 5, 7], 1, 3),
    ([2, 2, 4, 3], 2, 5),
];

/// [O, C, KH, KW] of pack_conv_weight: a single tap, channel counts off the texel's four,
/// and the reference network's two layers.
const CONV_WEIGHT_SHAPES: &[[usize; 4]] = &[
    [1, 1, 1, 1],
    [5, 3, 3, 3],
    [32, 1, 5, 5],
    [64, 32, 3, 3],
    [7, 9, 2, 2],
];

/// [R, K] of pack_rows4: a single element, sizes off the texel's four, the reference
/// network's dense input at batch 256 (256 × 1600), and 128-wide rows.
const ROWS4_SHAPES: &[[usize; 2]] = &[[1, 1], [3, 5], [256, 1600], [7, 128], [128, 33]];

/// ([N, 1, H, W], pad) of pack_images4: batches that fill the last texel and that do not
/// (1, 5, 6, 7), the reference network's batch of 256 images, padding 0–3.
const IMAGES4_SHAPES: &[([usize; 4], usize)] = &[
    ([1, 1, 1, 1], 0),
    ([256, 1, 28, 28], 0),
    ([5, 1, 7, 6], 1),
    ([6, 1, 4, 5], 2),
    ([7, 1, 3, 3], 3),
    ([8, 1, 28, 28], 2),
];

#[test]
fn pack_nhwc4_matches_cpu() {
    for p in dtype_matrix(&DTYPES, NHWC4_SHAPES) {
        let ((shape, pad, unfold), dtype) = (p.shape, p.dtype);
        let x = as_dtype(
            &uniform(&mut rng(p.seed), shape.iter().product(), -1.0, 1.0),
            dtype,
        );
        let (kernel, texels) =
            pack::nhwc4(gpu(), &upload_as(&x, &shape, dtype), pad, unfold).unwrap();
        assert_eq!(texels.dtype(), dtype, "pack_nhwc4 {p}");
        gpu().run(&[&kernel]);
        let got = gpu().read_texels(&texels).unwrap();
        assert_eq!(got, cpu::nhwc4(&x, shape, pad, unfold), "pack_nhwc4 {p}");
    }
}

#[test]
fn pack_conv_weight_matches_cpu() {
    for p in dtype_matrix(&DTYPES, CONV_WEIGHT_SHAPES) {
        let (shape, dtype) = (p.shape, p.dtype);
        let w = as_dtype(
            &uniform(&mut rng(10 + p.seed), shape.iter().product(), -1.0, 1.0),
            dtype,
        );
        for (flip, unfold) in [(false, 1), (true, 1), (false, shape[3])] {
            let (kernel, texels) =
                pack::conv_weight(gpu(), &upload_as(&w, &shape, dtype), flip, unfold).unwrap();
            gpu().run(&[&kernel]);
            let got = gpu().read_texels(&texels).unwrap();
            assert_eq!(
                got,
                cpu::conv_weight(&w, shape, flip, unfold),
                "pack_conv_weight {p} flip {flip} unfold {unfold}"
            );
        }
    }
}

#[test]
fn pack_rows4_matches_cpu() {
    for p in dtype_matrix(&DTYPES, ROWS4_SHAPES) {
        let ([r, k], dtype) = (p.shape, p.dtype);
        let a = as_dtype(&uniform(&mut rng(20 + p.seed), r * k, -1.0, 1.0), dtype);
        for transposed in [false, true] {
            let shape = if transposed { [k, r] } else { [r, k] };
            let (kernel, texels) =
                pack::rows4(gpu(), &upload_as(&a, &shape, dtype), transposed).unwrap();
            gpu().run(&[&kernel]);
            let got = gpu().read_texels(&texels).unwrap();
            assert_eq!(
                got,
                cpu::rows4(&a, r, k, transposed),
                "pack_rows4 {p} transposed {transposed}"
            );
        }
    }
}

#[test]
fn pack_images4_matches_cpu() {
    for p in dtype_matrix(&DTYPES, IMAGES4_SHAPES) {
        let ((shape, pad), dtype) = (p.shape, p.dtype);
        let x = as_dtype(
            &uniform(&mut rng(30 + p.seed), shape.iter().product(), -1.0, 1.0),
            dtype,
        );
        let (kernel, texels) = pack::images4(gpu(), &upload_as(&x, &shape, dtype), pad).unwrap();
        assert_eq!(texels.dtype(), dtype, "pack_images4 {p}");
        gpu().run(&[&kernel]);
        let got = gpu().read_texels(&texels).unwrap();
        assert_eq!(got, cpu::images4(&x, shape, pad), "pack_images4 {p}");
    }
    let err = pack::images4(gpu(), &upload(&[0.0; 8], &[1, 2, 2, 2]), 0).unwrap_err();
    assert!(err.to_string().contains("single-channel"), "{err}");
}
