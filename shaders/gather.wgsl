// gather.wgsl — builds a training batch on the GPU from the dataset resident there.
//
// Entry point (binding 0 is `p: GatherParams`):
//   gather_images   images@1 [N, words] u32, indices@2 [M] u32  ->  out@3 [M, pixels] f32
//
// The dataset is uploaded once as packed u8 (four pixels per u32 word, little-endian, each
// image starting on a word boundary: words = ceil(pixels / 4)); Fashion-MNIST's 60,000
// images are 47 MB that way, under the 128 MiB storage-binding limit that f32 would exceed.
// Each step the host sends only M image indices; this kernel unpacks and normalises:
//   out[m, q] = (byte(images[indices[m]], q) / 255 − shift) · scale
// (shift 0, scale 1 gives pixel/255, the usual PyTorch recipe).

struct GatherParams {
    count: u32,   // M
    pixels: u32,  // values per image (C·H·W)
    words: u32,   // u32 words per packed image
    _pad: u32,
    shift: f32,
    scale: f32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: GatherParams;
@group(0) @binding(1) var<storage, read> images: array<u32>;
@group(0) @binding(2) var<storage, read> indices: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;

@compute @workgroup_size(WG)
fn gather_images(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if i >= p.count * p.pixels { return; }
    let m = i / p.pixels;
    let q = i % p.pixels;
    let word = images[indices[m] * p.words + q / 4u];
    let byte = (word >> (8u * (q % 4u))) & 0xffu;
    out[i] = (f32(byte) / 255.0 - p.shift) * p.scale;
}
