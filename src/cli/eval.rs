//! `siamese eval`: every metric of a trained model on its run's dataset — verification at
//! the threshold validation chooses, retrieval with its raw-pixel baseline, one-shot — or,
//! with `--pairs-file`, on the pairs a file names (see `pairs_eval`).

use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::{Value, json};
use siamese_gpu::Gpu;
use siamese_gpu::checkpoint;
use siamese_gpu::error::{Error, Result};
use siamese_gpu::eval::embed::Embedder;
use siamese_gpu::eval::embedding_metrics::{SCORED_IMAGES, score_test_split};
use siamese_gpu::eval::operating_points::{Target, operating_points};
use siamese_gpu::eval::protocol::PairProtocol;
use siamese_gpu::files::write_atomic;
use siamese_gpu::model::ModelTensors;
use siamese_gpu::ops::gather;
use siamese_gpu::report::embedding_metrics_json;
use siamese_gpu::runs::OPERATING_POINTS_KEY;
use siamese_gpu::runs::json::{num, operating_points_json};
use siamese_gpu::runs::saved::{SavedRun, model_file};

use super::output::{print_operating_points, print_verification};
use super::pairs_eval::PairsFileArgs;

#[derive(Args)]
pub struct EvalArgs {
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
    /// A false-accept rate to choose an operating point for (repeatable) [default: the
    /// run's --far targets]; accuracy and EER points are always chosen.
    #[arg(long, value_name = "RATE", value_delimiter = ',')]
    far: Vec<f64>,
    /// Store the operating points in the run (model.safetensors' metadata and result.json),
    /// replacing those it has, for `compare` to decide at.
    #[arg(long, conflicts_with = "pairs_file")]
    store: bool,
    #[command(flatten)]
    pairs: PairsFileArgs,
    /// Make the last line of stdout one JSON object with the results.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &EvalArgs) -> Result<()> {
    let run = SavedRun::load(&args.checkpoint)?;
    if args.pairs.pairs_file.is_some() {
        let gpu = Gpu::new()?;
        let result = args.pairs.evaluate(&gpu, &run, args.data.as_deref())?;
        if let Some(result) = result.filter(|_| args.json) {
            println!("{result}");
        }
        return Ok(());
    }
    let data = run.dataset(args.data.as_deref(), args.val_images, &mut |w| {
        eprintln!("warning: {w}")
    })?;
    let saved = &run.settings;
    let (val_pairs, test_pairs) = (
        args.val_pairs.unwrap_or(saved.val_pairs),
        args.test_pairs.unwrap_or(saved.test_pairs),
    );
    let gpu = Gpu::new()?;
    // Verification on the run's pairs; then retrieval, its raw-pixel baseline and one-shot
    // accuracy on the test images training scores (the whole split up to SCORED_IMAGES).
    let upload = |set: &siamese_gpu::data::images::ImageSet| {
        gather::upload_images(&gpu, &set.images, set.count, set.pixels())
    };
    let (val, test) = (upload(&data.val)?, upload(&data.test)?);
    let values = ModelTensors::upload(&gpu, &run.model, &run.values)?;
    let embedder = Embedder::new(&gpu, &run.model, &values, run.norm, 500)?;
    let protocol = PairProtocol::new(
        &gpu,
        &values.params,
        &run.model,
        (&data.val.labels, val_pairs),
        (&data.test.labels, test_pairs),
    );
    let v = protocol.validate(&embedder, &val)?;
    let (t, test_scores) = protocol.test_scored(&embedder, &test, &v)?;
    let far = if args.far.is_empty() {
        &saved.far
    } else {
        &args.far
    };
    for &rate in far {
        Target::far(rate)?;
    }
    let points = operating_points(
        &Target::with_far(far),
        (&v.scores, protocol.val_labels()),
        (&test_scores, protocol.test_labels()),
    )?;
    let (_, _, m) = score_test_split(
        &gpu,
        &embedder,
        run.model.config.distance,
        (&data.test, &test),
        (SCORED_IMAGES, saved.seed),
        Some(run.norm),
    )?;
    println!("verification ({}):", data.root.display());
    print_verification(&v, &t, val_pairs);
    print_operating_points(&points, !saved.held_out_classes.is_empty());
    let points = operating_points_json(&points);
    if args.store {
        store(&args.checkpoint, &points)?;
    }
    println!("{m}");
    if args.json {
        let mut result = json!({
            "test_pair_accuracy": t.accuracy, "test_roc_auc": t.roc_auc, "threshold": num(t.threshold),
            "test_precision": t.precision, "test_recall": t.recall, "test_f1": t.f1, "test_eer": t.eer,
            "val_pair_accuracy": v.accuracy, "val_roc_auc": v.roc_auc,
            "val_pairs": val_pairs, "test_pairs": test_pairs, "adapter": gpu.adapter().name,
        });
        result["operating_points"] = points;
        for (key, section) in embedding_metrics_json(&m).as_object().expect("an object") {
            result[key] = section.clone();
        }
        println!("{result}");
    }
    Ok(())
}

/// Writes `points` into the run of `checkpoint`: the model file's metadata, and result.json
/// when the run has one.
fn store(checkpoint: &Path, points: &Value) -> Result<()> {
    let model = model_file(checkpoint);
    checkpoint::add_metadata(&model, &[(OPERATING_POINTS_KEY, points.to_string())])?;
    let result = checkpoint.join("result.json");
    if checkpoint.is_dir() && result.is_file() {
        let text = std::fs::read_to_string(&result)
            .map_err(|e| Error::File(format!("cannot read {}: {e}", result.display())))?;
        let mut json: Value = serde_json::from_str(&text).map_err(|e| {
            Error::Data(format!(
                "{} is not JSON ({e}); it was left as it is",
                result.display()
            ))
        })?;
        json["operating_points"] = points.clone();
        let text = serde_json::to_string_pretty(&json).expect("JSON");
        write_atomic(&result, text.as_bytes()).map_err(|e| Error::writing(result.display(), e))?;
    }
    println!("stored the operating points in {}", model.display());
    Ok(())
}
