// photo.wgsl — photometric augmentation of a gathered batch, in place: torchvision's
// ColorJitter (brightness, contrast, saturation, hue, applied in a random order) and
// RandomGrayscale, on the batch the gather wrote (normalised values; `elem` is f32, or f16
// under mixed precision, computed in f32 and rounded once on store).
//
// Entry point (binding 0 is `p: PhotoParams`):
//   color_jitter   x@1 [M, C, H, W] elem (read-write), jitter@2 [M, 8] f32
// Row m of `jitter` is (brightness b, contrast c, saturation s, hue h, order, grey, 0, 0):
// `order` holds four 2-bit op codes, lowest first (0 brightness, 1 contrast, 2 saturation,
// 3 hue: torchvision's `fn_idx`), `grey` is 1 to turn the image grey after them. Each value
// is first brought back to [0, 1], u = v / scale + shift (the gather's normalisation
// undone), then, as torchvision's functional ops on float images:
//   brightness  u = clamp(b·u, 0, 1)
//   contrast    u = clamp(c·u + (1 − c)·mean, 0, 1), mean the image's mean grey level
//               (of the image as it is at that point of the order)
//   saturation  u = clamp(s·u + (1 − s)·grey(u), 0, 1)              (3 channels only)
//   hue         rgb → hsv, h = (h + hue) mod 1, hsv → rgb            (3 channels only)
//   grey        every channel = grey(u)                              (3 channels only)
// with grey = 0.2989 R + 0.587 G + 0.114 B (torchvision's rgb_to_grayscale) and the HSV
// conversions of torchvision's _rgb2hsv / _hsv2rgb; an op at its identity (b, c, s = 1,
// h = 0) is skipped. Then v = (u − shift)·scale is stored.
//
// One workgroup per image (the grid may be folded into two dimensions), each invocation
// owning the positions q ≡ lid (mod 256) of the image in every pass, so passes need no
// barrier but the contrast mean's, a fixed-order tree over the invocations' partial sums.

struct PhotoParams {
    count: u32,    // M
    channels: u32, // C, 1 or 3
    plane: u32,    // H·W
    _pad: u32,
    shift: f32,
    scale: f32,
}

alias elem = f32;

@group(0) @binding(0) var<uniform> p: PhotoParams;
@group(0) @binding(1) var<storage, read_write> x: array<elem>;
@group(0) @binding(2) var<storage, read> jitter: array<f32>;

const WG: u32 = 256u;

var<workgroup> partial: array<f32, WG>;
// The image's jitter row, read through workgroupUniformLoad so that the branches around the
// contrast mean's barriers are uniform.
var<workgroup> shared_row: array<f32, 8>;

fn load(at: u32) -> f32 {
    return f32(x[at]) / p.scale + p.shift;
}

fn store(at: u32, u: f32) {
    x[at] = elem((u - p.shift) * p.scale);
}

fn grey(r: f32, g: f32, b: f32) -> f32 {
    return 0.2989 * r + 0.587 * g + 0.114 * b;
}

// torchvision's _rgb2hsv.
fn rgb_to_hsv(c: vec3<f32>) -> vec3<f32> {
    let maxc = max(c.r, max(c.g, c.b));
    let minc = min(c.r, min(c.g, c.b));
    let eqc = maxc == minc;
    let cr = maxc - minc;
    let s = cr / select(maxc, 1.0, eqc);
    let d = select(cr, 1.0, eqc);
    let rc = (maxc - c.r) / d;
    let gc = (maxc - c.g) / d;
    let bc = (maxc - c.b) / d;
    var h = 0.0;
    if maxc == c.r {
        h = bc - gc;
    } else if maxc == c.g {
        h = 2.0 + rc - bc;
    } else {
        h = 4.0 + gc - rc;
    }
    // fmod(h / 6 + 1, 1): h / 6 + 1 lies in (0, 2) here, so this is its fractional part.
    let t = h / 6.0 + 1.0;
    return vec3<f32>(t - trunc(t), s, maxc);
}

