//! Batch normalisation (`shaders/batchnorm.wgsl`): every entry against `cpu::batchnorm` in
//! f32 and, where the adapter has SHADER_F16, in f16 (inputs rounded to f16 first, so the
//! reference sees exactly the values the kernel reads); the gradients against f64 finite
//! differences; the size limits; and the tape's `batch_norm` against the composed references,
//! in train and eval mode.
//!
//! Entry points and the tests that run them: `batch_norm_stats` and `batch_norm_normalize`
//! (the train forward): `train_forward_matches_cpu`; `batch_norm_eval_forward`:
//! `eval_forward_matches_cpu`; `batch_norm_grad_reduce` and `batch_norm_grad_input` (the
//! train backward): `train_backward_matches_cpu`; `batch_norm_eval_grad_input`:
//! `eval_backward_matches_cpu`; all of them also through the finite-difference, size-limit
//! and tape tests.
//!
//! The references run in f64 on the kernel's inputs, so each bound is the kernel's own f32
//! rounding (plus the rounding of the f64 result to f32 for the comparison). A channel sum of
//! the kernels adds ⌈M/256⌉ terms in order per invocation, then a tree of 8 levels: every
//! term passes at most ⌈M/256⌉ + 8 additions, so the sum is within γ_(⌈M/256⌉+9)·Σ|terms| of
//! the exact one (Higham; the +1 covers each term's own product rounding): [`sum_gamma`].
//! WGSL rounds + and × correctly, division within 2.5 ulp and inverseSqrt within 2 ulp
//! (≤ 5u and 4u relative).

use crate::common::*;
use rand::seq::SliceRandom;
use siamese_gpu::autograd::Tape;
use siamese_gpu::cpu::batchnorm::{self as cpu, Dims};
use siamese_gpu::cpu::{
    Real, activation as cpu_activation, distance as cpu_distance, loss as cpu_loss,
};
use siamese_gpu::ops::activation::Activation;
use siamese_gpu::ops::batchnorm::{
    self, BatchNormGrads, BatchNormTensors, EPS, MAX_CHANNEL_ELEMENTS, MOMENTUM, RunningStats,
};
use siamese_gpu::vocab::{Distance, Mode, PairLabel};
use siamese_gpu::{DType, Kernel, Tensor};

/// Shapes of x in train mode: N = 2, the smallest train batch, as [N, C] features (C = 3, off
/// the fours) and as a 1×1 map; [N, C] with M = N below the 256-wide workgroup, and 64
/// features over 33 rows; maps with C off the fours and M = 140 (one element per invocation
/// or none), M = 286 (invocations loop twice or once), the first layer of the reference
/// network's 32 channels; C = 300, more channels than a workgroup has invocations; and
/// M = 18,432 and 60,000, where each invocation loops 72 and 235 times. A channel at the size
/// limit has its own test.
const SHAPES: &[&[usize]] = &[
    &[2, 3],
    &[2, 1, 1, 1],
    &[7, 5],
    &[33, 64],
    &[3, 300],
    &[4, 3, 5, 7],
    &[2, 6, 13, 11],
    &[3, 32, 12, 12],
    &[8, 3, 48, 48],
    &[6, 2, 100, 100],
];

/// Eval mode also takes one value per channel (a single image embedded in evaluation).
const EVAL_SHAPES: &[&[usize]] = &[
    &[1, 3],
    &[1, 5, 1, 1],
    &[2, 3],
    &[7, 5],
    &[3, 300],
    &[4, 3, 5, 7],
    &[2, 6, 13, 11],
    &[8, 3, 48, 48],
];

/// Small shapes for finite differences: N = 2 (where x̂ = ±1 nearly, and dx is nearly 0),
/// a map, features.
const FD_SHAPES: &[&[usize]] = &[&[2, 3], &[3, 2, 2, 3], &[5, 4]];

fn dims(shape: &[usize]) -> Dims {
    Dims::of(shape).expect("[N, C] or [N, C, H, W]")
}

/// γ_(⌈M/256⌉+9): the relative bound of the kernels' channel sums (module doc).
fn sum_gamma(m: usize) -> f64 {
    gamma(m.div_ceil(256) + 9)
}

/// (momentum, eps) of a point: PyTorch's defaults at half the points, momentum 0.5 with
/// eps 1e-3 at a quarter, and momentum 1 (the running statistics become the batch's) at the
/// rest.
fn hyper(seed: u64) -> (f32, f32) {
    match seed % 4 {
        2 => (0.5, 1e-3),
        3 => (1.0, EPS),
        _ => (MOMENTUM, EPS),
    }
}

/// A layer's inputs as the kernels read them (rounded to f16 where `dtype` is f16; the
/// running statistics are f32 always).
struct Layer {
    x: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
}

/// Channel c of x is offset + scale·uniform[−1, 1), (offset, scale) cycling through (0, 1),
/// (3, 0.5), (−1.5, 2), (40, 0.25) and (0.75, 0): offsets up to 280 standard deviations,
/// where E[x²] − mean² would lose most digits of the variance, and a constant channel
/// (variance 0, invstd 1/sqrt(eps)).
fn layer(shape: &[usize], dtype: DType, seed: u64) -> Layer {
    const CHANNELS: [(f32, f32); 5] = [
        (0.0, 1.0),
        (3.0, 0.5),
        (-1.5, 2.0),
        (40.0, 0.25),
        (0.75, 0.0),
    ];
    let d = dims(shape);
    let mut r = rng(seed);
    let u = uniform(&mut r, d.elements(), -1.0, 1.0);
    let x: Vec<f32> = (0..d.elements())
        .map(|i| {
            let (offset, scale) = CHANNELS[d.channel(i) % CHANNELS.len()];
            offset + scale * u[i]
        })
        .collect();
    Layer {
        x: as_dtype(&x, dtype),
        gamma: as_dtype(&uniform(&mut r, d.c, -1.5, 1.5), dtype),
        beta: as_dtype(&uniform(&mut r, d.c, -1.0, 1.0), dtype),
        running_mean: uniform(&mut r, d.c, -1.0, 1.0),
        running_var: uniform(&mut r, d.c, 0.5, 2.0),
    }
}

/// Exact (f64) per-channel statistics of x, for the bounds: the mean, the biased variance
/// and the mean of |x|.
struct ChannelStats {
    mean: f64,
    var: f64,
    abs_mean: f64,
}

fn channel_stats(x: &[f64], d: Dims) -> Vec<ChannelStats> {
    let m = d.count() as f64;
    (0..d.c)
        .map(|c| {
            let values = || (0..d.count()).map(|j| x[d.element(c, j)]);
            let mean = values().sum::<f64>() / m;
            ChannelStats {
                mean,
                var: values().map(|v| (v - mean).powi(2)).sum::<f64>() / m,
                abs_mean: values().map(f64::abs).sum::<f64>() / m,
            }
        })
        .collect()
}

/// The entries a kernel dispatches, in order.
fn entries(kernel: &Kernel) -> Vec<&'static str> {
    kernel.dispatches().iter().map(|d| d.entry()).collect()
}

/// The tensors of a layer on the GPU.
struct LayerTensors {
    x: Tensor,
    gamma: Tensor,
    beta: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
}

