//! Pooling (`shaders/pool.wgsl`): every entry against `cpu::pool` in f32 and, where the
//! adapter has SHADER_F16, in f16, and the gradients against f64 finite differences. In f16
//! the inputs are rounded to f16 first, so the reference sees exactly the values the kernel
//! reads. Max pooling runs unpadded and padded (torchvision's ResNet stem, 3×3 stride 2 pad
//! 1, among others); average pooling unpadded; global average pooling over planes up to its
//! largest.

use std::sync::OnceLock;

use crate::common::*;
use rand::RngExt;
use rand::seq::SliceRandom;
use siamese_gpu::DType;
use siamese_gpu::cpu::pool as cpu;
use siamese_gpu::ops::pool;

/// (N, C, H, W, kernel, stride): batch 1; a trivial 1×1 pool; sizes the windows do not tile
/// (floored output, trailing rows no window reads), with overlapping windows too; tiling
/// windows of 3 and 4; overlapping windows (stride < kernel, stride 1); gaps (stride >
/// kernel); a window as large as the plane; element counts that are not multiples of the
/// 256-wide workgroup; and the reference network's pools (2 on [N, 32, 24, 24] and on
/// [N, 64, 10, 10]). Average pooling runs these; max pooling runs them unpadded and
/// [`PADDED`].
const SHAPES: &[(usize, usize, usize, usize, usize, usize)] = &[
    (1, 1, 1, 1, 1, 1),
    (1, 1, 5, 7, 2, 2),
    (2, 3, 9, 11, 3, 2),
    (2, 3, 9, 11, 3, 3),
    (1, 2, 4, 4, 4, 4),
    (1, 2, 8, 8, 3, 1),
    (3, 5, 13, 6, 2, 3),
    (1, 4, 7, 7, 7, 7),
    (3, 7, 23, 19, 2, 2),
    (1, 32, 24, 24, 2, 2),
    (3, 32, 24, 24, 2, 2),
    (1, 64, 10, 10, 2, 2),
    (3, 64, 10, 10, 2, 2),
];

/// A max pooling's (N, C, H, W, kernel, stride, pad).
type MaxShape = (usize, usize, usize, usize, usize, usize, usize);

/// (N, C, H, W, kernel, stride, pad) of padded max pooling: torchvision's ResNet stem (3×3,
/// stride 2, pad 1) on odd and even planes (7×7, 8×8, 32×32: the last window of an odd
/// plane reaches into the padding, of an even one not) with C off multiples of 4; windows
/// that tile but are padded (2, 2, 1: each edge window holds one input element, so with the
/// negative inputs drawn here a zero padding would be chosen); overlap with stride 1; gaps
/// (stride > kernel); the most padding allowed (pad = kernel/2: 2 around 5×5 windows, a
/// window as large as the padded plane); and element counts off the 256-wide workgroup.
const PADDED: &[MaxShape] = &[
    (2, 3, 7, 7, 3, 2, 1),
    (1, 5, 8, 8, 3, 2, 1),
    (2, 6, 32, 32, 3, 2, 1),
    (1, 2, 5, 7, 2, 2, 1),
    (2, 3, 6, 5, 3, 1, 1),
    (1, 3, 9, 10, 2, 3, 1),
    (2, 2, 7, 6, 5, 2, 2),
    (1, 1, 1, 1, 5, 1, 2),
    (3, 7, 13, 11, 4, 3, 2),
];

/// Every max-pooling shape (N, C, H, W, kernel, stride, pad): [`SHAPES`] unpadded, then
/// [`PADDED`].
fn max_shapes() -> &'static [MaxShape] {
    static ALL: OnceLock<Vec<MaxShape>> = OnceLock::new();
    ALL.get_or_init(|| {
        SHAPES
            .iter()
            .map(|&(n, c, h, w, k, s)| (n, c, h, w, k, s, 0))
            .chain(PADDED.iter().copied())
            .collect()
    })
}

