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
//! | `margin_too_large` | the margin cannot be met, or nearly every pair is still inside it |
//! | `inverted_labels` | Same pairs are farther apart than Different ones (AUC well below 0.5) |
//! | `chance_accuracy` | validation separates pairs no better than chance, or predicts one way |
//! | `overfitting` | training pairs scored far better than validation pairs |
//! | `pair_imbalance` | the sampled pairs are far from balanced Same / Different |
//! | `val_test_gap` | validation scored far better than test (a leak, or a shift) |
//!
//! The thresholds are constants below, each with its reason; they are set so that the
//! reference recipe reports nothing and each classic failure reports its finding.

use std::fmt;

use crate::eval::embedding_stats::EmbeddingStats;
use crate::vocab::Distance;
use crate::vocab::LossKind;
use crate::vocab::Miner;
use crate::vocab::PairLabel;

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
}

/// How far below 0.5 the validation AUC must fall to call the labels inverted: at least this,
/// and at least `AUC_NOISE` standard errors of the AUC of a chance model on that many pairs
/// (0.006 on 10,000 balanced pairs, 0.018 on 1,000), so sampling noise never fires it.
const INVERTED_BELOW_HALF: f64 = 0.05;
const AUC_NOISE: f64 = 4.0;
/// Up to this AUC (or this accuracy) the model is at chance: a weak but real model on
/// Fashion-MNIST reaches 0.85 AUC within a few dozen steps.
const CHANCE_AUC: f64 = 0.6;
const CHANCE_ACCURACY: f64 = 0.6;
/// A threshold that calls more than this share of balanced pairs one way is degenerate.
const ONE_WAY_SHARE: f64 = 0.95;
/// Collapse: the mean distance between two embeddings relative to their mean norm (about 1
/// for a healthy embedding: the reference recipe gives 1.04), and the effective rank.
const COLLAPSED_SPREAD: f64 = 1e-2;
const COLLAPSING_SPREAD: f64 = 0.15;
const COLLAPSED_RANK: f64 = 1.5;
/// Dead ReLUs: a layer with this share of silent units has lost most of its capacity.
const DEAD_WARN: f64 = 0.4;
const DEAD_FAIL: f64 = 0.9;
/// Vanishing: a layer's relative gradient ‖∇w‖/‖w‖ this far below the liveliest layer's.
const VANISHING_RATIO: f64 = 1e-4;
/// Exploding: weights grown this many times over their initial norm.
const WEIGHT_GROWTH: f64 = 20.0;
/// Exploding: the loss at the end this many times its value at the start.
const LOSS_GROWTH: f64 = 2.0;
/// Margins: shares of validation pairs on the wrong side of the margin.
const INSIDE_MARGIN_WARN: f64 = 0.9;
/// Overfitting: train accuracy minus validation accuracy.
const GAP_WARN: f64 = 0.1;
const GAP_FAIL: f64 = 0.2;
/// Validation accuracy minus test accuracy (same protocol, same kind of pairs).
const VAL_TEST_GAP: f64 = 0.1;
/// Share of Same pairs outside these bounds.
const IMBALANCE_WARN: (f64, f64) = (0.2, 0.8);
const IMBALANCE_FAIL: (f64, f64) = (0.05, 0.95);

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

fn median(sorted: &[f32]) -> Option<f64> {
    (!sorted.is_empty()).then(|| sorted[sorted.len() / 2] as f64)
}

/// Share of `sorted` values strictly below `x`.
fn share_below(sorted: &[f32], x: f64) -> f64 {
    let below = sorted.partition_point(|&v| (v as f64) < x);
    below as f64 / sorted.len().max(1) as f64
}

fn mean(v: &[f32]) -> f64 {
    v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64
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
    exploding(e, &mut out);
    labels_and_chance(e, &mut out);
    collapse(e, &mut out);
    dead_relus(e, &mut out);
    vanishing(e, &mut out);
    // Where the margin sits among the distances says something only about a model that
    // learns; on a broken one the distances reflect the breakage (the rule-based margin
    // failures, margin 0 or one that cannot be met, still fire).
    let broken = out.iter().any(|f| f.severity == Severity::Fail);
    margins(e, broken, &mut out);
    gaps(e, &mut out);
    imbalance(e, &mut out);
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}

