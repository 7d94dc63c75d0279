// pool.wgsl — 2-D max pooling (square k×k window, stride s, padding PAD), average pooling
// (no padding), global average pooling, and their gradients, over tensors of type `elem`:
// f32, or f16 under mixed precision, where the launcher compiles the f16 variant (x, y, dy
// and dx are then f16 and the dx texels rgba16float; argmax stays u32). The maxima, the ReLU
// and the max backwards' routing only select, so they stay in `elem` and are exact; the sums
// (average pooling, and the max backward's overlapping windows) accumulate in f32 and store
// `elem`.
//
// Entry points (binding 0 is always `p: PoolParams`; tensors row-major, NCHW; the N·C
// planes are independent, so they are flattened into one `planes` axis):
//   max_pool2d_forward   x [N, C, H, W] elem       ->  y [N, C, OH, OW] elem,
//                                                       argmax_out [N, C, OH, OW] u32
//   max_pool2d_relu_forward     relu(max_pool2d(x)) (= max_pool2d(relu(x))), argmax NONE
//                        where the window's max is not above 0: the backward entries then
//                        give the ReLU's zero gradient without a pass of their own
//   max_pool2d_backward  dy [N, C, OH, OW] elem,
//                        argmax [N, C, OH, OW] u32  ->  dx [N, C, H, W] elem
//   max_pool2d_backward_tiled   the same, for windows that tile the input (s = k, PAD = 0):
//                        one invocation per k×k cell writes the cell's k² dx elements
//   max_pool2d_backward_tex     the tiled backward (PAD = 0), dx written as texels in
//                        pack_nhwc4's layout (pack.wgsl: channels by fours, BORDER zero
//                        borders, no unfolding; rgba32float texels, rgba16float in the f16
//                        variant): one invocation per k×k cell and four channels; the
//                        borders are left as they are (zero: see the entry)
//   avg_pool2d_forward   x [N, C, H, W] elem       ->  y [N, C, OH, OW] elem   (PAD = 0)
//   avg_pool2d_backward  dy [N, C, OH, OW] elem    ->  dx [N, C, H, W] elem    (PAD = 0)
//   global_avg_pool2d_forward   x [N, C, H, W] elem  ->  y [N, C] elem, the mean of each
//                        plane: one invocation per plane, H·W ≤ 32,768 (the launcher's
//                        bound, under lavapipe's loop limit)
//   global_avg_pool2d_backward  dy [N, C] elem     ->  dx [N, C, H, W] elem = dy / (H·W)
// argmax holds the in-plane index h·W + w of the input element each window chose, or NONE
// (0xffffffff, which matches no element) for a window that passes no gradient.
//
// Padding (max pooling only) is PyTorch's: the input is surrounded by PAD rows and columns
// of −∞, so a padded position is never chosen, and OH = (H + 2·PAD − K)/S + 1. With
// PAD ≤ K/2 (the launcher's check, PyTorch's rule) every window holds at least one input
// element. Window o covers padded rows o·S .. o·S + K − 1, i.e. input rows o·S − PAD ..
// o·S − PAD + K − 1.
//
// One invocation per output element. The backward passes gather: each dx element loops
// over the (at most ⌈k/s⌉²) windows that contain it. A scatter from dy would need float
// atomics when windows overlap (s < k), which WGSL lacks, and would not be deterministic.
//
// The workgroup grid may be folded into two dimensions (see grid_1d in Rust), so the
// linear index is rebuilt from wid.x + wid.y·nwg.x and bounds-checked.

