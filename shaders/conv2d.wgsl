// conv2d.wgsl — 2-D convolution, NCHW, stride s, zero padding `pad`, and its gradients.
//
// Tensors (row-major f32):
//   x  [N, C, H, W]      input            w  [O, C, KH, KW]   weights (PyTorch layout)
//   y  [N, O, OH, OW]    output           b  [O]              bias
//   OH = (H + 2·pad − KH) / s + 1, OW likewise (floored).
//
// Entry points (binding 0 is always `p: ConvParams`):
//   conv2d_forward            x@1, w@2, b@3        -> y@4
//   conv2d_grad_input         dy@1, w@2            -> dx@4
//   conv2d_grad_weight        dy@1, x@5            -> partial@4 [S, O, C·KH·KW]
//   conv2d_grad_weight_reduce partial@1            -> dw@4 [O, C·KH·KW]
//   conv2d_grad_bias          dy@1                 -> db@4
//
// Each of the three products is an implicit GEMM: no im2col buffer is built; the index
// arithmetic that im2col would bake into memory is done on the fly, with out-of-image taps
// (padding, or no output position for grad_input at stride > 1) reading as zero. Every
// invocation keeps a 4×4 block of outputs in registers (8 loads feed 16 FMAs).
//
// grad_weight reduces over N·OH·OW positions into only O·C·KH·KW outputs (800 for the
// first reference layer), too few invocations to fill a GPU. It is split over S chunks of
// images; each chunk writes its own partial sum and conv2d_grad_weight_reduce adds the S
// partials in a fixed order, so the result stays deterministic. With S = 1 the first
// entry writes dw directly.

struct ConvParams {
    n: u32, c: u32, h: u32, w: u32,
    o: u32, kh: u32, kw: u32, stride: u32,
    pad: u32, oh: u32, ow: u32, splits: u32,
    images_per_split: u32, _p0: u32, _p1: u32, _p2: u32,
}

@group(0) @binding(0) var<uniform> p: ConvParams;
@group(0) @binding(1) var<storage, read> src: array<f32>;      // x, dy or partial
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> image: array<f32>;    // x, for grad_weight

override WG_PIX: u32 = 16u;  // invocations per workgroup along output pixels / columns
override WG_CH: u32 = 4u;    // ... along channels / rows
// conv2d_grad_input's stride, a pipeline constant: it divides and takes remainders by it at
// every tap, which the compiler removes when it knows the stride is 1 (1.5× on lavapipe).
override GRAD_INPUT_STRIDE: u32 = 1u;
const REDUCE_WG: u32 = 64u;  // conv2d_grad_bias: invocations summing one channel (power of 2)

fn clamp4(base: u32, last: u32) -> vec4<u32> {
    return min(vec4<u32>(base) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(last));
}

// src[idx] where `ok`, else 0 (the index is made safe before the load).
fn load_src(idx: vec4<i32>, ok: vec4<bool>) -> vec4<f32> {
    let i = vec4<u32>(select(vec4<i32>(0), idx, ok));
    return select(vec4<f32>(0.0), vec4<f32>(src[i.x], src[i.y], src[i.z], src[i.w]), ok);
}

fn load_image(idx: vec4<i32>, ok: vec4<bool>) -> vec4<f32> {
    let i = vec4<u32>(select(vec4<i32>(0), idx, ok));
    return select(vec4<f32>(0.0), vec4<f32>(image[i.x], image[i.y], image[i.z], image[i.w]), ok);
}

