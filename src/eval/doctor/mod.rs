//! The doctor: why a Siamese run fails, in plain words.
//!
//! The trainer gathers [`Evidence`] during and after a run (loss curve, per-layer gradient
//! norms, ReLU activity on validation images, the spread of the test embeddings, the
//! validation distance distributions, train and validation accuracy, the pairs it sampled)
//! and [`diagnose`] turns it into [`Finding`]s, each with a stable id, a severity, what was
//! seen and what to try. The ids are part of the interface (README, `report.json`):
//!
//! | id | fires when |
//! |---|---|
//! | `embedding_collapse` | test embeddings (nearly) one point, or spread along ~1 direction |
//! | `dead_relu` | a ReLU layer has units that never activate on validation images |
//! | `vanishing_gradient` | no gradient (or a vanishing one) reaches a layer |
//! | `exploding_gradient` | the loss or the weights blew up |
//! | `margin_too_small` | margin 0, or Same pairs sit farther apart than the margin |
//! | `margin_too_large` | the margin cannot be met, or nearly every pair is still inside it (ArcFace: m ≥ π/2; CosFace: m ≥ 1) |
//! | `inverted_labels` | Same pairs are farther apart than Different ones (AUC well below 0.5) |
//! | `chance_accuracy` | validation separates pairs no better than chance, or predicts one way |
//! | `overfitting` | training pairs scored far better than validation pairs |
//! | `pair_imbalance` | the sampled pairs are far from balanced Same / Different |
//! | `val_test_gap` | validation scored far better than test (a leak, or a shift) |
//! | `batchnorm_small_batch` | BatchNorm takes its statistics over fewer than 8 images a step |
//! | `batchnorm_drift` | BatchNorm's running statistics do not describe the evaluation images |
//! | `scale_too_small` | ArcFace/CosFace's scale lets no class reach p = 0.9 in the softmax |
//! | `temperature_too_low` | SupCon/NT-Xent's τ hands the gradient to the hardest negatives |
//! | `class_centers_collapsed` | two classes' learned weights or proxies point the same way |
//! | `xbm_stale` | the cross-batch memory holds embeddings the tower has moved away from |
//!
//! The rules live beside this file, grouped by what they read: `gradients` (the loss curve
//! and the gradient and weight norms), `embeddings` (the test embeddings' spread and the
//! ReLU activity), `separation` (how the validation distances rank Same against Different),
//! `margins` (where the margin sits among those distances), `data` (the train, validation
//! and test accuracies, and the pairs sampled), `normalization` (BatchNorm's batch and
//! running statistics) and `class_losses` (the hyper-parameters and learned class weights of
//! the losses on cosine similarities). The thresholds are constants there, each with
//! its reason; they are set so that the reference recipe reports nothing and each classic
//! failure reports its finding.

mod class_losses;
mod data;
mod embeddings;
mod gradients;
mod margins;
mod normalization;
mod separation;

pub use class_losses::{CenterSpread, MemoryDrift};
pub use normalization::BatchNormUse;

use std::fmt;

use crate::eval::embedding_stats::EmbeddingStats;
use crate::vocab::Distance;
use crate::vocab::LossKind;
use crate::vocab::Miner;
use crate::vocab::PairLabel;
use crate::vocab::SimilarityLoss;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Info,
    Warn,
    Fail,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warn => "warn",
            Severity::Fail => "fail",
        })
    }
}

/// One diagnosis: a stable id, how bad, what was seen, what to try.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub id: &'static str,
    pub severity: Severity,
    pub message: String,
    pub advice: String,
}

/// Gradient and weight norms of every layer at one step.
#[derive(Debug, Clone, PartialEq)]
pub struct GradSample {
    pub step: usize,
    /// ‖∇w‖ of each layer (weights and bias together), in [`Evidence::layers`] order.
    pub grad_norm: Vec<f64>,
    /// ‖w‖ of each layer.
    pub weight_norm: Vec<f64>,
}

/// How many units of one ReLU layer never activated on the probe images.
#[derive(Debug, Clone, PartialEq)]
pub struct ReluActivity {
    /// The layer's place in the tower, e.g. `relu after conv 2` or `relu 3 (embedding)`.
    pub layer: String,
    /// Units: channels of a conv feature map, features of a dense layer.
    pub units: usize,
    pub dead: usize,
    /// Whether this ReLU is the tower's last layer (its output is the embedding).
    pub is_output: bool,
}

