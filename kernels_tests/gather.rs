//! Batch gathers (`shaders/gather.wgsl`) against `cpu::gather`. Both entries also write f16
//! batches (where the adapter has SHADER_F16): the same f32 arithmetic, rounded once to f16
//! on the store.

use crate::common::*;
use rand::RngExt;
use siamese_gpu::DType;
use siamese_gpu::cpu::gather as cpu;
use siamese_gpu::data::augment::{Augment, AugmentSampler, ColorJitter, CropRange, Transform};
use siamese_gpu::ops::gather;
use siamese_gpu::vocab::{FillMode, PixelNorm, TRANSFORM_LEN};

/// (images, pixels, batch): one image and index, pixel counts that are not multiples of 4
/// (images then straddle words), Fashion-MNIST's 28×28 with the reference batch of 2·128
/// images, and a batch with repeated indices.
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (5, 7, 3),
    (9, 13, 40),
    (300, 784, 256),
    (2, 784, 9),
];

#[test]
fn gather_images_matches_cpu() {
    for p in dtype_matrix(&DTYPES, SHAPES) {
        let (n, pixels, m) = p.shape;
        let mut r = rng(p.seed);
        let bytes: Vec<u8> = (0..n * pixels)
            .map(|_| r.random_range(0..=255u32) as u8)
            .collect();
        let indices: Vec<u32> = (0..m).map(|_| r.random_range(0..n as u32)).collect();
        let images = gather::upload_images(gpu(), &bytes, n, pixels).unwrap();
        let idx = gpu().upload_u32(&indices, &[m]).unwrap();
        for norm in [PixelNorm::UNIT, PixelNorm::standardize(0.2860, 0.3530)] {
            let want = cpu::gather_images(&bytes, pixels, &indices, norm.shift, norm.scale);
            // Division by 255 (≤ 2.5 ulp in WGSL, 0.5 on the CPU), a subtraction and a
            // product of values below 3.5 in magnitude: 8 ulps of the result, plus 8 ulps of
            // 1 for the cancellation in byte/255 − shift.
            let bound: Vec<f64> = want
                .iter()
                .map(|&w| 8.0 * U32 * (w.abs() as f64 + 1.0))
                .collect();
            let out = zeros_as(&[m, pixels], p.dtype);
            let kernel = gather::gather_images(gpu(), &images, &idx, &out, norm).unwrap();
            let got = run_and_read_floats(&kernel, &out);
            let what = format!("gather_images {p} shift {}", norm.shift);
            match p.dtype {
                DType::F16 => {
                    let (want16, bound16) = rounded_once(&want, &bound);
                    assert_within(&what, &got, &want16, &bound16);
                }
                _ => assert_within(&what, &got, &want, &bound),
            }
        }
    }
}

/// An f32 value within `bound` of `want`, rounded once to f16, against the reference rounded
/// the same way: rounding is monotone, so the kernel's f16 lies between the f16 roundings
/// of want − bound and want + bound. Both are round(want), and the comparison exact, unless
/// an f16 rounding boundary falls within the f32 bound (a few of the 512 byte values of the
/// two normalisations tested): there the neighbouring f16 is allowed too.
fn rounded_once(want: &[f32], bound: &[f64]) -> (Vec<f32>, Vec<f64>) {
    let round = |v: f64| half::f16::from_f64(v).to_f64();
    want.iter()
        .zip(bound)
        .map(|(&w, &b)| {
            let w16 = round(w as f64);
            let reach = (round(w as f64 - b) - w16)
                .abs()
                .max((round(w as f64 + b) - w16).abs());
            (w16 as f32, reach)
        })
        .unzip()
}

#[test]
fn gather_images_rejects_a_mismatched_image_size() {
    let images = gather::upload_images(gpu(), &[0; 2 * 784], 2, 784).unwrap();
    let idx = gpu().upload_u32(&[0, 1], &[2]).unwrap();
    let err = gather::gather_images(
        gpu(),
        &images,
        &idx,
        &zeros(&[2, 1, 32, 32]),
        PixelNorm::UNIT,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("196 words each, but 1024 pixels need 256"),
        "{err}"
    );
}

#[test]
fn gather_images_rejects_a_batch_that_is_not_f32_or_f16() {
    let images = gather::upload_images(gpu(), &[0; 2 * 784], 2, 784).unwrap();
    let idx = gpu().upload_u32(&[0, 1], &[2]).unwrap();
    let out = gpu().zeros(&[2, 1, 28, 28], DType::U32).unwrap();
    let err = gather::gather_images(gpu(), &images, &idx, &out, PixelNorm::UNIT).unwrap_err();
    assert!(
        err.to_string()
            .contains("out must be an f32 or f16 tensor, got U32"),
        "{err}"
    );
}

