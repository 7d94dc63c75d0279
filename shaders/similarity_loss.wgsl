// similarity_loss.wgsl — losses on the cosine similarities between a batch (rows) and a
// reference set (columns), and their gradients:
//   ArcFace          Deng, Guo, Xue, Zafeiriou, "ArcFace: Additive Angular Margin Loss for Deep
//                    Face Recognition", CVPR 2019 (target logit cos(θ + m); where θ + m > π,
//                    cos θ − m·sin m, as the paper's code and pytorch-metric-learning);
//   Sub-center       Deng, Guo, Liu, Zafeiriou, "Sub-center ArcFace", ECCV 2020 (a class's cosine
//                    is the best of its K sub-centers);
//   CosFace          Wang et al., "CosFace: Large Margin Cosine Loss", CVPR 2018 (cos θ − m);
//   ProxyAnchor      Kim, Kim, Cho, Kwak, "Proxy Anchor Loss for Deep Metric Learning", CVPR 2020;
//   SupCon           Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020 (L^sup_out);
//   NT-Xent          Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive
//                    Learning of Visual Representations" (SimCLR), ICML 2020, with class labels
//                    choosing the positive pairs as pytorch-metric-learning's NTXentLoss;
//   Multi-Similarity Wang, Han, Huang, Dong, Scott, "Multi-Similarity Loss with General Pair
//                    Weighting for Deep Metric Learning", CVPR 2019, with its pair mining (ε).
// The reductions are pytorch-metric-learning's (v2.x): the mean over rows (margin softmax,
// Multi-Similarity), over positive pairs (NT-Xent), over anchors with a non-zero loss
// (SupCon), and ProxyAnchor's Σpos/(proxies with a positive) + Σneg/(proxies).
//
// Tensors (flat, row-major): dm [N, R] f32 cosine DISTANCES 1 − s (distance.wgsl's pairwise
// cosine; every loss reads s = 1 − dm and writes ddm = −∂L/∂s); labels [N] u32 row classes;
// ref_labels [R] u32 column classes of the losses over embeddings; rows [M, ROW] partial sums,
// M = N, or R (ProxyAnchor: one per proxy); loss [1]; stats [4] = (Σd0, Σd1, Σa, Σb); dloss [1];
// ddm [N, R].
//
// Entry points (binding 0 is always `p: SimParams`):
//   margin_softmax_rows        1 dm, 2 labels                    -> 4 rows   one workgroup per row
//   proxy_anchor_rows          1 dm, 2 labels                    -> 4 rows   one workgroup per proxy
//   supcon_rows                1 dm, 2 labels, 3 ref_labels      -> 4 rows   one workgroup per row
//   ntxent_rows                1 dm, 2 labels, 3 ref_labels      -> 4 rows   one workgroup per row
//   multi_similarity_rows      1 dm, 2 labels, 3 ref_labels      -> 4 rows   one workgroup per row
//   similarity_reduce          4 rows                            -> 5 loss, 6 stats   one workgroup
//   margin_softmax_backward    1 dm, 2 labels, 4 rows, 6 stats, 7 dloss      -> 8 ddm  per element
//   proxy_anchor_backward      1 dm, 2 labels, 4 rows, 6 stats, 7 dloss      -> 8 ddm  per element
//   supcon_backward, ntxent_backward, multi_similarity_backward
//                              1 dm, 2 labels, 3 ref_labels, 4 rows, 6 stats, 7 dloss -> 8 ddm
//   memory_enqueue             10 batch [N, D], 2 labels, 9 window -> 11 memory [M, D], 12 memory_labels [M]
//                              per element of [N, D] (p.n = N, p.r = M, p.k = D)
//
// The losses over embeddings (SupCon, NT-Xent, Multi-Similarity) also read 9 window [4] u32 =
// (self_start, start, count, self_cols): row i pairs with the columns of the ring window
// start .. start + count (mod R), never with its own column (self_start + i) mod R when
// self_cols is 1. The batch against itself is (0, 0, N, 1). A cross-batch memory (Wang et al.,
// "Cross-Batch Memory for Embedding Learning", CVPR 2020) is a ring of M slots that
// memory_enqueue fills with each batch's embeddings (detached: the columns pass no gradient,
// as pytorch-metric-learning's CrossBatchMemory) at self_start = its write position, before
// the loss reads the batch against the slots filled so far.
//
// A row of partial sums is (n0, d0, n1, d1, a, b, v0, v1, v2, v3): the loss is Σn0/Σd0 +
// Σn1/Σd1 (a term with a zero divisor is 0); a and b are statistics the reduction sums for the
// doctor; v0..v3 are the row's values the backward reads (its log-sum-exps, the miner's bounds).
// src/cpu/similarity_loss.rs is the specification, row by row.
//
// A forward row is ONE workgroup of WG invocations: each takes the columns lid, lid + WG, …
// and the workgroup combines them in fixed trees (max, then sums of exp(x − max)), so no
// invocation loops more than R/WG times — llvmpipe stops a loop after 65,535 iterations,
// silently, and a class head may have tens of thousands of columns. The reduction is one
// workgroup in a fixed order (as loss.wgsl): the loss is bit-reproducible on one adapter.
// The backward is elementwise: each ddm element has one writer, which reads its row's values.
// Every log-sum-exp is shifted by its maximum; "no value" is a finite ±1e30, never inf.