/// Small shapes for finite differences (two forwards per input element), (N, C, H, W,
/// kernel, stride, pad): tiling, overlap, stride 1, gaps, unpadded (average pooling runs
/// these) and padded (max pooling runs them all).
const FD_SHAPES: &[MaxShape] = &[
    (1, 1, 4, 5, 2, 2, 0),
    (2, 2, 5, 5, 3, 2, 0),
    (1, 2, 6, 5, 2, 1, 0),
    (1, 1, 7, 6, 2, 3, 0),
    (1, 2, 7, 7, 3, 2, 1),
    (1, 1, 6, 6, 3, 2, 1),
    (1, 1, 5, 4, 2, 2, 1),
    (1, 1, 5, 6, 5, 3, 2),
];

/// (N, C, H, W, kernel, texel border) of the backward into texels: the pools tile (stride =
/// kernel); channel counts off the texel's four, borders 0–2, sizes the windows do not tile,
/// batch 1, and the reference network's two pools (border 0 for the first layer's dy, 2 for
/// the second's, which grad_input reads bordered).
const TEX_SHAPES: &[(usize, usize, usize, usize, usize, usize)] = &[
    (1, 1, 5, 7, 2, 0),
    (2, 3, 9, 11, 3, 1),
    (1, 6, 7, 5, 2, 2),
    (1, 2, 4, 4, 4, 1),
    (3, 32, 24, 24, 2, 0),
    (2, 64, 10, 10, 2, 2),
];

/// Windows that can contain one input element: ⌈k/s⌉ per axis.
fn windows_per_input(k: usize, s: usize) -> usize {
    k.div_ceil(s).pow(2)
}

/// Inputs for the comparisons with the CPU. Even seeds draw from five levels, so windows
/// often hold equal maxima and the first-maximum tie rule is exercised; odd seeds are
/// continuous.
fn input(len: usize, seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    if seed.is_multiple_of(2) {
        (0..len)
            .map(|_| r.random_range(0..5) as f32 - 2.0)
            .collect()
    } else {
        uniform(&mut r, len, -1.0, 1.0)
    }
}

/// Distinct inputs for finite differences: a shuffled grid of spacing 1/len, so no window
/// has a tie within ±FD_STEP and the max stays where it is under perturbation.
fn distinct_input(len: usize, seed: u64) -> Vec<f32> {
    let mut v: Vec<f32> = (0..len).map(|i| i as f32 / len as f32 - 0.5).collect();
    v.shuffle(&mut rng(seed));
    v
}

/// In the padded shapes every window's maximum is one of its input elements, never the
/// padding: the inputs are mostly negative in some windows (five levels from −2, or uniform
/// in [−1, 1)), where a zero padding would win.
#[test]
fn max_pool2d_forward_matches_cpu() {
    for p in dtype_matrix(&DTYPES, max_shapes()) {
        let ((n, c, h, w, k, s, pad), dtype) = (p.shape, p.dtype);
        let x = as_dtype(&input(n * c * h * w, p.seed), dtype);
        let (oh, ow) = cpu::output_size(h, w, k, s, pad);
        let (y, argmax) = (
            zeros_as(&[n, c, oh, ow], dtype),
            gpu().zeros(&[n, c, oh, ow], DType::U32).unwrap(),
        );
        let kernel = pool::max_forward(
            gpu(),
            &upload_as(&x, &[n, c, h, w], dtype),
            k,
            s,
            pad,
            &y,
            &argmax,
        )
        .unwrap();
        let got = run_and_read_floats(&kernel, &y);
        let got_argmax = gpu().read_u32(&argmax).unwrap();
        let (want, want_argmax) = cpu::max_pool2d_forward(&x, n, c, h, w, k, s, pad);
        let what = format!("max_pool2d_forward {p}");
        // A maximum is one of the inputs, copied: no rounding, so exact. In f16 the kernel
        // compares the f16 values the reference compares (rounding makes more ties, which
        // the first-maximum rule must break alike): exact too.
        assert_within(&what, &got, &want, &vec![0.0; want.len()]);
        assert_eq!(got_argmax, want_argmax, "{what}: argmax");
    }
}

