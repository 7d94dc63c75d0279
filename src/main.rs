//! `siamese`: the command-line interface.
//!
//! Run settings come in three layers: the defaults (the reference recipe), then a TOML file
//! (`--config`), then the flags actually typed — clap reports where each value came from, so a
//! flag overrides the file only when given. Run directories are written only once training
//! has started (set-up, data and configuration all good), and every file through a temporary
//! name and a rename, so a failed or interrupted command leaves what was on disk as it was.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use siamese_gpu::checkpoint::{self, write_atomic};
use siamese_gpu::config::{RunSettings, parse_image_size};
use siamese_gpu::data::augment::Augment;
use siamese_gpu::data::dataset::{self, DataOptions, Dataset, ImageSet};
use siamese_gpu::eval::embed::Embedder;
use siamese_gpu::eval::embedding_metrics::{EmbeddingMetrics, embedding_metrics};
use siamese_gpu::eval::protocol::{PairProtocol, Validation};
use siamese_gpu::eval::verification::Verification;
use siamese_gpu::gpu::list_adapters;
use siamese_gpu::model::SiameseModel;
use siamese_gpu::ops::gather;
use siamese_gpu::report::{embedding_metrics_json, verification_json, write_report};
use siamese_gpu::sweep::{self, Axis, Metrics, RankBy, SweepRun};
use siamese_gpu::train::{
    self, Outcome, Progress, RunControl, TrainConfig, TrainReport, TrainingState,
};
use siamese_gpu::vocab::{Color, LossKind, OnBadImage, PixelNorm};
use siamese_gpu::{Gpu, TexelOp};

#[derive(Parser)]
#[command(
    name = "siamese",
    version,
    about = "Train Siamese (metric-learning) networks on the GPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a Siamese network and report its test verification accuracy.
    Train(Box<TrainArgs>),
    /// Train one run per point of a grid or random search and rank them by a validation metric.
    Sweep(Box<SweepArgs>),
    /// List the GPU adapters wgpu can see, best first, and open the one that would be used
    /// (SIAMESE_ADAPTER=<name substring> picks another).
    Devices,
    /// Embed a dataset split with a trained model; write a float32 [N, D] array in dataset
    /// order (.npy, or .safetensors with the labels).
    Embed(EmbedArgs),
    /// Evaluate a trained model: every metric of the evaluation module on the run's dataset.
    Eval(EvalArgs),
}

#[derive(Args)]
struct EvalArgs {
    /// The run directory of `train --out` (or its model.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Dataset directory [default: the run's].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Validation images held out of train [default: the run's, else min(5000, 10%)].
    #[arg(long)]
    val_images: Option<usize>,
    /// Balanced validation pairs that choose the threshold [default: the run's].
    #[arg(long)]
    val_pairs: Option<usize>,
    /// Balanced test pairs scored at that threshold [default: the run's].
    #[arg(long)]
    test_pairs: Option<usize>,
    /// Make the last line of stdout one JSON object with the results.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct EmbedArgs {
    /// The run directory of `train --out` (or its model.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Dataset directory [default: the run's].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Which images: train (without the validation hold-out), val, or test.
    #[arg(long, default_value = "test")]
    split: String,
    /// Validation images held out of train [default: the run's, else min(5000, 10%)].
    #[arg(long)]
    val_images: Option<usize>,
    /// Output file: .npy (the [N, D] array) or .safetensors (`embeddings` [N, D] and
    /// `labels` [N], class names in the metadata).
    #[arg(long)]
    out: PathBuf,
    /// npy or safetensors [default: from the extension of --out, else npy].
    #[arg(long)]
    format: Option<String>,
}