/// (images, [C, H, W], batch) of the augmenting gather: a single pixel, non-square grey and
/// RGB images, output counts off the 256-wide workgroup grid (3·35 = 105, 37·3·9·6 = 5,994),
/// Fashion-MNIST at the reference batch of 2·128 images, and RGB 32×32.
const AFFINE_SHAPES: &[(usize, [usize; 3], usize)] = &[
    (1, [1, 1, 1], 1),
    (5, [1, 5, 7], 3),
    (7, [3, 9, 6], 37),
    (300, [1, 28, 28], 256),
    (4, [3, 32, 32], 9),
];

/// Strong ranges on every transform, so that sources fall outside the image, between pixels
/// and across flips, after a random resized crop (torchvision's ranges).
const STRONG: Augment = Augment {
    rotation_range: 40.0,
    width_shift_range: 0.3,
    height_shift_range: 0.3,
    shear_range: 30.0,
    zoom_range: 0.4,
    horizontal_flip: true,
    fill_mode: FillMode::Nearest,
    crop: Some(CropRange::TORCHVISION),
    color: ColorJitter {
        brightness: 0.0,
        contrast: 0.0,
        saturation: 0.0,
        hue: 0.0,
        grayscale: 0.0,
    },
    blur: None,
};

fn random_images(r: &mut rand::rngs::StdRng, n: usize, pixels: usize) -> Vec<u8> {
    (0..n * pixels)
        .map(|_| r.random_range(0..=255u32) as u8)
        .collect()
}

/// Runs `gather_images_affine` on `bytes` ([N, C, H, W]) into an f32 batch and returns it.
fn affine_on_gpu(
    bytes: &[u8],
    n: usize,
    chw: [usize; 3],
    indices: &[u32],
    rows: &[f32],
    norm: PixelNorm,
    fill: FillMode,
) -> Vec<f32> {
    affine_on_gpu_as(bytes, n, chw, indices, rows, norm, fill, DType::F32)
}

/// [`affine_on_gpu`] into a batch of `dtype` (f32 or f16), read back as f32.
#[allow(clippy::too_many_arguments)]
fn affine_on_gpu_as(
    bytes: &[u8],
    n: usize,
    chw: [usize; 3],
    indices: &[u32],
    rows: &[f32],
    norm: PixelNorm,
    fill: FillMode,
    dtype: DType,
) -> Vec<f32> {
    let [c, h, w] = chw;
    let m = indices.len();
    let images = gather::upload_images(gpu(), bytes, n, c * h * w).unwrap();
    let idx = gpu().upload_u32(indices, &[m]).unwrap();
    let transforms = upload(rows, &[m, TRANSFORM_LEN]);
    let out = zeros_as(&[m, c, h, w], dtype);
    let kernel =
        gather::gather_images_affine(gpu(), &images, &idx, &transforms, &out, norm, fill).unwrap();
    run_and_read_floats(&kernel, &out)
}

