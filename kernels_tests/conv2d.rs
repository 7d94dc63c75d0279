//! `shaders/conv2d.wgsl` against `cpu::conv2d`, and its gradients against finite differences;
//! every entry also on f16 tensors (mixed precision), against the reference on the f16 values.

use crate::common::*;
use siamese_gpu::DType::F16;
use siamese_gpu::cpu::conv2d::{self as cpu, Conv2dGeometry};
use siamese_gpu::ops::{conv2d, pack};
use siamese_gpu::{Kernel, Tensor, Texels};

#[allow(clippy::too_many_arguments)] // one argument per field of the geometry
const fn geom(
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
) -> Conv2dGeometry {
    Conv2dGeometry {
        n,
        c,
        h,
        w,
        o,
        kh,
        kw,
        stride,
        pad,
    }
}

/// Batch 1, channel and pixel counts off the 4×4 register block and the 16×4 workgroup,
/// stride 2 and 3, padding up to 2, non-square and 1×1 kernels, a kernel as large as the
/// padded input, and the reference network's two layers (1→32 5×5 on 28×28; 32→64 3×3 on
/// the pooled 12×12).
const SHAPES: &[Conv2dGeometry] = &[
    geom(1, 1, 1, 1, 1, 1, 1, 1, 0),
    geom(1, 1, 28, 28, 32, 5, 5, 1, 0),
    geom(2, 32, 12, 12, 64, 3, 3, 1, 0),
    geom(3, 3, 7, 9, 5, 3, 3, 2, 1),
    geom(2, 5, 8, 6, 7, 4, 2, 3, 2),
    geom(1, 2, 5, 5, 3, 5, 5, 1, 2),
    geom(4, 6, 11, 13, 9, 1, 1, 1, 0),
];

/// Small geometries for finite differences, with stride and padding.
const FD_SHAPES: &[Conv2dGeometry] = &[
    geom(1, 2, 5, 4, 3, 3, 3, 1, 1),
    geom(2, 1, 6, 6, 2, 3, 2, 2, 1),
    geom(1, 2, 4, 5, 2, 2, 3, 3, 2),
];

struct Case {
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    dy: Vec<f32>,
}

fn case(g: &Conv2dGeometry, seed: u64) -> Case {
    let mut r = rng(seed);
    let len = |s: [usize; 4]| s.iter().product();
    Case {
        x: uniform(&mut r, len(g.input_shape()), -1.0, 1.0),
        w: uniform(&mut r, len(g.weight_shape()), -1.0, 1.0),
        b: uniform(&mut r, g.o, -1.0, 1.0),
        dy: uniform(&mut r, len(g.output_shape()), -1.0, 1.0),
    }
}

#[test]
fn conv2d_forward_matches_cpu() {
    for (seed, g) in SHAPES.iter().enumerate() {
        let c = case(g, seed as u64);
        let y = zeros(&g.output_shape());
        let kernel = conv2d::forward(
            gpu(),
            &upload(&c.x, &g.input_shape()),
            &upload(&c.w, &g.weight_shape()),
            &upload(&c.b, &[g.o]),
            &y,
            g.stride,
            g.pad,
        )
        .unwrap();
        let got = run_and_read(&kernel, &y);
        let want = cpu::conv2d_forward(&c.x, &c.w, &c.b, g);
        // C·KH·KW products plus the bias, in another order: 2·γ·Σ|terms| (Σ|terms| is the
        // reference run on |x|, |w|, |b|).
        let magnitude = cpu::conv2d_forward(&abs(&c.x), &abs(&c.w), &abs(&c.b), g);
        assert_within(
            &format!("conv2d_forward {g:?}"),
            &got,
            &want,
            &linear_bound(g.c * g.kh * g.kw + 1, &magnitude),
        );
    }
}

#[test]
fn conv2d_grad_input_matches_cpu() {
    for (seed, g) in SHAPES.iter().enumerate() {
        let c = case(g, seed as u64);
        let dx = zeros(&g.input_shape());
        let kernel = conv2d::grad_input(
            gpu(),
            &upload(&c.dy, &g.output_shape()),
            &upload(&c.w, &g.weight_shape()),
            &dx,
            g.stride,
            g.pad,
        )
        .unwrap();
        let got = run_and_read(&kernel, &dx);
        let want = cpu::conv2d_grad_input(&c.dy, &c.w, g);
        // Each dx element sums at most O·KH·KW products.
        let magnitude = cpu::conv2d_grad_input(&abs(&c.dy), &abs(&c.w), g);
        assert_within(
            &format!("conv2d_grad_input {g:?}"),
            &got,
            &want,
            &linear_bound(g.o * g.kh * g.kw, &magnitude),
        );
    }
}

fn check_grad_weight(g: &Conv2dGeometry, c: &Case, splits: Option<usize>) {
    let dw = zeros(&g.weight_shape());
    let (dy, x) = (
        upload(&c.dy, &g.output_shape()),
        upload(&c.x, &g.input_shape()),
    );
    let kernel = match splits {
        Some(s) => conv2d::grad_weight_split(gpu(), &dy, &x, &dw, g.stride, g.pad, s),
        None => conv2d::grad_weight(gpu(), &dy, &x, &dw, g.stride, g.pad),
    }
    .unwrap();
    let got = run_and_read(&kernel, &dw);
    let want = cpu::conv2d_grad_weight(&c.dy, &c.x, g);
    // Each dw element sums N·OH·OW products (split or not, the bound covers any order).
    let magnitude = cpu::conv2d_grad_weight(&abs(&c.dy), &abs(&c.x), g);
    let terms = g.n * g.out_h() * g.out_w();
    assert_within(
        &format!("conv2d_grad_weight {g:?} splits {splits:?}"),
        &got,
        &want,
        &linear_bound(terms, &magnitude),
    );
}