struct SimParams {
    n: u32,          // N, rows of dm
    r: u32,          // R, columns of dm
    k: u32,          // sub-centers per class (margin softmax), else 1; D for memory_enqueue
    _pad2: u32,
    rows: u32,       // M, rows of `rows`
    angular: u32,    // margin softmax: 1 ArcFace (h1 = m, h2 = cos m, h3 = sin m), 0 CosFace (h1 = m)
    _pad0: u32,
    _pad1: u32,
    // Hyper-parameters. margin softmax: h0 = s; ProxyAnchor: h0 = α, h1 = δ; SupCon and NT-Xent:
    // h0 = τ; Multi-Similarity: h0 = α, h1 = β, h2 = λ, h3 = ε.
    h0: f32,
    h1: f32,
    h2: f32,
    h3: f32,
}

@group(0) @binding(0) var<uniform> p: SimParams;
@group(0) @binding(1) var<storage, read> dm: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read> ref_labels: array<u32>;
@group(0) @binding(4) var<storage, read_write> rows: array<f32>;
@group(0) @binding(5) var<storage, read_write> loss: array<f32>;
@group(0) @binding(6) var<storage, read_write> stats: array<f32>;
@group(0) @binding(7) var<storage, read> dloss: array<f32>;
@group(0) @binding(8) var<storage, read_write> ddm: array<f32>;
@group(0) @binding(9) var<storage, read> window: array<u32>;
@group(0) @binding(10) var<storage, read> batch: array<f32>;
@group(0) @binding(11) var<storage, read_write> memory: array<f32>;
@group(0) @binding(12) var<storage, read_write> memory_labels: array<u32>;

const WG: u32 = 64u;          // invocations of a forward row (a power of 2)
const REDUCE_WG: u32 = 256u;  // invocations of the reduction and of a backward workgroup
const ROW: u32 = 10u;
const NONE_BELOW: f32 = -1e30;
const NONE_ABOVE: f32 = 1e30;
const MIN_SIN: f32 = 1e-6;    // see target_logit

var<workgroup> tree: array<f32, WG>;
var<workgroup> reduce_tree: array<f32, REDUCE_WG>;

// The workgroup's combination of every invocation's v (sum, or max when `is_max`). Every
// invocation must call it (it holds barriers) and gets the result.
fn combine(lid: u32, v: f32, is_max: bool) -> f32 {
    tree[lid] = v;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if lid < stride {
            let other = tree[lid + stride];
            tree[lid] = select(tree[lid] + other, max(tree[lid], other), is_max);
        }
        workgroupBarrier();
    }
    let total = tree[0];
    workgroupBarrier();  // everyone has read tree[0] before the next combine writes it
    return total;
}

fn wg_sum(lid: u32, v: f32) -> f32 { return combine(lid, v, false); }
fn wg_max(lid: u32, v: f32) -> f32 { return combine(lid, v, true); }
fn wg_min(lid: u32, v: f32) -> f32 { return -combine(lid, -v, true); }