// y[n, o, oy, ox] = b[o] + Σ_{c, ky, kx} w[o, c, ky, kx] · x[n, c, oy·s − pad + ky, ox·s − pad + kx]
// Rows: 4 output channels from o0. Columns: 4 output pixels (n, oy, ox) from pix0.
@compute @workgroup_size(WG_PIX, WG_CH)
fn conv2d_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let plane = p.oh * p.ow;
    let npix = p.n * plane;
    let o0 = gid.y * 4u;
    let pix0 = gid.x * 4u;
    if o0 >= p.o || pix0 >= npix { return; }
    let pix = clamp4(pix0, npix - 1u);
    let img = pix / plane;
    let rem = pix % plane;
    let iy0 = vec4<i32>((rem / p.ow) * p.stride) - i32(p.pad);
    let ix0 = vec4<i32>((rem % p.ow) * p.stride) - i32(p.pad);
    let xbase = vec4<i32>(img * p.c * p.h * p.w);
    let taps = p.c * p.kh * p.kw;
    let wrow = clamp4(o0, p.o - 1u) * taps;
    let h = i32(p.h);
    let w = i32(p.w);
    var acc: array<vec4<f32>, 4>;
    for (var c = 0u; c < p.c; c++) {
        let cbase = xbase + i32(c * p.h * p.w);
        for (var ky = 0u; ky < p.kh; ky++) {
            let iy = iy0 + i32(ky);
            let row_ok = iy >= vec4<i32>(0) & iy < vec4<i32>(h);
            let rbase = cbase + iy * w;
            for (var kx = 0u; kx < p.kw; kx++) {
                let ix = ix0 + i32(kx);
                let ok = row_ok & ix >= vec4<i32>(0) & ix < vec4<i32>(w);
                let xv = load_src(rbase + ix, ok);
                let t = (c * p.kh + ky) * p.kw + kx;
                acc[0] = fma(vec4<f32>(weight[wrow.x + t]), xv, acc[0]);
                acc[1] = fma(vec4<f32>(weight[wrow.y + t]), xv, acc[1]);
                acc[2] = fma(vec4<f32>(weight[wrow.z + t]), xv, acc[2]);
                acc[3] = fma(vec4<f32>(weight[wrow.w + t]), xv, acc[3]);
            }
        }
    }
    let ybase = img * p.o * plane + rem;
    for (var r = 0u; r < 4u; r++) {
        let o = o0 + r;
        if o >= p.o { return; }
        let bo = bias[o];
        for (var q = 0u; q < 4u; q++) {
            if pix0 + q < npix { out[ybase[q] + o * plane] = acc[r][q] + bo; }
        }
    }
}

// dx[n, c, iy, ix] = Σ_{o, ky, kx} w[o, c, ky, kx] · dy[n, o, oy, ox]
//   over the taps where iy = oy·s − pad + ky and ix = ox·s − pad + kx for a valid (oy, ox).
// Rows: 4 input channels from c0. Columns: 4 input pixels (n, iy, ix) from pix0.
@compute @workgroup_size(WG_PIX, WG_CH)
fn conv2d_grad_input(@builtin(global_invocation_id) gid: vec3<u32>) {
    let in_plane = p.h * p.w;
    let out_plane = p.oh * p.ow;
    let npix = p.n * in_plane;
    let c0 = gid.y * 4u;
    let pix0 = gid.x * 4u;
    if c0 >= p.c || pix0 >= npix { return; }
    let pix = clamp4(pix0, npix - 1u);
    let img = pix / in_plane;
    let rem = pix % in_plane;
    // Shifted by pad so that oy·s = iy + pad − ky is a subtraction of non-negatives.
    let ys = vec4<i32>(rem / p.w) + i32(p.pad);
    let xs = vec4<i32>(rem % p.w) + i32(p.pad);
    let dybase = vec4<i32>(img * p.o * out_plane);
    let s = i32(GRAD_INPUT_STRIDE);
    let oh = i32(p.oh);
    let ow = i32(p.ow);
    let ch = clamp4(c0, p.c - 1u);
    let taps = p.kh * p.kw;
    var acc: array<vec4<f32>, 4>;
    for (var o = 0u; o < p.o; o++) {
        let obase = dybase + i32(o * out_plane);
        let wo = o * p.c * taps;
        for (var ky = 0u; ky < p.kh; ky++) {
            let ty = ys - i32(ky);
            let oy = ty / s;
            let row_ok = ty >= vec4<i32>(0) & ty % s == vec4<i32>(0) & oy < vec4<i32>(oh);
            for (var kx = 0u; kx < p.kw; kx++) {
                let tx = xs - i32(kx);
                let ox = tx / s;
                let ok = row_ok & tx >= vec4<i32>(0) & tx % s == vec4<i32>(0) & ox < vec4<i32>(ow);
                let gv = load_src(obase + oy * ow + ox, ok);
                let t = wo + ky * p.kw + kx;
                acc[0] = fma(vec4<f32>(weight[t + ch.x * taps]), gv, acc[0]);
                acc[1] = fma(vec4<f32>(weight[t + ch.y * taps]), gv, acc[1]);
                acc[2] = fma(vec4<f32>(weight[t + ch.z * taps]), gv, acc[2]);
                acc[3] = fma(vec4<f32>(weight[t + ch.w * taps]), gv, acc[3]);
            }
        }
    }
    let xbase = img * p.c * in_plane + rem;
    for (var r = 0u; r < 4u; r++) {
        let c = c0 + r;
        if c >= p.c { return; }
        for (var q = 0u; q < 4u; q++) {
            if pix0 + q < npix { out[xbase[q] + c * in_plane] = acc[r][q]; }
        }
    }
}

