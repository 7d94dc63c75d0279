// conv2d.wgsl — 2-D convolution, NCHW, stride s, zero padding `pad`, and its gradients.
//
// Tensors (row-major):
//   x  [N, C, H, W]      input            w  [O, C, KH, KW]   weights (PyTorch layout)
//   y  [N, O, OH, OW]    output           b  [O]              bias
//   OH = (H + 2·pad − KH) / s + 1, OW likewise (floored).
//
// Entry points (binding 0 is always `p: ConvParams`), with the element type of each tensor
// in the f16 variant its launcher runs for f16 tensors (`elem`: E; f32 in the f32 variant):
//   conv2d_forward            x@1 E, w@2 E, b@3 E               -> y@4 E
//   conv2d_grad_input         dy@1 E, w@2 E                     -> dx@4 E
//   conv2d_grad_weight        dy@1 E, x@5 E                     -> partial@4 f32 [S, O, C·KH·KW]
//   conv2d_grad_weight_reduce partial@1 f32                     -> dw@4 f32 [O, C·KH·KW]
//   conv2d_grad_bias          dy@1 E                            -> db@4 f32
//   conv2d_forward_tex        x texels@6, w texels@7, b@3 E     -> y@4 E
//                             (with TEX_GRAD_INPUT: dy texels@6, flipped w texels@7, zero b@3
//                                                               -> dx@4 E)
//   conv2d_forward_tex_images4 x texels@6, w texels@7, b@3 E    -> y@4 E   (C = 1)
//   conv2d_grad_weight_tex    x texels@6, dy texels@7 (borders of `dy_pad`)
//                                                               -> partial@4 f32 [S, O, C·KH·KW],
//                             and with `bias_partials` > 0 the bias gradient's partials
//                             [S, O] from that element of partial@4 on
//
// Mixed precision: the storage inputs (x, dy, w, b: w and b are then the f16 copies of the
// f32 master weights) are typed `elem` and the output binding `out` is `out_elem`, both f32
// as written. The f16 variants make `elem` f16, and `out_elem` f16 too where `out` holds an
// activation or its gradient (y, dx); weight and bias gradients and their split partials
// (dw, db, partial) stay f32, since they feed the f32 master weights.
// conv2d_grad_weight_reduce reads f32 partials through `src` and only runs as written.
// Every product and sum is in f32 (an f16 × f16 product is exact in f32); only the final
// store rounds to `out_elem`. Texels (x, w, dy) hold f32 or f16 (rgba16float) components,
// of E's type (the launchers check); texture_2d<f32> reads both as vec4<f32>.
//
// The `_tex` entries read operands packed by pack.wgsl: x (or dy) as pack_nhwc4 (channels by
// fours, borders zero-padded, so no tap needs a bounds test) and w as pack_conv_weight.
// Layers of 1–3 channels are packed unfolded (`unfold` = KW: horizontal taps become
// channels), so the entries see a KH × 1 convolution over C·KW channels.
// conv2d_forward_tex_images4 serves single-channel layers (the first layer, on images) from
// x packed by pack_images4 (four images in a texel's lanes) and w by pack_rows4: there every
// lane does useful work, where unfolding 5 taps fills 8 lanes (see the entry).
// Each invocation keeps 16 positions × 16 output channels as accumulators (forward: 32 texel
// fetches feed 1,024 FMAs, since on lavapipe a fetch costs far more than an FMA or an
// accumulator spilled to the stack), or 8 × 8 channel pairs of one tap (grad_weight: 4
// fetches feed 64 FMAs per position; larger blocks there were slower on lavapipe). grad_input is
// conv2d_forward_tex with TEX_GRAD_INPUT: the transposed convolution of dy through the
// weights flipped and transposed, dx's positions taken phase by phase at stride S > 1 (see the
// entry). It reads dy packed by pack_nhwc4 with a border of ⌈(KH − 1 − pad)/S⌉ (KH − 1 − pad
// at stride 1); grad_weight reads the same dy (one packing serves both), past its border.
// The texel entries take any stride S (TEX_STRIDE, a pipeline constant: at S = 1 the compiler
// drops the stride's arithmetic and the kernels are the stride-1 ones), a square kernel and
// pad < KH (gpu::policy's texel_path_fits): dy's border serves both axes, and KH − 1 − pad
// must not be negative.
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
    images_per_split: u32, unfold: u32, bias_partials: u32, dy_pad: u32,
}

@group(0) @binding(0) var<uniform> p: ConvParams;
alias elem = f32;      // x, dy, w, b (and the f32 partials the reduce reads through src)
alias out_elem = f32;  // y, dx; or dw, db and partials (f32 in every variant they run in)

@group(0) @binding(1) var<storage, read> src: array<elem>;     // x, dy or partial
@group(0) @binding(2) var<storage, read> weight: array<elem>;
@group(0) @binding(3) var<storage, read> bias: array<elem>;
@group(0) @binding(4) var<storage, read_write> out: array<out_elem>;
@group(0) @binding(5) var<storage, read> image: array<elem>;   // x, for grad_weight
@group(0) @binding(6) var tex_a: texture_2d<f32>;              // x (or dy) as pack_nhwc4
@group(0) @binding(7) var tex_b: texture_2d<f32>;              // w, or dy for grad_weight

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
    return select(vec4<f32>(0.0), vec4<f32>(f32(src[i.x]), f32(src[i.y]), f32(src[i.z]), f32(src[i.w])), ok);
}