fn s_at(i: u32, j: u32) -> f32 { return 1.0 - dm[i * p.r + j]; }
fn is_valid(i: u32, j: u32) -> bool {
    let in_window = (j + p.r - window[1] % p.r) % p.r < window[2];
    return in_window && !(window[3] == 1u && j == (window[0] + i) % p.r);
}
fn is_positive(i: u32, j: u32) -> bool { return is_valid(i, j) && ref_labels[j] == labels[i]; }

fn softplus(x: f32) -> f32 { return max(x, 0.0) + log(1.0 + exp(-abs(x))); }
fn sigmoid(x: f32) -> f32 {
    let e = exp(-abs(x));
    return select(e / (1.0 + e), 1.0 / (1.0 + e), x >= 0.0);
}

fn row_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 { return wid.x + wid.y * nwg.x; }
fn element(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 { return row_index(wid, nwg) * REDUCE_WG + lid; }

fn write_row(m: u32, v: array<f32, 10>) {
    var values = v;
    for (var c = 0u; c < ROW; c++) { rows[m * ROW + c] = values[c]; }
}

// ---- margin softmax: ArcFace, Sub-center ArcFace, CosFace ----

// Row i's cosine to class c (the best of its K sub-centers) in x, and which sub-center in y
// (the lowest index on a tie, as torch.max).
fn class_cos(i: u32, c: u32) -> vec2<f32> {
    var best = s_at(i, c * p.k);
    var q = 0u;
    for (var t = 1u; t < p.k; t++) {
        let v = s_at(i, c * p.k + t);
        if v > best { best = v; q = t; }
    }
    return vec2<f32>(best, f32(q));
}

// The target's unscaled logit (x) and its derivative in cos θ (y), from its cosine c.
// ArcFace: cos(θ + m) = c·cos m − sin θ·sin m while θ ≤ π − m (c ≥ −cos m), with c clamped to
// 1; its derivative cos m + sin m·c/sin θ, sin θ floored at MIN_SIN (the exact one is infinite
// at c = ±1, where PyTorch's autograd gives inf or NaN). No acos: WGSL's is only accurate to
// thousands of ULP.
fn target_logit(c: f32) -> vec2<f32> {
    if p.angular == 0u { return vec2<f32>(c - p.h1, 1.0); }
    if c >= -p.h2 {
        let cc = min(c, 1.0);
        let sin_t = sqrt(max(1.0 - cc * cc, 0.0));
        return vec2<f32>(cc * p.h2 - sin_t * p.h3, p.h2 + p.h3 * cc / max(sin_t, MIN_SIN));
    }
    return vec2<f32>(c - p.h1 * p.h3, 1.0);
}

@compute @workgroup_size(WG)
fn margin_softmax_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let i = row_index(wid, nwg);
    if i >= p.rows { return; }
    let classes = p.r / p.k;
    let y = labels[i];
    let ct = class_cos(i, y).x;
    let f = target_logit(ct);
    var zmax = NONE_BELOW;
    var other = NONE_BELOW;
    for (var c = lid; c < classes; c += WG) {
        let cc = class_cos(i, c).x;
        zmax = max(zmax, p.h0 * select(cc, f.x, c == y));
        if c != y { other = max(other, cc); }
    }
    zmax = wg_max(lid, zmax);
    other = wg_max(lid, other);
    var sum = 0.0;
    for (var c = lid; c < classes; c += WG) {
        sum += exp(p.h0 * select(class_cos(i, c).x, f.x, c == y) - zmax);
    }
    sum = wg_sum(lid, sum);
    if lid == 0u {
        let lse = zmax + log(sum);
        write_row(i, array<f32, 10>(lse - p.h0 * f.x, 1.0, 0.0, 0.0, ct, select(0.0, 1.0, ct > other),
                                    lse, f.x, f.y, ct));
    }
}

@compute @workgroup_size(REDUCE_WG)
fn margin_softmax_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
    let e = element(wid, nwg, lid);
    if e >= p.n * p.r { return; }
    let i = e / p.r;
    let j = e % p.r;
    let c = j / p.k;
    let best = class_cos(i, c);
    if j % p.k != u32(best.y) {
        ddm[e] = 0.0;
        return;
    }
    let is_target = c == labels[i];
    let z = p.h0 * select(best.x, rows[i * ROW + 7u], is_target);
    let prob = exp(z - rows[i * ROW + 6u]);
    let g = (prob - select(0.0, 1.0, is_target)) / stats[0];
    ddm[e] = -dloss[0] * p.h0 * g * select(1.0, rows[i * ROW + 8u], is_target);
}