#[test]
fn conv2d_grad_weight_matches_cpu() {
    for (seed, g) in SHAPES.iter().enumerate() {
        let c = case(g, seed as u64);
        check_grad_weight(g, &c, None);
        check_grad_weight(g, &c, Some(1));
    }
}

#[test]
fn conv2d_grad_weight_reduce_matches_cpu() {
    // The reduce pass alone, on random partial sums...
    for (seed, &(splits, shape)) in [(1, [1, 1, 1, 1]), (3, [5, 2, 3, 3]), (7, [64, 32, 3, 3])]
        .iter()
        .enumerate()
    {
        let len: usize = shape.iter().product();
        let partial = uniform(&mut rng(seed as u64), splits * len, -1.0, 1.0);
        let dw = zeros(&shape);
        let kernel =
            conv2d::grad_weight_reduce(gpu(), &upload(&partial, &[splits, len]), &dw).unwrap();
        let got = run_and_read(&kernel, &dw);
        let want = cpu::conv2d_grad_weight_reduce(&partial, splits);
        // The same additions in the same order: identical up to FMA-free f32 addition, so
        // exact equality is expected; allow the γ bound anyway for compilers that reassociate.
        let magnitude = cpu::conv2d_grad_weight_reduce(&abs(&partial), splits);
        assert_within(
            &format!("conv2d_grad_weight_reduce {splits}x{len}"),
            &got,
            &want,
            &linear_bound(splits, &magnitude),
        );
    }
    // ...and composed with the split first pass, at split counts that leave a short last split.
    for (seed, g) in SHAPES.iter().enumerate().filter(|(_, g)| g.n > 1) {
        let c = case(g, 50 + seed as u64);
        for splits in 2..=g.n {
            check_grad_weight(g, &c, Some(splits));
        }
    }
}

#[test]
fn conv2d_grad_bias_matches_cpu() {
    for (seed, g) in SHAPES
        .iter()
        .chain(&[geom(3, 1, 30, 30, 2, 3, 3, 1, 0)])
        .enumerate()
    {
        let c = case(g, seed as u64);
        let db = zeros(&[g.o]);
        let kernel = conv2d::grad_bias(gpu(), &upload(&c.dy, &g.output_shape()), &db).unwrap();
        let got = run_and_read(&kernel, &db);
        let plane = g.out_h() * g.out_w();
        let want = cpu::conv2d_grad_bias(&c.dy, g.n, g.o, plane);
        let magnitude = cpu::conv2d_grad_bias(&abs(&c.dy), g.n, g.o, plane);
        assert_within(
            &format!("conv2d_grad_bias {g:?}"),
            &got,
            &want,
            &linear_bound(g.n * plane, &magnitude),
        );
    }
}

/// A small case with the finite-difference gradients of L = Σ dy ⊙ conv2d_forward(x, w, b)
/// (f64 reference forward): what the backward entries compute for upstream dy.
struct FdCase {
    g: Conv2dGeometry,
    case: Case,
    fd_x: Vec<f64>,
    fd_w: Vec<f64>,
    fd_b: Vec<f64>,
}

fn fd_cases() -> Vec<FdCase> {
    FD_SHAPES
        .iter()
        .enumerate()
        .map(|(seed, g)| {
            let case = case(g, 200 + seed as u64);
            let (x, w, b, dy) = (
                to_f64(&case.x),
                to_f64(&case.w),
                to_f64(&case.b),
                to_f64(&case.dy),
            );
            let loss = |x: &[f64], w: &[f64], b: &[f64]| dot(&dy, &cpu::conv2d_forward(x, w, b, g));
            FdCase {
                g: *g,
                fd_x: finite_difference(|v| loss(v, &w, &b), &x, FD_STEP),
                fd_w: finite_difference(|v| loss(&x, v, &b), &w, FD_STEP),
                fd_b: finite_difference(|v| loss(&x, &w, v), &b, FD_STEP),
                case,
            }
        })
        .collect()
}

// GPU against finite differences: f32 sums of at most ~50 products of values in [-1, 1];
// 1e-5 of the largest entry is ~100 ulps, above rounding and far below any indexing or
// padding mistake.
const GPU_FD_RTOL: f64 = 1e-5;

#[test]
fn conv2d_grad_input_matches_finite_differences() {
    for FdCase {
        g, case: c, fd_x, ..
    } in fd_cases()
    {
        assert_matches_fd(
            "cpu conv2d_grad_input",
            &cpu::conv2d_grad_input(&to_f64(&c.dy), &to_f64(&c.w), &g),
            &fd_x,
        );
        let dx = zeros(&g.input_shape());
        let (dy, w) = (
            upload(&c.dy, &g.output_shape()),
            upload(&c.w, &g.weight_shape()),
        );
        let kernel = conv2d::grad_input(gpu(), &dy, &w, &dx, g.stride, g.pad).unwrap();
        assert_gpu_matches_fd(
            "conv2d_grad_input",
            &run_and_read(&kernel, &dx),
            &fd_x,
            GPU_FD_RTOL,
        );
    }
}

