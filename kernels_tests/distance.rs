//! Distances (`shaders/distance.wgsl`) against `cpu::distance`, paired and pairwise (the
//! pairwise forward on both kernel paths), and their gradients against finite differences.
//!
//! Error model of the bounds (u = f32 unit roundoff): add, subtract and multiply are correctly
//! rounded in WGSL as on the CPU, so `a − b` is bit-identical on both sides; WGSL allows
//! division 2.5 ulp and `sqrt` (inherited from `1/inverseSqrt`) about 4.5 ulp, i.e. 5u and
//! 10u relative, against the CPU's correctly rounded u. Sums differ only by summation order:
//! 2·γ_n·Σ|terms| (`linear_bound`).

use crate::common::*;
use rand::RngExt;
use rand::rngs::StdRng;
use siamese_gpu::Kernel;
use siamese_gpu::cpu::distance as cpu;
use siamese_gpu::ops::distance;
use siamese_gpu::ops::pack;
use siamese_gpu::vocab::{Distance, PairwiseMetric};

/// (B, D) of the paired entries: batch 1, D = 1, row and element counts that are not
/// multiples of the 64-wide workgroup (67·33, 130 rows), and the reference embedding
/// (D = 128) at batch 128.
const SHAPES: &[(usize, usize)] = &[(1, 1), (1, 7), (3, 17), (67, 33), (130, 5), (128, 128)];

/// (B1, B2, D) of the pairwise matrix: batch 1 on either side, B1 ≠ B2, sizes off the 4×4
/// block and the 32×32 workgroup tile (70, 37, 130), and the reference embedding at B = 128;
/// 21 × 700 spans several 64-invocation workgroups of the texel kernel's 8×8 blocks, with
/// ragged edges both ways.
const PAIRWISE_SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 5, 7),
    (6, 1, 3),
    (13, 37, 9),
    (70, 33, 17),
    (37, 130, 128),
    (128, 128, 128),
    (21, 700, 6),
];

/// Small shapes for finite differences (two forwards per input element).
const FD_SHAPES: &[(usize, usize)] = &[(1, 3), (3, 5), (4, 2)];
const FD_PAIRWISE_SHAPES: &[(usize, usize, usize)] = &[(1, 2, 3), (3, 4, 5), (4, 3, 2)];

const U: f64 = U32;
/// Relative difference of a GPU `sqrt` (≤ 4.5 ulp = 9u) and the CPU's (½ ulp = u), with a u
/// to spare.
const SQRT_ERR: f64 = 11.0 * U;
/// Relative difference of a GPU division (≤ 2.5 ulp = 5u) and the CPU's (u).
const DIV_ERR: f64 = 6.0 * U;

const KINDS: [Distance; 4] = [
    Distance::Euclidean,
    Distance::SquaredEuclidean,
    Distance::L1,
    Distance::Cosine,
];

// ---- inputs ---------------------------------------------------------------------------------

struct Pair {
    a: Vec<f32>,
    b: Vec<f32>,
    /// Upstream gradient of a per-row distance, [B].
    dd: Vec<f32>,
    /// Upstream gradient of an elementwise output, [B, D].
    dy: Vec<f32>,
}

fn pair(rows: usize, dim: usize, seed: u64) -> Pair {
    let mut r = rng(seed);
    Pair {
        a: uniform(&mut r, rows * dim, -1.0, 1.0),
        b: uniform(&mut r, rows * dim, -1.0, 1.0),
        dd: uniform(&mut r, rows, -1.0, 1.0),
        dy: uniform(&mut r, rows * dim, -1.0, 1.0),
    }
}

/// Identical rows: the Euclidean gradient must be exactly 0 there, not NaN.
fn identical(rows: usize, dim: usize, seed: u64) -> Pair {
    let mut p = pair(rows, dim, seed);
    p.b = p.a.clone();
    p
}

/// Scales row `row` of `x` (when there is one) by 1e-10: a nonzero row whose norm (≤ 1e-10·√D)
/// is below the cosine clamp 1e-8, so the clamp changes the distance and removes a gradient
/// term that would otherwise be ~1e6 (an exactly zero row would hide both).
fn tiny_row(x: &mut [f32], row: usize, dim: usize) {
    if let Some(r) = x.get_mut(row * dim..(row + 1) * dim) {
        r.iter_mut().for_each(|v| *v *= 1e-10);
    }
}

/// Row 1 of `a` and row 2 of `b` below the cosine clamp (see [`tiny_row`]).
fn with_tiny_rows(mut p: Pair, dim: usize) -> Pair {
    tiny_row(&mut p.a, 1, dim);
    tiny_row(&mut p.b, 2, dim);
    p
}

/// `n` values with magnitude in [0.2, 1) and random sign.
fn away_from_zero(r: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let v = r.random_range(0.2f32..1.0);
            if r.random_range(0..2) == 0 { v } else { -v }
        })
        .collect()
}

/// Inputs for finite differences, far from every kink and singularity: each a − b component
/// is at least 0.2 in magnitude (L1's kink, and d ≥ 0.2·√D keeps the Euclidean curvature
/// small) and for the cosine every norm is at least 0.2 (both rows drawn away from zero).
fn fd_pair(rows: usize, dim: usize, seed: u64, cosine: bool) -> Pair {
    let mut r = rng(seed);
    let a = away_from_zero(&mut r, rows * dim);
    let offset = away_from_zero(&mut r, rows * dim);
    let b = if cosine {
        offset
    } else {
        a.iter().zip(&offset).map(|(x, o)| x + o).collect()
    };
    Pair {
        a,
        b,
        dd: uniform(&mut r, rows, -1.0, 1.0),
        dy: uniform(&mut r, rows * dim, -1.0, 1.0),
    }
}