fn exploding(e: &Evidence, out: &mut Vec<Finding>) {
    let advice = "Lower the learning rate (--lr) by 10× or more; with SGD add momentum only after \
                  it is stable. Check that inputs are normalised (pixels in [0, 1] or standardised).";
    if let Some(why) = &e.diverged {
        out.push(finding(
            "exploding_gradient",
            Severity::Fail,
            format!("training diverged: {why}"),
            advice,
        ));
        return;
    }
    let non_finite = e.grads.iter().any(|g| {
        g.grad_norm
            .iter()
            .chain(&g.weight_norm)
            .any(|v| !v.is_finite())
    });
    if non_finite {
        out.push(finding(
            "exploding_gradient",
            Severity::Fail,
            "a gradient or a weight stopped being a finite number".into(),
            advice,
        ));
        return;
    }
    if let Some(last) = e.grads.last() {
        let grown: Vec<(usize, f64)> = e
            .initial_weight_norm
            .iter()
            .zip(&last.weight_norm)
            .enumerate()
            .filter(|(_, (a, _))| **a > 0.0)
            .map(|(i, (a, b))| (i, b / a))
            .filter(|(_, r)| *r > WEIGHT_GROWTH)
            .collect();
        if let Some(&(i, r)) = grown.iter().max_by(|a, b| a.1.total_cmp(&b.1)) {
            out.push(finding(
                "exploding_gradient",
                Severity::Fail,
                format!(
                    "the weights of {} grew {r:.0}× over training (and {} layer(s) over {WEIGHT_GROWTH:.0}×): \
                     the updates are far too large",
                    e.layers.get(i).map_or("a layer", |s| s.as_str()),
                    grown.len()
                ),
                advice,
            ));
            return;
        }
    }
    let n = e.losses.len();
    if n >= 20 {
        let k = (n / 10).max(5);
        let (start, end) = (mean(&e.losses[..k]), mean(&e.losses[n - k..]));
        if start > 0.0 && end > LOSS_GROWTH * start {
            out.push(finding(
                "exploding_gradient",
                Severity::Warn,
                format!(
                    "the loss rose from {start:.4} to {end:.4} over training instead of falling"
                ),
                advice,
            ));
        }
    }
}

fn labels_and_chance(e: &Evidence, out: &mut Vec<Finding>) {
    let auc = e.val_roc_auc;
    if e.val.scores.is_empty() || !auc.is_finite() {
        return;
    }
    // Standard error of a chance model's AUC (Hanley & McNeil under the null).
    let n_same = e
        .val
        .labels
        .iter()
        .filter(|&&l| l == PairLabel::Same)
        .count() as f64;
    let n_diff = e.val.labels.len() as f64 - n_same;
    let se = ((n_same + n_diff + 1.0) / (12.0 * n_same * n_diff).max(1.0)).sqrt();
    if auc < 0.5 - INVERTED_BELOW_HALF.max(AUC_NOISE * se) {
        out.push(finding(
            "inverted_labels",
            Severity::Fail,
            format!(
                "Same pairs score as LESS alike than Different pairs: validation ROC AUC {auc:.3}, \
                 well below the 0.5 of chance. The model learned the pair labels backwards."
            ),
            "Check which value means Same in your pair labels: for the contrastive loss Same pairs \
             are pulled together (loss d²) and Different pairs pushed past the margin. A 1/0 label \
             whose meaning flipped between the data and the loss produces exactly this.",
        ));
        return;
    }
    let all: Vec<f32> = {
        let mut v: Vec<f32> = e
            .val
            .scores
            .iter()
            .copied()
            .filter(|s| s.is_finite())
            .collect();
        v.sort_by(f32::total_cmp);
        v
    };
    // Pairs called Same: score ≤ threshold.
    let called_same =
        all.partition_point(|&s| s <= e.val_threshold) as f64 / all.len().max(1) as f64;
    let one_way = !(1.0 - ONE_WAY_SHARE..=ONE_WAY_SHARE).contains(&called_same);
    if auc < CHANCE_AUC || e.val_accuracy < CHANCE_ACCURACY || one_way {
        let how = if one_way {
            format!(
                "; the chosen threshold calls {:.0}% of the (balanced) validation pairs Same",
                100.0 * called_same
            )
        } else {
            String::new()
        };
        out.push(finding(
            "chance_accuracy",
            Severity::Fail,
            format!(
                "validation pair accuracy {:.3} and ROC AUC {auc:.3}: the distances separate Same from \
                 Different pairs no better than chance{how}",
                e.val_accuracy
            ),
            "Check that each image's label belongs to that image (a shuffle of images and labels \
             out of step gives exactly 50%); that the loss sees the embeddings' distance, not a \
             constant; and that the learning rate is neither tiny nor huge. Look at the other \
             findings: a collapsed embedding or dead ReLUs also end here.",
        ));
    }
}