#[test]
fn conv2d_grad_weight_matches_finite_differences() {
    for FdCase {
        g, case: c, fd_w, ..
    } in fd_cases()
    {
        assert_matches_fd(
            "cpu conv2d_grad_weight",
            &cpu::conv2d_grad_weight(&to_f64(&c.dy), &to_f64(&c.x), &g),
            &fd_w,
        );
        let (dy, x) = (
            upload(&c.dy, &g.output_shape()),
            upload(&c.x, &g.input_shape()),
        );
        // Unsplit and split into one image per split (the reduce pass included).
        for splits in [1, g.n] {
            let dw = zeros(&g.weight_shape());
            let kernel =
                conv2d::grad_weight_split(gpu(), &dy, &x, &dw, g.stride, g.pad, splits).unwrap();
            assert_gpu_matches_fd(
                "conv2d_grad_weight",
                &run_and_read(&kernel, &dw),
                &fd_w,
                GPU_FD_RTOL,
            );
        }
    }
}

#[test]
fn conv2d_grad_bias_matches_finite_differences() {
    for FdCase {
        g, case: c, fd_b, ..
    } in fd_cases()
    {
        let plane = g.out_h() * g.out_w();
        assert_matches_fd(
            "cpu conv2d_grad_bias",
            &cpu::conv2d_grad_bias(&to_f64(&c.dy), g.n, g.o, plane),
            &fd_b,
        );
        let db = zeros(&[g.o]);
        let kernel = conv2d::grad_bias(gpu(), &upload(&c.dy, &g.output_shape()), &db).unwrap();
        assert_gpu_matches_fd(
            "conv2d_grad_bias",
            &run_and_read(&kernel, &db),
            &fd_b,
            GPU_FD_RTOL,
        );
    }
}

#[test]
fn conv2d_forward_rejects_mismatched_channels() {
    let x = zeros(&[1, 3, 8, 8]);
    let w = zeros(&[4, 2, 3, 3]);
    let err =
        conv2d::forward(gpu(), &x, &w, &zeros(&[4]), &zeros(&[1, 4, 6, 6]), 1, 0).unwrap_err();
    assert!(
        err.to_string()
            .contains("w has 2 input channels but x has 3"),
        "{err}"
    );
    let err = conv2d::forward(
        gpu(),
        &zeros(&[1, 2, 2, 2]),
        &w,
        &zeros(&[4]),
        &zeros(&[1, 4, 1, 1]),
        1,
        0,
    )
    .unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
}

// ---- the texel path (stride 1, square kernels) ----

/// Shapes the texel kernels take: channel counts off the 4-channel texel and the 8-channel
/// block (1, 3, 5, 9, 13), position counts off the 8-position block, padding 0–2, batch 1,
/// and the reference network's two layers. Over padding (and in every grad_input) positions
/// run images innermost and border taps are skipped per block of 16: batches of 16 and 37
/// give blocks of one (oy, ox) and blocks that straddle two.
const TEX_SHAPES: &[Conv2dGeometry] = &[
    geom(1, 1, 1, 1, 1, 1, 1, 1, 0),
    geom(1, 1, 28, 28, 32, 5, 5, 1, 0),
    geom(2, 32, 12, 12, 64, 3, 3, 1, 0),
    geom(3, 3, 7, 9, 5, 3, 3, 1, 1),
    geom(2, 9, 6, 5, 13, 3, 3, 1, 2),
    geom(1, 5, 5, 5, 3, 5, 5, 1, 2),
    geom(4, 6, 11, 13, 9, 1, 1, 1, 0),
    geom(16, 7, 6, 5, 10, 3, 3, 1, 1),
    geom(37, 2, 7, 6, 5, 3, 3, 1, 2),
];

fn tex_forward(g: &Conv2dGeometry, c: &Case) -> (Kernel, Texels, Tensor) {
    let y = zeros(&g.output_shape());
    let (kernel, xt) = conv2d::forward_packed(
        gpu(),
        &upload(&c.x, &g.input_shape()),
        &upload(&c.w, &g.weight_shape()),
        &upload(&c.b, &[g.o]),
        &y,
        g.pad,
    )
    .unwrap();
    (kernel, xt, y)
}

#[test]
fn conv2d_forward_tex_matches_cpu() {
    for (seed, g) in TEX_SHAPES.iter().enumerate() {
        let c = case(g, 300 + seed as u64);
        let (kernel, _, y) = tex_forward(g, &c);
        let got = run_and_read(&kernel, &y);
        // As conv2d_forward: C·KH·KW products and the bias in another order.
        let magnitude = cpu::conv2d_forward(&abs(&c.x), &abs(&c.w), &abs(&c.b), g);
        assert_within(
            &format!("conv2d_forward_tex {g:?}"),
            &got,
            &cpu::conv2d_forward(&c.x, &c.w, &c.b, g),
            &linear_bound(g.c * g.kh * g.kw + 1, &magnitude),
        );
    }
}

/// grad_input on the texel path: conv2d_forward_tex over dy padded by KH − 1 − pad with the
/// weights flipped by pack_conv_weight.
#[test]
fn conv2d_forward_tex_computes_grad_input() {
    for (seed, g) in TEX_SHAPES.iter().enumerate() {
        let c = case(g, 400 + seed as u64);
        let dx = zeros(&g.input_shape());
        let kernel = conv2d::grad_input_packed(
            gpu(),
            &upload(&c.dy, &g.output_shape()),
            &upload(&c.w, &g.weight_shape()),
            &dx,
            g.pad,
        )
        .unwrap();
        let got = run_and_read(&kernel, &dx);
        // At most O·KH·KW products per element (the padded taps add exact zeros).
        let magnitude = cpu::conv2d_grad_input(&abs(&c.dy), &abs(&c.w), g);
        assert_within(
            &format!("conv2d_grad_input (texels) {g:?}"),
            &got,
            &cpu::conv2d_grad_input(&c.dy, &c.w, g),
            &linear_bound(g.o * g.kh * g.kw, &magnitude),
        );
    }
}