/// relu(max_pool2d(x)) in one pass: windows whose max is not above 0 (about half of them
/// here, and some exactly 0 among the five-level inputs) give 0 and argmax NONE.
#[test]
fn max_pool2d_relu_forward_matches_cpu() {
    for p in dtype_matrix(&DTYPES, max_shapes()) {
        let ((n, c, h, w, k, s, pad), dtype) = (p.shape, p.dtype);
        let x = as_dtype(&input(n * c * h * w, 20 + p.seed), dtype);
        let (oh, ow) = cpu::output_size(h, w, k, s, pad);
        let (y, argmax) = (
            zeros_as(&[n, c, oh, ow], dtype),
            gpu().zeros(&[n, c, oh, ow], DType::U32).unwrap(),
        );
        let kernel = pool::max_relu_forward(
            gpu(),
            &upload_as(&x, &[n, c, h, w], dtype),
            k,
            s,
            pad,
            &y,
            &argmax,
        )
        .unwrap();
        let got = run_and_read_floats(&kernel, &y);
        let got_argmax = gpu().read_u32(&argmax).unwrap();
        let (want, want_argmax) = cpu::max_pool2d_relu_forward(&x, n, c, h, w, k, s, pad);
        let what = format!("max_pool2d_relu_forward {p}");
        // A copied input or 0, in f32 as in f16 (the ReLU compares the f16 max with 0):
        // exact.
        assert_within(&what, &got, &want, &vec![0.0; want.len()]);
        assert_eq!(got_argmax, want_argmax, "{what}: argmax");
    }
}

/// The argmax the backward tests route through: every third seed that of the fused ReLU,
/// with NONE entries that must pass no gradient.
#[allow(clippy::too_many_arguments)]
fn argmax_of(x: &[f32], (n, c, h, w, k, s, pad): MaxShape, seed: u64) -> Vec<u32> {
    if seed % 3 == 2 {
        cpu::max_pool2d_relu_forward(x, n, c, h, w, k, s, pad).1
    } else {
        cpu::max_pool2d_forward(x, n, c, h, w, k, s, pad).1
    }
}

/// Windows that tile the input unpadded (s = k, pad = 0) take max_pool2d_backward_tiled,
/// the others (padded tiling windows included) max_pool2d_backward; either must write
/// every dx element, those past the last window included (dx starts as NaN here).
#[test]
fn max_pool2d_backward_matches_cpu() {
    for p in dtype_matrix(&DTYPES, max_shapes()) {
        let ((n, c, h, w, k, s, pad), dtype) = (p.shape, p.dtype);
        let x = input(n * c * h * w, p.seed);
        let (oh, ow) = cpu::output_size(h, w, k, s, pad);
        let argmax = argmax_of(&x, p.shape, p.seed);
        let dy = as_dtype(
            &uniform(&mut rng(1000 + p.seed), n * c * oh * ow, -1.0, 1.0),
            dtype,
        );
        let dx = upload_as(&vec![f32::NAN; n * c * h * w], &[n, c, h, w], dtype);
        let kernel = pool::max_backward(
            gpu(),
            &upload_as(&dy, &[n, c, oh, ow], dtype),
            &gpu().upload_u32(&argmax, &[n, c, oh, ow]).unwrap(),
            k,
            s,
            pad,
            &dx,
        )
        .unwrap();
        let entry = if s == k && pad == 0 {
            "max_pool2d_backward_tiled"
        } else {
            "max_pool2d_backward"
        };
        assert_eq!(kernel.dispatches()[0].entry(), entry, "{p}");
        let got = run_and_read_floats(&kernel, &dx);
        let want = cpu::max_pool2d_backward(&dy, &argmax, n, c, h, w, k, s, pad);
        // Each dx sums at most ⌈k/s⌉² entries of dy (overlapping windows may all choose the
        // same element): 2·γ·Σ|terms|. Any misrouted gradient is off by a whole dy entry. In
        // f16 the sum is in f32 and stored once as f16 (stored_bound). Where no two windows
        // overlap (⌈k/s⌉ = 1, tiling windows included) each dx is one dy entry (of dx's
        // type) or 0, copied: exact.
        let bound = if windows_per_input(k, s) == 1 {
            vec![0.0; want.len()]
        } else {
            let magnitude = cpu::max_pool2d_backward(&abs(&dy), &argmax, n, c, h, w, k, s, pad);
            stored_bound(
                linear_bound(windows_per_input(k, s), &magnitude),
                &want,
                dtype,
            )
        };
        assert_within(&format!("max_pool2d_backward {p}"), &got, &want, &bound);
    }
}