fn collapse(e: &Evidence, out: &mut Vec<Finding>) {
    let Some(s) = &e.embeddings else { return };
    let spread = s.mean_pairwise_distance / (s.mean_norm + 1e-12);
    let collapsed = s.mean_pairwise_distance == 0.0 || spread < COLLAPSED_SPREAD;
    let severity = if collapsed || s.effective_rank < COLLAPSED_RANK {
        Severity::Fail
    } else if spread < COLLAPSING_SPREAD {
        Severity::Warn
    } else {
        return;
    };
    {
        let what = if spread < COLLAPSING_SPREAD {
            format!(
                "the test embeddings are {} one point: the mean distance between two of them is \
                 {:.3e}, {:.1}% of their mean norm {:.3e} (a healthy embedding spreads about as far as \
                 it is long)",
                if collapsed {
                    "(nearly)"
                } else {
                    "closing in on"
                },
                s.mean_pairwise_distance,
                100.0 * spread,
                s.mean_norm
            )
        } else {
            format!(
                "the test embeddings spread along about one direction (effective rank {:.2} of {} \
                 dimensions)",
                s.effective_rank, s.dim
            )
        };
        let advice = if e.miner == Some(Miner::BatchHard) {
            "Batch-hard mining from scratch is known to collapse: the hardest positive and negative \
             of an untrained embedding are best served by shrinking everything. Use --miner \
             semi-hard or batch-all, or start from a model trained on random triplets, or lower \
             the learning rate."
        } else {
            "The loss is satisfied by mapping everything to the same place: give the contrastive or \
             triplet loss a margin > 0 (e.g. 1.0, or 0.2 with --normalize-embeddings), check that \
             Different pairs are sampled, and that no ReLU ends the tower (see dead_relu)."
        };
        out.push(finding("embedding_collapse", severity, what, advice));
    }
}

fn dead_relus(e: &Evidence, out: &mut Vec<Finding>) {
    let worst = e
        .relu
        .iter()
        .max_by(|a, b| a.dead_fraction().total_cmp(&b.dead_fraction()));
    let Some(worst) = worst else { return };
    let frac = worst.dead_fraction();
    let output_dead = e
        .relu
        .iter()
        .any(|r| r.is_output && r.dead_fraction() >= 0.5);
    let severity = if frac >= DEAD_FAIL || output_dead {
        Severity::Fail
    } else if frac >= DEAD_WARN {
        Severity::Warn
    } else {
        return;
    };
    let list = e
        .relu
        .iter()
        .filter(|r| r.dead > 0)
        .map(|r| format!("{}: {}/{}", r.layer, r.dead, r.units))
        .collect::<Vec<_>>()
        .join(", ");
    out.push(finding(
        "dead_relu",
        severity,
        format!(
            "{:.0}% of the units of {} never activate on validation images (dead units per layer: {list})",
            100.0 * frac,
            worst.layer
        ),
        "A dead ReLU passes no gradient and never recovers. Lower the learning rate; do not end the \
         tower with a ReLU (an embedding should be free to take negative values); or use a leaky \
         activation.",
    ));
}

