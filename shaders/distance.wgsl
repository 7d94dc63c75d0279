// distance.wgsl — distances between embeddings, and their gradients with respect to both inputs.
//
// Binding 0 is always `p: DistanceParams`; tensors are row-major f32. Every entry uses only
// the bindings listed on its line (pipelines use auto layout):
//   1 a   2 b   3 fwd (a forward output the backward reads)   4 grad (the upstream gradient)
//   5 na  6 nb (clamped row norms)   7 out   8 out2
//
// Paired rows: a [B, D], b [B, D] (rows = rows_b = B, dim = D); d, dd: [B].
//   euclidean_forward           a, b                        -> out = d [B]
//   euclidean_backward          a, b, fwd = d, grad = dd    -> out = da [B, D], out2 = db [B, D]
//   squared_euclidean_forward   a, b                        -> out = d [B]
//   squared_euclidean_backward  a, b, grad = dd             -> out = da, out2 = db
//   l1_forward                  a, b                        -> out = d [B]
//   l1_backward                 a, b, grad = dd             -> out = da, out2 = db
//   cosine_forward              a, b                        -> out = d [B]
//   cosine_backward             a, b, grad = dd             -> out = da, out2 = db
//   abs_diff_forward            a, b                        -> out = y [B, D]
//   abs_diff_backward           a, b, grad = dy [B, D]      -> out = da, out2 = db
// Pairwise matrix: a = A [B1, D], b = B [B2, D] (rows = B1, rows_b = B2, dim = D);
// Dm, dDm: [B1, B2].
//   pairwise_euclidean_forward  a, b                        -> out = Dm
//   pairwise_euclidean_backward a, b, fwd = Dm, grad = dDm  -> out = dA [B1, D], out2 = dB [B2, D]
//   pairwise_cosine_forward     a, b                        -> out = Dm
//   cosine_norms                a, b                        -> out = na [B1], out2 = nb [B2]
//   pairwise_cosine_backward    a, b, fwd = Dm, grad = dDm, na, nb -> out = dA, out2 = dB
// Texel path of the pairwise forward (9 tex_a, 10 tex_b: A and B packed by pack.wgsl's
// pack_rows4, row r as ⌈D/4⌉ texels, zero past D; dim = ⌈D/4⌉ here):
//   pairwise_euclidean_forward_tex  tex_a, tex_b            -> out = Dm
//   pairwise_cosine_forward_tex     tex_a, tex_b            -> out = Dm
//
// Definitions (src/cpu/distance.rs is the executable specification):
//   euclidean  d = sqrt(Σ(a−b)² + 1e-12): the epsilon sits inside the sqrt so that the gradient
//              (a−b)/d is 0, not 0/0, when a = b (a pair of identical embeddings is common).
//   cosine     d = 1 − ⟨a,b⟩ / (max(‖a‖, 1e-8)·max(‖b‖, 1e-8)) (PyTorch's clamp); a clamped norm
//              is a constant, so it passes no gradient.
// Every reduction runs in a fixed order inside one invocation: results are bit-reproducible.

struct DistanceParams {
    rows: u32,    // B (paired) or B1 (pairwise)
    rows_b: u32,  // B (paired) or B2 (pairwise)
    dim: u32,     // D
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: DistanceParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> fwd: array<f32>;
@group(0) @binding(4) var<storage, read> grad: array<f32>;
@group(0) @binding(5) var<storage, read> na: array<f32>;
@group(0) @binding(6) var<storage, read> nb: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;
@group(0) @binding(8) var<storage, read_write> out2: array<f32>;
@group(0) @binding(9) var tex_a: texture_2d<f32>;
@group(0) @binding(10) var tex_b: texture_2d<f32>;

const EUCLIDEAN_EPS: f32 = 1e-12;
const COSINE_EPS: f32 = 1e-8;

// 1-D launches: the host folds the workgroup count with grid_1d, so the linear index can
// overshoot and every entry bounds-checks it.
const WG: u32 = 64u;

override WG_COLS: u32 = 8u;  // pairwise forward: invocations per workgroup along Dm's columns
override WG_ROWS: u32 = 8u;  // ... along Dm's rows

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

// ---- Paired rows -------------------------------------------------------------------------
//
// One invocation per row pair, summing over D in order: the training batch supplies the
// parallelism (B rows) and D is the embedding size (128 in the reference tower), so a
// per-row workgroup tree would only add barriers, which lavapipe pays dearly for.

fn squared_distance(i: u32) -> f32 {
    let base = i * p.dim;
    var s = 0.0;
    for (var k = 0u; k < p.dim; k++) {
        let t = a[base + k] - b[base + k];
        s = fma(t, t, s);
    }
    return s;
}

@compute @workgroup_size(WG)
fn euclidean_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if i >= p.rows { return; }
    out[i] = sqrt(squared_distance(i) + EUCLIDEAN_EPS);
}