impl LayerTensors {
    fn new(l: &Layer, shape: &[usize], dtype: DType) -> LayerTensors {
        let c = dims(shape).c;
        LayerTensors {
            x: upload_as(&l.x, shape, dtype),
            gamma: upload_as(&l.gamma, &[c], dtype),
            beta: upload_as(&l.beta, &[c], dtype),
            running_mean: upload(&l.running_mean, &[c]),
            running_var: upload(&l.running_var, &[c]),
        }
    }

    fn running(&self) -> RunningStats<'_> {
        RunningStats {
            mean: &self.running_mean,
            var: &self.running_var,
        }
    }

    fn forward<'a>(&'a self, y: &'a Tensor) -> BatchNormTensors<'a> {
        BatchNormTensors {
            x: &self.x,
            gamma: &self.gamma,
            beta: &self.beta,
            y,
        }
    }
}

/// |(x − mean)·invstd·γ| + |β| per element: the magnitude of y, to which its roundings are
/// relative.
fn y_magnitude(x: &[f64], mean: &[f64], invstd: &[f64], l: &Layer, d: Dims) -> Vec<f64> {
    (0..d.elements())
        .map(|i| {
            let c = d.channel(i);
            ((x[i] - mean[c]) * invstd[c] * l.gamma[c] as f64).abs() + (l.beta[c] as f64).abs()
        })
        .collect()
}

/// `f32_bound` of an output stored as `dtype`, compared with the f64 `want` rounded to f32:
/// that rounding adds U32·|want|.
fn output_bound(f32_bound: Vec<f64>, want: &[f32], dtype: DType) -> Vec<f64> {
    let rounded = f32_bound
        .iter()
        .zip(want)
        .map(|(b, w)| b + U32 * w.abs() as f64)
        .collect();
    stored_bound(rounded, want, dtype)
}

/// The train forward: the statistics and running statistics against the reference's, then y
/// against the reference normalising with the statistics the kernel saved (so that y's
/// bound is the normalisation's own rounding).
#[test]
fn train_forward_matches_cpu() {
    for p in dtype_matrix(&DTYPES, SHAPES) {
        let (shape, dtype) = (p.shape, p.dtype);
        let d = dims(shape);
        let (momentum, eps) = hyper(p.seed);
        let l = layer(shape, dtype, p.seed);
        let t = LayerTensors::new(&l, shape, dtype);
        let (y, saved) = (zeros_as(shape, dtype), zeros(&[2, d.c]));
        let kernel =
            batchnorm::train_forward(gpu(), &t.forward(&y), t.running(), momentum, eps, &saved)
                .unwrap();
        assert_eq!(
            entries(&kernel),
            ["batch_norm_stats", "batch_norm_normalize"],
            "{p}"
        );
        gpu().run(&[&kernel]);
        let got_saved = gpu().read_f32(&saved).unwrap();
        let got_mean = gpu().read_f32(&t.running_mean).unwrap();
        let got_var = gpu().read_f32(&t.running_var).unwrap();
        let got_y = gpu().read_floats(&y).unwrap();

        let x = to_f64(&l.x);
        let (mut want_mean, mut want_var) = (to_f64(&l.running_mean), to_f64(&l.running_var));
        let want_saved = cpu::batch_norm_stats(
            &x,
            d,
            eps as f64,
            momentum as f64,
            &mut want_mean,
            &mut want_var,
        );
        let stats = channel_stats(&x, d);
        let (g, m) = (sum_gamma(d.count()), d.count() as f64);
        let (mom, keep) = (momentum as f64, 1.0 - momentum as f64);
        // The mean: its sum within g·Σ|x|, the division 5u of |mean| ≤ Σ|x|/M, and the
        // comparison's rounding U32 more: (g + 6u)·Σ|x|/M.
        let mean_bound: Vec<f64> = stats.iter().map(|s| (g + 6.0 * U32) * s.abs_mean).collect();
        // The variance: Σ(x − m)² over the kernel's own mean m is Σ(x − μ)² + M·(μ − m)²
        // exactly, so the mean's error enters squared; each term's subtraction and square
        // add 3u, the sum g, the division 5u: var within (g + 8u)·var + δm², and var + eps
        // within that plus u of itself (e_v relative). invstd = (var + eps)^(−1/2) moves by
        // at most e_v relative (half of it, to first order), inverseSqrt by 4u, and the
        // comparison's rounding by u: (e_v + 6u)·invstd.
        let e_v: Vec<f64> = stats
            .iter()
            .zip(&mean_bound)
            .map(|(s, dm)| ((g + 8.0 * U32) * s.var + dm * dm) / (s.var + eps as f64) + U32)
            .collect();
        let invstd_bound: Vec<f64> = (0..d.c)
            .map(|c| (e_v[c] + 6.0 * U32) * want_saved[d.c + c])
            .collect();
        let want_saved32 = to_f32(&want_saved);
        assert_within(
            &format!("batch_norm_stats mean {p}"),
            &got_saved[..d.c],
            &want_saved32[..d.c],
            &mean_bound,
        );
        assert_within(
            &format!("batch_norm_stats invstd {p}"),
            &got_saved[d.c..],
            &want_saved32[d.c..],
            &invstd_bound,
        );
        // r ← keep·r + momentum·s, keep = 1 − momentum rounded in f32 (u): the two products
        // and the sum round by at most 4u of keep·|r| + momentum·|s|, the batch statistic
        // carries its own bound (times momentum), and the comparison rounds by u. The
        // unbiased variance Σ(x − m)²/(M − 1) has the biased one's relative bound, and its
        // δm² term times M/(M − 1).
        let unbiased: Vec<f64> = stats.iter().map(|s| s.var * m / (m - 1.0)).collect();
        let rm_bound: Vec<f64> = (0..d.c)
            .map(|c| {
                4.0 * U32 * (keep * (l.running_mean[c] as f64).abs() + mom * stats[c].mean.abs())
                    + mom * mean_bound[c]
                    + U32 * want_mean[c].abs()
            })
            .collect();
        let rv_bound: Vec<f64> = (0..d.c)
            .map(|c| {
                let dm = mean_bound[c];
                4.0 * U32 * (keep * l.running_var[c] as f64 + mom * unbiased[c])
                    + mom * ((g + 8.0 * U32) * unbiased[c] + dm * dm * m / (m - 1.0))
                    + U32 * want_var[c].abs()
            })
            .collect();
        assert_within(
            &format!("batch_norm_stats running mean {p} momentum {momentum}"),
            &got_mean,
            &to_f32(&want_mean),
            &rm_bound,
        );
        assert_within(
            &format!("batch_norm_stats running var {p} momentum {momentum}"),
            &got_var,
            &to_f32(&want_var),
            &rv_bound,
        );

        let saved64 = to_f64(&got_saved);
        let (mean, invstd) = saved64.split_at(d.c);
        let want_y = to_f32(&cpu::batch_norm_normalize(
            &x,
            &saved64,
            &to_f64(&l.gamma),
            &to_f64(&l.beta),
            d,
        ));
        // (x − mean)·invstd·γ + β from exact inputs: the subtraction and the two products
        // round by 3u of |x̂·γ|, the sum by u of |y| ≤ |x̂·γ| + |β|; 4u of that magnitude
        // (output_bound adds the comparison's rounding and, in f16, the store).
        let bound = y_magnitude(&x, mean, invstd, &l, d)
            .iter()
            .map(|v| 4.0 * U32 * v)
            .collect();
        assert_within(
            &format!("batch_norm_normalize {p}"),
            &got_y,
            &want_y,
            &output_bound(bound, &want_y, dtype),
        );
    }
}

