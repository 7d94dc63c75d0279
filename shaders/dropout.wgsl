// dropout.wgsl — dropout as PyTorch's nn.Dropout(p) in training: each element is zeroed
// with probability p and the survivors are scaled by 1/(1 − p); and its gradient. Tensors
// of any shape (flat arrays of `len` elements of type `elem`: f32, or f16 under mixed
// precision, where the launcher compiles the f16 variant; the product is taken in f32 and
// rounded once on store).
//
// Entry points (binding 0 is always `p: DropoutParams`; x, y, dy, dx have `len` elements,
// any shape, row-major; rng is [2] u32 = [seed, step], written by the trainer each step):
//   dropout_forward    x, rng   ->  y    y  = x·keep·scale
//   dropout_backward   dy, rng  ->  dx   dx = dy·keep·scale   (the same keep, recomputed)
// with scale = 1/(1 − p) and keep ∈ {0, 1} the mask below. The mask is multiplied in, not
// selected, so an infinite or NaN input stays non-finite where it is dropped, as in
// PyTorch (mixed precision's overflow check must still see it).
//
// The mask comes from a counter-based generator, Philox4x32-10 (Salmon, Moraes, Dror and
// Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC'11; the generator of cuRAND and
// of PyTorch's CUDA dropout): a keyed bijection of a 128-bit counter, ten rounds, here with
// key = (seed, stream) and counter = (i / 4, step, 0, 0). Element i reads word i % 4 of
// its block's output u and is kept where u ≥ p.threshold = round(p·2³²). Nothing is stored
// between the passes: the backward recomputes the forward's mask from the same rng tensor,
// a run is bit-reproducible from its seed, and a resumed run draws the masks the
// uninterrupted one would have. `stream` (one per dropout layer) keys layers apart; `step`
// changes the mask every step without re-recording anything.
//
// One invocation per block of four elements (one Philox call, four words). The workgroup
// grid may be folded into two dimensions (grid_1d in Rust), so the linear index is rebuilt
// from wid.x + wid.y·nwg.x and bounds-checked.

struct DropoutParams {
    len: u32,
    threshold: u32,  // round(p·2³²): a word below it drops its element
    stream: u32,     // the layer's key word beside the seed
    scale: f32,      // 1/(1 − p), rounded to f32 once on the host
}

alias elem = f32;

@group(0) @binding(0) var<uniform> p: DropoutParams;
@group(0) @binding(1) var<storage, read> x: array<elem>;
@group(0) @binding(2) var<storage, read_write> y: array<elem>;
@group(0) @binding(3) var<storage, read> rng: array<u32>;
@group(0) @binding(4) var<storage, read> dy: array<elem>;
@group(0) @binding(5) var<storage, read_write> dx: array<elem>;

override WG: u32 = 256u;  // invocations per workgroup

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

// Philox4x32's multipliers and Weyl key increments (Random123's PHILOX_M4x32_0/1 and
// PHILOX_W32_0/1).
const PHILOX_M0: u32 = 0xD2511F53u;
const PHILOX_M1: u32 = 0xCD9E8D57u;
const PHILOX_W0: u32 = 0x9E3779B9u;
const PHILOX_W1: u32 = 0xBB67AE85u;

// The high and low words of the 64-bit product a·b. WGSL has no 64-bit integers, so the
// high word is assembled from 16-bit halves; u32 products wrap, which gives the low word.
fn mulhilo(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    // The carry out of the low word's upper half: three terms below 2¹⁶ each.
    let mid = ((a0 * b0) >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    let hi = a1 * b1 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
    return vec2<u32>(hi, a * b);
}

// Philox4x32-10 of `counter` under `key`: ten rounds, the key bumped by the Weyl
// increments before every round but the first (Random123's philox4x32_R with R = 10).
fn philox4x32_10(counter: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
    var c = counter;
    var k = key;
    for (var round = 0u; round < 10u; round++) {
        if round > 0u {
            k += vec2<u32>(PHILOX_W0, PHILOX_W1);
        }
        let m0 = mulhilo(PHILOX_M0, c.x);
        let m1 = mulhilo(PHILOX_M1, c.z);
        c = vec4<u32>(m1.x ^ c.y ^ k.x, m1.y, m0.x ^ c.w ^ k.y, m0.y);
    }
    return c;
}

// The factor each of block j's four elements is multiplied by: scale where kept, else 0.
fn block_factors(j: u32) -> vec4<f32> {
    let u = philox4x32_10(vec4<u32>(j, rng[1], 0u, 0u), vec2<u32>(rng[0], p.stream));
    return select(vec4<f32>(0.0), vec4<f32>(p.scale), u >= vec4<u32>(p.threshold));
}

@compute @workgroup_size(WG)
fn dropout_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let j = linear_index(wid, nwg, lid);
    if j >= (p.len + 3u) / 4u { return; }
    let f = block_factors(j);
    for (var e = 0u; e < 4u; e++) {
        let i = 4u * j + e;
        if i < p.len {
            y[i] = elem(f32(x[i]) * f[e]);
        }
    }
}

@compute @workgroup_size(WG)
fn dropout_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let j = linear_index(wid, nwg, lid);
    if j >= (p.len + 3u) / 4u { return; }
    let f = block_factors(j);
    for (var e = 0u; e < 4u; e++) {
        let i = 4u * j + e;
        if i < p.len {
            dx[i] = elem(f32(dy[i]) * f[e]);
        }
    }
}
