//! The engine's configuration of a run: every value parsed and checked, ready for the
//! trainer. Users write settings (`crate::settings`), which resolve into a [`TrainConfig`].

use std::path::PathBuf;

use crate::data::augment::Augment;
use crate::data::batches::Batches;
use crate::data::images::DataOptions;
use crate::error::{Error, Result};
use crate::eval::embedding_metrics::SCORED_IMAGES;
use crate::eval::operating_points::{Target, pairs_to_certify, val_pairs_to_certify};
use crate::model::ModelConfig;
use crate::nn::TowerSpec;
use crate::nn::spec::REFERENCE_TOWER;
use crate::optim::{OptimizerConfig, OptimizerKind, Schedule};
use crate::vocab::{Distance, LossHyper, LossKind, Miner, PixelNorm, Precision};

/// A cross-batch memory (Wang et al. 2020): the last `slots` embeddings and their labels,
/// read by the loss as more columns after `warmup` steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Xbm {
    pub slots: usize,
    pub warmup: usize,
}

/// Everything that defines a run. `Default` is the reference recipe.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Dataset directory (else `$SIAMESE_DATA`, else the Debian package's).
    pub data: Option<PathBuf>,
    pub tower: TowerSpec,
    pub loss: LossKind,
    pub margin: f32,
    pub distance: Distance,
    /// L2-normalise embeddings before the distance.
    pub normalize: bool,
    /// The hyper-parameters of the losses on class-labelled batches.
    pub hyper: LossHyper,
    pub optimizer: OptimizerConfig,
    /// The learning rate of a class head (class weights, proxies); None: the optimizer's.
    pub head_lr: Option<f32>,
    /// A cross-batch memory for the losses over embeddings (SupCon, NT-Xent,
    /// Multi-Similarity).
    pub xbm: Option<Xbm>,
    /// Samples (pairs, or triplets) per step; with a miner, images per step (P × K).
    pub batch: usize,
    /// Training budget in samples (with a miner: in images seen).
    pub pairs: usize,
    /// Fraction of Same pairs the training sampler draws.
    pub positive_fraction: f64,
    /// Online triplet mining (triplet loss only): None trains on random triplets.
    pub miner: Option<Miner>,
    /// P of the P×K batches of a miner (None: 10, or all classes if fewer).
    pub classes_per_batch: Option<usize>,
    pub seed: u64,
    /// Validation images held out of training (None: min(5,000, 10%)).
    pub val_images: Option<usize>,
    /// Image size and colour, unreadable images, held-out classes.
    pub dataset: DataOptions,
    pub val_pairs: usize,
    pub test_pairs: usize,
    /// False-accept rates to choose certified operating points for, beside the accuracy and
    /// equal-error-rate ones (`eval::operating_points`).
    pub far_targets: Vec<f64>,
    /// Validate every this many training samples (and at the end).
    pub eval_every: usize,
    /// Read the loss log back every this many steps.
    pub log_every: usize,
    pub pixel_norm: PixelNorm,
    /// Random affine transforms of training images (Keras's `ImageDataGenerator` set);
    /// off by default. Validation and test images are never augmented.
    pub augment: Augment,
    /// Images per embedding dispatch during evaluation.
    pub eval_chunk: usize,
    /// Bytes of packed images the GPU holds: splits beyond it stay in host memory and are
    /// staged batch by batch (None: `run::default_gpu_data_budget`).
    pub gpu_data_budget: Option<u64>,
    /// Time every kernel of the last step with timestamp queries and report the breakdown.
    pub profile: bool,
    /// Balanced pairs of training images scored at every validation, for the train/validation
    /// gap (0: none).
    pub train_eval_pairs: usize,
    /// Test images embedded after training for the doctor's spread statistics and the PCA
    /// plot (a seeded sample when the test set is larger).
    pub doctor_images: usize,
    /// Also score retrieval on raw test pixels, the baseline beside the embeddings' P@1.
    pub pixel_baseline: bool,
    /// f32, or mixed precision (f16 activations, f32 master weights, a dynamic loss scale).
    pub precision: Precision,
    /// Name prefixes of the parameters that do not train.
    pub freeze: Vec<String>,
    /// Swap Same and Different in every training pair: reproduces the inverted-labels bug, so
    /// that the doctor can be shown (and tested) recognising it. Never set in a real run.
    pub invert_pair_labels: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            data: None,
            tower: REFERENCE_TOWER.parse().expect("the reference tower parses"),
            loss: LossKind::Contrastive,
            margin: 1.0,
            distance: Distance::Euclidean,
            normalize: false,
            hyper: LossHyper::default(),
            optimizer: OptimizerConfig {
                kind: OptimizerKind::named("adam").expect("adam exists"),
                lr: 1e-3,
                weight_decay: 0.0,
                schedule: Schedule::Constant,
            },
            head_lr: None,
            xbm: None,
            batch: 128,
            pairs: 20_000,
            positive_fraction: 0.5,
            miner: None,
            classes_per_batch: None,
            seed: 0,
            val_images: None,
            dataset: DataOptions::default(),
            val_pairs: 10_000,
            test_pairs: 10_000,
            far_targets: Vec::new(),
            eval_every: 10_000,
            log_every: 20,
            pixel_norm: PixelNorm::UNIT,
            augment: Augment::default(),
            eval_chunk: 500,
            gpu_data_budget: None,
            profile: false,
            train_eval_pairs: 2_000,
            doctor_images: SCORED_IMAGES,
            pixel_baseline: true,
            precision: Precision::F32,
            freeze: Vec::new(),
            invert_pair_labels: false,
        }
    }
}

