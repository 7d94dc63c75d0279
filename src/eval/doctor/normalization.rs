//! Rules on BatchNorm: statistics taken over too few images to mean anything
//! (`batchnorm_small_batch`), and running statistics that do not describe the data the model
//! is evaluated on (`batchnorm_drift`), the train/evaluation gap peculiar to BatchNorm.

use super::{Evidence, Finding, Severity, finding};

/// Images per batch statistic below which BatchNorm's mean and variance are too noisy to
/// train with (the usual advice, and where BatchNorm's error grows quickly in Wu & He 2018,
/// "Group Normalization", Fig. 1); below 2 a variance does not exist.
const SMALL_BATCH: usize = 8;
/// Drift: a channel's mean on validation images more than this many running standard
/// deviations from the running mean, or its variance off by this factor either way, in the
/// median channel of a layer: the median channel's values then land as far from where
/// training put them as they spread.
const DRIFT_SHIFT: f64 = 1.0;
const DRIFT_RATIO: f64 = 4.0;

/// One BatchNorm layer's statistics, as training uses them and as evaluation finds them.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNormUse {
    /// The layer's name, e.g. `tower.layer1.0.bn1`.
    pub layer: String,
    /// Images each training statistic is taken over (the step's batch; frozen layers use
    /// none).
    pub images: usize,
    /// Frozen: evaluation mode during training too.
    pub frozen: bool,
    /// On the probe images in evaluation: the median over channels of
    /// |batch mean − running mean| / running std, and of max(v, 1/v) for v = batch variance /
    /// running variance. None until probed.
    pub median_shift: Option<f64>,
    pub median_var_ratio: Option<f64>,
}

pub(super) fn batch_norm(e: &Evidence, out: &mut Vec<Finding>) {
    let small: Vec<&BatchNormUse> = e
        .batch_norm
        .iter()
        .filter(|b| !b.frozen && b.images < SMALL_BATCH)
        .collect();
    if let Some(first) = small.first() {
        let severity = match first.images < 2 {
            true => Severity::Fail,
            false => Severity::Warn,
        };
        out.push(finding(
            "batchnorm_small_batch",
            severity,
            format!(
                "{} BatchNorm layer(s) take their statistics over {} images a step (first: {}); \
                 under {SMALL_BATCH} the batch mean and variance are mostly noise, and training \
                 and evaluation see different networks",
                small.len(),
                first.images,
                first.layer
            ),
            "Raise --batch (both branches of a pair count: a batch of B pairs is 2B images), \
             freeze the BatchNorm layers of a pretrained tower (--freeze), or use a tower \
             without BatchNorm for batches this small.",
        ));
    }
    let drifted: Vec<&BatchNormUse> = e
        .batch_norm
        .iter()
        .filter(|b| {
            b.median_shift.is_some_and(|s| s > DRIFT_SHIFT)
                || b.median_var_ratio.is_some_and(|r| r > DRIFT_RATIO)
        })
        .collect();
    if let Some(worst) = drifted.iter().max_by(|a, b| {
        let key = |b: &BatchNormUse| b.median_shift.unwrap_or(0.0);
        key(a).total_cmp(&key(b))
    }) {
        out.push(finding(
            "batchnorm_drift",
            Severity::Warn,
            format!(
                "in evaluation, {} BatchNorm layer(s) normalise with running statistics that do \
                 not describe the validation images (worst {}: the median channel's mean is {:.2} \
                 running standard deviations off, its variance {:.2}× off); evaluation then runs \
                 another network than training did",
                drifted.len(),
                worst.layer,
                worst.median_shift.unwrap_or(0.0),
                worst.median_var_ratio.unwrap_or(1.0)
            ),
            "Train longer (the running averages follow the weights with momentum 0.1), make \
             training images look like evaluation ones (augmentation only in training shifts \
             the statistics), use larger batches, or freeze BatchNorm when fine-tuning \
             (--freeze).",
        ));
    }
}