fn load_image(idx: vec4<i32>, ok: vec4<bool>) -> vec4<f32> {
    let i = vec4<u32>(select(vec4<i32>(0), idx, ok));
    return select(vec4<f32>(0.0), vec4<f32>(f32(image[i.x]), f32(image[i.y]), f32(image[i.z]), f32(image[i.w])), ok);
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
                acc[0] = fma(vec4<f32>(f32(weight[wrow.x + t])), xv, acc[0]);
                acc[1] = fma(vec4<f32>(f32(weight[wrow.y + t])), xv, acc[1]);
                acc[2] = fma(vec4<f32>(f32(weight[wrow.z + t])), xv, acc[2]);
                acc[3] = fma(vec4<f32>(f32(weight[wrow.w + t])), xv, acc[3]);
            }
        }
    }
    let ybase = img * p.o * plane + rem;
    for (var r = 0u; r < 4u; r++) {
        let o = o0 + r;
        if o >= p.o { return; }
        let bo = f32(bias[o]);
        for (var q = 0u; q < 4u; q++) {
            if pix0 + q < npix { out[ybase[q] + o * plane] = out_elem(acc[r][q] + bo); }
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
                acc[0] = fma(vec4<f32>(f32(weight[t + ch.x * taps])), gv, acc[0]);
                acc[1] = fma(vec4<f32>(f32(weight[t + ch.y * taps])), gv, acc[1]);
                acc[2] = fma(vec4<f32>(f32(weight[t + ch.z * taps])), gv, acc[2]);
                acc[3] = fma(vec4<f32>(f32(weight[t + ch.w * taps])), gv, acc[3]);
            }
        }
    }
    let xbase = img * p.c * in_plane + rem;
    for (var r = 0u; r < 4u; r++) {
        let c = c0 + r;
        if c >= p.c { return; }
        for (var q = 0u; q < 4u; q++) {
            if pix0 + q < npix { out[xbase[q] + c * in_plane] = out_elem(acc[r][q]); }
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
                acc[0] = fma(vec4<f32>(f32(src[q + o.x * out_plane])), xv, acc[0]);
                acc[1] = fma(vec4<f32>(f32(src[q + o.y * out_plane])), xv, acc[1]);
                acc[2] = fma(vec4<f32>(f32(src[q + o.z * out_plane])), xv, acc[2]);
                acc[3] = fma(vec4<f32>(f32(src[q + o.w * out_plane])), xv, acc[3]);
            }
        }
    }
    let base = split * p.o * taps;
    for (var r = 0u; r < 4u; r++) {
        let oo = o0 + r;
        if oo >= p.o { return; }
        for (var k = 0u; k < 4u; k++) {
            if t0 + k < taps { out[base + oo * taps + t0 + k] = out_elem(acc[r][k]); }
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
        s += f32(src[k * len + i]);
    }
    out[i] = out_elem(s);
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
        s += f32(src[(n * p.o + o) * plane + i % plane]);
    }
    partial_sums[lid] = s;
    workgroupBarrier();
    for (var stride = REDUCE_WG / 2u; stride > 0u; stride /= 2u) {
        if lid < stride { partial_sums[lid] += partial_sums[lid + stride]; }
        workgroupBarrier();
    }
    if lid == 0u { out[o] = out_elem(partial_sums[0]); }
}

// ---- texel entries ----

const TEX_WG: u32 = 64u;
const TEX_POS: u32 = 16u;  // output positions per invocation (forward)
// conv2d_forward_tex: its positions written out (true) or looped over (false, for unfolded
// input), as measured on lavapipe; a pipeline constant, so only one form is compiled.
override UNROLL_POSITIONS: bool = true;
// The texel entries' stride S. A pipeline constant, as the pooling and packing divisors are:
// grad_input divides by it (integer division is done lane by lane on lavapipe, by a
// constant it is a multiply and a shift), and at S = 1 every use of it folds away.
override TEX_STRIDE: u32 = 1u;
// conv2d_forward_tex computing grad_input (see the entry); a pipeline constant, so that the
// forward compiles without grad_input's phase arithmetic.
override TEX_GRAD_INPUT: bool = false;

fn fetch_a(i: u32) -> vec4<f32> {
    return textureLoad(tex_a, vec2<u32>(i & 4095u, i >> 12u), 0);
}

fn fetch_b(i: u32) -> vec4<f32> {
    return textureLoad(tex_b, vec2<u32>(i & 4095u, i >> 12u), 0);
}

// acc + Σ_c xv[c]·w_c over the four input channels of a texel, four chained FMAs (channel
// 0 first): four output channels of one position.
fn tap4(acc: vec4<f32>, xv: vec4<f32>, w0: vec4<f32>, w1: vec4<f32>, w2: vec4<f32>,
        w3: vec4<f32>) -> vec4<f32> {
    return fma(vec4<f32>(xv.w), w3, fma(vec4<f32>(xv.z), w2, fma(vec4<f32>(xv.y), w1,
               fma(vec4<f32>(xv.x), w0, acc))));
}