@compute @workgroup_size(WG)
fn squared_euclidean_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if i >= p.rows { return; }
    out[i] = squared_distance(i);
}

@compute @workgroup_size(WG)
fn l1_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if i >= p.rows { return; }
    let base = i * p.dim;
    var s = 0.0;
    for (var k = 0u; k < p.dim; k++) {
        s += abs(a[base + k] - b[base + k]);
    }
    out[i] = s;
}

// ⟨a,b⟩, ‖a‖², ‖b‖² of row i in one pass over the row.
fn cosine_sums(i: u32) -> vec3<f32> {
    let base = i * p.dim;
    var s = vec3<f32>(0.0);
    for (var k = 0u; k < p.dim; k++) {
        let x = a[base + k];
        let y = b[base + k];
        s = fma(vec3<f32>(x, x, y), vec3<f32>(y, x, y), s);
    }
    return s;
}

@compute @workgroup_size(WG)
fn cosine_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if i >= p.rows { return; }
    let s = cosine_sums(i);
    let norm_a = max(sqrt(s.y), COSINE_EPS);
    let norm_b = max(sqrt(s.z), COSINE_EPS);
    out[i] = 1.0 - s.x / (norm_a * norm_b);
}

// The elementwise gradients run one invocation per element of [B, D]: B·D-way parallel, and
// the per-row factor (dd, d) is one extra load.

@compute @workgroup_size(WG)
fn euclidean_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let e = linear_index(wid, nwg, lid);
    if e >= p.rows * p.dim { return; }
    let i = e / p.dim;
    // d ≥ sqrt(1e-12) = 1e-6, so this is finite, and exactly 0 where a = b.
    let g = grad[i] * (a[e] - b[e]) / fwd[i];
    out[e] = g;
    out2[e] = -g;
}

@compute @workgroup_size(WG)
fn squared_euclidean_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                              @builtin(local_invocation_index) lid: u32) {
    let e = linear_index(wid, nwg, lid);
    if e >= p.rows * p.dim { return; }
    let g = 2.0 * grad[e / p.dim] * (a[e] - b[e]);
    out[e] = g;
    out2[e] = -g;
}

@compute @workgroup_size(WG)
fn l1_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let e = linear_index(wid, nwg, lid);
    if e >= p.rows * p.dim { return; }
    // sign(0) = 0: the subgradient 0 at a = b, as PyTorch's abs.
    let g = grad[e / p.dim] * sign(a[e] - b[e]);
    out[e] = g;
    out2[e] = -g;
}

@compute @workgroup_size(WG)
fn abs_diff_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let e = linear_index(wid, nwg, lid);
    if e >= p.rows * p.dim { return; }
    out[e] = abs(a[e] - b[e]);
}

@compute @workgroup_size(WG)
fn abs_diff_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let e = linear_index(wid, nwg, lid);
    if e >= p.rows * p.dim { return; }
    let g = grad[e] * sign(a[e] - b[e]);
    out[e] = g;
    out2[e] = -g;
}

// Cosine needs the row's three sums before any gradient element, so one invocation owns a
// whole row: one pass to sum, one to write.
//   ∂d/∂a = cos·a/‖a‖² − b/(‖a‖‖b‖)   (first term absent when ‖a‖ is clamped), b likewise.
@compute @workgroup_size(WG)
fn cosine_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if i >= p.rows { return; }
    let s = cosine_sums(i);
    let norm_a = max(sqrt(s.y), COSINE_EPS);
    let norm_b = max(sqrt(s.z), COSINE_EPS);
    let inv = 1.0 / (norm_a * norm_b);
    let cos = s.x * inv;
    let g = grad[i];
    let ca = select(0.0, cos / (norm_a * norm_a), norm_a > COSINE_EPS);
    let cb = select(0.0, cos / (norm_b * norm_b), norm_b > COSINE_EPS);
    let base = i * p.dim;
    for (var k = 0u; k < p.dim; k++) {
        let x = a[base + k];
        let y = b[base + k];
        out[base + k] = g * (ca * x - inv * y);
        out2[base + k] = g * (cb * y - inv * x);
    }
}

