//! Approximate search for galleries too large to scan: an HNSW graph (Malkov & Yashunin,
//! "Efficient and robust approximate nearest neighbor search using Hierarchical Navigable
//! Small World graphs", 2018) from the `usearch` library, kept in the index file as bytes.
//! usearch was chosen over `hnsw_rs` by measurement on 55,000 Fashion-MNIST embeddings (both
//! recall@10 1.0 at M = 16, ef = 64; usearch built in 0.69× the time and searched in 0.48×,
//! and saves to one buffer; BENCHMARKS.md). Its recall against the exact GPU search is
//! measured when the graph is built ([`recall_against_exact`]).

use std::time::Instant;

use usearch::{IndexOptions, MetricKind, ScalarKind};

use super::{Index, Neighbor};
use crate::cpu::distance::EUCLIDEAN_EPS;
use crate::error::{Error, Result};
use crate::eval::retrieval::{DEFAULT_CHUNK_BYTES, nearest};
use crate::gpu::Gpu;
use crate::vocab::PairwiseMetric;

/// HNSW's M (links per node), and the candidate lists while adding and searching: usearch's
/// defaults for M and ef_construction, and an ef_search that holds recall@10 at ≥ 0.99 on
/// the measured galleries.
pub const CONNECTIVITY: usize = 16;
pub const EXPANSION_ADD: usize = 128;
pub const EXPANSION_SEARCH: usize = 64;

/// An HNSW graph over an index's rows (its keys are the row numbers).
pub struct Approximate {
    graph: usearch::Index,
    metric: PairwiseMetric,
}

fn failed(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("the approximate index could not {what}: {e}"))
}

impl Approximate {
    fn empty(dim: usize, metric: PairwiseMetric) -> Result<Approximate> {
        let options = IndexOptions {
            dimensions: dim,
            // Squared L2 ranks as the Euclidean distance; cosine is 1 − cos, as ours.
            metric: match metric {
                PairwiseMetric::Euclidean => MetricKind::L2sq,
                PairwiseMetric::Cosine => MetricKind::Cos,
            },
            quantization: ScalarKind::F32,
            connectivity: CONNECTIVITY,
            expansion_add: EXPANSION_ADD,
            expansion_search: EXPANSION_SEARCH,
            multi: false,
        };
        let graph = usearch::Index::new(&options).map_err(|e| failed("be made", e))?;
        Ok(Approximate { graph, metric })
    }

    /// The graph of every row of `index`.
    pub fn build(index: &Index) -> Result<Approximate> {
        let mut graph = Approximate::empty(index.dim, index.metric)?;
        graph.add(index, 0)?;
        Ok(graph)
    }

    /// Adds the rows of `index` from `first` on (rows appended since the graph was built),
    /// on every core.
    pub fn add(&mut self, index: &Index, first: usize) -> Result<()> {
        let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
        self.graph
            .reserve_capacity_and_threads(index.len(), threads)
            .map_err(|e| failed("reserve room", e))?;
        let rows: Vec<usize> = (first..index.len()).collect();
        let per = rows.len().div_ceil(threads).max(1);
        let graph = &self.graph;
        std::thread::scope(|s| {
            let parts: Vec<_> = rows
                .chunks(per)
                .map(|part| {
                    s.spawn(move || {
                        for &r in part {
                            let row = &index.embeddings[r * index.dim..(r + 1) * index.dim];
                            graph
                                .add(r as u64, row)
                                .map_err(|e| failed("add a row", e))?;
                        }
                        Ok(())
                    })
                })
                .collect();
            parts
                .into_iter()
                .try_for_each(|p| p.join().expect("an indexing thread panicked"))
        })
    }

    /// The graph as bytes, for the index file.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut bytes = vec![0u8; self.graph.serialized_length()];
        self.graph
            .save_to_buffer(&mut bytes)
            .map_err(|e| failed("be saved", e))?;
        Ok(bytes)
    }

    /// The graph [`to_bytes`](Self::to_bytes) wrote, for rows of `dim` values.
    pub fn from_bytes(bytes: &[u8], dim: usize, metric: PairwiseMetric) -> Result<Approximate> {
        let graph = Approximate::empty(dim, metric)?;
        graph
            .graph
            .load_from_buffer(bytes)
            .map_err(|e| failed("be read", e))?;
        Ok(graph)
    }

    /// The rows in the graph.
    pub fn len(&self) -> usize {
        self.graph.size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// About the `k` nearest rows of each query (`[Q, dim]`), nearest first, with their
    /// distances in the index's metric (Euclidean with the ε of the exact search).
    pub fn search(&self, queries: &[f32], dim: usize, k: usize) -> Result<Vec<Vec<Neighbor>>> {
        queries
            .chunks_exact(dim)
            .map(|q| {
                let found = self.graph.search(q, k).map_err(|e| failed("search", e))?;
                Ok(found
                    .keys
                    .iter()
                    .zip(&found.distances)
                    .map(|(&row, &d)| Neighbor {
                        row: row as usize,
                        distance: match self.metric {
                            PairwiseMetric::Euclidean => (d + EUCLIDEAN_EPS as f32).sqrt(),
                            PairwiseMetric::Cosine => d,
                        },
                    })
                    .collect())
            })
            .collect()
    }
}

/// How the graph compares with the exact search on the same queries.
#[derive(Debug, Clone, Copy)]
pub struct Recall {
    /// The share of the exact k nearest other rows that the graph also returns.
    pub recall: f64,
    /// Seconds of the exact GPU search and of the graph's, over all the queries.
    pub exact_s: f64,
    pub approximate_s: f64,
}

/// Recall@`k` of `graph` against the exact GPU search, over `sample` rows of `index` used as
/// queries, each left out of its own lists (so finding itself earns nothing), and the time
/// each search took.
pub fn recall_against_exact(
    gpu: &Gpu,
    index: &Index,
    graph: &Approximate,
    sample: &[usize],
    k: usize,
) -> Result<Recall> {
    let dim = index.dim;
    let queries: Vec<f32> = sample
        .iter()
        .flat_map(|&r| index.embeddings[r * dim..(r + 1) * dim].iter().copied())
        .collect();
    let wanted = (k + 1).min(index.len());
    let start = Instant::now();
    let exact = nearest(
        gpu,
        &queries,
        &index.embeddings,
        dim,
        index.metric,
        (wanted, DEFAULT_CHUNK_BYTES),
    )?;
    let exact_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let approximate = graph.search(&queries, dim, wanted)?;
    let approximate_s = start.elapsed().as_secs_f64();
    let (mut found, mut total) = (0usize, 0usize);
    for ((&own, exact), approximate) in sample.iter().zip(&exact).zip(&approximate) {
        let truth: Vec<u32> = exact
            .iter()
            .map(|&(row, _)| row)
            .filter(|&row| row as usize != own)
            .take(k)
            .collect();
        let got: Vec<u32> = approximate
            .iter()
            .map(|n| n.row as u32)
            .filter(|&row| row as usize != own)
            .take(k)
            .collect();
        total += truth.len();
        found += truth.iter().filter(|r| got.contains(r)).count();
    }
    Ok(Recall {
        recall: if total == 0 {
            f64::NAN
        } else {
            found as f64 / total as f64
        },
        exact_s,
        approximate_s,
    })
}
