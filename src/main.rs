//! `siamese`: the command-line interface.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use siamese_gpu::Gpu;
use siamese_gpu::checkpoint::{self, write_atomic};
use siamese_gpu::data::dataset::{self, ImageSet};
use siamese_gpu::eval::embed::Embedder;
use siamese_gpu::eval::protocol::{PairProtocol, Validation};
use siamese_gpu::eval::verification::Verification;
use siamese_gpu::gpu::list_adapters;
use siamese_gpu::model::LossKind;
use siamese_gpu::model::SiameseModel;
use siamese_gpu::nn::spec::REFERENCE_TOWER;
use siamese_gpu::ops::distance::Distance;
use siamese_gpu::ops::gather;
use siamese_gpu::ops::gather::PixelNorm;
use siamese_gpu::optim::{OptimizerKind, Schedule};
use siamese_gpu::train::{self, Progress, RunControl, TrainConfig, TrainReport, TrainingState};

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
    /// List the GPU adapters wgpu can see, best first, and open the one that would be used
    /// (SIAMESE_ADAPTER=<name substring> picks another).
    Devices,
    /// Embed a dataset split with a trained model; write a float32 [N, D] NumPy array in
    /// dataset order.
    Embed(EmbedArgs),
    /// Evaluate a trained model: test pair accuracy at the threshold chosen on validation
    /// pairs, and ROC AUC.
    Eval(EvalArgs),
}

#[derive(Args)]
struct EvalArgs {
    /// The run directory of `train --out` (or its model.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Dataset directory (as for train).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Validation images held out of train [default: min(5000, 10%)].
    #[arg(long)]
    val_images: Option<usize>,
    /// Balanced validation pairs that choose the threshold.
    #[arg(long, default_value_t = TrainConfig::default().val_pairs)]
    val_pairs: usize,
    /// Balanced test pairs scored at that threshold.
    #[arg(long, default_value_t = TrainConfig::default().test_pairs)]
    test_pairs: usize,
    /// Make the last line of stdout one JSON object with the results.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct EmbedArgs {
    /// The run directory of `train --out` (or its model.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Dataset directory (as for train).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Which images: train (without the validation hold-out), val, or test.
    #[arg(long, default_value = "test")]
    split: String,
    /// Validation images held out of train [default: min(5000, 10%)].
    #[arg(long)]
    val_images: Option<usize>,
    /// Output file (.npy).
    #[arg(long)]
    out: PathBuf,
}

/// The test figures, as `train` and `eval` print them.
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
/// parameters, and the pixel normalisation it was trained with.
fn load_checkpoint(checkpoint: &Path) -> Result<(SiameseModel, Vec<f32>, PixelNorm), String> {
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
    Ok((model, flat, norm))
}

/// The dataset's image size must be the model's input size.
fn check_size(model: &SiameseModel, set: &ImageSet, what: &str) -> Result<(), String> {
    let [_, h, w] = model.config.input;
    if (set.height, set.width) != (h, w) {
        return Err(format!(
            "the model takes {h}×{w} images but the {what} split holds {}×{}",
            set.height, set.width
        ));
    }
    Ok(())
}

fn run_eval(args: &EvalArgs) -> Result<(), String> {
    let (model, flat, norm) = load_checkpoint(&args.checkpoint)?;
    let data = dataset::load(args.data.as_deref(), args.val_images).map_err(|e| e.to_string())?;
    check_size(&model, &data.test, "test")?;
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    let evaluate = || -> siamese_gpu::Result<(Validation, Verification)> {
        let pixels = data.test.height * data.test.width;
        let val = gather::upload_images(&gpu, &data.val.images, data.val.count, pixels)?;
        let test = gather::upload_images(&gpu, &data.test.images, data.test.count, pixels)?;
        let params = gpu.upload_f32(&flat, &[flat.len()])?;
        let embedder = Embedder::new(&gpu, &model, &params, norm, 500)?;
        let protocol = PairProtocol::new(
            &gpu,
            &params,
            &model,
            (&data.val.labels, args.val_pairs),
            (&data.test.labels, args.test_pairs),
        );
        let v = protocol.validate(&embedder, &val)?;
        let t = protocol.test(&embedder, &test, &v)?;
        Ok((v, t))
    };
    let (v, t) = evaluate().map_err(|e| e.to_string())?;
    println!(
        "validation pair accuracy {:.4}, ROC AUC {:.4} ({} pairs)",
        v.accuracy, v.roc_auc, args.val_pairs
    );
    print_test(&t);
    if args.json {
        let result = json!({
            "test_pair_accuracy": t.accuracy, "test_roc_auc": t.roc_auc, "threshold": num(t.threshold),
            "test_precision": t.precision, "test_recall": t.recall, "test_f1": t.f1, "test_eer": t.eer,
            "val_pair_accuracy": v.accuracy, "val_roc_auc": v.roc_auc,
            "val_pairs": args.val_pairs, "test_pairs": args.test_pairs, "adapter": gpu.adapter().name,
        });
        println!("{result}");
    }
    Ok(())
}

