//! Launchers for `shaders/batchnorm.wgsl`: batch normalisation with PyTorch's
//! `nn.BatchNorm2d` (x [N, C, H, W], statistics per channel over N·H·W) and `nn.BatchNorm1d`
//! (x [N, C], per feature over N) semantics, affine (γ, β [C]), in train and eval mode
//! ([`Mode`](crate::vocab::Mode)), and its gradients.
//!
//! **Train mode** ([`train_forward`]) normalises with the batch's mean and biased variance,
//! writes them as `saved` = [mean; 1/sqrt(var + eps)] (f32 [2, C], for the backward), and in
//! the same pass moves the running statistics: r ← (1 − momentum)·r + momentum·s, the
//! variance unbiased (·M/(M − 1)). A channel of M = 1 element is refused, as PyTorch refuses
//! it. [`train_backward`] writes dβ = Σ dy and dγ = Σ dy·x̂ (f32, overwritten) and
//! dx = γ·invstd/M·(M·dy − Σdy − x̂·Σ(dy·x̂)), each only where asked for.
//! **Eval mode** ([`eval_forward`], [`eval_backward`]) normalises with the running statistics,
//! which it leaves as they are; its backward is dx = dy·γ/sqrt(running_var + eps) alone, the
//! gradient through a frozen layer (γ and β get none in eval mode).
//!
//! Both Siamese branches run through the tower as one batch of 2B images (3B for triplets),
//! so a BatchNorm's statistics are taken over all 2B images of a step, as in a PyTorch
//! Siamese model that concatenates its branches before the tower (and unlike one that calls
//! the tower once per branch, where each branch is normalised by its own statistics).
//!
//! x, y, dy, dx, γ and β share one float type: f32, or f16 under mixed precision (γ and β
//! then the f16 copies of the weights), which runs the shader's f16 variant. The running
//! statistics, `saved`, dγ and dβ are f32 tensors, and every sum is taken in f32. The running
//! statistics belong to the model: they are passed in ([`RunningStats`]), not parameters.
//!
//! The per-channel sums are one workgroup per channel with a fixed-shape tree, so results are
//! deterministic; a channel may hold at most [`MAX_CHANNEL_ELEMENTS`] elements (lavapipe's
//! loop limit; see the shader's header).

use bytemuck::{Pod, Zeroable};

use super::{expect, expect_f32, float_dtype, to_u32};
use crate::error::{Error, Result};
use crate::gpu::{DType, Dispatch, F16Variant, Gpu, Kernel, Shader, Tensor, grid_1d};

pub const SHADER: Shader = Shader::new("batchnorm", include_str!("../../shaders/batchnorm.wgsl"));

/// PyTorch's default eps, added to the variance under the square root.
pub const EPS: f32 = 1e-5;

/// PyTorch's default momentum of the running statistics.
pub const MOMENTUM: f32 = 0.1;

/// The most elements one channel's statistics may be taken over (M = N·H·W): 2^22, where
/// each invocation of `batch_norm_stats` loops 32,784 times, half lavapipe's limit of 65,535.
pub const MAX_CHANNEL_ELEMENTS: usize = 1 << 22;

/// Invocations per workgroup: the shader's `WG`.
const WG: u32 = 256;

/// The shader with x, y, dy, dx, γ and β of type `dtype`.
fn shader(dtype: DType) -> Shader {
    match dtype {
        DType::F16 => SHADER.with_f16(F16Variant {
            aliases: &["elem"],
            texels: false,
        }),
        _ => SHADER,
    }
}

/// A layer's running statistics, f32 [C] each, owned by the model: updated in place by the
/// train forward, read by the eval forward and backward.
#[derive(Debug, Clone, Copy)]
pub struct RunningStats<'a> {
    pub mean: &'a Tensor,
    pub var: &'a Tensor,
}

