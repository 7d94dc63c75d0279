//! The JSON a run writes: `result.json` (the figures of a finished run, also the last line of
//! `--json`) and the events of `metrics.jsonl`.

use serde_json::{Value, json};

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
    })
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
