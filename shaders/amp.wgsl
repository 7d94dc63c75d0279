// amp.wgsl — mixed precision: casts between f32 and f16, and dynamic loss scaling
// (torch.cuda.amp.GradScaler's rules, kept on the device so that a step needs no readback).
//
// The launchers always compile this file with `half` = f16 (it needs SHADER_F16); as written
// it is an f32 copy of itself, which nothing uses.
//
// Entry points (binding 0 is always `p: AmpParams`):
//   cast_to_f16        src@1 [len] f32      -> dst_half@2 [len] f16   (round to nearest even)
//   cast_to_f32        src_half@3 [len] f16 -> dst@4 [len] f32        (exact)
//   amp_check_finite   src@1 [len] f32 (the scaled gradients) -> found_inf@5: set to 1 when
//                      any element is ±inf or NaN, left alone otherwise
//   amp_update_scale   found_inf@5, state@6 -> state@6, dst@4 [1] (the next backward's seed),
//                      found_inf@5 cleared: one invocation
//
// state [6] f32: [scale, good steps since the scale last changed, steps applied, steps
// skipped, the scale the last step used, 1 if the last step was skipped]. The counters are
// exact in f32 up to 2^24 steps. A step runs: backward seeded with `scale` (so every gradient
// holds scale·g) → amp_check_finite → the optimizer's `_amp` entry (optim.wgsl: skips the step
// when found_inf, else unscales) → amp_update_scale: after an overflow the scale is multiplied
// by `backoff` (and the step was skipped); after `interval` good steps in a row, by `growth`.
//
// found_inf is set with atomicOr by whichever invocations find a bad value: the result (0 or
// 1) does not depend on their order, so the step stays deterministic.

struct AmpParams {
    len: u32,
    growth: f32,    // 2, PyTorch's growth_factor
    backoff: f32,   // 0.5, its backoff_factor
    interval: u32,  // 2000, its growth_interval
}

alias half = f32;

@group(0) @binding(0) var<uniform> p: AmpParams;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst_half: array<half>;
@group(0) @binding(3) var<storage, read> src_half: array<half>;
@group(0) @binding(4) var<storage, read_write> dst: array<f32>;
@group(0) @binding(5) var<storage, read_write> found_inf: array<atomic<u32>>;
@group(0) @binding(6) var<storage, read_write> state: array<f32>;

const WG: u32 = 256u;

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

@compute @workgroup_size(WG)
fn cast_to_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if i >= p.len { return; }
    dst_half[i] = half(src[i]);
}

@compute @workgroup_size(WG)
fn cast_to_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if i >= p.len { return; }
    dst[i] = f32(src_half[i]);
}

// WGSL has no isinf/isnan (and may assume neither occurs in arithmetic): test the bits.
fn not_finite(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7f800000u) == 0x7f800000u;
}

@compute @workgroup_size(WG)
fn amp_check_finite(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if i >= p.len { return; }
    if not_finite(src[i]) { atomicOr(&found_inf[0], 1u); }
}

@compute @workgroup_size(1)
fn amp_update_scale() {
    let skipped = atomicExchange(&found_inf[0], 0u) != 0u;
    let scale = state[0];
    state[4] = scale;
    state[5] = select(0.0, 1.0, skipped);
    var next = scale;
    if skipped {
        next = scale * p.backoff;
        state[1] = 0.0;
        state[3] += 1.0;
    } else {
        state[2] += 1.0;
        let good = state[1] + 1.0;
        if good >= f32(p.interval) {
            next = scale * p.growth;
            state[1] = 0.0;
        } else {
            state[1] = good;
        }
    }
    // Growth stops at 2^100, far short of f32's range: a scale of inf would make every
    // gradient NaN.
    state[0] = min(next, 1.2676506e30);
    dst[0] = state[0];
}
