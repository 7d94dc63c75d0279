//! `shaders/dense.wgsl` against `cpu::dense`, and its gradients against finite differences.
//!
//! The comparisons with the CPU run every entry in f32 and, where the adapter has f16, in
//! f16: x, w, b and dy rounded to f16 (the reference reads exactly those values), y and dx
//! stored as f16, dw and db as f32.

use crate::common::*;
use siamese_gpu::DType;
use siamese_gpu::cpu::dense as cpu;
use siamese_gpu::ops::dense;

/// (N, K, M): batch 1, sizes off the 4×4 register block and the 8×8 workgroup, one larger
/// than a workgroup in both output dimensions, and the reference network's dense layer
/// (1600 → 128) at batch 1, 8 and 256.
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
];

/// Small shapes for finite differences (one forward per perturbed input).
const FD_SHAPES: &[(usize, usize, usize)] = &[(1, 3, 2), (3, 5, 4), (5, 2, 7)];

struct Case {
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    dy: Vec<f32>,
}

fn case(n: usize, k: usize, m: usize, seed: u64) -> Case {
    let mut r = rng(seed);
    Case {
        x: uniform(&mut r, n * k, -1.0, 1.0),
        w: uniform(&mut r, m * k, -1.0, 1.0),
        b: uniform(&mut r, m, -1.0, 1.0),
        dy: uniform(&mut r, n * m, -1.0, 1.0),
    }
}

/// `case` with every input as a tensor of `dtype` holds it (rounded to f16 for f16).
fn case_as(n: usize, k: usize, m: usize, seed: u64, dtype: DType) -> Case {
    let c = case(n, k, m, seed);
    Case {
        x: as_dtype(&c.x, dtype),
        w: as_dtype(&c.w, dtype),
        b: as_dtype(&c.b, dtype),
        dy: as_dtype(&c.dy, dtype),
    }
}

// In f16 every product of two f16 values is exact in f32, so the kernel's f32 sums differ
// from the reference's (run in f32 on the same f16 values) only by summation order, as in
// f32: the bounds are the f32 ones, plus the final f16 rounding where the output is f16.

#[test]
fn dense_forward_matches_cpu() {
    for dtype in float_dtypes() {
        for (seed, &(n, k, m)) in SHAPES.iter().enumerate() {
            let c = case_as(n, k, m, seed as u64, dtype);
            let y = zeros_as(&[n, m], dtype);
            let kernel = dense::forward(
                gpu(),
                &upload_as(&c.x, &[n, k], dtype),
                &upload_as(&c.w, &[m, k], dtype),
                &upload_as(&c.b, &[m], dtype),
                &y,
            )
            .unwrap();
            let got = run_and_read_floats(&kernel, &y);
            let want = cpu::dense_forward(&c.x, &c.w, &c.b, n, k, m);
            // K products plus the bias, summed in another order: 2·γ_(K+1)·Σ|terms|; then
            // stored as y's type.
            let magnitude = cpu::dense_forward(&abs(&c.x), &abs(&c.w), &abs(&c.b), n, k, m);
            assert_within(
                &format!("dense_forward {dtype:?} {n}x{k}x{m}"),
                &got,
                &want,
                &stored_bound(linear_bound(k + 1, &magnitude), &want, dtype),
            );
        }
    }
}

#[test]
fn dense_grad_input_matches_cpu() {
    for dtype in float_dtypes() {
        for (seed, &(n, k, m)) in SHAPES.iter().enumerate() {
            let c = case_as(n, k, m, seed as u64, dtype);
            let dx = zeros_as(&[n, k], dtype);
            let kernel = dense::grad_input(
                gpu(),
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
                &format!("dense_grad_input {dtype:?} {n}x{k}x{m}"),
                &got,
                &want,
                &stored_bound(linear_bound(m, &magnitude), &want, dtype),
            );
        }
    }
}