impl ReluActivity {
    pub fn dead_fraction(&self) -> f64 {
        self.dead as f64 / self.units.max(1) as f64
    }
}

/// Distances (or scores: lower means Same) of labelled pairs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PairScores {
    pub scores: Vec<f32>,
    pub labels: Vec<PairLabel>,
}

impl PairScores {
    /// The scores of the pairs labelled `label`, finite ones only, sorted ascending.
    pub fn of(&self, label: PairLabel) -> Vec<f32> {
        let mut v: Vec<f32> = self
            .scores
            .iter()
            .zip(&self.labels)
            .filter(|(s, l)| **l == label && s.is_finite())
            .map(|(s, _)| *s)
            .collect();
        v.sort_by(f32::total_cmp);
        v
    }
}

/// One validation pass during training.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValidationPoint {
    /// Training samples seen when it ran.
    pub pairs: usize,
    /// Mean training loss since the previous pass.
    pub loss: f32,
    pub accuracy: f64,
    pub roc_auc: f64,
    /// Training pairs scored the same way, at their own best threshold.
    pub train_accuracy: Option<f64>,
}

/// Everything the doctor reads about a run (and the report draws).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evidence {
    pub loss: Option<LossKind>,
    pub margin: f32,
    /// The triplet miner, if the run mined its triplets.
    pub miner: Option<Miner>,
    pub distance: Option<Distance>,
    /// Embeddings L2-normalised before the distance.
    pub normalized: bool,
    /// Every step's loss, in order.
    pub losses: Vec<f32>,
    /// Why the run stopped early, if the loss or the weights stopped being numbers.
    pub diverged: Option<String>,
    /// Every validation pass, in order.
    pub validations: Vec<ValidationPoint>,
    /// Names of the layers with weights, in tower order (the head last, if any).
    pub layers: Vec<String>,
    pub grads: Vec<GradSample>,
    /// ‖w‖ of each layer before the first step.
    pub initial_weight_norm: Vec<f64>,
    pub relu: Vec<ReluActivity>,
    /// The test embeddings' spread.
    pub embeddings: Option<EmbeddingStats>,
    /// The last validation pass: its pair scores, accuracy at its best threshold, the
    /// threshold, and ROC AUC.
    pub val: PairScores,
    pub val_accuracy: f64,
    pub val_threshold: f32,
    pub val_roc_auc: f64,
    /// Training pairs scored the same way (accuracy at their own best threshold).
    pub train_accuracy: Option<f64>,
    /// Test accuracy at the validation threshold, and the test pair scores.
    pub test_accuracy: Option<f64>,
    pub test: PairScores,
    /// The test embeddings projected on their first two principal components (a seeded
    /// sample of them), with their labels, and the share of variance the two explain.
    pub pca: Vec<[f32; 2]>,
    pub pca_labels: Vec<u8>,
    /// The name of each test label.
    pub test_classes: Vec<String>,
    pub pca_explained: f64,
    /// Test classes are unseen in training (class-disjoint evaluation).
    pub class_disjoint: bool,
    /// Same pairs and all pairs the training sampler drew (pair losses only).
    pub sampled_same: u64,
    pub sampled_pairs: u64,
    /// Every BatchNorm layer, in tower order.
    pub batch_norm: Vec<BatchNormUse>,
    /// The loss on cosine similarities, with its hyper-parameters, if the run trained one.
    pub similarity: Option<SimilarityLoss>,
    /// Classes of the training labels.
    pub classes: usize,
    /// Images a training step embeds.
    pub batch_images: usize,
    /// How spread the learned class weights or proxies ended, if the loss learns them.
    pub class_centers: Option<CenterSpread>,
    /// How stale the cross-batch memory ended, if the run kept one.
    pub memory_drift: Option<MemoryDrift>,
}

fn finding(id: &'static str, severity: Severity, message: String, advice: &str) -> Finding {
    Finding {
        id,
        severity,
        message,
        advice: advice.to_string(),
    }
}

/// An f32 setting as the f64 it was written as (0.2, not 0.20000000298023224), for
/// comparisons and messages alike.
pub fn margin_f64(m: f32) -> f64 {
    m.to_string().parse().unwrap_or(m as f64)
}

/// A run's evidence and what the doctor made of it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Diagnosis {
    pub evidence: Evidence,
    pub findings: Vec<Finding>,
}

