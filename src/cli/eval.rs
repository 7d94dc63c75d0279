//! `siamese eval`: every metric of a trained model on its run's dataset — verification at
//! the threshold validation chooses, retrieval with its raw-pixel baseline, one-shot — or,
//! with `--pairs-file`, on the pairs a file names (see `pairs_eval`).

use std::path::PathBuf;

use clap::Args;
use serde_json::json;
use siamese_gpu::Gpu;
use siamese_gpu::error::Result;
use siamese_gpu::eval::embed::Embedder;
use siamese_gpu::eval::embedding_metrics::{SCORED_IMAGES, score_test_split};
use siamese_gpu::eval::protocol::PairProtocol;
use siamese_gpu::model::ModelTensors;
use siamese_gpu::ops::gather;
use siamese_gpu::report::embedding_metrics_json;
use siamese_gpu::runs::json::num;
use siamese_gpu::runs::saved::SavedRun;

use super::output::print_verification;
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
    let t = protocol.test(&embedder, &test, &v)?;
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
