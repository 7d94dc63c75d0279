// optim.wgsl — optimizer steps over one flat parameter buffer, PyTorch semantics.
//
// Entry points (tensors are flat f32 arrays of `len` elements, updated in place):
//   sgd_step    0 sp: SgdParams,  1 params, 2 grads (read), 3 velocity
//   adam_step   0 ap: AdamParams, 1 params, 2 grads (read), 3 exp_avg (m), 4 exp_avg_sq (v)
//   adamw_step  0 ap: AdamParams, 1 params, 2 grads (read), 3 exp_avg (m), 4 exp_avg_sq (v)
//   sgd_step_amp, adam_step_amp, adamw_step_amp: the same under a loss scale (mixed
//               precision), with 5 amp_state and 6 found_inf of amp.wgsl's LossScaler:
//               grads hold scale·g, and a step whose gradients overflowed (found_inf ≠ 0)
//               changes nothing, as GradScaler skips optimizer.step(). Adam's t is then the
//               count of applied steps, kept on the device (amp_state[2]), and its bias
//               corrections are computed here rather than in the uniform.
//
// One invocation per parameter, WG per workgroup; the workgroups are folded into 2-D by
// grid_1d so tens of millions of parameters fit under the 65535-per-dimension limit, and the
// linear index wid.x + wid.y·nwg.x is bounds-checked because the fold can overshoot.
// Per-step values (learning rate from a schedule, the bias corrections of step t) live in
// the uniform, which the host rewrites in place between steps: no new bind group.

struct SgdParams {
    len: u32,
    lr: f32,
    momentum: f32,      // μ; 0 gives plain SGD (velocity then just holds the last gradient)
    weight_decay: f32,  // λ, L2: g ← g + λ·p
    nesterov: u32,      // 0 or 1
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

struct AdamParams {
    len: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,      // λ: L2 in adam_step, decoupled in adamw_step
    bias_correction1: f32,  // 1 − β1^t, from the host in f64 (t counts from 1)
    bias_correction2: f32,  // 1 − β2^t
}

// The two uniform types share binding 0 and the two state layouts share binding 3: each
// entry point statically uses only its own, which is all a pipeline's layout sees.
@group(0) @binding(0) var<uniform> sp: SgdParams;
@group(0) @binding(0) var<uniform> ap: AdamParams;
@group(0) @binding(1) var<storage, read_write> params: array<f32>;
@group(0) @binding(2) var<storage, read> grads: array<f32>;
@group(0) @binding(3) var<storage, read_write> velocity: array<f32>;
@group(0) @binding(3) var<storage, read_write> exp_avg: array<f32>;
@group(0) @binding(4) var<storage, read_write> exp_avg_sq: array<f32>;
@group(0) @binding(5) var<storage, read> amp_state: array<f32>;  // [scale, _, applied, …]
@group(0) @binding(6) var<storage, read> found_inf: array<u32>;

const WG: u32 = 256u;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

fn sgd_update(i: u32, grad: f32) {
    let p = params[i];
    var g = grad + sp.weight_decay * p;
    let v = sp.momentum * velocity[i] + g;  // PyTorch, dampening 0: v₁ = g₁ since v₀ = 0
    velocity[i] = v;
    if sp.nesterov != 0u {
        g = g + sp.momentum * v;
    } else {
        g = v;
    }
    params[i] = p - sp.lr * g;
}

@compute @workgroup_size(WG)
fn sgd_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if i >= sp.len { return; }
    sgd_update(i, grads[i]);
}

// The gradient of a step under a loss scale, unscaled (exact for the default scales, powers
// of two).
fn unscaled(i: u32) -> f32 {
    return grads[i] / amp_state[0];
}

@compute @workgroup_size(WG)
fn sgd_step_amp(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if i >= sp.len || found_inf[0] != 0u { return; }
    sgd_update(i, unscaled(i));
}

// The moment updates and the step shared by adam_step and adamw_step, in PyTorch's order:
// p − (lr / bc1)·m / (sqrt(v) / sqrt(bc2) + eps).
// bc1, bc2: 1 − β1^t, 1 − β2^t.
fn adam_update(i: u32, p: f32, g: f32, bc1: f32, bc2: f32) {
    let m = ap.beta1 * exp_avg[i] + (1.0 - ap.beta1) * g;
    let v = ap.beta2 * exp_avg_sq[i] + (1.0 - ap.beta2) * (g * g);
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    let denom = sqrt(v) / sqrt(bc2) + ap.eps;
    params[i] = p - (ap.lr / bc1) * (m / denom);
}

// Under a loss scale the step count lives on the device: t = applied steps + 1. pow is not
// correctly rounded in WGSL, and 1 − β2 cancels three digits at t = 1: the corrections
// carry ~1e-4 relative error there, far below the f16 gradients' own.
fn amp_bias_corrections() -> vec2<f32> {
    let t = amp_state[2] + 1.0;
    return vec2<f32>(1.0 - pow(ap.beta1, t), 1.0 - pow(ap.beta2, t));
}

@compute @workgroup_size(WG)
fn adam_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if i >= ap.len { return; }
    let p = params[i];
    adam_update(i, p, grads[i] + ap.weight_decay * p, ap.bias_correction1, ap.bias_correction2);
}

@compute @workgroup_size(WG)
fn adam_step_amp(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if i >= ap.len || found_inf[0] != 0u { return; }
    let p = params[i];
    let bc = amp_bias_corrections();
    adam_update(i, p, unscaled(i) + ap.weight_decay * p, bc.x, bc.y);
}

@compute @workgroup_size(WG)
fn adamw_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if i >= ap.len { return; }
    // Decoupled decay (Loshchilov & Hutter): shrink p itself, leave the moments out of it.
    adam_update(i, params[i] * (1.0 - ap.lr * ap.weight_decay), grads[i], ap.bias_correction1,
                ap.bias_correction2);
}

@compute @workgroup_size(WG)
fn adamw_step_amp(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if i >= ap.len || found_inf[0] != 0u { return; }
    let bc = amp_bias_corrections();
    adam_update(i, params[i] * (1.0 - ap.lr * ap.weight_decay), unscaled(i), bc.x, bc.y);
}
