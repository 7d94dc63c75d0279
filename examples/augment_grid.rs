//! A look at augmentation: a PNG grid of training images, each row one image — first as
//! stored, then as the augmenting gather kernel, the colour jitter and the blur draw it in
//! successive steps.
//!
//! `cargo run --release --example augment_grid -- OUT.png [KEY=VALUE …]`
//!
//! Keys are the run settings (`rotation_range=20`, `fill_mode=constant`, `data=DIR`,
//! `color=rgb`, `seed=3`, …); without augmentation keys, the `--augment` preset.

use siamese_gpu::Gpu;
use siamese_gpu::data::augment::{Augment, AugmentSampler};
use siamese_gpu::data::dataset;
use siamese_gpu::ops::gather;
use siamese_gpu::settings::RunSettings;
use siamese_gpu::vocab::{PixelNorm, TRANSFORM_LEN};

const ROWS: usize = 8;
const DRAWS: usize = 9;
const ZOOM: usize = 4;
const GAP: usize = 2;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let out = args
        .next()
        .ok_or("usage: augment_grid OUT.png [KEY=VALUE …]")?;
    let mut settings = RunSettings::default();
    for pair in args {
        let (key, value) = pair
            .split_once('=')
            .ok_or(format!("`{pair}` is not KEY=VALUE"))?;
        settings.set(key, value).map_err(|e| e.to_string())?;
    }
    let mut cfg = settings.to_train_config().map_err(|e| e.to_string())?;
    if cfg.augment.is_off() {
        cfg.augment = Augment::PRESET;
    }
    println!("{:?}", cfg.augment);

    let sets = dataset::load_with(cfg.data.as_deref(), cfg.val_images, &cfg.dataset)
        .map_err(|e| e.to_string())?;
    let train = &sets.train;
    let (c, h, w) = (train.channels, train.height, train.width);
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    let fail = |e: siamese_gpu::Error| e.to_string();
    let images =
        gather::upload_images(&gpu, &train.images, train.count, train.pixels()).map_err(fail)?;

    // Row r shows image r·97 (spread over the classes): column 0 as stored (the identity),
    // then DRAWS independent transforms, as DRAWS steps would draw them.
    let m = ROWS * (DRAWS + 1);
    let indices: Vec<u32> = (0..m).map(|i| ((i / (DRAWS + 1)) * 97) as u32).collect();
    let mut sampler = AugmentSampler::new(cfg.augment, h, w, cfg.seed);
    let mut rows = Vec::new();
    sampler.sample_into(m, &mut rows);
    for r in 0..ROWS {
        let identity = siamese_gpu::data::augment::Transform::IDENTITY.row(h, w);
        rows[r * (DRAWS + 1) * TRANSFORM_LEN..][..TRANSFORM_LEN].copy_from_slice(&identity);
    }
    let idx = gpu.upload_u32(&indices, &[m]).map_err(fail)?;
    let transforms = gpu.upload_f32(&rows, &[m, TRANSFORM_LEN]).map_err(fail)?;
    let batch = gpu
        .zeros(&[m, c, h, w], siamese_gpu::DType::F32)
        .map_err(fail)?;
    let kernel = gather::gather_images_affine(
        &gpu,
        &images,
        &idx,
        &transforms,
        &batch,
        PixelNorm::UNIT,
        cfg.augment.fill_mode,
    )
    .map_err(fail)?;
    // Colour jitter and blur after the geometric transforms, as training applies them (the
    // stored column's row is the identity: every factor 1, no hue shift, no grey, no blur).
    let mut colors = Vec::new();
    sampler.sample_colors_into(m, &mut colors);
    for r in 0..ROWS {
        colors[r * (DRAWS + 1) * TRANSFORM_LEN..][..TRANSFORM_LEN]
            .copy_from_slice(&[1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    }
    let colors = gpu.upload_f32(&colors, &[m, TRANSFORM_LEN]).map_err(fail)?;
    let mut kernels = vec![
        kernel,
        siamese_gpu::ops::photo::color_jitter(&gpu, &batch, &colors, PixelNorm::UNIT)
            .map_err(fail)?,
    ];
    if let Some(blur) = cfg.augment.blur {
        kernels.push(
            siamese_gpu::ops::photo::gaussian_blur(&gpu, &batch, &colors, blur.taps)
                .map_err(fail)?,
        );
    }
    gpu.run(&kernels.iter().collect::<Vec<_>>());
    let pixels = gpu.read_f32(&batch).map_err(fail)?;

    // Tiles of ZOOM×ZOOM screen pixels per image pixel, GAP grey pixels between tiles.
    let (tw, th) = (w * ZOOM + GAP, h * ZOOM + GAP);
    let (width, height) = ((DRAWS + 1) * tw + GAP, ROWS * th + GAP);
    let mut png = image::RgbImage::from_pixel(width as u32, height as u32, image::Rgb([128; 3]));
    for (k, img) in pixels.chunks(c * h * w).enumerate() {
        let (row, col) = (k / (DRAWS + 1), k % (DRAWS + 1));
        for y in 0..h * ZOOM {
            for x in 0..w * ZOOM {
                let q = (y / ZOOM) * w + x / ZOOM;
                // Grey repeats its one plane; RGB reads its three planes.
                let rgb = [0, 1, 2].map(|ch| (img[(ch % c) * h * w + q] * 255.0).round() as u8);
                let (px, py) = (GAP + col * tw + x, GAP + row * th + y);
                png.put_pixel(px as u32, py as u32, image::Rgb(rgb));
            }
        }
    }
    png.save(&out)
        .map_err(|e| format!("cannot write {out}: {e}"))?;
    println!("wrote {out}: {ROWS} images × (stored + {DRAWS} augmented)");
    Ok(())
}
