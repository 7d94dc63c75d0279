//! The verification protocol of the reference: balanced pairs of held-out validation images
//! choose the threshold; balanced test pairs are scored at it, with their ROC AUC. The
//! embeddings come from the GPU; pair scores from the CPU references of the model's own
//! distance (or, for the BCE head, its negated logit, so lower always means "more likely
//! the same").

use crate::cpu;
use crate::data::sampler::{PairBatch, balanced_pairs};
use crate::error::Result;
use crate::eval::embed::Embedder;
use crate::eval::verification::{self, Verification};
use crate::gpu::{Gpu, Tensor};
use crate::model::SiameseModel;
use crate::ops::gather::PackedImages;
use crate::vocab::Distance;
use crate::vocab::LossKind;
use crate::vocab::PairLabel;

/// Seeds of the evaluation pairs: fixed, so every run is scored on the same pairs.
pub const VAL_PAIR_SEED: u64 = 1234;
pub const TEST_PAIR_SEED: u64 = 4321;
pub const TRAIN_PAIR_SEED: u64 = 2468;

/// A validation pass: accuracy at its own best threshold, ROC AUC, and the scores, which
/// choose the test threshold.
#[derive(Debug, Clone, Default)]
pub struct Validation {
    pub accuracy: f64,
    /// The threshold that gave `accuracy`.
    pub threshold: f32,
    pub roc_auc: f64,
    pub scores: Vec<f32>,
}

/// The fixed evaluation pairs of a dataset and the model that scores them.
pub struct PairProtocol<'g> {
    gpu: &'g Gpu,
    params: Tensor,
    model: SiameseModel,
    val_pairs: PairBatch,
    test_pairs: PairBatch,
    train_pairs: Option<PairBatch>,
}

impl<'g> PairProtocol<'g> {
    /// `val` and `test` are (labels of the set, number of balanced pairs to draw).
    pub fn new(
        gpu: &'g Gpu,
        params: &Tensor,
        model: &SiameseModel,
        val: (&[u8], usize),
        test: (&[u8], usize),
    ) -> Self {
        PairProtocol {
            gpu,
            params: params.clone(),
            model: model.clone(),
            val_pairs: balanced_pairs(val.0, val.1, VAL_PAIR_SEED),
            test_pairs: balanced_pairs(test.0, test.1, TEST_PAIR_SEED),
            train_pairs: None,
        }
    }

    /// Also draws `n` balanced pairs of training images (labels `labels`), scored like the
    /// validation pairs to measure the train/validation gap.
    pub fn with_train_pairs(mut self, labels: &[u8], n: usize) -> Self {
        self.train_pairs = Some(balanced_pairs(labels, n, TRAIN_PAIR_SEED));
        self
    }

    pub fn val_labels(&self) -> &[PairLabel] {
        &self.val_pairs.labels
    }

    pub fn test_labels(&self) -> &[PairLabel] {
        &self.test_pairs.labels
    }

    /// Accuracy of the training pairs of the packed training `images` at their own best
    /// threshold (None without [`with_train_pairs`](Self::with_train_pairs)).
    pub fn train_accuracy(
        &self,
        embedder: &Embedder,
        images: &PackedImages,
    ) -> Result<Option<f64>> {
        let Some(pairs) = &self.train_pairs else {
            return Ok(None);
        };
        let scores = self.scores(embedder, images, pairs)?;
        let t = verification::best_threshold(&scores, &pairs.labels);
        Ok(Some(verification::pair_accuracy(&scores, &pairs.labels, t)))
    }

    fn scores(
        &self,
        embedder: &Embedder,
        images: &PackedImages,
        pairs: &PairBatch,
    ) -> Result<Vec<f32>> {
        pair_scores(
            self.gpu,
            &self.params,
            &self.model,
            (embedder, images),
            pairs,
        )
    }

    /// Scores the validation pairs of the packed validation `images`.
    pub fn validate(&self, embedder: &Embedder, images: &PackedImages) -> Result<Validation> {
        let scores = self.scores(embedder, images, &self.val_pairs)?;
        let labels = &self.val_pairs.labels;
        let t = verification::best_threshold(&scores, labels);
        Ok(Validation {
            accuracy: verification::pair_accuracy(&scores, labels, t),
            threshold: t,
            roc_auc: verification::roc_auc(&scores, labels),
            scores,
        })
    }

    /// Scores the test pairs of the packed test `images` at the threshold `val` chooses.
    pub fn test(
        &self,
        embedder: &Embedder,
        images: &PackedImages,
        val: &Validation,
    ) -> Result<Verification> {
        Ok(self.test_scored(embedder, images, val)?.0)
    }

    /// [`test`](Self::test), and the test pairs' scores.
    pub fn test_scored(
        &self,
        embedder: &Embedder,
        images: &PackedImages,
        val: &Validation,
    ) -> Result<(Verification, Vec<f32>)> {
        let scores = self.scores(embedder, images, &self.test_pairs)?;
        let v = verification::verify(
            &val.scores,
            &self.val_pairs.labels,
            &scores,
            &self.test_pairs.labels,
        );
        Ok((v, scores))
    }
}

/// A score per pair of `pairs` (indices into the packed `images`) from the embeddings
/// of the images they use (each embedded once): the distance, or the BCE head's negated
/// logit; lower is more alike.
pub fn pair_scores(
    gpu: &Gpu,
    params: &Tensor,
    model: &SiameseModel,
    (embedder, images): (&Embedder, &PackedImages),
    pairs: &PairBatch,
) -> Result<Vec<f32>> {
    let mut used: Vec<u32> = pairs.a.iter().chain(&pairs.b).copied().collect();
    used.sort_unstable();
    used.dedup();
    let e = embedder.embed_indices(images, &used)?;
    let d = embedder.dim();
    let row = |i: u32| {
        let k = used
            .binary_search(&i)
            .expect("every pair image was embedded");
        &e[k * d..(k + 1) * d]
    };
    // The pairs' rows side by side, scored by the CPU references of the kernels the
    // model trains with (evaluation pairs are few: 10,000 × D).
    let gather_rows = |ids: &[u32]| {
        ids.iter()
            .flat_map(|&i| row(i))
            .copied()
            .collect::<Vec<f32>>()
    };
    let (a, b) = (gather_rows(&pairs.a), gather_rows(&pairs.b));
    let flat = match model.config.loss {
        LossKind::Bce => gpu.read_f32(params)?,
        _ => Vec::new(),
    };
    Ok(score_rows(model, &flat, &a, &b))
}

/// The score of each pair of rows of `a` and `b` (`[n, D]` each): the model's distance, or
/// for the BCE head (its weights in the flat host `params`) its negated logit; lower is more
/// alike.
pub fn score_rows(model: &SiameseModel, params: &[f32], a: &[f32], b: &[f32]) -> Vec<f32> {
    let d = model.embedding_dim();
    let n = a.len() / d;
    if model.config.loss == LossKind::Bce {
        let (w, bias) = model.head_weights(params).expect("a BCE model has a head");
        let diff = cpu::distance::abs_diff_forward(a, b, n, d);
        let logits = cpu::dense::dense_forward(&diff, w, &[bias], n, d, 1);
        return logits.into_iter().map(|z| -z).collect();
    }
    match model.config.distance {
        Distance::Euclidean => cpu::distance::euclidean_forward(a, b, n, d),
        Distance::SquaredEuclidean => cpu::distance::squared_euclidean_forward(a, b, n, d),
        Distance::L1 => cpu::distance::l1_forward(a, b, n, d),
        Distance::Cosine => cpu::distance::cosine_forward(a, b, n, d),
    }
}