/// Eval mode normalises with the running statistics and leaves them as they were, bit for
/// bit.
#[test]
fn eval_forward_matches_cpu() {
    for p in dtype_matrix(&DTYPES, EVAL_SHAPES) {
        let (shape, dtype) = (p.shape, p.dtype);
        let d = dims(shape);
        let (_, eps) = hyper(p.seed);
        let l = layer(shape, dtype, 50 + p.seed);
        let t = LayerTensors::new(&l, shape, dtype);
        let y = zeros_as(shape, dtype);
        let kernel = batchnorm::eval_forward(gpu(), &t.forward(&y), t.running(), eps).unwrap();
        assert_eq!(entries(&kernel), ["batch_norm_eval_forward"], "{p}");
        let got = run_and_read_floats(&kernel, &y);
        assert_eq!(
            (
                gpu().read_f32(&t.running_mean).unwrap(),
                gpu().read_f32(&t.running_var).unwrap()
            ),
            (l.running_mean.clone(), l.running_var.clone()),
            "batch_norm_eval_forward {p}: the running statistics changed"
        );
        let x = to_f64(&l.x);
        let (mean, var) = (to_f64(&l.running_mean), to_f64(&l.running_var));
        let want = to_f32(&cpu::batch_norm_eval_forward(
            &x,
            &mean,
            &var,
            &to_f64(&l.gamma),
            &to_f64(&l.beta),
            d,
            eps as f64,
        ));
        // invstd = inverseSqrt(var + eps): u for the sum, 4u for inverseSqrt; then the
        // normalisation's 4u (as in the train forward): 9u of |x̂·γ| + |β|.
        let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps as f64).sqrt()).collect();
        let bound = y_magnitude(&x, &mean, &invstd, &l, d)
            .iter()
            .map(|v| 9.0 * U32 * v)
            .collect();
        assert_within(
            &format!("batch_norm_eval_forward {p}"),
            &got,
            &want,
            &output_bound(bound, &want, dtype),
        );
    }
}

/// The saved statistics of the layer's x for the backward tests: the f64 reference's,
/// rounded to the f32 the forward stores.
fn saved_of(l: &Layer, d: Dims, eps: f32) -> Vec<f32> {
    let (mut rm, mut rv) = (to_f64(&l.running_mean), to_f64(&l.running_var));
    to_f32(&cpu::batch_norm_stats(
        &to_f64(&l.x),
        d,
        eps as f64,
        MOMENTUM as f64,
        &mut rm,
        &mut rv,
    ))
}

/// Which of (dx, dγ, dβ) a train backward asks for.
const ALL: (bool, bool, bool) = (true, true, true);

/// Runs the train backward asking for `wanted` (dx, dγ, dβ); returns the entries it
/// dispatched and what it wrote (empty where not asked).
fn train_backward_run(
    t: &LayerTensors,
    saved: &Tensor,
    dy: &Tensor,
    wanted: (bool, bool, bool),
) -> (Vec<&'static str>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let c = t.gamma.len();
    let dx = wanted.0.then(|| zeros_as(t.x.shape(), t.x.dtype()));
    let dgamma = wanted.1.then(|| zeros(&[c]));
    let dbeta = wanted.2.then(|| zeros(&[c]));
    let grads = BatchNormGrads {
        dy,
        dx: dx.as_ref(),
        dgamma: dgamma.as_ref(),
        dbeta: dbeta.as_ref(),
    };
    let kernel = batchnorm::train_backward(gpu(), &t.x, &t.gamma, saved, &grads).unwrap();
    gpu().run(&[&kernel]);
    let read = |v: &Option<Tensor>| {
        v.as_ref()
            .map_or(Vec::new(), |t| gpu().read_floats(t).unwrap())
    };
    (entries(&kernel), read(&dx), read(&dgamma), read(&dbeta))
}

/// The train backward from the reference's saved statistics: dγ and dβ (the sums of
/// batch_norm_grad_reduce) and dx (batch_norm_grad_input, which reads those sums). Asked for
/// fewer of them, it writes the same bits (the sums go to scratch) and skips
/// batch_norm_grad_input where dx is not wanted.
#[test]
fn train_backward_matches_cpu() {
    for p in dtype_matrix(&DTYPES, SHAPES) {
        let (shape, dtype) = (p.shape, p.dtype);
        let d = dims(shape);
        let (_, eps) = hyper(p.seed);
        let l = layer(shape, dtype, 100 + p.seed);
        let t = LayerTensors::new(&l, shape, dtype);
        let saved32 = saved_of(&l, d, eps);
        let saved = upload(&saved32, &[2, d.c]);
        let dy32 = as_dtype(
            &uniform(&mut rng(200 + p.seed), d.elements(), -1.0, 1.0),
            dtype,
        );
        let dy = upload_as(&dy32, shape, dtype);
        let (got_entries, got_dx, got_dgamma, got_dbeta) = train_backward_run(&t, &saved, &dy, ALL);
        assert_eq!(
            got_entries,
            ["batch_norm_grad_reduce", "batch_norm_grad_input"],
            "{p}"
        );

        let (x, dy64, saved64) = (to_f64(&l.x), to_f64(&dy32), to_f64(&saved32));
        let gamma = to_f64(&l.gamma);
        let (want_dgamma, want_dbeta) = cpu::batch_norm_grad_reduce(&x, &dy64, &saved64, d);
        let want_dx =
            cpu::batch_norm_grad_input(&x, &dy64, &gamma, &saved64, &want_dgamma, &want_dbeta, d);
        let (mean, invstd) = saved64.split_at(d.c);
        let xhat = |i: usize| (x[i] - mean[d.channel(i)]) * invstd[d.channel(i)];
        // Σ|dy| and Σ|dy·x̂| per channel: the magnitudes of the two sums.
        let (mut abs_dy, mut abs_dy_xhat) = (vec![0.0; d.c], vec![0.0; d.c]);
        for i in 0..d.elements() {
            abs_dy[d.channel(i)] += dy64[i].abs();
            abs_dy_xhat[d.channel(i)] += (dy64[i] * xhat(i)).abs();
        }
        let g = sum_gamma(d.count());
        // dβ = Σ dy: g·Σ|dy|. dγ = Σ dy·x̂, x̂ rounded twice (2u) and the product once:
        // (g + 3u)·Σ|dy·x̂|. Both f32 outputs (output_bound adds the comparison's rounding).
        let dbeta_bound = abs_dy.iter().map(|s| g * s).collect();
        let dgamma_bound = abs_dy_xhat.iter().map(|s| (g + 3.0 * U32) * s).collect();
        let (want_dgamma, want_dbeta) = (to_f32(&want_dgamma), to_f32(&want_dbeta));
        assert_within(
            &format!("batch_norm_grad_reduce dgamma {p}"),
            &got_dgamma,
            &want_dgamma,
            &output_bound(dgamma_bound, &want_dgamma, DType::F32),
        );
        assert_within(
            &format!("batch_norm_grad_reduce dbeta {p}"),
            &got_dbeta,
            &want_dbeta,
            &output_bound(dbeta_bound, &want_dbeta, DType::F32),
        );
        // dx = k·(M·dy − S1 − x̂·S2), k = γ·invstd/M: the sums' errors (above) reach dx times
        // |k| and |k·x̂|; k rounds by 6u, M·dy, x̂·S2 (with x̂'s 2u), the two subtractions
        // and the last product by at most 12u of |k|·(M·|dy| + Σ|dy| + |x̂|·Σ|dy·x̂|).
        let m = d.count() as f64;
        let dx_bound: Vec<f64> = (0..d.elements())
            .map(|i| {
                let c = d.channel(i);
                let k = (gamma[c] * invstd[c] / m).abs();
                k * ((g + 12.0 * U32) * (abs_dy[c] + xhat(i).abs() * abs_dy_xhat[c])
                    + 12.0 * U32 * m * dy64[i].abs())
            })
            .collect();
        let want_dx = to_f32(&want_dx);
        assert_within(
            &format!("batch_norm_grad_input {p}"),
            &got_dx,
            &want_dx,
            &output_bound(dx_bound, &want_dx, dtype),
        );

        // Fewer gradients on every other shape: a frozen layer (dx alone), a first layer
        // (no dx), and dγ alone. The same kernels in the same order: the same bits.
        if p.seed % 2 == 0 {
            for wanted in [
                (true, false, false),
                (false, true, true),
                (false, true, false),
            ] {
                let (e, dx, dgamma, dbeta) = train_backward_run(&t, &saved, &dy, wanted);
                let want_entries: &[&str] = if wanted.0 {
                    &["batch_norm_grad_reduce", "batch_norm_grad_input"]
                } else {
                    &["batch_norm_grad_reduce"]
                };
                assert_eq!(e, want_entries, "{p} {wanted:?}");
                let pick = |w: bool, all: &[f32]| if w { all.to_vec() } else { Vec::new() };
                assert_eq!(
                    (dx, dgamma, dbeta),
                    (
                        pick(wanted.0, &got_dx),
                        pick(wanted.1, &got_dgamma),
                        pick(wanted.2, &got_dbeta)
                    ),
                    "{p} {wanted:?}"
                );
            }
        }
    }
}