/// The settings flags of `train` and `sweep`; each overrides the same key of `--config`.
#[derive(Args)]
#[command(
    next_help_heading = "Run settings (each also a key of --config)",
    allow_negative_numbers = true
)]
struct SettingsArgs {
    /// A TOML file of settings (keys as these flags, with `_` for `-`); flags given override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Dataset directory: the four IDX files (.gz or raw, any image size) or an ImageFolder
    /// tree (train/<class>/<image>.png|jpg, test/<class>/…); default: $SIAMESE_DATA, then
    /// /usr/share/datasets/fashion-mnist.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Training budget, in pairs (triplets for --loss triplet; images seen with a --miner).
    #[arg(long, default_value_t = RunSettings::default().pairs)]
    pairs: usize,
    /// Pairs (or triplets) per step; with a --miner, images per step (P × K).
    #[arg(long, default_value_t = RunSettings::default().batch)]
    batch: usize,
    /// Learning rate.
    #[arg(long, default_value_t = RunSettings::default().lr)]
    lr: f64,
    /// Margin of the contrastive or triplet loss.
    #[arg(long, default_value_t = RunSettings::default().margin)]
    margin: f64,
    /// Loss: contrastive, triplet, or bce (the Keras head |a−b| → dense(1) → sigmoid).
    #[arg(long, default_value_t = RunSettings::default().loss)]
    loss: String,
    /// Distance between embeddings: euclidean or cosine.
    #[arg(long, default_value_t = RunSettings::default().distance)]
    distance: String,
    /// L2-normalise the embeddings before the distance.
    #[arg(long)]
    normalize_embeddings: bool,
    /// The tower, layer by layer.
    #[arg(long, default_value_t = RunSettings::default().tower)]
    tower: String,
    /// Width of the embedding: replaces the tower's last `dense N`.
    #[arg(long)]
    embedding_dim: Option<usize>,
    /// Optimizer: adam, adamw, sgd (momentum 0.9) or nesterov.
    #[arg(long, default_value_t = RunSettings::default().optimizer)]
    optimizer: String,
    /// Weight decay (L2 for adam and sgd, decoupled for adamw).
    #[arg(long, default_value_t = RunSettings::default().weight_decay)]
    weight_decay: f64,
    /// Learning-rate schedule: constant, step:EVERY:GAMMA, cosine[:WARMUP] (steps).
    #[arg(long, default_value_t = RunSettings::default().schedule)]
    schedule: String,
    /// Fraction of Same pairs in training batches.
    #[arg(long, default_value_t = RunSettings::default().positive_fraction)]
    positive_fraction: f64,
    /// Online triplet mining (--loss triplet) from each batch's distance matrix: none
    /// (random triplets), batch-all, batch-hard or semi-hard.
    #[arg(long, default_value_t = RunSettings::default().miner)]
    miner: String,
    /// P, the classes of a mined P×K batch (K = batch / P) [default: 10, or all if fewer].
    #[arg(long)]
    classes_per_batch: Option<usize>,
    /// Seed of initialisation and sampling.
    #[arg(long, default_value_t = RunSettings::default().seed)]
    seed: u64,
    /// Validation images held out of training [default: min(5000, 10%)].
    #[arg(long)]
    val_images: Option<usize>,
    /// Balanced validation pairs that choose the verification threshold.
    #[arg(long, default_value_t = RunSettings::default().val_pairs)]
    val_pairs: usize,
    /// Balanced test pairs scored at that threshold.
    #[arg(long, default_value_t = RunSettings::default().test_pairs)]
    test_pairs: usize,
    /// Validate (and save the run) every this many training pairs.
    #[arg(long, default_value_t = RunSettings::default().eval_every)]
    eval_every: usize,
    /// Input normalisation: unit (pixel/255) or standard:MEAN:STD ((pixel/255 − MEAN)/STD).
    #[arg(long, default_value_t = RunSettings::default().pixel_norm)]
    pixel_norm: String,
    /// Folder images are resized to HxW (or N×N) [default: the first training image's size].
    #[arg(long)]
    image_size: Option<String>,
    /// Folder images as grey (1 channel) or rgb (3).
    #[arg(long, default_value_t = RunSettings::default().color)]
    color: String,
    /// An unreadable folder image: skip (leave it out, with a warning) or stop.
    #[arg(long, default_value_t = RunSettings::default().on_bad_image)]
    on_bad_image: String,
    /// Classes kept out of training and validation, the only ones tested (class-disjoint
    /// split): names of folder classes, or IDX label numbers; comma-separated.
    #[arg(long, value_delimiter = ',')]
    held_out_classes: Vec<String>,
    /// Augmentation of training images (never validation or test), as Keras's
    /// ImageDataGenerator: rotation uniform in ±DEGREES.
    #[arg(long, value_name = "DEGREES", default_value_t = RunSettings::default().rotation_range)]
    rotation_range: f64,
    /// Horizontal shift uniform in ±FRACTION of the width.
    #[arg(long, value_name = "FRACTION", default_value_t = RunSettings::default().width_shift_range)]
    width_shift_range: f64,
    /// Vertical shift uniform in ±FRACTION of the height.
    #[arg(long, value_name = "FRACTION", default_value_t = RunSettings::default().height_shift_range)]
    height_shift_range: f64,
    /// Shear angle uniform in ±DEGREES.
    #[arg(long, value_name = "DEGREES", default_value_t = RunSettings::default().shear_range)]
    shear_range: f64,
    /// Zoom of rows and of columns, each uniform in [1 − Z, 1 + Z] (Z < 1).
    #[arg(long, value_name = "Z", default_value_t = RunSettings::default().zoom_range)]
    zoom_range: f64,
    /// Mirror training images left–right with probability 0.5.
    #[arg(long)]
    horizontal_flip: bool,
    /// What augmented images show beyond their edges: nearest (the edge pixel, Keras's
    /// default) or constant (black).
    #[arg(long, default_value_t = RunSettings::default().fill_mode)]
    fill_mode: String,
    /// Arithmetic of training: f32, or mixed (f16 activations and weight copies with f32
    /// master weights and a dynamic loss scale; needs an adapter with f16 shaders).
    #[arg(long, default_value_t = RunSettings::default().precision)]
    precision: String,
    /// Preset: --rotation-range 10 --width-shift-range 0.1 --height-shift-range 0.1
    /// --zoom-range 0.1 --fill-mode constant (flags given beside it override it).
    #[arg(long)]
    augment: bool,
}

impl SettingsArgs {
    /// Defaults, then the `--config` file, then the flags given on the command line
    /// (`matches` are this subcommand's).
    fn resolve(&self, matches: &ArgMatches) -> Result<RunSettings, String> {
        let mut s = match &self.config {
            Some(path) => RunSettings::from_file(path).map_err(|e| e.to_string())?,
            None => RunSettings::default(),
        };
        let given = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
        if self.augment {
            let preset = Augment::PRESET;
            s.rotation_range = preset.rotation_range;
            s.width_shift_range = preset.width_shift_range;
            s.height_shift_range = preset.height_shift_range;
            s.zoom_range = preset.zoom_range;
            s.fill_mode = preset.fill_mode.to_string();
        }
        macro_rules! overlay {
            ($($key:ident),*; optional: $($opt:ident),*) => {
                $(if given(stringify!($key)) { s.$key = self.$key.clone(); })*
                $(if given(stringify!($opt)) { s.$opt = self.$opt.clone().into(); })*
            };
        }
        overlay!(pairs, batch, lr, margin, loss, distance, normalize_embeddings, tower, optimizer,
            weight_decay, schedule, positive_fraction, miner, seed, val_pairs, test_pairs, eval_every,
            pixel_norm, color, on_bad_image, held_out_classes, rotation_range, width_shift_range,
            height_shift_range, shear_range, zoom_range, horizontal_flip, fill_mode, precision;
            optional: data, embedding_dim, val_images, image_size, classes_per_batch);
        s.to_train_config().map_err(|e| e.to_string())?;
        Ok(s)
    }
}

