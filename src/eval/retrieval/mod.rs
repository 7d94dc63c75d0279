//! Retrieval metrics on embeddings, as defined in Musgrave, Belongie & Lim 2020, "A Metric
//! Learning Reality Check": each query ranks the references by distance (the model's metric,
//! Euclidean or cosine) and is scored by the classes of what it finds.
//!
//! - precision@1: the nearest reference has the query's class.
//! - recall@k (the deep-metric-learning definition, not the information-retrieval one): a
//!   query counts if AT LEAST ONE of its k nearest references has its class. recall@1 =
//!   precision@1.
//! - R-precision: with R = the number of references of the query's class (the query itself
//!   excluded), the fraction of the R nearest that have its class.
//! - MAP@R: (1/R)·Σ_{i=1..R} P(i)·rel(i), where rel(i) says whether the i-th nearest has the
//!   query's class and P(i) is the precision among the i nearest. Unlike R-precision it
//!   rewards putting the correct ones first.
//!
//! Each metric is the mean over queries. A query with no reference of its class (R = 0) has
//! none of them defined: it is left out of every mean and counted in
//! [`RetrievalMetrics::queries_without_match`].
//!
//! Protocols ([`References`]): leave-one-out within one set (each query searches the whole
//! set but itself — Musgrave's protocol for a test set), or a separate gallery (e.g. the
//! training images). Ranking ties are broken by the lower reference index, the same rule as
//! `topk.wgsl`, so the GPU and CPU rankings agree exactly on equal distances.
//!
//! Where the work runs: the distance matrix is computed on the GPU
//! (`ops::distance::pairwise_forward`, or its texel kernel where the adapter takes the texel
//! path for matmul-shaped ops, as lavapipe does) in chunks of query rows sized to stay under
//! a byte budget and the device's storage-binding limit (10,000 × 10,000 is 400 MB as f32;
//! lavapipe binds 128 MiB); the k nearest of each row (precision@1, recall@k) are selected on
//! the GPU (`ops::topk`). R-precision and MAP@R need the R nearest with R up to the class size
//! (999 for Fashion-MNIST's test set, 5,500 in its training gallery), beyond a
//! per-invocation list: the chunk of distances is read back and the host selects the R
//! nearest in linear time, then sorts only those R, on all cores.
//!
//! Measured on lavapipe (2 shared cores, `cargo run --release --example retrieval`), 10,000
//! test embeddings (D = 128) leave-one-out: 12.4 CPU-seconds in all (20 s wall on the busy
//! machine); of the wall time, the distance matrix ~70% (the texel kernel; the storage one
//! took ~2× as long), the GPU top-k ~6%, the read-back ~7%, the host's MAP@R ~15%. Moving
//! MAP@R to the GPU could save at most that 15% plus the read-back; a GPU selection of R up
//! to thousands per row would need a per-row radix select, not worth it at these shares.
//! The raw-pixel baseline (D = 784) costs ~6× per query, hence its default sample of 2,000
//! queries (10.4 CPU-seconds).

use std::fmt;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::cpu::topk::NO_EXCLUDE;
use crate::data::images::ImageSet;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::vocab::PixelNorm;
use crate::vocab::{Distance, PairwiseMetric};

mod search;

pub use search::nearest;

use search::search;

/// The k of recall@k reported by default.
pub const DEFAULT_RECALL_KS: [usize; 4] = [1, 2, 4, 8];
/// Default byte budget of one chunk of the distance matrix (further capped by the device's
/// storage-binding limit): 32 MiB is 800 query rows against 10,000 references.
pub const DEFAULT_CHUNK_BYTES: u64 = 32 << 20;
/// Queries of the raw-pixel baseline by default: a seeded, class-stratified sample, which
/// keeps it affordable on lavapipe (784-wide rows cost ~6× the 128-wide embeddings).
pub const DEFAULT_PIXEL_QUERIES: usize = 2000;
/// Seed of the query sample.
pub const DEFAULT_SAMPLE_SEED: u64 = 2020;

/// The pairwise metric that ranks like a model's training distance (squared Euclidean ranks
/// as Euclidean); None for a distance the pairwise kernel does not offer (L1).
pub fn retrieval_metric(distance: Distance) -> Option<PairwiseMetric> {
    match distance {
        Distance::Euclidean | Distance::SquaredEuclidean => Some(PairwiseMetric::Euclidean),
        Distance::Cosine => Some(PairwiseMetric::Cosine),
        Distance::L1 => None,
    }
}

/// What the queries are searched against.
#[derive(Debug, Clone, Copy)]
pub enum References<'a> {
    /// The set the queries come from, each query excluded from its own search.
    LeaveOneOut,
    /// A separate gallery: embeddings `[N, D]` row-major and their labels.
    Gallery {
        embeddings: &'a [f32],
        labels: &'a [u8],
    },
}