/// dw and db through conv2d_grad_weight_tex (db summed from the same dy fetches).
fn tex_grad_weight(g: &Conv2dGeometry, c: &Case) -> (Vec<f32>, Vec<f32>) {
    let (forward, xt, _) = tex_forward(g, c);
    let (dw, db) = (zeros(&g.weight_shape()), zeros(&[g.o]));
    let dy = upload(&c.dy, &g.output_shape());
    let kernel = conv2d::grad_weight_packed(gpu(), &dy, &xt, &dw, Some(&db), g).unwrap();
    gpu().run(&[&forward, &kernel]);
    (gpu().read_f32(&dw).unwrap(), gpu().read_f32(&db).unwrap())
}

#[test]
fn conv2d_grad_weight_tex_matches_cpu() {
    // The shapes split their positions from 1 chunk (the first) to many (the reference
    // layers), so the bias partials are summed from one split and from many.
    for (seed, g) in TEX_SHAPES.iter().enumerate() {
        let c = case(g, 500 + seed as u64);
        let (dw, db) = tex_grad_weight(g, &c);
        let terms = g.n * g.out_h() * g.out_w();
        let magnitude = cpu::conv2d_grad_weight(&abs(&c.dy), &abs(&c.x), g);
        assert_within(
            &format!("conv2d_grad_weight_tex {g:?}"),
            &dw,
            &cpu::conv2d_grad_weight(&c.dy, &c.x, g),
            &linear_bound(terms, &magnitude),
        );
        // db sums N·OH·OW entries of dy.
        let magnitude = cpu::conv2d_grad_bias(&abs(&c.dy), g.n, g.o, g.out_h() * g.out_w());
        assert_within(
            &format!("conv2d_grad_weight_tex bias {g:?}"),
            &db,
            &cpu::conv2d_grad_bias(&c.dy, g.n, g.o, g.out_h() * g.out_w()),
            &linear_bound(terms, &magnitude),
        );
        // Without db the single-split case writes dw directly.
        let (forward, xt, _) = tex_forward(g, &c);
        let dw_only = zeros(&g.weight_shape());
        let kernel = conv2d::grad_weight_packed(
            gpu(),
            &upload(&c.dy, &g.output_shape()),
            &xt,
            &dw_only,
            None,
            g,
        )
        .unwrap();
        gpu().run(&[&forward, &kernel]);
        assert_eq!(
            gpu().read_f32(&dw_only).unwrap(),
            dw,
            "dw with and without db {g:?}"
        );
        // From dy packed with grad_input's border (the one packing both products share):
        // the same products in the same order, so the same bits.
        let dy_pad = g.kh - 1 - g.pad;
        let (pack_dy, dyt) =
            pack::nhwc4(gpu(), &upload(&c.dy, &g.output_shape()), dy_pad, 1).unwrap();
        let (dw_pad, db_pad) = (zeros(&g.weight_shape()), zeros(&[g.o]));
        let kernel =
            conv2d::grad_weight_tex(gpu(), g, &xt, &dyt, dy_pad, &dw_pad, Some(&db_pad)).unwrap();
        gpu().run(&[&forward, &pack_dy, &kernel]);
        assert_eq!(
            gpu().read_f32(&dw_pad).unwrap(),
            dw,
            "dw from padded dy {g:?}"
        );
        assert_eq!(
            gpu().read_f32(&db_pad).unwrap(),
            db,
            "db from padded dy {g:?}"
        );
        // Texels packed with another border are refused.
        let err = conv2d::grad_weight_tex(gpu(), g, &xt, &dyt, dy_pad + 1, &dw_pad, None);
        assert!(err.is_err(), "{g:?}: texels of another border accepted");
    }
}

#[test]
fn conv2d_texel_gradients_match_finite_differences() {
    let shapes = [
        geom(1, 2, 5, 4, 3, 3, 3, 1, 1),
        geom(2, 5, 4, 4, 6, 2, 2, 1, 0),
    ];
    for (seed, g) in shapes.iter().enumerate() {
        let c = case(g, 600 + seed as u64);
        let (x, w, b, dy) = (to_f64(&c.x), to_f64(&c.w), to_f64(&c.b), to_f64(&c.dy));
        let loss = |x: &[f64], w: &[f64]| dot(&dy, &cpu::conv2d_forward(x, w, &b, g));
        let fd_x = finite_difference(|v| loss(v, &w), &x, FD_STEP);
        let fd_w = finite_difference(|v| loss(&x, v), &w, FD_STEP);
        let dx = zeros(&g.input_shape());
        let kernel = conv2d::grad_input_packed(
            gpu(),
            &upload(&c.dy, &g.output_shape()),
            &upload(&c.w, &g.weight_shape()),
            &dx,
            g.pad,
        )
        .unwrap();
        assert_gpu_matches_fd(
            "conv2d_grad_input (texels)",
            &run_and_read(&kernel, &dx),
            &fd_x,
            GPU_FD_RTOL,
        );
        let fd_b = finite_difference(
            |v| dot(&dy, &cpu::conv2d_forward(&x, &w, v, g)),
            &b,
            FD_STEP,
        );
        let (dw, db) = tex_grad_weight(g, &c);
        assert_gpu_matches_fd("conv2d_grad_weight_tex", &dw, &fd_w, GPU_FD_RTOL);
        assert_gpu_matches_fd("conv2d_grad_weight_tex bias", &db, &fd_b, GPU_FD_RTOL);
    }
}