#[derive(Args)]
struct TrainArgs {
    /// Write the run (config.toml, metrics.jsonl, result.json, model.safetensors) into this
    /// directory.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Make the last line of stdout one JSON object with the results.
    #[arg(long)]
    json: bool,
    /// Time every kernel of the last training step (timestamp queries) and print the breakdown.
    #[arg(long)]
    profile: bool,
    /// Continue the run saved in RUN_DIR (by --out, at every validation and on Ctrl-C) with
    /// the same settings; the result equals an uninterrupted run's.
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    // Last: the settings' help heading applies to every flag after it.
    #[command(flatten)]
    settings: SettingsArgs,
}

#[derive(Args)]
struct SweepArgs {
    /// Values of one setting, KEY=V1,V2,… (repeat for more keys): a grid runs every
    /// combination; with --random, each run draws one of them.
    #[arg(long, value_name = "KEY=V1,V2")]
    grid: Vec<String>,
    /// A random search of N runs instead of the grid.
    #[arg(long, value_name = "N")]
    random: Option<usize>,
    /// A range a random search draws KEY from: KEY=LO:HI (uniform; integers if both are) or
    /// KEY=LO:HI:log (log-uniform, e.g. lr=1e-4:1e-2:log).
    #[arg(long, value_name = "KEY=LO:HI[:log]")]
    range: Vec<String>,
    /// Seed of the random search's draws.
    #[arg(long, default_value_t = 0)]
    sweep_seed: u64,
    /// The validation metric runs are ranked by: val_roc_auc or val_pair_accuracy.
    #[arg(long, default_value = "val_roc_auc")]
    rank_by: String,
    /// The sweep directory: one run directory per point, summary.json and summary.csv.
    /// Runs already finished there are reused; interrupted ones are resumed.
    #[arg(long)]
    out: PathBuf,
    /// Make the last line of stdout one JSON object with the ranked runs.
    #[arg(long)]
    json: bool,
    /// The base settings of every run (last: its help heading applies to every flag after it).
    #[command(flatten)]
    settings: SettingsArgs,
}

/// The verification figures, as `train` and `eval` print them.
fn print_verification(v: &Validation, t: &Verification, val_pairs: usize) {
    println!(
        "validation pair accuracy {:.4}, ROC AUC {:.4} ({val_pairs} pairs)",
        v.accuracy, v.roc_auc
    );
    print_test(t);
}

fn print_test(t: &Verification) {
    println!(
        "test pair accuracy {:.4} at threshold {:.4} (chosen on validation), ROC AUC {:.4}",
        t.accuracy, t.threshold, t.roc_auc
    );
    println!(
        "Same-pair precision {:.4}, recall {:.4}, F1 {:.4} at that threshold; equal error rate {:.4}",
        t.precision, t.recall, t.f1, t.eer
    );
}