// partial[split, o, t] = Σ over images of the split, Σ_{oy, ox} dy[n, o, oy, ox] · x[n, c, oy·s − pad + ky, ox·s − pad + kx]
//   with t = (c·KH + ky)·KW + kx. Rows: 4 output channels from o0. Columns: 4 taps from t0.
//   gid.z is the split.
@compute @workgroup_size(WG_PIX, WG_CH)
fn conv2d_grad_weight(@builtin(global_invocation_id) gid: vec3<u32>) {
    let taps = p.c * p.kh * p.kw;
    let o0 = gid.y * 4u;
    let t0 = gid.x * 4u;
    let split = gid.z;
    if o0 >= p.o || t0 >= taps { return; }
    let t = clamp4(t0, taps - 1u);
    let kk = p.kh * p.kw;
    let c = t / kk;
    let ky = vec4<i32>((t % kk) / p.kw) - i32(p.pad);
    let kx = vec4<i32>(t % p.kw) - i32(p.pad);
    let o = clamp4(o0, p.o - 1u);
    let in_plane = p.h * p.w;
    let out_plane = p.oh * p.ow;
    let h = i32(p.h);
    let w = i32(p.w);
    let n_begin = split * p.images_per_split;
    let n_end = min(n_begin + p.images_per_split, p.n);
    var acc: array<vec4<f32>, 4>;
    for (var n = n_begin; n < n_end; n++) {
        let dy_img = n * p.o * out_plane;
        let xc = vec4<i32>(n * p.c * in_plane + c * in_plane);
        for (var oy = 0u; oy < p.oh; oy++) {
            let iy = ky + i32(oy * p.stride);
            let row_ok = iy >= vec4<i32>(0) & iy < vec4<i32>(h);
            let rbase = xc + iy * w;
            for (var ox = 0u; ox < p.ow; ox++) {
                let ix = kx + i32(ox * p.stride);
                let ok = row_ok & ix >= vec4<i32>(0) & ix < vec4<i32>(w);
                let xv = load_image(rbase + ix, ok);
                let q = dy_img + oy * p.ow + ox;
                acc[0] = fma(vec4<f32>(src[q + o.x * out_plane]), xv, acc[0]);
                acc[1] = fma(vec4<f32>(src[q + o.y * out_plane]), xv, acc[1]);
                acc[2] = fma(vec4<f32>(src[q + o.z * out_plane]), xv, acc[2]);
                acc[3] = fma(vec4<f32>(src[q + o.w * out_plane]), xv, acc[3]);
            }
        }
    }
    let base = split * p.o * taps;
    for (var r = 0u; r < 4u; r++) {
        let oo = o0 + r;
        if oo >= p.o { return; }
        for (var k = 0u; k < 4u; k++) {
            if t0 + k < taps { out[base + oo * taps + t0 + k] = acc[r][k]; }
        }
    }
}

// dw[i] = Σ_{split} partial[split, i], splits added in index order.
@compute @workgroup_size(256)
fn conv2d_grad_weight_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(local_invocation_index) lid: u32) {
    let len = p.o * p.c * p.kh * p.kw;
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if i >= len { return; }
    var s = 0.0;
    for (var k = 0u; k < p.splits; k++) {
        s += src[k * len + i];
    }
    out[i] = s;
}

// db[o] = Σ_{n, oy, ox} dy[n, o, oy, ox]: one workgroup per channel, a fixed-shape tree in
// workgroup memory (deterministic).
var<workgroup> partial_sums: array<f32, REDUCE_WG>;

@compute @workgroup_size(REDUCE_WG)
fn conv2d_grad_bias(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let o = wid.x;
    let plane = p.oh * p.ow;
    var s = 0.0;
    for (var i = lid; i < p.n * plane; i += REDUCE_WG) {
        let n = i / plane;
        s += src[(n * p.o + o) * plane + i % plane];
    }
    partial_sums[lid] = s;
    workgroupBarrier();
    for (var stride = REDUCE_WG / 2u; stride > 0u; stride /= 2u) {
        if lid < stride { partial_sums[lid] += partial_sums[lid + stride]; }
        workgroupBarrier();
    }
    if lid == 0u { out[o] = partial_sums[0]; }
}