// ---- ProxyAnchor: per proxy, down the batch ----

@compute @workgroup_size(WG)
fn proxy_anchor_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let c = row_index(wid, nwg);
    if c >= p.rows { return; }
    let alpha = p.h0;
    let delta = p.h1;
    // log(1 + Σ e^x) shifted by max(0, max x): the maximum starts at 0.
    var pmax = 0.0;
    var nmax = 0.0;
    var count = 0.0;
    var sum_s = 0.0;
    for (var i = lid; i < p.n; i += WG) {
        let s = s_at(i, c);
        if labels[i] == c {
            pmax = max(pmax, -alpha * (s - delta));
            count += 1.0;
            sum_s += s;
        } else {
            nmax = max(nmax, alpha * (s + delta));
        }
    }
    pmax = wg_max(lid, pmax);
    nmax = wg_max(lid, nmax);
    count = wg_sum(lid, count);
    sum_s = wg_sum(lid, sum_s);
    var psum = 0.0;
    var nsum = 0.0;
    for (var i = lid; i < p.n; i += WG) {
        let s = s_at(i, c);
        if labels[i] == c {
            psum += exp(-alpha * (s - delta) - pmax);
        } else {
            nsum += exp(alpha * (s + delta) - nmax);
        }
    }
    psum = wg_sum(lid, psum);
    nsum = wg_sum(lid, nsum);
    if lid == 0u {
        let pos_lse = pmax + log(exp(-pmax) + psum);
        let neg_lse = nmax + log(exp(-nmax) + nsum);
        write_row(c, array<f32, 10>(pos_lse, select(0.0, 1.0, count > 0.0), neg_lse, 1.0, sum_s, count,
                                    pos_lse, neg_lse, 0.0, 0.0));
    }
}

@compute @workgroup_size(REDUCE_WG)
fn proxy_anchor_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let e = element(wid, nwg, lid);
    if e >= p.n * p.r { return; }
    let i = e / p.r;
    let c = e % p.r;
    let s = s_at(i, c);
    var ds: f32;
    if labels[i] == c {
        ds = -p.h0 * exp(-p.h0 * (s - p.h1) - rows[c * ROW + 6u]) / stats[0];
    } else {
        ds = p.h0 * exp(p.h0 * (s + p.h1) - rows[c * ROW + 7u]) / stats[1];
    }
    ddm[e] = -dloss[0] * ds;
}

// ---- the losses over the batch: SupCon, NT-Xent, Multi-Similarity ----

// (mean similarity to the positives, to the negatives) of row i: the statistics a and b.
// Every invocation of the workgroup must call it.
fn mean_similarities(lid: u32, i: u32) -> vec2<f32> {
    var pos = 0.0;
    var neg = 0.0;
    var np = 0.0;
    var nn = 0.0;
    for (var j = lid; j < p.r; j += WG) {
        if !is_valid(i, j) { continue; }
        if is_positive(i, j) {
            pos += s_at(i, j);
            np += 1.0;
        } else {
            neg += s_at(i, j);
            nn += 1.0;
        }
    }
    pos = wg_sum(lid, pos);
    neg = wg_sum(lid, neg);
    np = wg_sum(lid, np);
    nn = wg_sum(lid, nn);
    return vec2<f32>(select(0.0, pos / np, np > 0.0), select(0.0, neg / nn, nn > 0.0));
}