#[test]
fn conv2d_texel_path_refuses_what_it_does_not_cover() {
    assert!(geom(1, 2, 6, 6, 3, 3, 3, 1, 2).texel_path_fits());
    assert!(
        !geom(1, 2, 6, 6, 3, 3, 3, 2, 0).texel_path_fits(),
        "stride 2"
    );
    assert!(
        !geom(1, 2, 6, 6, 3, 3, 2, 1, 0).texel_path_fits(),
        "3x2 kernel"
    );
    assert!(
        !geom(1, 2, 6, 6, 3, 3, 3, 1, 3).texel_path_fits(),
        "padding 3 of a 3x3"
    );
    let g = geom(1, 2, 6, 6, 3, 3, 3, 1, 3);
    let c = case(&g, 0);
    let err = conv2d::grad_input_packed(
        gpu(),
        &upload(&c.dy, &g.output_shape()),
        &upload(&c.w, &g.weight_shape()),
        &zeros(&g.input_shape()),
        g.pad,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("padding 3"), "{err}");
}

// ---- single-channel layers with four images in a texel's lanes ----

/// The reference network's first layer at batch 256 and with padding 2; batches that leave
/// lanes of the last texel empty (1, 5, 7, 9, 3); padding 1–3 (3 past a 3×3 kernel: whole
/// taps of border); output channel counts off the 16-channel block (1, 5, 9, 17, 20); tap
/// counts off the step of four (1, 4, 6, 9, 25: zero-weight taps in the last step) and a
/// non-square kernel.
const IMAGES4_SHAPES: &[Conv2dGeometry] = &[
    geom(256, 1, 28, 28, 32, 5, 5, 1, 0),
    geom(1, 1, 1, 1, 1, 1, 1, 1, 0),
    geom(5, 1, 9, 7, 20, 3, 3, 1, 1),
    geom(7, 1, 6, 6, 5, 5, 5, 1, 2),
    geom(4, 1, 5, 8, 16, 2, 2, 1, 1),
    geom(3, 1, 4, 4, 17, 3, 3, 1, 3),
    geom(6, 1, 7, 5, 9, 2, 3, 1, 0),
    geom(9, 1, 28, 28, 32, 5, 5, 1, 2),
];

/// conv2d_forward_tex_images4 (with pack_images4 and pack_rows4 of the weights) against the
/// CPU, on f32 and on f16 tensors (the reference then takes the f16 values). Bound as
/// conv2d_forward_tex's: KH·KW products and the bias summed in another order (the padded
/// taps add exact zeros), 2·γ·Σ|terms|, plus the f16 store's rounding for f16 y. A kernel
/// reading f16 texels or tensors as f32, or a lane of the wrong image, is far outside.
#[test]
fn conv2d_forward_tex_images4_matches_cpu() {
    for (seed, g) in IMAGES4_SHAPES.iter().enumerate() {
        for dtype in float_dtypes() {
            let c = case(g, 1100 + seed as u64);
            let c = if dtype == F16 { to_f16(&c) } else { c };
            let y = zeros_as(&g.output_shape(), dtype);
            let kernel = conv2d::forward_packed_images4(
                gpu(),
                &upload_as(&c.x, &g.input_shape(), dtype),
                &upload_as(&c.w, &g.weight_shape(), dtype),
                &upload_as(&c.b, &[g.o], dtype),
                &y,
                g.pad,
            )
            .unwrap();
            let want = cpu::conv2d_forward(&c.x, &c.w, &c.b, g);
            let magnitude = cpu::conv2d_forward(&abs(&c.x), &abs(&c.w), &abs(&c.b), g);
            let sum = linear_bound(g.kh * g.kw + 1, &magnitude);
            let bound = if dtype == F16 {
                stored_as_f16(&sum, &want)
            } else {
                sum
            };
            assert_within(
                &format!("conv2d_forward_tex_images4 {dtype:?} {g:?}"),
                &run_and_read_floats(&kernel, &y),
                &want,
                &bound,
            );
        }
    }
}

#[test]
fn conv2d_forward_tex_images4_refuses_what_it_does_not_cover() {
    let expect_err = |what: &str, r: siamese_gpu::Result<Kernel>, needle: &str| {
        let err = r.map(|_| ()).unwrap_err().to_string();
        assert!(err.contains(needle), "{what}: {err}");
    };
    let g = geom(5, 1, 8, 8, 6, 3, 3, 1, 1);
    let c = case(&g, 0);
    let (x, w, b) = (
        upload(&c.x, &g.input_shape()),
        upload(&c.w, &g.weight_shape()),
        upload(&c.b, &[g.o]),
    );
    let y = zeros(&g.output_shape());
    let (_, xt) = pack::images4(gpu(), &x, g.pad).unwrap();
    let w_rows = w.reshaped(&[g.o, 9]).unwrap();
    let (_, wt) = pack::rows4(gpu(), &w_rows, false).unwrap();
    assert!(conv2d::forward_tex_images4(gpu(), &g, &xt, &wt, &b, &y).is_ok());
    expect_err(
        "stride 2",
        conv2d::forward_tex_images4(gpu(), &Conv2dGeometry { stride: 2, ..g }, &xt, &wt, &b, &y),
        "stride 2",
    );
    expect_err(
        "three channels",
        conv2d::forward_tex_images4(gpu(), &Conv2dGeometry { c: 3, ..g }, &xt, &wt, &b, &y),
        "3 channels",
    );
    let (_, unfolded) = pack::nhwc4(gpu(), &x, g.pad, 3).unwrap();
    expect_err(
        "x packed unfolded",
        conv2d::forward_tex_images4(gpu(), &g, &unfolded, &wt, &b, &y),
        "input texels given",
    );
    let (_, wt_conv) = pack::conv_weight(gpu(), &w, false, 1).unwrap();
    expect_err(
        "w packed for conv2d_forward_tex",
        conv2d::forward_tex_images4(gpu(), &g, &xt, &wt_conv, &b, &y),
        "weight texels given",
    );
    let x3 = upload(&vec![0.0; 5 * 3 * 64], &[5, 3, 8, 8]);
    let w3 = upload(&vec![0.0; 6 * 3 * 9], &[6, 3, 3, 3]);
    expect_err(
        "forward_packed_images4 of three channels",
        conv2d::forward_packed_images4(gpu(), &x3, &w3, &b, &y, 1),
        "single-channel",
    );
}

