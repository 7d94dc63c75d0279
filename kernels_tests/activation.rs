//! Activations (`shaders/activation.wgsl`): every entry against `cpu::activation` in f32 and
//! on f16 tensors (mixed precision), and the gradients against f64 finite differences.
//!
//! The f16 variants run against the CPU reference on the f16 values the kernel reads. ReLU,
//! its backward and the gradient sum select or add exactly representable values, so they
//! match the reference rounded to f16 exactly; sigmoid and tanh compute in f32 and round once
//! to f16 on store: within U16·|reference| plus the f32 kernels' own few ulps.

use crate::common::*;
use rand::RngExt;
use rand::rngs::StdRng;
use siamese_gpu::DType;
use siamese_gpu::cpu::activation as cpu;
use siamese_gpu::ops::activation::{self, Activation};

/// Tensor shapes: one element; sizes that are not multiples of the 256-wide workgroup; an
/// embedding batch; and the reference network's activations ([N, 32, 24, 24] after the
/// first convolution, [N, 64, 10, 10] after the second) at batch 1 and 3.
const SHAPES: &[&[usize]] = &[
    &[1],
    &[7],
    &[3, 5, 17],
    &[1000, 3],
    &[4, 128],
    &[1, 32, 24, 24],
    &[3, 32, 24, 24],
    &[1, 64, 10, 10],
    &[3, 64, 10, 10],
];

/// Small shapes for finite differences.
const FD_SHAPES: &[&[usize]] = &[&[1], &[5], &[2, 3, 4]];

/// Values the f32 forwards must survive, planted among the random ones: signed zeros, tiny
/// and subnormal values, values past where e^x overflows f32 (|x| > 88.7), and the
/// largest finite floats.
const SPECIAL: &[f32] = &[
    0.0, -0.0, 1e-30, -1e-30, 1e-40, -1e-40, 20.0, -20.0, 100.0, -100.0, 3e38, -3e38,
];

/// The error allowed where the kernel may see `x` flushed to zero: |value| when x is
/// subnormal, else nothing. No f16 value is an f32 subnormal, so nothing in f16.
fn flushable(x: f32, value: f32) -> f64 {
    if x.is_subnormal() {
        value.abs() as f64
    } else {
        0.0
    }
}

/// Uniform in [-8, 8), as a tensor of `dtype` holds it. In f32 the SPECIAL values are planted
/// at every 97th position, and even seeds also set one element in eight to exactly 0 (ReLU's
/// kink, where its gradient is 0). f16 holds none of the specials (they overflow or flush to
/// zero), so there every 11th element is exactly 0.
fn input(len: usize, seed: u64, dtype: DType) -> Vec<f32> {
    let mut r = rng(seed);
    let mut x = uniform(&mut r, len, -8.0, 8.0);
    if dtype == DType::F16 {
        for v in x.iter_mut().step_by(11) {
            *v = 0.0;
        }
        return round_f16(&x);
    }
    for (j, i) in (0..len).step_by(97).enumerate() {
        x[i] = SPECIAL[j % SPECIAL.len()];
    }
    if seed.is_multiple_of(2) {
        for v in x.iter_mut() {
            if r.random_range(0..8) == 0 {
                *v = 0.0;
            }
        }
    }
    x
}

/// Upstream gradients in [-1, 1), as a tensor of `dtype` holds them.
fn upstream(len: usize, seed: u64, dtype: DType) -> Vec<f32> {
    as_dtype(&uniform(&mut rng(1000 + seed), len, -1.0, 1.0), dtype)
}

/// `n` values with |v| in [lo, hi) and a random sign.
fn signed(r: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let v = r.random_range(lo..hi);
            if r.random_range(0..2) == 0 { v } else { -v }
        })
        .collect()
}

fn run_forward(act: Activation, x: &[f32], shape: &[usize], dtype: DType) -> Vec<f32> {
    let y = zeros_as(shape, dtype);
    let kernel = activation::forward(gpu(), act, &upload_as(x, shape, dtype), &y).unwrap();
    run_and_read_floats(&kernel, &y)
}

fn run_backward(
    act: Activation,
    saved: &[f32],
    dy: &[f32],
    shape: &[usize],
    dtype: DType,
) -> Vec<f32> {
    let dx = zeros_as(shape, dtype);
    let kernel = activation::backward(
        gpu(),
        act,
        &upload_as(saved, shape, dtype),
        &upload_as(dy, shape, dtype),
        &dx,
    )
    .unwrap();
    run_and_read_floats(&kernel, &dx)
}