struct PoolParams {
    planes: u32,  // N·C
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// The plane and window sizes are pipeline constants (one pipeline per layer shape): the
// index arithmetic divides by them, which a CPU (lavapipe) does lane by lane for a runtime
// divisor but as a multiply and a shift for a constant one.
override H: u32;
override W: u32;
override OH: u32;  // (H + 2·PAD − K)/S + 1
override OW: u32;  // (W + 2·PAD − K)/S + 1
override K: u32;
override S: u32;
// Max pooling's padding (the forwards and max_pool2d_backward); the other entries take none.
override PAD: u32 = 0u;

alias elem = f32;

@group(0) @binding(0) var<uniform> p: PoolParams;
@group(0) @binding(1) var<storage, read> x: array<elem>;
@group(0) @binding(2) var<storage, read_write> y: array<elem>;
@group(0) @binding(3) var<storage, read_write> argmax_out: array<u32>;
@group(0) @binding(4) var<storage, read> dy: array<elem>;
@group(0) @binding(5) var<storage, read> argmax: array<u32>;
@group(0) @binding(6) var<storage, read_write> dx: array<elem>;

override WG: u32 = 256u;  // invocations per workgroup
// max_pool2d_backward_tex only: channels per image, and the zero border of the texels.
override C: u32 = 1u;
override BORDER: u32 = 0u;

@group(0) @binding(7) var dx_tex: texture_storage_2d<rgba32float, write>;

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

// The first window row (or column) containing (padded) row `i`: the smallest o with
// o·s + k > i, i.e. ⌈(i − k + 1)/s⌉ clamped at 0 (written to stay in unsigned arithmetic).
fn first_window(i: u32) -> u32 {
    if i + 1u < K { return 0u; }
    return (i + 1u - K + S - 1u) / S;
}

// The last window row (or column) containing (padded) row `i`, given `count` windows: the
// largest o with o·s ≤ i. May be below first_window(i) when i falls in a gap (s > k) or in
// the trailing rows no window reaches: the loops then run zero times.
fn last_window(i: u32, count: u32) -> u32 {
    return min(i / S, count - 1u);
}

const NONE: u32 = 0xffffffffu;

struct WindowMax {
    value: elem,
    index: u32,  // in-plane
}

// The maximum of output o's window, over the input elements it covers (the padding is −∞,
// so it only narrows the loops). It starts from the window's first input element rather
// than −∞, so the index is always valid; strict `>` keeps the first of equal maxima
// (PyTorch's rule).
fn window_max(o: u32) -> WindowMax {
    let ox = o % OW;
    let oy = (o / OW) % OH;
    let base = (o / (OW * OH)) * H * W;
    // The window's input rows [r0, r1) and columns [c0, c1): its padded span clipped to
    // the input, in unsigned arithmetic (oy·S ≤ H + 2·PAD − K, so nothing wraps).
    let r0 = max(oy * S, PAD) - PAD;
    let r1 = min(oy * S + K, H + PAD) - PAD;
    let c0 = max(ox * S, PAD) - PAD;
    let c1 = min(ox * S + K, W + PAD) - PAD;
    var best = WindowMax(x[base + r0 * W + c0], r0 * W + c0);
    for (var iy = r0; iy < r1; iy++) {
        for (var ix = c0; ix < c1; ix++) {
            let idx = iy * W + ix;
            let v = x[base + idx];
            if v > best.value {
                best = WindowMax(v, idx);
            }
        }
    }
    return best;
}

@compute @workgroup_size(WG)
fn max_pool2d_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let o = linear_index(wid, nwg, lid);
    if o >= p.planes * OH * OW { return; }
    let best = window_max(o);
    y[o] = best.value;
    argmax_out[o] = best.index;
}

// A ReLU after (or before: max commutes with it) the pooling, in the same pass. ReLU's
// gradient is dy·[max > 0]: a window whose max is not above 0 records NONE.
@compute @workgroup_size(WG)
fn max_pool2d_relu_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
    let o = linear_index(wid, nwg, lid);
    if o >= p.planes * OH * OW { return; }
    let best = window_max(o);
    let passes = best.value > elem(0.0);
    y[o] = select(elem(0.0), best.value, passes);
    argmax_out[o] = select(NONE, best.index, passes);
}

@compute @workgroup_size(WG)
fn max_pool2d_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if i >= p.planes * H * W { return; }
    let ix = i % W;
    let iy = (i / W) % H;
    let plane = i / (W * H);
    let idx = iy * W + ix;
    let out_base = plane * OH * OW;
    // The windows containing the element, found from its padded coordinates.
    let py = iy + PAD;
    let px = ix + PAD;
    let oy_end = last_window(py, OH) + 1u;
    let ox_end = last_window(px, OW) + 1u;
    // Windows in row-major order: the same order in which a scatter over the outputs would
    // add them, so overlapping windows sum identically either way.
    var sum = 0.0;
    for (var oy = first_window(py); oy < oy_end; oy++) {
        for (var ox = first_window(px); ox < ox_end; ox++) {
            let o = out_base + oy * OW + ox;
            if argmax[o] == idx { sum += f32(dy[o]); }
        }
    }
    dx[i] = elem(sum);
}

// Cells cover ⌈H/k⌉ × ⌈W/k⌉ per plane, so that rows and columns past the last window are
// written (as zeros) too. A cell needs one index decomposition where the gather form needs
// one per element: integer division is done lane by lane on CPUs (lavapipe).
@compute @workgroup_size(WG)
fn max_pool2d_backward_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    let ch = (H + K - 1u) / K;
    let cw = (W + K - 1u) / K;
    if i >= p.planes * ch * cw { return; }
    let cx = i % cw;
    let cy = (i / cw) % ch;
    let plane = i / (cw * ch);
    var g = elem(0.0);
    var chosen = NONE;
    if cy < OH && cx < OW {
        let o = (plane * OH + cy) * OW + cx;
        g = dy[o];
        chosen = argmax[o];
    }
    let base = plane * H * W;
    for (var ky = 0u; ky < K; ky++) {
        let iy = cy * K + ky;
        if iy >= H { break; }
        for (var kx = 0u; kx < K; kx++) {
            let ix = cx * K + kx;
            if ix >= W { break; }
            let idx = iy * W + ix;
            dx[base + idx] = select(elem(0.0), g, idx == chosen);
        }
    }
}