impl Diagnosis {
    pub fn new(evidence: Evidence) -> Self {
        let findings = diagnose(&evidence);
        Diagnosis { evidence, findings }
    }

    /// Whether any finding is a failure.
    pub fn failed(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Fail)
    }
}

impl fmt::Display for Diagnosis {
    /// The terminal summary: one block per finding, worst first.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.findings.is_empty() {
            return write!(f, "doctor: no problems found");
        }
        write!(f, "doctor: {} finding(s)", self.findings.len())?;
        for x in &self.findings {
            write!(
                f,
                "\n  [{}] {}: {}\n         try: {}",
                x.severity, x.id, x.message, x.advice
            )?;
        }
        Ok(())
    }
}

/// Every finding the evidence supports, the worst first.
pub fn diagnose(e: &Evidence) -> Vec<Finding> {
    let mut out = Vec::new();
    gradients::exploding(e, &mut out);
    separation::labels_and_chance(e, &mut out);
    embeddings::collapse(e, &mut out);
    embeddings::dead_relus(e, &mut out);
    gradients::vanishing(e, &mut out);
    // Where the margin sits among the distances says something only about a model that
    // learns; on a broken one the distances reflect the breakage (the rule-based margin
    // failures, margin 0 or one that cannot be met, still fire).
    let broken = out.iter().any(|f| f.severity == Severity::Fail);
    margins::margins(e, broken, &mut out);
    data::gaps(e, &mut out);
    data::imbalance(e, &mut out);
    normalization::batch_norm(e, &mut out);
    class_losses::class_losses(e, &mut out);
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Evidence of a healthy contrastive run: Same pairs near 0.3, Different near 1.2 with a
    /// margin of 1, lively gradients, no dead units, a spread embedding.
    fn healthy() -> Evidence {
        let mut val = PairScores::default();
        for i in 0..500 {
            let t = i as f32 / 500.0;
            val.scores.push(0.1 + 0.4 * t);
            val.labels.push(PairLabel::Same);
            val.scores.push(0.45 + 1.2 * t);
            val.labels.push(PairLabel::Different);
        }
        Evidence {
            loss: Some(LossKind::Contrastive),
            margin: 1.0,
            distance: Some(Distance::Euclidean),
            losses: (0..100).map(|i| 0.2 - 0.001 * i as f32).collect(),
            layers: vec!["conv".into(), "dense".into()],
            grads: vec![GradSample {
                step: 100,
                grad_norm: vec![0.2, 0.3],
                weight_norm: vec![3.0, 6.0],
            }],
            initial_weight_norm: vec![2.5, 5.0],
            relu: vec![ReluActivity {
                layer: "the ReLU after conv 1".into(),
                units: 32,
                dead: 2,
                is_output: false,
            }],
            embeddings: Some(EmbeddingStats {
                count: 100,
                dim: 4,
                mean_pairwise_distance: 0.9,
                mean_norm: 0.86,
                dim_variance: vec![0.1; 4],
                effective_rank: 3.5,
                eigenvalues: vec![0.1; 4],
            }),
            val,
            val_accuracy: 0.87,
            val_threshold: 0.5,
            val_roc_auc: 0.93,
            train_accuracy: Some(0.88),
            test_accuracy: Some(0.86),
            sampled_same: 5000,
            sampled_pairs: 10_000,
            ..Default::default()
        }
    }

    fn ids(e: &Evidence) -> Vec<&'static str> {
        diagnose(e).iter().map(|f| f.id).collect()
    }

    #[test]
    fn healthy_evidence_gives_no_finding() {
        assert_eq!(diagnose(&healthy()), vec![]);
    }

    #[test]
    fn each_rule_fires_on_its_failure_alone() {
        let mut e = healthy();
        e.margin = 0.0;
        assert_eq!(ids(&e), ["margin_too_small"]);

        let mut e = healthy();
        e.normalized = true;
        e.margin = 2.5;
        assert_eq!(ids(&e), ["margin_too_large"]);

        let mut e = healthy();
        e.sampled_same = 300;
        assert_eq!(ids(&e), ["pair_imbalance"]);
        assert_eq!(diagnose(&e)[0].severity, Severity::Fail);
        e.sampled_same = 1500;
        assert_eq!(diagnose(&e)[0].severity, Severity::Warn);

        let mut e = healthy();
        e.train_accuracy = Some(0.99);
        assert_eq!(ids(&e), ["overfitting"]);
        assert_eq!(diagnose(&e)[0].severity, Severity::Warn);

        let mut e = healthy();
        e.test_accuracy = Some(0.7);
        assert_eq!(ids(&e), ["val_test_gap"]);
        e.class_disjoint = true;
        assert_eq!(diagnose(&e)[0].severity, Severity::Info);

        let mut e = healthy();
        e.relu[0].dead = 30;
        assert_eq!(ids(&e), ["dead_relu"]);
        e.relu[0].dead = 14;
        assert_eq!(diagnose(&e)[0].severity, Severity::Warn);

        let mut e = healthy();
        e.grads[0].grad_norm[0] = 0.0;
        assert_eq!(ids(&e), ["vanishing_gradient"]);
        e.grads[0].grad_norm[0] = 1e-7;
        assert_eq!(diagnose(&e)[0].severity, Severity::Warn);

        let mut e = healthy();
        e.grads[0].weight_norm[1] = 500.0;
        assert_eq!(ids(&e), ["exploding_gradient"]);
        let mut e = healthy();
        e.diverged = Some("the loss became NaN".into());
        assert_eq!(ids(&e), ["exploding_gradient"]);

        let mut e = healthy();
        e.embeddings.as_mut().unwrap().mean_pairwise_distance = 0.05;
        assert_eq!(ids(&e), ["embedding_collapse"]);
        assert_eq!(diagnose(&e)[0].severity, Severity::Warn);
        e.embeddings.as_mut().unwrap().mean_pairwise_distance = 0.0;
        assert_eq!(diagnose(&e)[0].severity, Severity::Fail);
    }

    #[test]
    fn auc_below_half_is_inversion_only_beyond_noise() {
        // 1,000 balanced pairs: a chance model's AUC has a standard error of 0.018, so the
        // line sits at 0.5 − 4·0.018 ≈ 0.427.
        let mut e = healthy();
        e.val_roc_auc = 0.44;
        e.val_accuracy = 0.55;
        e.train_accuracy = None;
        assert_eq!(ids(&e), ["chance_accuracy"]);
        e.val_roc_auc = 0.40;
        assert_eq!(ids(&e), ["inverted_labels"]);
    }

    #[test]
    fn a_threshold_calling_every_pair_one_way_is_chance() {
        let mut e = healthy();
        e.val_threshold = 10.0;
        assert_eq!(ids(&e), ["chance_accuracy"]);
        assert!(diagnose(&e)[0].message.contains("100%"));
    }

    #[test]
    fn margin_placement_is_read_from_the_distances() {
        // Every Different pair inside a margin of 3 (unnormalised: a warning, not a failure).
        let mut e = healthy();
        e.margin = 3.0;
        assert_eq!(ids(&e), ["margin_too_large"]);
        assert_eq!(diagnose(&e)[0].severity, Severity::Warn);
        // Same pairs mostly beyond a margin of 0.2.
        let mut e = healthy();
        e.margin = 0.2;
        assert_eq!(ids(&e), ["margin_too_small"]);
    }

    #[test]
    fn batch_norm_over_few_images_or_with_drifted_statistics_is_reported() {
        let layer = |images, shift, ratio| BatchNormUse {
            layer: "tower.1".into(),
            images,
            frozen: false,
            median_shift: Some(shift),
            median_var_ratio: Some(ratio),
        };
        let mut e = healthy();
        e.batch_norm = vec![layer(256, 0.05, 1.1)];
        assert_eq!(
            ids(&e),
            Vec::<&str>::new(),
            "a healthy BatchNorm says nothing"
        );

        e.batch_norm = vec![layer(4, 0.05, 1.1)];
        assert_eq!(ids(&e), ["batchnorm_small_batch"]);
        assert_eq!(diagnose(&e)[0].severity, Severity::Warn);
        assert!(diagnose(&e)[0].message.contains("over 4 images"));
        // A frozen layer takes no batch statistics, however small the batch.
        e.batch_norm[0].frozen = true;
        assert_eq!(ids(&e), Vec::<&str>::new());

        e.batch_norm = vec![layer(256, 2.5, 1.1)];
        assert_eq!(ids(&e), ["batchnorm_drift"]);
        e.batch_norm = vec![layer(256, 0.1, 6.0)];
        assert_eq!(ids(&e), ["batchnorm_drift"]);
        assert!(diagnose(&e)[0].message.contains("6.00× off"));
    }
}
