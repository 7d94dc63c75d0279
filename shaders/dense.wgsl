// dense.wgsl — fully connected layer Y = X·Wᵀ + b and its gradients.
//
// Element types: `a`, `b` and `bias` are `elem` (X, W, b, dY: f32, or f16 under mixed
// precision, where W and b are the f16 copies of the master weights); `out` is `out_elem`,
// which is `elem` where it holds Y or dX and f32 where it holds dW or db (weight gradients
// feed the f32 master weights). The launcher compiles the variant: f16 `elem` and
// `out_elem` for the forward and grad_input of f16 tensors, f16 `elem` alone for their
// grad_weight and grad_bias. Products and sums are computed in f32 whatever the storage
// (f16·f16 products are exact in f32); an f16 output is rounded once, when stored.
//
// Entry points (binding 0 is always `p: MatmulParams`; tensors row-major):
//   dense_forward      a = X [N, K], b = W [M, K], bias = b [M]  ->  out = Y [N, M]
//   dense_grad_input   a = dY [N, M], b = W [M, K]              ->  out = dX [N, K]
//   dense_grad_weight  a = dY [N, M], b = X [N, K]              ->  out = dW [M, K]
//   dense_grad_bias    a = dY [N, M]                            ->  out = db [M]
//   dense_matmul_tex   tex_a = A, tex_b = B (pack_rows4), bias  ->  out = A·Bᵀ + bias
//                      A [rows, K], B [cols, K] as rows of `depth` = ⌈K/4⌉ texels; the
//                      forward is X·Wᵀ, grad_input dY·(Wᵀ)ᵀ, grad_weight dYᵀ·(Xᵀ)ᵀ, each
//                      operand packed (transposed where needed) by pack.wgsl (the
//                      gradients pass a zero bias). 8×8 outputs per invocation: 16 texel fetches feed
//                      256 FMAs (see conv2d.wgsl on why texels). The texels may be
//                      rgba32float or rgba16float (read as vec4<f32> either way); bias and
//                      out have the output's type: the f16 variant (elem and out_elem f16)
//                      for an f16 Y or dX, the f32 shader for an f32 output (dW always).
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
alias elem = f32;      // X, W, b, dY
alias out_elem = f32;  // Y, dX (elem) or dW, db (always f32)

@group(0) @binding(1) var<storage, read> a: array<elem>;
@group(0) @binding(2) var<storage, read> b: array<elem>;
@group(0) @binding(3) var<storage, read> bias: array<elem>;
@group(0) @binding(4) var<storage, read_write> out: array<out_elem>;
@group(0) @binding(5) var tex_a: texture_2d<f32>;
@group(0) @binding(6) var tex_b: texture_2d<f32>;

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
        let bv = vec4<f32>(f32(b[kb + cb.x]), f32(b[kb + cb.y]), f32(b[kb + cb.z]), f32(b[kb + cb.w]));
        acc[0] = fma(vec4<f32>(f32(a[ra.x + ka])), bv, acc[0]);
        acc[1] = fma(vec4<f32>(f32(a[ra.y + ka])), bv, acc[1]);
        acc[2] = fma(vec4<f32>(f32(a[ra.z + ka])), bv, acc[2]);
        acc[3] = fma(vec4<f32>(f32(a[ra.w + ka])), bv, acc[3]);
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
                out[i * p.cols + j] = out_elem(acc[r][c]);
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
    let bv = vec4<f32>(f32(bias[col0]), f32(bias[min(col0 + 1u, last_col)]), f32(bias[min(col0 + 2u, last_col)]), f32(bias[min(col0 + 3u, last_col)]));
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
// the sum (and a seeded run) is bit-reproducible; it sums in f32 whatever dY's type. Uses
// rows = N, cols = M.
var<workgroup> partial: array<f32, REDUCE_WG>;

@compute @workgroup_size(REDUCE_WG)
fn dense_grad_bias(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let j = wid.x + wid.y * nwg.x;
    var s = 0.0;
    if j < p.cols {
        for (var n = lid; n < p.rows; n += REDUCE_WG) {
            s += f32(a[n * p.cols + j]);
        }
    }
    partial[lid] = s;
    workgroupBarrier();
    for (var stride = REDUCE_WG / 2u; stride > 0u; stride /= 2u) {
        if lid < stride { partial[lid] += partial[lid + stride]; }
        workgroupBarrier();
    }
    if lid == 0u && j < p.cols { out[j] = out_elem(partial[0]); }
}

const TEX_WG: u32 = 64u;

fn fetch_a(i: u32) -> vec4<f32> {
    return textureLoad(tex_a, vec2<u32>(i & 4095u, i >> 12u), 0);
}

fn fetch_b(i: u32) -> vec4<f32> {
    return textureLoad(tex_b, vec2<u32>(i & 4095u, i >> 12u), 0);
}

// out[i, j] = Σ_k A[i, k]·B[j, k] + bias[j] for i in 8·rb .. 8·rb + 7, j in 8·cb .. 8·cb + 7.
// Neighbouring invocations share cb (the same B texels). Rows and columns past the edge
// read the last valid one and are never stored.
@compute @workgroup_size(TEX_WG)
fn dense_matmul_tex(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let row_blocks = (p.rows + 7u) / 8u;
    let id = (wid.x + wid.y * nwg.x) * TEX_WG + lid;
    let row0 = (id % row_blocks) * 8u;
    let col0 = (id / row_blocks) * 8u;
    if col0 >= p.cols { return; }
    var ra: array<u32, 8>;
    var cbase: array<u32, 8>;
    for (var r = 0u; r < 8u; r++) {
        ra[r] = min(row0 + r, p.rows - 1u) * p.depth;
        cbase[r] = min(col0 + r, p.cols - 1u) * p.depth;
    }
    var acc: array<vec4<f32>, 16>;  // [2·r + h]: row r, columns col0 + 4·h ..
    for (var k = 0u; k < p.depth; k++) {
        let b0 = fetch_b(cbase[0] + k);
        let b1 = fetch_b(cbase[1] + k);
        let b2 = fetch_b(cbase[2] + k);
        let b3 = fetch_b(cbase[3] + k);
        let b4 = fetch_b(cbase[4] + k);
        let b5 = fetch_b(cbase[5] + k);
        let b6 = fetch_b(cbase[6] + k);
        let b7 = fetch_b(cbase[7] + k);
        for (var r = 0u; r < 8u; r++) {
            let a = fetch_a(ra[r] + k);
            acc[2u * r] += vec4<f32>(dot(a, b0), dot(a, b1), dot(a, b2), dot(a, b3));
            acc[2u * r + 1u] += vec4<f32>(dot(a, b4), dot(a, b5), dot(a, b6), dot(a, b7));
        }
    }
    var bv: array<vec4<f32>, 2>;
    for (var c = 0u; c < 8u; c++) {
        bv[c / 4u][c % 4u] = f32(bias[min(col0 + c, p.cols - 1u)]);
    }
    for (var r = 0u; r < 8u; r++) {
        let i = row0 + r;
        if i >= p.rows { return; }
        for (var h = 0u; h < 2u; h++) {
            let v = acc[2u * r + h] + bv[h];
            for (var c = 0u; c < 4u; c++) {
                let j = col0 + 4u * h + c;
                if j < p.cols { out[i * p.cols + j] = out_elem(v[c]); }
            }
        }
    }
}