#[test]
fn gather_images_affine_matches_cpu() {
    for p in dtype_matrix(&DTYPES, AFFINE_SHAPES) {
        let (n, chw, m) = p.shape;
        let [c, h, w] = chw;
        let mut r = rng(100 + p.seed);
        let bytes = random_images(&mut r, n, c * h * w);
        let indices: Vec<u32> = (0..m).map(|_| r.random_range(0..n as u32)).collect();
        let mut rows = Vec::new();
        AugmentSampler::new(STRONG, h, w, p.seed).sample_into(m, &mut rows);
        for fill in [FillMode::Nearest, FillMode::Constant] {
            for norm in [PixelNorm::UNIT, PixelNorm::standardize(0.2860, 0.3530)] {
                let want = cpu::gather_images_affine(
                    &bytes,
                    chw,
                    &indices,
                    &rows,
                    fill == FillMode::Constant,
                    norm.shift,
                    norm.scale,
                );
                // The sampled image is continuous in the source point (sx, sy), with slope at
                // most 255 per pixel along each axis (bilinear between bytes, zeros or edge
                // copies outside), so a floor() that lands on the other side of an integer
                // costs no more than the coordinate error itself. Each coordinate is two
                // products and two sums (fused or not on the GPU): |Δs| ≤ 2·γ₃·S, S the sum of
                // the magnitudes of its terms. The four weighted taps (weights summing to 1,
                // values ≤ 255) round within γ₈·255 on each side. Divided by 255 and scaled:
                // |scale|·(Δsx + Δsy + 2·γ₈), plus the 8 ulps of the plain gather's
                // normalisation.
                let bound: Vec<f64> = (0..want.len())
                    .map(|i| {
                        let (mi, q) = (i / (c * h * w), i % (c * h * w));
                        let (y, x) = (((q % (h * w)) / w) as f64, (q % w) as f64);
                        let t: Vec<f64> = to_f64(&rows[mi * TRANSFORM_LEN..][..6]);
                        let sx = t[0].abs() * x + t[1].abs() * y + t[2].abs();
                        let sy = t[3].abs() * x + t[4].abs() * y + t[5].abs();
                        let coords = 2.0 * gamma(3) * (sx + sy);
                        norm.scale.abs() as f64 * (coords + 2.0 * gamma(8))
                            + 8.0 * U32 * (want[i].abs() as f64 + 1.0)
                    })
                    .collect();
                let got = affine_on_gpu_as(&bytes, n, chw, &indices, &rows, norm, fill, p.dtype);
                // In f16: the same f32 arithmetic, then one rounding on the store.
                assert_within(
                    &format!("gather_images_affine {p} fill {fill} shift {}", norm.shift),
                    &got,
                    &want,
                    &stored_bound(bound, &want, p.dtype),
                );
            }
        }
    }
}

#[test]
fn the_identity_transform_reproduces_the_plain_gather_bit_for_bit() {
    for p in dtype_matrix(&DTYPES, AFFINE_SHAPES) {
        let (n, chw, m) = p.shape;
        let [c, h, w] = chw;
        let mut r = rng(200 + p.seed);
        let bytes = random_images(&mut r, n, c * h * w);
        let indices: Vec<u32> = (0..m).map(|_| r.random_range(0..n as u32)).collect();
        let rows = Transform::IDENTITY.row(h, w).repeat(m);
        let norm = PixelNorm::standardize(0.2860, 0.3530);
        let images = gather::upload_images(gpu(), &bytes, n, c * h * w).unwrap();
        let idx = gpu().upload_u32(&indices, &[m]).unwrap();
        // In f16 too: equal f32 values round to equal f16 ones.
        let out = zeros_as(&[m, c, h, w], p.dtype);
        let plain = run_and_read_floats(
            &gather::gather_images(gpu(), &images, &idx, &out, norm).unwrap(),
            &out,
        );
        for fill in [FillMode::Nearest, FillMode::Constant] {
            let got = affine_on_gpu_as(&bytes, n, chw, &indices, &rows, norm, fill, p.dtype);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&plain), "{p} fill {fill}");
        }
    }
}

/// A hand-computed case: `image` ([C, H, W] bytes) through `t` gives `want` (bytes), on the
/// GPU and in the CPU reference.
fn check_by_hand(
    what: &str,
    chw: [usize; 3],
    image: &[u8],
    t: Transform,
    fill: FillMode,
    want: &[u8],
) {
    let [_, h, w] = chw;
    let rows = t.row(h, w);
    let got = affine_on_gpu(image, 1, chw, &[0], &rows, PixelNorm::UNIT, fill);
    let reference = cpu::gather_images_affine(
        image,
        chw,
        &[0],
        &rows,
        fill == FillMode::Constant,
        0.0,
        1.0,
    );
    let want: Vec<f32> = want.iter().map(|&b| b as f32 / 255.0).collect();
    // Transforms by whole pixels and right angles land on pixel centres up to the f32
    // rounding of the row (cos 90° is 6e-17, not 0): a weight off 0 or 1 by < 1e-6, i.e.
    // < 3e-4 of a grey level. 1e-5 (0.0026 of a grey level) is far below one level (0.0039).
    assert_close(&format!("{what} (GPU)"), &got, &want, 1e-5, 0.0);
    assert_close(
        &format!("{what} (CPU reference)"),
        &reference,
        &want,
        1e-5,
        0.0,
    );
}

