// loss.wgsl — the three Siamese losses, each reduced to the batch mean, and their gradients.
//
// Entry points (binding 0 is always `p: LossParams`; every tensor is a flat f32 array of
// B = p.batch elements unless noted; labels are u32 PairLabel codes, see SAME / DIFFERENT):
//   contrastive_loss_forward   1 x = d [B], 2 labels [B]                 -> 5 loss [1]
//   contrastive_loss_backward  1 x = d [B], 2 labels [B], 4 dloss [1]    -> 6 dx = dd [B]
//   triplet_loss_forward       1 x = d_ap [B], 3 d_an [B]                -> 5 loss [1]
//   triplet_loss_backward      1 x = d_ap [B], 3 d_an [B], 4 dloss [1]   -> 6 dx = dd_ap [B], 7 dd_an [B]
//   bce_with_logits_forward    1 x = z [B], 2 labels [B]                 -> 5 loss [1]
//   bce_with_logits_backward   1 x = z [B], 2 labels [B], 4 dloss [1]    -> 6 dx = dz [B]
//   contrastive_euclidean_forward   8 ea [B, D], 9 eb [B, D], 2 labels     -> 6 dx = d [B], 5 loss [1]
//   contrastive_euclidean_backward  8 ea, 9 eb, 1 x = d, 2 labels, 4 dloss -> 10 dea [B, D], 11 deb [B, D]
//   triplet_euclidean_forward   8 ea = anchors, 9 eb = positives, 12 en = negatives [B, D]
//                               -> 6 dx = d_ap [B], 7 dd_an = d_an [B], 5 loss [1]
//   triplet_euclidean_backward  8 ea, 9 eb, 12 en, 1 x = d_ap, 3 d_an, 4 dloss
//                               -> 10 dea, 11 deb, 13 den [B, D]
//   contrastive_cosine_forward, contrastive_cosine_backward, triplet_cosine_forward,
//   triplet_cosine_backward     as the _euclidean entries, with the cosine distance; the
//                               backwards take one invocation per pair (row)
//
// The fused entries take the distance of paired embeddings (distance.wgsl's Euclidean, with its
// 1e-12 inside the sqrt, or its cosine, norms clamped at 1e-8), the loss and the loss's
// gradient: embeddings in; the loss, and the gradients of the embeddings, out, in two
// dispatches instead of four (the triplet: seven). They do the same arithmetic in the same
// order as euclidean_* or cosine_* followed by contrastive_loss_* (triplet_loss_*): the same
// bits, up to where a compiler contracts a product into a sum differently (on lavapipe the
// loss moves by an ulp; d and the gradients do not). The cosine backward needs a pair's three
// sums before any element, so one invocation owns a row, as distance.wgsl's cosine_backward.
//
// Forwards run as ONE workgroup of REDUCE_WG invocations (dispatch [1, 1, 1]) for any B:
// each invocation sums a strided slice, then a fixed-shape tree in workgroup memory. The
// summation order depends only on B, so the loss is bit-reproducible on one adapter (WGSL
// has no float atomics, and atomics would make it order-dependent anyway). One workgroup is
// enough: a loss is O(B) work on a batch of at most ~100k, noise beside the tower.
//
// Backwards are elementwise over B, REDUCE_WG invocations per workgroup, workgroups folded
// into 2-D by grid_1d (linear index wid.x + wid.y·nwg.x, bounds-checked). The upstream
// gradient dloss is a 1-element tensor, not a constant, so a tape can chain a scaled loss.

// PairLabel codes (src/ops/loss.rs, PairLabel::code). Named here so that no kernel reads a
// bare 0/1 whose meaning flips between articles (Hadsell et al. use Y = 0 for "similar").
const SAME: u32 = 1u;
const DIFFERENT: u32 = 0u;