struct Matrix {
    a: Vec<f32>,
    b: Vec<f32>,
    ddm: Vec<f32>,
}

fn matrix_inputs(b1: usize, b2: usize, dim: usize, seed: u64) -> Matrix {
    let mut r = rng(seed);
    Matrix {
        a: uniform(&mut r, b1 * dim, -1.0, 1.0),
        b: uniform(&mut r, b2 * dim, -1.0, 1.0),
        ddm: uniform(&mut r, b1 * b2, -1.0, 1.0),
    }
}

// ---- GPU runs -------------------------------------------------------------------------------

fn gpu_forward(kind: Distance, a: &[f32], b: &[f32], rows: usize, dim: usize) -> Vec<f32> {
    let d = zeros(&[rows]);
    let k = distance::forward(
        gpu(),
        kind,
        &upload(a, &[rows, dim]),
        &upload(b, &[rows, dim]),
        &d,
    )
    .unwrap();
    run_and_read(&k, &d)
}

/// The backward alone, fed the given forward output `d`.
fn gpu_backward(
    kind: Distance,
    p: &Pair,
    d: &[f32],
    rows: usize,
    dim: usize,
) -> (Vec<f32>, Vec<f32>) {
    let (da, db) = (zeros(&[rows, dim]), zeros(&[rows, dim]));
    let k = distance::backward(
        gpu(),
        kind,
        &upload(&p.a, &[rows, dim]),
        &upload(&p.b, &[rows, dim]),
        &upload(d, &[rows]),
        &upload(&p.dd, &[rows]),
        &da,
        &db,
    )
    .unwrap();
    gpu().run(&[&k]);
    (gpu().read_f32(&da).unwrap(), gpu().read_f32(&db).unwrap())
}

/// Forward then backward on the GPU in one submission, as training runs them.
fn gpu_chain(kind: Distance, p: &Pair, rows: usize, dim: usize) -> (Vec<f32>, Vec<f32>) {
    let (a, b) = (upload(&p.a, &[rows, dim]), upload(&p.b, &[rows, dim]));
    let (d, dd) = (zeros(&[rows]), upload(&p.dd, &[rows]));
    let (da, db) = (zeros(&[rows, dim]), zeros(&[rows, dim]));
    let fwd = distance::forward(gpu(), kind, &a, &b, &d).unwrap();
    let bwd = distance::backward(gpu(), kind, &a, &b, &d, &dd, &da, &db).unwrap();
    gpu().run(&[&fwd, &bwd]);
    (gpu().read_f32(&da).unwrap(), gpu().read_f32(&db).unwrap())
}

fn gpu_abs_diff_backward(p: &Pair, rows: usize, dim: usize) -> (Vec<f32>, Vec<f32>) {
    let (da, db) = (zeros(&[rows, dim]), zeros(&[rows, dim]));
    let k = distance::abs_diff_backward(
        gpu(),
        &upload(&p.a, &[rows, dim]),
        &upload(&p.b, &[rows, dim]),
        &upload(&p.dy, &[rows, dim]),
        &da,
        &db,
    )
    .unwrap();
    gpu().run(&[&k]);
    (gpu().read_f32(&da).unwrap(), gpu().read_f32(&db).unwrap())
}

/// The pairwise forward's kernel paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// pairwise_euclidean_forward, pairwise_cosine_forward on storage buffers.
    Storage,
    /// Both operands packed by pack_rows4, then pairwise_euclidean_forward_tex or
    /// pairwise_cosine_forward_tex.
    Texels,
}

const PATHS: [Path; 2] = [Path::Storage, Path::Texels];

/// The distance matrix of `metric` on `path`.
fn gpu_pairwise_forward(
    path: Path,
    metric: PairwiseMetric,
    a: &[f32],
    b: &[f32],
    (b1, b2, dim): (usize, usize, usize),
) -> Vec<f32> {
    let dm = zeros(&[b1, b2]);
    let (a, b) = (upload(a, &[b1, dim]), upload(b, &[b2, dim]));
    let kernel = match path {
        Path::Storage => distance::pairwise_forward(gpu(), metric, &a, &b, &dm).unwrap(),
        Path::Texels => {
            let (pack_a, ta) = pack::rows4(gpu(), &a, false).unwrap();
            let (pack_b, tb) = pack::rows4(gpu(), &b, false).unwrap();
            let k = distance::pairwise_forward_tex(gpu(), metric, &ta, &tb, (b1, b2, dim), &dm)
                .unwrap();
            let entry = match metric {
                PairwiseMetric::Euclidean => "pairwise_euclidean_forward_tex",
                PairwiseMetric::Cosine => "pairwise_cosine_forward_tex",
            };
            assert_eq!(k.dispatches().last().unwrap().entry(), entry);
            Kernel::chain([pack_a, pack_b, k])
        }
    };
    run_and_read(&kernel, &dm)
}