/// A trained model from a run directory (or its model.safetensors): the model, its flat
/// parameters, the pixel normalisation and the settings it was trained with.
fn load_checkpoint(
    checkpoint: &Path,
) -> Result<(SiameseModel, Vec<f32>, PixelNorm, RunSettings), String> {
    let path = if checkpoint.is_dir() {
        checkpoint.join("model.safetensors")
    } else {
        checkpoint.to_path_buf()
    };
    let (model, flat, meta) = checkpoint::load_model(&path).map_err(|e| e.to_string())?;
    let meta_f32 = |key: &str, default: f32| {
        meta.get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let norm = PixelNorm {
        shift: meta_f32("pixel_shift", 0.0),
        scale: meta_f32("pixel_scale", 1.0),
    };
    let settings = match meta.get("config") {
        Some(text) => RunSettings::from_fingerprint(text).map_err(|e| e.to_string())?,
        None => RunSettings::default(),
    };
    Ok((model, flat, norm, settings))
}

/// The dataset a checkpoint was trained on (or `data`), split as in training, checked to
/// fit the model.
fn checkpoint_data(
    model: &SiameseModel,
    saved: &RunSettings,
    data: Option<&Path>,
    val_images: Option<usize>,
) -> Result<Dataset, String> {
    let [c, _, _] = model.config.input;
    let options = DataOptions {
        image_size: saved
            .image_size
            .as_deref()
            .map(parse_image_size)
            .transpose()
            .map_err(|e| e.to_string())?,
        color: if c == 3 { Color::Rgb } else { Color::Grey },
        on_bad_image: if saved.on_bad_image == "stop" {
            OnBadImage::Stop
        } else {
            OnBadImage::Skip
        },
        held_out_classes: saved.held_out_classes.clone(),
    };
    let data = data.or(saved.data.as_deref());
    let sets = dataset::load_with(data, val_images.or(saved.val_images), &options)
        .map_err(|e| e.to_string())?;
    for warning in &sets.warnings {
        eprintln!("warning: {warning}");
    }
    for (set, what) in [(&sets.val, "val"), (&sets.test, "test")] {
        check_size(model, set, what)?;
    }
    Ok(sets)
}

/// The dataset's image shape must be the model's input shape.
fn check_size(model: &SiameseModel, set: &ImageSet, what: &str) -> Result<(), String> {
    let [c, h, w] = model.config.input;
    if (set.channels, set.height, set.width) != (c, h, w) {
        return Err(format!(
            "the model takes {c}×{h}×{w} images (channels×height×width) but the {what} split holds \
             {}×{}×{}; evaluate it on the dataset it was trained on (--data)",
            set.channels, set.height, set.width
        ));
    }
    Ok(())
}

fn run_eval(args: &EvalArgs) -> Result<(), String> {
    let (model, flat, norm, saved) = load_checkpoint(&args.checkpoint)?;
    let data = checkpoint_data(&model, &saved, args.data.as_deref(), args.val_images)?;
    let (val_pairs, test_pairs) = (
        args.val_pairs.unwrap_or(saved.val_pairs),
        args.test_pairs.unwrap_or(saved.test_pairs),
    );
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    // Verification on the run's pairs; then retrieval, its raw-pixel baseline and one-shot
    // accuracy on the whole test split's embeddings.
    let verification = || -> siamese_gpu::Result<(Validation, Verification, EmbeddingMetrics)> {
        let val = gather::upload_images(&gpu, &data.val.images, data.val.count, data.val.pixels())?;
        let test =
            gather::upload_images(&gpu, &data.test.images, data.test.count, data.test.pixels())?;
        let params = gpu.upload_f32(&flat, &[flat.len()])?;
        let embedder = Embedder::new(&gpu, &model, &params, norm, 500)?;
        let protocol = PairProtocol::new(
            &gpu,
            &params,
            &model,
            (&data.val.labels, val_pairs),
            (&data.test.labels, test_pairs),
        );
        let v = protocol.validate(&embedder, &val)?;
        let t = protocol.test(&embedder, &test, &v)?;
        let embedded = embedder.embed(&test, data.test.count)?;
        let m = embedding_metrics(
            &gpu,
            &embedded,
            &data.test.labels,
            embedder.dim(),
            model.config.distance,
            Some((&data.test, norm)),
        )?;
        Ok((v, t, m))
    };
    let (v, t, m) = verification().map_err(|e| e.to_string())?;
    println!("verification ({}):", data.root.display());
    print_verification(&v, &t, val_pairs);
    println!("{m}");
    if args.json {
        let mut result = json!({
            "test_pair_accuracy": t.accuracy, "test_roc_auc": t.roc_auc, "threshold": num(t.threshold),
            "test_precision": t.precision, "test_recall": t.recall, "test_f1": t.f1, "test_eer": t.eer,
            "val_pair_accuracy": v.accuracy, "val_roc_auc": v.roc_auc,
            "val_pairs": val_pairs, "test_pairs": test_pairs, "adapter": gpu.adapter().name,
        });
        for (key, section) in embedding_metrics_json(&m).as_object().expect("an object") {
            result[key] = section.clone();
        }
        println!("{result}");
    }
    Ok(())
}

fn run_embed(args: &EmbedArgs) -> Result<(), String> {
    let format = match args.format.as_deref() {
        Some(f) => f.to_string(),
        None if args.out.extension().is_some_and(|e| e == "safetensors") => "safetensors".into(),
        None => "npy".into(),
    };
    if !["npy", "safetensors"].contains(&format.as_str()) {
        return Err(format!(
            "unknown --format `{format}`: use npy or safetensors"
        ));
    }
    let (model, flat, norm, saved) = load_checkpoint(&args.checkpoint)?;
    let data = checkpoint_data(&model, &saved, args.data.as_deref(), args.val_images)?;
    let (set, classes) = match args.split.as_str() {
        "train" => (&data.train, &data.train_classes),
        "val" => (&data.val, &data.train_classes),
        "test" => (&data.test, &data.test_classes),
        other => return Err(format!("unknown split `{other}`: use train, val or test")),
    };
    check_size(&model, set, &args.split)?;
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    // A bar with images/s and ETA on a terminal; nothing in a pipe (the result line follows).
    let bar = std::io::stderr().is_terminal().then(|| {
        let style =
            ProgressStyle::with_template("{bar:30} {pos}/{len} images  {per_sec}  ETA {eta}")
                .expect("a valid progress template");
        ProgressBar::new(set.count as u64).with_style(style)
    });
    let embed = || -> siamese_gpu::Result<Vec<f32>> {
        let images = gather::upload_images(&gpu, &set.images, set.count, set.pixels())?;
        let params = gpu.upload_f32(&flat, &[flat.len()])?;
        let all: Vec<u32> = (0..set.count as u32).collect();
        Embedder::new(&gpu, &model, &params, norm, 500)?.embed_indices_reporting(
            &images,
            &all,
            &mut |done| {
                if let Some(bar) = &bar {
                    bar.set_position(done as u64);
                }
            },
        )
    };
    let e = embed().map_err(|e| e.to_string());
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let e = e?;
    let dim = model.embedding_dim();
    let written = if format == "npy" {
        write_npy(&args.out, &e, set.count, dim)
    } else {
        write_embeddings_safetensors(&args.out, &e, set, dim, classes, &args.split)
    };
    written.map_err(|e| format!("cannot write {}: {e}", args.out.display()))?;
    println!(
        "wrote the {} split's embeddings, float32 [{}, {dim}], to {}",
        args.split,
        set.count,
        args.out.display()
    );
    Ok(())
}

/// Writes a float32 `[rows, cols]` array as .npy, through a temporary file and a rename.
fn write_npy(path: &Path, data: &[f32], rows: usize, cols: usize) -> std::io::Result<()> {
    use npyz::WriterBuilder;
    let mut bytes = Vec::new();
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&[rows as u64, cols as u64])
        .writer(&mut bytes)
        .begin_nd()?;
    writer.extend(data.iter().copied())?;
    writer.finish()?;
    write_atomic(path, &bytes)
}

