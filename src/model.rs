//! A Siamese model: a shared tower and the head its loss needs.
//!
//! Every branch of a sample runs through the tower as ONE batch (pairs: 2B images, the
//! first B the left images and the last B the right ones; triplets: 3B, anchors, positives,
//! negatives), and the embeddings are split into views afterwards. The shared weights thus
//! get one gradient, computed by the same kernels as any other batch.

use crate::autograd::{Tape, ValueId};
use crate::error::{Error, Result};
use crate::gpu::Tensor;
use crate::nn::{ParamLayout, Tower, TowerSpec};
use crate::vocab::LossKind;
use crate::vocab::Miner;
use crate::vocab::{Distance, PairwiseMetric};

/// What a model is: tower, input size, loss and its settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub tower: TowerSpec,
    /// Input image shape `[C, H, W]`.
    pub input: [usize; 3],
    pub loss: LossKind,
    pub margin: f32,
    /// Distance between embeddings for the contrastive and triplet losses.
    pub distance: Distance,
    /// L2-normalise embeddings before the distance (common with the triplet loss).
    pub normalize: bool,
}

/// A built model: the tower, the flat parameter layout and the head's parameters.
#[derive(Debug, Clone)]
pub struct SiameseModel {
    pub config: ModelConfig,
    pub tower: Tower,
    pub layout: ParamLayout,
    /// The BCE head's Linear(D → 1) weight and bias indices in the layout.
    head: Option<(usize, usize)>,
}

impl SiameseModel {
    pub fn new(config: ModelConfig) -> Result<SiameseModel> {
        if !(config.margin >= 0.0 && config.margin.is_finite()) {
            return Err(Error::Config(format!(
                "margin must be a finite number ≥ 0, got {}",
                config.margin
            )));
        }
        if !matches!(
            config.distance,
            Distance::Euclidean | Distance::Cosine | Distance::SquaredEuclidean
        ) {
            return Err(Error::Config(format!(
                "distance {:?} is not offered for training; use euclidean or cosine",
                config.distance
            )));
        }
        let mut layout = ParamLayout::default();
        let tower = Tower::new(&config.tower, config.input, "tower", &mut layout)?;
        let d = tower.embedding_dim();
        let head = (config.loss == LossKind::Bce).then(|| {
            (
                layout.push("head.weight".into(), &[1, d], d),
                layout.push("head.bias".into(), &[1], d),
            )
        });
        Ok(SiameseModel {
            config,
            tower,
            layout,
            head,
        })
    }

    pub fn embedding_dim(&self) -> usize {
        self.tower.embedding_dim()
    }

    /// Records the embedding of `x [N, C, H, W]`: the tower, then the L2 normalisation if
    /// the model asks for it. `params` are the flat f32 weights; under mixed precision the
    /// tower reads their f16 copy `half` instead (and `x` is f16).
    pub fn record_embedding(
        &self,
        tape: &mut Tape,
        x: ValueId,
        params: &Tensor,
        half: Option<&Tensor>,
        grads: Option<&Tensor>,
    ) -> Result<ValueId> {
        let weights = half.unwrap_or(params);
        let e = self.tower.record(tape, x, &self.layout, weights, grads)?;
        if self.config.normalize {
            tape.l2_normalize(e)
        } else {
            Ok(e)
        }
    }

    /// Records the training loss of a batch `x [k·B, C, H, W]` (k = branches), with pair
    /// labels `labels [B]` (unused by the triplet loss). Returns the scalar loss. `half` as
    /// in [`record_embedding`](Self::record_embedding); the BCE head reads the f32 `params`.
    pub fn record_loss(
        &self,
        tape: &mut Tape,
        x: ValueId,
        labels: &Tensor,
        params: &Tensor,
        half: Option<&Tensor>,
        grads: Option<&Tensor>,
    ) -> Result<ValueId> {
        let e = self.record_embedding(tape, x, params, half, grads)?;
        let parts = tape.split_rows(e, self.config.loss.branches())?;
        let margin = self.config.margin;
        match self.config.loss {
            LossKind::Contrastive => tape.contrastive_distance_loss(
                self.config.distance,
                parts[0],
                parts[1],
                labels,
                margin,
            ),
            LossKind::Triplet => tape.triplet_distance_loss(
                self.config.distance,
                [parts[0], parts[1], parts[2]],
                margin,
            ),
            LossKind::Bce => {
                let (wi, bi) = self.head.expect("a BCE model has a head");
                let bind = |tape: &mut Tape, i| {
                    tape.param(
                        self.layout.view(params, i),
                        grads.map(|g| self.layout.view(g, i)),
                    )
                };
                let (w, b) = (bind(tape, wi)?, bind(tape, bi)?);
                let diff = tape.abs_diff(parts[0], parts[1])?;
                let z = tape.dense(diff, w, b)?;
                tape.bce_with_logits(z, labels)
            }
        }
    }

    /// Records the triplet loss of `miner` on a batch `x [N, C, H, W]` of N images with class
    /// ids `classes [N]` (u32): embeddings, their distance matrix `[N, N]`, the mined loss.
    /// Returns the scalar loss and the step's mining stats tensor (`ops::mining::MiningStats`).
    #[allow(clippy::too_many_arguments)] // the buffers it binds, each named
    pub fn record_mined_loss(
        &self,
        tape: &mut Tape,
        x: ValueId,
        classes: &Tensor,
        miner: Miner,
        params: &Tensor,
        half: Option<&Tensor>,
        grads: Option<&Tensor>,
    ) -> Result<(ValueId, Tensor)> {
        let metric = match self.config.distance {
            Distance::Euclidean => PairwiseMetric::Euclidean,
            Distance::Cosine => PairwiseMetric::Cosine,
            other => {
                return Err(Error::Config(format!(
                    "miner {miner} works on euclidean or cosine distances, not {other:?}"
                )));
            }
        };
        let e = self.record_embedding(tape, x, params, half, grads)?;
        let dm = tape.pairwise_self(metric, e)?;
        tape.mined_triplet_loss(dm, classes, miner, self.config.margin)
    }

    /// The BCE head's weights `(w [D], b)` within host parameters `flat`, if the model has one.
    pub fn head_weights<'a>(&self, flat: &'a [f32]) -> Option<(&'a [f32], f32)> {
        self.head.map(|(wi, bi)| {
            let (w, b) = (&self.layout.params[wi], &self.layout.params[bi]);
            (&flat[w.offset..w.offset + w.len()], flat[b.offset])
        })
    }
}