// ---- Pairwise matrix -----------------------------------------------------------------------
//
// Forward: each invocation keeps a 4×4 block of Dm in registers (rows i0..i0+4 of A against
// rows j0..j0+4 of B), like dense's block_product: 8 loads feed 16 difference-FMAs, which is
// what lavapipe (one scalar load at a time) and real GPUs (fewer memory transactions) reward
// when retrieval evaluates 10k × 55k. Rows past the edge are clamped to the last valid one
// (computed, never stored): no branch in the inner loop. The difference form Σ(a−b)² is used
// instead of ‖a‖² + ‖b‖² − 2⟨a,b⟩, which cancels catastrophically for near rows, exactly
// where mining and 1-NN retrieval look.

// Element offsets of rows row0..row0+4, clamped to `last`.
fn row_offsets(row0: u32, last: u32) -> vec4<u32> {
    return vec4<u32>(min(row0, last), min(row0 + 1u, last), min(row0 + 2u, last), min(row0 + 3u, last)) * p.dim;
}

fn store_block(row0: u32, col0: u32, acc: array<vec4<f32>, 4>) {
    for (var r = 0u; r < 4u; r++) {
        let i = row0 + r;
        if i >= p.rows { return; }
        for (var c = 0u; c < 4u; c++) {
            let j = col0 + c;
            if j < p.rows_b {
                out[i * p.rows_b + j] = acc[r][c];
            }
        }
    }
}

@compute @workgroup_size(WG_COLS, WG_ROWS)
fn pairwise_euclidean_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * 4u;
    if row0 >= p.rows || col0 >= p.rows_b { return; }
    let ra = row_offsets(row0, p.rows - 1u);
    let rb = row_offsets(col0, p.rows_b - 1u);
    var acc: array<vec4<f32>, 4>;
    for (var k = 0u; k < p.dim; k++) {
        let bv = vec4<f32>(b[rb.x + k], b[rb.y + k], b[rb.z + k], b[rb.w + k]);
        let t0 = vec4<f32>(a[ra.x + k]) - bv;
        let t1 = vec4<f32>(a[ra.y + k]) - bv;
        let t2 = vec4<f32>(a[ra.z + k]) - bv;
        let t3 = vec4<f32>(a[ra.w + k]) - bv;
        acc[0] = fma(t0, t0, acc[0]);
        acc[1] = fma(t1, t1, acc[1]);
        acc[2] = fma(t2, t2, acc[2]);
        acc[3] = fma(t3, t3, acc[3]);
    }
    for (var r = 0u; r < 4u; r++) {
        acc[r] = sqrt(acc[r] + vec4<f32>(EUCLIDEAN_EPS));
    }
    store_block(row0, col0, acc);
}

// The block's 8 row norms ride along in the same loop: the values are already loaded, so
// recomputing them per block costs FMAs only, no extra pass or buffer.
@compute @workgroup_size(WG_COLS, WG_ROWS)
fn pairwise_cosine_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * 4u;
    if row0 >= p.rows || col0 >= p.rows_b { return; }
    let ra = row_offsets(row0, p.rows - 1u);
    let rb = row_offsets(col0, p.rows_b - 1u);
    var acc: array<vec4<f32>, 4>;
    var sa = vec4<f32>(0.0);
    var sb = vec4<f32>(0.0);
    for (var k = 0u; k < p.dim; k++) {
        let av = vec4<f32>(a[ra.x + k], a[ra.y + k], a[ra.z + k], a[ra.w + k]);
        let bv = vec4<f32>(b[rb.x + k], b[rb.y + k], b[rb.z + k], b[rb.w + k]);
        sa = fma(av, av, sa);
        sb = fma(bv, bv, sb);
        acc[0] = fma(vec4<f32>(av.x), bv, acc[0]);
        acc[1] = fma(vec4<f32>(av.y), bv, acc[1]);
        acc[2] = fma(vec4<f32>(av.z), bv, acc[2]);
        acc[3] = fma(vec4<f32>(av.w), bv, acc[3]);
    }
    let norm_a = max(sqrt(sa), vec4<f32>(COSINE_EPS));
    let norm_b = max(sqrt(sb), vec4<f32>(COSINE_EPS));
    for (var r = 0u; r < 4u; r++) {
        acc[r] = vec4<f32>(1.0) - acc[r] / (norm_a[r] * norm_b);
    }
    store_block(row0, col0, acc);
}

