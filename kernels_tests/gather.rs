//! `shaders/gather.wgsl` against `cpu::gather`.

mod common;

use common::*;
use rand::RngExt;
use siamese_gpu::cpu::gather as cpu;
use siamese_gpu::ops::gather::{self, PixelNorm};

/// (images, pixels, batch): one image and index, pixel counts that are not multiples of 4
/// (images then straddle words), Fashion-MNIST's 28×28 with the reference batch of 2·128
/// images, and a batch with repeated indices.
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (5, 7, 3),
    (9, 13, 40),
    (300, 784, 256),
    (2, 784, 9),
];

#[test]
fn gather_images_matches_cpu() {
    for (seed, &(n, pixels, m)) in SHAPES.iter().enumerate() {
        let mut r = rng(seed as u64);
        let bytes: Vec<u8> = (0..n * pixels)
            .map(|_| r.random_range(0..=255u32) as u8)
            .collect();
        let indices: Vec<u32> = (0..m).map(|_| r.random_range(0..n as u32)).collect();
        let images = gather::upload_images(gpu(), &bytes, n, pixels).unwrap();
        let idx = gpu().upload_u32(&indices, &[m]).unwrap();
        for norm in [PixelNorm::UNIT, PixelNorm::standardize(0.2860, 0.3530)] {
            let out = zeros(&[m, pixels]);
            let kernel = gather::gather_images(gpu(), &images, &idx, &out, norm).unwrap();
            let got = run_and_read(&kernel, &out);
            let want = cpu::gather_images(&bytes, pixels, &indices, norm.shift, norm.scale);
            // Division by 255 (≤ 2.5 ulp in WGSL, 0.5 on the CPU), a subtraction and a product
            // of values below 3.5 in magnitude: 8 ulps of the result, plus 8 ulps of 1 for the
            // cancellation in byte/255 − shift.
            let bound: Vec<f64> = want
                .iter()
                .map(|&w| 8.0 * U32 * (w.abs() as f64 + 1.0))
                .collect();
            assert_within(
                &format!("gather_images {n}x{pixels} -> {m}"),
                &got,
                &want,
                &bound,
            );
        }
    }
}

#[test]
fn gather_images_rejects_a_mismatched_image_size() {
    let images = gather::upload_images(gpu(), &[0; 2 * 784], 2, 784).unwrap();
    let idx = gpu().upload_u32(&[0, 1], &[2]).unwrap();
    let err = gather::gather_images(
        gpu(),
        &images,
        &idx,
        &zeros(&[2, 1, 32, 32]),
        PixelNorm::UNIT,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("196 words each, but 1024 pixels need 256"),
        "{err}"
    );
}
