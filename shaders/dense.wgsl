// dense.wgsl — fully connected layer Y = X·Wᵀ + b and its gradients.
//
// Entry points (binding 0 is always `p: MatmulParams`; tensors row-major f32):
//   dense_forward      a = X [N, K], b = W [M, K], bias = b [M]  ->  out = Y [N, M]
//   dense_grad_input   a = dY [N, M], b = W [M, K]              ->  out = dX [N, K]
//   dense_grad_weight  a = dY [N, M], b = X [N, K]              ->  out = dW [M, K]
//   dense_grad_bias    a = dY [N, M]                            ->  out = db [M]
//
// The three products share one body: out[i, j] = Σ_k A(i, k)·B(k, j), with A and B read
// through strides, so X·Wᵀ, dY·W and dYᵀ·X need no transposed copy. Each invocation keeps a
// 4×4 block of outputs in registers: 8 loads feed 16 FMAs, which is what lavapipe (one
// scalar load at a time) and real GPUs (fewer memory transactions) both reward.

struct MatmulParams {
    rows: u32,   // output rows
    cols: u32,   // output columns
    depth: u32,  // reduction length
    a_row: u32,  // A(i, k) = a[i·a_row + k·a_k]
    a_k: u32,
    b_k: u32,    // B(k, j) = b[k·b_k + j·b_col]
    b_col: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: MatmulParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

override WG_COLS: u32 = 8u;  // invocations per workgroup along output columns
override WG_ROWS: u32 = 8u;  // ... along output rows
const REDUCE_WG: u32 = 64u;  // dense_grad_bias: invocations summing one column (a power of 2)

// Σ_k A(i, k)·B(k, j) for i in row0..row0+4, j in col0..col0+4; acc[r][c]. Rows and columns
// past the edge are clamped to the last valid one (computed, never stored): no branch in
// the inner loop.
fn block_product(row0: u32, col0: u32) -> array<vec4<f32>, 4> {
    let last_row = p.rows - 1u;
    let last_col = p.cols - 1u;
    let ra = vec4<u32>(min(row0, last_row), min(row0 + 1u, last_row), min(row0 + 2u, last_row), min(row0 + 3u, last_row)) * p.a_row;
    let cb = vec4<u32>(min(col0, last_col), min(col0 + 1u, last_col), min(col0 + 2u, last_col), min(col0 + 3u, last_col)) * p.b_col;
    var acc: array<vec4<f32>, 4>;
    for (var k = 0u; k < p.depth; k++) {
        let ka = k * p.a_k;
        let kb = k * p.b_k;
        let bv = vec4<f32>(b[kb + cb.x], b[kb + cb.y], b[kb + cb.z], b[kb + cb.w]);
        acc[0] = fma(vec4<f32>(a[ra.x + ka]), bv, acc[0]);
        acc[1] = fma(vec4<f32>(a[ra.y + ka]), bv, acc[1]);
        acc[2] = fma(vec4<f32>(a[ra.z + ka]), bv, acc[2]);
        acc[3] = fma(vec4<f32>(a[ra.w + ka]), bv, acc[3]);
    }
    return acc;
}

fn store_block(row0: u32, col0: u32, acc: array<vec4<f32>, 4>) {
    for (var r = 0u; r < 4u; r++) {
        let i = row0 + r;
        if i >= p.rows { return; }
        for (var c = 0u; c < 4u; c++) {
            let j = col0 + c;
            if j < p.cols {
                out[i * p.cols + j] = acc[r][c];
            }
        }
    }
}

@compute @workgroup_size(WG_COLS, WG_ROWS)
fn dense_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * 4u;
    if row0 >= p.rows || col0 >= p.cols { return; }
    var acc = block_product(row0, col0);
    let last_col = p.cols - 1u;
    let bv = vec4<f32>(bias[col0], bias[min(col0 + 1u, last_col)], bias[min(col0 + 2u, last_col)], bias[min(col0 + 3u, last_col)]);
    for (var r = 0u; r < 4u; r++) { acc[r] += bv; }
    store_block(row0, col0, acc);
}

@compute @workgroup_size(WG_COLS, WG_ROWS)
fn dense_grad_input(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * 4u;
    if row0 >= p.rows || col0 >= p.cols { return; }
    store_block(row0, col0, block_product(row0, col0));
}

@compute @workgroup_size(WG_COLS, WG_ROWS)
fn dense_grad_weight(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * 4u;
    if row0 >= p.rows || col0 >= p.cols { return; }
    store_block(row0, col0, block_product(row0, col0));
}

// db[j] = Σ_n dY[n, j]: one workgroup per column, a fixed-shape tree in workgroup memory so
// the sum (and a seeded run) is bit-reproducible. Uses rows = N, cols = M.
var<workgroup> partial: array<f32, REDUCE_WG>;

@compute @workgroup_size(REDUCE_WG)
fn dense_grad_bias(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let j = wid.x + wid.y * nwg.x;
    var s = 0.0;
    if j < p.cols {
        for (var n = lid; n < p.rows; n += REDUCE_WG) {
            s += a[n * p.cols + j];
        }
    }
    partial[lid] = s;
    workgroupBarrier();
    for (var stride = REDUCE_WG / 2u; stride > 0u; stride /= 2u) {
        if lid < stride { partial[lid] += partial[lid + stride]; }
        workgroupBarrier();
    }
    if lid == 0u && j < p.cols { out[j] = partial[0]; }
}