/// The pairwise backward, fed `dm` as the forward output (`None`: the GPU forward's, in the
/// same submission).
fn gpu_pairwise_backward(
    metric: PairwiseMetric,
    m: &Matrix,
    dm: Option<&[f32]>,
    (b1, b2, dim): (usize, usize, usize),
) -> (Vec<f32>, Vec<f32>) {
    let (a, b) = (upload(&m.a, &[b1, dim]), upload(&m.b, &[b2, dim]));
    let ddm = upload(&m.ddm, &[b1, b2]);
    let (da, db) = (zeros(&[b1, dim]), zeros(&[b2, dim]));
    let dm_t = match dm {
        Some(v) => upload(v, &[b1, b2]),
        None => zeros(&[b1, b2]),
    };
    let bwd = distance::pairwise_backward(gpu(), metric, &a, &b, &dm_t, &ddm, &da, &db).unwrap();
    if dm.is_some() {
        gpu().run(&[&bwd]);
    } else {
        let fwd = distance::pairwise_forward(gpu(), metric, &a, &b, &dm_t).unwrap();
        gpu().run(&[&fwd, &bwd]);
    }
    (gpu().read_f32(&da).unwrap(), gpu().read_f32(&db).unwrap())
}

fn scaled(v: &[f32], rel: f64) -> Vec<f64> {
    v.iter().map(|&x| rel * (x as f64).abs() + 1e-30).collect()
}

fn assert_all_zero(what: &str, v: &[f32]) {
    for (i, &x) in v.iter().enumerate() {
        assert!(x == 0.0, "{what}: element {i} is {x}, not 0");
    }
}

// ---- paired forward -------------------------------------------------------------------------

#[test]
fn euclidean_forward_matches_cpu() {
    for (seed, &(rows, dim)) in SHAPES.iter().enumerate() {
        for (tag, p) in [
            ("random", pair(rows, dim, seed as u64)),
            ("a = b", identical(rows, dim, seed as u64)),
        ] {
            let got = gpu_forward(Distance::Euclidean, &p.a, &p.b, rows, dim);
            let want = cpu::euclidean_forward(&p.a, &p.b, rows, dim);
            // Σ(a−b)² of D nonnegative terms differs by ≤ 2γ_(D+1)·S (+4u, linear_bound);
            // the sqrt halves that, adds its own SQRT_ERR, and +1e-12 one rounding (2u).
            assert_within(
                &format!("euclidean_forward {rows}x{dim} {tag}"),
                &got,
                &want,
                &scaled(&want, gamma(dim + 1) + 4.0 * U + SQRT_ERR),
            );
        }
        // At a = b the distance is sqrt(1e-12) = 1e-6, not 0.
        let p = identical(rows, dim, seed as u64);
        for d in gpu_forward(Distance::Euclidean, &p.a, &p.b, rows, dim) {
            assert!((d - 1e-6).abs() <= 1e-12, "euclidean at a = b: {d}");
        }
    }
}

#[test]
fn squared_euclidean_forward_matches_cpu() {
    for (seed, &(rows, dim)) in SHAPES.iter().enumerate() {
        let p = pair(rows, dim, seed as u64);
        let got = gpu_forward(Distance::SquaredEuclidean, &p.a, &p.b, rows, dim);
        let want = cpu::squared_euclidean_forward(&p.a, &p.b, rows, dim);
        // D nonnegative terms (a−b)² summed in another order (fma vs mul + add):
        // 2·γ_(D+1)·Σ|terms|, and Σ|terms| is the result itself.
        assert_within(
            &format!("squared_euclidean_forward {rows}x{dim}"),
            &got,
            &want,
            &linear_bound(dim, &want),
        );
    }
}

#[test]
fn l1_forward_matches_cpu() {
    for (seed, &(rows, dim)) in SHAPES.iter().enumerate() {
        let p = pair(rows, dim, seed as u64);
        let got = gpu_forward(Distance::L1, &p.a, &p.b, rows, dim);
        let want = cpu::l1_forward(&p.a, &p.b, rows, dim);
        // D nonnegative terms |a−b| (bit-identical on both sides), summed: 2·γ_(D+1)·result.
        assert_within(
            &format!("l1_forward {rows}x{dim}"),
            &got,
            &want,
            &linear_bound(dim, &want),
        );
    }
}

/// Absolute bound on a cosine distance computed in two ways: the dot product differs by
/// ≤ 2γ_D·Σ|a·b|/(‖a‖‖b‖) ≤ 2γ_D (Cauchy–Schwarz) after normalising, each norm by
/// ≤ γ_D + SQRT_ERR relative (half the sum's error, then the sqrt), the division and product
/// by DIV_ERR + 2u, and |cos| ≤ 1; the final 1 − cos rounds by ≤ 2u on each side.
fn cosine_distance_bound(dim: usize) -> f64 {
    2.0 * gamma(dim) + 2.0 * (gamma(dim) + SQRT_ERR) + DIV_ERR + 6.0 * U
}

#[test]
fn cosine_forward_matches_cpu() {
    for (seed, &(rows, dim)) in SHAPES.iter().enumerate() {
        let p = with_tiny_rows(pair(rows, dim, seed as u64), dim);
        let got = gpu_forward(Distance::Cosine, &p.a, &p.b, rows, dim);
        let want = cpu::cosine_forward(&p.a, &p.b, rows, dim);
        assert_close(
            &format!("cosine_forward {rows}x{dim}"),
            &got,
            &want,
            cosine_distance_bound(dim),
            0.0,
        );
    }
}

#[test]
fn abs_diff_forward_matches_cpu() {
    for (seed, &(rows, dim)) in SHAPES.iter().enumerate() {
        let p = pair(rows, dim, seed as u64);
        let y = zeros(&[rows, dim]);
        let k = distance::abs_diff_forward(
            gpu(),
            &upload(&p.a, &[rows, dim]),
            &upload(&p.b, &[rows, dim]),
            &y,
        )
        .unwrap();
        let got = run_and_read(&k, &y);
        let want = cpu::abs_diff_forward(&p.a, &p.b, rows, dim);
        // One correctly rounded subtraction and an exact abs on both sides: bit-identical.
        assert_close(
            &format!("abs_diff_forward {rows}x{dim}"),
            &got,
            &want,
            0.0,
            0.0,
        );
    }
}