/// Writes `embeddings` [N, D] f32 and `labels` [N] u8 as safetensors, the class name of
/// each label in the metadata, through a temporary file and a rename.
fn write_embeddings_safetensors(
    path: &Path,
    embeddings: &[f32],
    set: &ImageSet,
    dim: usize,
    classes: &[String],
    split: &str,
) -> std::io::Result<()> {
    use safetensors::tensor::{Dtype, TensorView};
    let invalid = |e: safetensors::SafeTensorError| std::io::Error::other(e.to_string());
    let views = [
        (
            "embeddings",
            TensorView::new(
                Dtype::F32,
                vec![set.count, dim],
                bytemuck::cast_slice(embeddings),
            )
            .map_err(invalid)?,
        ),
        (
            "labels",
            TensorView::new(Dtype::U8, vec![set.count], &set.labels).map_err(invalid)?,
        ),
    ];
    let metadata = [
        ("split".to_string(), split.to_string()),
        ("classes".to_string(), json!(classes).to_string()),
    ]
    .into_iter()
    .collect();
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(invalid)?;
    write_atomic(path, &bytes)
}

/// An f32 as JSON with its shortest decimal form (0.001, not 0.0010000000474974513).
fn num(v: f32) -> serde_json::Value {
    v.to_string()
        .parse::<f64>()
        .map_or(serde_json::Value::Null, |f| json!(f))
}

fn result_json(r: &TrainReport, cfg: &TrainConfig) -> serde_json::Value {
    json!({
        "test_pair_accuracy": r.test.accuracy,
        "test_roc_auc": r.test.roc_auc,
        "threshold": num(r.test.threshold),
        "test_precision": r.test.precision,
        "test_recall": r.test.recall,
        "test_f1": r.test.f1,
        "test_eer": r.test.eer,
        // What the threshold applies to: pairs scoring at most it are called Same.
        "score": match cfg.loss {
            LossKind::Bce => "negated logit".to_string(),
            _ => format!("{:?} distance", cfg.distance).to_lowercase(),
        },
        "val_pair_accuracy": r.val_accuracy,
        "val_roc_auc": r.val_roc_auc,
        "train_pairs": r.train_pairs,
        "steps": r.steps,
        "batch": cfg.batch,
        "loss": cfg.loss.to_string(),
        "seed": cfg.seed,
        "first_loss": num(r.first_loss),
        "last_loss": num(r.last_loss),
        "pairs_per_sec": r.pairs_per_sec,
        "train_s": r.train_s,
        "wall_s": r.wall_s,
        "adapter": r.adapter,
    })
}

/// Training progress on stderr: a bar with pairs/s and ETA on a terminal, plain log lines
/// otherwise (a pipe, a file, CI).
struct ProgressDisplay {
    terminal: bool,
    bar: Option<ProgressBar>,
}

impl ProgressDisplay {
    fn new() -> Self {
        ProgressDisplay {
            terminal: std::io::stderr().is_terminal(),
            bar: None,
        }
    }

    fn show(&mut self, p: &Progress) {
        if !self.terminal {
            eprintln!("{p}");
            return;
        }
        match p {
            Progress::Started { steps, .. } => {
                eprintln!("{p}");
                let style =
                    ProgressStyle::with_template("{bar:30} step {pos}/{len}  {msg}  ETA {eta}")
                        .expect("a valid progress template");
                self.bar = Some(ProgressBar::new(*steps as u64).with_style(style));
            }
            Progress::Loss {
                step,
                loss,
                pairs_per_sec,
                ..
            } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(*step as u64);
                    bar.set_message(format!("loss {loss:.4}  {pairs_per_sec:.0} pairs/s"));
                }
            }
            _ => match &self.bar {
                Some(bar) => bar.println(p.to_string()),
                None => eprintln!("{p}"),
            },
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn progress_json(p: &Progress) -> serde_json::Value {
    match p {
        Progress::Started { .. } => json!({"event": "started"}),
        Progress::Loss {
            step,
            pairs,
            loss,
            lr,
            pairs_per_sec,
        } => {
            json!({"event": "loss", "step": step, "pairs": pairs, "loss": num(*loss), "lr": num(*lr), "pairs_per_sec": pairs_per_sec})
        }
        Progress::Validation {
            pairs,
            loss,
            accuracy,
            roc_auc,
            train_accuracy,
            pairs_per_sec,
        } => json!({
            "event": "validation", "pairs": pairs, "loss": num(*loss), "val_pair_accuracy": accuracy,
            "val_roc_auc": roc_auc, "train_pair_accuracy": train_accuracy, "pairs_per_sec": pairs_per_sec,
        }),
        Progress::Profile {
            step,
            host_timed,
            kernels,
        } => json!({
            "event": "profile", "step": step, "host_timed": host_timed,
            "kernels": kernels.iter().map(|(name, ms)| json!({"kernel": name, "ms": ms})).collect::<Vec<_>>(),
        }),
        Progress::Note(text) => json!({"event": "note", "text": text}),
    }
}

/// The state to continue from `path`, refused unless it was saved by a run of the same
/// settings (budget aside), naming the settings that differ.
fn load_resume_state(
    path: &Path,
    cfg: &TrainConfig,
    settings: &RunSettings,
) -> Result<TrainingState, String> {
    let (_, params, meta) = checkpoint::load_model(path).map_err(|e| e.to_string())?;
    let saved = match meta.get("config") {
        Some(text) => RunSettings::from_fingerprint(text).map_err(|e| e.to_string())?,
        None => {
            return Err(format!(
                "{} records no run settings: it holds weights only",
                path.display()
            ));
        }
    };
    let budgetless = |s: &RunSettings| RunSettings {
        pairs: 0,
        ..s.clone()
    };
    let differences = budgetless(&saved).differences(&budgetless(settings));
    if !differences.is_empty() {
        return Err(format!(
            "{} was trained with other settings; resume with the same ones (only --pairs may \
             change). Saved → now:\n  {}",
            path.display(),
            differences.join("\n  ")
        ));
    }
    let steps_done: usize = meta
        .get("steps_done")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            format!(
                "{} records no steps_done: it holds weights only",
                path.display()
            )
        })?;
    if steps_done >= cfg.pairs / cfg.batch {
        return Err(format!(
            "{} has already trained {steps_done} steps, all of this budget; give a larger --pairs to train on",
            path.display()
        ));
    }
    let optimizer = checkpoint::load_optimizer_state(path).map_err(|e| e.to_string())?;
    Ok(TrainingState {
        params,
        optimizer,
        steps_done,
    })
}

