// batchnorm.wgsl — batch normalisation with PyTorch's nn.BatchNorm1d / nn.BatchNorm2d
// semantics (affine, running statistics tracked), train and eval mode, and its gradients,
// over tensors of type `elem`: f32, or f16 under mixed precision, where the launcher
// compiles the f16 variant (x, y, dy, dx and γ, β, the f16 copies of the weights, are then
// f16). Statistics, running statistics, the saved statistics, dγ and dβ are always f32, and
// every sum and product is computed in f32; an f16 y or dx is rounded once, when stored.
//
// Tensors are row-major: x is [N, C, H, W] (a statistic per channel over its M = N·H·W
// elements) or [N, C] (BatchNorm1d: per feature over N; H = W = 1). Element j of channel c,
// j = n·HW + s, sits at (n·C + c)·HW + s.
//
// Entry points (binding 0 is always `p: BatchNormParams`; γ, β, the running statistics, dγ
// and dβ are [C]; `saved` is [2, C] f32: the batch mean in row 0, the inverse standard
// deviation 1/sqrt(var + eps) in row 1):
//   train mode, forward (the two in this order):
//   batch_norm_stats        x                              ->  saved_out,
//                           running_mean_io, running_var_io updated in place:
//                           r ← (1 − momentum)·r + momentum·batch statistic, with the
//                           unbiased variance Σ(x − mean)²/(M − 1) (PyTorch's rule)
//   batch_norm_normalize    x, saved, gamma, beta          ->  y
//                           y = (x − mean)·invstd·γ + β
//   train mode, backward (the two in this order; the second only where dx is wanted):
//   batch_norm_grad_reduce  x, dy, saved                   ->  dbeta_out = Σ dy,
//                                                              dgamma_out = Σ dy·x̂
//   batch_norm_grad_input   x, dy, gamma, saved,
//                           dgamma, dbeta (those sums)     ->  dx
//                           dx = γ·invstd/M · (M·dy − Σdy − x̂·Σ(dy·x̂)), x̂ = (x − mean)·invstd
//   eval mode (the running statistics only read):
//   batch_norm_eval_forward     x, running_mean, running_var, gamma, beta  ->  y
//                           y = (x − running_mean)·inverseSqrt(running_var + eps)·γ + β
//   batch_norm_eval_grad_input  dy, gamma, running_var     ->  dx = dy·γ·inverseSqrt(running_var + eps)
//
// The per-channel entries (stats, grad_reduce) run one workgroup of WG = 256 invocations per
// channel: invocation `lid` walks the channel's elements lid, lid + WG, … in order, and the
// 256 partial sums are added by a fixed-shape tree in workgroup memory. No atomics (WGSL has
// no float ones) and one order on every run, so results are bit-reproducible on one adapter.
// The elementwise entries run one invocation per element (grid folded into two dimensions
// past 65535 workgroups, see grid_1d in Rust; the linear index is bounds-checked).
//
// lavapipe stops an invocation's loops after 65,535 iterations in all. batch_norm_stats
// walks the channel twice, ⌈M/WG⌉ iterations each, plus two trees of log2(WG) = 8 levels;
// batch_norm_grad_reduce walks it once. The launchers refuse M > 2^22 = 4,194,304 elements
// per channel (ops::batchnorm::MAX_CHANNEL_ELEMENTS), where the stats entry loops
// 2·16,384 + 16 = 32,784 times: half the limit. Larger channels would exceed lavapipe's
// 128 MiB storage binding anyway from C = 8 on in f32 (8·2^22·4 bytes), 16 in f16.
//
// The variance is computed in two passes, the mean first, then Σ(x − mean)². The one-pass
// E[x²] − mean² cancels catastrophically when |mean| ≫ std (activations after a ReLU, or a
// channel with an offset): its relative error is about u·mean²/var, 6% for mean/std = 1000.
// In two passes the error of the computed mean enters Σ(x − mean)² only squared
// (Σ(x − m)² = Σ(x − μ)² + M·(μ − m)²), so the variance is accurate to the rounding of its
// own sum. Welford's update (with Chan's rule to merge the tree's partials) would read x once
// instead of twice, but divides per element; the second read is cheaper, and plain sums keep
// the reference a loop-for-loop mirror.

struct BatchNormParams {
    count: u32,     // M = N·HW, elements per channel
    total: u32,     // N·C·HW, elements of x
    eps: f32,
    momentum: f32,
}

// The channel count and the plane size are pipeline constants (one pipeline per layer
// shape): the index arithmetic divides by them, which a CPU (lavapipe) does lane by lane
// for a runtime divisor but as a multiply and a shift for a constant one.
override C: u32;
override HW: u32;

const WG: u32 = 256u;  // invocations per workgroup (a power of 2, for the trees)

alias elem = f32;