// ---- paired backward ------------------------------------------------------------------------

#[test]
fn euclidean_backward_matches_cpu() {
    for (seed, &(rows, dim)) in SHAPES.iter().enumerate() {
        let p = pair(rows, dim, seed as u64);
        let d = cpu::euclidean_forward(&p.a, &p.b, rows, dim);
        let (da, db) = gpu_backward(Distance::Euclidean, &p, &d, rows, dim);
        let (want_a, want_b) = cpu::euclidean_backward(&p.a, &p.b, &d, &p.dd, rows, dim);
        // dd·(a−b)/d from the same d: the subtraction is identical, the product rounds once
        // (2u over both sides), the GPU division adds DIV_ERR.
        let rel = 2.0 * U + DIV_ERR;
        let what = format!("euclidean_backward {rows}x{dim}");
        assert_within(&format!("{what} da"), &da, &want_a, &scaled(&want_a, rel));
        assert_within(&format!("{what} db"), &db, &want_b, &scaled(&want_b, rel));

        // Identical rows, forward and backward on the GPU: the gradient is exactly zero
        // (0/1e-6), where an epsilon outside the sqrt would give 0/0 = NaN.
        let p = identical(rows, dim, seed as u64);
        let (da, db) = gpu_chain(Distance::Euclidean, &p, rows, dim);
        assert_all_zero(&format!("{what} da at a = b"), &da);
        assert_all_zero(&format!("{what} db at a = b"), &db);
    }
}

#[test]
fn squared_euclidean_backward_matches_cpu() {
    for (seed, &(rows, dim)) in SHAPES.iter().enumerate() {
        let p = pair(rows, dim, seed as u64);
        let d = cpu::squared_euclidean_forward(&p.a, &p.b, rows, dim);
        let (da, db) = gpu_backward(Distance::SquaredEuclidean, &p, &d, rows, dim);
        let (want_a, want_b) = cpu::squared_euclidean_backward(&p.a, &p.b, &p.dd, rows, dim);
        // 2·dd·(a−b): identical subtraction, exact doubling, one product rounding per side.
        let what = format!("squared_euclidean_backward {rows}x{dim}");
        assert_within(
            &format!("{what} da"),
            &da,
            &want_a,
            &scaled(&want_a, 2.0 * U),
        );
        assert_within(
            &format!("{what} db"),
            &db,
            &want_b,
            &scaled(&want_b, 2.0 * U),
        );
    }
}

#[test]
fn l1_backward_matches_cpu() {
    for (seed, &(rows, dim)) in SHAPES.iter().enumerate() {
        // Random rows, and identical rows where the subgradient must be 0.
        for p in [
            pair(rows, dim, seed as u64),
            identical(rows, dim, seed as u64),
        ] {
            let d = cpu::l1_forward(&p.a, &p.b, rows, dim);
            let (da, db) = gpu_backward(Distance::L1, &p, &d, rows, dim);
            let (want_a, want_b) = cpu::l1_backward(&p.a, &p.b, &p.dd, rows, dim);
            // dd·sign(a−b) is dd, −dd or 0: exact on both sides.
            let what = format!("l1_backward {rows}x{dim}");
            assert_close(&format!("{what} da"), &da, &want_a, 0.0, 0.0);
            assert_close(&format!("{what} db"), &db, &want_b, 0.0, 0.0);
        }
    }
}

#[test]
fn abs_diff_backward_matches_cpu() {
    for (seed, &(rows, dim)) in SHAPES.iter().enumerate() {
        for p in [
            pair(rows, dim, seed as u64),
            identical(rows, dim, seed as u64),
        ] {
            let (da, db) = gpu_abs_diff_backward(&p, rows, dim);
            let (want_a, want_b) = cpu::abs_diff_backward(&p.a, &p.b, &p.dy, rows, dim);
            // dy·sign(a−b) is dy, −dy or 0: exact on both sides.
            let what = format!("abs_diff_backward {rows}x{dim}");
            assert_close(&format!("{what} da"), &da, &want_a, 0.0, 0.0);
            assert_close(&format!("{what} db"), &db, &want_b, 0.0, 0.0);
        }
    }
}

/// |dd|·(|x_k|/‖x‖² + |y_k|/(‖x‖‖y‖)) per element: the size of the two terms of a cosine
/// gradient (before they cancel), in f64, with the clamped norms (and no first term where
/// ‖x‖ is clamped, as in the gradient).
fn cosine_grad_magnitude(x: &[f32], y: &[f32], g: f64) -> Vec<f64> {
    let norm = |v: &[f32]| {
        v.iter()
            .map(|&t| (t as f64).powi(2))
            .sum::<f64>()
            .sqrt()
            .max(cpu::COSINE_EPS)
    };
    let (nx, ny) = (norm(x), norm(y));
    x.iter()
        .zip(y)
        .map(|(&s, &t)| {
            let own = if nx > cpu::COSINE_EPS {
                (s as f64).abs() / (nx * nx)
            } else {
                0.0
            };
            g.abs() * (own + (t as f64).abs() / (nx * ny))
        })
        .collect()
}