/// Results below f32's smallest normal (e.g. sigmoid(x) for x < −87.3) are subnormal, and
/// GPUs may flush subnormals to 0: every f32 bound below allows that much absolute error.
const SUBNORMAL: f64 = f32::MIN_POSITIVE as f64;

/// The bound of an f16 output computed in f32 and rounded once on store: U16 of the
/// reference for the rounding, 8u for the f32 arithmetic before it, 1e-7 for results in
/// f16's subnormal range.
fn rounded_to_f16(want: &[f32]) -> Vec<f64> {
    want.iter()
        .map(|&w| (U16 + 8.0 * U32) * w.abs() as f64 + 1e-7)
        .collect()
}

#[test]
fn relu_forward_matches_cpu() {
    for p in dtype_matrix(&DTYPES, SHAPES) {
        let x = input(p.shape.iter().product(), p.seed, p.dtype);
        let got = run_forward(Activation::Relu, &x, p.shape, p.dtype);
        // max(x, 0) rounds nothing: exact, except that WGSL lets an implementation flush
        // subnormal inputs to zero (NVIDIA's Vulkan driver does): there 0 is also right.
        let bound: Vec<f64> = x.iter().map(|&v| flushable(v, v)).collect();
        assert_within(
            &format!("relu_forward {p}"),
            &got,
            &cpu::relu_forward(&x),
            &bound,
        );
    }
}

/// 1024·32·24·24 = 18.9M elements need 73,728 workgroups of 256, past the 65,535 one
/// dimension allows: the grid is folded, and every element must still be written once.
#[test]
fn relu_forward_covers_a_folded_grid() {
    let shape = [1024, 32, 24, 24];
    let len: usize = shape.iter().product();
    let x = uniform(&mut rng(7), len, -1.0, 1.0);
    let y = zeros(&shape);
    let kernel = activation::forward(gpu(), Activation::Relu, &upload(&x, &shape), &y).unwrap();
    assert!(
        kernel.dispatches()[0].workgroups()[1] > 1,
        "grid not folded"
    );
    let got = run_and_read(&kernel, &y);
    // Exact, as above; a skipped or doubly indexed workgroup leaves zeros or wrong values.
    assert_within(
        &format!("relu_forward folded {shape:?}"),
        &got,
        &cpu::relu_forward(&x),
        &vec![0.0; len],
    );
}

#[test]
fn relu_backward_matches_cpu() {
    for p in dtype_matrix(&DTYPES, SHAPES) {
        let len = p.shape.iter().product();
        let x = input(len, p.seed, p.dtype);
        let dy = upstream(len, p.seed, p.dtype);
        let got = run_backward(Activation::Relu, &x, &dy, p.shape, p.dtype);
        // A selection between dy and 0: exact (including dx = 0 at x = 0); a subnormal x
        // may be flushed to zero (see relu_forward_matches_cpu), selecting 0 instead of dy.
        let bound: Vec<f64> = x.iter().zip(&dy).map(|(&v, &g)| flushable(v, g)).collect();
        assert_within(
            &format!("relu_backward {p}"),
            &got,
            &cpu::relu_backward(&x, &dy),
            &bound,
        );
    }
}

#[test]
fn sigmoid_forward_matches_cpu() {
    for p in dtype_matrix(&DTYPES, SHAPES) {
        let x = input(p.shape.iter().product(), p.seed, p.dtype);
        let got = run_forward(Activation::Sigmoid, &x, p.shape, p.dtype);
        let want = cpu::sigmoid_forward(&x);
        let bound: Vec<f64> = match p.dtype {
            // WGSL's exp(−|x|) is within 3 + 2|x| ulp (≤ 2u each, relative). For x < 0 the
            // result e/(1 + e) carries that error whole: (6 + 4|x|)u; for x ≥ 0, 1/(1 + e)
            // damps it by e/(1 + e) ≤ e^−|x|, leaving ≤ 6u. Add the GPU's division (≤ 2.5
            // ulp) and product and the CPU's own exp and division (~1 ulp each): 8u more.
            DType::F32 => x
                .iter()
                .zip(&want)
                .map(|(&v, &w)| {
                    (14.0 + 4.0 * (-v as f64).max(0.0)) * U32 * (w as f64).abs() + SUBNORMAL
                })
                .collect(),
            _ => rounded_to_f16(&want),
        };
        assert_within(&format!("sigmoid_forward {p}"), &got, &want, &bound);
        assert!(
            got.iter().all(|v| v.is_finite()),
            "sigmoid_forward {p}: non-finite output"
        );
    }
}