struct LossParams {
    batch: u32,   // B
    margin: f32,  // m of the contrastive and triplet losses (unused by BCE)
    dim: u32,     // D, the embedding size of the fused entries
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: LossParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read> d_an: array<f32>;
@group(0) @binding(4) var<storage, read> dloss: array<f32>;
@group(0) @binding(5) var<storage, read_write> loss: array<f32>;
@group(0) @binding(6) var<storage, read_write> dx: array<f32>;
@group(0) @binding(7) var<storage, read_write> dd_an: array<f32>;
@group(0) @binding(8) var<storage, read> ea: array<f32>;
@group(0) @binding(9) var<storage, read> eb: array<f32>;
@group(0) @binding(10) var<storage, read_write> dea: array<f32>;
@group(0) @binding(11) var<storage, read_write> deb: array<f32>;
@group(0) @binding(12) var<storage, read> en: array<f32>;
@group(0) @binding(13) var<storage, read_write> den: array<f32>;

const REDUCE_WG: u32 = 256u;  // invocations of the reduction (a power of 2)
const COSINE_EPS: f32 = 1e-8; // distance.wgsl's clamp of a norm

var<workgroup> partial: array<f32, REDUCE_WG>;

// Tree-reduces the invocations' partial sums and writes their mean. Every invocation of the
// workgroup must call it (it holds barriers).
fn write_mean(lid: u32, s: f32) {
    partial[lid] = s;
    workgroupBarrier();
    for (var stride = REDUCE_WG / 2u; stride > 0u; stride /= 2u) {
        if lid < stride { partial[lid] += partial[lid + stride]; }
        workgroupBarrier();
    }
    if lid == 0u { loss[0] = partial[0] / f32(p.batch); }
}

// Sample index of an elementwise backward invocation (may overshoot B: callers check).
fn sample(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * REDUCE_WG + lid;
}

// ---- contrastive: same·d² + different·max(0, m − d)² ----

fn contrastive_of(d: f32, i: u32) -> f32 {
    if labels[i] == SAME { return d * d; }
    let h = max(0.0, p.margin - d);
    return h * h;
}

fn contrastive_term(i: u32) -> f32 {
    return contrastive_of(x[i], i);
}

// ∂/∂d of the term, times the upstream gradient over B: ∂/∂d of max(0, m − d)² is
// −2·max(0, m − d), zero past the margin and continuous at it.
fn contrastive_grad(d: f32, i: u32) -> f32 {
    let scale = dloss[0] / f32(p.batch);
    let g = select(-2.0 * max(0.0, p.margin - d), 2.0 * d, labels[i] == SAME);
    return scale * g;
}

@compute @workgroup_size(REDUCE_WG)
fn contrastive_loss_forward(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var i = lid; i < p.batch; i += REDUCE_WG) { s += contrastive_term(i); }
    write_mean(lid, s);
}

@compute @workgroup_size(REDUCE_WG)
fn contrastive_loss_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(local_invocation_index) lid: u32) {
    let i = sample(wid, nwg, lid);
    if i >= p.batch { return; }
    dx[i] = contrastive_grad(x[i], i);
}

// distance.wgsl's euclidean_forward of row i of ea and eb, in its order: sqrt(Σ(a−b)² + 1e-12).
fn euclidean_ab(i: u32) -> f32 {
    let base = i * p.dim;
    var s = 0.0;
    for (var k = 0u; k < p.dim; k++) {
        let t = ea[base + k] - eb[base + k];
        s = fma(t, t, s);
    }
    return sqrt(s + 1e-12);
}

// The same for row i of ea and en.
fn euclidean_an(i: u32) -> f32 {
    let base = i * p.dim;
    var s = 0.0;
    for (var k = 0u; k < p.dim; k++) {
        let t = ea[base + k] - en[base + k];
        s = fma(t, t, s);
    }
    return sqrt(s + 1e-12);
}

// One workgroup, as contrastive_loss_forward: invocation lid takes pairs lid, lid + 256, …
// (the launcher keeps B·D/256 under llvmpipe's loop limit).
@compute @workgroup_size(REDUCE_WG)
fn contrastive_euclidean_forward(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var i = lid; i < p.batch; i += REDUCE_WG) {
        let d = euclidean_ab(i);
        dx[i] = d;
        s += contrastive_of(d, i);
    }
    write_mean(lid, s);
}

// One invocation per element e of [B, D]: euclidean_backward's (a − b)/d times the loss's
// gradient of pair i, written to both sides.
@compute @workgroup_size(REDUCE_WG)
fn contrastive_euclidean_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                  @builtin(local_invocation_index) lid: u32) {
    let e = sample(wid, nwg, lid);
    if e >= p.batch * p.dim { return; }
    let i = e / p.dim;
    let d = x[i];
    let g = contrastive_grad(d, i) * (ea[e] - eb[e]) / d;
    dea[e] = g;
    deb[e] = -g;
}