// When the convolution that produced x runs on texel kernels, they read its gradient only
// as texels: writing them here saves the store of dx and its packing. Every texel inside
// x is written (zero where no window chose it); the borders are not: wgpu zero-initialises
// textures, and the texels the launcher is given receive nothing else. A texel store costs
// lavapipe about ten scalar stores, and the second reference layer's border (BORDER 2 around
// 10×10) is half of its texels.
@compute @workgroup_size(WG)
fn max_pool2d_backward_tex(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    let ch = (H + K - 1u) / K;
    let cw = (W + K - 1u) / K;
    let c4n = (C + 3u) / 4u;
    if i >= (p.planes / C) * ch * cw * c4n { return; }
    let c4 = i % c4n;
    let cx = (i / c4n) % cw;
    let cy = (i / (c4n * cw)) % ch;
    let img = i / (c4n * cw * ch);
    var g = vec4<f32>(0.0);
    var chosen = vec4<u32>(NONE);
    if cy < OH && cx < OW {
        for (var e = 0u; e < 4u; e++) {
            let c = 4u * c4 + e;
            if c < C {
                let o = ((img * C + c) * OH + cy) * OW + cx;
                g[e] = f32(dy[o]);
                chosen[e] = argmax[o];
            }
        }
    }
    let hp = H + 2u * BORDER;
    let wp = W + 2u * BORDER;
    for (var ky = 0u; ky < K; ky++) {
        let iy = cy * K + ky;
        if iy >= H { break; }
        for (var kx = 0u; kx < K; kx++) {
            let ix = cx * K + kx;
            if ix >= W { break; }
            let v = select(vec4<f32>(0.0), g, chosen == vec4<u32>(iy * W + ix));
            let t = ((img * hp + iy + BORDER) * wp + ix + BORDER) * c4n + c4;
            textureStore(dx_tex, vec2<u32>(t & 4095u, t >> 12u), v);
        }
    }
}

@compute @workgroup_size(WG)
fn avg_pool2d_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let o = linear_index(wid, nwg, lid);
    if o >= p.planes * OH * OW { return; }
    let ox = o % OW;
    let oy = (o / OW) % OH;
    let start = (o / (OW * OH)) * H * W + oy * S * W + ox * S;
    var sum = 0.0;
    for (var ky = 0u; ky < K; ky++) {
        for (var kx = 0u; kx < K; kx++) {
            sum += f32(x[start + ky * W + kx]);
        }
    }
    y[o] = elem(sum / f32(K * K));
}

@compute @workgroup_size(WG)
fn avg_pool2d_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if i >= p.planes * H * W { return; }
    let ix = i % W;
    let iy = (i / W) % H;
    let out_base = (i / (W * H)) * OH * OW;
    let oy_end = last_window(iy, OH) + 1u;
    let ox_end = last_window(ix, OW) + 1u;
    var sum = 0.0;
    for (var oy = first_window(iy); oy < oy_end; oy++) {
        for (var ox = first_window(ix); ox < ox_end; ox++) {
            sum += f32(dy[out_base + oy * OW + ox]);
        }
    }
    // Every window has k² elements, so the 1/k² factors out of the sum.
    dx[i] = elem(sum / f32(K * K));
}

// The mean of each plane, summed in order in f32. The loop walks H·W elements: the launcher
// refuses planes over 32,768 elements, half of lavapipe's 65,535 loop iterations per
// invocation (past which it stops silently).
@compute @workgroup_size(WG)
fn global_avg_pool2d_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(local_invocation_index) lid: u32) {
    let plane = linear_index(wid, nwg, lid);
    if plane >= p.planes { return; }
    let base = plane * H * W;
    var sum = 0.0;
    for (var i = 0u; i < H * W; i++) {
        sum += f32(x[base + i]);
    }
    y[plane] = elem(sum / f32(H * W));
}

// Every element of a plane gets the plane's dy/(H·W): one invocation per dx element (a
// division by the constant H·W finds its plane).
@compute @workgroup_size(WG)
fn global_avg_pool2d_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                              @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if i >= p.planes * H * W { return; }
    dx[i] = elem(f32(dy[i / (H * W)]) / f32(H * W));
}