#[test]
fn dense_grad_weight_matches_cpu() {
    for dtype in float_dtypes() {
        for (seed, &(n, k, m)) in SHAPES.iter().enumerate() {
            let c = case_as(n, k, m, seed as u64, dtype);
            let dw = zeros(&[m, k]);
            let kernel = dense::grad_weight(
                gpu(),
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
                &format!("dense_grad_weight {dtype:?} {n}x{k}x{m}"),
                &got,
                &want,
                &linear_bound(n, &magnitude),
            );
        }
    }
}

#[test]
fn dense_grad_bias_matches_cpu() {
    for dtype in float_dtypes() {
        // Add N = 200 (several rounds of the 64-wide reduction) to the shared shapes.
        for (seed, &(n, k, m)) in SHAPES.iter().chain(&[(200, 1, 3)]).enumerate() {
            let c = case_as(n, k, m, seed as u64, dtype);
            let db = zeros(&[m]);
            let kernel = dense::grad_bias(gpu(), &upload_as(&c.dy, &[n, m], dtype), &db).unwrap();
            let got = run_and_read(&kernel, &db);
            let want = cpu::dense_grad_bias(&c.dy, n, m);
            // N terms in another order (f32 tree vs sequential); db is f32.
            let magnitude = cpu::dense_grad_bias(&abs(&c.dy), n, m);
            assert_within(
                &format!("dense_grad_bias {dtype:?} {n}x{m}"),
                &got,
                &want,
                &linear_bound(n, &magnitude),
            );
        }
    }
}

/// A small case with the finite-difference gradients of L = Σ dy ⊙ dense_forward(x, w, b)
/// (f64 reference forward). Its gradients are exactly what the backward entries compute
/// for upstream dy.
struct FdCase {
    shape: (usize, usize, usize),
    case: Case,
    fd_x: Vec<f64>,
    fd_w: Vec<f64>,
    fd_b: Vec<f64>,
}

fn fd_cases() -> Vec<FdCase> {
    FD_SHAPES
        .iter()
        .enumerate()
        .map(|(seed, &(n, k, m))| {
            let case = case(n, k, m, 100 + seed as u64);
            let (x, w, b, dy) = (
                to_f64(&case.x),
                to_f64(&case.w),
                to_f64(&case.b),
                to_f64(&case.dy),
            );
            let loss =
                |x: &[f64], w: &[f64], b: &[f64]| dot(&dy, &cpu::dense_forward(x, w, b, n, k, m));
            FdCase {
                shape: (n, k, m),
                fd_x: finite_difference(|v| loss(v, &w, &b), &x, FD_STEP),
                fd_w: finite_difference(|v| loss(&x, v, &b), &w, FD_STEP),
                fd_b: finite_difference(|v| loss(&x, &w, v), &b, FD_STEP),
                case,
            }
        })
        .collect()
}

// GPU against finite differences: f32 sums of at most 7 products of values in [-1, 1];
// 1e-5 of the largest entry is ~100 ulps, well above rounding and well below any
// indexing mistake.
const GPU_FD_RTOL: f64 = 1e-5;

#[test]
fn dense_grad_input_matches_finite_differences() {
    for FdCase {
        shape: (n, k, m),
        case: c,
        fd_x,
        ..
    } in fd_cases()
    {
        assert_matches_fd(
            "cpu dense_grad_input",
            &cpu::dense_grad_input(&to_f64(&c.dy), &to_f64(&c.w), n, k, m),
            &fd_x,
        );
        let dx = zeros(&[n, k]);
        let kernel =
            dense::grad_input(gpu(), &upload(&c.dy, &[n, m]), &upload(&c.w, &[m, k]), &dx).unwrap();
        assert_gpu_matches_fd(
            "dense_grad_input",
            &run_and_read(&kernel, &dx),
            &fd_x,
            GPU_FD_RTOL,
        );
    }
}

