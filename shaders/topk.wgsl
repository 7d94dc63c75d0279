// topk.wgsl — the k nearest columns of each row of a distance matrix, for retrieval metrics.
//
// Entry:
//   topk_rows   dm [rows, cols] f32, exclude [rows] u32   -> dist [rows, k] f32, index [rows, k] u32
//               (read too, with `carry`)
// Bindings: 0 p: TopkParams (uniform), 1 dm, 2 exclude, 3 dist, 4 index. Row-major.
//
// Row r's output is its k smallest entries, ascending by (distance, column): equal distances
// keep the lower column first, so the CPU reference (src/cpu/topk.rs) and this kernel agree
// exactly (selection only compares and copies, no arithmetic). Column exclude[r] is skipped
// (leave-one-out: the query itself among the references); NO_EXCLUDE skips none. The host
// guarantees k ≤ K_MAX, k ≥ 1 and k ≤ the number of columns left, and finite distances
// (WGSL may assume no NaN, so a NaN could not be ordered reliably).
//
// One invocation per row, a sorted list of k in private memory, one pass over the row's
// columns in order: a column enters only if it beats the current k-th (strictly, so a later
// equal distance never displaces an earlier column). A dispatch scans the columns
// [col_begin, col_end) only; with `carry` it first reads back the full list the previous
// segment left in dist/index, so consecutive segments give the one-pass result. Why
// segments: llvmpipe (lavapipe) stops a shader's loops after 65,535 iterations in all
// (outer and inner counted together, a guard against endless loops) and the results are
// garbage past it; the host sizes segments under that (ops::topk::columns_per_dispatch). After the first few hundred columns
// almost every entry fails that one comparison, so the pass costs about one load and one
// compare per element — the distance matrix it reads is the expensive part, and k ≤ 64
// (recall@k is reported for small k) keeps the insertion cheap.

struct TopkParams {
    rows: u32,
    cols: u32,
    k: u32,
    col_begin: u32,
    col_end: u32,
    carry: u32,  // 1: start from the k entries in dist/index (a later segment)
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: TopkParams;
@group(0) @binding(1) var<storage, read> dm: array<f32>;
@group(0) @binding(2) var<storage, read> exclude: array<u32>;
@group(0) @binding(3) var<storage, read_write> dist: array<f32>;
@group(0) @binding(4) var<storage, read_write> index: array<u32>;

const WG: u32 = 64u;
const K_MAX: u32 = 64u;
const NO_EXCLUDE: u32 = 0xffffffffu;

@compute @workgroup_size(WG)
fn topk_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let r = (wid.x + wid.y * nwg.x) * WG + lid;
    if r >= p.rows { return; }
    let skip = exclude[r];
    let base = r * p.cols;
    var best_d: array<f32, K_MAX>;
    var best_i: array<u32, K_MAX>;
    var n = 0u;
    let out = r * p.k;
    if p.carry != 0u {
        for (var t = 0u; t < p.k; t++) {
            best_d[t] = dist[out + t];
            best_i[t] = index[out + t];
        }
        n = p.k;
    }
    for (var j = p.col_begin; j < p.col_end; j++) {
        if j == skip { continue; }
        let d = dm[base + j];
        // Full list: only a strictly smaller distance enters, displacing the k-th.
        if n == p.k && !(d < best_d[n - 1u]) { continue; }
        var pos = n;
        if n < p.k { n++; } else { pos = n - 1u; }
        // Shift larger entries down one place; stops at an equal one (lower column stays first).
        while pos > 0u && best_d[pos - 1u] > d {
            best_d[pos] = best_d[pos - 1u];
            best_i[pos] = best_i[pos - 1u];
            pos--;
        }
        best_d[pos] = d;
        best_i[pos] = j;
    }
    for (var t = 0u; t < p.k; t++) {
        dist[out + t] = best_d[t];
        index[out + t] = best_i[t];
    }
}
