//! The metrics read from a set of embeddings (retrieval, its raw-pixel baseline, n-way
//! one-shot), gathered the same way by `train` and `eval`.

use std::fmt;

use crate::data::images::ImageSet;
use crate::error::Result;
use crate::eval::embed::Embedder;
use crate::eval::oneshot::{self, OneShot, OneShotError};
use crate::eval::retrieval::{
    self, DEFAULT_PIXEL_QUERIES, References, RetrievalMetrics, RetrievalOptions,
};
use crate::gpu::Gpu;
use crate::ops::gather::PackedImages;
use crate::vocab::PixelNorm;
use crate::vocab::{Distance, PairwiseMetric};

/// Retrieval on the embeddings (leave-one-out over the set, Musgrave et al.'s protocol),
/// the same on raw pixels, and n-way one-shot accuracy.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingMetrics {
    pub retrieval: RetrievalMetrics,
    /// Raw pixels under the same protocol (a seeded sample of queries): the figure a
    /// learned embedding must beat.
    pub pixel_baseline: Option<RetrievalMetrics>,
    pub one_shot: Vec<(usize, std::result::Result<OneShot, OneShotError>)>,
}

/// Test images embedded after training, for the metrics and the doctor's statistics (a
/// seeded sample when the test split is larger).
pub const SCORED_IMAGES: usize = 10_000;

/// `min(n, k)` distinct indices below `n` in a seeded random order (all of them, shuffled,
/// when `n ≤ k`).
pub fn seeded_sample(n: usize, k: usize, seed: u64) -> Vec<u32> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let mut all: Vec<u32> = (0..n as u32).collect();
    all.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed));
    all.truncate(k);
    all
}

/// The test images the embedding metrics score, in dataset order: all `n` when `n ≤ k`, else
/// [`seeded_sample`]'s `k` sorted. Training and `eval` both score these, so one model gives
/// one figure whichever command prints it (the one-shot episodes depend on row order).
pub fn scored_images(n: usize, k: usize, seed: u64) -> Vec<u32> {
    let mut sample = seeded_sample(n, k, seed);
    sample.sort_unstable();
    sample
}

/// The test embeddings the metrics score, and the metrics: [`scored_images`] of `set` (the
/// packed `images` on the GPU) embedded once, in dataset order, scored by `distance`, with
/// the raw-pixel baseline when `pixels` gives the normalisation. Training and `eval` both
/// call this. Returns the scored indices, their embeddings `[len, dim]` and the metrics.
pub fn score_test_split(
    gpu: &Gpu,
    embedder: &Embedder,
    distance: Distance,
    (set, images): (&ImageSet, &PackedImages),
    (k, seed): (usize, u64),
    pixels: Option<PixelNorm>,
) -> Result<(Vec<u32>, Vec<f32>, EmbeddingMetrics)> {
    let scored = scored_images(set.count, k, seed);
    let embedded = embedder.embed_indices(images, &scored)?;
    let labels: Vec<u8> = scored.iter().map(|&i| set.labels[i as usize]).collect();
    let metrics = embedding_metrics(
        gpu,
        &embedded,
        &labels,
        embedder.dim(),
        distance,
        pixels.map(|norm| (set, norm)),
    )?;
    Ok((scored, embedded, metrics))
}

/// The metrics of `embeddings` (`[labels.len(), dim]`) ranked by the model's `distance`
/// (Euclidean for one the pairwise kernel lacks, and for the BCE head's embedding); the
/// pixel baseline over `images` (the set the embeddings came from, whole) when given.
pub fn embedding_metrics(
    gpu: &Gpu,
    embeddings: &[f32],
    labels: &[u8],
    dim: usize,
    distance: Distance,
    images: Option<(&ImageSet, PixelNorm)>,
) -> Result<EmbeddingMetrics> {
    let metric = retrieval::retrieval_metric(distance).unwrap_or(PairwiseMetric::Euclidean);
    let retrieval = retrieval::evaluate_retrieval(
        gpu,
        embeddings,
        labels,
        dim,
        References::LeaveOneOut,
        &RetrievalOptions::new(metric),
    )?;
    let pixel_baseline = match images {
        Some((set, norm)) => Some(retrieval::pixel_baseline(
            gpu,
            set,
            None,
            norm,
            &RetrievalOptions {
                max_queries: Some(DEFAULT_PIXEL_QUERIES),
                ..RetrievalOptions::new(PairwiseMetric::Euclidean)
            },
        )?),
        None => None,
    };
    let one_shot = oneshot::DEFAULT_WAYS
        .iter()
        .map(|&n| {
            let r = oneshot::one_shot(
                embeddings,
                labels,
                dim,
                metric,
                n,
                oneshot::DEFAULT_EPISODES,
                oneshot::DEFAULT_SEED,
            );
            (n, r)
        })
        .collect();
    Ok(EmbeddingMetrics {
        retrieval,
        pixel_baseline,
        one_shot,
    })
}

impl fmt::Display for EmbeddingMetrics {
    /// The retrieval line, the pixel baseline beside it, and one line per one-shot n.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "retrieval: {}", self.retrieval)?;
        if let Some(p) = &self.pixel_baseline {
            write!(f, "\nraw pixels: {p}")?;
        }
        for (n, r) in &self.one_shot {
            match r {
                Ok(o) => write!(f, "\n{o}")?,
                Err(e) => write!(f, "\n{n}-way one-shot: {e}")?,
            }
        }
        Ok(())
    }
}