#[test]
fn eval_backward_matches_cpu() {
    for p in dtype_matrix(&DTYPES, EVAL_SHAPES) {
        let (shape, dtype) = (p.shape, p.dtype);
        let d = dims(shape);
        let (_, eps) = hyper(p.seed);
        let l = layer(shape, dtype, 300 + p.seed);
        let t = LayerTensors::new(&l, shape, dtype);
        let dy32 = as_dtype(
            &uniform(&mut rng(400 + p.seed), d.elements(), -1.0, 1.0),
            dtype,
        );
        let dx = zeros_as(shape, dtype);
        let kernel = batchnorm::eval_backward(
            gpu(),
            &upload_as(&dy32, shape, dtype),
            &t.gamma,
            t.running(),
            eps,
            &dx,
        )
        .unwrap();
        assert_eq!(entries(&kernel), ["batch_norm_eval_grad_input"], "{p}");
        let got = run_and_read_floats(&kernel, &dx);
        let want = to_f32(&cpu::batch_norm_eval_grad_input(
            &to_f64(&dy32),
            &to_f64(&l.gamma),
            &to_f64(&l.running_var),
            d,
            eps as f64,
        ));
        // dy·(γ·inverseSqrt(var + eps)): the sum u, inverseSqrt 4u, the two products 2u:
        // 7u of |dx| (output_bound adds the comparison's rounding and the f16 store).
        let bound = want.iter().map(|v| 7.0 * U32 * v.abs() as f64).collect();
        assert_within(
            &format!("batch_norm_eval_grad_input {p}"),
            &got,
            &want,
            &output_bound(bound, &want, dtype),
        );
    }
}

/// x, γ, β for finite differences: x on a shuffled grid of spacing 2/len over [−1, 1) plus
/// the channel's index, so no two values of a channel are close (the N = 2 shape too has a
/// variance far above eps); γ and β as `layer` draws them.
fn fd_layer(shape: &[usize], seed: u64) -> Layer {
    let mut l = layer(shape, DType::F32, seed);
    let d = dims(shape);
    let len = d.elements();
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut rng(seed + 1));
    l.x = (0..len)
        .map(|i| 2.0 * order[i] as f32 / len as f32 - 1.0 + d.channel(i) as f32)
        .collect();
    l
}

/// A GPU gradient against finite differences, within `rtol` of `scale`.
fn assert_gpu_close_to_fd(what: &str, got: &[f32], fd: &[f64], scale: f64, rtol: f64) {
    assert_close(what, got, &to_f32(fd), rtol * scale, 0.0);
}

/// L = Σ r ⊙ y of the train forward, as a function of (x, γ, β): the f64 backward against
/// central differences, and the GPU's forward then backward (through its own saved
/// statistics) against the same differences.
#[test]
fn train_backward_matches_finite_differences() {
    for p in dtype_matrix(&F32_ONLY, FD_SHAPES) {
        let shape = p.shape;
        let d = dims(shape);
        let l = fd_layer(shape, 500 + p.seed);
        let r32 = uniform(&mut rng(600 + p.seed), d.elements(), -1.0, 1.0);
        let r = to_f64(&r32);
        let (x, gamma, beta) = (to_f64(&l.x), to_f64(&l.gamma), to_f64(&l.beta));
        let eps = EPS as f64;
        let forward = |x: &[f64], gamma: &[f64], beta: &[f64]| {
            let (mut rm, mut rv) = (vec![0.0; d.c], vec![1.0; d.c]);
            let saved = cpu::batch_norm_stats(x, d, eps, MOMENTUM as f64, &mut rm, &mut rv);
            (cpu::batch_norm_normalize(x, &saved, gamma, beta, d), saved)
        };
        let params = [x.clone(), gamma.clone(), beta.clone()].concat();
        let loss = |v: &[f64]| {
            let (x, rest) = v.split_at(d.elements());
            let (gamma, beta) = rest.split_at(d.c);
            dot(&r, &forward(x, gamma, beta).0)
        };
        let fd = finite_difference(loss, &params, FD_STEP);
        let (fd_dx, rest) = fd.split_at(d.elements());
        let (fd_dgamma, fd_dbeta) = rest.split_at(d.c);
        let (_, saved) = forward(&x, &gamma, &beta);
        let (dgamma, dbeta) = cpu::batch_norm_grad_reduce(&x, &r, &saved, d);
        let dx = cpu::batch_norm_grad_input(&x, &r, &gamma, &saved, &dgamma, &dbeta, d);
        assert_matches_fd(&format!("cpu batch_norm dx {p}"), &dx, fd_dx);
        assert_matches_fd(&format!("cpu batch_norm dgamma {p}"), &dgamma, fd_dgamma);
        assert_matches_fd(&format!("cpu batch_norm dbeta {p}"), &dbeta, fd_dbeta);

        let t = LayerTensors::new(&l, shape, DType::F32);
        let (y, saved_t) = (zeros(shape), zeros(&[2, d.c]));
        let fwd =
            batchnorm::train_forward(gpu(), &t.forward(&y), t.running(), MOMENTUM, EPS, &saved_t)
                .unwrap();
        gpu().run(&[&fwd]);
        let (_, got_dx, got_dgamma, got_dbeta) =
            train_backward_run(&t, &saved_t, &upload(&r32, shape), ALL);
        // f32 sums of at most 12 terms, an inverse square root and a few products: 1e-5
        // (~80 ulps) of each gradient's scale is far above their rounding and far below a
        // wrong term. dx is a difference of terms of size |γ·invstd·r| (which cancel almost
        // entirely at N = 2), so its scale is the largest such term; dγ and dβ take their
        // largest entry.
        let dx_scale = (0..d.elements())
            .map(|i| (gamma[d.channel(i)] * saved[d.c + d.channel(i)] * r[i]).abs())
            .fold(0.0, f64::max);
        let largest = |v: &[f64]| v.iter().fold(1e-6, |m: f64, g| m.max(g.abs()));
        assert_gpu_close_to_fd(
            &format!("gpu batch_norm dx {p}"),
            &got_dx,
            fd_dx,
            dx_scale,
            1e-5,
        );
        assert_gpu_close_to_fd(
            &format!("gpu batch_norm dgamma {p}"),
            &got_dgamma,
            fd_dgamma,
            largest(fd_dgamma),
            1e-5,
        );
        assert_gpu_close_to_fd(
            &format!("gpu batch_norm dbeta {p}"),
            &got_dbeta,
            fd_dbeta,
            largest(fd_dbeta),
            1e-5,
        );
    }
}