#[test]
fn cosine_backward_matches_cpu() {
    for (seed, &(rows, dim)) in SHAPES.iter().enumerate() {
        let p = with_tiny_rows(pair(rows, dim, seed as u64), dim);
        let d = cpu::cosine_forward(&p.a, &p.b, rows, dim);
        let (da, db) = gpu_backward(Distance::Cosine, &p, &d, rows, dim);
        let (want_a, want_b) = cpu::cosine_backward(&p.a, &p.b, &p.dd, rows, dim);
        // Each term's factors (cos, 1/‖a‖², 1/(‖a‖‖b‖)) differ between the two sides by at
        // most cosine_distance_bound (the cosine, absolute, ≤ 1) or 2·(γ_D + SQRT_ERR) +
        // DIV_ERR (the norms, relative); twice that plus a few roundings, relative to the
        // size of the terms before they cancel.
        let rel = 2.0 * cosine_distance_bound(dim) + 8.0 * U;
        let (mut bound_a, mut bound_b) = (Vec::new(), Vec::new());
        for i in 0..rows {
            let (x, y) = (&p.a[i * dim..(i + 1) * dim], &p.b[i * dim..(i + 1) * dim]);
            let g = p.dd[i] as f64;
            bound_a.extend(cosine_grad_magnitude(x, y, g).iter().map(|m| rel * m));
            bound_b.extend(cosine_grad_magnitude(y, x, g).iter().map(|m| rel * m));
        }
        let what = format!("cosine_backward {rows}x{dim}");
        assert_within(&format!("{what} da"), &da, &want_a, &bound_a);
        assert_within(&format!("{what} db"), &db, &want_b, &bound_b);
    }
}

// ---- paired finite differences --------------------------------------------------------------

/// L = Σ_i r_i·d_i with r = dd: checks the f64 CPU backward and the GPU backward (run after
/// the GPU forward) against central differences of the f64 CPU forward, for a and b.
fn check_paired_fd(kind: Distance, gpu_rtol: f64) {
    let name = format!("{kind:?}");
    for (seed, &(rows, dim)) in FD_SHAPES.iter().enumerate() {
        let p = fd_pair(rows, dim, 100 + seed as u64, kind == Distance::Cosine);
        let (a, b, r) = (to_f64(&p.a), to_f64(&p.b), to_f64(&p.dd));
        let forward = |a: &[f64], b: &[f64]| match kind {
            Distance::Euclidean => cpu::euclidean_forward(a, b, rows, dim),
            Distance::SquaredEuclidean => cpu::squared_euclidean_forward(a, b, rows, dim),
            Distance::L1 => cpu::l1_forward(a, b, rows, dim),
            Distance::Cosine => cpu::cosine_forward(a, b, rows, dim),
        };
        let fd_a = finite_difference(|v| dot(&r, &forward(v, &b)), &a, FD_STEP);
        let fd_b = finite_difference(|v| dot(&r, &forward(&a, v)), &b, FD_STEP);
        let (cpu_a, cpu_b) = match kind {
            Distance::Euclidean => cpu::euclidean_backward(&a, &b, &forward(&a, &b), &r, rows, dim),
            Distance::SquaredEuclidean => cpu::squared_euclidean_backward(&a, &b, &r, rows, dim),
            Distance::L1 => cpu::l1_backward(&a, &b, &r, rows, dim),
            Distance::Cosine => cpu::cosine_backward(&a, &b, &r, rows, dim),
        };
        assert_matches_fd(&format!("cpu {name} backward da"), &cpu_a, &fd_a);
        assert_matches_fd(&format!("cpu {name} backward db"), &cpu_b, &fd_b);

        let (da, db) = gpu_chain(kind, &p, rows, dim);
        assert_gpu_matches_fd(&format!("{name} backward da"), &da, &fd_a, gpu_rtol);
        assert_gpu_matches_fd(&format!("{name} backward db"), &db, &fd_b, gpu_rtol);
    }
}

#[test]
fn euclidean_backward_matches_finite_differences() {
    // dd·(a−b)/d with d from the GPU forward: a handful of roundings (~10u ≈ 6e-7) relative
    // to the largest entry; 1e-5 leaves room and still catches any formula or index error.
    check_paired_fd(Distance::Euclidean, 1e-5);
}

#[test]
fn squared_euclidean_backward_matches_finite_differences() {
    // 2·dd·(a−b): two roundings (~1.2e-7) relative; 1e-6 is an order of magnitude above.
    check_paired_fd(Distance::SquaredEuclidean, 1e-6);
}

#[test]
fn l1_backward_matches_finite_differences() {
    // ±dd exactly on the GPU; FD of a piecewise-linear function away from its kinks is exact
    // up to f64 rounding: 1e-6 is far above both.
    check_paired_fd(Distance::L1, 1e-6);
}

#[test]
fn cosine_backward_matches_finite_differences() {
    // Sums of D ≤ 5 terms, two sqrts and divisions in f32: ~30u ≈ 2e-6 of the terms, which
    // with norms ≥ 0.2·√D are at most a few times the largest entry: 1e-5.
    check_paired_fd(Distance::Cosine, 1e-5);
}

