// pack.wgsl — copies tensors into texel arrays (rgba32float textures read as linear arrays
// of vec4<f32>; texel i at (i & 4095, i >> 12); under mixed precision the f16 variant reads
// an f16 source into rgba16float textures), in the layouts the texel kernels of
// conv2d.wgsl and dense.wgsl read. On lavapipe a texel fetch is several times cheaper than
// a storage load, so the GEMM-shaped kernels read packed operands; packing is one pass.
//
// Entry points (binding 0 is always `p: PackParams`; binding 1 the source, binding 2
// the texel array written):
//   pack_nhwc4         x [N, C, H, W]        -> texel ((n·HP + h)·WU + w)·C4 + c4 =
//                      x[n, 4·c4 .. 4·c4+3, h − pad, w − pad], zero outside x (HP = H + 2·pad,
//                      WU = W + 2·pad, C4 = ⌈C/4⌉): channels by fours, zero-padded borders.
//                      With `unfold` U > 1, channel c' = c·U + kx holds x[.., c, h, w + kx]:
//                      U horizontal taps become channels (C4 = ⌈C·U/4⌉, WU = W + 2·pad − U + 1),
//                      so that a layer of 1–3 channels still fills its texels
//   pack_images4       x [N, 1, H, W]        -> texel (n4·HP + h)·WP + w =
//                      x[4·n4 .. 4·n4+3, 0, h − pad, w − pad], zero past N and outside x
//                      (HP = H + 2·pad, WP = W + 2·pad): four images in a texel's lanes, for
//                      single-channel convolutions (conv2d_forward_tex_images4)
//   pack_conv_weight   w [O, C, KH, KW]      -> texel (((kh·KW + kw)·CI4 + c4)·4 + ci)·CO4 + o4
//                      = four output channels of one input channel, for a convolution with
//                      CI inputs and CO outputs: the forward's w (CI = C, CO = O), or with
//                      `flip` the grad_input's (CI = O, CO = C, w[o, c, KH−1−kh, KW−1−kw]).
//                      With `unfold` U = KW (matching pack_nhwc4's) the packed kernel is
//                      KH × 1 over CI = C·KW channels: channel c·KW + kx is w[.., c, kh, kx]
//   pack_rows4         a [R, K] (or, with `transpose`, a [K, R]) -> texel r·K4 + k4 =
//                      a[r, 4·k4 .. 4·k4+3], zero past K: matrix rows by fours along K

struct PackParams {
    texels: u32,  // texels to write
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    pad: u32,
    c4: u32,
    hp: u32,
    flip: u32,
    unfold: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: PackParams;
alias elem = f32;

@group(0) @binding(1) var<storage, read> src: array<elem>;
@group(0) @binding(2) var dst: texture_storage_2d<rgba32float, write>;

const WG: u32 = 64u;

// pack_nhwc4's divisors (WU and HP also pack_images4's), as pipeline constants: integer
// division by a runtime value is done lane by lane on a CPU (lavapipe), by a constant it is a
// multiply and a shift. The launcher sets them to the layer's values (one pipeline per layer
// shape).
override C4: u32 = 1u;      // texels per pixel
override WU: u32 = 1u;      // packed row width
override HP: u32 = 1u;      // padded height
override UNFOLD: u32 = 1u;  // horizontal taps per channel

fn texel_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

fn store(i: u32, v: vec4<f32>) {
    textureStore(dst, vec2<u32>(i & 4095u, i >> 12u), v);
}

@compute @workgroup_size(WG)
fn pack_nhwc4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = texel_index(wid, nwg, lid);
    if i >= p.texels { return; }
    let c4 = i % C4;
    let pix = i / C4;
    let wq = pix % WU;
    let hq = (pix / WU) % HP;
    let n = pix / (WU * HP);
    var v = vec4<f32>(0.0);
    // Unsigned wrap-around makes the pad-side test one comparison each way.
    let hs = hq - p.pad;
    if hs < p.h {
        let plane = p.h * p.w;
        for (var j = 0u; j < 4u; j++) {
            let cu = 4u * c4 + j;
            let ws = wq + cu % UNFOLD - p.pad;
            let c = cu / UNFOLD;
            if c < p.c && ws < p.w { v[j] = f32(src[(n * p.c + c) * plane + hs * p.w + ws]); }
        }
    }
    store(i, v);
}

// Uses n = N, h = H, w = W, pad; the divisors WU (= WP) and HP are the pipeline constants.
@compute @workgroup_size(WG)
fn pack_images4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = texel_index(wid, nwg, lid);
    if i >= p.texels { return; }
    let wq = i % WU;
    let hq = (i / WU) % HP;
    let n4 = i / (WU * HP);
    var v = vec4<f32>(0.0);
    // Unsigned wrap-around makes the pad-side tests one comparison each way.
    let hs = hq - p.pad;
    let ws = wq - p.pad;
    if hs < p.h && ws < p.w {
        let plane = p.h * p.w;
        for (var j = 0u; j < 4u; j++) {
            let n = 4u * n4 + j;
            if n < p.n { v[j] = f32(src[n * plane + hs * p.w + ws]); }
        }
    }
    store(i, v);
}

// Uses n = O, c = C (the weight's own dims), h = KH, w = KW, c4 = CI4, hp = CO4 (of the
// convolution being packed for), flip = 0 (forward) or 1 (grad_input), unfold = U (1 or KW,
// not with flip).
@compute @workgroup_size(WG)
fn pack_conv_weight(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = texel_index(wid, nwg, lid);
    if i >= p.texels { return; }
    let co4 = p.hp;
    let o4 = i % co4;
    let ci = (i / co4) % 4u;
    let c4 = (i / (co4 * 4u)) % p.c4;
    // The packed convolution's tap: (kh, kw), or kh alone when unfolded.
    let tap = i / (co4 * 4u * p.c4);
    let taps = p.h * p.w;
    let in_ch = 4u * c4 + ci;
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let out_ch = 4u * o4 + j;
        if p.flip == 1u {
            if out_ch < p.c && in_ch < p.n {
                v[j] = f32(src[(in_ch * p.c + out_ch) * taps + taps - 1u - tap]);
            }
        } else if out_ch < p.n && in_ch < p.c * p.unfold {
            let c = in_ch / p.unfold;
            let t = tap * p.unfold + in_ch % p.unfold;
            v[j] = f32(src[(out_ch * p.c + c) * taps + t]);
        }
    }
    store(i, v);
}

// Uses n = R, c = K, c4 = K4, flip = transpose (the source is [K, R]).
@compute @workgroup_size(WG)
fn pack_rows4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = texel_index(wid, nwg, lid);
    if i >= p.texels { return; }
    let k4 = i % p.c4;
    let r = i / p.c4;
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let k = 4u * k4 + j;
        if k < p.c {
            if p.flip == 0u { v[j] = f32(src[r * p.c + k]); } else { v[j] = f32(src[k * p.n + r]); }
        }
    }
    store(i, v);
}
