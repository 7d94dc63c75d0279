//! `siamese compare`: whether two images — or each pair of a CSV — show the same thing, by a
//! trained model at one of the operating points its run stored: the distance (or the BCE
//! head's probability), the threshold, the decision and the margin to it. All the pairs'
//! images are embedded in one batch on the GPU.
//!
//! The exit status carries the decision for scripts: 0 when every pair is Same, 1 when any
//! is Different, 2 on an error (as `cmp` and `diff` do).

use std::path::PathBuf;

use clap::Args;
use serde_json::json;
use siamese_gpu::Gpu;
use siamese_gpu::data::pairs_file;
use siamese_gpu::data::sampler::PairBatch;
use siamese_gpu::error::{Error, Result};
use siamese_gpu::eval::embed::Embedder;
use siamese_gpu::eval::protocol::pair_scores;
use siamese_gpu::model::ModelTensors;
use siamese_gpu::ops::gather;
use siamese_gpu::runs::json::decision_json;
use siamese_gpu::runs::saved::SavedRun;
use siamese_gpu::vocab::{LossKind, OnBadImage};

#[derive(Args)]
#[command(
    after_help = "Exit status: 0 when every pair is Same, 1 when any pair is Different, \
                        2 on an error."
)]
pub struct CompareArgs {
    /// The run directory of `train --out` (or its model.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// The two images to compare.
    #[arg(
        value_names = ["A", "B"],
        num_args = 2,
        required_unless_present = "pairs",
        conflicts_with = "pairs"
    )]
    images: Vec<PathBuf>,
    /// Many pairs in one batch: a CSV of `path_a,path_b` lines (paths relative to the CSV's
    /// folder, or absolute; an optional `path_a,path_b` header).
    #[arg(long, value_name = "FILE.csv")]
    pairs: Option<PathBuf>,
    /// The stored threshold to decide at: accuracy, eer or far=RATE (one the run stored;
    /// `siamese eval --far RATE --store` adds one).
    #[arg(long, default_value = "accuracy", value_name = "POINT")]
    operating_point: String,
    /// One JSON object per pair on stdout: a, b, distance (or probability), threshold,
    /// decision (same | different), margin, operating_point.
    #[arg(long)]
    json: bool,
}

/// Compares the pairs; Ok(true) when every pair is Same.
pub fn run(args: &CompareArgs) -> Result<bool> {
    let run = SavedRun::load(&args.checkpoint)?;
    let point = run.operating_point(&args.operating_point)?.clone();
    let list = match &args.pairs {
        Some(file) => pairs_file::read_unlabelled(file)?,
        None => {
            let [a, b] = [&args.images[0], &args.images[1]];
            for path in [a, b] {
                if !path.is_file() {
                    return Err(Error::Data(format!("no image {}", path.display())));
                }
            }
            pairs_file::PairList::of_paths([(a.clone(), b.clone())])
        }
    };
    // Every image is needed: an unreadable one is an error naming it.
    let files = run.read_images(&list.images, OnBadImage::Stop, &mut |n| {
        eprintln!("note: {n}")
    })?;
    let gpu = Gpu::new()?;
    let [c, h, w] = run.model.config.input;
    let packed = gather::upload_images(&gpu, &files.pixels, list.images.len(), c * h * w)?;
    let values = ModelTensors::upload(&gpu, &run.model, &run.values)?;
    let chunk = list.images.len().min(500);
    let embedder = Embedder::new(&gpu, &run.model, &values, run.norm, chunk)?;
    let pairs = PairBatch {
        a: list.a.clone(),
        b: list.b.clone(),
        labels: Vec::new(),
    };
    let scores = pair_scores(
        &gpu,
        &values.params,
        &run.model,
        (&embedder, &packed),
        &pairs,
    )?;
    let bce = run.model.config.loss == LossKind::Bce;
    let mut all_same = true;
    for (k, &score) in scores.iter().enumerate() {
        let (a, b) = (
            list.images[list.a[k] as usize].display().to_string(),
            list.images[list.b[k] as usize].display().to_string(),
        );
        let mut verdict = decision_json(score, &point, bce);
        let same = verdict["decision"] == "same";
        all_same &= same;
        if args.json {
            verdict["a"] = json!(a);
            verdict["b"] = json!(b);
            println!("{verdict}");
            continue;
        }
        let what = if bce { "probability" } else { "distance" };
        let number = |key: &str| verdict[key].as_f64().unwrap_or(f64::NAN);
        // A distance is under its threshold when Same, a probability over it.
        let side = if same != bce { "under" } else { "over" };
        println!(
            "{a}  {b}  {what} {:.4}  threshold {:.4} ({})  → {} ({:.4} {side} the threshold)",
            number(what),
            number("threshold"),
            point.name,
            verdict["decision"].as_str().unwrap_or_default(),
            number("margin"),
        );
    }
    Ok(all_same)
}