#[test]
fn shift_flip_and_rotation_of_small_images_give_the_hand_computed_result() {
    #[rustfmt::skip]
    let image: [u8; 12] = [
        10, 20, 30, 40,
        50, 60, 70, 80,
        90, 100, 110, 120,
    ];
    // One row down, two columns right in the source: output (y, x) reads (y + 1, x − 2).
    let shift = Transform {
        tx: 1.0,
        ty: -2.0,
        ..Transform::IDENTITY
    };
    #[rustfmt::skip]
    check_by_hand("shift, constant", [1, 3, 4], &image, shift, FillMode::Constant, &[
        0, 0, 50, 60,
        0, 0, 90, 100,
        0, 0, 0, 0,
    ]);
    #[rustfmt::skip]
    check_by_hand("shift, nearest", [1, 3, 4], &image, shift, FillMode::Nearest, &[
        50, 50, 50, 60,
        90, 90, 90, 100,
        90, 90, 90, 100,
    ]);
    let flip = Transform {
        flip: true,
        ..Transform::IDENTITY
    };
    #[rustfmt::skip]
    check_by_hand("flip", [1, 3, 4], &image, flip, FillMode::Constant, &[
        40, 30, 20, 10,
        80, 70, 60, 50,
        120, 110, 100, 90,
    ]);
    // +90° with Keras's matrix: output (r, c) reads (2 − c, r) of a 3×3 image, i.e. the
    // picture turns a quarter clockwise on screen. Three channels, each its own values.
    #[rustfmt::skip]
    let square: Vec<u8> = [
        10, 20, 30,
        40, 50, 60,
        70, 80, 90,
    ].iter().cycle().take(27).enumerate().map(|(i, &v)| v + (i / 9) as u8).collect();
    #[rustfmt::skip]
    let turned: Vec<u8> = [
        70, 40, 10,
        80, 50, 20,
        90, 60, 30,
    ].iter().cycle().take(27).enumerate().map(|(i, &v)| v + (i / 9) as u8).collect();
    let quarter = Transform {
        theta: 90.0,
        ..Transform::IDENTITY
    };
    check_by_hand(
        "rotation 90°",
        [3, 3, 3],
        &square,
        quarter,
        FillMode::Nearest,
        &turned,
    );
}

#[test]
fn gather_images_affine_rejects_a_transform_buffer_of_the_wrong_shape() {
    let images = gather::upload_images(gpu(), &[0; 2 * 784], 2, 784).unwrap();
    let idx = gpu().upload_u32(&[0, 1], &[2]).unwrap();
    let err = gather::gather_images_affine(
        gpu(),
        &images,
        &idx,
        &zeros(&[2, 6]),
        &zeros(&[2, 1, 28, 28]),
        PixelNorm::UNIT,
        FillMode::Nearest,
    )
    .unwrap_err();
    assert!(err.to_string().contains("transforms must be"), "{err}");
}

/// `m` random affine rows: scales near 1, small shears, shifts of a few pixels.
fn random_affine_rows(r: &mut rand::rngs::StdRng, m: usize) -> Vec<f32> {
    (0..m)
        .flat_map(|_| {
            let mut t = [0f32; TRANSFORM_LEN];
            t[0] = r.random_range(0.8..1.2);
            t[1] = r.random_range(-0.2..0.2);
            t[2] = r.random_range(-2.0..2.0);
            t[3] = r.random_range(-0.2..0.2);
            t[4] = r.random_range(0.8..1.2);
            t[5] = r.random_range(-2.0..2.0);
            t
        })
        .collect()
}

/// The bits of the plain and of the affine gather of `images` at `idx` into a batch of
/// `shape`, to compare two ways of holding the same images exactly.
fn plain_and_affine_bits(
    images: &gather::PackedImages,
    idx: &siamese_gpu::Tensor,
    transforms: &siamese_gpu::Tensor,
    shape: [usize; 4],
    norm: PixelNorm,
    fill: FillMode,
) -> (Vec<u32>, Vec<u32>) {
    let out = zeros_as(&shape, DType::F32);
    let plain = run_and_read_floats(
        &gather::gather_images(gpu(), images, idx, &out, norm).unwrap(),
        &out,
    );
    let affine = run_and_read_floats(
        &gather::gather_images_affine(gpu(), images, idx, transforms, &out, norm, fill).unwrap(),
        &out,
    );
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    (bits(&plain), bits(&affine))
}

