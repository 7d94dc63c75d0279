//! The JSON a run writes: `result.json` (the figures of a finished run, also the last line of
//! `--json`) and the events of `metrics.jsonl`.

use serde_json::{Value, json};

use crate::eval::operating_points::{FAR_CONFIDENCE, OperatingPoint};
use crate::train::{Progress, TrainConfig, TrainReport};
use crate::vocab::LossKind;

/// An f32 as JSON with its shortest decimal form (0.001, not 0.0010000000474974513).
pub fn num(v: f32) -> Value {
    v.to_string()
        .parse::<f64>()
        .map_or(Value::Null, |f| json!(f))
}

/// `result.json` of a finished run.
pub fn result_json(r: &TrainReport, cfg: &TrainConfig) -> Value {
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
        "operating_points": operating_points_json(&r.operating_points),
    })
}

/// The operating points as a list of objects: `name` (`accuracy`, `eer`, `far=RATE`),
/// `threshold`, the validation and test FAR and FRR, `test_threshold` (what the test pairs
/// would choose for the same target), and for FAR targets the certificate: the Different
/// pairs accepted of how many, and the upper bound with its confidence and method.
pub fn operating_points_json(points: &[OperatingPoint]) -> Value {
    let rate = |r: f64| if r.is_finite() { json!(r) } else { Value::Null };
    points
        .iter()
        .map(|p| {
            let mut o = json!({
                "name": p.name(),
                "threshold": num(p.threshold),
                "val_far": rate(p.val.far),
                "val_frr": rate(p.val.frr),
                "test_far": rate(p.test.far),
                "test_frr": rate(p.test.frr),
                "test_threshold": num(p.test_threshold),
            });
            if let Some(b) = p.far_bound {
                o["far_upper_bound"] = json!(b.upper);
                o["far_confidence"] = json!(FAR_CONFIDENCE);
                o["far_bound_method"] = json!("one-sided Clopper-Pearson");
                o["val_different_pairs"] = json!(b.different);
                o["val_false_accepts"] = json!(b.accepted);
            }
            o
        })
        .collect()
}

/// A stored operating point, as [`operating_points_json`] writes it: its name and threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPoint {
    pub name: String,
    pub threshold: f32,
}

/// A pair's verdict at a stored operating point, as `compare --json` and the server give
/// it: `distance` (a distance model's score, the f32 in its shortest form) or `probability`
/// (the BCE head's σ(−score)), the `threshold` in the same terms, `decision` (`same` when
/// the score is at most the point's threshold, else `different`), the `margin` to the
/// threshold and the `operating_point`'s name.
pub fn decision_json(score: f32, point: &StoredPoint, bce: bool) -> Value {
    let same = score <= point.threshold;
    let mut o = json!({
        "decision": if same { "same" } else { "different" },
        "operating_point": point.name,
    });
    if bce {
        let probability = |s: f32| 1.0 / (1.0 + f64::from(s).exp());
        let (p, t) = (probability(score), probability(point.threshold));
        o["probability"] = json!(p);
        o["threshold"] = json!(t);
        o["margin"] = json!((p - t).abs());
    } else {
        o["distance"] = num(score);
        o["threshold"] = num(point.threshold);
        o["margin"] = num((score - point.threshold).abs());
    }
    o
}

/// The points of [`operating_points_json`]'s text (None if it is not that list).
pub fn parse_operating_points(text: &str) -> Option<Vec<StoredPoint>> {
    let list: Value = serde_json::from_str(text).ok()?;
    list.as_array()?
        .iter()
        .map(|p| {
            Some(StoredPoint {
                name: p["name"].as_str()?.to_string(),
                threshold: p["threshold"].as_f64()? as f32,
            })
        })
        .collect()
}

/// One line of `metrics.jsonl`.
pub fn progress_json(p: &Progress) -> Value {
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