#[test]
fn sigmoid_backward_matches_cpu() {
    for p in dtype_matrix(&DTYPES, SHAPES) {
        let len = p.shape.iter().product();
        // The saved y as the tensor holds it: the reference takes the same (rounded) y.
        let y = as_dtype(&cpu::sigmoid_forward(&input(len, p.seed, p.dtype)), p.dtype);
        let dy = upstream(len, p.seed, p.dtype);
        let got = run_backward(Activation::Sigmoid, &y, &dy, p.shape, p.dtype);
        let want = cpu::sigmoid_backward(&y, &dy);
        let bound: Vec<f64> = match p.dtype {
            // dy·y·(1 − y) from the same f32 y on both sides: three roundings each (1 − y
            // and two products), ≤ 6u of the result.
            DType::F32 => want
                .iter()
                .map(|&w| 6.0 * U32 * (w as f64).abs() + SUBNORMAL)
                .collect(),
            _ => rounded_to_f16(&want),
        };
        assert_within(&format!("sigmoid_backward {p}"), &got, &want, &bound);
    }
}

#[test]
fn tanh_forward_matches_cpu() {
    for p in dtype_matrix(&DTYPES, SHAPES) {
        let x = input(p.shape.iter().product(), p.seed, p.dtype);
        let got = run_forward(Activation::Tanh, &x, p.shape, p.dtype);
        let want = cpu::tanh_forward(&x);
        let bound: Vec<f64> = match p.dtype {
            // Relative, as the kernel's tanh is accurate near 0 too. Below 0.625 Cephes'
            // polynomial (peak 1.3e-7 ≈ 2.2u) plus its f32 evaluation, whose roundings the
            // cubic term's share (< 0.13) damps: ≤ 4u. Above, 1 − 2/(e^2|x| + 1) damps the
            // exp's (3 + 4|x|)-ulp error by 2e/(e + 1)² to ≤ 2 ulp, plus the division's 2.5
            // ulp scaled by 2/(e + 1) < 0.45 and the subtraction: ≤ 8u. The CPU's tanhf:
            // ≤ 2u. 16u (8 ulp) covers both branches with room; measured on lavapipe: ≤ 3.5u.
            DType::F32 => want
                .iter()
                .map(|&w| 16.0 * U32 * (w as f64).abs() + SUBNORMAL)
                .collect(),
            _ => rounded_to_f16(&want),
        };
        assert_within(&format!("tanh_forward {p}"), &got, &want, &bound);
    }
}

#[test]
fn tanh_backward_matches_cpu() {
    for p in dtype_matrix(&DTYPES, SHAPES) {
        let len = p.shape.iter().product();
        // The saved y as the tensor holds it: the reference takes the same (rounded) y.
        let y = as_dtype(&cpu::tanh_forward(&input(len, p.seed, p.dtype)), p.dtype);
        let dy = upstream(len, p.seed, p.dtype);
        let got = run_backward(Activation::Tanh, &y, &dy, p.shape, p.dtype);
        let want = cpu::tanh_backward(&y, &dy);
        let bound = match p.dtype {
            // 1 − y·y is a two-term sum (which one side may fuse into an FMA), cancelling as
            // |y| → 1, then one product: bound it relative to Σ|terms| = |dy|·(1 + y²).
            DType::F32 => {
                let magnitude: Vec<f32> = y
                    .iter()
                    .zip(&dy)
                    .map(|(&t, &g)| g.abs() * (1.0 + t * t))
                    .collect();
                linear_bound(2, &magnitude)
            }
            _ => rounded_to_f16(&want),
        };
        assert_within(&format!("tanh_backward {p}"), &got, &want, &bound);
    }
}

#[test]
fn accumulate_grad_matches_cpu() {
    for p in dtype_matrix(&DTYPES, SHAPES) {
        let len = p.shape.iter().product();
        let dy = as_dtype(&uniform(&mut rng(2000 + p.seed), len, -1.0, 1.0), p.dtype);
        let start = as_dtype(&uniform(&mut rng(3000 + p.seed), len, -1.0, 1.0), p.dtype);
        let dx = upload_as(&start, p.shape, p.dtype);
        let kernel =
            activation::accumulate_grad(gpu(), &upload_as(&dy, p.shape, p.dtype), &dx).unwrap();
        // Run twice: the kernel adds, it does not overwrite.
        gpu().run(&[&kernel, &kernel]);
        let got = gpu().read_floats(&dx).unwrap();
        // Each run adds dy to dx in dx's type, in the same order on both sides: exact (in
        // f16, the sum of two f16 values rounded once to f16).
        let mut want = start.clone();
        for _ in 0..2 {
            cpu::accumulate_grad(&dy, &mut want);
            want = as_dtype(&want, p.dtype);
        }
        assert_within(
            &format!("accumulate_grad {p}"),
            &got,
            &want,
            &vec![0.0; len],
        );
    }
}