fn vanishing(e: &Evidence, out: &mut Vec<Finding>) {
    if e.grads.is_empty() || e.layers.is_empty() {
        return;
    }
    // The last quarter of training: what the gradients settled to.
    let recent = &e.grads[e.grads.len() - e.grads.len().div_ceil(4)..];
    let recent_median = |f: &dyn Fn(&GradSample) -> f64| {
        let mut v: Vec<f64> = recent.iter().map(f).filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let grad: Vec<f64> = (0..e.layers.len())
        .map(|i| recent_median(&|g| g.grad_norm[i]))
        .collect();
    let relative: Vec<f64> = (0..e.layers.len())
        .map(|i| recent_median(&|g| g.grad_norm[i] / g.weight_norm[i].max(1e-30)))
        .collect();
    let advice = "When no gradient flows, the loss is flat: look for dead ReLUs or a collapsed \
                  embedding (their findings), a margin of 0, or a saturated sigmoid/tanh stack. \
                  Use ReLU towers with He initialisation, fewer saturating layers, or normalisation.";
    let zero: Vec<&str> = grad
        .iter()
        .zip(&e.layers)
        .filter(|(g, _)| **g <= 1e-12)
        .map(|(_, n)| n.as_str())
        .collect();
    if !zero.is_empty() {
        out.push(finding(
            "vanishing_gradient",
            Severity::Fail,
            format!(
                "no gradient reaches {} (median gradient norm 0 over the last quarter of training)",
                zero.join(", ")
            ),
            advice,
        ));
        return;
    }
    let top = relative.iter().cloned().fold(0.0, f64::max);
    if let Some((i, r)) = relative
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(b.1))
        .filter(|(_, r)| **r < VANISHING_RATIO * top)
    {
        out.push(finding(
            "vanishing_gradient",
            Severity::Warn,
            format!(
                "the gradient reaching {} is {r:.2e} of its weights' norm, {:.0e}× less than the \
                 liveliest layer's {top:.2e}: it barely learns",
                e.layers[i],
                top / r.max(1e-300)
            ),
            advice,
        ));
    }
}

fn margins(e: &Evidence, broken: bool, out: &mut Vec<Finding>) {
    let Some(loss) = e.loss else { return };
    if loss == LossKind::Bce {
        return;
    }
    let m = margin_f64(e.margin);
    if m == 0.0 {
        out.push(finding(
            "margin_too_small",
            Severity::Fail,
            format!(
                "the {loss} loss has margin 0: {}",
                if loss == LossKind::Contrastive {
                    "Different pairs are never pushed apart, so mapping every image to one point is a perfect solution"
                } else {
                    "a triplet is satisfied as soon as the negative is no closer than the positive, so the embedding need not separate classes"
                }
            ),
            "Give the loss a margin: 1.0 for the contrastive loss on unnormalised embeddings, 0.2–0.5 \
             with --normalize-embeddings.",
        ));
        return;
    }
    // The largest distance two L2-normalised embeddings can have.
    let bound = match (e.normalized, e.distance) {
        (true, Some(Distance::Euclidean) | Some(Distance::Cosine)) => Some(2.0),
        (true, Some(Distance::SquaredEuclidean)) => Some(4.0),
        (_, Some(Distance::Cosine)) => Some(2.0),
        _ => None,
    };
    let advice_large = "Lower the margin to where it can be met: at most ~1.0 for normalised \
                        embeddings (distances lie in [0, 2]), or leave the embeddings unnormalised.";
    if let Some(b) = bound
        && m >= b
    {
        out.push(finding(
            "margin_too_large",
            Severity::Fail,
            format!(
                "margin {m} is at least the largest possible distance ({b}) between these embeddings: \
                 no pair can ever satisfy it, so every pair keeps a loss and a gradient"
            ),
            advice_large,
        ));
        return;
    }
    let (same, diff) = (e.val.of(PairLabel::Same), e.val.of(PairLabel::Different));
    if same.is_empty() || diff.is_empty() || broken {
        return;
    }
    match loss {
        LossKind::Contrastive => {
            let inside = share_below(&diff, m);
            if inside > INSIDE_MARGIN_WARN {
                out.push(finding(
                    "margin_too_large",
                    Severity::Warn,
                    format!(
                        "{:.0}% of the Different validation pairs are still inside the margin {m} at the \
                         end of training: the margin sits beyond the negative distance distribution \
                         (median {:.3}), so the push apart dominates the loss",
                        100.0 * inside,
                        median(&diff).unwrap_or(0.0)
                    ),
                    advice_large,
                ));
            }
            let same_median = median(&same).unwrap_or(0.0);
            if same_median > m {
                out.push(finding(
                    "margin_too_small",
                    Severity::Warn,
                    format!(
                        "half the Same validation pairs are farther apart ({same_median:.3}) than the \
                         margin {m}: Different pairs count as separated at distances where Same pairs \
                         still sit"
                    ),
                    "Raise the margin towards the scale of the distances (see the distance histogram), \
                     or normalise the embeddings and use a margin of 0.5–1.0.",
                ));
            }
        }
        LossKind::Triplet => {
            // Share of (positive, negative) combinations closer than the margin: the
            // validation stand-in for the share of active triplets.
            let active = same
                .iter()
                .map(|&p| share_below(&diff, p as f64 + m))
                .sum::<f64>()
                / same.len() as f64;
            if active > INSIDE_MARGIN_WARN {
                out.push(finding(
                    "margin_too_large",
                    Severity::Warn,
                    format!(
                        "{:.0}% of validation (Same, Different) distance combinations still violate the \
                         margin {m}: almost every triplet keeps a loss",
                        100.0 * active
                    ),
                    advice_large,
                ));
            }
            let diff_median = median(&diff).unwrap_or(0.0);
            if m < 0.01 * diff_median {
                out.push(finding(
                    "margin_too_small",
                    Severity::Warn,
                    format!(
                        "margin {m} is under 1% of the typical Different-pair distance ({diff_median:.3}): \
                         triplets are satisfied by a hair"
                    ),
                    "Normalise the embeddings (--normalize-embeddings) and use a margin of 0.1–0.5.",
                ));
            }
        }
        LossKind::Bce => {}
    }
}