/// A dataset split over shards (the binding limit lowered to a few images) gathers, plain
/// and through transforms, exactly as the same images in one buffer do; the indices reach
/// every shard, the last one partly filled.
#[test]
fn a_dataset_split_over_shards_gathers_as_one_buffer_does() {
    let (n, chw, m) = (10, [3, 5, 7], 40);
    let [c, h, w] = chw;
    let pixels = c * h * w;
    let mut r = rng(77);
    let bytes = random_images(&mut r, n, pixels);
    let mut indices: Vec<u32> = (0..m).map(|_| r.random_range(0..n as u32)).collect();
    indices[..n].copy_from_slice(&(0..n as u32).collect::<Vec<_>>());
    let idx = gpu().upload_u32(&indices, &[m]).unwrap();
    let rows = random_affine_rows(&mut r, m);
    let transforms = upload(&rows, &[m, TRANSFORM_LEN]);
    let norm = PixelNorm::standardize(0.2860, 0.3530);
    let image_bytes = 4 * pixels.div_ceil(4) as u64;
    let gathered = |images: &gather::PackedImages| {
        plain_and_affine_bits(
            images,
            &idx,
            &transforms,
            [m, c, h, w],
            norm,
            FillMode::Constant,
        )
    };
    let whole = gather::upload_images(gpu(), &bytes, n, pixels).unwrap();
    assert_eq!(whole.shards(), 1);
    let reference = gathered(&whole);
    let want = cpu::gather_images(&bytes, pixels, &indices, norm.shift, norm.scale);
    let got: Vec<f32> = reference.0.iter().map(|&b| f32::from_bits(b)).collect();
    // As in gather_images_matches_cpu: 8 ulps of the result plus 8 ulps of 1.
    let bound: Vec<f64> = want
        .iter()
        .map(|&w| 8.0 * U32 * (w.abs() as f64 + 1.0))
        .collect();
    assert_within("gather_images, one buffer", &got, &want, &bound);
    // 3 images a shard (and a few bytes spare): shards of 3, 3, 3, 1; then 4, 4, 2; then 5, 5.
    for (per_shard, shards) in [(3, 4), (4, 3), (5, 2)] {
        let split =
            gather::upload_images_in_shards(gpu(), &bytes, n, pixels, per_shard * image_bytes + 5)
                .unwrap();
        assert_eq!(split.shards(), shards);
        assert!(
            gathered(&split) == reference,
            "{shards} shards of {per_shard}"
        );
    }
}

#[test]
fn a_dataset_needing_more_shards_than_a_gather_reads_is_refused_saying_what_to_do() {
    let bytes = vec![0u8; 10 * 8];
    let err = match gather::upload_images_in_shards(gpu(), &bytes, 10, 8, 16) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("5 shards of 2 images accepted"),
    };
    assert!(
        err.contains("at most 4") && err.contains("--image-size"),
        "{err}"
    );
    let err = match gather::upload_images_in_shards(gpu(), &bytes, 10, 8, 7) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("an image over a binding accepted"),
    };
    assert!(err.contains("one image of 8 pixels takes 8 bytes"), "{err}");
}

/// A set in host memory, staged into slots, gathers (plain and through transforms) exactly
/// as the resident set does at the same images; gathering from it unstaged is refused.
#[test]
fn a_host_set_staged_into_slots_gathers_as_the_resident_set_does() {
    let (n, chw, m) = (12, [1, 6, 5], 20);
    let [c, h, w] = chw;
    let pixels = c * h * w;
    let mut r = rng(91);
    let bytes = random_images(&mut r, n, pixels);
    let indices: Vec<u32> = (0..m).map(|_| r.random_range(0..n as u32)).collect();
    let rows = random_affine_rows(&mut r, m);
    let transforms = upload(&rows, &[m, TRANSFORM_LEN]);
    let norm = PixelNorm::standardize(0.2860, 0.3530);
    let run = |images: &gather::PackedImages, idx: &[u32]| {
        let idx = gpu().upload_u32(idx, &[m]).unwrap();
        plain_and_affine_bits(
            images,
            &idx,
            &transforms,
            [m, c, h, w],
            norm,
            FillMode::Nearest,
        )
    };
    let resident = gather::upload_images(gpu(), &bytes, n, pixels).unwrap();
    let host = gather::PackedImages::on_host(&bytes, n, pixels).unwrap();
    assert!(resident.is_resident() && !host.is_resident());
    assert!(resident.stager(gpu(), m).unwrap().is_none());
    let mut stager = host.stager(gpu(), m).unwrap().expect("a host set stages");
    stager.stage(gpu(), &indices).unwrap();
    assert!(run(stager.images(), &stager.slots()) == run(&resident, &indices));

    let idx = gpu().upload_u32(&indices, &[m]).unwrap();
    let out = zeros_as(&[m, c, h, w], DType::F32);
    let err = match gather::gather_images(gpu(), &host, &idx, &out, norm) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a host set gathered unstaged"),
    };
    assert!(err.contains("host memory"), "{err}");
}