/// How to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrievalOptions {
    pub metric: PairwiseMetric,
    /// The k of recall@k, each in 1..=64 (the GPU selection's list) and at most the
    /// references a query has.
    pub recall_ks: Vec<usize>,
    /// Evaluate at most this many queries: a seeded, class-stratified sample ([`stratified_sample`]).
    /// The references are always complete.
    pub max_queries: Option<usize>,
    pub sample_seed: u64,
    /// Byte budget of one chunk of the distance matrix.
    pub chunk_bytes: u64,
}

impl RetrievalOptions {
    /// Recall at 1, 2, 4, 8, all queries, 32 MiB chunks.
    pub fn new(metric: PairwiseMetric) -> Self {
        RetrievalOptions {
            metric,
            recall_ks: DEFAULT_RECALL_KS.to_vec(),
            max_queries: None,
            sample_seed: DEFAULT_SAMPLE_SEED,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
        }
    }
}

/// Which protocol produced a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    LeaveOneOut,
    Gallery,
}

/// Queries were a sample: `drawn` of `of`, class-stratified, with `seed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuerySample {
    pub drawn: usize,
    pub of: usize,
    pub seed: u64,
}

/// Retrieval metrics, each a mean over the queries that have at least one reference of
/// their class.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrievalMetrics {
    pub metric: PairwiseMetric,
    pub protocol: Protocol,
    /// Queries the means are over.
    pub queries: usize,
    /// Queries left out because no reference has their class (R = 0).
    pub queries_without_match: usize,
    /// References each query searched (the set or the gallery; in leave-one-out a query
    /// searches one fewer).
    pub references: usize,
    /// Set when the queries were a sample.
    pub sample: Option<QuerySample>,
    pub precision_at_1: f64,
    /// (k, recall@k) in the order asked for.
    pub recall_at_k: Vec<(usize, f64)>,
    pub r_precision: f64,
    pub map_at_r: f64,
}

impl RetrievalMetrics {
    /// recall@k if it was computed.
    pub fn recall_at(&self, k: usize) -> Option<f64> {
        self.recall_at_k.iter().find(|r| r.0 == k).map(|r| r.1)
    }
}

impl fmt::Display for RetrievalMetrics {
    /// One line: `P@1 0.8123  R@2 0.8901 …  R-precision 0.4567  MAP@R 0.3456 (10000 queries,
    /// leave-one-out, euclidean)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "P@1 {:.4}", self.precision_at_1)?;
        for &(k, r) in self.recall_at_k.iter().filter(|r| r.0 != 1) {
            write!(f, "  R@{k} {r:.4}")?;
        }
        write!(
            f,
            "  R-precision {:.4}  MAP@R {:.4} ({} queries",
            self.r_precision, self.map_at_r, self.queries
        )?;
        if let Some(s) = self.sample {
            write!(f, " sampled from {} with seed {}", s.of, s.seed)?;
        }
        let protocol = match self.protocol {
            Protocol::LeaveOneOut => "leave-one-out".to_string(),
            Protocol::Gallery => format!("gallery of {}", self.references),
        };
        let metric = match self.metric {
            PairwiseMetric::Euclidean => "euclidean",
            PairwiseMetric::Cosine => "cosine",
        };
        write!(f, ", {protocol}, {metric}")?;
        if self.queries_without_match > 0 {
            write!(
                f,
                "; {} without a same-class reference left out",
                self.queries_without_match
            )?;
        }
        write!(f, ")")
    }
}