#[test]
fn conv2d_grad_weight_tex_survives_long_reductions() {
    // 64 → 64 channels leave one split on a CPU adapter, so one invocation would walk all
    // 340·14 output rows of 14 positions (~71,000 loop iterations): past llvmpipe's 65,535
    // iterations per invocation, beyond which it silently stops looping. The launcher must
    // split the rows finer than that.
    let g = geom(340, 64, 16, 16, 64, 3, 3, 1, 0);
    let c = case(&g, 900);
    let (dw, db) = tex_grad_weight(&g, &c);
    let terms = g.n * g.out_h() * g.out_w();
    let magnitude = cpu::conv2d_grad_weight(&abs(&c.dy), &abs(&c.x), &g);
    assert_within(
        "conv2d_grad_weight_tex, long reduction",
        &dw,
        &cpu::conv2d_grad_weight(&c.dy, &c.x, &g),
        &linear_bound(terms, &magnitude),
    );
    let magnitude = cpu::conv2d_grad_bias(&abs(&c.dy), g.n, g.o, g.out_h() * g.out_w());
    assert_within(
        "conv2d_grad_weight_tex bias, long reduction",
        &db,
        &cpu::conv2d_grad_bias(&c.dy, g.n, g.o, g.out_h() * g.out_w()),
        &linear_bound(terms, &magnitude),
    );
}

// ---- mixed precision: f16 activations and weight copies, f32 weight and bias gradients ----

/// `c` rounded to f16: what f16 tensors of it hold, and what the CPU reference then takes.
fn to_f16(c: &Case) -> Case {
    Case {
        x: round_f16(&c.x),
        w: round_f16(&c.w),
        b: round_f16(&c.b),
        dy: round_f16(&c.dy),
    }
}

/// The bound on an output stored as f16, given `sum`, the bound on its f32 value's distance
/// to the reference (as in the f32 tests: the f16 inputs are exact, f16 × f16 products are
/// exact in f32, and the sums run in f32). The store then rounds to the nearest f16, which
/// moves a value v by at most U16·|v| in f16's normal range and by half the subnormal spacing
/// (2⁻²⁵) below it: |got − want| ≤ sum·(1 + U16) + U16·|want| + 2⁻²⁵.
fn stored_as_f16(sum: &[f64], want: &[f32]) -> Vec<f64> {
    sum.iter()
        .zip(want)
        .map(|(&e, &w)| e * (1.0 + U16) + U16 * (w as f64).abs() + 2f64.powi(-25))
        .collect()
}

/// The storage-buffer forward and grad_input on f16 tensors (f16 out), against the CPU on
/// the same f16 values. A kernel reading f16 as f32, or summing in f16, is far outside
/// (an f16 sum of C·KH·KW terms errs by up to about C·KH·KW·U16·Σ|terms|).
#[test]
fn conv2d_f16_forward_and_grad_input_match_cpu() {
    if !has_f16() {
        return;
    }
    for (seed, g) in SHAPES.iter().enumerate() {
        let c = to_f16(&case(g, 700 + seed as u64));
        let y = zeros_as(&g.output_shape(), F16);
        let kernel = conv2d::forward(
            gpu(),
            &upload_as(&c.x, &g.input_shape(), F16),
            &upload_as(&c.w, &g.weight_shape(), F16),
            &upload_as(&c.b, &[g.o], F16),
            &y,
            g.stride,
            g.pad,
        )
        .unwrap();
        let want = cpu::conv2d_forward(&c.x, &c.w, &c.b, g);
        let magnitude = cpu::conv2d_forward(&abs(&c.x), &abs(&c.w), &abs(&c.b), g);
        assert_within(
            &format!("conv2d_forward f16 {g:?}"),
            &run_and_read_floats(&kernel, &y),
            &want,
            &stored_as_f16(&linear_bound(g.c * g.kh * g.kw + 1, &magnitude), &want),
        );

        let dx = zeros_as(&g.input_shape(), F16);
        let kernel = conv2d::grad_input(
            gpu(),
            &upload_as(&c.dy, &g.output_shape(), F16),
            &upload_as(&c.w, &g.weight_shape(), F16),
            &dx,
            g.stride,
            g.pad,
        )
        .unwrap();
        let want = cpu::conv2d_grad_input(&c.dy, &c.w, g);
        let magnitude = cpu::conv2d_grad_input(&abs(&c.dy), &abs(&c.w), g);
        assert_within(
            &format!("conv2d_grad_input f16 {g:?}"),
            &run_and_read_floats(&kernel, &dx),
            &want,
            &stored_as_f16(&linear_bound(g.o * g.kh * g.kw, &magnitude), &want),
        );
    }
}

