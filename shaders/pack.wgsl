// pack.wgsl — copies tensors into texel arrays (rgba32float textures read as linear arrays
// of vec4<f32>; texel i at (i & 4095, i >> 12)), in the layouts the texel kernels of
// conv2d.wgsl and dense.wgsl read. On lavapipe a texel fetch is several times cheaper than
// a storage load, so the GEMM-shaped kernels read packed operands; packing is one pass.
//
// Entry points (binding 0 is always `p: PackParams`; binding 1 the f32 source, binding 2
// the texel array written):
//   pack_nhwc4         x [N, C, H, W]        -> texel ((n·HP + h)·WP + w)·C4 + c4 =
//                      x[n, 4·c4 .. 4·c4+3, h − pad, w − pad], zero outside x (HP = H + 2·pad,
//                      WP = W + 2·pad, C4 = ⌈C/4⌉): channels by fours, zero-padded borders
//   pack_conv_weight   w [O, C, KH, KW]      -> texel (((kh·KW + kw)·CI4 + c4)·4 + ci)·CO4 + o4
//                      = four output channels of one input channel, for a convolution with
//                      CI inputs and CO outputs: the forward's w (CI = C, CO = O), or with
//                      `flip` the grad_input's (CI = O, CO = C, w[o, c, KH−1−kh, KW−1−kw])
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
    wp: u32,
    flip: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: PackParams;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var dst: texture_storage_2d<rgba32float, write>;

const WG: u32 = 64u;

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
    let c4 = i % p.c4;
    let pix = i / p.c4;
    let wq = pix % p.wp;
    let hq = (pix / p.wp) % p.hp;
    let n = pix / (p.wp * p.hp);
    var v = vec4<f32>(0.0);
    // Unsigned wrap-around makes the pad-side test one comparison each way.
    let hs = hq - p.pad;
    let ws = wq - p.pad;
    if hs < p.h && ws < p.w {
        let plane = p.h * p.w;
        let base = (n * p.c + 4u * c4) * plane + hs * p.w + ws;
        for (var j = 0u; j < 4u; j++) {
            if 4u * c4 + j < p.c { v[j] = src[base + j * plane]; }
        }
    }
    store(i, v);
}

// Uses n = O, c = C (the weight's own dims), h = KH, w = KW, c4 = CI4, hp = CO4 (of the
// convolution being packed for), flip = 0 (forward) or 1 (grad_input).
@compute @workgroup_size(WG)
fn pack_conv_weight(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = texel_index(wid, nwg, lid);
    if i >= p.texels { return; }
    let co4 = p.hp;
    let o4 = i % co4;
    let ci = (i / co4) % 4u;
    let c4 = (i / (co4 * 4u)) % p.c4;
    let tap = i / (co4 * 4u * p.c4);
    let kh = tap / p.w;
    let kw = tap % p.w;
    let taps = p.h * p.w;
    let in_ch = 4u * c4 + ci;
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let out_ch = 4u * o4 + j;
        if p.flip == 0u {
            if out_ch < p.n && in_ch < p.c {
                v[j] = src[(out_ch * p.c + in_ch) * taps + tap];
            }
        } else if out_ch < p.c && in_ch < p.n {
            v[j] = src[(in_ch * p.c + out_ch) * taps + taps - 1u - tap];
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
            if p.flip == 0u { v[j] = src[r * p.c + k]; } else { v[j] = src[k * p.n + r]; }
        }
    }
    store(i, v);
}