@compute @workgroup_size(WG)
fn supcon_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = row_index(wid, nwg);
    if i >= p.rows { return; }
    let tau = p.h0;
    var tmax = NONE_BELOW;
    var sum_pos = 0.0;
    var np = 0.0;
    for (var j = lid; j < p.r; j += WG) {
        if !is_valid(i, j) { continue; }
        let t = s_at(i, j) / tau;
        tmax = max(tmax, t);
        if is_positive(i, j) {
            sum_pos += t;
            np += 1.0;
        }
    }
    tmax = wg_max(lid, tmax);
    sum_pos = wg_sum(lid, sum_pos);
    np = wg_sum(lid, np);
    var sum = 0.0;
    for (var j = lid; j < p.r; j += WG) {
        if is_valid(i, j) { sum += exp(s_at(i, j) / tau - tmax); }
    }
    sum = wg_sum(lid, sum);
    let ab = mean_similarities(lid, i);
    if lid == 0u {
        let lse = tmax + log(sum);
        let l = select(0.0, lse - sum_pos / np, np > 0.0);
        let counted = l > 0.0;
        write_row(i, array<f32, 10>(select(0.0, l, counted), select(0.0, 1.0, counted), 0.0, 0.0,
                                    ab.x, ab.y, lse, np, 0.0, 0.0));
    }
}

@compute @workgroup_size(REDUCE_WG)
fn supcon_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let e = element(wid, nwg, lid);
    if e >= p.n * p.r { return; }
    let i = e / p.r;
    let j = e % p.r;
    if !is_valid(i, j) || rows[i * ROW + 1u] == 0.0 {
        ddm[e] = 0.0;
        return;
    }
    let tau = p.h0;
    let prob = exp(s_at(i, j) / tau - rows[i * ROW + 6u]);
    let own = select(0.0, 1.0 / rows[i * ROW + 7u], is_positive(i, j));
    ddm[e] = -dloss[0] * (prob - own) / tau / stats[0];
}

@compute @workgroup_size(WG)
fn ntxent_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = row_index(wid, nwg);
    if i >= p.rows { return; }
    let tau = p.h0;
    var nmax = NONE_BELOW;
    var nn = 0.0;
    for (var j = lid; j < p.r; j += WG) {
        if is_valid(i, j) && !is_positive(i, j) {
            nmax = max(nmax, s_at(i, j) / tau);
            nn += 1.0;
        }
    }
    nmax = wg_max(lid, nmax);
    nn = wg_sum(lid, nn);
    var sum = 0.0;
    for (var j = lid; j < p.r; j += WG) {
        if is_valid(i, j) && !is_positive(i, j) { sum += exp(s_at(i, j) / tau - nmax); }
    }
    sum = wg_sum(lid, sum);
    let nl = select(NONE_BELOW, nmax + log(sum), nn > 0.0);
    var l = 0.0;
    var sig = 0.0;
    var np = 0.0;
    for (var j = lid; j < p.r; j += WG) {
        if is_positive(i, j) {
            let u = nl - s_at(i, j) / tau;
            l += softplus(u);
            sig += sigmoid(u);
            np += 1.0;
        }
    }
    l = wg_sum(lid, l);
    sig = wg_sum(lid, sig);
    np = wg_sum(lid, np);
    let ab = mean_similarities(lid, i);
    if lid == 0u {
        write_row(i, array<f32, 10>(l, np, 0.0, 0.0, ab.x, ab.y, nl, sig, 0.0, 0.0));
    }
}

@compute @workgroup_size(REDUCE_WG)
fn ntxent_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let e = element(wid, nwg, lid);
    if e >= p.n * p.r { return; }
    let i = e / p.r;
    let j = e % p.r;
    if !is_valid(i, j) || stats[0] == 0.0 {
        ddm[e] = 0.0;
        return;
    }
    let tau = p.h0;
    let t = s_at(i, j) / tau;
    let nl = rows[i * ROW + 6u];
    var ds: f32;
    if is_positive(i, j) {
        ds = -sigmoid(nl - t);
    } else {
        ds = exp(t - nl) * rows[i * ROW + 7u];
    }
    ddm[e] = -dloss[0] * ds / tau / stats[0];
}