/// Raised by Ctrl-C; the trainer saves its state and stops at the next step.
static STOP: AtomicBool = AtomicBool::new(false);

/// Where a run goes: a fresh run directory, or one to continue.
enum RunDir<'a> {
    None,
    Fresh(&'a Path),
    Resume(&'a Path),
}

/// The run directory's files, written once training has started.
struct RunFiles<'a> {
    dir: &'a Path,
    resume: bool,
    settings: &'a RunSettings,
    metrics: Option<std::io::BufWriter<std::fs::File>>,
    error: Option<String>,
}

impl RunFiles<'_> {
    fn start(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(self.dir).map_err(|e| {
            format!(
                "cannot create the run directory {}: {e}",
                self.dir.display()
            )
        })?;
        write_atomic(
            &self.dir.join("config.toml"),
            self.settings.to_toml().as_bytes(),
        )
        .map_err(|e| format!("cannot write config.toml: {e}"))?;
        // A resumed run appends to the metrics of the run it continues.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(self.resume)
            .write(true)
            .truncate(!self.resume)
            .open(self.dir.join("metrics.jsonl"))
            .map_err(|e| format!("cannot write metrics.jsonl: {e}"))?;
        self.metrics = Some(std::io::BufWriter::new(file));
        Ok(())
    }

    fn log(&mut self, p: &Progress) {
        if self.error.is_some() {
            return;
        }
        let outcome = match p {
            Progress::Started { .. } => self.start(),
            _ => Ok(()),
        };
        let outcome = outcome.and_then(|()| match self.metrics.as_mut() {
            Some(m) => writeln!(m, "{}", progress_json(p))
                .and_then(|()| m.flush())
                .map_err(|e| format!("cannot write metrics.jsonl: {e}")),
            None => Ok(()),
        });
        self.error = outcome.err();
    }
}