/// The tiled backward written as texels for the texel convolution kernels equals dx packed
/// by pack_nhwc4. It runs twice, on two different dy: the second run must overwrite every
/// texel inside x (the borders it leaves as created, zero). In f16, from an f16 dy into f16
/// (rgba16float) texels.
#[test]
fn max_pool2d_backward_tex_matches_cpu() {
    for p in dtype_matrix(&DTYPES, TEX_SHAPES) {
        let ((n, c, h, w, k, pad), dtype) = (p.shape, p.dtype);
        let x = input(n * c * h * w, 70 + p.seed);
        let (oh, ow) = cpu::output_size(h, w, k, k, 0);
        let argmax = argmax_of(&x, (n, c, h, w, k, k, 0), p.seed);
        let dy = as_dtype(
            &uniform(&mut rng(1070 + p.seed), n * c * oh * ow, -1.0, 1.0),
            dtype,
        );
        let first_dy = vec![f32::NAN; dy.len()];
        // Each window's first element, in-plane.
        let first_argmax: Vec<u32> = (0..argmax.len())
            .map(|o| (((o / ow) % oh * k) * w + o % ow * k) as u32)
            .collect();
        let dxt = gpu()
            .texels_of(n * (h + 2 * pad) * (w + 2 * pad) * c.div_ceil(4), dtype)
            .unwrap();
        let launch = |dy: &[f32], argmax: &[u32]| {
            pool::max_backward_texels(
                gpu(),
                &upload_as(dy, &[n, c, oh, ow], dtype),
                &gpu().upload_u32(argmax, &[n, c, oh, ow]).unwrap(),
                k,
                [n, c, h, w],
                &dxt,
                pad,
            )
            .unwrap()
        };
        // The first run routes NaN to each window's first element.
        gpu().run(&[&launch(&first_dy, &first_argmax), &launch(&dy, &argmax)]);
        // Each texel lane is one dy entry (f16 in f16 texels) or zero: exact.
        assert_eq!(
            gpu().read_texels(&dxt).unwrap(),
            cpu::max_pool2d_backward_nhwc4(&dy, &argmax, n, c, h, w, k, pad),
            "max_pool2d_backward_tex {p}"
        );
    }
}

#[test]
fn avg_pool2d_forward_matches_cpu() {
    for p in dtype_matrix(&DTYPES, SHAPES) {
        let ((n, c, h, w, k, s), dtype) = (p.shape, p.dtype);
        let x = as_dtype(&input(n * c * h * w, p.seed), dtype);
        let (oh, ow) = cpu::output_size(h, w, k, s, 0);
        let y = zeros_as(&[n, c, oh, ow], dtype);
        let kernel =
            pool::avg_forward(gpu(), &upload_as(&x, &[n, c, h, w], dtype), k, s, &y).unwrap();
        let got = run_and_read_floats(&kernel, &y);
        let want = cpu::avg_pool2d_forward(&x, n, c, h, w, k, s);
        // A k²-term sum then one division (≤ 2.5 ulp in WGSL, 0.5 ulp on the CPU, i.e.
        // ≤ 6u relative): linear_bound over k² + 1 terms allows 2·γ_(k²+2) + 4u ≥ 8u of
        // the magnitude Σ|x|/k², which covers both. In f16 the kernel sums the f16
        // inputs in f32 as the reference does, then stores f16 (stored_bound).
        let magnitude = cpu::avg_pool2d_forward(&abs(&x), n, c, h, w, k, s);
        assert_within(
            &format!("avg_pool2d_forward {p}"),
            &got,
            &want,
            &stored_bound(linear_bound(k * k + 1, &magnitude), &want, dtype),
        );
    }
}