/// The storage-buffer grad_weight (unsplit, split at every count, and as the launcher
/// splits: the f32 reduce pass included) and grad_bias from f16 dy and x, into f32 dw and
/// db: the f16 values are exact, so the f32 tests' bound holds unchanged (no f16 store).
#[test]
fn conv2d_f16_grad_weight_and_bias_match_cpu() {
    if !has_f16() {
        return;
    }
    for (seed, g) in SHAPES.iter().enumerate() {
        let c = to_f16(&case(g, 800 + seed as u64));
        let (dy, x) = (
            upload_as(&c.dy, &g.output_shape(), F16),
            upload_as(&c.x, &g.input_shape(), F16),
        );
        let want = cpu::conv2d_grad_weight(&c.dy, &c.x, g);
        let magnitude = cpu::conv2d_grad_weight(&abs(&c.dy), &abs(&c.x), g);
        let bound = linear_bound(g.n * g.out_h() * g.out_w(), &magnitude);
        for splits in std::iter::once(None).chain((1..=g.n).map(Some)) {
            let dw = zeros(&g.weight_shape());
            let kernel = match splits {
                Some(s) => conv2d::grad_weight_split(gpu(), &dy, &x, &dw, g.stride, g.pad, s),
                None => conv2d::grad_weight(gpu(), &dy, &x, &dw, g.stride, g.pad),
            }
            .unwrap();
            assert_within(
                &format!("conv2d_grad_weight f16 {g:?} splits {splits:?}"),
                &run_and_read(&kernel, &dw),
                &want,
                &bound,
            );
        }

        let db = zeros(&[g.o]);
        let kernel = conv2d::grad_bias(gpu(), &dy, &db).unwrap();
        let plane = g.out_h() * g.out_w();
        let magnitude = cpu::conv2d_grad_bias(&abs(&c.dy), g.n, g.o, plane);
        assert_within(
            &format!("conv2d_grad_bias f16 {g:?}"),
            &run_and_read(&kernel, &db),
            &cpu::conv2d_grad_bias(&c.dy, g.n, g.o, plane),
            &linear_bound(g.n * plane, &magnitude),
        );
    }
}

/// The texel path on f16 tensors, as the tape runs it: forward_packed (f16 texels, f16 y),
/// grad_input_packed and grad_input_tex (f16 dx), grad_weight_packed and grad_weight_tex
/// (f32 dw and db) from the same f16 texels. Bounds as the storage path's.
#[test]
fn conv2d_f16_texel_path_matches_cpu() {
    if !has_f16() {
        return;
    }
    for (seed, g) in TEX_SHAPES.iter().enumerate() {
        let c = to_f16(&case(g, 1000 + seed as u64));
        let (x, w, dy) = (
            upload_as(&c.x, &g.input_shape(), F16),
            upload_as(&c.w, &g.weight_shape(), F16),
            upload_as(&c.dy, &g.output_shape(), F16),
        );
        let y = zeros_as(&g.output_shape(), F16);
        let (forward, xt) =
            conv2d::forward_packed(gpu(), &x, &w, &upload_as(&c.b, &[g.o], F16), &y, g.pad)
                .unwrap();
        assert_eq!(xt.dtype(), F16, "x texels of an f16 x");
        let want = cpu::conv2d_forward(&c.x, &c.w, &c.b, g);
        let magnitude = cpu::conv2d_forward(&abs(&c.x), &abs(&c.w), &abs(&c.b), g);
        assert_within(
            &format!("conv2d_forward_tex f16 {g:?}"),
            &run_and_read_floats(&forward, &y),
            &want,
            &stored_as_f16(&linear_bound(g.c * g.kh * g.kw + 1, &magnitude), &want),
        );

        let dx = zeros_as(&g.input_shape(), F16);
        let kernel = conv2d::grad_input_packed(gpu(), &dy, &w, &dx, g.pad).unwrap();
        let got_dx = run_and_read_floats(&kernel, &dx);
        let want = cpu::conv2d_grad_input(&c.dy, &c.w, g);
        let magnitude = cpu::conv2d_grad_input(&abs(&c.dy), &abs(&c.w), g);
        assert_within(
            &format!("conv2d_grad_input (texels) f16 {g:?}"),
            &got_dx,
            &want,
            &stored_as_f16(&linear_bound(g.o * g.kh * g.kw, &magnitude), &want),
        );

        let (dw, db) = (zeros(&g.weight_shape()), zeros(&[g.o]));
        let kernel = conv2d::grad_weight_packed(gpu(), &dy, &xt, &dw, Some(&db), g).unwrap();
        gpu().run(&[&forward, &kernel]);
        let (got_dw, got_db) = (gpu().read_f32(&dw).unwrap(), gpu().read_f32(&db).unwrap());
        let terms = g.n * g.out_h() * g.out_w();
        let magnitude = cpu::conv2d_grad_weight(&abs(&c.dy), &abs(&c.x), g);
        assert_within(
            &format!("conv2d_grad_weight_tex f16 {g:?}"),
            &got_dw,
            &cpu::conv2d_grad_weight(&c.dy, &c.x, g),
            &linear_bound(terms, &magnitude),
        );
        let plane = g.out_h() * g.out_w();
        let magnitude = cpu::conv2d_grad_bias(&abs(&c.dy), g.n, g.o, plane);
        assert_within(
            &format!("conv2d_grad_weight_tex bias f16 {g:?}"),
            &got_db,
            &cpu::conv2d_grad_bias(&c.dy, g.n, g.o, plane),
            &linear_bound(terms, &magnitude),
        );

        // dy packed once with grad_input's border serves grad_input_tex and grad_weight_tex:
        // the same products in the same order as above, so the same bits.
        let dy_pad = g.grad_input_pad();
        let (pack_dy, dyt) = pack::nhwc4(gpu(), &dy, dy_pad, 1).unwrap();
        assert_eq!(dyt.dtype(), F16, "dy texels of an f16 dy");
        let dx_tex = zeros_as(&g.input_shape(), F16);
        let (dw_pad, db_pad) = (zeros(&g.weight_shape()), zeros(&[g.o]));
        let grad_input = conv2d::grad_input_tex(gpu(), &dyt, &w, &dx_tex, g.pad).unwrap();
        let grad_weight =
            conv2d::grad_weight_tex(gpu(), g, &xt, &dyt, dy_pad, &dw_pad, Some(&db_pad)).unwrap();
        gpu().run(&[&forward, &pack_dy, &grad_input, &grad_weight]);
        assert_eq!(
            gpu().read_floats(&dx_tex).unwrap(),
            got_dx,
            "grad_input_tex f16 {g:?}"
        );
        assert_eq!(
            gpu().read_f32(&dw_pad).unwrap(),
            got_dw,
            "dw from padded dy f16 {g:?}"
        );
        assert_eq!(
            gpu().read_f32(&db_pad).unwrap(),
            got_db,
            "db from padded dy f16 {g:?}"
        );
    }
}

