// mining.wgsl — online triplet mining from the batch distance matrix: batch-hard, semi-hard
// and batch-all triplet losses, with their gradient with respect to the matrix.
//
// Tensors (flat, row-major): dm [N, N] f32 the distances between the batch's embeddings;
// labels [N] u32 class ids; rows [R, ROW_STATS] f32 partial sums, R = N (batch-hard: one per
// anchor) or N² (semi-hard, batch-all: one per (anchor, positive) slot a·N + j); loss [1];
// stats [4] = (mined, active, mean d_ap, mean d_an) of the step; dloss [1]; ddm [N, N];
// choice [N, N] u32 scratch of the semi-hard backward.
//
// Entry points (binding 0 is always `p: MiningParams`):
//   batch_hard_rows     1 dm, 2 labels                   -> 5 rows [N, 5]     per anchor
//   semi_hard_pairs     1 dm, 2 labels                   -> 5 rows [N², 5]    per (a, j)
//   batch_all_pairs     1 dm, 2 labels                   -> 5 rows [N², 5]    per (a, j)
//   mining_reduce       5 rows                           -> 6 loss, 7 stats   one workgroup
//   batch_hard_backward 1 dm, 2 labels, 3 dloss, 7 stats -> 4 ddm             per anchor row
//   semi_hard_choices   1 dm, 2 labels                   -> 8 choice          per (a, j)
//   semi_hard_backward  2 labels, 3 dloss, 7 stats, 8 choice -> 4 ddm         per (a, j)
//   batch_all_backward  1 dm, 2 labels, 3 dloss, 7 stats -> 4 ddm             per (a, j)
//
// A forward is two dispatches: a pass that writes each anchor's (or anchor-positive pair's)
// partial sums into `rows`, then ONE workgroup that tree-reduces them (as loss.wgsl: fixed
// summation order, no float atomics, bit-reproducible) and divides by the GLOBAL normaliser.
// Every ddm element has exactly one writer: batch-hard's backward writes a whole anchor row
// per invocation (the loss reads only dm[a][·] for anchor a), the others one element per
// invocation. No invocation loops more than about 2N times (the reduction: R/256): llvmpipe
// (Mesa 22.3) cuts a longer loop short, silently (a per-anchor loop over K positives × N
// negatives stopped after about 2¹⁵ steps at N = 300), so per-pair and per-element
// invocations replace per-anchor ones wherever an anchor's work is O(K·N).
//
// Only row a's entries are read for anchor a: dm need not be symmetric, and the gradient of
// dm[p][a] is zero. The diagonal is never read (a positive is never the anchor itself).
//
// Ties pick the LOWEST index: candidates are scanned in increasing index and replace the
// best only when strictly better, so the CPU reference (src/cpu/mining.rs) agrees exactly.
//
// "mined" counts the triplets the miner selects (batch-hard: anchors with a positive and a
// negative; semi-hard: anchor-positive pairs whose anchor has a negative; batch-all: every
// valid (a, p, n)); "active" those with a positive hinge d_ap − d_an + m > 0. The loss
// divides by mined (batch-hard, semi-hard) or by active (batch-all: "average over non-zero"),
// 0 when that count is 0. Counts are summed as f32: exact up to 2²⁴ triplets (N ≤ 256 for
// batch-all at worst).

struct MiningParams {
    n: u32,             // N
    margin: f32,        // m
    by_active: u32,     // 1: the normaliser is the active count (batch-all), 0: the mined count
    rows_len: u32,      // R, the rows mining_reduce sums: N or N²
}

@group(0) @binding(0) var<uniform> p: MiningParams;
@group(0) @binding(1) var<storage, read> dm: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read> dloss: array<f32>;
@group(0) @binding(4) var<storage, read_write> ddm: array<f32>;
@group(0) @binding(5) var<storage, read_write> rows: array<f32>;
@group(0) @binding(6) var<storage, read_write> loss: array<f32>;
@group(0) @binding(7) var<storage, read_write> stats: array<f32>;
@group(0) @binding(8) var<storage, read_write> choice: array<u32>;

// Columns of `rows`: Σ hinge, mined, active, Σ d_ap, Σ d_an (the last two over mined triplets).
const ROW_STATS: u32 = 5u;
const WG: u32 = 64u;          // invocations per workgroup of all but the reduction
const REDUCE_WG: u32 = 256u;  // invocations of the reduction (a power of 2)
const NONE: u32 = 0xffffffffu;