// torchvision's _hsv2rgb.
fn hsv_to_rgb(hsv: vec3<f32>) -> vec3<f32> {
    let h = hsv.x;
    let s = hsv.y;
    let v = hsv.z;
    let i6 = floor(h * 6.0);
    let f = h * 6.0 - i6;
    let i = ((i32(i6) % 6) + 6) % 6;
    let pp = clamp(v * (1.0 - s), 0.0, 1.0);
    let q = clamp(v * (1.0 - s * f), 0.0, 1.0);
    let t = clamp(v * (1.0 - s * (1.0 - f)), 0.0, 1.0);
    switch i {
        case 0: { return vec3<f32>(v, t, pp); }
        case 1: { return vec3<f32>(q, v, pp); }
        case 2: { return vec3<f32>(pp, v, t); }
        case 3: { return vec3<f32>(pp, q, v); }
        case 4: { return vec3<f32>(t, pp, v); }
        default: { return vec3<f32>(v, pp, q); }
    }
}

@compute @workgroup_size(WG)
fn color_jitter(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let m = wid.x + wid.y * nwg.x;
    // Uniform per workgroup: the whole workgroup returns together, before any barrier.
    if m >= p.count { return; }
    if lid < 8u {
        shared_row[lid] = jitter[m * 8u + lid];
    }
    let row = workgroupUniformLoad(&shared_row);
    let factors = vec4<f32>(row[0], row[1], row[2], row[3]);
    let order = u32(row[4]);
    let to_grey = row[5] != 0.0;
    let base = m * p.channels * p.plane;
    let colour = p.channels == 3u;
    for (var k = 0u; k < 4u; k++) {
        let op = (order >> (2u * k)) & 3u;
        let f = factors[op];
        if op == 0u && f != 1.0 {
            for (var q = lid; q < p.plane; q += WG) {
                for (var ch = 0u; ch < p.channels; ch++) {
                    let at = base + ch * p.plane + q;
                    store(at, clamp(f * load(at), 0.0, 1.0));
                }
            }
        } else if op == 1u && f != 1.0 {
            var sum = 0.0;
            for (var q = lid; q < p.plane; q += WG) {
                if colour {
                    sum += grey(load(base + q), load(base + p.plane + q), load(base + 2u * p.plane + q));
                } else {
                    sum += load(base + q);
                }
            }
            partial[lid] = sum;
            workgroupBarrier();
            for (var half = WG / 2u; half > 0u; half /= 2u) {
                if lid < half {
                    partial[lid] += partial[lid + half];
                }
                workgroupBarrier();
            }
            let mean = partial[0] / f32(p.plane);
            // Every invocation has read the mean before the next reduction reuses the array.
            workgroupBarrier();
            for (var q = lid; q < p.plane; q += WG) {
                for (var ch = 0u; ch < p.channels; ch++) {
                    let at = base + ch * p.plane + q;
                    store(at, clamp(f * load(at) + (1.0 - f) * mean, 0.0, 1.0));
                }
            }
        } else if op == 2u && f != 1.0 && colour {
            for (var q = lid; q < p.plane; q += WG) {
                let r = load(base + q);
                let g = load(base + p.plane + q);
                let b = load(base + 2u * p.plane + q);
                let l = grey(r, g, b);
                store(base + q, clamp(f * r + (1.0 - f) * l, 0.0, 1.0));
                store(base + p.plane + q, clamp(f * g + (1.0 - f) * l, 0.0, 1.0));
                store(base + 2u * p.plane + q, clamp(f * b + (1.0 - f) * l, 0.0, 1.0));
            }
        } else if op == 3u && f != 0.0 && colour {
            for (var q = lid; q < p.plane; q += WG) {
                let hsv = rgb_to_hsv(vec3<f32>(load(base + q), load(base + p.plane + q),
                                               load(base + 2u * p.plane + q)));
                // (h + hue) mod 1, the remainder taken positive as torch's `%`.
                let h = hsv.x + f;
                let rgb = hsv_to_rgb(vec3<f32>(h - floor(h), hsv.y, hsv.z));
                store(base + q, rgb.r);
                store(base + p.plane + q, rgb.g);
                store(base + 2u * p.plane + q, rgb.b);
            }
        }
    }
    if to_grey && colour {
        for (var q = lid; q < p.plane; q += WG) {
            let l = grey(load(base + q), load(base + p.plane + q), load(base + 2u * p.plane + q));
            for (var ch = 0u; ch < 3u; ch++) {
                store(base + ch * p.plane + q, l);
            }
        }
    }
}