#[test]
fn abs_diff_backward_matches_finite_differences() {
    for (seed, &(rows, dim)) in FD_SHAPES.iter().enumerate() {
        let p = fd_pair(rows, dim, 200 + seed as u64, false);
        let (a, b, r) = (to_f64(&p.a), to_f64(&p.b), to_f64(&p.dy));
        let forward = |a: &[f64], b: &[f64]| cpu::abs_diff_forward(a, b, rows, dim);
        let fd_a = finite_difference(|v| dot(&r, &forward(v, &b)), &a, FD_STEP);
        let fd_b = finite_difference(|v| dot(&r, &forward(&a, v)), &b, FD_STEP);
        let (cpu_a, cpu_b) = cpu::abs_diff_backward(&a, &b, &r, rows, dim);
        assert_matches_fd("cpu abs_diff_backward da", &cpu_a, &fd_a);
        assert_matches_fd("cpu abs_diff_backward db", &cpu_b, &fd_b);
        let (da, db) = gpu_abs_diff_backward(&p, rows, dim);
        // ±dy exactly; FD of a linear piece is exact up to f64 rounding: 1e-6 is far above.
        assert_gpu_matches_fd("abs_diff_backward da", &da, &fd_a, 1e-6);
        assert_gpu_matches_fd("abs_diff_backward db", &db, &fd_b, 1e-6);
    }
}

// ---- pairwise matrix ------------------------------------------------------------------------

#[test]
fn pairwise_euclidean_forward_matches_cpu() {
    for p in matrix(&PATHS, &F32_ONLY, |_| PAIRWISE_SHAPES) {
        let (b1, b2, dim) = p.shape;
        let m = matrix_inputs(b1, b2, dim, p.seed);
        let got = gpu_pairwise_forward(p.path, PairwiseMetric::Euclidean, &m.a, &m.b, p.shape);
        let want = cpu::pairwise_euclidean_forward(&m.a, &m.b, b1, b2, dim);
        // As euclidean_forward: the sum of squares to 2γ_(D+1) (+4u), halved by the sqrt,
        // plus the sqrt's own error and the epsilon's rounding.
        assert_within(
            &format!("pairwise_euclidean_forward {p}"),
            &got,
            &want,
            &scaled(&want, gamma(dim + 1) + 4.0 * U + SQRT_ERR),
        );
    }
    // A against itself: the diagonal is sqrt(1e-12) = 1e-6 (no cancellation to a negative
    // or noisy value, as ‖a‖² + ‖b‖² − 2ab would give).
    for p in matrix(&PATHS, &F32_ONLY, |_| &[(37, 37, 128)]) {
        let (b1, _, dim) = p.shape;
        let m = matrix_inputs(b1, b1, dim, 7);
        let got = gpu_pairwise_forward(p.path, PairwiseMetric::Euclidean, &m.a, &m.a, p.shape);
        for i in 0..b1 {
            let d = got[i * b1 + i];
            assert!((d - 1e-6).abs() <= 1e-12, "{p}: diagonal {i}: {d}");
        }
    }
}

#[test]
fn pairwise_cosine_forward_matches_cpu() {
    for p in matrix(&PATHS, &F32_ONLY, |_| PAIRWISE_SHAPES) {
        let (b1, b2, dim) = p.shape;
        let mut m = matrix_inputs(b1, b2, dim, p.seed);
        tiny_row(&mut m.a, 1, dim); // clamped norms
        tiny_row(&mut m.b, 2, dim);
        let got = gpu_pairwise_forward(p.path, PairwiseMetric::Cosine, &m.a, &m.b, p.shape);
        let want = cpu::pairwise_cosine_forward(&m.a, &m.b, b1, b2, dim);
        // As cosine_forward (see cosine_distance_bound).
        assert_close(
            &format!("pairwise_cosine_forward {p}"),
            &got,
            &want,
            cosine_distance_bound(dim),
            0.0,
        );
    }
}

#[test]
fn cosine_norms_matches_cpu() {
    for (seed, &(b1, b2, dim)) in PAIRWISE_SHAPES.iter().enumerate() {
        let mut m = matrix_inputs(b1, b2, dim, seed as u64);
        tiny_row(&mut m.a, 1, dim); // clamped norms
        tiny_row(&mut m.b, 0, dim);
        let (na, nb) = (zeros(&[b1]), zeros(&[b2]));
        let k = distance::cosine_norms(
            gpu(),
            &upload(&m.a, &[b1, dim]),
            &upload(&m.b, &[b2, dim]),
            &na,
            &nb,
        )
        .unwrap();
        gpu().run(&[&k]);
        let (want_a, want_b) = cpu::cosine_norms(&m.a, &m.b, b1, b2, dim);
        // The sum of squares to 2γ_(D+1) (+4u), halved by the sqrt, plus its own error.
        let rel = gamma(dim + 1) + 2.0 * U + SQRT_ERR;
        let what = format!("cosine_norms {b1}x{b2}x{dim}");
        let got_a = gpu().read_f32(&na).unwrap();
        let got_b = gpu().read_f32(&nb).unwrap();
        assert_within(
            &format!("{what} na"),
            &got_a,
            &want_a,
            &scaled(&want_a, rel),
        );
        assert_within(
            &format!("{what} nb"),
            &got_b,
            &want_b,
            &scaled(&want_b, rel),
        );
    }
}

/// Σ_j |dDm[i,j]/Dm[i,j]|·|A[i,k] − B[j,k]| (and the same for B's rows): the size of the
/// terms each gradient element sums, in f64.
fn pairwise_euclidean_magnitude(
    m: &Matrix,
    dm: &[f32],
    (b1, b2, dim): (usize, usize, usize),
) -> (Vec<f32>, Vec<f32>) {
    let mut mag_a = vec![0.0f64; b1 * dim];
    let mut mag_b = vec![0.0f64; b2 * dim];
    for i in 0..b1 {
        for j in 0..b2 {
            let w = (m.ddm[i * b2 + j] as f64 / dm[i * b2 + j] as f64).abs();
            for k in 0..dim {
                let t = w * (m.a[i * dim + k] as f64 - m.b[j * dim + k] as f64).abs();
                mag_a[i * dim + k] += t;
                mag_b[j * dim + k] += t;
            }
        }
    }
    (to_f32(&mag_a), to_f32(&mag_b))
}