// y[n, o, oy, ox] = b[o] + Σ_{ky, kx, c} xpad[n, oy·S + ky, ox·S + kx, c] · w[o, c, ky, kx],
// with xpad = tex_a (pack_nhwc4 with `pad`), w = tex_b (pack_conv_weight) and S = TEX_STRIDE.
// An invocation takes 16 consecutive positions m (see below for their order) and output
// channels 16·ob .. 16·ob + 15.
//
// With TEX_GRAD_INPUT, grad_input of a convolution of stride S, padding P and a KH × KW
// kernel: p holds the transposed convolution (c = O channels of dy, h × w = OH × OW; o = C
// channels of dx, oh × ow = H × W; pad = P' = KH − 1 − P), tex_a = dy (pack_nhwc4 with the
// border B = ⌈P'/S⌉) and tex_b = w flipped (pack_conv_weight with `flip`: wf[c, o, ky', kx'] =
// w[o, c, KH − 1 − ky', KW − 1 − kx']). With dy dilated by S (S − 1 zeros between elements) and
// bordered by P', dx[n, c, iy, ix] = Σ_{o, ky', kx'} wf[c, o, ky', kx'] · dyd[n, o, iy + ky', ix + kx'],
// where a tap meets an element of dy only if iy + ky' − P' is a multiple of S (and likewise
// across). Which taps those are depends on iy mod S alone, so dx's positions are taken phase
// by phase, (fy, fx) = (iy mod S, ix mod S), one phase per invocation: for iy = S·qy + fy the
// taps ky' = ky0 + S·t (ky0 = (P' − fy) mod S) read dy row qy + t + (fy + ky0 − P')/S, a
// stride-1 convolution of the undilated dy through every S-th tap of the flipped kernel.
// At S = 1 there is one phase and this is the plain transposed convolution. Why not dilate dy
// as it is packed and run the stride-1 form: at S = 2 the dilated dy has 4× the texels to store
// (about 10 ns each on lavapipe, six scalar stores' worth), and 3 of 4 taps would multiply
// zeros, so the products would take 4× the fetches and FMAs; by phase they take the
// convolution's own.
// dy also keeps pack_nhwc4's layout, the one a max-pooling's backward writes (ops::handoff).
// The rows and columns of dx that no window reaches (when H + 2·P − KH is not a multiple of
// S) meet only dy's border and get 0.
@compute @workgroup_size(TEX_WG)
fn conv2d_forward_tex(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let c4n = (p.c + 3u) / 4u;
    let o4n = (p.o + 3u) / 4u;
    let s = TEX_STRIDE;
    // Per axis, the phases of the output's positions (S for grad_input, else 1): also the
    // step between the taps of a phase, and between the output rows of a phase.
    let phases = select(1u, s, TEX_GRAD_INPUT);
    // tex_a's border: the forward's padding; grad_input's B = ⌈P'/S⌉ (P' itself at S = 1).
    let border = select(p.pad, (p.pad + s - 1u) / s, TEX_GRAD_INPUT);
    let hp = p.h + 2u * border;
    let wp = p.w + 2u * border + 1u - p.unfold;
    let plane = p.oh * p.ow;
    // Each phase's positions on a grid of ⌈OH/S⌉ × ⌈OW/S⌉ cells (of (qy, qx)), blocks of 16
    // from each phase's first: a block's positions share their taps. Past a phase's last row
    // or column (OH or OW not a multiple of S) the cells hold no position.
    let grid_w = (p.ow + phases - 1u) / phases;
    let grid = ((p.oh + phases - 1u) / phases) * grid_w;
    let npos = p.n * grid;
    let phase_blocks = (npos + TEX_POS - 1u) / TEX_POS;
    let pos_blocks = phase_blocks * phases * phases;
    let id = (wid.x + wid.y * nwg.x) * TEX_WG + lid;
    // Neighbouring invocations share the output channels (the same weight texels).
    let pb = id % pos_blocks;
    let o4a = (id / pos_blocks) * 4u;
    if o4a >= o4n { return; }
    let o4b = min(o4a + 1u, o4n - 1u);
    let o4c = min(o4a + 2u, o4n - 1u);
    let o4d = min(o4a + 3u, o4n - 1u);
    let phase = pb / phase_blocks;
    let first = (pb % phase_blocks) * TEX_POS;  // the block's first position in its phase
    let fy = phase / phases;
    let fx = phase % phases;
    // The phase's output rows and columns (all of them in the forward); a phase of none
    // (H or W under S) has nothing to store.
    let rows = select(0u, (p.oh - fy + phases - 1u) / phases, fy < p.oh);
    let cols = select(0u, (p.ow - fx + phases - 1u) / phases, fx < p.ow);
    if rows == 0u || cols == 0u { return; }
    // The phase's taps ky' = ky0 + S·t, t < taps_y (the forward: every tap, t = ky), and the
    // packed row that tap t = 0 of cell row qy reads, relative to qy (the forward reads row
    // qy·S + ky). B·S ≥ P' keeps the difference non-negative, and it is a multiple of S.
    let ky0 = select(0u, (p.pad + s - fy) % s, TEX_GRAD_INPUT);
    let kx0 = select(0u, (p.pad + s - fx) % s, TEX_GRAD_INPUT);
    let taps_y = select(0u, (p.kh - ky0 + phases - 1u) / phases, ky0 < p.kh);
    let taps_x = select(0u, (p.kw - kx0 + phases - 1u) / phases, kx0 < p.kw);
    let ry0 = select(0u, (fy + ky0 + s * border - p.pad) / s, TEX_GRAD_INPUT);
    let rx0 = select(0u, (fx + kx0 + s * border - p.pad) / s, TEX_GRAD_INPUT);
    let in_step = select(s, 1u, TEX_GRAD_INPUT);  // packed rows (columns) per cell row (column)
    // Over zero borders (a padded forward, or grad_input with P' > 0) positions run images
    // innermost, m = (qy·⌈OW/S⌉ + qx)·N + n within a phase, so that an invocation's 16
    // positions, and its neighbours', share their cell when N is a multiple of 16; the taps
    // that meet only the border for all 16 are skipped (31% of grad_input's FMAs in the
    // reference network's second layer). Unpadded, images outermost: neighbouring positions
    // share texels.
    let images_inner = border > 0u;
    var ry_min = hp;
    var ry_max = 0u;
    var rx_min = wp;
    var rx_max = 0u;
    var base: array<u32, TEX_POS>;
    for (var j = 0u; j < TEX_POS; j++) {
        let m = min(first + j, npos - 1u);
        let n = select(m / grid, m % p.n, images_inner);
        let r = select(m % grid, m / p.n, images_inner);
        // A cell past the phase's last row or column reads as its last (never stored).
        let ry = min(r / grid_w, rows - 1u) * in_step + ry0;
        let rx = min(r % grid_w, cols - 1u) * in_step + rx0;
        ry_min = min(ry_min, ry);
        ry_max = max(ry_max, ry);
        rx_min = min(rx_min, rx);
        rx_max = max(rx_max, rx);
        base[j] = ((n * hp + ry) * wp + rx) * c4n;
    }
    // Tap t of a position reads packed row ry + t, inside the input (rows B .. B + h − 1,
    // B = the border) for some position of the block iff t ≥ B − ry_max and t < B + h − ry_min.
    // Columns likewise, unless unfolded (a texel's channels then span several columns).
    let ky_lo = select(0u, border - ry_max, ry_max < border);
    let ky_hi = select(0u, min(taps_y, border + p.h - ry_min), ry_min < border + p.h);
    var kx_lo = 0u;
    var kx_hi = taps_x;
    if p.unfold == 1u {
        kx_lo = select(0u, border - rx_max, rx_max < border);
        kx_hi = select(0u, min(taps_x, border + p.w - rx_min), rx_min < border + p.w);
    }
    var acc: array<vec4<f32>, 64>;  // [4·j + g]: position j, channels 4·(o4a + g) ..
    for (var ky = ky_lo; ky < ky_hi; ky++) {
        for (var kx = kx_lo; kx < kx_hi; kx++) {
            let xoff = (ky * wp + kx) * c4n;
            let wtap = ((ky0 + phases * ky) * p.kw + kx0 + phases * kx) * c4n;
            for (var c4 = 0u; c4 < c4n; c4++) {
                let wi = (wtap + c4) * 4u * o4n;
                let a0 = fetch_b(wi + o4a);
                let a1 = fetch_b(wi + o4n + o4a);
                let a2 = fetch_b(wi + 2u * o4n + o4a);
                let a3 = fetch_b(wi + 3u * o4n + o4a);
                let b0 = fetch_b(wi + o4b);
                let b1 = fetch_b(wi + o4n + o4b);
                let b2 = fetch_b(wi + 2u * o4n + o4b);
                let b3 = fetch_b(wi + 3u * o4n + o4b);
                let c0 = fetch_b(wi + o4c);
                let c1 = fetch_b(wi + o4n + o4c);
                let c2 = fetch_b(wi + 2u * o4n + o4c);
                let c3 = fetch_b(wi + 3u * o4n + o4c);
                let d0 = fetch_b(wi + o4d);
                let d1 = fetch_b(wi + o4n + o4d);
                let d2 = fetch_b(wi + 2u * o4n + o4d);
                let d3 = fetch_b(wi + 3u * o4n + o4d);
                let off = xoff + c4;
                // Where each position reads whole texels of channels, the 16 positions are
                // written out one by one: as a loop the accumulator indices stop being
                // constants, and the second layer's forward and grad_input ran 1.07–1.19×
                // slower on lavapipe. Over unfolded taps (1–3 channel layers) the loop is
                // the faster one (the unrolled form took 1.1–1.35× its time).
                if UNROLL_POSITIONS {
                    let x0 = fetch_a(base[0] + off);
                    acc[0] = tap4(acc[0], x0, a0, a1, a2, a3);
                    acc[1] = tap4(acc[1], x0, b0, b1, b2, b3);
                    acc[2] = tap4(acc[2], x0, c0, c1, c2, c3);
                    acc[3] = tap4(acc[3], x0, d0, d1, d2, d3);
                    let x1 = fetch_a(base[1] + off);
                    acc[4] = tap4(acc[4], x1, a0, a1, a2, a3);
                    acc[5] = tap4(acc[5], x1, b0, b1, b2, b3);
                    acc[6] = tap4(acc[6], x1, c0, c1, c2, c3);
                    acc[7] = tap4(acc[7], x1, d0, d1, d2, d3);
                    let x2 = fetch_a(base[2] + off);
                    acc[8] = tap4(acc[8], x2, a0, a1, a2, a3);
                    acc[9] = tap4(acc[9], x2, b0, b1, b2, b3);
                    acc[10] = tap4(acc[10], x2, c0, c1, c2, c3);
                    acc[11] = tap4(acc[11], x2, d0, d1, d2, d3);
                    let x3 = fetch_a(base[3] + off);
                    acc[12] = tap4(acc[12], x3, a0, a1, a2, a3);
                    acc[13] = tap4(acc[13], x3, b0, b1, b2, b3);
                    acc[14] = tap4(acc[14], x3, c0, c1, c2, c3);
                    acc[15] = tap4(acc[15], x3, d0, d1, d2, d3);
                    let x4 = fetch_a(base[4] + off);
                    acc[16] = tap4(acc[16], x4, a0, a1, a2, a3);
                    acc[17] = tap4(acc[17], x4, b0, b1, b2, b3);
                    acc[18] = tap4(acc[18], x4, c0, c1, c2, c3);
                    acc[19] = tap4(acc[19], x4, d0, d1, d2, d3);
                    let x5 = fetch_a(base[5] + off);
                    acc[20] = tap4(acc[20], x5, a0, a1, a2, a3);
                    acc[21] = tap4(acc[21], x5, b0, b1, b2, b3);
                    acc[22] = tap4(acc[22], x5, c0, c1, c2, c3);
                    acc[23] = tap4(acc[23], x5, d0, d1, d2, d3);
                    let x6 = fetch_a(base[6] + off);
                    acc[24] = tap4(acc[24], x6, a0, a1, a2, a3);
                    acc[25] = tap4(acc[25], x6, b0, b1, b2, b3);
                    acc[26] = tap4(acc[26], x6, c0, c1, c2, c3);
                    acc[27] = tap4(acc[27], x6, d0, d1, d2, d3);
                    let x7 = fetch_a(base[7] + off);
                    acc[28] = tap4(acc[28], x7, a0, a1, a2, a3);
                    acc[29] = tap4(acc[29], x7, b0, b1, b2, b3);
                    acc[30] = tap4(acc[30], x7, c0, c1, c2, c3);
                    acc[31] = tap4(acc[31], x7, d0, d1, d2, d3);
                    let x8 = fetch_a(base[8] + off);
                    acc[32] = tap4(acc[32], x8, a0, a1, a2, a3);
                    acc[33] = tap4(acc[33], x8, b0, b1, b2, b3);
                    acc[34] = tap4(acc[34], x8, c0, c1, c2, c3);
                    acc[35] = tap4(acc[35], x8, d0, d1, d2, d3);
                    let x9 = fetch_a(base[9] + off);
                    acc[36] = tap4(acc[36], x9, a0, a1, a2, a3);
                    acc[37] = tap4(acc[37], x9, b0, b1, b2, b3);
                    acc[38] = tap4(acc[38], x9, c0, c1, c2, c3);
                    acc[39] = tap4(acc[39], x9, d0, d1, d2, d3);
                    let x10 = fetch_a(base[10] + off);
                    acc[40] = tap4(acc[40], x10, a0, a1, a2, a3);
                    acc[41] = tap4(acc[41], x10, b0, b1, b2, b3);
                    acc[42] = tap4(acc[42], x10, c0, c1, c2, c3);
                    acc[43] = tap4(acc[43], x10, d0, d1, d2, d3);
                    let x11 = fetch_a(base[11] + off);
                    acc[44] = tap4(acc[44], x11, a0, a1, a2, a3);
                    acc[45] = tap4(acc[45], x11, b0, b1, b2, b3);
                    acc[46] = tap4(acc[46], x11, c0, c1, c2, c3);
                    acc[47] = tap4(acc[47], x11, d0, d1, d2, d3);
                    let x12 = fetch_a(base[12] + off);
                    acc[48] = tap4(acc[48], x12, a0, a1, a2, a3);
                    acc[49] = tap4(acc[49], x12, b0, b1, b2, b3);
                    acc[50] = tap4(acc[50], x12, c0, c1, c2, c3);
                    acc[51] = tap4(acc[51], x12, d0, d1, d2, d3);
                    let x13 = fetch_a(base[13] + off);
                    acc[52] = tap4(acc[52], x13, a0, a1, a2, a3);
                    acc[53] = tap4(acc[53], x13, b0, b1, b2, b3);
                    acc[54] = tap4(acc[54], x13, c0, c1, c2, c3);
                    acc[55] = tap4(acc[55], x13, d0, d1, d2, d3);
                    let x14 = fetch_a(base[14] + off);
                    acc[56] = tap4(acc[56], x14, a0, a1, a2, a3);
                    acc[57] = tap4(acc[57], x14, b0, b1, b2, b3);
                    acc[58] = tap4(acc[58], x14, c0, c1, c2, c3);
                    acc[59] = tap4(acc[59], x14, d0, d1, d2, d3);
                    let x15 = fetch_a(base[15] + off);
                    acc[60] = tap4(acc[60], x15, a0, a1, a2, a3);
                    acc[61] = tap4(acc[61], x15, b0, b1, b2, b3);
                    acc[62] = tap4(acc[62], x15, c0, c1, c2, c3);
                    acc[63] = tap4(acc[63], x15, d0, d1, d2, d3);
                } else {
                    for (var j = 0u; j < TEX_POS; j++) {
                        let xv = fetch_a(base[j] + off);
                        acc[4u * j] = tap4(acc[4u * j], xv, a0, a1, a2, a3);
                        acc[4u * j + 1u] = tap4(acc[4u * j + 1u], xv, b0, b1, b2, b3);
                        acc[4u * j + 2u] = tap4(acc[4u * j + 2u], xv, c0, c1, c2, c3);
                        acc[4u * j + 3u] = tap4(acc[4u * j + 3u], xv, d0, d1, d2, d3);
                    }
                }
            }
        }
    }
    // The sixteen biases, loaded once (past the last channel they are never stored).
    var bv: array<vec4<f32>, 4>;
    for (var e = 0u; e < 16u; e++) {
        bv[e / 4u][e % 4u] = f32(bias[min(4u * o4a + e, p.o - 1u)]);
    }
    for (var j = 0u; j < TEX_POS; j++) {
        let m = first + j;
        if m >= npos { return; }
        let n = select(m / grid, m % p.n, images_inner);
        let r = select(m % grid, m / p.n, images_inner);
        let qy = r / grid_w;
        let qx = r % grid_w;
        if qy >= rows || qx >= cols { continue; }
        let at = (qy * phases + fy) * p.ow + qx * phases + fx;
        for (var g = 0u; g < 4u; g++) {
            if o4a + g >= o4n { break; }
            let v = acc[4u * j + g] + bv[g];
            for (var e = 0u; e < 4u; e++) {
                let o = 4u * (o4a + g) + e;
                if o < p.o {
                    out[(n * p.o + o) * plane + at] = out_elem(v[e]);
                }
            }
        }
    }
}

