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

/// `gather_images_affine`: image `indices[m]` ([C, H, W]) resampled through row m of
/// `transforms` ([M, 8]: sx = t0·x + t1·y + t2, sy = t3·x + t4·y + t5), bilinearly; a tap
/// outside the image reads the clamped edge pixel (`constant_fill` false, Keras's `nearest`)
/// or 0 (`constant_fill`); then normalised as [`gather_images`]. In f32, operation for
/// operation as the shader.
#[allow(clippy::too_many_arguments)] // the shader's bindings and uniforms, each named
pub fn gather_images_affine(
    images: &[u8],
    [channels, height, width]: [usize; 3],
    indices: &[u32],
    transforms: &[f32],
    constant_fill: bool,
    shift: f32,
    scale: f32,
) -> Vec<f32> {
    let pixels = channels * height * width;
    let (h, w) = (height as i64, width as i64);
    let mut out = Vec::with_capacity(indices.len() * pixels);
    for (m, &idx) in indices.iter().enumerate() {
        let image = &images[idx as usize * pixels..][..pixels];
        let t = &transforms[m * 8..][..8];
        for c in 0..channels {
            let plane = &image[c * height * width..][..height * width];
            for y in 0..height {
                for x in 0..width {
                    let (xf, yf) = (x as f32, y as f32);
                    let sx = t[0] * xf + t[1] * yf + t[2];
                    let sy = t[3] * xf + t[4] * yf + t[5];
                    let (x0, y0) = (sx.floor(), sy.floor());
                    let (fx, fy) = (sx - x0, sy - y0);
                    let (xi, yi) = (x0 as i64, y0 as i64);
                    let mut acc = 0.0f32;
                    for dy in 0..2 {
                        let yy = yi + dy;
                        let wy = if dy == 1 { fy } else { 1.0 - fy };
                        for dx in 0..2 {
                            let xx = xi + dx;
                            let wx = if dx == 1 { fx } else { 1.0 - fx };
                            let v = plane[(yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)) as usize]
                                as f32;
                            let inside = (0..w).contains(&xx) && (0..h).contains(&yy);
                            acc += wx * wy * if inside || !constant_fill { v } else { 0.0 };
                        }
                    }
                    out.push((acc / 255.0 - shift) * scale);
                }
            }
        }
    }
    out
}