/// Trains one run of `settings`; with a run directory, writes it (config.toml, metrics.jsonl,
/// model.safetensors at every validation and when stopped, result.json at the end).
fn train_run(
    gpu: &Gpu,
    settings: &RunSettings,
    dir: RunDir,
    profile: bool,
) -> Result<(TrainReport, serde_json::Value), String> {
    let mut cfg = settings.to_train_config().map_err(|e| e.to_string())?;
    cfg.profile = profile;
    let (out, resume) = match dir {
        RunDir::None => (None, None),
        RunDir::Fresh(dir) => {
            if dir.join("model.safetensors").exists() {
                return Err(format!(
                    "{} already holds a trained run (model.safetensors); continue it with \
                     --resume {0}, or choose another --out (delete the directory to start over)",
                    dir.display()
                ));
            }
            (Some(dir), None)
        }
        RunDir::Resume(dir) => {
            let path = dir.join("model.safetensors");
            if !path.exists() {
                return Err(format!(
                    "{} holds no model.safetensors: the run stopped before its first checkpoint \
                     (or this is not a run directory); start it again with --out {0}",
                    dir.display()
                ));
            }
            let state = load_resume_state(&path, &cfg, settings)?;
            eprintln!("resuming after step {}", state.steps_done);
            (Some(dir), Some(state))
        }
    };
    let fingerprint = settings.fingerprint();
    let mut files = out.map(|dir| RunFiles {
        dir,
        resume: resume.is_some(),
        settings,
        metrics: None,
        error: None,
    });
    let mut save_state = |model: &SiameseModel, state: &TrainingState| -> siamese_gpu::Result<()> {
        let Some(dir) = out else {
            unreachable!("saving only with a run directory")
        };
        let metadata = [
            ("seed", cfg.seed.to_string()),
            ("steps_done", state.steps_done.to_string()),
            ("train_pairs", (state.steps_done * cfg.batch).to_string()),
            ("pixel_shift", cfg.pixel_norm.shift.to_string()),
            ("pixel_scale", cfg.pixel_norm.scale.to_string()),
            ("config", fingerprint.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        checkpoint::save_checkpoint(
            &dir.join("model.safetensors"),
            model,
            &state.params,
            &state.optimizer,
            metadata,
        )
    };
    let mut display = ProgressDisplay::new();
    let mut on_progress = |p: &Progress| {
        display.show(p);
        if let Some(f) = files.as_mut() {
            f.log(p);
        }
    };
    let control = RunControl {
        resume,
        stop: Some(&STOP),
        save: if out.is_some() {
            Some(&mut save_state)
        } else {
            None
        },
    };
    let outcome = train::train_with(gpu, &cfg, control, &mut on_progress);
    display.finish();
    if let Some(error) = files.as_mut().and_then(|f| f.error.take()) {
        return Err(error);
    }
    let report = match outcome.map_err(|e| e.to_string())? {
        Outcome::Trained(report) => *report,
        stopped @ Outcome::Stopped { .. } => {
            return Err(match out {
                Some(dir) => format!("{stopped}: continue with --resume {}", dir.display()),
                None => format!("{stopped} (without --out RUN_DIR nothing was saved)"),
            });
        }
        Outcome::Diverged(d) => {
            // The doctor still reads what the run did before it blew up.
            eprintln!("{}", d.diagnosis);
            if let Some(dir) = out {
                write_report(dir, &d.diagnosis, json!({})).map_err(|e| {
                    format!("{}; and report.json could not be written: {e}", d.message)
                })?;
                return Err(format!(
                    "{} (the doctor's report is in {})",
                    d.message,
                    dir.display()
                ));
            }
            return Err(d.message);
        }
    };
    let result = result_json(&report, &cfg);
    if let Some(dir) = out {
        let text = serde_json::to_string_pretty(&result).expect("JSON");
        write_atomic(&dir.join("result.json"), text.as_bytes())
            .map_err(|e| format!("cannot write result.json: {e}"))?;
        let mut metrics = embedding_metrics_json(&report.embedding_metrics);
        metrics["verification"] = verification_json(&report.diagnosis.evidence, &report.test);
        write_report(dir, &report.diagnosis, metrics)
            .map_err(|e| format!("cannot write the report: {e}"))?;
    }
    Ok((report, result))
}

/// Prints the resolved settings (a file `--config` reads back) on stderr.
fn print_settings(settings: &RunSettings) {
    eprintln!("settings (defaults < --config file < flags):");
    for line in settings.to_toml().lines() {
        eprintln!("  {line}");
    }
}

fn run_train(args: &TrainArgs, matches: &ArgMatches) -> Result<(), String> {
    let settings = args.settings.resolve(matches)?;
    print_settings(&settings);
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    let dir = match (&args.resume, &args.out) {
        (Some(dir), Some(out)) if dir != out => {
            return Err("--resume RUN_DIR continues that directory; leave --out out".into());
        }
        (Some(dir), _) => RunDir::Resume(dir),
        (None, Some(out)) => RunDir::Fresh(out),
        (None, None) => RunDir::None,
    };
    let out = args.resume.as_ref().or(args.out.as_ref()).cloned();
    let (report, result) = train_run(&gpu, &settings, dir, args.profile)?;
    print_test(&report.test);
    println!(
        "{} training pairs in {:.0} s ({:.0} pairs/s), {:.0} s in all, on {}",
        report.train_pairs, report.train_s, report.pairs_per_sec, report.wall_s, report.adapter
    );
    println!("{}", report.embedding_metrics);
    println!("{}", report.diagnosis);
    match out {
        Some(dir) => println!(
            "report.json and plots (curves, distances, roc, embeddings_pca .svg) in {}",
            dir.display()
        ),
        None => println!("add --out RUN_DIR to keep the model, report.json and the plots"),
    }
    if args.json {
        println!("{result}");
    }
    Ok(())
}

/// The figures of a result.json written by [`train_run`].
fn metrics_of(result: &serde_json::Value) -> Option<Metrics> {
    let f = |key: &str| result.get(key).and_then(serde_json::Value::as_f64);
    Some(Metrics {
        val_roc_auc: f("val_roc_auc")?,
        val_pair_accuracy: f("val_pair_accuracy")?,
        test_pair_accuracy: f("test_pair_accuracy")?,
        test_roc_auc: f("test_roc_auc")?,
        pairs_per_sec: f("pairs_per_sec")?,
    })
}

fn run_sweep(args: &SweepArgs, matches: &ArgMatches) -> Result<(), String> {
    let base = args.settings.resolve(matches)?;
    let rank_by: RankBy = args
        .rank_by
        .parse()
        .map_err(|e: siamese_gpu::Error| e.to_string())?;
    let axes: Vec<Axis> = args
        .grid
        .iter()
        .map(|g| g.parse())
        .collect::<siamese_gpu::Result<_>>()
        .map_err(|e| e.to_string())?;
    let points = match args.random {
        Some(n) => {
            let ranges = args
                .range
                .iter()
                .map(|r| r.parse())
                .collect::<siamese_gpu::Result<Vec<_>>>()
                .map_err(|e| e.to_string())?;
            sweep::random(&axes, &ranges, n, args.sweep_seed)
        }
        None if !args.range.is_empty() => {
            return Err("--range draws values for a random search: add --random N".into());
        }
        None if axes.is_empty() => {
            return Err("nothing to sweep: give --grid KEY=V1,V2 (and --random N with --range for a random search)".into());
        }
        None => sweep::grid(&axes),
    };
    // Every point's settings are checked before the first run starts.
    let runs = points
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let settings = sweep::apply(&base, p)
                .map_err(|e| format!("run {}: {e}", sweep::run_name(i, p)))?;
            Ok((sweep::run_name(i, p), p.clone(), settings))
        })
        .collect::<Result<Vec<_>, String>>()?;
    // A run directory left by an earlier call is continued only if it is the same run.
    for (name, _, settings) in &runs {
        let saved = args.out.join(name).join("config.toml");
        if saved.exists() {
            let differences = RunSettings::from_file(&saved)
                .map_err(|e| e.to_string())?
                .differences(settings);
            if !differences.is_empty() {
                return Err(format!(
                    "{} holds a run of other settings ({}); sweep into another --out, or delete \
                     that directory",
                    saved.parent().expect("a run directory").display(),
                    differences.join("; ")
                ));
            }
        }
    }
    print_settings(&base);
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&args.out).map_err(|e| {
        format!(
            "cannot create the sweep directory {}: {e}",
            args.out.display()
        )
    })?;
    let mut outcomes = Vec::new();
    for (i, (name, point, settings)) in runs.into_iter().enumerate() {
        let dir = args.out.join(&name);
        eprintln!("\nrun {}/{}: {name}", i + 1, points.len());
        let finished = std::fs::read(dir.join("result.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .and_then(|r: serde_json::Value| metrics_of(&r));
        let result = match finished {
            Some(m) => {
                eprintln!(
                    "already finished in {}: reusing its result.json",
                    dir.display()
                );
                Ok(m)
            }
            None => {
                let run_dir = if dir.join("model.safetensors").exists() {
                    RunDir::Resume(&dir)
                } else {
                    RunDir::Fresh(&dir)
                };
                train_run(&gpu, &settings, run_dir, false).map(|(_, result)| {
                    metrics_of(&result).expect("train_run's result has every figure")
                })
            }
        };
        if let Err(e) = &result {
            eprintln!("run {name} failed: {e}");
        }
        if STOP.load(Ordering::Relaxed) {
            return Err(format!(
                "sweep stopped during run {name}; run the same command again to continue it"
            ));
        }
        outcomes.push(SweepRun {
            name,
            point,
            result,
        });
    }
    sweep::rank(&mut outcomes, rank_by);
    let runs_json: Vec<serde_json::Value> = outcomes
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let mut run = json!({
                "rank": i + 1, "run": o.name, "dir": args.out.join(&o.name).display().to_string(),
                "settings": o.point.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
            });
            let fields = match &o.result {
                Ok(m) => json!({"status": "ok", "val_roc_auc": m.val_roc_auc, "val_pair_accuracy": m.val_pair_accuracy,
                    "test_pair_accuracy": m.test_pair_accuracy, "test_roc_auc": m.test_roc_auc, "pairs_per_sec": m.pairs_per_sec}),
                Err(e) => json!({"status": "failed", "error": e}),
            };
            run.as_object_mut().expect("object").extend(fields.as_object().expect("object").clone());
            run
        })
        .collect();
    let summary = json!({"rank_by": rank_by.name(), "runs": runs_json});
    let text = serde_json::to_string_pretty(&summary).expect("JSON");
    write_atomic(&args.out.join("summary.json"), text.as_bytes())
        .map_err(|e| format!("cannot write summary.json: {e}"))?;
    write_atomic(
        &args.out.join("summary.csv"),
        sweep::csv(&outcomes).as_bytes(),
    )
    .map_err(|e| format!("cannot write summary.csv: {e}"))?;
    println!("\nruns ranked by {} (validation):", rank_by.name());
    print!("{}", sweep::table(&outcomes));
    println!(
        "summary in {} and summary.csv",
        args.out.join("summary.json").display()
    );
    if args.json {
        println!("{summary}");
    }
    if outcomes.iter().all(|o| o.result.is_err()) {
        return Err("every run of the sweep failed".into());
    }
    Ok(())
}

