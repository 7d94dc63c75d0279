//! L2 normalisation (`shaders/normalize.wgsl`) against `cpu::normalize`, and its gradient
//! against finite differences.

use crate::common::*;
use siamese_gpu::cpu::normalize as cpu;
use siamese_gpu::ops::normalize;

/// (B, D): batch 1; D = 1 (y = ±1, zero gradient); D below, at, just past and well past the
/// 64-wide row reduction; the largest D expected (1024); and the reference network's
/// 128-wide embeddings at batch 1, 4 and 33.
const SHAPES: &[(usize, usize)] = &[
    (1, 1),
    (1, 7),
    (3, 64),
    (5, 65),
    (2, 200),
    (7, 1024),
    (1, 128),
    (4, 128),
    (33, 128),
];

/// Small shapes for finite differences.
const FD_SHAPES: &[(usize, usize)] = &[(1, 1), (2, 3), (3, 8)];

/// Uniform rows in [-1, 1), except that (when B ≥ 3) row 1 is all zeros and row 2 is
/// scaled by 1e-14 (norm ≤ 1e-14·√1024 < EPS): both take the clamp; and (when B ≥ 4) row 3
/// is scaled by 1e3.
fn input(b: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut x = uniform(&mut rng(seed), b * d, -1.0, 1.0);
    for (row, scale) in [(1, 0.0), (2, 1e-14), (3, 1e3)] {
        if b > row.max(2) {
            for v in &mut x[row * d..(row + 1) * d] {
                *v *= scale;
            }
        }
    }
    x
}

#[test]
fn l2_normalize_forward_matches_cpu() {
    for (seed, &(b, d)) in SHAPES.iter().enumerate() {
        let x = input(b, d, seed as u64);
        let (y, norms) = (zeros(&[b, d]), zeros(&[b]));
        let kernel = normalize::forward(gpu(), &upload(&x, &[b, d]), &y, &norms).unwrap();
        let got_y = run_and_read(&kernel, &y);
        let got_norms = gpu().read_f32(&norms).unwrap();
        let (want_y, want_norms) = cpu::l2_normalize_forward(&x, b, d);
        // Σx² (positive terms) in two orders differs by ≤ 2γ_D relative; the square root
        // halves that to γ_D. WGSL's sqrt is within 4.5 ulp (as 1/inverseSqrt) and the CPU's
        // 0.5 ulp: 10u more for the norm. y adds one division each side (2.5 ulp on the
        // GPU, 0.5 on the CPU): 6u more. Clamped rows have norm EPS on both sides.
        let norm_bound: Vec<f64> = want_norms
            .iter()
            .map(|&n| (gamma(d) + 10.0 * U32) * n as f64)
            .collect();
        assert_within(
            &format!("l2_normalize_forward norms {b}x{d}"),
            &got_norms,
            &want_norms,
            &norm_bound,
        );
        let y_bound: Vec<f64> = want_y
            .iter()
            .map(|&v| (gamma(d) + 16.0 * U32) * (v as f64).abs())
            .collect();
        assert_within(
            &format!("l2_normalize_forward y {b}x{d}"),
            &got_y,
            &want_y,
            &y_bound,
        );
    }
}

#[test]
fn l2_normalize_backward_matches_cpu() {
    for (seed, &(b, d)) in SHAPES.iter().enumerate() {
        let (y, norms) = cpu::l2_normalize_forward(&input(b, d, seed as u64), b, d);
        let dy = uniform(&mut rng(1000 + seed as u64), b * d, -1.0, 1.0);
        let dx = zeros(&[b, d]);
        let kernel = normalize::backward(
            gpu(),
            &upload(&y, &[b, d]),
            &upload(&norms, &[b]),
            &upload(&dy, &[b, d]),
            &dx,
        )
        .unwrap();
        let got = run_and_read(&kernel, &dx);
        let want = cpu::l2_normalize_backward(&y, &norms, &dy, b, d);
        // ⟨y, dy⟩ in two orders differs by ≤ 2γ_D·M, M = Σ|y·dy|, which reaches dx_i times
        // |y_i|/norm; the product, subtraction (maybe fused on one side) and division
        // (2.5 ulp on the GPU) add ≤ 10u of the magnitude (|dy_i| + |y_i|·M)/norm. In
        // clamped rows dx = dy/EPS: one division each side, within the same bound.
        let mut bound = vec![0.0; b * d];
        for (i, &norm) in norms.iter().enumerate() {
            let row = i * d..(i + 1) * d;
            let m: f64 = row
                .clone()
                .map(|j| (y[j] as f64 * dy[j] as f64).abs())
                .sum();
            for j in row {
                let magnitude = if norm > normalize::EPS {
                    (dy[j].abs() as f64 + y[j].abs() as f64 * m) / norm as f64
                } else {
                    dy[j].abs() as f64 / normalize::EPS as f64
                };
                bound[j] = (2.0 * gamma(d) + 10.0 * U32) * magnitude;
            }
        }
        assert_within(
            &format!("l2_normalize_backward {b}x{d}"),
            &got,
            &want,
            &bound,
        );
    }
}

