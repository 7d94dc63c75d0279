//! `--pairs-file FILE --images DIR` of `eval` and `train`: a trained model scored on pairs the
//! user names (LFW's `pairs.txt` or a CSV, see `data::pairs_file`): ROC AUC and equal error rate
//! over all pairs, and LFW's k-fold accuracy (`--folds K`, or the file's own folds) — each
//! fold scored at the threshold best on the others — or, for a file without folds, the
//! accuracy at the threshold the run's validation pairs choose.

use std::path::{Path, PathBuf};

use clap::Args;

use serde_json::{Value, json};
use siamese_gpu::Gpu;
use siamese_gpu::data::image_folder;
use siamese_gpu::data::images::DataOptions;
use siamese_gpu::data::pairs_file;
use siamese_gpu::data::sampler::PairBatch;
use siamese_gpu::error::{Error, Result};
use siamese_gpu::eval::embed::Embedder;
use siamese_gpu::eval::folds::{contiguous_folds, k_fold_accuracy};
use siamese_gpu::eval::protocol::{PairProtocol, pair_scores};
use siamese_gpu::eval::verification::{equal_error_rate, pair_accuracy, roc_auc};
use siamese_gpu::model::ModelTensors;
use siamese_gpu::ops::gather;
use siamese_gpu::runs::json::num;
use siamese_gpu::runs::saved::SavedRun;
use siamese_gpu::vocab::{OnBadImage, PairLabel};

/// The flags that name a pairs file, shared by `eval` and `train`.
#[derive(Args)]
pub struct PairsFileArgs {
    /// Score the pairs this file names: LFW's pairs.txt (`FOLDS N` header, `name i j` and
    /// `name1 i name2 j` lines) or a .csv of path_a,path_b,same|different (eval: instead of
    /// the run's dataset; train: after training, beside its test figures).
    #[arg(long, value_name = "FILE", requires = "images")]
    pub pairs_file: Option<PathBuf>,
    /// Where the pairs file's images are (LFW: <name>/<name>_NNNN.jpg|png).
    #[arg(long, value_name = "DIR", requires = "pairs_file")]
    pub images: Option<PathBuf>,
    /// LFW-style k-fold accuracy of the pairs file, each fold at the threshold best on the
    /// others [default: the file's own folds; without any, the run's validation threshold].
    #[arg(long, value_name = "K", requires = "pairs_file")]
    pub folds: Option<usize>,
}

impl PairsFileArgs {
    /// The pairs file's figures for `run` (printed, and as JSON), None without a file.
    pub fn evaluate(
        &self,
        gpu: &Gpu,
        run: &SavedRun,
        data: Option<&Path>,
    ) -> Result<Option<Value>> {
        match (&self.pairs_file, &self.images) {
            (Some(file), Some(images)) => {
                evaluate(gpu, run, (file, images), self.folds, data).map(Some)
            }
            _ => Ok(None),
        }
    }
}

/// Scores the pairs of `file` (images under `images`) with the model of `run`; `folds`
/// overrides the file's own. Returns the figures as JSON after printing them.
fn evaluate(
    gpu: &Gpu,
    run: &SavedRun,
    (file, images): (&Path, &Path),
    folds: Option<usize>,
    data: Option<&Path>,
) -> Result<Value> {
    let list = pairs_file::read(file, images)?;
    let folds = match (folds, list.fold_count) {
        (Some(k), _) if k < 2 || k > list.len() => {
            return Err(Error::Config(format!(
                "--folds {k}: k-fold accuracy needs 2 to {} folds (one pair each at least)",
                list.len()
            )));
        }
        (Some(k), n) if n > 1 && k != n => {
            return Err(Error::Config(format!(
                "--folds {k}: {} has {n} folds of its own; leave --folds out to use them",
                file.display()
            )));
        }
        (Some(k), _) => Some(k),
        (None, n) if n > 1 => Some(n),
        (None, _) => None,
    };
    let [c, h, w] = run.model.config.input;
    // Every image a pair names is needed: an unreadable one stops the scoring.
    let options = DataOptions {
        on_bad_image: OnBadImage::Stop,
        ..run.read_options()?
    };
    let pixels = image_folder::decode_files(&list.images, &options, [h, w])?.pixels;
    let packed = gather::upload_images(gpu, &pixels, list.images.len(), c * h * w)?;
    let values = ModelTensors::upload(gpu, &run.model, &run.values)?;
    let embedder = Embedder::new(gpu, &run.model, &values, run.norm, 500)?;
    let pairs = PairBatch {
        a: list.a.clone(),
        b: list.b.clone(),
        labels: list.labels.clone(),
    };
    let same = list
        .labels
        .iter()
        .filter(|&&l| l == PairLabel::Same)
        .count();
    println!(
        "pairs: {} ({same} Same, {} Different) from {}, {} images under {}",
        list.len(),
        list.len() - same,
        file.display(),
        list.images.len(),
        images.display()
    );
    let mut result = json!({"pairs_file": file.display().to_string(), "pairs": list.len()});
    let scores = pair_scores(
        gpu,
        &values.params,
        &run.model,
        (&embedder, &packed),
        &pairs,
    )?;
    match folds {
        Some(k) => {
            let fold_of = if list.folds.is_empty() || list.fold_count != k {
                contiguous_folds(list.len(), k)
            } else {
                list.folds.clone()
            };
            let r = k_fold_accuracy(&scores, &list.labels, &fold_of, k);
            println!(
                "{k}-fold accuracy {:.4} ± {:.4} (each fold at the threshold best on the other {}; std over the folds)",
                r.mean,
                r.std,
                k - 1
            );
            result["folds"] = json!(k);
            result["fold_accuracy_mean"] = json!(r.mean);
            result["fold_accuracy_std"] = json!(r.std);
            result["fold_accuracies"] = json!(r.accuracies);
            result["fold_thresholds"] =
                json!(r.thresholds.iter().map(|&t| num(t)).collect::<Vec<_>>());
        }
        None => {
            // The run's own validation pairs choose the threshold, as in training.
            let sets = run.dataset(data, None, &mut |w| eprintln!("warning: {w}"))?;
            let val =
                gather::upload_images(gpu, &sets.val.images, sets.val.count, sets.val.pixels())?;
            let protocol = PairProtocol::new(
                gpu,
                &values.params,
                &run.model,
                (&sets.val.labels, run.settings.val_pairs),
                (&sets.val.labels, 0),
            );
            let v = protocol.validate(&embedder, &val)?;
            let accuracy = pair_accuracy(&scores, &list.labels, v.threshold);
            println!(
                "pair accuracy {accuracy:.4} at threshold {:.4} (chosen on the run's validation pairs)",
                v.threshold
            );
            result["pair_accuracy"] = json!(accuracy);
            result["threshold"] = num(v.threshold);
        }
    }
    let (eer, _) = equal_error_rate(&scores, &list.labels);
    let auc = roc_auc(&scores, &list.labels);
    println!("ROC AUC {auc:.4}, equal error rate {eer:.4}");
    result["roc_auc"] = json!(auc);
    result["eer"] = json!(eer);
    result["adapter"] = json!(gpu.adapter().name);
    Ok(result)
}
