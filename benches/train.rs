//! End-to-end benchmark: training pairs/s of the reference network with the contrastive
//! loss at batches of 32, 128 and 512 pairs (one step = one submission: gather, forward of
//! both branches, loss, backward, Adam), embedding images/s for evaluation, and the residual
//! towers (`resnet-small` at 28×28, `resnet18` at 64×64 RGB) at batches of 64 and 128.
//!
//! Each batch is timed side by side in one run, with ratios printed: the storage-buffer
//! kernels throughout (the engine before the texel kernels), the default per-adapter choice
//! (`auto`: on lavapipe, the texel kernels throughout), and `auto` under mixed precision
//! (`--precision mixed`, where the adapter has f16 shaders); then `auto` with the images in
//! host memory, each batch staged and uploaded (a dataset over `--gpu-data-budget`).
//!
//! `cargo bench --bench train`; `SIAMESE_BENCH_BATCHES=128` picks the batches. Uses
//! Fashion-MNIST when installed, random images of the same size otherwise (the speed does
//! not depend on the pixels). Each figure is a line for people and a JSON object for tools.

use std::time::Instant;

use siamese_gpu::data::dataset;
use siamese_gpu::eval::embed::Embedder;
use siamese_gpu::model::{ModelTensors, ModelValues, SiameseModel};
use siamese_gpu::ops::gather::{self, PackedImages};
use siamese_gpu::train::{TrainConfig, TrainStep};
use siamese_gpu::vocab::Precision;
use siamese_gpu::{DType, Gpu, KernelPath};

const WARMUP_STEPS: usize = 3;
const TIMED_STEPS: usize = 12;

fn main() {
    let mut gpu = Gpu::new().unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1);
    });
    let batches: Vec<usize> = std::env::var("SIAMESE_BENCH_BATCHES")
        .unwrap_or_else(|_| "32,128,512".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("SIAMESE_BENCH_BATCHES: comma-separated batch sizes")
        })
        .collect();
    let a = gpu.adapter().clone();
    let driver = format!("{} {}", a.driver, a.driver_info);
    println!("adapter: {a}");

    // 60,000 labelled 28×28 images, real when available.
    let (images, labels) = match dataset::load(None, None) {
        Ok(d) => (d.train.images, d.train.labels),
        Err(_) => {
            eprintln!("Fashion-MNIST not found: timing on random images");
            let n = 55_000;
            (
                (0..n * 784).map(|i| (i * 7919 % 251) as u8).collect(),
                (0..n).map(|i| (i % 10) as u8).collect(),
            )
        }
    };
    let count = labels.len();
    let packed = gather::upload_images(&gpu, &images, count, 784).expect("upload the images");
    let host = PackedImages::on_host(&images, count, 784).expect("the images in host memory");

    for &batch in &batches {
        let cfg = TrainConfig {
            batch,
            log_every: TIMED_STEPS + WARMUP_STEPS,
            ..TrainConfig::default()
        };
        let model =
            SiameseModel::new(cfg.model_config([1, 28, 28], 10)).expect("the reference model");
        let mut rates = Vec::new();
        let mut runs = vec![
            (KernelPath::Storage, Precision::F32),
            (KernelPath::Auto, Precision::F32),
        ];
        if gpu.has_f16() {
            runs.push((KernelPath::Auto, Precision::Mixed));
        }
        for (path, precision) in runs {
            gpu.set_kernel_path(path);
            let cfg = TrainConfig {
                precision,
                ..cfg.clone()
            };
            let pairs_per_sec = train_rate(&gpu, &model, &cfg, &packed, &labels);
            println!(
                "train   batch {batch:>4} pairs  {:<8} {precision:<6} {:>8.1} ms/step  {pairs_per_sec:>8.1} pairs/s",
                path.name(),
                1e3 * batch as f64 / pairs_per_sec
            );
            println!(
                "{{\"kind\":\"train\",\"batch\":{batch},\"kernels\":\"{}\",\"precision\":\"{precision}\",\"pairs_per_sec\":{pairs_per_sec:.2},\"ms_per_step\":{:.3},\"adapter\":\"{}\",\"driver\":\"{driver}\"}}",
                path.name(),
                1e3 * batch as f64 / pairs_per_sec,
                a.name
            );
            rates.push(pairs_per_sec);
        }
        println!(
            "train   batch {batch:>4} pairs  auto / storage = {:.2}x",
            rates[1] / rates[0]
        );
        if let Some(mixed) = rates.get(2) {
            println!(
                "train   batch {batch:>4} pairs  mixed / f32 (auto) = {:.2}x",
                mixed / rates[1]
            );
        }
        // The same steps with the images in host memory, each batch staged and uploaded.
        gpu.set_kernel_path(KernelPath::Auto);
        let streamed = train_rate(&gpu, &model, &cfg, &host, &labels);
        println!(
            "train   batch {batch:>4} pairs  streamed from host memory {streamed:>8.1} pairs/s, \
             streamed / resident (auto f32) = {:.2}x",
            streamed / rates[1]
        );
        println!(
            "{{\"kind\":\"train\",\"batch\":{batch},\"kernels\":\"auto\",\"precision\":\"f32\",\"images\":\"host\",\"pairs_per_sec\":{streamed:.2},\"ratio_to_resident\":{:.3},\"adapter\":\"{}\",\"driver\":\"{driver}\"}}",
            streamed / rates[1],
            a.name
        );
        let values =
            ModelTensors::upload(&gpu, &model, &ModelValues::init(&model, 0)).expect("parameters");

        if batch == batches[0] {
            // Embedding for evaluation: 2,000 images in chunks of 500 (the trainer's setting).
            let embedder = Embedder::new(&gpu, &model, &values, cfg.pixel_norm, cfg.eval_chunk)
                .expect("embedder");
            embedder.embed(&packed, cfg.eval_chunk).expect("warm-up");
            let start = Instant::now();
            embedder.embed(&packed, 2000).expect("embed");
            let images_per_sec = 2000.0 / start.elapsed().as_secs_f64();
            println!(
                "embed   chunk {:>4} images {images_per_sec:>8.1} images/s",
                cfg.eval_chunk
            );
            println!(
                "{{\"kind\":\"embed\",\"chunk\":{},\"images_per_sec\":{images_per_sec:.2},\"adapter\":\"{}\",\"driver\":\"{driver}\"}}",
                cfg.eval_chunk, a.name
            );
        }
    }
    gpu.set_kernel_path(KernelPath::Auto);
    residual_towers(&gpu, (&packed, &labels), &driver);
}