/// L = Σ r ⊙ l2_normalize_forward(x).y, for inputs drawn by `scale`·uniform[-1, 1):
/// the CPU f64 backward and the GPU forward + backward against central differences with
/// step `h`.
fn check_against_fd(scale: f32, h: f64, seed0: u64) {
    for (seed, &(b, d)) in FD_SHAPES.iter().enumerate() {
        let mut r = rng(seed0 + seed as u64);
        let x32: Vec<f32> = uniform(&mut r, b * d, -1.0, 1.0)
            .iter()
            .map(|v| v * scale)
            .collect();
        let r32 = uniform(&mut r, b * d, -1.0, 1.0);
        let (x, rr) = (to_f64(&x32), to_f64(&r32));
        let fd = finite_difference(|v| dot(&rr, &cpu::l2_normalize_forward(v, b, d).0), &x, h);
        let (y, norms) = cpu::l2_normalize_forward(&x, b, d);
        assert_matches_fd(
            &format!("cpu l2_normalize_backward {b}x{d} scale {scale:e}"),
            &cpu::l2_normalize_backward(&y, &norms, &rr, b, d),
            &fd,
        );

        let (ty, tnorms, dx) = (zeros(&[b, d]), zeros(&[b]), zeros(&[b, d]));
        let fwd = normalize::forward(gpu(), &upload(&x32, &[b, d]), &ty, &tnorms).unwrap();
        let bwd = normalize::backward(gpu(), &ty, &tnorms, &upload(&r32, &[b, d]), &dx).unwrap();
        gpu().run(&[&fwd, &bwd]);
        // f32 dot products of at most 8 terms, a norm and a few divisions: 1e-5 of the
        // largest entry is ~80 ulps, far above rounding, far below a wrong term.
        assert_gpu_matches_fd(
            &format!("l2_normalize_backward {b}x{d} scale {scale:e}"),
            &gpu().read_f32(&dx).unwrap(),
            &fd,
            1e-5,
        );
    }
}

#[test]
fn l2_normalize_backward_matches_finite_differences() {
    // Rows of norm ~1: the smooth branch, FD_STEP as everywhere.
    check_against_fd(1.0, FD_STEP, 100);
    // Rows of norm ≤ 1e-14·√8 < EPS: the clamped, linear branch. The step must keep the
    // perturbed rows inside the clamp (1e-16 does); L is linear there, so the difference
    // has no truncation error and its rounding error, ε₆₄·|L|/h ≈ 1e-2, is 1e-14 of the
    // gradient (~1e12).
    check_against_fd(1e-14, 1e-16, 200);
}

/// The row sums are fixed-shape trees: two runs give the same bits.
#[test]
fn l2_normalize_forward_is_deterministic() {
    let (b, d) = (16, 1024);
    let x = input(b, d, 9);
    let (y, norms) = (zeros(&[b, d]), zeros(&[b]));
    let kernel = normalize::forward(gpu(), &upload(&x, &[b, d]), &y, &norms).unwrap();
    let first = run_and_read(&kernel, &y);
    let second = run_and_read(&kernel, &y);
    assert!(
        first
            .iter()
            .zip(&second)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "l2_normalize_forward differs between two runs"
    );
}

#[test]
fn l2_normalize_launchers_reject_mismatched_shapes() {
    let x = zeros(&[4, 128]);
    let err = normalize::forward(gpu(), &x, &zeros(&[4, 128]), &zeros(&[4, 1])).unwrap_err();
    assert!(
        err.to_string()
            .contains("l2_normalize_forward: norms must be a F32 tensor of shape [4]"),
        "{err}"
    );
    let err = normalize::backward(
        gpu(),
        &x,
        &zeros(&[4]),
        &zeros(&[4, 127]),
        &zeros(&[4, 128]),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("dy must be a F32 tensor of shape [4, 128]"),
        "{err}"
    );
}
