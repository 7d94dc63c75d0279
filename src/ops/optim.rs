//! Launchers for `shaders/optim.wgsl`: SGD (momentum, Nesterov, L2 weight decay), Adam (L2
//! weight decay) and AdamW (decoupled weight decay), PyTorch semantics, as one dispatch over
//! a flat parameter buffer updated in place.
//!
//! A launcher builds the kernel once ([`sgd`], [`adam`], [`adamw`]); per-step values (the
//! learning rate of a schedule, Adam's step count t) are then rewritten in the kernel's
//! uniform with [`SgdStep::set_lr`] / [`AdamStep::set_step`], with no new pipeline, buffer
//! or bind group. The rewrite is queued before the next submission, so record one optimizer
//! step per submission (as a training step does) when the values change between steps.
//!
//! Under mixed precision a launcher takes the run's [`LossScaler`]: its `_amp` entry
//! unscales the gradients and skips a step whose gradients overflowed.
//!
//! Invalid hyperparameters (those PyTorch rejects) are reported as [`Error::Shape`], the
//! crate's error for arguments a launcher cannot accept.

use bytemuck::{Pod, Zeroable};

use super::amp::LossScaler;
use super::{expect_f32, expect_rank, to_u32};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel, Shader, Tensor, grid_1d};

pub const SHADER: Shader = Shader::new("optim", include_str!("../../shaders/optim.wgsl"));

/// Invocations per workgroup (`WG` in the shader).
const WG: u32 = 256;

/// `torch.optim.SGD` with dampening 0: g ← g + λ·p; v ← μ·v + g;
/// g ← nesterov ? g + μ·v : v; p ← p − lr·g. With μ = 0 this is plain SGD.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sgd {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