@compute @workgroup_size(WG)
fn multi_similarity_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let i = row_index(wid, nwg);
    if i >= p.rows { return; }
    let alpha = p.h0;
    let beta = p.h1;
    let base = p.h2;
    let eps = p.h3;
    // The miner's bounds: the least similar positive and the most similar negative.
    var mp = NONE_ABOVE;
    var mn = NONE_BELOW;
    for (var j = lid; j < p.r; j += WG) {
        if !is_valid(i, j) { continue; }
        if is_positive(i, j) { mp = min(mp, s_at(i, j)); } else { mn = max(mn, s_at(i, j)); }
    }
    mp = wg_min(lid, mp);
    mn = wg_max(lid, mn);
    var pmax = 0.0;
    var nmax = 0.0;
    for (var j = lid; j < p.r; j += WG) {
        if !is_valid(i, j) { continue; }
        let s = s_at(i, j);
        if is_positive(i, j) {
            if s - eps < mn { pmax = max(pmax, -alpha * (s - base)); }
        } else if s + eps > mp {
            nmax = max(nmax, beta * (s - base));
        }
    }
    pmax = wg_max(lid, pmax);
    nmax = wg_max(lid, nmax);
    var psum = 0.0;
    var nsum = 0.0;
    for (var j = lid; j < p.r; j += WG) {
        if !is_valid(i, j) { continue; }
        let s = s_at(i, j);
        if is_positive(i, j) {
            if s - eps < mn { psum += exp(-alpha * (s - base) - pmax); }
        } else if s + eps > mp {
            nsum += exp(beta * (s - base) - nmax);
        }
    }
    psum = wg_sum(lid, psum);
    nsum = wg_sum(lid, nsum);
    let ab = mean_similarities(lid, i);
    if lid == 0u {
        let pos_lse = pmax + log(exp(-pmax) + psum);
        let neg_lse = nmax + log(exp(-nmax) + nsum);
        write_row(i, array<f32, 10>(pos_lse / alpha + neg_lse / beta, 1.0, 0.0, 0.0, ab.x, ab.y,
                                    mp, mn, pos_lse, neg_lse));
    }
}

@compute @workgroup_size(REDUCE_WG)
fn multi_similarity_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(local_invocation_index) lid: u32) {
    let e = element(wid, nwg, lid);
    if e >= p.n * p.r { return; }
    let i = e / p.r;
    let j = e % p.r;
    let s = s_at(i, j);
    var ds = 0.0;
    if is_valid(i, j) {
        if is_positive(i, j) {
            if s - p.h3 < rows[i * ROW + 7u] {
                ds = -exp(-p.h0 * (s - p.h2) - rows[i * ROW + 8u]) / stats[0];
            }
        } else if s + p.h3 > rows[i * ROW + 6u] {
            ds = exp(p.h1 * (s - p.h2) - rows[i * ROW + 9u]) / stats[0];
        }
    }
    ddm[e] = -dloss[0] * ds;
}

// ---- the cross-batch memory ----

@compute @workgroup_size(REDUCE_WG)
fn memory_enqueue(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let e = element(wid, nwg, lid);
    if e >= p.n * p.k { return; }
    let i = e / p.k;
    let slot = (window[0] + i) % p.r;
    memory[slot * p.k + e % p.k] = batch[e];
    if e % p.k == 0u { memory_labels[slot] = labels[i]; }
}

// ---- the reduction ----

// Sums column `col` of `rows` in one fixed order: strided, then a tree.
fn reduce_column(lid: u32, col: u32) -> f32 {
    var s = 0.0;
    for (var m = lid; m < p.rows; m += REDUCE_WG) { s += rows[m * ROW + col]; }
    reduce_tree[lid] = s;
    workgroupBarrier();
    for (var stride = REDUCE_WG / 2u; stride > 0u; stride /= 2u) {
        if lid < stride { reduce_tree[lid] += reduce_tree[lid + stride]; }
        workgroupBarrier();
    }
    let total = reduce_tree[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(REDUCE_WG)
fn similarity_reduce(@builtin(local_invocation_index) lid: u32) {
    let n0 = reduce_column(lid, 0u);
    let d0 = reduce_column(lid, 1u);
    let n1 = reduce_column(lid, 2u);
    let d1 = reduce_column(lid, 3u);
    let a = reduce_column(lid, 4u);
    let b = reduce_column(lid, 5u);
    if lid == 0u {
        loss[0] = select(0.0, n0 / d0, d0 > 0.0) + select(0.0, n1 / d1, d1 > 0.0);
        stats[0] = d0;
        stats[1] = d1;
        stats[2] = a;
        stats[3] = b;
    }
}