// ---- Gaussian blur ----
//
// torchvision's GaussianBlur(kernel_size, sigma) of each image with its own σ (slot 6 of
// its jitter row; 0 leaves it as it is), separable: a k-tap kernel
// w_i = exp(−½ (i / σ)²) / Σ, i = −(k − 1)/2 … (k − 1)/2, along rows and then columns, with
// torchvision's reflect padding (index −1 reads 1, index n reads n − 2). A blur is linear
// and its weights sum to 1, so it acts on the normalised values directly.
//   blur_rows      x@1 [M, C, H, W] elem, jitter@2  ->  tmp@3 [M, C, H, W] f32
//   blur_columns   tmp@3, jitter@2                  ->  x@1
// One invocation per element (the grid may be folded into two dimensions).

struct BlurParams {
    count: u32,  // M·C·H·W
    plane: u32,  // H·W
    width: u32,  // W
    height: u32, // H
    image: u32,  // C·H·W
    taps: u32,   // k, odd
}

@group(0) @binding(0) var<uniform> b: BlurParams;
@group(0) @binding(3) var<storage, read_write> tmp: array<f32>;

// Index i of a line of n reflected into 0..n (torch's "reflect" padding, for |i| < n).
fn reflect(i: i32, n: i32) -> u32 {
    var j = i;
    if j < 0 { j = -j; }
    if j >= n { j = 2 * (n - 1) - j; }
    return u32(j);
}

fn tap_weight(i: i32, sigma: f32) -> f32 {
    let t = f32(i) / sigma;
    return exp(-0.5 * t * t);
}

@compute @workgroup_size(WG)
fn blur_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let e = (wid.x + wid.y * nwg.x) * WG + lid;
    if e >= b.count { return; }
    let sigma = jitter[(e / b.image) * 8u + 6u];
    if sigma == 0.0 {
        tmp[e] = f32(x[e]);
        return;
    }
    let line = e - e % b.width;
    let col = i32(e % b.width);
    let r = i32(b.taps / 2u);
    var sum = 0.0;
    var norm = 0.0;
    for (var i = -r; i <= r; i++) {
        let w = tap_weight(i, sigma);
        sum += w * f32(x[line + reflect(col + i, i32(b.width))]);
        norm += w;
    }
    tmp[e] = sum / norm;
}

@compute @workgroup_size(WG)
fn blur_columns(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let e = (wid.x + wid.y * nwg.x) * WG + lid;
    if e >= b.count { return; }
    let sigma = jitter[(e / b.image) * 8u + 6u];
    if sigma == 0.0 {
        x[e] = elem(tmp[e]);
        return;
    }
    let in_plane = e % b.plane;
    let first = e - in_plane + in_plane % b.width;
    let row = i32(in_plane / b.width);
    let r = i32(b.taps / 2u);
    var sum = 0.0;
    var norm = 0.0;
    for (var i = -r; i <= r; i++) {
        let w = tap_weight(i, sigma);
        sum += w * tmp[first + reflect(row + i, i32(b.height)) * b.width];
        norm += w;
    }
    x[e] = elem(sum / norm);
}