// max(‖row‖, 1e-8) of every row of A (into out) then of B (into out2), one invocation per row:
// the first dispatch of the pairwise cosine backward.
@compute @workgroup_size(WG)
fn cosine_norms(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let r = linear_index(wid, nwg, lid);
    if r < p.rows {
        let base = r * p.dim;
        var s = 0.0;
        for (var k = 0u; k < p.dim; k++) {
            s = fma(a[base + k], a[base + k], s);
        }
        out[r] = max(sqrt(s), COSINE_EPS);
    } else if r < p.rows + p.rows_b {
        let j = r - p.rows;
        let base = j * p.dim;
        var s = 0.0;
        for (var k = 0u; k < p.dim; k++) {
            s = fma(b[base + k], b[base + k], s);
        }
        out2[j] = max(sqrt(s), COSINE_EPS);
    }
}

// Backward, gather form (WGSL has no float atomics, and a gather is deterministic): each
// invocation owns 4 consecutive columns of one output row — the B1 rows of dA, then the B2
// rows of dB — and loops over the other set in order. Training-size matrices (B × B) are what
// this serves, so it favours simplicity over blocking.

// Column offsets k0..k0+4 within a row, clamped to the last column.
fn quad_columns(k0: u32) -> vec4<u32> {
    let last = p.dim - 1u;
    return vec4<u32>(min(k0, last), min(k0 + 1u, last), min(k0 + 2u, last), min(k0 + 3u, last));
}

fn a_quad(i: u32, kc: vec4<u32>) -> vec4<f32> {
    let base = i * p.dim;
    return vec4<f32>(a[base + kc.x], a[base + kc.y], a[base + kc.z], a[base + kc.w]);
}

fn b_quad(j: u32, kc: vec4<u32>) -> vec4<f32> {
    let base = j * p.dim;
    return vec4<f32>(b[base + kc.x], b[base + kc.y], b[base + kc.z], b[base + kc.w]);
}

fn store_quad_a(i: u32, k0: u32, v: vec4<f32>) {
    for (var c = 0u; c < 4u; c++) {
        if k0 + c < p.dim { out[i * p.dim + k0 + c] = v[c]; }
    }
}

fn store_quad_b(j: u32, k0: u32, v: vec4<f32>) {
    for (var c = 0u; c < 4u; c++) {
        if k0 + c < p.dim { out2[j * p.dim + k0 + c] = v[c]; }
    }
}

//   dA[i] = Σ_j dDm[i,j]/Dm[i,j]·(A[i] − B[j]),   dB[j] = Σ_i dDm[i,j]/Dm[i,j]·(B[j] − A[i]).
@compute @workgroup_size(WG)
fn pairwise_euclidean_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                               @builtin(local_invocation_index) lid: u32) {
    let t = linear_index(wid, nwg, lid);
    let quads = (p.dim + 3u) / 4u;
    let r = t / quads;
    let k0 = (t % quads) * 4u;
    if r >= p.rows + p.rows_b { return; }
    let kc = quad_columns(k0);
    var acc = vec4<f32>(0.0);
    if r < p.rows {
        let own = a_quad(r, kc);
        for (var j = 0u; j < p.rows_b; j++) {
            let m = r * p.rows_b + j;
            acc = fma(vec4<f32>(grad[m] / fwd[m]), own - b_quad(j, kc), acc);
        }
        store_quad_a(r, k0, acc);
    } else {
        let j = r - p.rows;
        let own = b_quad(j, kc);
        for (var i = 0u; i < p.rows; i++) {
            let m = i * p.rows_b + j;
            acc = fma(vec4<f32>(grad[m] / fwd[m]), own - a_quad(i, kc), acc);
        }
        store_quad_b(j, k0, acc);
    }
}