#[test]
fn pairwise_euclidean_backward_matches_cpu() {
    // The shared shapes, and A against itself (the mining case, identical rows on the
    // diagonal: their terms must be exactly 0, not NaN).
    let cases = PAIRWISE_SHAPES
        .iter()
        .map(|&s| (s, false))
        .chain([((37, 37, 128), true)]);
    for (seed, (shape, self_pairs)) in cases.enumerate() {
        let (b1, b2, dim) = shape;
        let mut m = matrix_inputs(b1, b2, dim, seed as u64);
        if self_pairs {
            m.b = m.a.clone();
        }
        let dm = cpu::pairwise_euclidean_forward(&m.a, &m.b, b1, b2, dim);
        let (da, db) = gpu_pairwise_backward(PairwiseMetric::Euclidean, &m, Some(&dm), shape);
        let (want_a, want_b) =
            cpu::pairwise_euclidean_backward(&m.a, &m.b, &dm, &m.ddm, b1, b2, dim);
        let (mag_a, mag_b) = pairwise_euclidean_magnitude(&m, &dm, shape);
        // Sums of B2 (resp. B1) products in another order: 2γ_(n+1)·Σ|terms| (linear_bound),
        // plus DIV_ERR per term for the weight dDm/Dm.
        let bound = |n: usize, mag: &[f32]| -> Vec<f64> {
            linear_bound(n, mag)
                .iter()
                .zip(mag)
                .map(|(l, &g)| l + DIV_ERR * g as f64)
                .collect()
        };
        let what = format!("pairwise_euclidean_backward {b1}x{b2}x{dim} self={self_pairs}");
        assert!(
            da.iter().chain(&db).all(|v| v.is_finite()),
            "{what}: non-finite gradient"
        );
        assert_within(&format!("{what} dA"), &da, &want_a, &bound(b2, &mag_a));
        assert_within(&format!("{what} dB"), &db, &want_b, &bound(b1, &mag_b));
    }
}

/// Σ_j |g|·(|c|·|A[i,k]|/na_i² + |B[j,k]|/(na_i·nb_j)) (and the same for B's rows): the size
/// of the terms each cosine gradient element sums, with c = 1 − Dm, in f64.
fn pairwise_cosine_magnitude(
    m: &Matrix,
    dm: &[f32],
    (b1, b2, dim): (usize, usize, usize),
) -> (Vec<f32>, Vec<f32>) {
    let (na, nb) = cpu::cosine_norms(&to_f64(&m.a), &to_f64(&m.b), b1, b2, dim);
    let mut mag_a = vec![0.0f64; b1 * dim];
    let mut mag_b = vec![0.0f64; b2 * dim];
    for i in 0..b1 {
        for j in 0..b2 {
            let g = (m.ddm[i * b2 + j] as f64).abs();
            let c = (1.0 - dm[i * b2 + j] as f64).abs();
            for k in 0..dim {
                let (x, y) = (
                    (m.a[i * dim + k] as f64).abs(),
                    (m.b[j * dim + k] as f64).abs(),
                );
                let inv = 1.0 / (na[i] * nb[j]);
                let own_a = if na[i] > cpu::COSINE_EPS {
                    x / (na[i] * na[i])
                } else {
                    0.0
                };
                let own_b = if nb[j] > cpu::COSINE_EPS {
                    y / (nb[j] * nb[j])
                } else {
                    0.0
                };
                mag_a[i * dim + k] += g * (c * own_a + y * inv);
                mag_b[j * dim + k] += g * (c * own_b + x * inv);
            }
        }
    }
    (to_f32(&mag_a), to_f32(&mag_b))
}

#[test]
fn pairwise_cosine_backward_matches_cpu() {
    for (seed, &shape) in PAIRWISE_SHAPES.iter().enumerate() {
        let (b1, b2, dim) = shape;
        let mut m = matrix_inputs(b1, b2, dim, seed as u64);
        tiny_row(&mut m.a, 1, dim); // clamped norms
        tiny_row(&mut m.b, 2, dim);
        let dm = cpu::pairwise_cosine_forward(&m.a, &m.b, b1, b2, dim);
        let (da, db) = gpu_pairwise_backward(PairwiseMetric::Cosine, &m, Some(&dm), shape);
        let (want_a, want_b) = cpu::pairwise_cosine_backward(&m.a, &m.b, &dm, &m.ddm, b1, b2, dim);
        let (mag_a, mag_b) = pairwise_cosine_magnitude(&m, &dm, shape);
        // Both sides read c = 1 − Dm identically. Sums of n terms in another order:
        // 2γ_(n+1)·Σ|terms|; each term's norms differ by ≤ γ_D + SQRT_ERR (relative, up to
        // squared, on both sides: 4×), and it goes through ≤ 3 divisions and ≤ 4 products.
        let bound = |n: usize, mag: &[f32]| -> Vec<f64> {
            let rel = 2.0 * gamma(n + 1) + 4.0 * (gamma(dim) + SQRT_ERR) + 3.0 * DIV_ERR + 8.0 * U;
            mag.iter().map(|&g| rel * g as f64 + 1e-30).collect()
        };
        let what = format!("pairwise_cosine_backward {b1}x{b2}x{dim}");
        assert_within(&format!("{what} dA"), &da, &want_a, &bound(b2, &mag_a));
        assert_within(&format!("{what} dB"), &db, &want_b, &bound(b1, &mag_b));
    }
}

