//! The doctor's evidence, gathered as the run goes: per-layer gradient and weight norms at
//! each loss read, and after training the test embeddings' spread, ReLU activity on
//! validation images and the distance distributions of the last validation.

use super::TrainConfig;
use crate::data::dataset::Dataset;
use crate::error::Result;
use crate::eval::doctor::{BatchNormUse, Evidence, GradSample, PairScores};
use crate::eval::embed::Embedder;
use crate::eval::embedding_metrics::{EmbeddingMetrics, score_test_split, seeded_sample};
use crate::eval::embedding_stats::{embedding_stats, pca_2d};
use crate::eval::probe;
use crate::eval::protocol::{PairProtocol, Validation};
use crate::gpu::{Gpu, Tensor};
use crate::model::{ModelTensors, SiameseModel};
use crate::ops::gather::PackedImages;

/// Points in the PCA plot.
const PCA_POINTS: usize = 3_000;
/// Validation images the ReLU probe runs on.
const PROBE_IMAGES: usize = 256;

/// The evidence known before the first step: the run's recipe and the initial weight norms.
pub(super) fn initial_evidence(
    cfg: &TrainConfig,
    model: &SiameseModel,
    layers: &LayerGroups,
    initial_weight_norm: Vec<f64>,
) -> Evidence {
    // Every BatchNorm layer sees the whole step's images: both branches run as one batch.
    let images = cfg.images_per_sample() * cfg.batch;
    let batch_norm = model
        .batch_norm_layers()
        .into_iter()
        .map(|(layer, frozen)| BatchNormUse {
            layer,
            images,
            frozen,
            median_shift: None,
            median_var_ratio: None,
        })
        .collect();
    Evidence {
        batch_norm,
        loss: Some(cfg.loss),
        margin: cfg.margin,
        miner: cfg.miner,
        distance: Some(cfg.distance),
        normalized: cfg.normalize,
        layers: layers.names.clone(),
        class_disjoint: !cfg.dataset.held_out_classes.is_empty(),
        initial_weight_norm,
        similarity: model.config.similarity(),
        classes: model.config.classes,
        batch_images: images,
        ..Default::default()
    }
}

/// Embeds the scored test images once; scores retrieval and one-shot accuracy on them in
/// dataset order (as `eval` does), and gives the doctor their spread (over the seeded
/// sample's order, as it always has) and the PCA plot.
#[allow(clippy::too_many_arguments)] // what the doctor reads, each named
pub(super) fn test_evidence(
    gpu: &Gpu,
    cfg: &TrainConfig,
    embedder: &Embedder,
    sets: &Dataset,
    test: &PackedImages,
    evidence: &mut Evidence,
) -> Result<EmbeddingMetrics> {
    let test_set = &sets.test;
    let (scored, embedded, metrics) = score_test_split(
        gpu,
        embedder,
        cfg.distance,
        (test_set, test),
        (cfg.doctor_images, cfg.seed),
        cfg.pixel_baseline.then_some(cfg.pixel_norm),
    )?;
    let dim = embedder.dim();
    // The same images in the seeded sample's order: the statistics and the plot read them so.
    let sample = seeded_sample(test_set.count, cfg.doctor_images, cfg.seed);
    let mut shuffled = Vec::with_capacity(embedded.len());
    for &i in &sample {
        let row = scored
            .binary_search(&i)
            .expect("the sample holds the scored images");
        shuffled.extend_from_slice(&embedded[row * dim..(row + 1) * dim]);
    }
    evidence.embeddings = Some(embedding_stats(&shuffled, sample.len(), dim, cfg.seed));
    let pca_rows = sample.len().min(PCA_POINTS);
    let (points, explained) = pca_2d(&shuffled[..pca_rows * dim], pca_rows, dim);
    evidence.pca = points;
    evidence.pca_labels = sample[..pca_rows]
        .iter()
        .map(|&i| test_set.labels[i as usize])
        .collect();
    evidence.pca_explained = explained;
    evidence.test_classes = sets.test_classes.clone();
    Ok(metrics)
}