#[test]
fn avg_pool2d_backward_matches_cpu() {
    for p in dtype_matrix(&DTYPES, SHAPES) {
        let ((n, c, h, w, k, s), dtype) = (p.shape, p.dtype);
        let (oh, ow) = cpu::output_size(h, w, k, s, 0);
        let dy = as_dtype(&input(n * c * oh * ow, p.seed), dtype);
        let dx = zeros_as(&[n, c, h, w], dtype);
        let kernel =
            pool::avg_backward(gpu(), &upload_as(&dy, &[n, c, oh, ow], dtype), k, s, &dx).unwrap();
        let got = run_and_read_floats(&kernel, &dx);
        let want = cpu::avg_pool2d_backward(&dy, n, c, h, w, k, s);
        // The CPU scatters dy/k² per window, the GPU sums dy then divides once: at most
        // ⌈k/s⌉² terms plus the division(s), in different orders: 2·γ·Σ|terms| with one
        // extra term for the division's rounding (as in the forward). In f16, the same
        // f32 arithmetic on the f16 dy, then the f16 store (stored_bound).
        let magnitude = cpu::avg_pool2d_backward(&abs(&dy), n, c, h, w, k, s);
        assert_within(
            &format!("avg_pool2d_backward {p}"),
            &got,
            &want,
            &stored_bound(
                linear_bound(windows_per_input(k, s) + 1, &magnitude),
                &want,
                dtype,
            ),
        );
    }
}

/// L = Σ r ⊙ max_pool2d_forward(x): its gradient is max_pool2d_backward with dy = r. With
/// `relu`, L = Σ r ⊙ relu(max_pool2d(x)) through max_pool2d_relu_forward's argmax. Padded
/// shapes included: the padding (−∞) has no gradient and never takes one.
#[test]
fn max_pool2d_backward_matches_finite_differences() {
    for (p, relu) in dtype_matrix(&F32_ONLY, FD_SHAPES)
        .into_iter()
        .flat_map(|p| [(p, false), (p, true)])
    {
        let (n, c, h, w, k, s, pad) = p.shape;
        let (oh, ow) = cpu::output_size(h, w, k, s, pad);
        let len = n * c * h * w;
        // Shifted by half the grid's spacing under ReLU, so that no value sits at its kink.
        let shift = if relu { 0.5 / len as f32 } else { 0.0 };
        let x32: Vec<f32> = distinct_input(len, 100 + p.seed)
            .iter()
            .map(|v| v + shift)
            .collect();
        let r32 = uniform(&mut rng(200 + p.seed), n * c * oh * ow, -1.0, 1.0);
        let (x, r) = (to_f64(&x32), to_f64(&r32));
        let cpu_forward = |v: &[f64]| {
            if relu {
                cpu::max_pool2d_relu_forward(v, n, c, h, w, k, s, pad)
            } else {
                cpu::max_pool2d_forward(v, n, c, h, w, k, s, pad)
            }
        };
        let loss = |v: &[f64]| dot(&r, &cpu_forward(v).0);
        let fd = finite_difference(loss, &x, FD_STEP);
        let (_, argmax) = cpu_forward(&x);
        assert_matches_fd(
            &format!("cpu max_pool2d_backward {p} relu {relu}"),
            &cpu::max_pool2d_backward(&r, &argmax, n, c, h, w, k, s, pad),
            &fd,
        );

        // The GPU pair, forward then backward through the GPU's own argmax.
        let (y, argmax, dx) = (
            zeros(&[n, c, oh, ow]),
            gpu()
                .zeros(&[n, c, oh, ow], siamese_gpu::DType::U32)
                .unwrap(),
            zeros(&[n, c, h, w]),
        );
        let launch = if relu {
            pool::max_relu_forward
        } else {
            pool::max_forward
        };
        let forward = launch(gpu(), &upload(&x32, &[n, c, h, w]), k, s, pad, &y, &argmax).unwrap();
        let backward = pool::max_backward(
            gpu(),
            &upload(&r32, &[n, c, oh, ow]),
            &argmax,
            k,
            s,
            pad,
            &dx,
        )
        .unwrap();
        gpu().run(&[&forward, &backward]);
        // f32 sums of at most 4 entries of r ∈ [-1, 1]: 1e-5 of the largest entry is ~80 ulps,
        // far above rounding and far below one misrouted gradient (an O(1) error).
        assert_gpu_matches_fd(
            &format!("max_pool2d_backward {p} relu {relu}"),
            &gpu().read_f32(&dx).unwrap(),
            &fd,
            1e-5,
        );
    }
}

