//! Photometric augmentation (`shaders/photo.wgsl`: `color_jitter`, `blur_rows` and
//! `blur_columns` through `ops::photo::gaussian_blur`) against `cpu::photo`:
//! random jitter rows (every op order, ops at their identity, grey images) over grey and RGB
//! batches in f32 and f16, and hand-computed cases of torchvision's definitions.

use crate::common::*;
use rand::RngExt;
use siamese_gpu::cpu::photo as cpu;
use siamese_gpu::ops::photo;
use siamese_gpu::vocab::{PixelNorm, TRANSFORM_LEN};

/// (images, channels, H·W): one pixel, a small RGB plane, planes over the workgroup size
/// (300, and 513 grey: positions straddle the 256 invocations).
const SHAPES: &[(usize, usize, usize)] = &[(1, 3, 1), (3, 3, 35), (5, 3, 300), (4, 1, 513)];

/// A jitter row per image: factors around 1 (some exactly at the identity), a random order
/// of the four ops, grey with probability 0.3.
fn random_rows(r: &mut rand::rngs::StdRng, m: usize) -> Vec<f32> {
    (0..m)
        .flat_map(|_| {
            let mut row = [0f32; TRANSFORM_LEN];
            for v in row.iter_mut().take(3) {
                *v = if r.random_range(0..5) == 0 {
                    1.0
                } else {
                    r.random_range(0.3..1.7)
                };
            }
            row[3] = if r.random_range(0..5) == 0 {
                0.0
            } else {
                r.random_range(-0.5..0.5)
            };
            let mut ops = [0u32, 1, 2, 3];
            for i in (1..4).rev() {
                ops.swap(i, r.random_range(0..=i));
            }
            row[4] = ops
                .iter()
                .enumerate()
                .map(|(k, &op)| op << (2 * k))
                .sum::<u32>() as f32;
            row[5] = f32::from(r.random_range(0..10) < 3);
            row
        })
        .collect()
}

#[test]
fn color_jitter_matches_cpu() {
    let norm = PixelNorm::standardize(0.2860, 0.3530);
    for p in dtype_matrix(&DTYPES, SHAPES) {
        let (m, c, plane) = p.shape;
        let mut r = rng(p.seed);
        let x: Vec<f32> = (0..m * c * plane)
            .map(|_| (r.random_range(0.0..1.0f32) - norm.shift) * norm.scale)
            .collect();
        let rows = random_rows(&mut r, m);
        let x = as_dtype(&x, p.dtype);
        let mut want = x.clone();
        let round = |v: f32| as_dtype(&[v], p.dtype)[0];
        cpu::color_jitter(
            &mut want,
            (c, plane),
            &rows,
            (norm.shift, norm.scale),
            round,
        );
        let t = upload_as(&x, &[m, c, 1, plane], p.dtype);
        let jitter = upload(&rows, &[m, TRANSFORM_LEN]);
        let got = run_and_read_floats(&photo::color_jitter(gpu(), &t, &jitter, norm).unwrap(), &t);
        // In [0, 1]: four ops, each moving an error by at most its factor (< 1.7) or through
        // the HSV round trip (a few divisions, 2.5 ulps each in WGSL), 64 ulps of 1 in all;
        // plus the contrast mean, summed in another order: 2·γ(H·W) of a mean of values ≤ 1.
        // Then the normalisation's scale. In f16 both sides round every op's store alike;
        // a difference within the f32 bound can still round to neighbouring f16 values at
        // each of the five stores, which stored_bound allows once per store.
        let bound_01 = 64.0 * U32 + 2.0 * gamma(plane);
        let bound = vec![bound_01 * norm.scale as f64 + 4.0 * U32 * 3.5; want.len()];
        assert_within(
            &format!("color_jitter {p}"),
            &got,
            &want,
            &(0..5).fold(bound, |b, _| stored_bound(b, &want, p.dtype)),
        );
    }
}