fn run_embed(args: &EmbedArgs) -> Result<(), String> {
    let (model, flat, norm) = load_checkpoint(&args.checkpoint)?;
    let data = dataset::load(args.data.as_deref(), args.val_images).map_err(|e| e.to_string())?;
    let set = match args.split.as_str() {
        "train" => &data.train,
        "val" => &data.val,
        "test" => &data.test,
        other => return Err(format!("unknown split `{other}`: use train, val or test")),
    };
    check_size(&model, set, &args.split)?;
    let [_, h, w] = model.config.input;
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    let embed = || -> siamese_gpu::Result<Vec<f32>> {
        let images = gather::upload_images(&gpu, &set.images, set.count, h * w)?;
        let params = gpu.upload_f32(&flat, &[flat.len()])?;
        Embedder::new(&gpu, &model, &params, norm, 500)?.embed(&images, set.count)
    };
    let e = embed().map_err(|e| e.to_string())?;
    let dim = model.embedding_dim();
    write_npy(&args.out, &e, set.count, dim)
        .map_err(|e| format!("cannot write {}: {e}", args.out.display()))?;
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

#[derive(Args)]
struct TrainArgs {
    /// Dataset directory with the four Fashion-MNIST IDX files (.gz or raw);
    /// default: $SIAMESE_DATA, then /usr/share/datasets/fashion-mnist.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Training budget, in pairs (triplets for --loss triplet).
    #[arg(long, default_value_t = TrainConfig::default().pairs)]
    pairs: usize,
    /// Pairs (or triplets) per step.
    #[arg(long, default_value_t = TrainConfig::default().batch)]
    batch: usize,
    /// Learning rate.
    #[arg(long, default_value_t = TrainConfig::default().optimizer.lr)]
    lr: f32,
    /// Margin of the contrastive or triplet loss.
    #[arg(long, default_value_t = TrainConfig::default().margin)]
    margin: f32,
    /// Loss: contrastive, triplet, or bce (the Keras head |a−b| → dense(1) → sigmoid).
    #[arg(long, default_value = "contrastive")]
    loss: String,
    /// Distance between embeddings: euclidean or cosine.
    #[arg(long, default_value = "euclidean")]
    distance: String,
    /// L2-normalise the embeddings before the distance.
    #[arg(long)]
    normalize_embeddings: bool,
    /// The tower, layer by layer.
    #[arg(long, default_value = REFERENCE_TOWER)]
    tower: String,
    /// Optimizer: adam, adamw, sgd (momentum 0.9) or nesterov.
    #[arg(long, default_value = "adam")]
    optimizer: String,
    /// Weight decay (L2 for adam and sgd, decoupled for adamw).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    /// Learning-rate schedule: constant, step:EVERY:GAMMA, cosine[:WARMUP] (steps).
    #[arg(long, default_value = "constant")]
    schedule: String,
    /// Fraction of Same pairs in training batches.
    #[arg(long, default_value_t = TrainConfig::default().positive_fraction)]
    positive_fraction: f64,
    /// Seed of initialisation and sampling.
    #[arg(long, default_value_t = TrainConfig::default().seed)]
    seed: u64,
    /// Validation images held out of training [default: min(5000, 10%)].
    #[arg(long)]
    val_images: Option<usize>,
    /// Validate every this many training pairs.
    #[arg(long, default_value_t = TrainConfig::default().eval_every)]
    eval_every: usize,
    /// Input normalisation: unit (pixel/255) or standard:MEAN:STD ((pixel/255 − MEAN)/STD).
    #[arg(long, default_value = "unit")]
    pixel_norm: String,
    /// Write the run (config.json, metrics.jsonl, result.json, model.safetensors) into this
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
    /// the same flags; the result equals an uninterrupted run's.
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
}

impl TrainArgs {
    fn config(&self) -> siamese_gpu::Result<TrainConfig> {
        let mut cfg = TrainConfig {
            data: self.data.clone(),
            ..TrainConfig::default()
        };
        cfg.tower = self.tower.parse()?;
        cfg.loss = self.loss.parse()?;
        cfg.margin = self.margin;
        cfg.distance = match self.distance.to_lowercase().as_str() {
            "euclidean" => Distance::Euclidean,
            "cosine" => Distance::Cosine,
            other => {
                return Err(siamese_gpu::Error::Config(format!(
                    "unknown distance `{other}`: use euclidean or cosine"
                )));
            }
        };
        cfg.normalize = self.normalize_embeddings;
        cfg.optimizer.kind = OptimizerKind::named(&self.optimizer)?;
        cfg.optimizer.lr = self.lr;
        cfg.optimizer.weight_decay = self.weight_decay;
        cfg.optimizer.schedule = self.schedule.parse::<Schedule>()?;
        cfg.batch = self.batch;
        cfg.pairs = self.pairs;
        cfg.positive_fraction = self.positive_fraction;
        cfg.seed = self.seed;
        cfg.val_images = self.val_images;
        cfg.eval_every = self.eval_every;
        cfg.pixel_norm = parse_pixel_norm(&self.pixel_norm)?;
        cfg.profile = self.profile;
        cfg.validate()?;
        Ok(cfg)
    }
}

fn parse_pixel_norm(s: &str) -> siamese_gpu::Result<PixelNorm> {
    let bad = || {
        siamese_gpu::Error::Config(format!(
            "unknown pixel normalisation `{s}`: use unit or standard:MEAN:STD"
        ))
    };
    match s.split(':').collect::<Vec<_>>().as_slice() {
        ["unit"] => Ok(PixelNorm::UNIT),
        ["standard", mean, std] => {
            let (mean, std): (f32, f32) = (
                mean.parse().map_err(|_| bad())?,
                std.parse().map_err(|_| bad())?,
            );
            if std.is_nan() || std <= 0.0 {
                return Err(bad());
            }
            Ok(PixelNorm::standardize(mean, std))
        }
        _ => Err(bad()),
    }
}

/// An f32 as JSON with its shortest decimal form (0.001, not 0.0010000000474974513).
fn num(v: f32) -> serde_json::Value {
    v.to_string()
        .parse::<f64>()
        .map_or(serde_json::Value::Null, |f| json!(f))
}

fn config_json(args: &TrainArgs, cfg: &TrainConfig) -> serde_json::Value {
    json!({
        "data": cfg.data.as_ref().map(|p| p.display().to_string()),
        "tower": cfg.tower.to_string(),
        "loss": cfg.loss.to_string(),
        "margin": num(cfg.margin),
        "distance": args.distance.to_lowercase(),
        "normalize_embeddings": cfg.normalize,
        "optimizer": cfg.optimizer.kind.name(),
        "lr": num(cfg.optimizer.lr),
        "weight_decay": num(cfg.optimizer.weight_decay),
        "schedule": cfg.optimizer.schedule.to_string(),
        "batch": cfg.batch,
        "pairs": cfg.pairs,
        "positive_fraction": cfg.positive_fraction,
        "seed": cfg.seed,
        "val_images": cfg.val_images,
        "val_pairs": cfg.val_pairs,
        "test_pairs": cfg.test_pairs,
        "eval_every": cfg.eval_every,
        "pixel_norm": args.pixel_norm,
    })
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
            pairs_per_sec,
        } => json!({
            "event": "validation", "pairs": pairs, "loss": num(*loss), "val_pair_accuracy": accuracy,
            "val_roc_auc": roc_auc, "pairs_per_sec": pairs_per_sec,
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
/// configuration (`fingerprint`).
fn load_resume_state(
    path: &Path,
    cfg: &TrainConfig,
    fingerprint: &str,
) -> Result<TrainingState, String> {
    let (_, params, meta) = checkpoint::load_model(path).map_err(|e| e.to_string())?;
    let saved = meta.get("config").map(String::as_str).unwrap_or("(none)");
    if saved != fingerprint {
        return Err(format!(
            "{} was trained with another configuration; resume with the same flags (--pairs may grow).\n  saved: {saved}\n  now:   {fingerprint}",
            path.display()
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

fn run_train(args: &TrainArgs) -> Result<(), String> {
    let cfg = args.config().map_err(|e| e.to_string())?;
    let out = args.out.clone().or_else(|| args.resume.clone());
    let config = config_json(args, &cfg);
    // What a resumed run must share with the one it continues (the budget may grow).
    let mut fingerprint = config.clone();
    fingerprint
        .as_object_mut()
        .expect("an object")
        .remove("pairs");
    let fingerprint = fingerprint.to_string();
    let resume = match &args.resume {
        Some(dir) => Some(load_resume_state(
            &dir.join("model.safetensors"),
            &cfg,
            &fingerprint,
        )?),
        None => None,
    };
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    let mut metrics = None;
    if let Some(dir) = &out {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the run directory {}: {e}", dir.display()))?;
        let text = serde_json::to_string_pretty(&config).expect("JSON");
        write_atomic(&dir.join("config.json"), text.as_bytes())
            .map_err(|e| format!("cannot write config.json: {e}"))?;
        // A resumed run appends to the metrics of the run it continues.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(resume.is_some())
            .write(true)
            .truncate(resume.is_none())
            .open(dir.join("metrics.jsonl"))
            .map_err(|e| format!("cannot write metrics.jsonl: {e}"))?;
        metrics = Some(std::io::BufWriter::new(file));
    }
    eprintln!("config: {config}");
    if let Some(state) = &resume {
        eprintln!("resuming after step {}", state.steps_done);
    }
    ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::Relaxed) {
            std::process::exit(130); // a second Ctrl-C does not wait
        }
        eprintln!("\nstopping after this step (Ctrl-C again to quit at once)");
    })
    .map_err(|e| format!("cannot install the Ctrl-C handler: {e}"))?;

    let mut save_state = |model: &SiameseModel, state: &TrainingState| -> siamese_gpu::Result<()> {
        let Some(dir) = &out else {
            unreachable!("saving only with --out")
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
        if let Some(m) = metrics.as_mut() {
            let _ = writeln!(m, "{}", progress_json(p));
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
    let outcome = train::train_with(&gpu, &cfg, control, &mut on_progress);
    display.finish();
    let report = match outcome {
        Ok(report) => report,
        Err(e) if STOP.load(Ordering::Relaxed) => {
            return Err(match &out {
                Some(dir) => format!("{e}: continue with --resume {}", dir.display()),
                None => format!("{e} (without --out RUN_DIR nothing was saved)"),
            });
        }
        Err(e) => return Err(e.to_string()),
    };
    let result = result_json(&report, &cfg);
    if let Some(dir) = &out {
        if let Some(mut m) = metrics {
            m.flush()
                .map_err(|e| format!("cannot write metrics.jsonl: {e}"))?;
        }
        let text = serde_json::to_string_pretty(&result).expect("JSON");
        write_atomic(&dir.join("result.json"), text.as_bytes())
            .map_err(|e| format!("cannot write result.json: {e}"))?;
    }
    print_test(&report.test);
    println!(
        "{} training pairs in {:.0} s ({:.0} pairs/s), {:.0} s in all, on {}",
        report.train_pairs, report.train_s, report.pairs_per_sec, report.wall_s, report.adapter
    );
    if args.json {
        println!("{result}");
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
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match &cli.command {
        Command::Train(args) => run_train(args),
        Command::Devices => run_devices(),
        Command::Embed(args) => run_embed(args),
        Command::Eval(args) => run_eval(args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
