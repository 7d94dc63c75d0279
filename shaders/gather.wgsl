// gather.wgsl — builds a training batch on the GPU from the dataset resident there.
//
// Entry points (binding 0 is `p: GatherParams`):
//   gather_images         images@1,5,6,7 [N, words] u32, indices@2 [M] u32  ->  out@3 [M, C, H, W] elem
//   gather_images_affine  the same, each image resampled through transforms@4 [M, 8] f32
// `elem` is f32, or f16 under mixed precision, where the launcher compiles the f16 variant:
// only `out` changes type; both entries compute in f32 and round once when storing.
//
// The dataset is uploaded once as packed u8 (four pixels per u32 word, little-endian, each
// image starting on a word boundary: words = ceil(pixels / 4)); Fashion-MNIST's 60,000
// images are 47 MB that way, under the 128 MiB storage-binding limit that f32 would exceed.
// A larger set is split over up to four buffers ("shards", bindings 1, 5, 6, 7) of
// `per_shard` whole images each: image n is image n % per_shard of shard n / per_shard.
// WGSL cannot index bindings, so `word` picks the shard with a switch; the unused ones are
// bound to shard 0 and never read.
// An image's pixels are [C, H, W] (planar: RGB is three planes). Each step the host sends
// only M image indices; this kernel unpacks and normalises:
//   out[m, q] = (byte(images[indices[m]], q) / 255 − shift) · scale
// (shift 0, scale 1 gives pixel/255, the usual PyTorch recipe).
//
// gather_images_affine is the augmenting gather (Keras ImageDataGenerator's affine set).
// Row m of `transforms` maps an output pixel (column x, row y; centres at integers) to its
// source: sx = t0·x + t1·y + t2, sy = t3·x + t4·y + t5 (t6, t7 unused). The source is read
// with bilinear interpolation of the four pixels around it, in every channel alike; a tap
// outside the image reads the nearest edge pixel (fill 0, Keras's `nearest`) or 0 (fill 1,
// `constant`, black). Then the same normalisation. The identity row [1,0,0, 0,1,0] gives
// weight exactly 1 to one pixel and exactly 0 to the rest, so it reproduces gather_images
// bit for bit.

struct GatherParams {
    count: u32,   // M
    pixels: u32,  // values per image (C·H·W)
    words: u32,   // u32 words per packed image
    height: u32,  // H (gather_images_affine only)
    shift: f32,
    scale: f32,
    width: u32,   // W (gather_images_affine only)
    fill: u32,    // 0 nearest, 1 constant (gather_images_affine only)
    per_shard: u32, // images per shard
}

alias elem = f32;

@group(0) @binding(0) var<uniform> p: GatherParams;
@group(0) @binding(1) var<storage, read> images0: array<u32>;
@group(0) @binding(5) var<storage, read> images1: array<u32>;
@group(0) @binding(6) var<storage, read> images2: array<u32>;
@group(0) @binding(7) var<storage, read> images3: array<u32>;
@group(0) @binding(2) var<storage, read> indices: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<elem>;
@group(0) @binding(4) var<storage, read> transforms: array<f32>;

const WG: u32 = 256u;

// Word w of packed image n.
fn word(n: u32, w: u32) -> u32 {
    let at = (n % p.per_shard) * p.words + w;
    switch n / p.per_shard {
        case 0u: { return images0[at]; }
        case 1u: { return images1[at]; }
        case 2u: { return images2[at]; }
        default: { return images3[at]; }
    }
}

// Pixel q of packed image n, as 0..255.
fn pixel(n: u32, q: u32) -> f32 {
    return f32((word(n, q / 4u) >> (8u * (q % 4u))) & 0xffu);
}

@compute @workgroup_size(WG)
fn gather_images(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if i >= p.count * p.pixels { return; }
    let m = i / p.pixels;
    let q = i % p.pixels;
    out[i] = elem((pixel(indices[m], q) / 255.0 - p.shift) * p.scale);
}

@compute @workgroup_size(WG)
fn gather_images_affine(@builtin(workgroup_id) wid: vec3<u32>,
                        @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if i >= p.count * p.pixels { return; }
    let m = i / p.pixels;
    let q = i % p.pixels;
    let plane = p.height * p.width;
    let channel = q / plane;
    let y = (q % plane) / p.width;
    let x = q % p.width;
    let t = m * 8u;
    let sx = transforms[t] * f32(x) + transforms[t + 1u] * f32(y) + transforms[t + 2u];
    let sy = transforms[t + 3u] * f32(x) + transforms[t + 4u] * f32(y) + transforms[t + 5u];
    let x0 = floor(sx);
    let y0 = floor(sy);
    let fx = sx - x0;
    let fy = sy - y0;
    // i32() saturates, and transforms keep sources within a few image sizes anyway.
    let xi = i32(x0);
    let yi = i32(y0);
    let w = i32(p.width);
    let h = i32(p.height);
    let n = indices[m];
    let first = channel * plane;
    var acc = 0.0;
    for (var dy = 0; dy < 2; dy++) {
        let yy = yi + dy;
        let wy = select(1.0 - fy, fy, dy == 1);
        for (var dx = 0; dx < 2; dx++) {
            let xx = xi + dx;
            let wx = select(1.0 - fx, fx, dx == 1);
            // Read the clamped tap always (no out-of-bounds load); `constant` then drops it.
            let v = pixel(n, first + u32(clamp(yy, 0, h - 1)) * p.width
                                       + u32(clamp(xx, 0, w - 1)));
            let inside = xx >= 0 && xx < w && yy >= 0 && yy < h;
            acc += wx * wy * select(0.0, v, inside || p.fill == 0u);
        }
    }
    out[i] = elem((acc / 255.0 - p.shift) * p.scale);
}