/// The forward's tensors: `y = x̂·γ + β`, x̂ being x normalised per channel.
pub struct BatchNormTensors<'a> {
    pub x: &'a Tensor,
    pub gamma: &'a Tensor,
    pub beta: &'a Tensor,
    pub y: &'a Tensor,
}

/// The train backward's tensors: the gradient `dy` of y, and each of dx, dγ and dβ where one
/// is wanted.
pub struct BatchNormGrads<'a> {
    pub dy: &'a Tensor,
    pub dx: Option<&'a Tensor>,
    pub dgamma: Option<&'a Tensor>,
    pub dbeta: Option<&'a Tensor>,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BatchNormParams {
    count: u32,
    total: u32,
    eps: f32,
    momentum: f32,
}

/// The sizes of one launch, as checked.
#[derive(Clone, Copy)]
struct Dims {
    c: usize,
    hw: usize,
    /// M = N·H·W.
    count: usize,
    total: usize,
}

/// Checks `x` (the data-side tensor: x, or dy for the eval backward): [N, C] or
/// [N, C, H, W], f32 or f16, non-empty, indexable in u32. Returns its sizes and type.
fn dims(op: &'static str, what: &str, x: &Tensor) -> Result<(Dims, DType)> {
    let dtype = float_dtype(op, what, x)?;
    let (n, c, hw) = match *x.shape() {
        [n, c] => (n, c, 1),
        [n, c, h, w] => (n, c, h * w),
        _ => {
            return Err(Error::Shape {
                op,
                detail: format!("{what} must be [N, C] or [N, C, H, W], got {:?}", x.shape()),
            });
        }
    };
    if x.is_empty() {
        return Err(Error::Shape {
            op,
            detail: format!("{what} must be non-empty, got {:?}", x.shape()),
        });
    }
    to_u32(op, &format!("{what}'s element count"), x.len())?;
    let d = Dims {
        c,
        hw,
        count: n * hw,
        total: x.len(),
    };
    Ok((d, dtype))
}

/// The shape of the statistics [`train_forward`] saves for [`train_backward`]: [2, C] (f32)
/// for an input `x` of C channels.
pub fn saved_shape(x: &Tensor) -> Result<[usize; 2]> {
    let (d, _) = dims("batch_norm", "x", x)?;
    Ok([2, d.c])
}

fn expect_running(op: &'static str, d: Dims, running: RunningStats) -> Result<()> {
    expect_f32(op, "running mean", running.mean, &[d.c])?;
    expect_f32(op, "running var", running.var, &[d.c])
}

/// eps must be positive (it keeps the square root of a zero variance away from 0).
fn check_eps(op: &'static str, eps: f32) -> Result<()> {
    if !(eps.is_finite() && eps > 0.0) {
        return Err(Error::Shape {
            op,
            detail: format!("eps must be a positive number, got {eps}"),
        });
    }
    Ok(())
}

/// The channel sums of train mode: M at least 2 (the unbiased variance divides by M − 1,
/// and PyTorch refuses training on one value per channel) and at most
/// [`MAX_CHANNEL_ELEMENTS`].
fn check_train_count(op: &'static str, d: Dims) -> Result<()> {
    if d.count < 2 {
        return Err(Error::Shape {
            op,
            detail: format!(
                "train mode needs more than one value per channel to take a variance, got \
                 M = N·H·W = {} (as PyTorch, which refuses it): train with a batch of at \
                 least 2, or run the layer in eval mode",
                d.count
            ),
        });
    }
    if d.count > MAX_CHANNEL_ELEMENTS {
        return Err(Error::Shape {
            op,
            detail: format!(
                "M = N·H·W = {} elements per channel exceeds the {MAX_CHANNEL_ELEMENTS} one \
                 workgroup reduces (lavapipe stops longer loops): use a smaller batch",
                d.count
            ),
        });
    }
    Ok(())
}