// Linear index of an invocation: the anchor a, or the element e = a·N + j (may overshoot:
// callers check).
fn invocation(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

fn write_row(r: u32, hinge_sum: f32, n_mined: f32, n_active: f32, dap_sum: f32, dan_sum: f32) {
    let o = r * ROW_STATS;
    rows[o] = hinge_sum;
    rows[o + 1u] = n_mined;
    rows[o + 2u] = n_active;
    rows[o + 3u] = dap_sum;
    rows[o + 4u] = dan_sum;
}

// The normaliser of the loss, as the forward's reduction left it in `stats`.
fn scale() -> f32 {
    let count = select(stats[0], stats[1], p.by_active == 1u);
    return select(dloss[0] / count, 0.0, count == 0.0);
}

fn zero_row(a: u32) {
    for (var j = 0u; j < p.n; j++) { ddm[a * p.n + j] = 0.0; }
}

// ---- batch-hard (Hermans et al. 2017): the farthest positive and the nearest negative ----

// (hardest positive, hardest negative) of anchor a, NONE where there is none.
fn hardest(a: u32) -> vec2<u32> {
    var pos = NONE;
    var neg = NONE;
    for (var j = 0u; j < p.n; j++) {
        if j == a { continue; }
        let d = dm[a * p.n + j];
        if labels[j] == labels[a] {
            if pos == NONE || d > dm[a * p.n + pos] { pos = j; }
        } else {
            if neg == NONE || d < dm[a * p.n + neg] { neg = j; }
        }
    }
    return vec2<u32>(pos, neg);
}

@compute @workgroup_size(WG)
fn batch_hard_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let a = invocation(wid, nwg, lid);
    if a >= p.n { return; }
    let h = hardest(a);
    if h.x == NONE || h.y == NONE {
        write_row(a, 0.0, 0.0, 0.0, 0.0, 0.0);
        return;
    }
    let d_ap = dm[a * p.n + h.x];
    let d_an = dm[a * p.n + h.y];
    let t = d_ap - d_an + p.margin;
    write_row(a, max(t, 0.0), 1.0, select(0.0, 1.0, t > 0.0), d_ap, d_an);
}

@compute @workgroup_size(WG)
fn batch_hard_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let a = invocation(wid, nwg, lid);
    if a >= p.n { return; }
    zero_row(a);
    let h = hardest(a);
    if h.x == NONE || h.y == NONE { return; }
    // Subgradient 0 at the kink (as the triplet loss in loss.wgsl).
    if dm[a * p.n + h.x] - dm[a * p.n + h.y] + p.margin > 0.0 {
        let s = scale();
        ddm[a * p.n + h.x] = s;
        ddm[a * p.n + h.y] = -s;
    }
}

// ---- semi-hard (Schroff et al. 2015, as TensorFlow's triplet_semihard_loss) ----

// The negative of the pair (a, pos): the nearest one farther than d_ap, else the farthest;
// NONE if a has no negative.
fn semi_hard_negative(a: u32, d_ap: f32) -> u32 {
    var outside = NONE;  // smallest d_an with d_an > d_ap
    var inside = NONE;   // largest d_an
    for (var n = 0u; n < p.n; n++) {
        if labels[n] == labels[a] { continue; }
        let d = dm[a * p.n + n];
        if d > d_ap && (outside == NONE || d < dm[a * p.n + outside]) { outside = n; }
        if inside == NONE || d > dm[a * p.n + inside] { inside = n; }
    }
    return select(outside, inside, outside == NONE);
}

// Whether invocation e = a·N + j is an anchor-positive pair (j ≠ a, same class).
fn is_pair(a: u32, j: u32) -> bool {
    return j != a && labels[j] == labels[a];
}

@compute @workgroup_size(WG)
fn semi_hard_pairs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let e = invocation(wid, nwg, lid);
    if e >= p.n * p.n { return; }
    let a = e / p.n;
    let pos = e % p.n;
    write_row(e, 0.0, 0.0, 0.0, 0.0, 0.0);
    if !is_pair(a, pos) { return; }
    let d_ap = dm[e];
    let neg = semi_hard_negative(a, d_ap);
    if neg == NONE { return; }  // no negative at all: the anchor has no triplet
    let d_an = dm[a * p.n + neg];
    let t = d_ap - d_an + p.margin;
    write_row(e, max(t, 0.0), 1.0, select(0.0, 1.0, t > 0.0), d_ap, d_an);
}