@group(0) @binding(0) var<uniform> p: BatchNormParams;
@group(0) @binding(1) var<storage, read> x: array<elem>;
@group(0) @binding(2) var<storage, read_write> y: array<elem>;
@group(0) @binding(3) var<storage, read> gamma: array<elem>;
@group(0) @binding(4) var<storage, read> beta: array<elem>;
@group(0) @binding(5) var<storage, read> dy: array<elem>;
@group(0) @binding(6) var<storage, read_write> dx: array<elem>;
@group(0) @binding(7) var<storage, read_write> saved_out: array<f32>;
@group(0) @binding(8) var<storage, read> saved: array<f32>;
@group(0) @binding(9) var<storage, read_write> running_mean_io: array<f32>;
@group(0) @binding(10) var<storage, read_write> running_var_io: array<f32>;
@group(0) @binding(11) var<storage, read> running_mean: array<f32>;
@group(0) @binding(12) var<storage, read> running_var: array<f32>;
@group(0) @binding(13) var<storage, read_write> dgamma_out: array<f32>;
@group(0) @binding(14) var<storage, read_write> dbeta_out: array<f32>;
@group(0) @binding(15) var<storage, read> dgamma: array<f32>;
@group(0) @binding(16) var<storage, read> dbeta: array<f32>;

var<workgroup> partial: array<f32, WG>;
var<workgroup> partial2: array<vec2<f32>, WG>;

// The index in x of element j of channel c.
fn element(c: u32, j: u32) -> u32 {
    let n = j / HW;
    return (n * C + c) * HW + (j - n * HW);
}

// The channel of x's element i.
fn channel(i: u32) -> u32 {
    return (i / HW) % C;
}

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

// Sums `s` over the workgroup; every invocation gets the total. The tree's shape depends
// only on WG, so the order of additions is fixed. The last barrier lets every invocation
// read the total before a second call overwrites `partial`.
fn workgroup_sum(lid: u32, s: f32) -> f32 {
    partial[lid] = s;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if lid < stride { partial[lid] += partial[lid + stride]; }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

// workgroup_sum of two sums at once, in the same order.
fn workgroup_sum2(lid: u32, s: vec2<f32>) -> vec2<f32> {
    partial2[lid] = s;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if lid < stride { partial2[lid] += partial2[lid + stride]; }
        workgroupBarrier();
    }
    return partial2[0];
}

@compute @workgroup_size(WG)
fn batch_norm_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    // The same for the whole workgroup, so returning keeps the barriers uniform.
    let c = wid.x + wid.y * nwg.x;
    if c >= C { return; }
    let m = f32(p.count);
    var s = 0.0;
    for (var j = lid; j < p.count; j += WG) {
        s += f32(x[element(c, j)]);
    }
    let mean = workgroup_sum(lid, s) / m;
    var q = 0.0;
    for (var j = lid; j < p.count; j += WG) {
        let d = f32(x[element(c, j)]) - mean;
        q += d * d;
    }
    let squares = workgroup_sum(lid, q);
    if lid == 0u {
        saved_out[c] = mean;
        saved_out[C + c] = inverseSqrt(squares / m + p.eps);
        // The launcher refuses M < 2, so M − 1 > 0.
        let unbiased = squares / f32(p.count - 1u);
        let keep = 1.0 - p.momentum;
        running_mean_io[c] = keep * running_mean_io[c] + p.momentum * mean;
        running_var_io[c] = keep * running_var_io[c] + p.momentum * unbiased;
    }
}

// ((x − mean)·invstd)·γ + β: x − mean first, so that a channel's offset cancels exactly
// (Sterbenz) rather than being folded into a shift β − mean·γ·invstd, where it would leave
// u·|mean|·invstd·|γ| of error.
fn affine(v: f32, c: u32, mean: f32, invstd: f32) -> elem {
    return elem((v - mean) * invstd * f32(gamma[c]) + f32(beta[c]));
}

@compute @workgroup_size(WG)
fn batch_norm_normalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if i >= p.total { return; }
    let c = channel(i);
    y[i] = affine(f32(x[i]), c, saved[c], saved[C + c]);
}

@compute @workgroup_size(WG)
fn batch_norm_eval_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if i >= p.total { return; }
    let c = channel(i);
    y[i] = affine(f32(x[i]), c, running_mean[c], inverseSqrt(running_var[c] + p.eps));
}

@compute @workgroup_size(WG)
fn batch_norm_grad_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let c = wid.x + wid.y * nwg.x;
    if c >= C { return; }
    let mean = saved[c];
    let invstd = saved[C + c];
    // (Σ dy, Σ dy·x̂), x̂ recomputed from x as the forward computed it.
    var s = vec2<f32>(0.0);
    for (var j = lid; j < p.count; j += WG) {
        let i = element(c, j);
        let g = f32(dy[i]);
        let xhat = (f32(x[i]) - mean) * invstd;
        s += vec2<f32>(g, g * xhat);
    }
    let total = workgroup_sum2(lid, s);
    if lid == 0u {
        dbeta_out[c] = total.x;
        dgamma_out[c] = total.y;
    }
}

@compute @workgroup_size(WG)
fn batch_norm_grad_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if i >= p.total { return; }
    let c = channel(i);
    let invstd = saved[C + c];
    let xhat = (f32(x[i]) - saved[c]) * invstd;
    let m = f32(p.count);
    let k = f32(gamma[c]) * invstd / m;
    dx[i] = elem(k * (m * f32(dy[i]) - dbeta[c] - xhat * dgamma[c]));
}

@compute @workgroup_size(WG)
fn batch_norm_eval_grad_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                              @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if i >= p.total { return; }
    let c = channel(i);
    dx[i] = elem(f32(dy[i]) * (f32(gamma[c]) * inverseSqrt(running_var[c] + p.eps)));
}
