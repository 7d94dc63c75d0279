//! Retrieval and one-shot figures of Fashion-MNIST's 10,000 test images, each step timed:
//! embed them on the GPU with a trained model (a run directory or its model.safetensors;
//! /tmp/run_default when present) or a freshly initialised reference model (`fresh`), then
//! P@1, recall@k, R-precision and MAP@R leave-one-out, the raw-pixel baseline beside them,
//! and 5- and 10-way one-shot accuracy.
//!
//! `cargo run --release --example retrieval [-- RUN_DIR|fresh] [--pixel-queries N|all]
//!  [--gallery]`
//!
//! `--gallery` also searches the test queries among the training images' embeddings (the
//! protocol of the raw-pixel figure in docs/ARCHITECTURE.md, "Conventions"; the pixels of 55,000 images as f32 exceed
//! lavapipe's 128 MiB binding, so the pixel baseline stays leave-one-out on the test set).

use std::path::{Path, PathBuf};
use std::time::Instant;

use siamese_gpu::checkpoint;
use siamese_gpu::data::dataset;
use siamese_gpu::eval::embed::Embedder;
use siamese_gpu::eval::oneshot::{self, DEFAULT_EPISODES, DEFAULT_WAYS};
use siamese_gpu::eval::retrieval::{
    self, DEFAULT_PIXEL_QUERIES, References, RetrievalOptions, evaluate_retrieval,
};
use siamese_gpu::model::{ModelTensors, ModelValues, SiameseModel};
use siamese_gpu::ops::gather;
use siamese_gpu::train::TrainConfig;
use siamese_gpu::vocab::PixelNorm;
use siamese_gpu::{Gpu, Result};

/// Wall-clock and CPU time (all threads, lavapipe's included) since `start`: on a shared
/// machine the wall clock depends on the other load, CPU seconds much less.
struct Clock {
    wall: Instant,
    cpu: f64,
}

impl Clock {
    fn start() -> Clock {
        Clock {
            wall: Instant::now(),
            cpu: cpu_seconds(),
        }
    }

    fn report(&self) -> String {
        format!(
            "{:.2} s wall, {:.2} CPU-s",
            self.wall.elapsed().as_secs_f64(),
            cpu_seconds() - self.cpu
        )
    }
}

/// User + system CPU time of this process (Linux /proc; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<f64>() / 100.0 // clock ticks (USER_HZ = 100 on Linux)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().any(|a| a == name);
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let pixel_queries = match value("--pixel-queries").as_deref() {
        None => Some(DEFAULT_PIXEL_QUERIES),
        Some("all") => None,
        Some(n) => Some(n.parse().expect("--pixel-queries takes a number or `all`")),
    };
    let source = args
        .first()
        .filter(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "/tmp/run_default".into());

    let gpu = Gpu::new()?;
    println!("adapter: {}", gpu.adapter());
    let data = dataset::load(None, None)?;
    let (model, values, norm, what) = if source != "fresh" && Path::new(&source).exists() {
        let path = PathBuf::from(&source);
        let path = if path.is_dir() {
            path.join("model.safetensors")
        } else {
            path
        };
        let (model, values, meta) = checkpoint::load_model(&path)?;
        let get = |k: &str, d: f32| meta.get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
        let norm = PixelNorm {
            shift: get("pixel_shift", 0.0),
            scale: get("pixel_scale", 1.0),
        };
        (
            model,
            values,
            norm,
            format!("checkpoint {}", path.display()),
        )
    } else {
        let cfg = TrainConfig::default();
        let model =
            SiameseModel::new(cfg.model_config([1, data.test.height, data.test.width], 10))?;
        let values = ModelValues::init(&model, cfg.seed);
        (
            model,
            values,
            PixelNorm::UNIT,
            "fresh reference model (seed 0, untrained)".into(),
        )
    };
    let metric = retrieval::retrieval_metric(model.config.distance)
        .expect("training distances are euclidean or cosine");
    println!("model: {what}; metric {metric:?}");

    let test = &data.test;
    let t = Clock::start();
    let images = gather::upload_images(&gpu, &test.images, test.count, test.pixels())?;
    let values = ModelTensors::upload(&gpu, &model, &values)?;
    let embedder = Embedder::new(&gpu, &model, &values, norm, 500)?;
    let embeddings = embedder.embed(&images, test.count)?;
    let dim = embedder.dim();
    println!(
        "embedded {} test images (D = {dim}) in {}",
        test.count,
        t.report()
    );

    let t = Clock::start();
    let options = RetrievalOptions::new(metric);
    let m = evaluate_retrieval(
        &gpu,
        &embeddings,
        &test.labels,
        dim,
        References::LeaveOneOut,
        &options,
    )?;
    println!("embeddings: {m}\n  in {}", t.report());

    let t = Clock::start();
    let pixel_options = RetrievalOptions {
        max_queries: pixel_queries,
        ..RetrievalOptions::new(metric)
    };
    let p = retrieval::pixel_baseline(&gpu, test, None, norm, &pixel_options)?;
    println!("raw pixels: {p}\n  in {}", t.report());

    for n in DEFAULT_WAYS {
        let t = Clock::start();
        match oneshot::one_shot(
            &embeddings,
            &test.labels,
            dim,
            metric,
            n,
            DEFAULT_EPISODES,
            oneshot::DEFAULT_SEED,
        ) {
            Ok(o) => println!("{o}  in {}", t.report()),
            Err(e) => println!("{n}-way one-shot: not available: {e}"),
        }
    }

    if flag("--gallery") {
        let train = &data.train;
        let t = Clock::start();
        let train_images = gather::upload_images(&gpu, &train.images, train.count, train.pixels())?;
        let gallery = embedder.embed(&train_images, train.count)?;
        let embed_time = t.report();
        let t = Clock::start();
        let g = evaluate_retrieval(
            &gpu,
            &embeddings,
            &test.labels,
            dim,
            References::Gallery {
                embeddings: &gallery,
                labels: &train.labels,
            },
            &options,
        )?;
        println!(
            "test among training embeddings: {g}\n  embedding {} training images {embed_time}, \
             retrieval {}",
            train.count,
            t.report()
        );
    }
    Ok(())
}