/// L = Σ r ⊙ avg_pool2d_forward(x): its gradient is avg_pool2d_backward with dy = r.
/// Unpadded shapes only: average pooling takes no padding.
#[test]
fn avg_pool2d_backward_matches_finite_differences() {
    for p in dtype_matrix(&F32_ONLY, FD_SHAPES) {
        let (n, c, h, w, k, s, pad) = p.shape;
        if pad > 0 {
            continue;
        }
        let (oh, ow) = cpu::output_size(h, w, k, s, 0);
        let x32 = uniform(&mut rng(300 + p.seed), n * c * h * w, -1.0, 1.0);
        let r32 = uniform(&mut rng(400 + p.seed), n * c * oh * ow, -1.0, 1.0);
        let (x, r) = (to_f64(&x32), to_f64(&r32));
        let loss = |v: &[f64]| dot(&r, &cpu::avg_pool2d_forward(v, n, c, h, w, k, s));
        let fd = finite_difference(loss, &x, FD_STEP);
        assert_matches_fd(
            &format!("cpu avg_pool2d_backward {p}"),
            &cpu::avg_pool2d_backward(&r, n, c, h, w, k, s),
            &fd,
        );

        let dx = zeros(&[n, c, h, w]);
        let kernel = pool::avg_backward(gpu(), &upload(&r32, &[n, c, oh, ow]), k, s, &dx).unwrap();
        // f32 sums of at most 4 terms and one division: 1e-5 of the largest entry is ~80
        // ulps, far above rounding and far below a missing or extra window (≥ 1/9 of an r).
        assert_gpu_matches_fd(
            &format!("avg_pool2d_backward {p}"),
            &run_and_read(&kernel, &dx),
            &fd,
            1e-5,
        );
    }
}

/// (N, C, H, W) of global average pooling: one element; C off multiples of 4; ResNet's
/// last maps (7×7 of 512 channels for 224-pixel inputs, 4×4 and 8×8 for 32-pixel ones); more
/// planes than the 256-wide workgroup (and not a multiple of it); element counts off the
/// workgroup for the backward; and the largest plane taken, 128×256 = 32,768 elements (one
/// invocation's loop of that length, under lavapipe's 65,535).
const GLOBAL_SHAPES: &[(usize, usize, usize, usize)] = &[
    (1, 1, 1, 1),
    (2, 3, 7, 7),
    (2, 512, 7, 7),
    (3, 5, 4, 4),
    (1, 6, 8, 8),
    (2, 7, 13, 11),
    (1, 257, 2, 3),
    (2, 1, 128, 256),
];

#[test]
fn global_avg_pool2d_forward_matches_cpu() {
    for p in dtype_matrix(&DTYPES, GLOBAL_SHAPES) {
        let ((n, c, h, w), dtype) = (p.shape, p.dtype);
        let x = as_dtype(&input(n * c * h * w, 40 + p.seed), dtype);
        let y = zeros_as(&[n, c], dtype);
        let kernel =
            pool::global_avg_forward(gpu(), &upload_as(&x, &[n, c, h, w], dtype), &y).unwrap();
        let got = run_and_read_floats(&kernel, &y);
        let want = cpu::global_avg_pool2d_forward(&x, n, c, h, w);
        // An H·W-term sum in the same order on both sides, then one division (≤ 2.5 ulp in
        // WGSL, 0.5 ulp on the CPU): linear_bound over H·W + 1 terms (≥ 8u of Σ|x|/(H·W))
        // covers the division, as for average pooling. In f16 the kernel sums the f16
        // inputs in f32 as the reference does, then stores f16 (stored_bound).
        let magnitude = cpu::global_avg_pool2d_forward(&abs(&x), n, c, h, w);
        assert_within(
            &format!("global_avg_pool2d_forward {p}"),
            &got,
            &want,
            &stored_bound(linear_bound(h * w + 1, &magnitude), &want, dtype),
        );
    }
}