/// Indices (ascending) of at most `max` items, drawn per class in proportion to its size
/// (largest remainders fill what rounding leaves, lower class first on ties), each class's
/// share chosen by a seeded shuffle. All items if `max ≥ labels.len()`.
pub fn stratified_sample(labels: &[u8], max: usize, seed: u64) -> Vec<u32> {
    let n = labels.len();
    if max >= n {
        return (0..n as u32).collect();
    }
    let mut by_class: Vec<Vec<u32>> = vec![Vec::new(); 256];
    for (i, &c) in labels.iter().enumerate() {
        by_class[c as usize].push(i as u32);
    }
    let mut quota: Vec<usize> = by_class.iter().map(|m| m.len() * max / n).collect();
    let mut left = max - quota.iter().sum::<usize>();
    let mut by_remainder: Vec<usize> = (0..256).filter(|&c| !by_class[c].is_empty()).collect();
    // Stable sort: equal remainders keep the lower class first.
    by_remainder.sort_by_key(|&c| std::cmp::Reverse(by_class[c].len() * max % n));
    for c in by_remainder {
        if left == 0 {
            break;
        }
        quota[c] += 1;
        left -= 1;
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut chosen = Vec::with_capacity(max);
    for (members, &q) in by_class.iter_mut().zip(&quota) {
        // Partial Fisher–Yates: the first q places are a uniform sample.
        for i in 0..q {
            let j = rng.random_range(i..members.len());
            members.swap(i, j);
        }
        chosen.extend_from_slice(&members[..q]);
    }
    chosen.sort_unstable();
    chosen
}

/// Retrieval metrics of `queries [Q, dim]` (row-major) with `query_labels`, against
/// `references`. In leave-one-out the queries are the whole set; with
/// [`RetrievalOptions::max_queries`] a sample of them searches the whole set.
pub fn evaluate_retrieval(
    gpu: &Gpu,
    queries: &[f32],
    query_labels: &[u8],
    dim: usize,
    references: References,
    options: &RetrievalOptions,
) -> Result<RetrievalMetrics> {
    let q = query_labels.len();
    if dim == 0 || queries.len() != q * dim {
        return Err(Error::Config(format!(
            "retrieval: {q} query labels need {q}×{dim} embedding values, got {}",
            queries.len()
        )));
    }
    let (ref_rows, ref_labels, protocol) = match references {
        References::LeaveOneOut => (queries, query_labels, Protocol::LeaveOneOut),
        References::Gallery { embeddings, labels } => {
            if embeddings.len() != labels.len() * dim {
                return Err(Error::Config(format!(
                    "retrieval: {} gallery labels need {}×{dim} embedding values, got {}",
                    labels.len(),
                    labels.len(),
                    embeddings.len()
                )));
            }
            (embeddings, labels, Protocol::Gallery)
        }
    };
    let chosen = match options.max_queries {
        Some(max) if max < q => Some(stratified_sample(query_labels, max, options.sample_seed)),
        _ => None,
    };
    let (rows, labels, exclude) = match &chosen {
        Some(idx) => {
            let mut rows = Vec::with_capacity(idx.len() * dim);
            for &i in idx {
                rows.extend_from_slice(&queries[i as usize * dim..(i as usize + 1) * dim]);
            }
            let labels = idx.iter().map(|&i| query_labels[i as usize]).collect();
            (rows, labels, idx.clone())
        }
        None => (
            queries.to_vec(),
            query_labels.to_vec(),
            (0..q as u32).collect(),
        ),
    };
    let exclude = match protocol {
        Protocol::LeaveOneOut => exclude,
        Protocol::Gallery => vec![NO_EXCLUDE; labels.len()],
    };
    let scores = search(
        gpu, &rows, &labels, &exclude, ref_rows, ref_labels, dim, options,
    )?;
    Ok(RetrievalMetrics {
        metric: options.metric,
        protocol,
        sample: chosen.map(|c| QuerySample {
            drawn: c.len(),
            of: q,
            seed: options.sample_seed,
        }),
        references: ref_labels.len(),
        ..scores
    })
}

/// The raw-pixel baseline: the same metrics on flattened images normalised as the model's
/// input, `(pixel/255 − shift)·scale` — what a retrieval figure must beat. Leave-one-out
/// within `set`, or against `gallery`; `options.max_queries` (e.g.
/// [`DEFAULT_PIXEL_QUERIES`]) samples the queries. The references must fit one storage
/// binding as f32 (10,000 Fashion-MNIST images are 31 MB; 55,000 are 172 MB, over lavapipe's
/// 128 MiB).
pub fn pixel_baseline(
    gpu: &Gpu,
    set: &ImageSet,
    gallery: Option<&ImageSet>,
    norm: PixelNorm,
    options: &RetrievalOptions,
) -> Result<RetrievalMetrics> {
    let pixels = set.pixels();
    if let Some(g) = gallery
        && g.pixels() != pixels
    {
        return Err(Error::Config(format!(
            "pixel baseline: gallery images have {} values, queries {pixels}",
            g.pixels()
        )));
    }
    let flat = |s: &ImageSet| -> Vec<f32> {
        s.images
            .iter()
            .map(|&p| (p as f32 / 255.0 - norm.shift) * norm.scale)
            .collect()
    };
    let queries = flat(set);
    match gallery {
        None => evaluate_retrieval(
            gpu,
            &queries,
            &set.labels,
            pixels,
            References::LeaveOneOut,
            options,
        ),
        Some(g) => {
            let rows = flat(g);
            evaluate_retrieval(
                gpu,
                &queries,
                &set.labels,
                pixels,
                References::Gallery {
                    embeddings: &rows,
                    labels: &g.labels,
                },
                options,
            )
        }
    }
}