// ---- triplet: max(0, d_ap − d_an + m), hinged per sample BEFORE the mean ----

@compute @workgroup_size(REDUCE_WG)
fn triplet_loss_forward(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var i = lid; i < p.batch; i += REDUCE_WG) {
        s += max(0.0, x[i] - d_an[i] + p.margin);
    }
    write_mean(lid, s);
}

@compute @workgroup_size(REDUCE_WG)
fn triplet_loss_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let i = sample(wid, nwg, lid);
    if i >= p.batch { return; }
    let scale = dloss[0] / f32(p.batch);
    // Subgradient 0 at the kink (as PyTorch's relu): a triplet exactly at the margin is done.
    let hinge_on = x[i] - d_an[i] + p.margin > 0.0;
    let g = select(0.0, scale, hinge_on);
    dx[i] = g;
    dd_an[i] = -g;
}

// ---- binary cross-entropy with logits, target y = 1 for SAME, 0 for DIFFERENT ----

// log(1 + v) for v in [0, 1], accurate also where 1 + v rounds to 1 (WGSL has no log1p):
// log(u)·v/(u − 1) cancels the rounding of u = 1 + v (Goldberg 1991, thm. 4).
fn log1p(v: f32) -> f32 {
    let u = 1.0 + v;
    if u == 1.0 { return v; }
    return log(u) * (v / (u - 1.0));
}

// σ(z) without overflow: exp is only taken of −|z|.
fn sigmoid(z: f32) -> f32 {
    let e = exp(-abs(z));
    return select(e / (1.0 + e), 1.0 / (1.0 + e), z >= 0.0);
}

@compute @workgroup_size(REDUCE_WG)
fn bce_with_logits_forward(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var i = lid; i < p.batch; i += REDUCE_WG) {
        let z = x[i];
        let y = select(0.0, 1.0, labels[i] == SAME);
        // max(z, 0) − z·y + log(1 + exp(−|z|)): never exponentiates a positive number.
        s += max(z, 0.0) - z * y + log1p(exp(-abs(z)));
    }
    write_mean(lid, s);
}

@compute @workgroup_size(REDUCE_WG)
fn bce_with_logits_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                            @builtin(local_invocation_index) lid: u32) {
    let i = sample(wid, nwg, lid);
    if i >= p.batch { return; }
    let scale = dloss[0] / f32(p.batch);
    let z = x[i];
    // σ(z) − y, written without the cancellation σ(z) − 1 suffers for large z when y = 1:
    // σ(z) − 1 = −σ(−z).
    let g = select(sigmoid(z), -sigmoid(-z), labels[i] == SAME);
    dx[i] = scale * g;
}

// Random triplets: as triplet_loss_forward over the distances of anchor–positive and
// anchor–negative rows, computed here (one workgroup; the launcher bounds B·D as above).
@compute @workgroup_size(REDUCE_WG)
fn triplet_euclidean_forward(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var i = lid; i < p.batch; i += REDUCE_WG) {
        let ap = euclidean_ab(i);
        let an = euclidean_an(i);
        dx[i] = ap;
        dd_an[i] = an;
        s += max(0.0, ap - an + p.margin);
    }
    write_mean(lid, s);
}

// One invocation per element of [B, D]: each distance's gradient (a − x)/d times the hinge's
// ±dloss/B, the anchor's two summed in the order the tape would sum them.
@compute @workgroup_size(REDUCE_WG)
fn triplet_euclidean_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                              @builtin(local_invocation_index) lid: u32) {
    let e = sample(wid, nwg, lid);
    if e >= p.batch * p.dim { return; }
    let i = e / p.dim;
    let scale = dloss[0] / f32(p.batch);
    let hinged = x[i] - d_an[i] + p.margin > 0.0;
    let g_ap = select(0.0, scale, hinged) * (ea[e] - eb[e]) / x[i];
    let g_an = select(0.0, -scale, hinged) * (ea[e] - en[e]) / d_an[i];
    dea[e] = g_ap + g_an;
    deb[e] = -g_ap;
    den[e] = -g_an;
}

// ---- the fused entries on the cosine distance ----

// distance.wgsl's cosine_sums of row i of ea and eb: ⟨a,b⟩, ‖a‖², ‖b‖², in its order.
fn cosine_sums_ab(i: u32) -> vec3<f32> {
    let base = i * p.dim;
    var s = vec3<f32>(0.0);
    for (var k = 0u; k < p.dim; k++) {
        let x = ea[base + k];
        let y = eb[base + k];
        s = fma(vec3<f32>(x, x, y), vec3<f32>(y, x, y), s);
    }
    return s;
}

