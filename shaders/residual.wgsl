// residual.wgsl — the addition that closes a residual (ResNet) block, y = a + b, alone or
// fused with the ReLU after it, and their gradients, over tensors of any shape (seen as flat
// arrays of `len` elements of type `elem`: f32, or f16 under mixed precision, where the
// launcher compiles the f16 variant; the sum is taken in f32 and rounded once on store).
//
// Entry points (binding 0 is always `p: ElementwiseParams`; every tensor has `len` elements,
// any shape, row-major):
//   add_forward               a, b        ->  y        y = a + b
//   add_relu_forward          a, b        ->  y        y = max(a + b, 0)
//   add_backward              dy          ->  da, db   da = db = dy
//   add_backward_single       dy          ->  da       da = dy (only one input needs a gradient)
//   add_relu_backward         saved = y, dy  ->  da, db   da = db = dy·[y > 0]
//   add_relu_backward_single  saved = y, dy  ->  da       da = dy·[y > 0]
// The fused backward reads the forward's output y, not a + b: [y > 0] = [a + b > 0], and
// the tape keeps y anyway for the next layer. Each backward writes (never adds to) its
// gradients; the `_single` entries serve an add whose other input needs none (the block's
// input being data, say), so no scratch buffer is written for it.
//
// One invocation per element, the workgroup grid folded into two dimensions for large
// tensors (grid_1d in Rust); the linear index is rebuilt from wid.x + wid.y·nwg.x and
// bounds-checked, since the fold can overshoot.

struct ElementwiseParams {
    len: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

alias elem = f32;

@group(0) @binding(0) var<uniform> p: ElementwiseParams;
@group(0) @binding(1) var<storage, read> a: array<elem>;
@group(0) @binding(2) var<storage, read> b: array<elem>;
@group(0) @binding(3) var<storage, read_write> y: array<elem>;
@group(0) @binding(4) var<storage, read> saved: array<elem>;
@group(0) @binding(5) var<storage, read> dy: array<elem>;
@group(0) @binding(6) var<storage, read_write> da: array<elem>;
@group(0) @binding(7) var<storage, read_write> db: array<elem>;

override WG: u32 = 256u;  // invocations per workgroup

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

@compute @workgroup_size(WG)
fn add_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if i >= p.len { return; }
    y[i] = elem(f32(a[i]) + f32(b[i]));
}

@compute @workgroup_size(WG)
fn add_relu_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if i >= p.len { return; }
    // Rounded to elem before the ReLU, so that [y > 0] in the backward is the test made here.
    y[i] = max(elem(f32(a[i]) + f32(b[i])), elem(0.0));
}

@compute @workgroup_size(WG)
fn add_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if i >= p.len { return; }
    let g = dy[i];
    da[i] = g;
    db[i] = g;
}

@compute @workgroup_size(WG)
fn add_backward_single(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if i >= p.len { return; }
    da[i] = dy[i];
}

@compute @workgroup_size(WG)
fn add_relu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if i >= p.len { return; }
    // The gradient at a + b = 0 is taken as 0 (PyTorch's ReLU).
    let g = select(elem(0.0), dy[i], saved[i] > elem(0.0));
    da[i] = g;
    db[i] = g;
}

@compute @workgroup_size(WG)
fn add_relu_backward_single(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                            @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if i >= p.len { return; }
    da[i] = select(elem(0.0), dy[i], saved[i] > elem(0.0));
}