const IMG_POS: u32 = 4u;  // output positions per invocation (forward over images in lanes)

// acc + Σ_k w[k] · x_k: one accumulator's four chained FMAs over a step's taps.
fn taps4(acc: vec4<f32>, w: vec4<f32>, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>) -> vec4<f32> {
    return fma(vec4<f32>(w.w), x3, fma(vec4<f32>(w.z), x2, fma(vec4<f32>(w.y), x1, fma(vec4<f32>(w.x), x0, acc))));
}

// y[n, o, oy, ox] = b[o] + Σ_{ky, kx} xpad[n, oy·S + ky, ox·S + kx] · w[o, 0, ky, kx] for C = 1
// and S = TEX_STRIDE, with xpad = tex_a (pack_images4 with `pad`: texel (n4·HP + h)·WP + w
// holds images 4·n4 .. 4·n4 + 3) and w = tex_b (pack_rows4 of w as [O, KH·KW]: texel o·T4 + s
// holds taps 4·s .. 4·s + 3 of output channel o, zero past the last tap). An invocation takes 4
// consecutive positions m = (n4·OH + oy)·OW + ox, each of a quad of images, and output
// channels 16·ob .. 16·ob + 15: 64 accumulators of four images each. A step takes four taps:
// 16 weight texels and 16 x texels feed 1,024 FMAs, each accumulator four chained FMAs per
// visit, as in conv2d_forward_tex. Only the lanes of images past N and of the taps past
// KH·KW in the last step hold padding (3 of 28 taps in the reference network's first layer,
// against 3 of 8 lanes unfolded).
@compute @workgroup_size(TEX_WG)
fn conv2d_forward_tex_images4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                              @builtin(local_invocation_index) lid: u32) {
    let taps = p.kh * p.kw;
    let t4n = (taps + 3u) / 4u;
    let hp = p.h + 2u * p.pad;
    let wp = p.w + 2u * p.pad;
    let plane = p.oh * p.ow;
    let npos = ((p.n + 3u) / 4u) * plane;
    let pos_blocks = (npos + IMG_POS - 1u) / IMG_POS;
    let id = (wid.x + wid.y * nwg.x) * TEX_WG + lid;
    // Neighbouring invocations share the output channels (the same weight texels).
    let pb = id % pos_blocks;
    let o0 = (id / pos_blocks) * 16u;
    if o0 >= p.o { return; }
    // Each channel's row of weight texels (past the last channel, the last one's: never stored).
    var wrow: array<u32, 16>;
    for (var e = 0u; e < 16u; e++) {
        wrow[e] = min(o0 + e, p.o - 1u) * t4n;
    }
    var base: array<u32, IMG_POS>;
    for (var j = 0u; j < IMG_POS; j++) {
        let m = min(pb * IMG_POS + j, npos - 1u);
        let r = m % plane;
        base[j] = ((m / plane) * hp + (r / p.ow) * TEX_STRIDE) * wp + (r % p.ow) * TEX_STRIDE;
    }
    var acc: array<vec4<f32>, 64>;  // [16·j + e]: position j, channel o0 + e, four images
    for (var s = 0u; s < t4n; s++) {
        // The step's taps. Past the last one the weights are zero and the offset repeats the
        // last tap's (a texel the last tap reads too: it adds 0·x, an exact zero for finite x).
        let t = min(vec4<u32>(4u * s) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(taps - 1u));
        let off = (t / p.kw) * wp + t % p.kw;
        let w0 = fetch_b(wrow[0] + s);
        let w1 = fetch_b(wrow[1] + s);
        let w2 = fetch_b(wrow[2] + s);
        let w3 = fetch_b(wrow[3] + s);
        let w4 = fetch_b(wrow[4] + s);
        let w5 = fetch_b(wrow[5] + s);
        let w6 = fetch_b(wrow[6] + s);
        let w7 = fetch_b(wrow[7] + s);
        let w8 = fetch_b(wrow[8] + s);
        let w9 = fetch_b(wrow[9] + s);
        let w10 = fetch_b(wrow[10] + s);
        let w11 = fetch_b(wrow[11] + s);
        let w12 = fetch_b(wrow[12] + s);
        let w13 = fetch_b(wrow[13] + s);
        let w14 = fetch_b(wrow[14] + s);
        let w15 = fetch_b(wrow[15] + s);
        // The positions written out one by one: as a loop over positions, the accumulator
        // indices stop being constants and the kernel runs 1.6× slower on lavapipe.
        {
            let x0 = fetch_a(base[0] + off.x);
            let x1 = fetch_a(base[0] + off.y);
            let x2 = fetch_a(base[0] + off.z);
            let x3 = fetch_a(base[0] + off.w);
            acc[0] = taps4(acc[0], w0, x0, x1, x2, x3);
            acc[1] = taps4(acc[1], w1, x0, x1, x2, x3);
            acc[2] = taps4(acc[2], w2, x0, x1, x2, x3);
            acc[3] = taps4(acc[3], w3, x0, x1, x2, x3);
            acc[4] = taps4(acc[4], w4, x0, x1, x2, x3);
            acc[5] = taps4(acc[5], w5, x0, x1, x2, x3);
            acc[6] = taps4(acc[6], w6, x0, x1, x2, x3);
            acc[7] = taps4(acc[7], w7, x0, x1, x2, x3);
            acc[8] = taps4(acc[8], w8, x0, x1, x2, x3);
            acc[9] = taps4(acc[9], w9, x0, x1, x2, x3);
            acc[10] = taps4(acc[10], w10, x0, x1, x2, x3);
            acc[11] = taps4(acc[11], w11, x0, x1, x2, x3);
            acc[12] = taps4(acc[12], w12, x0, x1, x2, x3);
            acc[13] = taps4(acc[13], w13, x0, x1, x2, x3);
            acc[14] = taps4(acc[14], w14, x0, x1, x2, x3);
            acc[15] = taps4(acc[15], w15, x0, x1, x2, x3);
        }
        {
            let x0 = fetch_a(base[1] + off.x);
            let x1 = fetch_a(base[1] + off.y);
            let x2 = fetch_a(base[1] + off.z);
            let x3 = fetch_a(base[1] + off.w);
            acc[16] = taps4(acc[16], w0, x0, x1, x2, x3);
            acc[17] = taps4(acc[17], w1, x0, x1, x2, x3);
            acc[18] = taps4(acc[18], w2, x0, x1, x2, x3);
            acc[19] = taps4(acc[19], w3, x0, x1, x2, x3);
            acc[20] = taps4(acc[20], w4, x0, x1, x2, x3);
            acc[21] = taps4(acc[21], w5, x0, x1, x2, x3);
            acc[22] = taps4(acc[22], w6, x0, x1, x2, x3);
            acc[23] = taps4(acc[23], w7, x0, x1, x2, x3);
            acc[24] = taps4(acc[24], w8, x0, x1, x2, x3);
            acc[25] = taps4(acc[25], w9, x0, x1, x2, x3);
            acc[26] = taps4(acc[26], w10, x0, x1, x2, x3);
            acc[27] = taps4(acc[27], w11, x0, x1, x2, x3);
            acc[28] = taps4(acc[28], w12, x0, x1, x2, x3);
            acc[29] = taps4(acc[29], w13, x0, x1, x2, x3);
            acc[30] = taps4(acc[30], w14, x0, x1, x2, x3);
            acc[31] = taps4(acc[31], w15, x0, x1, x2, x3);
        }
        {
            let x0 = fetch_a(base[2] + off.x);
            let x1 = fetch_a(base[2] + off.y);
            let x2 = fetch_a(base[2] + off.z);
            let x3 = fetch_a(base[2] + off.w);
            acc[32] = taps4(acc[32], w0, x0, x1, x2, x3);
            acc[33] = taps4(acc[33], w1, x0, x1, x2, x3);
            acc[34] = taps4(acc[34], w2, x0, x1, x2, x3);
            acc[35] = taps4(acc[35], w3, x0, x1, x2, x3);
            acc[36] = taps4(acc[36], w4, x0, x1, x2, x3);
            acc[37] = taps4(acc[37], w5, x0, x1, x2, x3);
            acc[38] = taps4(acc[38], w6, x0, x1, x2, x3);
            acc[39] = taps4(acc[39], w7, x0, x1, x2, x3);
            acc[40] = taps4(acc[40], w8, x0, x1, x2, x3);
            acc[41] = taps4(acc[41], w9, x0, x1, x2, x3);
            acc[42] = taps4(acc[42], w10, x0, x1, x2, x3);
            acc[43] = taps4(acc[43], w11, x0, x1, x2, x3);
            acc[44] = taps4(acc[44], w12, x0, x1, x2, x3);
            acc[45] = taps4(acc[45], w13, x0, x1, x2, x3);
            acc[46] = taps4(acc[46], w14, x0, x1, x2, x3);
            acc[47] = taps4(acc[47], w15, x0, x1, x2, x3);
        }
        {
            let x0 = fetch_a(base[3] + off.x);
            let x1 = fetch_a(base[3] + off.y);
            let x2 = fetch_a(base[3] + off.z);
            let x3 = fetch_a(base[3] + off.w);
            acc[48] = taps4(acc[48], w0, x0, x1, x2, x3);
            acc[49] = taps4(acc[49], w1, x0, x1, x2, x3);
            acc[50] = taps4(acc[50], w2, x0, x1, x2, x3);
            acc[51] = taps4(acc[51], w3, x0, x1, x2, x3);
            acc[52] = taps4(acc[52], w4, x0, x1, x2, x3);
            acc[53] = taps4(acc[53], w5, x0, x1, x2, x3);
            acc[54] = taps4(acc[54], w6, x0, x1, x2, x3);
            acc[55] = taps4(acc[55], w7, x0, x1, x2, x3);
            acc[56] = taps4(acc[56], w8, x0, x1, x2, x3);
            acc[57] = taps4(acc[57], w9, x0, x1, x2, x3);
            acc[58] = taps4(acc[58], w10, x0, x1, x2, x3);
            acc[59] = taps4(acc[59], w11, x0, x1, x2, x3);
            acc[60] = taps4(acc[60], w12, x0, x1, x2, x3);
            acc[61] = taps4(acc[61], w13, x0, x1, x2, x3);
            acc[62] = taps4(acc[62], w14, x0, x1, x2, x3);
            acc[63] = taps4(acc[63], w15, x0, x1, x2, x3);
        }
    }
    // The sixteen biases, loaded once (past the last channel they are never stored).
    var bv: array<f32, 16>;
    for (var e = 0u; e < 16u; e++) {
        bv[e] = f32(bias[min(o0 + e, p.o - 1u)]);
    }
    for (var j = 0u; j < IMG_POS; j++) {
        let m = pb * IMG_POS + j;
        if m >= npos { return; }
        let n0 = 4u * (m / plane);
        let r = m % plane;
        for (var e = 0u; e < 16u; e++) {
            let o = o0 + e;
            if o >= p.o { break; }
            let v = acc[16u * j + e] + vec4<f32>(bv[e]);
            for (var k = 0u; k < 4u; k++) {
                if n0 + k < p.n { out[((n0 + k) * p.o + o) * plane + r] = out_elem(v[k]); }
            }
        }
    }
}