#[test]
fn dense_grad_weight_matches_finite_differences() {
    for FdCase {
        shape: (n, k, m),
        case: c,
        fd_w,
        ..
    } in fd_cases()
    {
        assert_matches_fd(
            "cpu dense_grad_weight",
            &cpu::dense_grad_weight(&to_f64(&c.dy), &to_f64(&c.x), n, k, m),
            &fd_w,
        );
        let dw = zeros(&[m, k]);
        let kernel =
            dense::grad_weight(gpu(), &upload(&c.dy, &[n, m]), &upload(&c.x, &[n, k]), &dw)
                .unwrap();
        assert_gpu_matches_fd(
            "dense_grad_weight",
            &run_and_read(&kernel, &dw),
            &fd_w,
            GPU_FD_RTOL,
        );
    }
}

#[test]
fn dense_grad_bias_matches_finite_differences() {
    for FdCase {
        shape: (n, _, m),
        case: c,
        fd_b,
        ..
    } in fd_cases()
    {
        assert_matches_fd(
            "cpu dense_grad_bias",
            &cpu::dense_grad_bias(&to_f64(&c.dy), n, m),
            &fd_b,
        );
        let db = zeros(&[m]);
        let kernel = dense::grad_bias(gpu(), &upload(&c.dy, &[n, m]), &db).unwrap();
        assert_gpu_matches_fd(
            "dense_grad_bias",
            &run_and_read(&kernel, &db),
            &fd_b,
            GPU_FD_RTOL,
        );
    }
}

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
    let expect_err = |what: &str, result: siamese_gpu::Result<siamese_gpu::Kernel>, msg: &str| {
        let err = result.err().unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(err.to_string().contains(msg), "{what}: {err}");
    };
    // The operands and y / dx share x's (dy's) type ...
    for (what, packed) in [("forward", false), ("forward_packed", true)] {
        let launch = if packed {
            dense::forward_packed
        } else {
            dense::forward
        };
        expect_err(
            what,
            launch(gpu(), &h(&[2, 3]), &zeros(&[4, 3]), &h(&[4]), &h(&[2, 4])),
            "w must be a F16 tensor of shape [4, 3]",
        );
        expect_err(
            what,
            launch(gpu(), &h(&[2, 3]), &h(&[4, 3]), &zeros(&[4]), &h(&[2, 4])),
            "b must be a F16 tensor of shape [4]",
        );
        expect_err(
            what,
            launch(gpu(), &h(&[2, 3]), &h(&[4, 3]), &h(&[4]), &zeros(&[2, 4])),
            "y must be a F16 tensor of shape [2, 4]",
        );
    }
    for (what, packed) in [("grad_input", false), ("grad_input_packed", true)] {
        let launch = if packed {
            dense::grad_input_packed
        } else {
            dense::grad_input
        };
        expect_err(
            what,
            launch(gpu(), &h(&[2, 4]), &h(&[4, 3]), &zeros(&[2, 3])),
            "dx must be a F16 tensor of shape [2, 3]",
        );
    }
    // ... while dw and db are f32 whatever the operands.
    for (what, packed) in [("grad_weight", false), ("grad_weight_packed", true)] {
        let launch = if packed {
            dense::grad_weight_packed
        } else {
            dense::grad_weight
        };
        expect_err(
            what,
            launch(gpu(), &h(&[2, 4]), &zeros(&[2, 3]), &zeros(&[4, 3])),
            "x must be a F16 tensor of shape [2, 3]",
        );
        expect_err(
            what,
            launch(gpu(), &h(&[2, 4]), &h(&[2, 3]), &h(&[4, 3])),
            "dw must be a F32 tensor of shape [4, 3]",
        );
    }
    expect_err(
        "grad_bias",
        dense::grad_bias(gpu(), &h(&[2, 4]), &h(&[4])),
        "db must be a F32 tensor of shape [4]",
    );
}

// ---- the texel path: dense_matmul_tex over packed operands ----