/// L = Σ r ⊙ y of the eval forward, as a function of x.
#[test]
fn eval_backward_matches_finite_differences() {
    for p in dtype_matrix(&F32_ONLY, FD_SHAPES) {
        let shape = p.shape;
        let d = dims(shape);
        let l = fd_layer(shape, 700 + p.seed);
        let r32 = uniform(&mut rng(800 + p.seed), d.elements(), -1.0, 1.0);
        let r = to_f64(&r32);
        let (gamma, beta) = (to_f64(&l.gamma), to_f64(&l.beta));
        let (mean, var) = (to_f64(&l.running_mean), to_f64(&l.running_var));
        let eps = EPS as f64;
        let loss = |x: &[f64]| {
            dot(
                &r,
                &cpu::batch_norm_eval_forward(x, &mean, &var, &gamma, &beta, d, eps),
            )
        };
        let fd = finite_difference(loss, &to_f64(&l.x), FD_STEP);
        let dx = cpu::batch_norm_eval_grad_input(&r, &gamma, &var, d, eps);
        assert_matches_fd(&format!("cpu batch_norm eval dx {p}"), &dx, &fd);

        let t = LayerTensors::new(&l, shape, DType::F32);
        let got = zeros(shape);
        let kernel = batchnorm::eval_backward(
            gpu(),
            &upload(&r32, shape),
            &t.gamma,
            t.running(),
            EPS,
            &got,
        )
        .unwrap();
        // Three roundings and an inverse square root: 1e-5 of the largest entry.
        assert_gpu_matches_fd(
            &format!("gpu batch_norm eval dx {p}"),
            &run_and_read(&kernel, &got),
            &fd,
            1e-5,
        );
    }
}

/// A channel of MAX_CHANNEL_ELEMENTS = 2^22 elements (64 maps of 256×256): each invocation of
/// batch_norm_stats loops 2·16,384 + 16 times and of batch_norm_grad_reduce 16,384 + 8,
/// within lavapipe's 65,535 (at 2^24 elements the stats entry's second pass is cut off and
/// invstd comes out as 1/sqrt(eps)). The forward and backward against the reference, under
/// the bounds of the tests above.
#[test]
fn a_channel_at_the_size_limit_matches_cpu() {
    let shape: &[usize] = &[64, 1, 256, 256];
    let d = dims(shape);
    assert_eq!(d.count(), MAX_CHANNEL_ELEMENTS);
    let l = layer(shape, DType::F32, 900);
    let t = LayerTensors::new(&l, shape, DType::F32);
    let (y, saved) = (zeros(shape), zeros(&[2, 1]));
    let fwd = batchnorm::train_forward(gpu(), &t.forward(&y), t.running(), MOMENTUM, EPS, &saved)
        .unwrap();
    let dy32 = uniform(&mut rng(901), d.elements(), -1.0, 1.0);
    let dy = upload(&dy32, shape);
    gpu().run(&[&fwd]);
    let (_, got_dx, got_dgamma, got_dbeta) = train_backward_run(&t, &saved, &dy, ALL);
    let got_saved = gpu().read_f32(&saved).unwrap();

    let (x, dy64) = (to_f64(&l.x), to_f64(&dy32));
    let (mut rm, mut rv) = (to_f64(&l.running_mean), to_f64(&l.running_var));
    let want = cpu::batch_norm_stats(&x, d, EPS as f64, MOMENTUM as f64, &mut rm, &mut rv);
    let s = &channel_stats(&x, d)[0];
    let g = sum_gamma(d.count());
    // The bounds of train_forward_matches_cpu for one channel (g = γ_16393 ≈ 1e-3).
    let mean_bound = (g + 6.0 * U32) * s.abs_mean;
    let e_v = ((g + 8.0 * U32) * s.var + mean_bound.powi(2)) / (s.var + EPS as f64) + U32;
    assert_within(
        "batch_norm_stats at the limit",
        &got_saved,
        &to_f32(&want),
        &[mean_bound, (e_v + 6.0 * U32) * want[1]],
    );
    // The gradients of a loss through the GPU's own statistics, under the bounds of
    // train_backward_matches_cpu, summarised: dβ within g·Σ|dy|, dγ within (g + 3u)·Σ|dy·x̂|.
    let saved64 = to_f64(&got_saved);
    let (want_dgamma, want_dbeta) = cpu::batch_norm_grad_reduce(&x, &dy64, &saved64, d);
    let xhat: Vec<f64> = x.iter().map(|v| (v - saved64[0]) * saved64[1]).collect();
    let abs_dy: f64 = dy64.iter().map(|v| v.abs()).sum();
    let abs_dy_xhat: f64 = dy64.iter().zip(&xhat).map(|(a, b)| (a * b).abs()).sum();
    assert_within(
        "batch_norm_grad_reduce at the limit",
        &[got_dgamma[0], got_dbeta[0]],
        &[want_dgamma[0] as f32, want_dbeta[0] as f32],
        &[(g + 4.0 * U32) * abs_dy_xhat, (g + U32) * abs_dy],
    );
    let want_dx = to_f32(&cpu::batch_norm_grad_input(
        &x,
        &dy64,
        &to_f64(&l.gamma),
        &saved64,
        &want_dgamma,
        &want_dbeta,
        d,
    ));
    let m = d.count() as f64;
    let k = (l.gamma[0] as f64 * saved64[1] / m).abs();
    let bound: Vec<f64> = (0..d.elements())
        .map(|i| {
            k * ((g + 12.0 * U32) * (abs_dy + xhat[i].abs() * abs_dy_xhat)
                + 12.0 * U32 * m * dy64[i].abs())
                + U32 * want_dx[i].abs() as f64
        })
        .collect();
    assert_within(
        "batch_norm_grad_input at the limit",
        &got_dx,
        &want_dx,
        &bound,
    );
    // And y, through the GPU's statistics: the normalisation's 4u plus the comparison's u.
    let want_y = to_f32(&cpu::batch_norm_normalize(
        &x,
        &saved64,
        &to_f64(&l.gamma),
        &to_f64(&l.beta),
        d,
    ));
    let y_bound: Vec<f64> = y_magnitude(&x, &saved64[..1], &saved64[1..], &l, d)
        .iter()
        .map(|v| 5.0 * U32 * v)
        .collect();
    assert_within(
        "batch_norm_normalize at the limit",
        &gpu().read_f32(&y).unwrap(),
        &want_y,
        &y_bound,
    );
}

