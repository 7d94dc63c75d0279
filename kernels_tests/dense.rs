//! Dense layers (`shaders/dense.wgsl`): every entry against `cpu::dense` at each point of a
//! matrix of kernel path × element type × shape, and the gradients against f64 finite
//! differences.
//!
//! On f16 tensors the inputs are rounded to f16 (the reference reads exactly those values),
//! y and dx are stored as f16, dw and db as f32. Every product of two f16 values is exact in
//! f32, so the kernel's f32 sums differ from the reference's (run in f32 on the same f16
//! values) only by summation order, as in f32: the bounds are the f32 ones, plus the final
//! f16 rounding where the output is f16 (`stored_bound`).

use crate::common::*;
use siamese_gpu::cpu::dense as cpu;
use siamese_gpu::ops::dense;
use siamese_gpu::{DType, Kernel, Result, Tensor};

/// The dense layer's kernel paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// dense_forward, dense_grad_input, dense_grad_weight and dense_grad_bias on storage
    /// buffers.
    Storage,
    /// The operands packed as texels (pack_rows4), then dense_matmul_tex for each of the
    /// three products. It has no bias gradient.
    Texels,
}
use Path::{Storage, Texels};

const PATHS: [Path; 2] = [Storage, Texels];

/// (N, K, M): batch 1, sizes off the 4×4 register block, the 4-wide texel and the 8×8
/// workgroup and block, one larger than a workgroup in both output dimensions, the reference
/// network's dense layer (1600 → 128) at batch 1, 8 and 256, and N = 200 (several rounds of
/// dense_grad_bias's 64-wide reduction).
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 7, 5),
    (3, 17, 9),
    (13, 33, 70),
    (65, 31, 67),
    (1, 1600, 128),
    (8, 1600, 128),
    (256, 1600, 128),
    (7, 33, 5),
    (200, 1, 3),
];

/// Small shapes for finite differences (one forward per perturbed input).
const FD_SHAPES: &[(usize, usize, usize)] = &[(1, 3, 2), (3, 5, 4), (5, 2, 7)];

struct Case {
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    dy: Vec<f32>,
}

/// Random inputs in [-1, 1), as tensors of `dtype` hold them (rounded to f16 for f16).
fn case((n, k, m): (usize, usize, usize), seed: u64, dtype: DType) -> Case {
    let mut r = rng(seed);
    let mut draw = |len| as_dtype(&uniform(&mut r, len, -1.0, 1.0), dtype);
    Case {
        x: draw(n * k),
        w: draw(m * k),
        b: draw(m),
        dy: draw(n * m),
    }
}

// ---- dispatch: each path's launchers ----

/// The texel launchers end in dense_matmul_tex.
fn on_texels(kernel: Result<Kernel>) -> Result<Kernel> {
    if let Ok(k) = &kernel {
        assert_eq!(k.dispatches().last().unwrap().entry(), "dense_matmul_tex");
    }
    kernel
}

fn launch_forward(path: Path, x: &Tensor, w: &Tensor, b: &Tensor, y: &Tensor) -> Result<Kernel> {
    match path {
        Storage => dense::forward(gpu(), x, w, b, y),
        Texels => on_texels(dense::forward_packed(gpu(), x, w, b, y)),
    }
}

fn launch_grad_input(path: Path, dy: &Tensor, w: &Tensor, dx: &Tensor) -> Result<Kernel> {
    match path {
        Storage => dense::grad_input(gpu(), dy, w, dx),
        Texels => on_texels(dense::grad_input_packed(gpu(), dy, w, dx)),
    }
}

fn launch_grad_weight(path: Path, dy: &Tensor, x: &Tensor, dw: &Tensor) -> Result<Kernel> {
    match path {
        Storage => dense::grad_weight(gpu(), dy, x, dw),
        Texels => on_texels(dense::grad_weight_packed(gpu(), dy, x, dw)),
    }
}

// ---- against the CPU ----

#[test]
fn dense_forward_matches_cpu() {
    for p in matrix(&PATHS, &DTYPES, |_| SHAPES) {
        let ((n, k, m), dtype) = (p.shape, p.dtype);
        let c = case(p.shape, p.seed, dtype);
        let y = zeros_as(&[n, m], dtype);
        let kernel = launch_forward(
            p.path,
            &upload_as(&c.x, &[n, k], dtype),
            &upload_as(&c.w, &[m, k], dtype),
            &upload_as(&c.b, &[m], dtype),
            &y,
        )
        .unwrap();
        let got = run_and_read_floats(&kernel, &y);
        let want = cpu::dense_forward(&c.x, &c.w, &c.b, n, k, m);
        // K products plus the bias, summed in another order (the texels' padding adds exact
        // zeros): 2·γ_(K+1)·Σ|terms|; then stored as y's type.
        let magnitude = cpu::dense_forward(&abs(&c.x), &abs(&c.w), &abs(&c.b), n, k, m);
        assert_within(
            &format!("dense_forward {p}"),
            &got,
            &want,
            &stored_bound(linear_bound(k + 1, &magnitude), &want, dtype),
        );
    }
}