/// The three products of the layer through dense_matmul_tex, on tensors of `dtype`:
/// (forward, grad_input, grad_weight) read back (y and dx of `dtype`, dw f32).
fn tex_products(n: usize, k: usize, m: usize, c: &Case, dtype: DType) -> [Vec<f32>; 3] {
    let (x, w, dy) = (
        upload_as(&c.x, &[n, k], dtype),
        upload_as(&c.w, &[m, k], dtype),
        upload_as(&c.dy, &[n, m], dtype),
    );
    let (y, dx, dw) = (
        zeros_as(&[n, m], dtype),
        zeros_as(&[n, k], dtype),
        zeros(&[m, k]),
    );
    let b = upload_as(&c.b, &[m], dtype);
    let forward = dense::forward_packed(gpu(), &x, &w, &b, &y).unwrap();
    let grad_input = dense::grad_input_packed(gpu(), &dy, &w, &dx).unwrap();
    let grad_weight = dense::grad_weight_packed(gpu(), &dy, &x, &dw).unwrap();
    for k in [&forward, &grad_input, &grad_weight] {
        assert_eq!(k.dispatches().last().unwrap().entry(), "dense_matmul_tex");
    }
    gpu().run(&[&forward, &grad_input, &grad_weight]);
    [y, dx, dw].map(|t| gpu().read_floats(&t).unwrap())
}

#[test]
fn dense_matmul_tex_matches_cpu() {
    // The shared shapes (depths off the 4-wide texel, outputs off the 8×8 block; the
    // reference layer at batch 1, 8 and 256), in f32 and, from f16 tensors through f16
    // texels, in f16.
    for dtype in float_dtypes() {
        for (seed, &(n, k, m)) in SHAPES.iter().enumerate() {
            let c = case_as(n, k, m, 100 + seed as u64, dtype);
            let [y, dx, dw] = tex_products(n, k, m, &c, dtype);
            // Linear bounds as for the storage entries above (padding adds exact zeros; f16
            // texels hold the f16 values exactly), with y and dx stored as `dtype`.
            let what = |entry: &str| format!("dense_matmul_tex {entry} {dtype:?} {n}x{k}x{m}");
            let want = cpu::dense_forward(&c.x, &c.w, &c.b, n, k, m);
            let mag = cpu::dense_forward(&abs(&c.x), &abs(&c.w), &abs(&c.b), n, k, m);
            let bound = stored_bound(linear_bound(k + 1, &mag), &want, dtype);
            assert_within(&what("forward"), &y, &want, &bound);
            let want = cpu::dense_grad_input(&c.dy, &c.w, n, k, m);
            let mag = cpu::dense_grad_input(&abs(&c.dy), &abs(&c.w), n, k, m);
            let bound = stored_bound(linear_bound(m, &mag), &want, dtype);
            assert_within(&what("grad_input"), &dx, &want, &bound);
            let want = cpu::dense_grad_weight(&c.dy, &c.x, n, k, m);
            let mag = cpu::dense_grad_weight(&abs(&c.dy), &abs(&c.x), n, k, m);
            assert_within(&what("grad_weight"), &dw, &want, &linear_bound(n, &mag));
        }
    }
}

#[test]
fn dense_matmul_tex_gradients_match_finite_differences() {
    for (seed, &(n, k, m)) in FD_SHAPES.iter().enumerate() {
        let c = case(n, k, m, 700 + seed as u64);
        let (x, w, b, dy) = (to_f64(&c.x), to_f64(&c.w), to_f64(&c.b), to_f64(&c.dy));
        let loss = |x: &[f64], w: &[f64]| dot(&dy, &cpu::dense_forward(x, w, &b, n, k, m));
        let [_, dx, dw] = tex_products(n, k, m, &c, DType::F32);
        assert_gpu_matches_fd(
            "dense_matmul_tex grad_input",
            &dx,
            &finite_difference(|v| loss(v, &w), &x, FD_STEP),
            GPU_FD_RTOL,
        );
        assert_gpu_matches_fd(
            "dense_matmul_tex grad_weight",
            &dw,
            &finite_difference(|v| loss(&x, v), &w, FD_STEP),
            GPU_FD_RTOL,
        );
    }
}