impl TrainConfig {
    /// The model this run trains, for images of shape `input` (`[C, H, W]`) whose training
    /// labels are the ids `0..classes`.
    pub fn model_config(&self, input: [usize; 3], classes: usize) -> ModelConfig {
        ModelConfig {
            tower: self.tower.clone(),
            input,
            loss: self.loss,
            margin: self.margin,
            distance: self.distance,
            normalize: self.normalize,
            freeze: self.freeze.clone(),
            hyper: self.hyper,
            classes,
        }
    }

    /// Refuses values that cannot make a run, saying which and what is accepted.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.batch == 0 {
            return bad("batch must be at least 1, got 0".into());
        }
        if self.pairs < self.batch {
            return bad(format!(
                "pairs (the budget) = {} is smaller than one batch of {}; it must be at least batch",
                self.pairs, self.batch
            ));
        }
        if !(self.margin.is_finite() && self.margin >= 0.0) {
            return bad(format!(
                "margin must be a finite number ≥ 0, got {}",
                self.margin
            ));
        }
        if !(self.optimizer.lr.is_finite() && self.optimizer.lr > 0.0) {
            return bad(format!(
                "lr (the learning rate) must be a positive number, got {}",
                self.optimizer.lr
            ));
        }
        if !(self.optimizer.weight_decay.is_finite() && self.optimizer.weight_decay >= 0.0) {
            return bad(format!(
                "weight_decay must be a finite number ≥ 0, got {}",
                self.optimizer.weight_decay
            ));
        }
        if !(0.0..=1.0).contains(&self.positive_fraction) {
            return bad(format!(
                "positive_fraction must be in [0, 1], got {}",
                self.positive_fraction
            ));
        }
        if let Some(miner) = self.miner
            && self.loss != LossKind::Triplet
        {
            return bad(format!(
                "miner {miner} mines triplets: use it with loss = triplet, or miner = none"
            ));
        }
        if self.class_batches()
            && let Some(p) = self.classes_per_batch
            && (p < 2 || !self.batch.is_multiple_of(p))
        {
            return bad(format!(
                "batch = classes_per_batch × K images: batch {} is not a multiple of \
                 classes_per_batch {p} (which must be at least 2)",
                self.batch
            ));
        }
        if let Some(lr) = self.head_lr
            && !(lr.is_finite() && lr > 0.0)
        {
            return bad(format!(
                "head_lr (the class head's learning rate) must be a positive number, got {lr}"
            ));
        }
        if let Some(xbm) = self.xbm {
            if !matches!(
                self.loss,
                LossKind::SupCon | LossKind::NtXent | LossKind::MultiSimilarity
            ) {
                return bad(format!(
                    "xbm (a cross-batch memory) serves the losses over embeddings: supcon, \
                     ntxent or multi-similarity, not {}",
                    self.loss
                ));
            }
            if xbm.slots < self.batch {
                return bad(format!(
                    "xbm = {} slots cannot hold a batch of {}: give at least the batch",
                    xbm.slots, self.batch
                ));
            }
        }
        if self.loss.uses_classes() && self.distance != Distance::Cosine {
            return bad(format!(
                "the {} loss works on cosine similarities: use distance = cosine (its default)",
                self.loss
            ));
        }
        if self.val_pairs == 0
            || self.test_pairs == 0
            || self.eval_every == 0
            || self.eval_chunk == 0
            || self.log_every == 0
            || self.doctor_images < 2
        {
            return bad(
                "val_pairs, test_pairs, eval_every (the validation interval), the eval chunk and \
                 the log interval must be at least 1, and doctor_images at least 2"
                    .into(),
            );
        }
        for &rate in &self.far_targets {
            Target::far(rate)?;
            // Half the validation pairs are Different, on average: a target they cannot
            // certify is refused before training rather than after.
            let needed = pairs_to_certify(rate);
            if self.val_pairs / 2 < needed {
                return bad(format!(
                    "far {rate}: certifying a false-accept rate of {rate} takes at least {needed} \
                     validation Different pairs, and val_pairs = {} draws about {}; give \
                     --val-pairs {} or more, or a larger rate",
                    self.val_pairs,
                    self.val_pairs / 2,
                    val_pairs_to_certify(rate)
                ));
            }
        }
        self.augment.validate()
    }

    /// What the training batches are made of.
    pub fn batches(&self) -> Batches {
        if self.class_batches() {
            return Batches::ClassBalanced {
                classes_per_batch: self.classes_per_batch,
                images: self.batch,
            };
        }
        match self.loss {
            LossKind::Triplet => Batches::Triplets,
            _ => Batches::Pairs {
                positive_fraction: self.positive_fraction,
            },
        }
    }

    /// Whether a step trains on P×K class-labelled images (a miner, or a loss on class
    /// labels) rather than on pairs or triplets.
    pub fn class_batches(&self) -> bool {
        self.miner.is_some() || self.loss.uses_classes()
    }

    /// Images through the tower per sample: 1 on class-labelled batches (a sample is an
    /// image), else the loss's branches.
    pub fn images_per_sample(&self) -> usize {
        if self.class_batches() {
            1
        } else {
            self.loss.branches()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(cfg: TrainConfig) -> String {
        cfg.validate()
            .expect_err("the config must be refused")
            .to_string()
    }

    #[test]
    fn invalid_settings_are_refused_with_what_is_accepted() {
        assert!(TrainConfig::default().validate().is_ok());
        assert!(
            refused(TrainConfig {
                batch: 0,
                ..Default::default()
            })
            .contains("batch must be at least 1")
        );
        assert!(
            refused(TrainConfig {
                pairs: 100,
                ..Default::default()
            })
            .contains("smaller than one batch of 128")
        );
        assert!(
            refused(TrainConfig {
                margin: -1.0,
                ..Default::default()
            })
            .contains("margin must be a finite number ≥ 0")
        );
        let mut cfg = TrainConfig::default();
        cfg.optimizer.lr = 0.0;
        assert!(refused(cfg).contains("lr (the learning rate) must be a positive number"));
        assert!(
            refused(TrainConfig {
                positive_fraction: 1.5,
                ..Default::default()
            })
            .contains("[0, 1]")
        );
        assert!(
            refused(TrainConfig {
                eval_every: 0,
                ..Default::default()
            })
            .contains("eval_every (the validation interval)")
        );
        // 10,000 validation pairs draw about 5,000 Different ones: 1e-3 needs 2,995, 1e-4
        // needs 29,956.
        assert!(
            TrainConfig {
                far_targets: vec![1e-3],
                ..Default::default()
            }
            .validate()
            .is_ok()
        );
        let far = refused(TrainConfig {
            far_targets: vec![1e-3, 1e-4],
            ..Default::default()
        });
        assert!(
            far.contains("at least 29956 validation Different pairs"),
            "{far}"
        );
        assert!(far.contains("--val-pairs 65903"), "{far}");
        assert!(
            refused(TrainConfig {
                far_targets: vec![0.0],
                ..Default::default()
            })
            .contains("must be in (0, 1)")
        );
        assert!(
            refused(TrainConfig {
                augment: Augment {
                    zoom_range: 1.5,
                    ..Augment::default()
                },
                ..Default::default()
            })
            .contains("zoom_range must be in [0, 1)")
        );
        assert!(
            refused(TrainConfig {
                miner: Some(Miner::BatchHard),
                ..Default::default()
            })
            .contains("use it with loss = triplet")
        );
        assert!(
            refused(TrainConfig {
                loss: LossKind::Triplet,
                miner: Some(Miner::SemiHard),
                batch: 100,
                classes_per_batch: Some(8),
                ..Default::default()
            })
            .contains("batch 100 is not a multiple of classes_per_batch 8")
        );
    }
}