/// One RGB image of `pixels` ([r, g, b] each) through one jitter row, unit normalisation.
fn jitter_rgb(pixels: &[[f32; 3]], row: [f32; 8]) -> Vec<[f32; 3]> {
    let n = pixels.len();
    let planes: Vec<f32> = (0..3)
        .flat_map(|ch| pixels.iter().map(move |p| p[ch]))
        .collect();
    let t = upload(&planes, &[1, 3, 1, n]);
    let jitter = upload(&row, &[1, TRANSFORM_LEN]);
    let got = run_and_read(
        &photo::color_jitter(gpu(), &t, &jitter, PixelNorm::UNIT).unwrap(),
        &t,
    );
    let mut want = planes.clone();
    cpu::color_jitter(&mut want, (3, n), &row, (0.0, 1.0), |v| v);
    assert_within("hand case, GPU vs CPU", &got, &want, &vec![1e-6; got.len()]);
    (0..n)
        .map(|q| [got[q], got[n + q], got[2 * n + q]])
        .collect()
}

#[test]
fn color_jitter_gives_torchvisions_results_by_hand() {
    let near = |a: [f32; 3], b: [f32; 3]| {
        assert!(
            a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-6),
            "{a:?} vs {b:?}"
        );
    };
    // Order 0, 1, 2, 3 = code 0b11_10_01_00; identities elsewhere.
    let order = (1u32 << 2 | 2 << 4 | 3 << 6) as f32;
    // Brightness 2: doubled, clamped at 1.
    let out = jitter_rgb(
        &[[0.3, 0.1, 0.7]],
        [2.0, 1.0, 1.0, 0.0, order, 0.0, 0.0, 0.0],
    );
    near(out[0], [0.6, 0.2, 1.0]);
    // Contrast 0: every value the image's mean grey level.
    let px = [[0.2, 0.4, 0.6], [1.0, 0.0, 0.0]];
    let grey = |p: [f32; 3]| 0.2989 * p[0] + 0.587 * p[1] + 0.114 * p[2];
    let mean = (grey(px[0]) + grey(px[1])) / 2.0;
    let out = jitter_rgb(&px, [1.0, 0.0, 1.0, 0.0, order, 0.0, 0.0, 0.0]);
    near(out[1], [mean; 3]);
    // Hue + 0.5: red becomes cyan; saturation 0 makes grey; the grey flag likewise.
    let out = jitter_rgb(&px, [1.0, 1.0, 1.0, 0.5, order, 0.0, 0.0, 0.0]);
    near(out[1], [0.0, 1.0, 1.0]);
    let out = jitter_rgb(&px, [1.0, 1.0, 0.0, 0.0, order, 0.0, 0.0, 0.0]);
    near(out[0], [grey(px[0]); 3]);
    let out = jitter_rgb(&px, [1.0, 1.0, 1.0, 0.0, order, 1.0, 0.0, 0.0]);
    near(out[0], [0.36298; 3]);
    // The order matters: brightness 2 then contrast 0.5 differs from the reverse.
    let bc = jitter_rgb(&px, [2.0, 0.5, 1.0, 0.0, order, 0.0, 0.0, 0.0]);
    let cb = jitter_rgb(
        &px,
        [
            2.0,
            0.5,
            1.0,
            0.0,
            (1 | 2 << 4 | 3 << 6) as f32,
            0.0,
            0.0,
            0.0,
        ],
    );
    assert!(bc[0] != cb[0], "{bc:?} {cb:?}");
}

#[test]
fn color_jitter_refuses_other_channel_counts_and_a_mis_shaped_row_buffer() {
    let x = zeros(&[2, 2, 3, 3]);
    let rows = zeros(&[2, TRANSFORM_LEN]);
    let err = photo::color_jitter(gpu(), &x, &rows, PixelNorm::UNIT)
        .unwrap_err()
        .to_string();
    assert!(err.contains("2 channels"), "{err}");
    let x = zeros(&[2, 3, 3, 3]);
    let err = photo::color_jitter(gpu(), &x, &zeros(&[3, TRANSFORM_LEN]), PixelNorm::UNIT)
        .unwrap_err()
        .to_string();
    assert!(err.contains("jitter"), "{err}");
}