#[test]
fn dense_grad_input_matches_cpu() {
    for p in matrix(&PATHS, &DTYPES, |_| SHAPES) {
        let ((n, k, m), dtype) = (p.shape, p.dtype);
        let c = case(p.shape, 100 + p.seed, dtype);
        let dx = zeros_as(&[n, k], dtype);
        let kernel = launch_grad_input(
            p.path,
            &upload_as(&c.dy, &[n, m], dtype),
            &upload_as(&c.w, &[m, k], dtype),
            &dx,
        )
        .unwrap();
        let got = run_and_read_floats(&kernel, &dx);
        let want = cpu::dense_grad_input(&c.dy, &c.w, n, k, m);
        // M products in another order, then stored as dx's type.
        let magnitude = cpu::dense_grad_input(&abs(&c.dy), &abs(&c.w), n, k, m);
        assert_within(
            &format!("dense_grad_input {p}"),
            &got,
            &want,
            &stored_bound(linear_bound(m, &magnitude), &want, dtype),
        );
    }
}

#[test]
fn dense_grad_weight_matches_cpu() {
    for p in matrix(&PATHS, &DTYPES, |_| SHAPES) {
        let ((n, k, m), dtype) = (p.shape, p.dtype);
        let c = case(p.shape, 200 + p.seed, dtype);
        let dw = zeros(&[m, k]);
        let kernel = launch_grad_weight(
            p.path,
            &upload_as(&c.dy, &[n, m], dtype),
            &upload_as(&c.x, &[n, k], dtype),
            &dw,
        )
        .unwrap();
        let got = run_and_read(&kernel, &dw);
        let want = cpu::dense_grad_weight(&c.dy, &c.x, n, k, m);
        // N products in another order; dw is f32 whatever the operands.
        let magnitude = cpu::dense_grad_weight(&abs(&c.dy), &abs(&c.x), n, k, m);
        assert_within(
            &format!("dense_grad_weight {p}"),
            &got,
            &want,
            &linear_bound(n, &magnitude),
        );
    }
}

#[test]
fn dense_grad_bias_matches_cpu() {
    // The storage path's alone: the texel path has no bias gradient.
    for p in matrix(&[Storage], &DTYPES, |_| SHAPES) {
        let ((n, _, m), dtype) = (p.shape, p.dtype);
        let c = case(p.shape, 300 + p.seed, dtype);
        let db = zeros(&[m]);
        let kernel = dense::grad_bias(gpu(), &upload_as(&c.dy, &[n, m], dtype), &db).unwrap();
        let got = run_and_read(&kernel, &db);
        let want = cpu::dense_grad_bias(&c.dy, n, m);
        // N terms in another order (f32 tree vs sequential); db is f32.
        let magnitude = cpu::dense_grad_bias(&abs(&c.dy), n, m);
        assert_within(
            &format!("dense_grad_bias {p}"),
            &got,
            &want,
            &linear_bound(n, &magnitude),
        );
    }
}

// ---- against finite differences ----

// GPU against finite differences: f32 sums of at most 7 products of values in [-1, 1];
// 1e-5 of the largest entry is ~100 ulps, well above rounding and well below any
// indexing mistake.
const GPU_FD_RTOL: f64 = 1e-5;

/// Finite differences of L = Σ dy ⊙ dense_forward(x, w, b) (f64 reference forward), whose
/// gradients are exactly what the backward entries compute for upstream dy, with respect to
/// the input `of` picks: 0 for x, 1 for w, 2 for b.
fn fd_of((n, k, m): (usize, usize, usize), c: &Case, of: usize) -> Vec<f64> {
    let inputs = [to_f64(&c.x), to_f64(&c.w), to_f64(&c.b)];
    let dy = to_f64(&c.dy);
    let loss = |u: &[f64]| {
        let mut v = inputs.clone();
        v[of] = u.to_vec();
        dot(&dy, &cpu::dense_forward(&v[0], &v[1], &v[2], n, k, m))
    };
    finite_difference(loss, &inputs[of], FD_STEP)
}

#[test]
fn dense_grad_input_matches_finite_differences() {
    for p in matrix(&PATHS, &F32_ONLY, |_| FD_SHAPES) {
        let (n, k, m) = p.shape;
        let c = case(p.shape, 400 + p.seed, DType::F32);
        let fd_x = fd_of(p.shape, &c, 0);
        assert_matches_fd(
            &format!("cpu dense_grad_input {p}"),
            &cpu::dense_grad_input(&to_f64(&c.dy), &to_f64(&c.w), n, k, m),
            &fd_x,
        );
        let dx = zeros(&[n, k]);
        let kernel =
            launch_grad_input(p.path, &upload(&c.dy, &[n, m]), &upload(&c.w, &[m, k]), &dx)
                .unwrap();
        assert_gpu_matches_fd(
            &format!("dense_grad_input {p}"),
            &run_and_read(&kernel, &dx),
            &fd_x,
            GPU_FD_RTOL,
        );
    }
}