/// L = Σ r ⊙ Dm(A, B) with r = dDm: the f64 CPU backward and the GPU backward (after the GPU
/// forward) against central differences of the f64 CPU forward, for A and B.
fn check_pairwise_fd(metric: PairwiseMetric, gpu_rtol: f64) {
    let name = format!("pairwise {metric:?}");
    for (seed, &shape) in FD_PAIRWISE_SHAPES.iter().enumerate() {
        let (b1, b2, dim) = shape;
        let mut r = rng(300 + seed as u64);
        // Rows of A with components of magnitude ≥ 0.2, rows of B in [2, 3): every norm and
        // every distance is bounded away from 0, where the curvature would spoil the FD.
        let m = Matrix {
            a: away_from_zero(&mut r, b1 * dim),
            b: uniform(&mut r, b2 * dim, 2.0, 3.0),
            ddm: uniform(&mut r, b1 * b2, -1.0, 1.0),
        };
        let (a, b, rr) = (to_f64(&m.a), to_f64(&m.b), to_f64(&m.ddm));
        let forward = |a: &[f64], b: &[f64]| match metric {
            PairwiseMetric::Euclidean => cpu::pairwise_euclidean_forward(a, b, b1, b2, dim),
            PairwiseMetric::Cosine => cpu::pairwise_cosine_forward(a, b, b1, b2, dim),
        };
        let fd_a = finite_difference(|v| dot(&rr, &forward(v, &b)), &a, FD_STEP);
        let fd_b = finite_difference(|v| dot(&rr, &forward(&a, v)), &b, FD_STEP);
        let dm = forward(&a, &b);
        let (cpu_a, cpu_b) = match metric {
            PairwiseMetric::Euclidean => {
                cpu::pairwise_euclidean_backward(&a, &b, &dm, &rr, b1, b2, dim)
            }
            PairwiseMetric::Cosine => cpu::pairwise_cosine_backward(&a, &b, &dm, &rr, b1, b2, dim),
        };
        assert_matches_fd(&format!("cpu {name} backward dA"), &cpu_a, &fd_a);
        assert_matches_fd(&format!("cpu {name} backward dB"), &cpu_b, &fd_b);

        let (da, db) = gpu_pairwise_backward(metric, &m, None, shape);
        assert_gpu_matches_fd(&format!("{name} backward dA"), &da, &fd_a, gpu_rtol);
        assert_gpu_matches_fd(&format!("{name} backward dB"), &db, &fd_b, gpu_rtol);
    }
}

#[test]
fn pairwise_euclidean_backward_matches_finite_differences() {
    // Sums of ≤ 4 terms w·(a−b), w through a sqrt and a division: ~20u ≈ 1e-6 of the terms,
    // which are at most a few times the largest entry: 1e-5.
    check_pairwise_fd(PairwiseMetric::Euclidean, 1e-5);
}

#[test]
fn pairwise_cosine_backward_matches_finite_differences() {
    // The GPU reads c = 1 − Dm from its own f32 forward (an absolute error of a few u in c),
    // then sums ≤ 4 terms through norms and divisions: ~40u ≈ 2.4e-6 of the terms, which
    // are at most a few times the largest entry: 2e-5.
    check_pairwise_fd(PairwiseMetric::Cosine, 2e-5);
}

// ---- shapes -----------------------------------------------------------------------------------

#[test]
fn launchers_reject_mismatched_shapes() {
    let a = zeros(&[4, 5]);
    let err = distance::forward(
        gpu(),
        Distance::Euclidean,
        &a,
        &zeros(&[4, 6]),
        &zeros(&[4]),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("euclidean_forward: b must be a F32 tensor of shape [4, 5]"),
        "{err}"
    );
    let err = distance::backward(
        gpu(),
        Distance::Cosine,
        &a,
        &zeros(&[4, 5]),
        &zeros(&[4]),
        &zeros(&[4]),
        &zeros(&[4, 5]),
        &zeros(&[5, 4]),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("cosine_backward: db must be a F32 tensor of shape [4, 5]"),
        "{err}"
    );
    let err = distance::pairwise_forward(
        gpu(),
        PairwiseMetric::Euclidean,
        &a,
        &zeros(&[7, 5]),
        &zeros(&[7, 4]),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("pairwise_euclidean_forward: dm must be a F32 tensor of shape [4, 7]"),
        "{err}"
    );
    let err = distance::pairwise_backward(
        gpu(),
        PairwiseMetric::Cosine,
        &a,
        &zeros(&[7, 3]),
        &zeros(&[4, 7]),
        &zeros(&[4, 7]),
        &zeros(&[4, 5]),
        &zeros(&[7, 5]),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("pairwise_cosine_backward: b must be a F32 tensor of shape [7, 5]"),
        "{err}"
    );
    let err =
        distance::abs_diff_forward(gpu(), &zeros(&[4]), &zeros(&[4]), &zeros(&[4])).unwrap_err();
    assert!(
        err.to_string()
            .contains("abs_diff_forward: a must be a non-empty f32 tensor of rank 2"),
        "{err}"
    );
    // Every kind accepts matching shapes (the failures above are about shape, not kind).
    for kind in KINDS {
        distance::forward(gpu(), kind, &a, &zeros(&[4, 5]), &zeros(&[4])).unwrap();
    }
}