fn run_devices() -> Result<(), String> {
    for (i, a) in list_adapters().iter().enumerate() {
        println!("{i}: {a}");
    }
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    let limits = gpu.limits();
    println!("chosen: {}", gpu.adapter());
    println!(
        "  max storage binding {} MiB, max buffer {} MiB, max workgroups per dimension {}, \
         workgroup storage {} KiB, timestamp queries {}, f16 shaders {}",
        limits.max_storage_buffer_binding_size >> 20,
        limits.max_buffer_size >> 20,
        limits.max_compute_workgroups_per_dimension,
        limits.max_compute_workgroup_storage_size >> 10,
        gpu.features().contains(wgpu::Features::TIMESTAMP_QUERY),
        gpu.features().contains(wgpu::Features::SHADER_F16),
    );
    let side = |op| {
        if gpu.takes_texels(op) {
            "texels"
        } else {
            "storage"
        }
    };
    println!(
        "  kernels ({}; SIAMESE_KERNELS=auto|storage|texels): conv forward {}, conv grad_input {}, \
         conv grad_weight {}, dense {}",
        gpu.kernel_path().name(),
        side(TexelOp::ConvForward),
        side(TexelOp::ConvGradInput),
        side(TexelOp::ConvGradWeight),
        side(TexelOp::Dense),
    );
    Ok(())
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let sub = matches
        .subcommand()
        .map(|(_, m)| m)
        .expect("clap requires a subcommand");
    if matches!(cli.command, Command::Train(_) | Command::Sweep(_)) {
        let installed = ctrlc::set_handler(|| {
            if STOP.swap(true, Ordering::Relaxed) {
                std::process::exit(130); // a second Ctrl-C does not wait
            }
            eprintln!("\nstopping after this step (Ctrl-C again to quit at once)");
        });
        if let Err(e) = installed {
            eprintln!("error: cannot install the Ctrl-C handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    let outcome = match &cli.command {
        Command::Train(args) => run_train(args, sub),
        Command::Sweep(args) => run_sweep(args, sub),
        Command::Devices => run_devices(),
        Command::Embed(args) => run_embed(args),
        Command::Eval(args) => run_eval(args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            // Stopped by Ctrl-C: the conventional status of SIGINT (128 + 2).
            if STOP.load(Ordering::Relaxed) {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