#[test]
fn global_avg_pool2d_backward_matches_cpu() {
    for p in dtype_matrix(&DTYPES, GLOBAL_SHAPES) {
        let ((n, c, h, w), dtype) = (p.shape, p.dtype);
        let dy = as_dtype(&input(n * c, 50 + p.seed), dtype);
        // NaN first: every dx element must be written.
        let dx = upload_as(&vec![f32::NAN; n * c * h * w], &[n, c, h, w], dtype);
        let kernel =
            pool::global_avg_backward(gpu(), &upload_as(&dy, &[n, c], dtype), &dx).unwrap();
        let got = run_and_read_floats(&kernel, &dx);
        let want = cpu::global_avg_pool2d_backward(&dy, n, c, h, w);
        // One division each (2.5 ulp in WGSL against the CPU's 0.5): linear_bound over 2
        // terms allows 2·γ₃ + 4u = 10u of |dy|/(H·W). In f16, then the f16 store.
        assert_within(
            &format!("global_avg_pool2d_backward {p}"),
            &got,
            &want,
            &stored_bound(linear_bound(2, &abs(&want)), &want, dtype),
        );
    }
}

/// L = Σ r ⊙ global_avg_pool2d_forward(x): its gradient is the backward with dy = r.
#[test]
fn global_avg_pool2d_backward_matches_finite_differences() {
    const SHAPES: &[(usize, usize, usize, usize)] = &[(1, 1, 1, 1), (2, 3, 3, 4), (1, 5, 2, 2)];
    for p in dtype_matrix(&F32_ONLY, SHAPES) {
        let (n, c, h, w) = p.shape;
        let x32 = uniform(&mut rng(500 + p.seed), n * c * h * w, -1.0, 1.0);
        let r32 = uniform(&mut rng(600 + p.seed), n * c, -1.0, 1.0);
        let (x, r) = (to_f64(&x32), to_f64(&r32));
        let loss = |v: &[f64]| dot(&r, &cpu::global_avg_pool2d_forward(v, n, c, h, w));
        let fd = finite_difference(loss, &x, FD_STEP);
        assert_matches_fd(
            &format!("cpu global_avg_pool2d_backward {p}"),
            &cpu::global_avg_pool2d_backward(&r, n, c, h, w),
            &fd,
        );

        let dx = zeros(&[n, c, h, w]);
        let kernel = pool::global_avg_backward(gpu(), &upload(&r32, &[n, c]), &dx).unwrap();
        // One division per element: 1e-5 of the largest entry is ~80 ulps, far above its
        // rounding and far below a wrong divisor (off by at least a factor (H·W ± 1)/(H·W)).
        assert_gpu_matches_fd(
            &format!("global_avg_pool2d_backward {p}"),
            &run_and_read(&kernel, &dx),
            &fd,
            1e-5,
        );
    }
}

/// A plane over 32,768 elements is refused (its loop would run toward lavapipe's limit), by
/// the forward and the backward, and so is a mis-shaped output.
#[test]
fn global_avg_pool_launchers_reject_large_planes_and_mismatched_shapes() {
    let x = zeros(&[1, 1, 129, 256]);
    let err = pool::global_avg_forward(gpu(), &x, &zeros(&[1, 1])).unwrap_err();
    assert!(
        err.to_string()
            .contains("a 129×256 plane has 33024 elements, over the 32768"),
        "{err}"
    );
    let err = pool::global_avg_backward(gpu(), &zeros(&[1, 1]), &x).unwrap_err();
    assert!(err.to_string().contains("over the 32768"), "{err}");

    let err =
        pool::global_avg_forward(gpu(), &zeros(&[2, 3, 4, 4]), &zeros(&[2, 3, 1, 1])).unwrap_err();
    assert!(
        err.to_string()
            .contains("y must be a F32 tensor of shape [2, 3]"),
        "{err}"
    );
    let err = pool::global_avg_backward(gpu(), &zeros(&[3, 2]), &zeros(&[2, 3, 4, 4])).unwrap_err();
    assert!(
        err.to_string()
            .contains("dy must be a F32 tensor of shape [2, 3]"),
        "{err}"
    );
}

