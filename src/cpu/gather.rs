//! Reference for `shaders/gather.wgsl`, on the unpacked bytes: images [N, pixels] u8.

/// out[m, q] = (images[indices[m], q] / 255 − shift) · scale
pub fn gather_images(
    images: &[u8],
    pixels: usize,
    indices: &[u32],
    shift: f32,
    scale: f32,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(indices.len() * pixels);
    for &idx in indices {
        for q in 0..pixels {
            let byte = images[idx as usize * pixels + q];
            out.push((byte as f32 / 255.0 - shift) * scale);
        }
    }
    out
}