/// One element past the limit, the train launchers refuse and name it; eval mode has no
/// channel sums and takes it.
#[test]
fn a_channel_past_the_size_limit_is_refused() {
    let shape = [MAX_CHANNEL_ELEMENTS + 1, 1];
    let (x, y, saved) = (zeros(&shape), zeros(&shape), zeros(&[2, 1]));
    let (gamma, beta, rm, rv) = (zeros(&[1]), zeros(&[1]), zeros(&[1]), zeros(&[1]));
    let t = BatchNormTensors {
        x: &x,
        gamma: &gamma,
        beta: &beta,
        y: &y,
    };
    let running = RunningStats {
        mean: &rm,
        var: &rv,
    };
    let err = batchnorm::train_forward(gpu(), &t, running, MOMENTUM, EPS, &saved).unwrap_err();
    assert!(
        err.to_string()
            .contains("M = N·H·W = 4194305 elements per channel exceeds the 4194304"),
        "{err}"
    );
    let grads = BatchNormGrads {
        dy: &y,
        dx: None,
        dgamma: Some(&gamma),
        dbeta: None,
    };
    let err = batchnorm::train_backward(gpu(), &x, &gamma, &saved, &grads).unwrap_err();
    assert!(err.to_string().contains("exceeds the 4194304"), "{err}");
    assert!(batchnorm::eval_forward(gpu(), &t, running, EPS).is_ok());
}

/// Training on one value per channel is refused, as PyTorch refuses it ("Expected more than
/// 1 value per channel when training"), for features and maps alike.
#[test]
fn train_mode_refuses_one_value_per_channel() {
    for shape in [&[1, 3][..], &[1, 4, 1, 1]] {
        let l = layer(shape, DType::F32, 1000);
        let t = LayerTensors::new(&l, shape, DType::F32);
        let y = zeros(shape);
        let c = dims(shape).c;
        let err = batchnorm::train_forward(
            gpu(),
            &t.forward(&y),
            t.running(),
            MOMENTUM,
            EPS,
            &zeros(&[2, c]),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains(
                "batch_norm_train_forward: train mode needs more than one value per channel"
            ) && err.to_string().contains("M = N·H·W = 1"),
            "{shape:?}: {err}"
        );
        // The same layer in eval mode runs.
        assert!(batchnorm::eval_forward(gpu(), &t.forward(&y), t.running(), EPS).is_ok());
    }
}

/// The channel sums are fixed-shape trees: two runs of the train forward and backward give
/// the same bits (the running statistics move, but the batch's statistics do not).
#[test]
fn train_is_deterministic() {
    let shape: &[usize] = &[8, 3, 48, 48];
    let l = layer(shape, DType::F32, 1100);
    let t = LayerTensors::new(&l, shape, DType::F32);
    let (y, saved) = (zeros(shape), zeros(&[2, 3]));
    let dy = upload(&uniform(&mut rng(1101), l.x.len(), -1.0, 1.0), shape);
    let fwd = batchnorm::train_forward(gpu(), &t.forward(&y), t.running(), MOMENTUM, EPS, &saved)
        .unwrap();
    let run = || {
        gpu().run(&[&fwd]);
        let (_, dx, dgamma, dbeta) = train_backward_run(&t, &saved, &dy, ALL);
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        (
            bits(gpu().read_f32(&saved).unwrap()),
            bits(gpu().read_f32(&y).unwrap()),
            bits(dx),
            bits(dgamma),
            bits(dbeta),
        )
    };
    assert!(run() == run(), "batch norm differs between two runs");
}

#[test]
fn batch_norm_launchers_reject_bad_arguments() {
    let shape: &[usize] = &[4, 3, 2, 2];
    let l = layer(shape, DType::F32, 1200);
    let t = LayerTensors::new(&l, shape, DType::F32);
    let (y, saved) = (zeros(shape), zeros(&[2, 3]));
    let train = |t: &BatchNormTensors, running, momentum, eps, saved: &Tensor| {
        batchnorm::train_forward(gpu(), t, running, momentum, eps, saved)
            .unwrap_err()
            .to_string()
    };
    let contains = |err: String, what: &str| assert!(err.contains(what), "{err}");

    contains(
        train(&t.forward(&y), t.running(), MOMENTUM, EPS, &zeros(&[3, 2])),
        "saved must be a F32 tensor of shape [2, 3]",
    );
    contains(
        train(&t.forward(&y), t.running(), 1.5, EPS, &saved),
        "momentum must lie in [0, 1], got 1.5",
    );
    contains(
        train(&t.forward(&y), t.running(), MOMENTUM, 0.0, &saved),
        "eps must be a positive number, got 0",
    );
    let rv16 = zeros_as(&[3], DType::F16);
    let running16 = RunningStats {
        mean: &t.running_mean,
        var: &rv16,
    };
    contains(
        train(&t.forward(&y), running16, MOMENTUM, EPS, &saved),
        "running var must be a F32 tensor of shape [3], got F16",
    );
    // f16 x with f32 γ, β and y.
    let x16 = zeros_as(shape, DType::F16);
    let mixed = BatchNormTensors {
        x: &x16,
        gamma: &t.gamma,
        beta: &t.beta,
        y: &y,
    };
    contains(
        train(&mixed, t.running(), MOMENTUM, EPS, &saved),
        "gamma must be a F16 tensor of shape [3], got F32",
    );
    // A rank-3 x.
    let x3 = zeros(&[4, 3, 4]);
    let rank3 = BatchNormTensors {
        x: &x3,
        gamma: &t.gamma,
        beta: &t.beta,
        y: &x3,
    };
    contains(
        batchnorm::eval_forward(gpu(), &rank3, t.running(), EPS)
            .unwrap_err()
            .to_string(),
        "x must be [N, C] or [N, C, H, W], got [4, 3, 4]",
    );
    // No gradient asked for, and a dγ of the activations' type under f16.
    let none = BatchNormGrads {
        dy: &y,
        dx: None,
        dgamma: None,
        dbeta: None,
    };
    contains(
        batchnorm::train_backward(gpu(), &t.x, &t.gamma, &saved, &none)
            .unwrap_err()
            .to_string(),
        "none of dx, dgamma and dbeta is asked for",
    );
    let dgamma16 = zeros_as(&[3], DType::F16);
    let wrong = BatchNormGrads {
        dy: &y,
        dx: None,
        dgamma: Some(&dgamma16),
        dbeta: None,
    };
    contains(
        batchnorm::train_backward(gpu(), &t.x, &t.gamma, &saved, &wrong)
            .unwrap_err()
            .to_string(),
        "dgamma must be a F32 tensor of shape [3], got F16",
    );
}

// ---- The tape ----

/// Pairs per batch of the tape tests: x holds 2B rows, the two branches of B pairs.
const B: usize = 4;
/// Wide enough that both labels' terms are active: rows of 16 tanh values are at most
/// 2·√16 = 8 apart.
const MARGIN: f32 = 8.0;

/// x [2B, …] of the tape tests: 2B maps of 4 channels, 2×2 (16 values per row), and 2B rows
/// of 16 features.
const TAPE_SHAPES: &[&[usize]] = &[&[2 * B, 4, 2, 2], &[2 * B, 16]];