/// `torch.optim.Adam` / `AdamW` hyperparameters. `weight_decay` is an L2 term added to the
/// gradient under [`adam`] and a decoupled shrink of the parameters under [`adamw`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adam {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for Adam {
    /// PyTorch's defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, no weight decay.
    fn default() -> Adam {
        Adam {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct SgdParams {
    len: u32,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    nesterov: u32,
    _pad: [u32; 3],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct AdamParams {
    len: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bias_correction1: f32,
    bias_correction2: f32,
}

fn invalid(op: &'static str, detail: String) -> Error {
    Error::Shape { op, detail }
}

fn check_lr(op: &'static str, lr: f32) -> Result<()> {
    if !(lr.is_finite() && lr >= 0.0) {
        return Err(invalid(
            op,
            format!("learning rate must be finite and >= 0, got {lr}"),
        ));
    }
    Ok(())
}

fn check_nonnegative(op: &'static str, what: &str, v: f32) -> Result<()> {
    if !(v.is_finite() && v >= 0.0) {
        return Err(invalid(
            op,
            format!("{what} must be finite and >= 0, got {v}"),
        ));
    }
    Ok(())
}

/// `params` must be a non-empty f32 `[N]`; every state tensor the same. Returns N as u32.
fn check_buffers(op: &'static str, params: &Tensor, others: &[(&str, &Tensor)]) -> Result<u32> {
    let n = expect_rank(op, "params", params, 1)?[0];
    for &(what, t) in others {
        expect_f32(op, what, t, &[n])?;
    }
    to_u32(op, "the parameter count", n)
}

/// `(1 − β1^t, 1 − β2^t)`, computed in f64 and rounded once, for step `t ≥ 1`.
pub fn bias_corrections(beta1: f32, beta2: f32, t: u32) -> (f32, f32) {
    let c = |beta: f32| (1.0 - (beta as f64).powf(t as f64)) as f32;
    (c(beta1), c(beta2))
}

/// A built SGD step: record [`SgdStep::kernel`] once per training step.
#[derive(Debug)]
pub struct SgdStep {
    kernel: Kernel,
    params: SgdParams,
}

impl SgdStep {
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// The learning rate the next recorded step uses.
    pub fn lr(&self) -> f32 {
        self.params.lr
    }

    /// Sets the learning rate of the following steps (e.g. from a schedule).
    pub fn set_lr(&mut self, gpu: &Gpu, lr: f32) -> Result<()> {
        check_lr("sgd_step", lr)?;
        self.params.lr = lr;
        self.kernel.set_params(gpu, &self.params);
        Ok(())
    }
}

/// The dispatch of `entry` (or, with a loss scale, its `_amp` entry `amp_entry`) over `len`
/// parameters, binding the scaler's state where it takes part.
#[allow(clippy::too_many_arguments)]
fn step_dispatch<P: bytemuck::Pod>(
    gpu: &Gpu,
    entry: &'static str,
    amp_entry: &'static str,
    scale: Option<&LossScaler>,
    uniform: &P,
    buffers: &[(u32, &Tensor)],
    len: u32,
) -> Result<Kernel> {
    let mut bindings = buffers.to_vec();
    let entry = match scale {
        Some(s) => {
            bindings.extend([(5, s.state()), (6, s.found_inf())]);
            amp_entry
        }
        None => entry,
    };
    Ok(Kernel::single(gpu.dispatch(
        &SHADER,
        entry,
        &[],
        uniform,
        &bindings,
        grid_1d(len.div_ceil(WG)),
    )?))
}

/// Builds an SGD step over `params [N]` with `grads [N]` and the momentum buffer
/// `velocity [N]` (zeros before the first step; bound even with μ = 0, when it just holds
/// the last gradient); under mixed precision, with the run's loss `scale`.
pub fn sgd(
    gpu: &Gpu,
    cfg: &Sgd,
    params: &Tensor,
    grads: &Tensor,
    velocity: &Tensor,
    scale: Option<&LossScaler>,
) -> Result<SgdStep> {
    const OP: &str = "sgd_step";
    let len = check_buffers(OP, params, &[("grads", grads), ("velocity", velocity)])?;
    check_lr(OP, cfg.lr)?;
    check_nonnegative(OP, "momentum", cfg.momentum)?;
    check_nonnegative(OP, "weight_decay", cfg.weight_decay)?;
    if cfg.nesterov && cfg.momentum <= 0.0 {
        return Err(invalid(
            OP,
            "Nesterov momentum requires momentum > 0".into(),
        ));
    }
    let uniform = SgdParams {
        len,
        lr: cfg.lr,
        momentum: cfg.momentum,
        weight_decay: cfg.weight_decay,
        nesterov: cfg.nesterov as u32,
        _pad: [0; 3],
    };
    let kernel = step_dispatch(
        gpu,
        OP,
        "sgd_step_amp",
        scale,
        &uniform,
        &[(1, params), (2, grads), (3, velocity)],
        len,
    )?;
    Ok(SgdStep {
        kernel,
        params: uniform,
    })
}

/// A built Adam or AdamW step, ready for step t = 1 at the configured learning rate.
#[derive(Debug)]
pub struct AdamStep {
    kernel: Kernel,
    params: AdamParams,
    op: &'static str,
    beta1: f32,
    beta2: f32,
    t: u32,
}

impl AdamStep {
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// The step count t (from 1) the next recorded step is corrected for.
    pub fn t(&self) -> u32 {
        self.t
    }

    /// The learning rate the next recorded step uses.
    pub fn lr(&self) -> f32 {
        self.params.lr
    }

    /// Prepares the kernel for step `t` (counting from 1, PyTorch's `state['step']` after
    /// its increment) at learning rate `lr`: the bias corrections 1 − β^t are computed here.
    pub fn set_step(&mut self, gpu: &Gpu, lr: f32, t: u32) -> Result<()> {
        check_lr(self.op, lr)?;
        if t == 0 {
            return Err(invalid(
                self.op,
                "the step count t starts at 1 (1 − β^0 = 0 would divide by zero)".into(),
            ));
        }
        let (bc1, bc2) = bias_corrections(self.beta1, self.beta2, t);
        self.params.lr = lr;
        self.params.bias_correction1 = bc1;
        self.params.bias_correction2 = bc2;
        self.t = t;
        self.kernel.set_params(gpu, &self.params);
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn adam_kernel(
    gpu: &Gpu,
    op: &'static str,
    cfg: &Adam,
    params: &Tensor,
    grads: &Tensor,
    exp_avg: &Tensor,
    exp_avg_sq: &Tensor,
    scale: Option<&LossScaler>,
) -> Result<AdamStep> {
    let len = check_buffers(
        op,
        params,
        &[
            ("grads", grads),
            ("exp_avg", exp_avg),
            ("exp_avg_sq", exp_avg_sq),
        ],
    )?;
    check_lr(op, cfg.lr)?;
    for (what, beta) in [("beta1", cfg.beta1), ("beta2", cfg.beta2)] {
        if !(0.0..1.0).contains(&beta) {
            return Err(invalid(op, format!("{what} must be in [0, 1), got {beta}")));
        }
    }
    check_nonnegative(op, "eps", cfg.eps)?;
    check_nonnegative(op, "weight_decay", cfg.weight_decay)?;
    let (bc1, bc2) = bias_corrections(cfg.beta1, cfg.beta2, 1);
    let uniform = AdamParams {
        len,
        lr: cfg.lr,
        beta1: cfg.beta1,
        beta2: cfg.beta2,
        eps: cfg.eps,
        weight_decay: cfg.weight_decay,
        bias_correction1: bc1,
        bias_correction2: bc2,
    };
    let amp_entry = if op == "adam_step" {
        "adam_step_amp"
    } else {
        "adamw_step_amp"
    };
    let kernel = step_dispatch(
        gpu,
        op,
        amp_entry,
        scale,
        &uniform,
        &[(1, params), (2, grads), (3, exp_avg), (4, exp_avg_sq)],
        len,
    )?;
    Ok(AdamStep {
        kernel,
        params: uniform,
        op,
        beta1: cfg.beta1,
        beta2: cfg.beta2,
        t: 1,
    })
}

/// Builds an Adam step (L2 weight decay g ← g + λ·p) over `params [N]` with `grads [N]` and
/// the moment buffers `exp_avg [N]`, `exp_avg_sq [N]` (zeros before the first step); under
/// mixed precision, with the run's loss `scale` (the step count t is then the scaler's count
/// of applied steps, and [`AdamStep::set_step`]'s t is not used).
pub fn adam(
    gpu: &Gpu,
    cfg: &Adam,
    params: &Tensor,
    grads: &Tensor,
    exp_avg: &Tensor,
    exp_avg_sq: &Tensor,
    scale: Option<&LossScaler>,
) -> Result<AdamStep> {
    adam_kernel(
        gpu,
        "adam_step",
        cfg,
        params,
        grads,
        exp_avg,
        exp_avg_sq,
        scale,
    )
}

/// Builds an AdamW step (decoupled decay p ← p·(1 − lr·λ), then Adam without the L2 term);
/// same buffers and loss scale as [`adam`].
pub fn adamw(
    gpu: &Gpu,
    cfg: &Adam,
    params: &Tensor,
    grads: &Tensor,
    exp_avg: &Tensor,
    exp_avg_sq: &Tensor,
    scale: Option<&LossScaler>,
) -> Result<AdamStep> {
    adam_kernel(
        gpu,
        "adamw_step",
        cfg,
        params,
        grads,
        exp_avg,
        exp_avg_sq,
        scale,
    )
}