/// Mixed element types are refused with an error naming the mismatch: an f16 op's
/// activations, weights and texels share its type, and its dw and db are f32.
#[test]
fn conv2d_f16_refuses_mixed_types() {
    if !has_f16() {
        return;
    }
    let g = geom(2, 3, 6, 6, 4, 3, 3, 1, 1);
    let f16 = |shape: &[usize]| zeros_as(shape, F16);
    let f32 = |shape: &[usize]| zeros(shape);
    let (x16, w16, b16, y16, dy16) = (
        f16(&g.input_shape()),
        f16(&g.weight_shape()),
        f16(&[g.o]),
        f16(&g.output_shape()),
        f16(&g.output_shape()),
    );
    let (w32, dw32, db32) = (f32(&g.weight_shape()), f32(&g.weight_shape()), f32(&[g.o]));
    let refused = |what: &str, result: siamese_gpu::Result<Kernel>, needle: &str| {
        let err = result.err().unwrap_or_else(|| panic!("{what}: accepted"));
        let msg = err.to_string();
        assert!(msg.contains(needle), "{what}: {msg}");
    };
    refused(
        "forward, f32 w",
        conv2d::forward(gpu(), &x16, &w32, &b16, &y16, 1, 1),
        "w must be a F16 tensor",
    );
    refused(
        "forward, f32 y",
        conv2d::forward(gpu(), &x16, &w16, &b16, &f32(&g.output_shape()), 1, 1),
        "y must be a F16 tensor",
    );
    refused(
        "grad_input, f32 dy",
        conv2d::grad_input(gpu(), &f32(&g.output_shape()), &w16, &x16, 1, 1),
        "dy must be a F16 tensor",
    );
    refused(
        "grad_weight, f16 dw",
        conv2d::grad_weight(gpu(), &dy16, &x16, &w16, 1, 1),
        "dw must be a F32 tensor",
    );
    refused(
        "grad_bias, f16 db",
        conv2d::grad_bias(gpu(), &dy16, &b16),
        "db must be a F32 tensor",
    );
    // Texels of the other type than the tensors.
    let x32 = f32(&g.input_shape());
    let (_, xt32) = pack::nhwc4(gpu(), &x32, g.pad, g.unfold()).unwrap();
    let (_, wt16) = pack::conv_weight(gpu(), &w16, false, g.unfold()).unwrap();
    refused(
        "forward_tex, f32 x texels",
        conv2d::forward_tex(gpu(), &g, g.unfold(), &xt32, &wt16, &b16, &y16),
        "the input texels hold F32 components but y is F16",
    );
    let (_, dyt32) = pack::nhwc4(gpu(), &f32(&g.output_shape()), g.grad_input_pad(), 1).unwrap();
    refused(
        "grad_input_tex, f32 dy texels",
        conv2d::grad_input_tex(gpu(), &dyt32, &w16, &x16, g.pad),
        "the dy texels hold F32 components but dx is F16",
    );
    let (_, xt16) = pack::nhwc4(gpu(), &x16, g.pad, g.unfold()).unwrap();
    refused(
        "grad_weight_tex, f16 x and f32 dy texels",
        conv2d::grad_weight_tex(gpu(), &g, &xt16, &dyt32, g.grad_input_pad(), &dw32, None),
        "the x texels hold F16 components but the dy texels hold F32",
    );
    refused(
        "grad_weight_packed, f32 dy and f16 x texels",
        conv2d::grad_weight_packed(
            gpu(),
            &f32(&g.output_shape()),
            &xt16,
            &dw32,
            Some(&db32),
            &g,
        ),
        "the x texels hold F16 components but dy is F32",
    );
    refused(
        "grad_weight_packed, f16 db",
        conv2d::grad_weight_packed(gpu(), &dy16, &xt16, &dw32, Some(&b16), &g),
        "db must be a F32 tensor",
    );
}