/// The residual towers with BatchNorm: `resnet-small` on the 28×28 images and `resnet18` on
/// 64×64 RGB (random pixels: the speed does not depend on them), pairs/s of the default
/// kernels in f32 at the batches of `SIAMESE_BENCH_RESNET_BATCHES` (default 64,128; empty
/// for none); the same shapes as `scripts/bench_towers.py` times PyTorch on, for the ratio.
fn residual_towers(gpu: &Gpu, grey: (&PackedImages, &[u8]), driver: &str) {
    let batches: Vec<usize> = std::env::var("SIAMESE_BENCH_RESNET_BATCHES")
        .unwrap_or_else(|_| "64,128".into())
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .expect("SIAMESE_BENCH_RESNET_BATCHES: batch sizes")
        })
        .collect();
    let (count, side) = (2048, 64);
    let rgb: Vec<u8> = (0..count * 3 * side * side)
        .map(|i| (i * 7919 % 251) as u8)
        .collect();
    let rgb = gather::upload_images(gpu, &rgb, count, 3 * side * side).expect("upload");
    let rgb_labels: Vec<u8> = (0..count).map(|i| (i % 10) as u8).collect();
    let towers = [
        ("resnet-small", [1, 28, 28], grey),
        ("resnet18", [3, side, side], (&rgb, &rgb_labels[..])),
    ];
    for (tower, input, (packed, labels)) in towers {
        for &batch in &batches {
            let cfg = TrainConfig {
                batch,
                tower: tower.parse().expect("a preset"),
                log_every: TIMED_STEPS + WARMUP_STEPS,
                ..TrainConfig::default()
            };
            let model = SiameseModel::new(cfg.model_config(input, 10)).expect("the model");
            let pairs_per_sec = train_rate(gpu, &model, &cfg, packed, labels);
            let [c, h, w] = input;
            println!(
                "train   {tower:<12} {c}×{h}×{w}  batch {batch:>4} pairs {pairs_per_sec:>8.1} pairs/s"
            );
            println!(
                "{{\"kind\":\"train\",\"tower\":\"{tower}\",\"batch\":{batch},\"pairs_per_sec\":{pairs_per_sec:.2},\"adapter\":\"{}\",\"driver\":\"{driver}\"}}",
                gpu.adapter().name
            );
        }
    }
}

/// Training pairs/s of `model` over TIMED_STEPS steps after WARMUP_STEPS, with the kernel
/// path the device is set to.
fn train_rate(
    gpu: &Gpu,
    model: &SiameseModel,
    cfg: &TrainConfig,
    packed: &PackedImages,
    labels: &[u8],
) -> f64 {
    let values =
        ModelTensors::upload(gpu, model, &ModelValues::init(model, 0)).expect("parameters");
    let grads = gpu
        .zeros(&[model.layout.len], DType::F32)
        .expect("gradients");
    let steps = WARMUP_STEPS + TIMED_STEPS;
    let mut step =
        TrainStep::new(gpu, model, cfg, packed, labels, &values, &grads, steps).expect("build");
    for _ in 0..WARMUP_STEPS {
        step.run(None).expect("warm-up step");
    }
    gpu.wait().expect("warm-up");
    let start = Instant::now();
    for _ in 0..TIMED_STEPS {
        step.run(None).expect("step");
    }
    let losses = step.take_losses().expect("losses (waits for the steps)");
    let seconds = start.elapsed().as_secs_f64();
    assert!(
        losses.iter().all(|l| l.is_finite()),
        "the benchmark run diverged"
    );
    (TIMED_STEPS * cfg.batch) as f64 / seconds
}
