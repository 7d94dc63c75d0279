// normalize.wgsl — row-wise L2 normalisation (PyTorch's F.normalize(x, p=2, dim=1,
// eps=1e-12)) and its gradient.
//
// Entry points (binding 0 is always `p: NormalizeParams`; tensors row-major f32):
//   l2_normalize_forward   x [B, D]                          ->  y_out [B, D], norms_out [B]
//   l2_normalize_backward  y [B, D], norms [B], dy [B, D]    ->  dx [B, D]
// norms holds the clamped norm max(‖x_b‖₂, EPS) of each row, which is all the backward
// needs besides y.
//
//   forward:   y = x / max(‖x‖, EPS)
//   backward:  dx = (dy − y·⟨y, dy⟩) / norm   where norm > EPS (the Jacobian of x/‖x‖),
//              dx = dy / EPS                  where the clamp is active (norm == EPS): there
//              y = x/EPS is linear in x, and this is also what PyTorch's autograd gives.
//
// One workgroup per row (folded past 65535 rows, see grid_1d in Rust). The row's sum of
// squares, and ⟨y, dy⟩, are reduced by a fixed-shape tree in workgroup memory: no atomics
// (WGSL has no float ones), and the same order on every run, so results are bit-reproducible
// on one adapter. Sums of squares are not rescaled: rows with |x| beyond ~1e19 overflow, as
// they do in PyTorch's f32 norm.

struct NormalizeParams {
    rows: u32,  // B
    cols: u32,  // D
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: NormalizeParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y_out: array<f32>;
@group(0) @binding(3) var<storage, read_write> norms_out: array<f32>;
@group(0) @binding(4) var<storage, read> y: array<f32>;
@group(0) @binding(5) var<storage, read> norms: array<f32>;
@group(0) @binding(6) var<storage, read> dy: array<f32>;
@group(0) @binding(7) var<storage, read_write> dx: array<f32>;

const WG: u32 = 64u;       // invocations per row (a power of 2, for the tree)
const EPS: f32 = 1e-12;    // must equal ops::normalize::EPS

var<workgroup> partial: array<f32, WG>;

// Sums `s` over the workgroup; every invocation gets the total. The tree's shape depends
// only on WG, so the order of additions is fixed.
fn workgroup_sum(lid: u32, s: f32) -> f32 {
    partial[lid] = s;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if lid < stride { partial[lid] += partial[lid + stride]; }
        workgroupBarrier();
    }
    return partial[0];
}

@compute @workgroup_size(WG)
fn l2_normalize_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    // The same for the whole workgroup, so returning keeps the barriers uniform.
    let row = wid.x + wid.y * nwg.x;
    if row >= p.rows { return; }
    let base = row * p.cols;
    var s = 0.0;
    for (var j = lid; j < p.cols; j += WG) {
        let v = x[base + j];
        s += v * v;
    }
    let norm = max(sqrt(workgroup_sum(lid, s)), EPS);
    for (var j = lid; j < p.cols; j += WG) {
        y_out[base + j] = x[base + j] / norm;
    }
    if lid == 0u { norms_out[row] = norm; }
}

@compute @workgroup_size(WG)
fn l2_normalize_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if row >= p.rows { return; }
    let base = row * p.cols;
    let norm = norms[row];
    var s = 0.0;
    for (var j = lid; j < p.cols; j += WG) {
        s += y[base + j] * dy[base + j];
    }
    let dot = workgroup_sum(lid, s);
    // The forward stored exactly EPS where it clamped; only there is the norm not > EPS.
    let clamped = !(norm > EPS);
    for (var j = lid; j < p.cols; j += WG) {
        let g = dy[base + j];
        dx[base + j] = select((g - y[base + j] * dot) / norm, g / EPS, clamped);
    }
}