/// One dispatch of `entry`: one workgroup per channel (`per_channel`), else one invocation
/// per element of x.
#[allow(clippy::too_many_arguments)] // the entry, its sizes and scalars, and its bindings
fn dispatch(
    gpu: &Gpu,
    entry: &'static str,
    dtype: DType,
    d: Dims,
    eps: f32,
    momentum: f32,
    bindings: &[(u32, &Tensor)],
    per_channel: bool,
) -> Result<Dispatch> {
    let params = BatchNormParams {
        count: to_u32(entry, "M", d.count)?,
        total: to_u32(entry, "the element count", d.total)?,
        eps,
        momentum,
    };
    let groups = if per_channel {
        grid_1d(to_u32(entry, "C", d.c)?)
    } else {
        grid_1d(params.total.div_ceil(WG))
    };
    let constants = [("C", d.c as f64), ("HW", d.hw as f64)];
    gpu.dispatch(&shader(dtype), entry, &constants, &params, bindings, groups)
}

/// Train mode forward, two dispatches: `batch_norm_stats` writes `saved [2, C]` (f32: the
/// batch mean, then 1/sqrt(biased var + eps)) and moves `running` by `momentum` (the
/// variance unbiased); `batch_norm_normalize` writes `t.y = (x − mean)·invstd·γ + β`.
/// Refuses a channel of fewer than 2 or more than [`MAX_CHANNEL_ELEMENTS`] elements.
pub fn train_forward(
    gpu: &Gpu,
    t: &BatchNormTensors,
    running: RunningStats,
    momentum: f32,
    eps: f32,
    saved: &Tensor,
) -> Result<Kernel> {
    const OP: &str = "batch_norm_train_forward";
    let (d, dtype) = dims(OP, "x", t.x)?;
    check_train_count(OP, d)?;
    check_eps(OP, eps)?;
    if !(0.0..=1.0).contains(&momentum) {
        return Err(Error::Shape {
            op: OP,
            detail: format!("momentum must lie in [0, 1], got {momentum}"),
        });
    }
    expect(OP, "gamma", t.gamma, &[d.c], dtype)?;
    expect(OP, "beta", t.beta, &[d.c], dtype)?;
    expect(OP, "y", t.y, t.x.shape(), dtype)?;
    expect_running(OP, d, running)?;
    expect_f32(OP, "saved", saved, &[2, d.c])?;
    let stats = dispatch(
        gpu,
        "batch_norm_stats",
        dtype,
        d,
        eps,
        momentum,
        &[(1, t.x), (7, saved), (9, running.mean), (10, running.var)],
        true,
    )?;
    let normalize = dispatch(
        gpu,
        "batch_norm_normalize",
        dtype,
        d,
        eps,
        momentum,
        &[(1, t.x), (2, t.y), (3, t.gamma), (4, t.beta), (8, saved)],
        false,
    )?;
    Ok(Kernel::with_scratch(vec![stats, normalize], Vec::new()))
}

/// Eval mode forward: `t.y = (x − running.mean)/sqrt(running.var + eps)·γ + β`; the running
/// statistics are only read.
pub fn eval_forward(
    gpu: &Gpu,
    t: &BatchNormTensors,
    running: RunningStats,
    eps: f32,
) -> Result<Kernel> {
    const OP: &str = "batch_norm_eval_forward";
    let (d, dtype) = dims(OP, "x", t.x)?;
    check_eps(OP, eps)?;
    expect(OP, "gamma", t.gamma, &[d.c], dtype)?;
    expect(OP, "beta", t.beta, &[d.c], dtype)?;
    expect(OP, "y", t.y, t.x.shape(), dtype)?;
    expect_running(OP, d, running)?;
    Ok(Kernel::single(dispatch(
        gpu,
        OP,
        dtype,
        d,
        eps,
        0.0,
        &[
            (1, t.x),
            (2, t.y),
            (3, t.gamma),
            (4, t.beta),
            (11, running.mean),
            (12, running.var),
        ],
        false,
    )?))
}

