//! Reference for `shaders/photo.wgsl`: torchvision's ColorJitter and RandomGrayscale on a
//! normalised batch, in place, as plain loops in f32 (the shader's arithmetic, its loads and
//! stores between the ops included; the contrast mean summed in order where the shader sums
//! a tree).

/// torchvision's rgb_to_grayscale weights.
fn grey(r: f32, g: f32, b: f32) -> f32 {
    0.2989 * r + 0.587 * g + 0.114 * b
}

/// torchvision's `_rgb2hsv` of one pixel.
pub fn rgb_to_hsv([r, g, b]: [f32; 3]) -> [f32; 3] {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    let eqc = maxc == minc;
    let cr = maxc - minc;
    let s = cr / if eqc { 1.0 } else { maxc };
    let d = if eqc { 1.0 } else { cr };
    let (rc, gc, bc) = ((maxc - r) / d, (maxc - g) / d, (maxc - b) / d);
    let h = if maxc == r {
        bc - gc
    } else if maxc == g {
        2.0 + rc - bc
    } else {
        4.0 + gc - rc
    };
    let t = h / 6.0 + 1.0;
    [t - t.trunc(), s, maxc]
}

/// torchvision's `_hsv2rgb` of one pixel.
pub fn hsv_to_rgb([h, s, v]: [f32; 3]) -> [f32; 3] {
    let i6 = (h * 6.0).floor();
    let f = h * 6.0 - i6;
    let i = (i6 as i32).rem_euclid(6);
    let p = (v * (1.0 - s)).clamp(0.0, 1.0);
    let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
    let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
    match i {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// `color_jitter`: `x` `[M, channels, plane]` normalised values ((u − shift)·scale), jittered
/// in place by the rows of `jitter` `[M, 8]` (see the shader's header). As the shader, each
/// op reads the stored values and stores its result, through `round` (the identity for f32,
/// the rounding to f16 for a batch stored as f16).
pub fn color_jitter(
    x: &mut [f32],
    (channels, plane): (usize, usize),
    jitter: &[f32],
    (shift, scale): (f32, f32),
    round: impl Fn(f32) -> f32,
) {
    let image = channels * plane;
    let load = |v: f32| v / scale + shift;
    let store = |u: f32| round((u - shift) * scale);
    for (m, img) in x.chunks_exact_mut(image).enumerate() {
        let row = &jitter[m * 8..m * 8 + 8];
        let colour = channels == 3;
        let order = row[4] as u32;
        // Each op maps the loaded [0, 1] values of one position (every channel) to new ones.
        let pointwise = |img: &mut [f32], op: &dyn Fn([f32; 3]) -> [f32; 3]| {
            for q in 0..plane {
                let mut u = [0f32; 3];
                for ch in 0..channels {
                    u[ch] = load(img[ch * plane + q]);
                }
                let out = op(u);
                for ch in 0..channels {
                    img[ch * plane + q] = store(out[ch]);
                }
            }
        };
        for k in 0..4 {
            let op = (order >> (2 * k)) & 3;
            let f = row[op as usize];
            match op {
                0 if f != 1.0 => pointwise(img, &|u| u.map(|v| (f * v).clamp(0.0, 1.0))),
                1 if f != 1.0 => {
                    let sum: f32 = (0..plane)
                        .map(|q| {
                            let u = |ch: usize| load(img[ch * plane + q]);
                            if colour { grey(u(0), u(1), u(2)) } else { u(0) }
                        })
                        .sum();
                    let mean = sum / plane as f32;
                    pointwise(img, &|u| {
                        u.map(|v| (f * v + (1.0 - f) * mean).clamp(0.0, 1.0))
                    });
                }
                2 if f != 1.0 && colour => pointwise(img, &|u| {
                    let l = grey(u[0], u[1], u[2]);
                    u.map(|v| (f * v + (1.0 - f) * l).clamp(0.0, 1.0))
                }),
                3 if f != 0.0 && colour => pointwise(img, &|u| {
                    let [h, s, v] = rgb_to_hsv(u);
                    let h = h + f;
                    hsv_to_rgb([h - h.floor(), s, v])
                }),
                _ => {}
            }
        }
        if row[5] != 0.0 && colour {
            pointwise(img, &|u| [grey(u[0], u[1], u[2]); 3]);
        }
    }
}

/// Index `i` of a line of `n` reflected into `0..n` (torch's "reflect" padding).
fn reflect(i: isize, n: isize) -> usize {
    let j = if i < 0 { -i } else { i };
    (if j >= n { 2 * (n - 1) - j } else { j }) as usize
}

/// `gaussian_blur`: each image of `x` `[M, C, height, width]` blurred by a `taps`-tap
/// Gaussian of σ = slot 6 of its `jitter` row (0: unchanged), rows then columns, with
/// reflect padding; the row pass kept in f32, the result through `round` (the batch's
/// storage type).
pub fn gaussian_blur(
    x: &mut [f32],
    (channels, height, width): (usize, usize, usize),
    jitter: &[f32],
    taps: usize,
    round: impl Fn(f32) -> f32,
) {
    let plane = height * width;
    let r = (taps / 2) as isize;
    let blur = |line: &dyn Fn(isize) -> f32, at: isize, n: isize, sigma: f32| {
        let (mut sum, mut norm) = (0f32, 0f32);
        for i in -r..=r {
            let t = i as f32 / sigma;
            let w = (-0.5 * t * t).exp();
            sum += w * line(reflect(at + i, n) as isize);
            norm += w;
        }
        sum / norm
    };
    for (m, img) in x.chunks_exact_mut(channels * plane).enumerate() {
        let sigma = jitter[m * 8 + 6];
        if sigma == 0.0 {
            continue;
        }
        for ch in 0..channels {
            let p = &mut img[ch * plane..(ch + 1) * plane];
            let mut rows = vec![0f32; plane];
            for y in 0..height {
                for xx in 0..width {
                    rows[y * width + xx] = blur(
                        &|i| p[y * width + i as usize],
                        xx as isize,
                        width as isize,
                        sigma,
                    );
                }
            }
            for y in 0..height {
                for xx in 0..width {
                    p[y * width + xx] = round(blur(
                        &|i| rows[i as usize * width + xx],
                        y as isize,
                        height as isize,
                        sigma,
                    ));
                }
            }
        }
    }
}