// partial[s, o, c, ky, kx] = Σ_{m in split s} dy[m, o] · xpad[n, oy·S + ky, ox·S + kx, c] over
// positions m = (n, oy, ox), with xpad = tex_a (pack_nhwc4 with `pad`), dy = tex_b
// (pack_nhwc4 with `dy_pad`: the bordered dy grad_input reads serves both) and S =
// TEX_STRIDE. An invocation takes one tap, output channels 8·ob .. 8·ob + 7 and input
// channels 8·cb .. 8·cb + 7; split s covers `images_per_split` output rows (n, oy) (here a
// count of rows, not images).
@compute @workgroup_size(TEX_WG)
fn conv2d_grad_weight_tex(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let c4n = (p.c + 3u) / 4u;
    let o4n = (p.o + 3u) / 4u;
    let c8n = (c4n + 1u) / 2u;
    let o8n = (o4n + 1u) / 2u;
    let taps = p.kh * p.kw;
    let wp = p.w + 2u * p.pad + 1u - p.unfold;
    let hp = p.h + 2u * p.pad;
    let plane = p.oh * p.ow;
    let npos = p.n * plane;
    let id = (wid.x + wid.y * nwg.x) * TEX_WG + lid;
    let blocks = o8n * c8n * taps;
    let split = id / blocks;
    if split >= p.splits { return; }
    let rem = id % blocks;
    let o4a = (rem % o8n) * 2u;
    let c4a = ((rem / o8n) % c8n) * 2u;
    let tap = rem / (o8n * c8n);
    let o4b = min(o4a + 1u, o4n - 1u);
    let c4b = min(c4a + 1u, c4n - 1u);
    let xoff = ((tap / p.kw) * wp + tap % p.kw) * c4n;
    // Splits cover whole output rows (n, oy): the position loop is then a plain run along ox.
    let rows = p.n * p.oh;
    let x_step = TEX_STRIDE * c4n;  // x texels from one output column to the next
    let r0 = split * p.images_per_split;
    let r1 = min(r0 + p.images_per_split, rows);
    // a<e><g>: output channel e of the 8, input channels of c4a (g = 0) or c4b (g = 1).
    // Named rather than an array, and the position loop innermost, so that the compiler
    // unrolls it and keeps every index constant.
    var a00 = vec4<f32>(0.0); var a01 = vec4<f32>(0.0); var a10 = vec4<f32>(0.0); var a11 = vec4<f32>(0.0);
    var a20 = vec4<f32>(0.0); var a21 = vec4<f32>(0.0); var a30 = vec4<f32>(0.0); var a31 = vec4<f32>(0.0);
    var a40 = vec4<f32>(0.0); var a41 = vec4<f32>(0.0); var a50 = vec4<f32>(0.0); var a51 = vec4<f32>(0.0);
    var a60 = vec4<f32>(0.0); var a61 = vec4<f32>(0.0); var a70 = vec4<f32>(0.0); var a71 = vec4<f32>(0.0);
    // Σ dy of the eight output channels: the bias gradient, which the invocations of the
    // first tap and input block store (every invocation sums: two adds beside 64 FMAs).
    var sa = vec4<f32>(0.0);
    var sb = vec4<f32>(0.0);
    for (var row = r0; row < r1; row++) {
        let xrow = ((row / p.oh) * hp + (row % p.oh) * TEX_STRIDE) * wp * c4n + xoff;
        let drow = (((row / p.oh) * (p.oh + 2u * p.dy_pad) + row % p.oh + p.dy_pad)
                    * (p.ow + 2u * p.dy_pad) + p.dy_pad) * o4n;
        for (var ox = 0u; ox < p.ow; ox++) {
            let xb = xrow + ox * x_step;
            let xa = fetch_a(xb + c4a);
            let xc = fetch_a(xb + c4b);
            let d = drow + ox * o4n;
            let da = fetch_b(d + o4a);
            let db = fetch_b(d + o4b);
            sa += da;
            sb += db;
            a00 = fma(vec4<f32>(da.x), xa, a00); a01 = fma(vec4<f32>(da.x), xc, a01);
            a10 = fma(vec4<f32>(da.y), xa, a10); a11 = fma(vec4<f32>(da.y), xc, a11);
            a20 = fma(vec4<f32>(da.z), xa, a20); a21 = fma(vec4<f32>(da.z), xc, a21);
            a30 = fma(vec4<f32>(da.w), xa, a30); a31 = fma(vec4<f32>(da.w), xc, a31);
            a40 = fma(vec4<f32>(db.x), xa, a40); a41 = fma(vec4<f32>(db.x), xc, a41);
            a50 = fma(vec4<f32>(db.y), xa, a50); a51 = fma(vec4<f32>(db.y), xc, a51);
            a60 = fma(vec4<f32>(db.z), xa, a60); a61 = fma(vec4<f32>(db.z), xc, a61);
            a70 = fma(vec4<f32>(db.w), xa, a70); a71 = fma(vec4<f32>(db.w), xc, a71);
        }
    }
    let acc = array<vec4<f32>, 16>(a00, a01, a10, a11, a20, a21, a30, a31,
                                   a40, a41, a50, a51, a60, a61, a70, a71);
    // dw is [O, C, KH, KW] of the layer; unfolded, channel c' = c·U + kx of tap kh is
    // (c, kh, kx) there (C = p.c / U, KW = U).
    if p.bias_partials > 0u && tap == 0u && c4a == 0u {
        for (var e = 0u; e < 8u; e++) {
            if e >= 4u && o4a + 1u >= o4n { break; }
            let o = 4u * o4a + e;
            if o >= p.o { break; }
            out[p.bias_partials + split * p.o + o] = out_elem(select(sb, sa, e < 4u)[e % 4u]);
        }
    }
    let out_base = split * p.o * p.c * taps;
    for (var e = 0u; e < 8u; e++) {
        if e >= 4u && o4a + 1u >= o4n { break; }
        let o = 4u * o4a + e;
        if o >= p.o { break; }
        for (var g = 0u; g < 2u; g++) {
            if g == 1u && c4a + 1u >= c4n { break; }
            for (var k = 0u; k < 4u; k++) {
                let c = 4u * (c4a + g) + k;
                if c < p.c {
                    let w_index = ((o * (p.c / p.unfold) + c / p.unfold) * taps + tap) * p.unfold + c % p.unfold;
                    out[out_base + w_index] = out_elem(acc[2u * e + g][k]);
                }
            }
        }
    }
}