#[test]
fn dense_grad_weight_matches_finite_differences() {
    for p in matrix(&PATHS, &F32_ONLY, |_| FD_SHAPES) {
        let (n, k, m) = p.shape;
        let c = case(p.shape, 500 + p.seed, DType::F32);
        let fd_w = fd_of(p.shape, &c, 1);
        assert_matches_fd(
            &format!("cpu dense_grad_weight {p}"),
            &cpu::dense_grad_weight(&to_f64(&c.dy), &to_f64(&c.x), n, k, m),
            &fd_w,
        );
        let dw = zeros(&[m, k]);
        let kernel =
            launch_grad_weight(p.path, &upload(&c.dy, &[n, m]), &upload(&c.x, &[n, k]), &dw)
                .unwrap();
        assert_gpu_matches_fd(
            &format!("dense_grad_weight {p}"),
            &run_and_read(&kernel, &dw),
            &fd_w,
            GPU_FD_RTOL,
        );
    }
}

#[test]
fn dense_grad_bias_matches_finite_differences() {
    for p in matrix(&[Storage], &F32_ONLY, |_| FD_SHAPES) {
        let (n, _, m) = p.shape;
        let c = case(p.shape, 600 + p.seed, DType::F32);
        let fd_b = fd_of(p.shape, &c, 2);
        assert_matches_fd(
            &format!("cpu dense_grad_bias {p}"),
            &cpu::dense_grad_bias(&to_f64(&c.dy), n, m),
            &fd_b,
        );
        let db = zeros(&[m]);
        let kernel = dense::grad_bias(gpu(), &upload(&c.dy, &[n, m]), &db).unwrap();
        assert_gpu_matches_fd(
            &format!("dense_grad_bias {p}"),
            &run_and_read(&kernel, &db),
            &fd_b,
            GPU_FD_RTOL,
        );
    }
}

// ---- refusals ----

#[test]
fn dense_forward_rejects_mismatched_shapes() {
    let x = zeros(&[2, 3]);
    let w = zeros(&[4, 5]);
    let err = dense::forward(gpu(), &x, &w, &zeros(&[4]), &zeros(&[2, 4])).unwrap_err();
    assert!(
        err.to_string()
            .contains("w must be a F32 tensor of shape [4, 3]"),
        "{err}"
    );
}

#[test]
fn dense_rejects_mixed_element_types() {
    // Creating f16 tensors needs no f16 shader support: every check fails before a launch.
    let h = |shape: &[usize]| zeros_as(shape, DType::F16);
    let expect_err = |what: &str, result: Result<Kernel>, msg: &str| {
        let err = result.err().unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(err.to_string().contains(msg), "{what}: {err}");
    };
    for path in PATHS {
        // The operands and y / dx share x's (dy's) type ...
        let what = format!("forward {path:?}");
        expect_err(
            &what,
            launch_forward(path, &h(&[2, 3]), &zeros(&[4, 3]), &h(&[4]), &h(&[2, 4])),
            "w must be a F16 tensor of shape [4, 3]",
        );
        expect_err(
            &what,
            launch_forward(path, &h(&[2, 3]), &h(&[4, 3]), &zeros(&[4]), &h(&[2, 4])),
            "b must be a F16 tensor of shape [4]",
        );
        expect_err(
            &what,
            launch_forward(path, &h(&[2, 3]), &h(&[4, 3]), &h(&[4]), &zeros(&[2, 4])),
            "y must be a F16 tensor of shape [2, 4]",
        );
        expect_err(
            &format!("grad_input {path:?}"),
            launch_grad_input(path, &h(&[2, 4]), &h(&[4, 3]), &zeros(&[2, 3])),
            "dx must be a F16 tensor of shape [2, 3]",
        );
        // ... while dw and db are f32 whatever the operands.
        let what = format!("grad_weight {path:?}");
        expect_err(
            &what,
            launch_grad_weight(path, &h(&[2, 4]), &zeros(&[2, 3]), &zeros(&[4, 3])),
            "x must be a F16 tensor of shape [2, 3]",
        );
        expect_err(
            &what,
            launch_grad_weight(path, &h(&[2, 4]), &h(&[2, 3]), &h(&[4, 3])),
            "dw must be a F32 tensor of shape [4, 3]",
        );
    }
    expect_err(
        "grad_bias",
        dense::grad_bias(gpu(), &h(&[2, 4]), &h(&[4])),
        "db must be a F32 tensor of shape [4]",
    );
}