// With c = ⟨A_i,B_j⟩/(na_i·nb_j) = 1 − Dm[i,j] (read back from the forward, not recomputed: a
// dot product per (i, j) would cost a pass over D per term) and g = dDm[i,j]:
//   dA[i] = [na_i unclamped]·(Σ_j g·c)·A[i]/na_i² − (Σ_j (g/nb_j)·B[j]) / na_i, dB likewise.
@compute @workgroup_size(WG)
fn pairwise_cosine_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                            @builtin(local_invocation_index) lid: u32) {
    let t = linear_index(wid, nwg, lid);
    let quads = (p.dim + 3u) / 4u;
    let r = t / quads;
    let k0 = (t % quads) * 4u;
    if r >= p.rows + p.rows_b { return; }
    let kc = quad_columns(k0);
    var other = vec4<f32>(0.0);
    var coef = 0.0;
    if r < p.rows {
        for (var j = 0u; j < p.rows_b; j++) {
            let m = r * p.rows_b + j;
            let g = grad[m];
            coef = fma(g, 1.0 - fwd[m], coef);
            other = fma(vec4<f32>(g / nb[j]), b_quad(j, kc), other);
        }
        let n = na[r];
        let own = select(0.0, coef / (n * n), n > COSINE_EPS);
        store_quad_a(r, k0, own * a_quad(r, kc) - other / n);
    } else {
        let j = r - p.rows;
        for (var i = 0u; i < p.rows; i++) {
            let m = i * p.rows_b + j;
            let g = grad[m];
            coef = fma(g, 1.0 - fwd[m], coef);
            other = fma(vec4<f32>(g / na[i]), a_quad(i, kc), other);
        }
        let n = nb[j];
        let own = select(0.0, coef / (n * n), n > COSINE_EPS);
        store_quad_b(j, k0, own * b_quad(j, kc) - other / n);
    }
}

// ---- Pairwise matrix, texel path ------------------------------------------------------------
//
// The same definitions as the storage-buffer forwards, reading A and B as texels: on lavapipe
// a texel fetch is vectorised and a storage load is not (docs/ARCHITECTURE.md, "Kernel paths"), which is what
// retrieval over 10k × 10k rows pays for. Each invocation computes an 8×8 block of Dm like
// dense_matmul_tex: 16 fetches feed 64 vec4 differences (or products); neighbouring
// invocations share the block's columns. The zero padding past D adds 0 to every sum. Rows
// and columns past the edge read the last valid one and are never stored.

const TEX_WG: u32 = 64u;

fn tex_row_a(i: u32) -> vec4<f32> {
    return textureLoad(tex_a, vec2<u32>(i & 4095u, i >> 12u), 0);
}

fn tex_row_b(i: u32) -> vec4<f32> {
    return textureLoad(tex_b, vec2<u32>(i & 4095u, i >> 12u), 0);
}

struct TexBlock {
    row0: u32,
    col0: u32,
    ra: array<u32, 8>,     // first texel of each of the block's A rows
    cb: array<u32, 8>,     // ... of its B rows
}