/// ReLU activity of the trained model on the first validation images, and the distance
/// distributions of the last validation and of the test pairs.
#[allow(clippy::too_many_arguments)] // what the doctor reads, each named
pub(super) fn probe_evidence(
    gpu: &Gpu,
    cfg: &TrainConfig,
    model: &SiameseModel,
    values: &ModelTensors,
    (sets, val): (&Dataset, &PackedImages),
    protocol: &PairProtocol,
    (last_val, test_scores, test_accuracy): (&Validation, Vec<f32>, f64),
    evidence: &mut Evidence,
) -> Result<()> {
    let fit = model
        .tower
        .images_that_fit(gpu.limits().max_storage_buffer_binding_size);
    let probe: Vec<u32> = (0..sets.val.count.min(PROBE_IMAGES).min(fit) as u32).collect();
    if !probe.is_empty() {
        let found = probe::probe(gpu, model, values, cfg.pixel_norm, val, &probe)?;
        evidence.relu = found.relu;
        for (layer, (shift, ratio)) in evidence.batch_norm.iter_mut().zip(found.batch_norm) {
            layer.median_shift = Some(shift);
            layer.median_var_ratio = Some(ratio);
        }
    }
    evidence.val = PairScores {
        scores: last_val.scores.clone(),
        labels: protocol.val_labels().to_vec(),
    };
    evidence.val_accuracy = last_val.accuracy;
    evidence.val_threshold = last_val.threshold;
    evidence.val_roc_auc = last_val.roc_auc;
    evidence.train_accuracy = evidence.validations.last().and_then(|v| v.train_accuracy);
    evidence.test_accuracy = Some(test_accuracy);
    evidence.test = PairScores {
        scores: test_scores,
        labels: protocol.test_labels().to_vec(),
    };
    Ok(())
}

/// The model's parameters grouped by layer (weight and bias together), for the doctor's
/// per-layer gradient norms.
pub(super) struct LayerGroups {
    pub(super) names: Vec<String>,
    /// (offset, len) of each layer's parameters in the flat buffer.
    spans: Vec<Vec<(usize, usize)>>,
}

impl LayerGroups {
    pub(super) fn new(model: &SiameseModel) -> Self {
        let (mut names, mut spans): (Vec<String>, Vec<Vec<(usize, usize)>>) = (vec![], vec![]);
        // Frozen parameters get no gradient by design: the doctor reads the trained ones.
        for p in model.layout.params.iter().filter(|p| !p.frozen) {
            let prefix = p.name.rsplit_once('.').map_or(p.name.as_str(), |(a, _)| a);
            // `tower.<name>` names a layer of the tower.
            let name = match prefix
                .strip_prefix("tower.")
                .and_then(|name| model.tower.layer(name))
            {
                Some(layer) => format!("{prefix} ({layer})"),
                None => prefix.to_string(),
            };
            if names.last() != Some(&name) {
                names.push(name);
                spans.push(Vec::new());
            }
            spans
                .last_mut()
                .expect("pushed above")
                .push((p.offset, p.len()));
        }
        LayerGroups { names, spans }
    }

    /// Every layer's ‖∇w‖ and ‖w‖ now (the gradient of the last step submitted, divided by
    /// the loss scale it carries: 1 in f32).
    pub(super) fn sample(
        &self,
        gpu: &Gpu,
        params: &Tensor,
        grads: &Tensor,
        step: usize,
        grad_scale: f64,
    ) -> Result<GradSample> {
        let (p, g) = (gpu.read_f32(params)?, gpu.read_f32(grads)?);
        let norm = |flat: &[f32], spans: &[(usize, usize)]| {
            spans
                .iter()
                .flat_map(|&(o, n)| &flat[o..o + n])
                .map(|&x| (x as f64) * (x as f64))
                .sum::<f64>()
                .sqrt()
        };
        Ok(GradSample {
            step,
            grad_norm: self
                .spans
                .iter()
                .map(|s| norm(&g, s) / grad_scale)
                .collect(),
            weight_norm: self.spans.iter().map(|s| norm(&p, s)).collect(),
        })
    }
}