fn gaps(e: &Evidence, out: &mut Vec<Finding>) {
    if let Some(train) = e.train_accuracy {
        let gap = train - e.val_accuracy;
        if gap > GAP_WARN {
            out.push(finding(
                "overfitting",
                if gap > GAP_FAIL {
                    Severity::Fail
                } else {
                    Severity::Warn
                },
                format!(
                    "training pairs score {train:.3} but validation pairs {:.3}: a gap of {gap:.3}; \
                     the model memorises its training images",
                    e.val_accuracy
                ),
                "Train on more images, or for fewer steps (watch validation in metrics.jsonl); add \
                 augmentation (--rotation-range, --width-shift-range, …), weight decay, or a smaller \
                 embedding.",
            ));
        }
    }
    if let Some(test) = e.test_accuracy {
        let gap = e.val_accuracy - test;
        if gap > VAL_TEST_GAP {
            let (severity, why) = if e.class_disjoint {
                (
                    Severity::Info,
                    "expected in part: test classes were never seen in training",
                )
            } else {
                (
                    Severity::Warn,
                    "validation may share images or near-duplicates with training (a split leak), \
                     or test images come from another distribution",
                )
            };
            let advice = if e.class_disjoint {
                "On unseen classes a threshold chosen on seen ones transfers poorly: read the test \
                 ROC AUC and the retrieval figures, which need no threshold; more training classes \
                 or a normalised embedding usually generalise better."
            } else {
                "Make sure validation images are held out of training and drawn like the test set."
            };
            out.push(finding(
                "val_test_gap",
                severity,
                format!(
                    "validation pairs score {:.3} but test pairs {test:.3}: {why}",
                    e.val_accuracy
                ),
                advice,
            ));
        }
    }
}

fn imbalance(e: &Evidence, out: &mut Vec<Finding>) {
    if e.sampled_pairs == 0 {
        return;
    }
    let same = e.sampled_same as f64 / e.sampled_pairs as f64;
    let severity = if !(IMBALANCE_FAIL.0..=IMBALANCE_FAIL.1).contains(&same) {
        Severity::Fail
    } else if !(IMBALANCE_WARN.0..=IMBALANCE_WARN.1).contains(&same) {
        Severity::Warn
    } else {
        return;
    };
    out.push(finding(
        "pair_imbalance",
        severity,
        format!(
            "{:.1}% of the {} training pairs were Same pairs: the loss mostly sees one kind",
            100.0 * same,
            e.sampled_pairs
        ),
        "Sample Same and Different pairs about equally (--positive-fraction 0.5); with many \
         classes, pairs drawn at random are nearly all Different.",
    ));
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
}