#[test]
fn pool_launchers_reject_mismatched_shapes() {
    let x = zeros(&[2, 3, 10, 10]);
    let argmax = gpu().zeros(&[2, 3, 5, 5], siamese_gpu::DType::U32).unwrap();

    // y sized for a 4×4 output where 10×10 pooled by 2 gives 5×5.
    let err = pool::max_forward(gpu(), &x, 2, 2, 0, &zeros(&[2, 3, 4, 4]), &argmax).unwrap_err();
    assert!(
        err.to_string()
            .contains("y must be a F32 tensor of shape [2, 3, 5, 5]"),
        "{err}"
    );

    // argmax must be u32, not f32.
    let err = pool::max_forward(
        gpu(),
        &x,
        2,
        2,
        0,
        &zeros(&[2, 3, 5, 5]),
        &zeros(&[2, 3, 5, 5]),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("argmax must be a U32 tensor of shape [2, 3, 5, 5]"),
        "{err}"
    );

    // A window larger than the plane, and a zero stride.
    let err = pool::avg_forward(gpu(), &x, 11, 1, &zeros(&[2, 3, 1, 1])).unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
    let err = pool::avg_backward(gpu(), &zeros(&[2, 3, 5, 5]), 2, 0, &x).unwrap_err();
    assert!(err.to_string().contains("must both be at least 1"), "{err}");

    // Padding over half the kernel (PyTorch refuses it too), and a padded output mis-sized:
    // 10×10 by 3, stride 2, pad 1 gives 5×5.
    let err = pool::max_forward(gpu(), &x, 3, 2, 2, &zeros(&[2, 3, 6, 6]), &argmax).unwrap_err();
    assert!(
        err.to_string()
            .contains("padding 2 is more than half the kernel 3: it must be at most 1"),
        "{err}"
    );
    let err = pool::max_backward(gpu(), &zeros(&[2, 3, 4, 4]), &argmax, 3, 2, 1, &x).unwrap_err();
    assert!(
        err.to_string()
            .contains("dy must be a F32 tensor of shape [2, 3, 5, 5]"),
        "{err}"
    );
}

/// One launch's float tensors share one type: f16 beside f32 is refused, the dx texels of
/// the texel backward included, and so is a u32 where a float tensor belongs.
#[test]
fn pool_launchers_reject_mixed_element_types() {
    let x16 = zeros_as(&[2, 3, 10, 10], DType::F16);
    let argmax = gpu().zeros(&[2, 3, 5, 5], DType::U32).unwrap();

    let err = pool::max_forward(gpu(), &x16, 2, 2, 0, &zeros(&[2, 3, 5, 5]), &argmax).unwrap_err();
    assert!(
        err.to_string()
            .contains("y must be a F16 tensor of shape [2, 3, 5, 5], got F32"),
        "{err}"
    );

    let err = pool::max_backward(gpu(), &zeros(&[2, 3, 5, 5]), &argmax, 2, 2, 0, &x16).unwrap_err();
    assert!(
        err.to_string()
            .contains("dy must be a F16 tensor of shape [2, 3, 5, 5], got F32"),
        "{err}"
    );

    let err = pool::avg_forward(gpu(), &argmax, 1, 1, &zeros(&[2, 3, 5, 5])).unwrap_err();
    assert!(
        err.to_string()
            .contains("x must be an f32 or f16 tensor, got U32"),
        "{err}"
    );

    // f16 dy into f32 texels.
    let dxt = gpu().texels(2 * 10 * 10).unwrap();
    let err = pool::max_backward_texels(
        gpu(),
        &zeros_as(&[2, 3, 5, 5], DType::F16),
        &argmax,
        2,
        [2, 3, 10, 10],
        &dxt,
        0,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("dy is F16 but the dx texels hold F32 components"),
        "{err}"
    );
}
