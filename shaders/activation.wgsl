// activation.wgsl — elementwise activations and their gradients, over tensors of any shape
// (seen as flat arrays of `len` elements of type `elem`: f32, or f16 under mixed precision,
// where the launcher compiles the f16 variant; sigmoid and tanh compute in f32 either way).
//
// Entry points (binding 0 is always `p: ElementwiseParams`; every tensor has `len` elements,
// any shape, row-major):
//   relu_forward       x               ->  y     y = max(x, 0)
//   relu_backward      saved = x, dy   ->  dx    dx = dy·[x > 0]      (takes the forward INPUT)
//   sigmoid_forward    x               ->  y     y = 1 / (1 + e^−x)
//   sigmoid_backward   saved = y, dy   ->  dx    dx = dy·y·(1 − y)    (takes the forward OUTPUT)
//   tanh_forward       x               ->  y     y = tanh(x)
//   tanh_backward      saved = y, dy   ->  dx    dx = dy·(1 − y²)     (takes the forward OUTPUT)
//   accumulate_grad    dy              ->  dx    dx += dy   (the tape sums the gradients of a
//                                                           value that feeds several ops)
// The sigmoid and tanh backwards read y rather than x: their derivatives are cheaper in y,
// and the tape keeps y anyway for the next layer.
//
// One invocation per element. Tensors reach tens of millions of elements (1024·32·24·24 =
// 18.9M > 65535 workgroups of 256), so the workgroup grid is folded into two dimensions
// (grid_1d in Rust); the linear index is rebuilt from wid.x + wid.y·nwg.x and
// bounds-checked, since the fold can overshoot.

struct ElementwiseParams {
    len: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

alias elem = f32;

@group(0) @binding(0) var<uniform> p: ElementwiseParams;
@group(0) @binding(1) var<storage, read> x: array<elem>;
@group(0) @binding(2) var<storage, read_write> y: array<elem>;
@group(0) @binding(3) var<storage, read> saved: array<elem>;
@group(0) @binding(4) var<storage, read> dy: array<elem>;
@group(0) @binding(5) var<storage, read_write> dx: array<elem>;

override WG: u32 = 256u;  // invocations per workgroup

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

@compute @workgroup_size(WG)
fn relu_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if i >= p.len { return; }
    y[i] = max(x[i], elem(0.0));
}

@compute @workgroup_size(WG)
fn relu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if i >= p.len { return; }
    // The gradient at x = 0 is taken as 0 (PyTorch's choice).
    dx[i] = select(elem(0.0), dy[i], saved[i] > elem(0.0));
}

@compute @workgroup_size(WG)
fn sigmoid_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if i >= p.len { return; }
    let v = f32(x[i]);
    // e = e^−|v| ∈ (0, 1] never overflows, and 1 + e ≥ 1 never cancels: 1/(1 + e) for
    // v ≥ 0 and e/(1 + e) for v < 0 are accurate for every finite v (the naive
    // 1/(1 + e^−v) overflows e^−v for v < −88).
    let e = exp(-abs(v));
    let r = 1.0 / (1.0 + e);
    y[i] = elem(select(e * r, r, v >= 0.0));
}

@compute @workgroup_size(WG)
fn sigmoid_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if i >= p.len { return; }
    let s = f32(saved[i]);
    dx[i] = elem(f32(dy[i]) * s * (1.0 - s));
}

// tanh with a few ulps of relative error everywhere. The builtin is not used: WGSL only
// promises the accuracy of sinh/cosh, lavapipe evaluates (e^2x − 1)/(e^2x + 1), which
// cancels near 0 (tanh(1e-4) is off in the fourth digit, tiny x give 0), and some drivers
// return inf/inf = NaN for large |x|. This is Cephes' tanhf: an odd polynomial below 0.625,
// and 1 − 2/(e^2|x| + 1) above, where the subtraction cannot cancel (the result is ≥ 0.55).
fn stable_tanh(v: f32) -> f32 {
    let a = abs(v);
    if a >= 0.625 {
        // Past |x| = 9.1 the result rounds to 1 in f32; clamping keeps e^2|x| finite.
        let e = exp(2.0 * min(a, 15.0));
        return sign(v) * (1.0 - 2.0 / (e + 1.0));
    }
    let z = v * v;
    let q = (((-5.70498872745e-3 * z + 2.06390887954e-2) * z - 5.37397155531e-2) * z
             + 1.33314422036e-1) * z - 3.33332819422e-1;
    return q * z * v + v;
}

@compute @workgroup_size(WG)
fn tanh_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if i >= p.len { return; }
    y[i] = elem(stable_tanh(f32(x[i])));
}

@compute @workgroup_size(WG)
fn tanh_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if i >= p.len { return; }
    let t = f32(saved[i]);
    dx[i] = elem(f32(dy[i]) * (1.0 - t * t));
}

@compute @workgroup_size(WG)
fn accumulate_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if i >= p.len { return; }
    dx[i] += dy[i];
}
