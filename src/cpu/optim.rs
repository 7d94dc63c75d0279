//! Reference for `shaders/optim.wgsl`: one optimizer step over a flat parameter buffer, in
//! place, with PyTorch's semantics (`torch.optim.SGD` with dampening 0, `Adam`, `AdamW`).
//! All slices have the same length.

use super::Real;

/// One SGD step, for each i:
/// g ← g + λ·p;  v ← μ·v + g;  g ← nesterov ? g + μ·v : v;  p ← p − lr·g.
pub fn sgd_step<T: Real>(
    params: &mut [T],
    grads: &[T],
    velocity: &mut [T],
    lr: T,
    momentum: T,
    weight_decay: T,
    nesterov: bool,
) {
    for i in 0..params.len() {
        let p = params[i];
        let mut g = grads[i] + weight_decay * p;
        let v = momentum * velocity[i] + g;
        velocity[i] = v;
        g = if nesterov { g + momentum * v } else { v };
        params[i] = p - lr * g;
    }
}

/// The moment updates and step that Adam and AdamW share:
/// m ← β1·m + (1 − β1)·g;  v ← β2·v + (1 − β2)·g²;  p ← p − (lr / bc1)·m / (sqrt(v) / sqrt(bc2) + eps).
#[allow(clippy::too_many_arguments)]
fn adam_update<T: Real>(
    i: usize,
    p: T,
    g: T,
    params: &mut [T],
    exp_avg: &mut [T],
    exp_avg_sq: &mut [T],
    lr: T,
    beta1: T,
    beta2: T,
    eps: T,
    bias_correction1: T,
    bias_correction2: T,
) {
    let m = beta1 * exp_avg[i] + (T::one() - beta1) * g;
    let v = beta2 * exp_avg_sq[i] + (T::one() - beta2) * (g * g);
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    let denom = v.sqrt() / bias_correction2.sqrt() + eps;
    params[i] = p - (lr / bias_correction1) * (m / denom);
}

/// One Adam step with L2 weight decay (g ← g + λ·p), then [`adam_update`]'s moments and
/// step. `bias_correction1` = 1 − β1^t and `bias_correction2` = 1 − β2^t for step t ≥ 1.
#[allow(clippy::too_many_arguments)]
pub fn adam_step<T: Real>(
    params: &mut [T],
    grads: &[T],
    exp_avg: &mut [T],
    exp_avg_sq: &mut [T],
    lr: T,
    beta1: T,
    beta2: T,
    eps: T,
    weight_decay: T,
    bias_correction1: T,
    bias_correction2: T,
) {
    for i in 0..params.len() {
        let p = params[i];
        let g = grads[i] + weight_decay * p;
        adam_update(
            i,
            p,
            g,
            params,
            exp_avg,
            exp_avg_sq,
            lr,
            beta1,
            beta2,
            eps,
            bias_correction1,
            bias_correction2,
        );
    }
}

/// One AdamW step: decoupled decay p ← p·(1 − lr·λ), then the Adam moments and step on the
/// raw gradient (no L2 term).
#[allow(clippy::too_many_arguments)]
pub fn adamw_step<T: Real>(
    params: &mut [T],
    grads: &[T],
    exp_avg: &mut [T],
    exp_avg_sq: &mut [T],
    lr: T,
    beta1: T,
    beta2: T,
    eps: T,
    weight_decay: T,
    bias_correction1: T,
    bias_correction2: T,
) {
    for i in 0..params.len() {
        let p = params[i] * (T::one() - lr * weight_decay);
        adam_update(
            i,
            p,
            grads[i],
            params,
            exp_avg,
            exp_avg_sq,
            lr,
            beta1,
            beta2,
            eps,
            bias_correction1,
            bias_correction2,
        );
    }
}