// The same for row i of ea and en.
fn cosine_sums_an(i: u32) -> vec3<f32> {
    let base = i * p.dim;
    var s = vec3<f32>(0.0);
    for (var k = 0u; k < p.dim; k++) {
        let x = ea[base + k];
        let y = en[base + k];
        s = fma(vec3<f32>(x, x, y), vec3<f32>(y, x, y), s);
    }
    return s;
}

// 1 − ⟨a,b⟩ / (max(‖a‖, 1e-8)·max(‖b‖, 1e-8)) from the sums, as distance.wgsl's cosine_forward.
fn cosine_of(s: vec3<f32>) -> f32 {
    let norm_a = max(sqrt(s.y), COSINE_EPS);
    let norm_b = max(sqrt(s.z), COSINE_EPS);
    return 1.0 - s.x / (norm_a * norm_b);
}

// The factors of distance.wgsl's cosine_backward: (1/(‖a‖‖b‖), cos/‖a‖², cos/‖b‖²), a term
// absent for a clamped norm; ∂d/∂a = ca·a − inv·b and ∂d/∂b = cb·b − inv·a.
fn cosine_factors(s: vec3<f32>) -> vec3<f32> {
    let norm_a = max(sqrt(s.y), COSINE_EPS);
    let norm_b = max(sqrt(s.z), COSINE_EPS);
    let inv = 1.0 / (norm_a * norm_b);
    let cos = s.x * inv;
    let ca = select(0.0, cos / (norm_a * norm_a), norm_a > COSINE_EPS);
    let cb = select(0.0, cos / (norm_b * norm_b), norm_b > COSINE_EPS);
    return vec3<f32>(inv, ca, cb);
}

@compute @workgroup_size(REDUCE_WG)
fn contrastive_cosine_forward(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var i = lid; i < p.batch; i += REDUCE_WG) {
        let d = cosine_of(cosine_sums_ab(i));
        dx[i] = d;
        s += contrastive_of(d, i);
    }
    write_mean(lid, s);
}

@compute @workgroup_size(REDUCE_WG)
fn contrastive_cosine_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                               @builtin(local_invocation_index) lid: u32) {
    let i = sample(wid, nwg, lid);
    if i >= p.batch { return; }
    let g = contrastive_grad(x[i], i);
    let f = cosine_factors(cosine_sums_ab(i));
    let base = i * p.dim;
    for (var k = 0u; k < p.dim; k++) {
        let a = ea[base + k];
        let b = eb[base + k];
        dea[base + k] = g * (f.y * a - f.x * b);
        deb[base + k] = g * (f.z * b - f.x * a);
    }
}

@compute @workgroup_size(REDUCE_WG)
fn triplet_cosine_forward(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var i = lid; i < p.batch; i += REDUCE_WG) {
        let ap = cosine_of(cosine_sums_ab(i));
        let an = cosine_of(cosine_sums_an(i));
        dx[i] = ap;
        dd_an[i] = an;
        s += max(0.0, ap - an + p.margin);
    }
    write_mean(lid, s);
}

// One invocation per triplet: the anchor's gradient the sum of its two distances', in the order
// the tape would add them (the positive's first).
@compute @workgroup_size(REDUCE_WG)
fn triplet_cosine_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
    let i = sample(wid, nwg, lid);
    if i >= p.batch { return; }
    let scale = dloss[0] / f32(p.batch);
    let hinged = x[i] - d_an[i] + p.margin > 0.0;
    let g_ap = select(0.0, scale, hinged);
    let g_an = select(0.0, -scale, hinged);
    let fp = cosine_factors(cosine_sums_ab(i));
    let fneg = cosine_factors(cosine_sums_an(i));
    let base = i * p.dim;
    for (var k = 0u; k < p.dim; k++) {
        let a = ea[base + k];
        let b = eb[base + k];
        let c = en[base + k];
        dea[base + k] = g_ap * (fp.y * a - fp.x * b) + g_an * (fneg.y * a - fneg.x * c);
        deb[base + k] = g_ap * (fp.z * b - fp.x * a);
        den[base + k] = g_an * (fneg.z * c - fneg.x * a);
    }
}