/// (images, channels, H, W, taps): odd sizes, σ per image, a blur as wide as reflect padding
/// allows.
const BLURS: &[(usize, usize, usize, usize, usize)] = &[
    (2, 1, 5, 7, 3),
    (3, 3, 9, 6, 5),
    (1, 3, 12, 12, 7),
    (2, 1, 4, 9, 7),
];

#[test]
fn gaussian_blur_matches_cpu() {
    for p in dtype_matrix(&DTYPES, BLURS) {
        let (m, c, h, w, taps) = p.shape;
        let mut r = rng(p.seed);
        let x = as_dtype(
            &(0..m * c * h * w)
                .map(|_| r.random_range(-1.0..2.5f32))
                .collect::<Vec<_>>(),
            p.dtype,
        );
        // Image 0 is left alone (σ 0), the others get σ in torchvision's range.
        let rows: Vec<f32> = (0..m)
            .flat_map(|i| {
                let mut row = [0f32; TRANSFORM_LEN];
                row[6] = if i == 0 {
                    0.0
                } else {
                    r.random_range(0.1..2.0)
                };
                row
            })
            .collect();
        let mut want = x.clone();
        let round = |v: f32| as_dtype(&[v], p.dtype)[0];
        cpu::gaussian_blur(&mut want, (c, h, w), &rows, taps, round);
        let t = upload_as(&x, &[m, c, h, w], p.dtype);
        let jitter = upload(&rows, &[m, TRANSFORM_LEN]);
        let got = run_and_read_floats(&photo::gaussian_blur(gpu(), &t, &jitter, taps).unwrap(), &t);
        // Two passes of `taps`-term weighted sums of values ≤ 2.5, each weight from an exp
        // (a few ulps in WGSL) and normalised by their sum: 2·(2·γ(taps) + 8 u) of 2.5.
        let bound = vec![2.0 * (2.0 * gamma(taps) + 8.0 * U32) * 2.5; want.len()];
        assert_within(
            &format!("gaussian_blur {p}"),
            &got,
            &want,
            &stored_bound(bound, &want, p.dtype),
        );
    }
}

#[test]
fn gaussian_blur_gives_the_reflect_padded_gaussian_by_hand() {
    // Column 0 of a 3×4 image lit: the column pass leaves a constant column as it is, the
    // row pass spreads it with weights e^−½·(i/σ)² / Σ, σ = 1: the edge reads itself and,
    // reflected, its neighbour twice.
    let x: Vec<f32> = (0..12)
        .map(|i| if i % 4 == 0 { 1.0 } else { 0.0 })
        .collect();
    let t = upload(&x, &[1, 1, 3, 4]);
    let mut row = [0f32; TRANSFORM_LEN];
    row[6] = 1.0;
    let jitter = upload(&row, &[1, TRANSFORM_LEN]);
    let got = run_and_read(&photo::gaussian_blur(gpu(), &t, &jitter, 3).unwrap(), &t);
    let e = (-0.5f32).exp();
    let (w0, w1) = (1.0 / (1.0 + 2.0 * e), e / (1.0 + 2.0 * e));
    for y in 0..3 {
        let line = &got[y * 4..y * 4 + 4];
        let want = [w0, w1, 0.0, 0.0];
        assert!(
            line.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
            "{line:?} vs {want:?}"
        );
    }
    // A constant image stays constant.
    let t = upload(&[0.7; 2 * 3 * 5 * 5], &[2, 3, 5, 5]);
    let jitter = upload(
        &[[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.7, 0.0]; 2].concat(),
        &[2, 8],
    );
    let got = run_and_read(&photo::gaussian_blur(gpu(), &t, &jitter, 5).unwrap(), &t);
    assert!(got.iter().all(|v| (v - 0.7).abs() < 1e-6));
}

#[test]
fn gaussian_blur_refuses_an_even_or_too_wide_kernel() {
    let x = zeros(&[1, 1, 4, 6]);
    let rows = zeros(&[1, TRANSFORM_LEN]);
    for taps in [4, 9] {
        let err = photo::gaussian_blur(gpu(), &x, &rows, taps)
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be odd and its half under"), "{err}");
    }
}