fn tape_labels() -> Vec<PairLabel> {
    vec![
        PairLabel::Same,
        PairLabel::Different,
        PairLabel::Different,
        PairLabel::Same,
    ]
}

/// What a tape run gives: the loss, dx, dγ and dβ (empty in eval mode), and the running
/// statistics after the forward.
struct TapeRun<T> {
    loss: T,
    dx: Vec<T>,
    dgamma: Vec<T>,
    dbeta: Vec<T>,
    running_mean: Vec<T>,
    running_var: Vec<T>,
}

/// The tape's composition from the CPU references: batch_norm (with `l`'s running
/// statistics) → tanh → rows [2B, D] → the Euclidean distance of the first B rows to the
/// last B → the contrastive loss; and back. The tanh keeps dβ from vanishing: a distance is
/// blind to a shift common to both branches, so without it Σ dy, and dβ, would be 0.
fn cpu_tape<T: Real>(
    l: &Layer,
    shape: &[usize],
    mode: Mode,
    x: &[T],
    gamma: &[T],
    beta: &[T],
) -> TapeRun<T> {
    let d = dims(shape);
    let t = |v: &[f32]| -> Vec<T> { v.iter().map(|&a| T::from_f64(a as f64)).collect() };
    let (mut rm, mut rv) = (t(&l.running_mean), t(&l.running_var));
    let eps = T::from_f64(EPS as f64);
    let (y, saved) = match mode {
        Mode::Train => {
            let m = T::from_f64(MOMENTUM as f64);
            let saved = cpu::batch_norm_stats(x, d, eps, m, &mut rm, &mut rv);
            (cpu::batch_norm_normalize(x, &saved, gamma, beta, d), saved)
        }
        Mode::Eval => (
            cpu::batch_norm_eval_forward(x, &rm, &rv, gamma, beta, d, eps),
            Vec::new(),
        ),
    };
    let act = cpu_activation::tanh_forward(&y);
    let dim = d.elements() / (2 * B);
    let (a, b) = act.split_at(B * dim);
    let dist = cpu_distance::euclidean_forward(a, b, B, dim);
    let margin = T::from_f64(MARGIN as f64);
    let loss = cpu_loss::contrastive_loss_forward(&dist, &tape_labels(), margin);
    let dd = cpu_loss::contrastive_loss_backward(&dist, &tape_labels(), margin, T::one());
    let (da, db) = cpu_distance::euclidean_backward(a, b, &dist, &dd, B, dim);
    let dy = cpu_activation::tanh_backward(&act, &[da, db].concat());
    let (dx, dgamma, dbeta) = match mode {
        Mode::Train => {
            let (dgamma, dbeta) = cpu::batch_norm_grad_reduce(x, &dy, &saved, d);
            let dx = cpu::batch_norm_grad_input(x, &dy, gamma, &saved, &dgamma, &dbeta, d);
            (dx, dgamma, dbeta)
        }
        Mode::Eval => (
            cpu::batch_norm_eval_grad_input(&dy, gamma, &rv, d, eps),
            Vec::new(),
            Vec::new(),
        ),
    };
    TapeRun {
        loss,
        dx,
        dgamma,
        dbeta,
        running_mean: rm,
        running_var: rv,
    }
}

/// The tape: x (a value with a gradient, of `dtype`) → batch_norm → tanh → to_f32 → reshape to
/// [2B, D] → split_rows → Euclidean distance → contrastive loss, forward and backward in one
/// submission. In train mode γ and β (of `dtype`, as the f16 weight copies under mixed
/// precision) take their f32 gradients in views of one flat buffer at 256-byte aligned
/// offsets, as the model's parameter layout places them; in eval mode they are constants.
/// Returns the run and the backward's entry points.
fn gpu_tape(
    l: &Layer,
    shape: &[usize],
    mode: Mode,
    dtype: DType,
    x_grad: bool,
) -> (TapeRun<f32>, Vec<&'static str>) {
    let g = gpu();
    let d = dims(shape);
    let mut tape = Tape::new(g);
    let dx = zeros_as(shape, dtype);
    let xv = tape
        .param(upload_as(&l.x, shape, dtype), x_grad.then(|| dx.clone()))
        .unwrap();
    let flat = zeros(&[128]);
    let (dgamma, dbeta) = (
        flat.view(0, &[d.c]).unwrap(),
        flat.view(64, &[d.c]).unwrap(),
    );
    let train = mode == Mode::Train;
    let gv = tape
        .param(
            upload_as(&l.gamma, &[d.c], dtype),
            train.then(|| dgamma.clone()),
        )
        .unwrap();
    let bv = tape
        .param(
            upload_as(&l.beta, &[d.c], dtype),
            train.then(|| dbeta.clone()),
        )
        .unwrap();
    let (rm, rv) = (
        upload(&l.running_mean, &[d.c]),
        upload(&l.running_var, &[d.c]),
    );
    let running = RunningStats {
        mean: &rm,
        var: &rv,
    };
    let y = tape
        .batch_norm(xv, gv, bv, running, mode, MOMENTUM, EPS)
        .unwrap();
    let y = tape.activation(y, Activation::Tanh).unwrap();
    let y = tape.to_f32(y).unwrap();
    let e = tape.reshape(y, &[2 * B, d.elements() / (2 * B)]).unwrap();
    let rows = tape.split_rows(e, 2).unwrap();
    let dist = tape
        .distance(Distance::Euclidean, rows[0], rows[1])
        .unwrap();
    let labels = PairLabel::upload(g, &tape_labels()).unwrap();
    let loss = tape.contrastive_loss(dist, &labels, MARGIN).unwrap();
    let backward = tape.backward(loss).unwrap();
    let kernels: Vec<_> = tape.forward_kernels().chain(backward.iter()).collect();
    g.run(&kernels);
    let entries = backward
        .iter()
        .flat_map(|k| k.dispatches().iter().map(|d| d.entry()))
        .collect();
    let read = |t: &Tensor| g.read_floats(t).unwrap();
    let run = TapeRun {
        loss: g.read_f32(tape.tensor(loss)).unwrap()[0],
        dx: if x_grad { read(&dx) } else { Vec::new() },
        dgamma: if train { read(&dgamma) } else { Vec::new() },
        dbeta: if train { read(&dbeta) } else { Vec::new() },
        running_mean: read(&rm),
        running_var: read(&rv),
    };
    (run, entries)
}

/// The largest |v|, which must not vanish for a relative comparison to mean anything.
fn scale_of(what: &str, v: &[f32]) -> f64 {
    let s = v.iter().fold(0.0f32, |m, g| m.max(g.abs())) as f64;
    assert!(s > 1e-3, "{what}: the gradients must not vanish");
    s
}