/// Checks `act`'s f64 CPU backward and its GPU forward + backward against central
/// differences of L = Σ r ⊙ forward(x), for inputs drawn by `draw_x`.
fn check_backward_against_fd(
    act: Activation,
    forward: fn(&[f64]) -> Vec<f64>,
    backward: fn(&[f64], &[f64]) -> Vec<f64>,
    draw_x: impl Fn(&mut StdRng, usize) -> Vec<f32>,
    gpu_rtol: f64,
) {
    let name = act.backward_entry();
    for p in dtype_matrix(&F32_ONLY, FD_SHAPES) {
        let shape = p.shape;
        let len = shape.iter().product();
        let mut r = rng(100 + p.seed);
        let x32 = draw_x(&mut r, len);
        // |r| ≥ 0.5, so the largest gradient entry (the scale of the GPU check) is not tiny.
        let r32 = signed(&mut r, len, 0.5, 1.0);
        let (x, rr) = (to_f64(&x32), to_f64(&r32));
        let fd = finite_difference(|v| dot(&rr, &forward(v)), &x, FD_STEP);
        let saved = if act.backward_takes_output() {
            forward(&x)
        } else {
            x.clone()
        };
        assert_matches_fd(&format!("cpu {name} {p}"), &backward(&saved, &rr), &fd);

        // The GPU pair, the backward reading what the GPU forward saved.
        let (tx, ty, dx) = (upload(&x32, shape), zeros(shape), zeros(shape));
        let fwd = activation::forward(gpu(), act, &tx, &ty).unwrap();
        let tsaved = if act.backward_takes_output() {
            &ty
        } else {
            &tx
        };
        let bwd = activation::backward(gpu(), act, tsaved, &upload(&r32, shape), &dx).unwrap();
        gpu().run(&[&fwd, &bwd]);
        let got = gpu().read_f32(&dx).unwrap();
        assert_gpu_matches_fd(&format!("{name} {p}"), &got, &fd, gpu_rtol);
    }
}

#[test]
fn relu_backward_matches_finite_differences() {
    // |x| ≥ 0.1 keeps every input 10⁴ steps away from the kink at 0.
    check_backward_against_fd(
        Activation::Relu,
        cpu::relu_forward,
        cpu::relu_backward,
        |r, n| signed(r, n, 0.1, 1.0),
        // dx is dy or 0, exactly; 1e-5 of the largest entry only absorbs the differences'
        // own f64 error.
        1e-5,
    );
}

#[test]
fn sigmoid_backward_matches_finite_differences() {
    check_backward_against_fd(
        Activation::Sigmoid,
        cpu::sigmoid_forward,
        cpu::sigmoid_backward,
        |r, n| uniform(r, n, -3.0, 3.0),
        // The GPU's y may be (14 + 4·3)u ≈ 1.6e-6 off (the forward's bound), which dx
        // inherits times |dy·(1 − 2y)| ≤ 1; the largest gradient is ≥ 0.5·y(1 − y) ≥ 0.02
        // for |x| ≤ 3 and |r| ≥ 0.5, so 2e-4 of it (4e-6) covers that with a 2× margin,
        // and is still far below a wrong formula (an O(1) relative error).
        2e-4,
    );
}

#[test]
fn tanh_backward_matches_finite_differences() {
    check_backward_against_fd(
        Activation::Tanh,
        cpu::tanh_forward,
        cpu::tanh_backward,
        |r, n| uniform(r, n, -3.0, 3.0),
        // The GPU's y is within 16u ≈ 1e-6 (the forward's bound), which dx inherits times
        // |2·y·dy| ≤ 2; the largest gradient is ≥ 0.5·(1 − tanh²3) ≈ 0.005, so 1e-3 of it
        // (5e-6) covers 2e-6 with margin while a wrong formula is off by O(1).
        1e-3,
    );
}

#[test]
fn activation_launchers_reject_mismatched_shapes() {
    let x = zeros(&[2, 3]);
    let err = activation::forward(gpu(), Activation::Tanh, &x, &zeros(&[3, 2])).unwrap_err();
    assert!(
        err.to_string()
            .contains("tanh_forward: y must be a F32 tensor of shape [2, 3]"),
        "{err}"
    );
    let err = activation::backward(
        gpu(),
        Activation::Sigmoid,
        &zeros(&[6]),
        &x,
        &zeros(&[2, 3]),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("saved (the forward output y) must be a F32 tensor of shape [2, 3]"),
        "{err}"
    );
}