/// Train mode backward from the forward's `x`, `gamma` and `saved`: `batch_norm_grad_reduce`
/// writes dβ = Σ dy and dγ = Σ dy·x̂ per channel (f32 [C]; into scratch where `grads` does
/// not ask for them, since dx needs both), then, if `grads.dx` is given,
/// `batch_norm_grad_input` writes dx = γ·invstd/M·(M·dy − Σdy − x̂·Σ(dy·x̂)). dy and dx have
/// x's shape and type.
pub fn train_backward(
    gpu: &Gpu,
    x: &Tensor,
    gamma: &Tensor,
    saved: &Tensor,
    grads: &BatchNormGrads,
) -> Result<Kernel> {
    const OP: &str = "batch_norm_train_backward";
    let (d, dtype) = dims(OP, "x", x)?;
    check_train_count(OP, d)?;
    expect(OP, "gamma", gamma, &[d.c], dtype)?;
    expect_f32(OP, "saved", saved, &[2, d.c])?;
    expect(OP, "dy", grads.dy, x.shape(), dtype)?;
    if let Some(dx) = grads.dx {
        expect(OP, "dx", dx, x.shape(), dtype)?;
    }
    for (what, g) in [("dgamma", grads.dgamma), ("dbeta", grads.dbeta)] {
        if let Some(g) = g {
            expect_f32(OP, what, g, &[d.c])?;
        }
    }
    if grads.dx.is_none() && grads.dgamma.is_none() && grads.dbeta.is_none() {
        return Err(Error::Shape {
            op: OP,
            detail: "none of dx, dgamma and dbeta is asked for".into(),
        });
    }
    let mut scratch = Vec::new();
    let mut sum_into = |g: Option<&Tensor>| -> Result<Tensor> {
        match g {
            Some(g) => Ok(g.clone()),
            None => {
                let t = gpu.zeros(&[d.c], DType::F32)?;
                scratch.push(t.clone());
                Ok(t)
            }
        }
    };
    let dgamma = sum_into(grads.dgamma)?;
    let dbeta = sum_into(grads.dbeta)?;
    let mut dispatches = vec![dispatch(
        gpu,
        "batch_norm_grad_reduce",
        dtype,
        d,
        0.0,
        0.0,
        &[
            (1, x),
            (5, grads.dy),
            (8, saved),
            (13, &dgamma),
            (14, &dbeta),
        ],
        true,
    )?];
    if let Some(dx) = grads.dx {
        dispatches.push(dispatch(
            gpu,
            "batch_norm_grad_input",
            dtype,
            d,
            0.0,
            0.0,
            &[
                (1, x),
                (3, gamma),
                (5, grads.dy),
                (6, dx),
                (8, saved),
                (15, &dgamma),
                (16, &dbeta),
            ],
            false,
        )?);
    }
    Ok(Kernel::with_scratch(dispatches, scratch))
}

/// Eval mode backward: `dx = dy·γ/sqrt(running.var + eps)`, dx of dy's shape and type (the
/// running statistics are constants, so this is the whole gradient of x).
pub fn eval_backward(
    gpu: &Gpu,
    dy: &Tensor,
    gamma: &Tensor,
    running: RunningStats,
    eps: f32,
    dx: &Tensor,
) -> Result<Kernel> {
    const OP: &str = "batch_norm_eval_backward";
    let (d, dtype) = dims(OP, "dy", dy)?;
    check_eps(OP, eps)?;
    expect(OP, "gamma", gamma, &[d.c], dtype)?;
    expect_running(OP, d, running)?;
    expect(OP, "dx", dx, dy.shape(), dtype)?;
    Ok(Kernel::single(dispatch(
        gpu,
        "batch_norm_eval_grad_input",
        dtype,
        d,
        eps,
        0.0,
        &[(3, gamma), (5, dy), (6, dx), (12, running.var)],
        false,
    )?))
}