fn tex_block(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> TexBlock {
    let row_blocks = (p.rows + 7u) / 8u;
    let id = (wid.x + wid.y * nwg.x) * TEX_WG + lid;
    var blk: TexBlock;
    blk.row0 = (id % row_blocks) * 8u;
    blk.col0 = (id / row_blocks) * 8u;
    for (var r = 0u; r < 8u; r++) {
        blk.ra[r] = min(blk.row0 + r, p.rows - 1u) * p.dim;
        blk.cb[r] = min(blk.col0 + r, p.rows_b - 1u) * p.dim;
    }
    return blk;
}

// acc[2·r + h] holds Dm[row0 + r, col0 + 4·h .. col0 + 4·h + 3].
fn store_tex_block(row0: u32, col0: u32, acc: array<vec4<f32>, 16>) {
    for (var r = 0u; r < 8u; r++) {
        let i = row0 + r;
        if i >= p.rows { return; }
        for (var c = 0u; c < 8u; c++) {
            let j = col0 + c;
            if j < p.rows_b { out[i * p.rows_b + j] = acc[2u * r + c / 4u][c % 4u]; }
        }
    }
}

@compute @workgroup_size(TEX_WG)
fn pairwise_euclidean_forward_tex(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                  @builtin(local_invocation_index) lid: u32) {
    let blk = tex_block(wid, nwg, lid);
    if blk.col0 >= p.rows_b { return; }
    var acc: array<vec4<f32>, 16>;
    for (var k = 0u; k < p.dim; k++) {
        let b0 = tex_row_b(blk.cb[0] + k);
        let b1 = tex_row_b(blk.cb[1] + k);
        let b2 = tex_row_b(blk.cb[2] + k);
        let b3 = tex_row_b(blk.cb[3] + k);
        let b4 = tex_row_b(blk.cb[4] + k);
        let b5 = tex_row_b(blk.cb[5] + k);
        let b6 = tex_row_b(blk.cb[6] + k);
        let b7 = tex_row_b(blk.cb[7] + k);
        for (var r = 0u; r < 8u; r++) {
            let a = tex_row_a(blk.ra[r] + k);
            let t0 = a - b0;
            let t1 = a - b1;
            let t2 = a - b2;
            let t3 = a - b3;
            let t4 = a - b4;
            let t5 = a - b5;
            let t6 = a - b6;
            let t7 = a - b7;
            acc[2u * r] += vec4<f32>(dot(t0, t0), dot(t1, t1), dot(t2, t2), dot(t3, t3));
            acc[2u * r + 1u] += vec4<f32>(dot(t4, t4), dot(t5, t5), dot(t6, t6), dot(t7, t7));
        }
    }
    for (var e = 0u; e < 16u; e++) {
        acc[e] = sqrt(acc[e] + vec4<f32>(EUCLIDEAN_EPS));
    }
    store_tex_block(blk.row0, blk.col0, acc);
}

@compute @workgroup_size(TEX_WG)
fn pairwise_cosine_forward_tex(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                               @builtin(local_invocation_index) lid: u32) {
    let blk = tex_block(wid, nwg, lid);
    if blk.col0 >= p.rows_b { return; }
    var acc: array<vec4<f32>, 16>;
    var sa: array<f32, 8>;
    var sb: array<vec4<f32>, 2>;
    for (var k = 0u; k < p.dim; k++) {
        let b0 = tex_row_b(blk.cb[0] + k);
        let b1 = tex_row_b(blk.cb[1] + k);
        let b2 = tex_row_b(blk.cb[2] + k);
        let b3 = tex_row_b(blk.cb[3] + k);
        let b4 = tex_row_b(blk.cb[4] + k);
        let b5 = tex_row_b(blk.cb[5] + k);
        let b6 = tex_row_b(blk.cb[6] + k);
        let b7 = tex_row_b(blk.cb[7] + k);
        sb[0] += vec4<f32>(dot(b0, b0), dot(b1, b1), dot(b2, b2), dot(b3, b3));
        sb[1] += vec4<f32>(dot(b4, b4), dot(b5, b5), dot(b6, b6), dot(b7, b7));
        for (var r = 0u; r < 8u; r++) {
            let a = tex_row_a(blk.ra[r] + k);
            sa[r] += dot(a, a);
            acc[2u * r] += vec4<f32>(dot(a, b0), dot(a, b1), dot(a, b2), dot(a, b3));
            acc[2u * r + 1u] += vec4<f32>(dot(a, b4), dot(a, b5), dot(a, b6), dot(a, b7));
        }
    }
    let norm_b0 = max(sqrt(sb[0]), vec4<f32>(COSINE_EPS));
    let norm_b1 = max(sqrt(sb[1]), vec4<f32>(COSINE_EPS));
    for (var r = 0u; r < 8u; r++) {
        let norm_a = max(sqrt(sa[r]), COSINE_EPS);
        acc[2u * r] = vec4<f32>(1.0) - acc[2u * r] / (norm_a * norm_b0);
        acc[2u * r + 1u] = vec4<f32>(1.0) - acc[2u * r + 1u] / (norm_a * norm_b1);
    }
    store_tex_block(blk.row0, blk.col0, acc);
}
