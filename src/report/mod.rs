//! A run's report: `report.json` (the doctor's findings, the metrics and the evidence behind
//! them) and the plots, written into the run directory. Everything is written through a
//! temporary file and a rename, so a report on disk is whole or absent.

pub mod plots;

use std::io;
use std::path::Path;

use serde_json::{Value, json};

use crate::eval::doctor::{Diagnosis, Evidence, Finding, PairScores};
use crate::eval::embedding_metrics::EmbeddingMetrics;
use crate::eval::retrieval::{Protocol, RetrievalMetrics};
use crate::eval::verification::Verification;
use crate::files::write_atomic;
use crate::vocab::PairLabel;
use crate::vocab::PairwiseMetric;

/// The file names the report writes into a run directory.
pub const REPORT_FILE: &str = "report.json";

/// A finding as JSON: `{id, severity, message, advice}`.
pub fn finding_json(f: &Finding) -> Value {
    json!({"id": f.id, "severity": f.severity.to_string(), "message": f.message, "advice": f.advice})
}

/// A float as JSON, `null` when it is not a number (JSON has no NaN).
fn f(x: f64) -> Value {
    if x.is_finite() { json!(x) } else { Value::Null }
}

/// Quantiles of the finite scores of one label.
fn distribution(scores: &PairScores, label: PairLabel) -> Value {
    let v = scores.of(label);
    if v.is_empty() {
        return Value::Null;
    }
    let q = |p: f64| f(v[((v.len() - 1) as f64 * p).round() as usize] as f64);
    json!({"count": v.len(), "p05": q(0.05), "median": q(0.5), "p95": q(0.95)})
}

/// The evidence, summarised (curves and histograms are in the plots, not repeated here in
/// full; the per-step losses are in metrics.jsonl).
pub fn evidence_json(e: &Evidence) -> Value {
    let embeddings = e.embeddings.as_ref().map(|s| {
        json!({
            "count": s.count, "dim": s.dim,
            "mean_pairwise_distance": f(s.mean_pairwise_distance),
            "mean_norm": f(s.mean_norm),
            "effective_rank": f(s.effective_rank),
            "flat_dims": f(s.flat_dims()),
            "top_eigenvalues": s.eigenvalues.iter().take(10).map(|&x| f(x)).collect::<Vec<_>>(),
        })
    });
    json!({
        "embeddings": embeddings,
        "relu": e.relu.iter().map(|r| json!({
            "layer": r.layer, "units": r.units, "dead": r.dead, "is_output": r.is_output,
        })).collect::<Vec<_>>(),
        "gradient_norms": {
            "layers": e.layers,
            "initial_weight": e.initial_weight_norm.iter().map(|&x| f(x)).collect::<Vec<_>>(),
            "samples": e.grads.iter().map(|g| json!({
                "step": g.step,
                "grad": g.grad_norm.iter().map(|&x| f(x)).collect::<Vec<_>>(),
                "weight": g.weight_norm.iter().map(|&x| f(x)).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        },
        "val_distances": {
            "same": distribution(&e.val, PairLabel::Same),
            "different": distribution(&e.val, PairLabel::Different),
            "margin": e.margin,
            "threshold": f(e.val_threshold as f64),
        },
        "sampled_pairs": {"same": e.sampled_same, "total": e.sampled_pairs},
        "validations": e.validations.iter().map(|v| json!({
            "pairs": v.pairs, "loss": f(v.loss as f64), "val_pair_accuracy": f(v.accuracy),
            "val_roc_auc": f(v.roc_auc), "train_pair_accuracy": v.train_accuracy.map(f),
        })).collect::<Vec<_>>(),
        "diverged": e.diverged,
        "miner": e.miner.map(|m| m.to_string()),
    })
}

/// The verification metrics.
pub fn verification_json(e: &Evidence, test: &Verification) -> Value {
    json!({
        "test_pair_accuracy": f(test.accuracy),
        "threshold": f(test.threshold as f64),
        "test_roc_auc": f(test.roc_auc),
        "test_precision": f(test.precision),
        "test_recall": f(test.recall),
        "test_f1": f(test.f1),
        "test_eer": f(test.eer),
        "val_pair_accuracy": f(e.val_accuracy),
        "val_roc_auc": f(e.val_roc_auc),
        "train_pair_accuracy": e.train_accuracy.map(f),
    })
}

/// Retrieval metrics as JSON.
pub fn retrieval_json(r: &RetrievalMetrics) -> Value {
    json!({
        "precision_at_1": f(r.precision_at_1),
        "recall_at_k": r.recall_at_k.iter().map(|&(k, v)| json!({"k": k, "recall": f(v)})).collect::<Vec<_>>(),
        "r_precision": f(r.r_precision),
        "map_at_r": f(r.map_at_r),
        "queries": r.queries,
        "queries_without_match": r.queries_without_match,
        "references": r.references,
        "protocol": match r.protocol { Protocol::LeaveOneOut => "leave-one-out", Protocol::Gallery => "gallery" },
        "metric": match r.metric { PairwiseMetric::Euclidean => "euclidean", PairwiseMetric::Cosine => "cosine" },
        "query_sample": r.sample.map(|s| json!({"drawn": s.drawn, "of": s.of, "seed": s.seed})),
    })
}

/// The embedding metrics' sections of `metrics`: `retrieval`, `pixel_baseline`, `one_shot`.
pub fn embedding_metrics_json(m: &EmbeddingMetrics) -> Value {
    json!({
        "retrieval": retrieval_json(&m.retrieval),
        "pixel_baseline": m.pixel_baseline.as_ref().map(retrieval_json),
        "one_shot": m.one_shot.iter().map(|(n, r)| match r {
            Ok(o) => json!({"n": n, "accuracy": f(o.accuracy), "ci95": [f(o.ci95.0), f(o.ci95.1)],
                            "episodes": o.episodes, "seed": o.seed}),
            Err(e) => json!({"n": n, "accuracy": null, "why": e.to_string()}),
        }).collect::<Vec<_>>(),
    })
}

/// The whole report: findings, `metrics` (sections given by the caller), evidence, and the
/// plot files written beside it.
pub fn report_json(d: &Diagnosis, metrics: Value, plots: &[String]) -> Value {
    json!({
        "findings": d.findings.iter().map(finding_json).collect::<Vec<_>>(),
        "metrics": metrics,
        "evidence": evidence_json(&d.evidence),
        "plots": plots,
    })
}

/// Writes the plots and `report.json` into `dir`; returns the plot file names written.
/// A plot that cannot be drawn (no data for it) is left out, not written empty.
pub fn write_report(dir: &Path, d: &Diagnosis, metrics: Value) -> io::Result<Vec<String>> {
    let written = plots::write_all(dir, &d.evidence)?;
    let report = report_json(d, metrics, &written);
    let text = serde_json::to_string_pretty(&report).map_err(io::Error::other)?;
    write_atomic(&dir.join(REPORT_FILE), text.as_bytes())?;
    Ok(written)
}