/// The tape's batch_norm in train and eval mode against the CPU composition in f32, and the
/// f64 composition against finite differences of its forward (x, γ, β in train mode; x in
/// eval mode). In train mode the running statistics move once; in eval mode they stay, bit
/// for bit.
#[test]
fn tape_batch_norm_matches_cpu_and_finite_differences() {
    for (seed, &shape) in TAPE_SHAPES.iter().enumerate() {
        for mode in [Mode::Train, Mode::Eval] {
            let what = format!("tape batch_norm {shape:?} {mode:?}");
            let d = dims(shape);
            // Distinct values: a constant channel (as `layer` draws one) has variance 0, where
            // x̂ moves by h/sqrt(eps) under a step h and the differences' truncation error grows
            // by that factor cubed.
            let l = fd_layer(shape, 1300 + seed as u64);
            let (got, entries) = gpu_tape(&l, shape, mode, DType::F32, true);
            let want = cpu_tape(&l, shape, mode, &l.x, &l.gamma, &l.beta);
            let want_entries: &[&str] = match mode {
                Mode::Train => &["batch_norm_grad_reduce", "batch_norm_grad_input"],
                Mode::Eval => &["batch_norm_eval_grad_input"],
            };
            assert!(entries.ends_with(want_entries), "{what}: {entries:?}");
            // Sums of at most 16 terms per step through four ops (a channel's sums over up
            // to 32 values): 1e-5 of the loss and 1e-4 of each gradient's largest entry are
            // hundreds of ulps, room for reordered sums compounding, far below a wrong term.
            assert!(
                (got.loss - want.loss).abs() <= 1e-5 * want.loss.abs().max(1.0),
                "{what}: loss {} vs CPU {}",
                got.loss,
                want.loss
            );
            for (name, g, w) in [
                ("dx", &got.dx, &want.dx),
                ("dgamma", &got.dgamma, &want.dgamma),
                ("dbeta", &got.dbeta, &want.dbeta),
            ] {
                if !w.is_empty() {
                    let s = scale_of(&what, w);
                    assert_close(&format!("{what} {name}"), g, w, 1e-4 * s, 0.0);
                }
            }
            match mode {
                // The running statistics as the stats tests bound them: a few ulps here.
                Mode::Train => {
                    assert_close(
                        &format!("{what} running mean"),
                        &got.running_mean,
                        &want.running_mean,
                        1e-6,
                        1e-5,
                    );
                    assert_close(
                        &format!("{what} running var"),
                        &got.running_var,
                        &want.running_var,
                        1e-6,
                        1e-5,
                    );
                }
                Mode::Eval => assert_eq!(
                    (&got.running_mean, &got.running_var),
                    (&l.running_mean, &l.running_var),
                    "{what}: eval mode moved the running statistics"
                ),
            }

            // The f64 composition against central differences of its forward.
            let x64 = to_f64(&l.x);
            let (gamma64, beta64) = (to_f64(&l.gamma), to_f64(&l.beta));
            let exact = cpu_tape(&l, shape, mode, &x64, &gamma64, &beta64);
            let params = [x64, gamma64, beta64].concat();
            let loss = |v: &[f64]| {
                let (x, rest) = v.split_at(d.elements());
                let (gamma, beta) = rest.split_at(d.c);
                cpu_tape(&l, shape, mode, x, gamma, beta).loss
            };
            let fd = finite_difference(loss, &params, FD_STEP);
            let (fd_dx, rest) = fd.split_at(d.elements());
            let (fd_dgamma, fd_dbeta) = rest.split_at(d.c);
            assert_matches_fd(&format!("cpu {what} dx"), &exact.dx, fd_dx);
            // And the GPU against the same differences (f32: 1e-4 of the largest, as above).
            assert_gpu_matches_fd(&format!("gpu {what} dx"), &got.dx, fd_dx, 1e-4);
            if mode == Mode::Train {
                assert_matches_fd(&format!("cpu {what} dgamma"), &exact.dgamma, fd_dgamma);
                assert_matches_fd(&format!("cpu {what} dbeta"), &exact.dbeta, fd_dbeta);
                assert_gpu_matches_fd(&format!("gpu {what} dgamma"), &got.dgamma, fd_dgamma, 1e-4);
                assert_gpu_matches_fd(&format!("gpu {what} dbeta"), &got.dbeta, fd_dbeta, 1e-4);
            }
        }
    }
}

/// A first layer (x needs no gradient) records batch_norm_grad_reduce alone, and writes the
/// bits the full backward writes for γ and β.
#[test]
fn tape_batch_norm_of_an_input_skips_its_gradient() {
    let shape = TAPE_SHAPES[0];
    let l = layer(shape, DType::F32, 1400);
    let (full, _) = gpu_tape(&l, shape, Mode::Train, DType::F32, true);
    let (first, entries) = gpu_tape(&l, shape, Mode::Train, DType::F32, false);
    assert!(
        entries.contains(&"batch_norm_grad_reduce") && !entries.contains(&"batch_norm_grad_input"),
        "{entries:?}"
    );
    assert_eq!((first.dgamma, first.dbeta), (full.dgamma, full.dbeta));
}

/// In eval mode γ and β are constants: asking for their gradients is refused, with the way
/// out in the message.
#[test]
fn tape_batch_norm_refuses_affine_gradients_in_eval_mode() {
    let g = gpu();
    let mut tape = Tape::new(g);
    let c = 3;
    let x = tape.input(zeros(&[4, c]));
    let gamma = tape.param(zeros(&[c]), Some(zeros(&[c]))).unwrap();
    let beta = tape.param(zeros(&[c]), None).unwrap();
    let (rm, rv) = (zeros(&[c]), zeros(&[c]));
    let running = RunningStats {
        mean: &rm,
        var: &rv,
    };
    let err = tape
        .batch_norm(x, gamma, beta, running, Mode::Eval, MOMENTUM, EPS)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("batch_norm: in eval mode γ and β get no gradient"),
        "{err}"
    );
    assert!(
        tape.ops().is_empty(),
        "nothing is recorded: {:?}",
        tape.ops()
    );
}

/// Mixed precision against f32 on the tape: x, γ, β, y and their gradients f16 (the weights'
/// f16 copies with f32 gradients), statistics and sums f32. Each f16 store rounds by at most
/// 2⁻¹¹ relative and a gradient here passes through a handful of them (x, γ, β, y, dy, dx),
/// so 1% of the largest gradient bounds it; reading an f16 buffer as f32 is off by far more.
#[test]
fn tape_batch_norm_mixed_precision_matches_f32() {
    if !has_f16() {
        return;
    }
    for (seed, &shape) in TAPE_SHAPES.iter().enumerate() {
        for mode in [Mode::Train, Mode::Eval] {
            let what = format!("tape batch_norm {shape:?} {mode:?} f16");
            // Inputs rounded to f16: the f32 run reads the same values.
            let l = layer(shape, DType::F16, 1500 + seed as u64);
            let (want, _) = gpu_tape(&l, shape, mode, DType::F32, true);
            let (got, _) = gpu_tape(&l, shape, mode, DType::F16, true);
            assert!(
                (got.loss - want.loss).abs() <= 1e-2 * want.loss.abs().max(1e-3),
                "{what}: loss {} vs f32 {}",
                got.loss,
                want.loss
            );
            for (name, g, w) in [
                ("dx", &got.dx, &want.dx),
                ("dgamma", &got.dgamma, &want.dgamma),
                ("dbeta", &got.dbeta, &want.dbeta),
            ] {
                if !w.is_empty() {
                    let s = scale_of(&what, w);
                    assert_close(&format!("{what} {name}"), g, w, 1e-2 * s, 0.0);
                }
            }
            // The statistics are taken in f32 of the same values: f32 rounding apart.
            assert_close(
                &format!("{what} running var"),
                &got.running_var,
                &want.running_var,
                1e-6,
                1e-5,
            );
        }
    }
}