// choice [N, N]: the negative of pair (a, j) where its hinge is on, NONE elsewhere (the
// first dispatch of the backward).
@compute @workgroup_size(WG)
fn semi_hard_choices(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let e = invocation(wid, nwg, lid);
    if e >= p.n * p.n { return; }
    let a = e / p.n;
    let pos = e % p.n;
    var chosen = NONE;
    if is_pair(a, pos) {
        let neg = semi_hard_negative(a, dm[e]);
        // Subgradient 0 at the kink (as the triplet loss in loss.wgsl).
        if neg != NONE && dm[e] - dm[a * p.n + neg] + p.margin > 0.0 { chosen = neg; }
    }
    choice[e] = chosen;
}

// ∂/∂dm[a][j]: +s for an active pair (a, j); −s per active pair of a whose negative is j.
@compute @workgroup_size(WG)
fn semi_hard_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let e = invocation(wid, nwg, lid);
    if e >= p.n * p.n { return; }
    let a = e / p.n;
    let j = e % p.n;
    var count = 0.0;
    if is_pair(a, j) {
        count = select(0.0, 1.0, choice[e] != NONE);
    } else if labels[j] != labels[a] {
        for (var pos = 0u; pos < p.n; pos++) {
            if choice[a * p.n + pos] == j { count -= 1.0; }
        }
    }
    ddm[e] = scale() * count;
}

// ---- batch-all: every valid triplet, averaged over those with a positive loss ----

@compute @workgroup_size(WG)
fn batch_all_pairs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let e = invocation(wid, nwg, lid);
    if e >= p.n * p.n { return; }
    let a = e / p.n;
    let pos = e % p.n;
    var hinge_sum = 0.0;
    var n_mined = 0.0;
    var n_active = 0.0;
    var dap_sum = 0.0;
    var dan_sum = 0.0;
    if is_pair(a, pos) {
        let d_ap = dm[e];
        for (var n = 0u; n < p.n; n++) {
            if labels[n] == labels[a] { continue; }
            let d_an = dm[a * p.n + n];
            let t = d_ap - d_an + p.margin;
            hinge_sum += max(t, 0.0);
            n_mined += 1.0;
            n_active += select(0.0, 1.0, t > 0.0);
            dap_sum += d_ap;
            dan_sum += d_an;
        }
    }
    write_row(e, hinge_sum, n_mined, n_active, dap_sum, dan_sum);
}

@compute @workgroup_size(WG)
fn batch_all_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let e = invocation(wid, nwg, lid);
    if e >= p.n * p.n { return; }
    let a = e / p.n;
    let j = e % p.n;
    // ∂/∂dm[a][j]: s × (active triplets with j as positive) − s × (… with j as negative).
    // A j is either a positive or a negative of a (or a itself), so one count per element.
    var count = 0.0;
    if j != a {
        let d_aj = dm[e];
        let positive = labels[j] == labels[a];
        for (var k = 0u; k < p.n; k++) {
            if k == a { continue; }
            let d_ak = dm[a * p.n + k];
            if positive && labels[k] != labels[a] && d_aj - d_ak + p.margin > 0.0 {
                count += 1.0;
            }
            if !positive && labels[k] == labels[a] && d_ak - d_aj + p.margin > 0.0 {
                count -= 1.0;
            }
        }
    }
    ddm[e] = scale() * count;
}

// ---- the reduction of the rows ----

var<workgroup> partial: array<f32, REDUCE_WG>;

// Sum of column c of `rows` over its R rows: strided partial sums, then a fixed-shape tree.
// Every invocation of the workgroup must call it (it holds barriers).
fn column_sum(lid: u32, c: u32) -> f32 {
    var s = 0.0;
    for (var r = lid; r < p.rows_len; r += REDUCE_WG) { s += rows[r * ROW_STATS + c]; }
    partial[lid] = s;
    workgroupBarrier();
    for (var stride = REDUCE_WG / 2u; stride > 0u; stride /= 2u) {
        if lid < stride { partial[lid] += partial[lid + stride]; }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();  // every invocation has read the total before the next column
    return total;
}

@compute @workgroup_size(REDUCE_WG)
fn mining_reduce(@builtin(local_invocation_index) lid: u32) {
    let hinge = column_sum(lid, 0u);
    let n_mined = column_sum(lid, 1u);
    let n_active = column_sum(lid, 2u);
    let dap = column_sum(lid, 3u);
    let dan = column_sum(lid, 4u);
    if lid == 0u {
        let count = select(n_mined, n_active, p.by_active == 1u);
        loss[0] = select(hinge / count, 0.0, count == 0.0);
        stats[0] = n_mined;
        stats[1] = n_active;
        stats[2] = select(dap / n_mined, 0.0, n_mined == 0.0);
        stats[3] = select(dan / n_mined, 0.0, n_mined == 0.0);
    }
}
