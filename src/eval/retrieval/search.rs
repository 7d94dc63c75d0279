//! The chunked search behind every retrieval figure: the distance matrix and the k nearest
//! on the GPU, chunk by chunk of query rows; precision@1 and recall@k from the k nearest,
//! R-precision and MAP@R from the distances on the host's cores.

use super::{Protocol, RetrievalMetrics, RetrievalOptions};
use crate::cpu::topk::NO_EXCLUDE;
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Kernel, Operands, Tensor, Texels};
use crate::ops::distance;
use crate::ops::pack;
use crate::ops::topk::{self, K_MAX};
use crate::vocab::PairwiseMetric;
use std::cmp::Ordering;

/// The buffers and kernels of one chunk of query rows.
struct ChunkProgram {
    queries: Tensor,
    exclude: Tensor,
    distances: Tensor,
    nearest: Tensor,
    nearest_distances: Tensor,
    kernel: Option<Kernel>,
}

/// Sums of the per-query scores.
#[derive(Debug, Clone, Default)]
struct Sums {
    queries: usize,
    without_match: usize,
    precision_at_1: f64,
    recall: Vec<f64>,
    r_precision: f64,
    map_at_r: f64,
}

impl Sums {
    /// The metrics these sums give over `n` references, for recall at each of `ks`.
    fn metrics(&self, metric: PairwiseMetric, n: usize, ks: &[usize]) -> RetrievalMetrics {
        let mean = |s: f64| {
            if self.queries == 0 {
                f64::NAN
            } else {
                s / self.queries as f64
            }
        };
        RetrievalMetrics {
            metric,
            protocol: Protocol::LeaveOneOut,
            queries: self.queries,
            queries_without_match: self.without_match,
            references: n,
            sample: None,
            precision_at_1: mean(self.precision_at_1),
            recall_at_k: ks
                .iter()
                .zip(&self.recall)
                .map(|(&k, &s)| (k, mean(s)))
                .collect(),
            r_precision: mean(self.r_precision),
            map_at_r: mean(self.map_at_r),
        }
    }

    fn add(&mut self, other: &Sums) {
        self.queries += other.queries;
        self.without_match += other.without_match;
        self.precision_at_1 += other.precision_at_1;
        for (a, b) in self.recall.iter_mut().zip(&other.recall) {
            *a += b;
        }
        self.r_precision += other.r_precision;
        self.map_at_r += other.map_at_r;
    }
}

/// The chunked GPU search and the host's MAP@R; fills the metric fields.
#[allow(clippy::too_many_arguments)]
pub(super) fn search(
    gpu: &Gpu,
    rows: &[f32],
    labels: &[u8],
    exclude: &[u32],
    ref_rows: &[f32],
    ref_labels: &[u8],
    dim: usize,
    options: &RetrievalOptions,
) -> Result<RetrievalMetrics> {
    let (q, n) = (labels.len(), ref_labels.len());
    let ks = &options.recall_ks;
    let k_max = check_search(rows, ref_rows, q, n, exclude, ks)?;
    let mut class_size = [0usize; 256];
    for &c in ref_labels {
        class_size[c as usize] += 1;
    }
    let chunk = chunk_rows(gpu, n, q, options.chunk_bytes);
    let buffers = ChunkBuffers::new(gpu, ref_rows, (n, dim), chunk, k_max)?;
    let mut sums = Sums {
        recall: vec![0.0; ks.len()],
        ..Sums::default()
    };
    let queries = (rows, exclude, dim);
    run_chunks(
        gpu,
        &buffers,
        options.metric,
        queries,
        chunk,
        &mut |start, program| {
            let m = program.exclude.shape()[0];
            let nearest = gpu.read_u32(&program.nearest)?;
            let distances = gpu.read_f32(&program.distances)?;
            let chunk_sums = score_rows(
                &distances,
                &nearest,
                &labels[start..start + m],
                &exclude[start..start + m],
                ref_labels,
                &class_size,
                ks,
                k_max,
            );
            sums.add(&chunk_sums);
            Ok(())
        },
    )?;
    Ok(sums.metrics(options.metric, n, ks))
}

/// Query rows per chunk: the byte budget of a chunk's `[rows, n]` distances and the binding
/// limit, at least one row and at most the `q` queries.
fn chunk_rows(gpu: &Gpu, n: usize, q: usize, chunk_bytes: u64) -> usize {
    let limit = gpu.limits().max_storage_buffer_binding_size;
    ((chunk_bytes.min(limit) / (n * 4) as u64) as usize).clamp(1, q)
}

/// Runs the search of `queries` (rows of `dim`, each with the reference it excludes) chunk
/// by chunk of `chunk` rows, handing `each` the first query's number and the program that
/// ran (its distances and nearest lists ready to read).
fn run_chunks(
    gpu: &Gpu,
    buffers: &ChunkBuffers,
    metric: PairwiseMetric,
    (queries, exclude, dim): (&[f32], &[u32], usize),
    chunk: usize,
    each: &mut dyn FnMut(usize, &ChunkProgram) -> Result<()>,
) -> Result<()> {
    let q = exclude.len();
    let full = buffers.program(gpu, metric, chunk)?;
    for start in (0..q).step_by(chunk) {
        let m = chunk.min(q - start);
        let short;
        let program = if m == chunk {
            &full
        } else {
            short = buffers.program(gpu, metric, m)?;
            &short
        };
        gpu.write_f32(&program.queries, &queries[start * dim..(start + m) * dim])?;
        gpu.write_u32(&program.exclude, &exclude[start..start + m])?;
        gpu.run(&[program.kernel.as_ref().expect("built")]);
        each(start, program)?;
    }
    Ok(())
}

/// The `k` nearest references of each query, nearest first (the lower index first on
/// ties): `(reference index, distance)` per neighbour, `k` per query, found by the same
/// chunked distance + top-k kernels as the metrics, within `chunk_bytes` of distances.
pub fn nearest(
    gpu: &Gpu,
    queries: &[f32],
    references: &[f32],
    dim: usize,
    metric: PairwiseMetric,
    (k, chunk_bytes): (usize, u64),
) -> Result<Vec<Vec<(u32, f32)>>> {
    let (q, n) = (queries.len() / dim.max(1), references.len() / dim.max(1));
    if dim == 0 || queries.len() != q * dim || references.len() != n * dim {
        return Err(Error::Config(format!(
            "search: queries ({}) and references ({}) must be whole rows of {dim} values",
            queries.len(),
            references.len()
        )));
    }
    let exclude = vec![NO_EXCLUDE; q];
    check_search(queries, references, q, n, &exclude, &[k])?;
    let chunk = chunk_rows(gpu, n, q, chunk_bytes);
    let buffers = ChunkBuffers::new(gpu, references, (n, dim), chunk, k)?;
    let mut found = Vec::with_capacity(q);
    let rows = (queries, exclude.as_slice(), dim);
    run_chunks(gpu, &buffers, metric, rows, chunk, &mut |_, program| {
        let nearest = gpu.read_u32(&program.nearest)?;
        let distances = gpu.read_f32(&program.nearest_distances)?;
        found.extend(
            nearest
                .chunks(k)
                .zip(distances.chunks(k))
                .map(|(i, d)| i.iter().copied().zip(d.iter().copied()).collect()),
        );
        Ok(())
    })?;
    Ok(found)
}

/// Refuses a search the GPU selection cannot run (no queries, a k outside 1..=the list's
/// length and the references a query searches) or embeddings that are not finite; returns
/// the largest k.
fn check_search(
    rows: &[f32],
    ref_rows: &[f32],
    q: usize,
    n: usize,
    exclude: &[u32],
    ks: &[usize],
) -> Result<usize> {
    let k_max = ks.iter().copied().max().unwrap_or(0);
    let excludes_one = exclude.iter().any(|&e| e != NO_EXCLUDE);
    let available = n - usize::from(excludes_one);
    if q == 0 || ks.is_empty() || ks.contains(&0) || k_max > K_MAX.min(available) {
        return Err(Error::Config(format!(
            "retrieval: recall@k needs queries and each k in 1..={} (the GPU selection's list, \
             and the {available} references a query searches); got {q} queries and k = {ks:?}",
            K_MAX.min(available)
        )));
    }
    if let Some(i) = rows.iter().chain(ref_rows).position(|v| !v.is_finite()) {
        return Err(Error::Data(format!(
            "retrieval: embedding value {i} is not finite (NaN or infinite); the model has \
             diverged — retrain with a lower learning rate"
        )));
    }
    Ok(k_max)
}

/// The buffers of a chunked search, allocated once for chunks of `chunk` queries against
/// `n` references of `dim` values, keeping the `k_max` nearest of each query.
struct ChunkBuffers {
    references: Tensor,
    /// On the texel kernel the references are packed once (the queries per chunk).
    packed_references: Option<Texels>,
    queries: Tensor,
    distances: Tensor,
    exclude: Tensor,
    nearest_distances: Tensor,
    nearest: Tensor,
    n: usize,
    dim: usize,
    k_max: usize,
}

impl ChunkBuffers {
    fn new(
        gpu: &Gpu,
        ref_rows: &[f32],
        (n, dim): (usize, usize),
        chunk: usize,
        k_max: usize,
    ) -> Result<ChunkBuffers> {
        let references = gpu.upload_f32(ref_rows, &[n, dim])?;
        let packed_references = if gpu.policy().pairwise_distance() == Operands::Texels {
            let (pack, texels) = pack::rows4(gpu, &references, false)?;
            gpu.run(&[&pack]);
            Some(texels)
        } else {
            None
        };
        Ok(ChunkBuffers {
            references,
            packed_references,
            queries: gpu.zeros(&[chunk, dim], DType::F32)?,
            distances: gpu.zeros(&[chunk, n], DType::F32)?,
            exclude: gpu.zeros(&[chunk], DType::U32)?,
            nearest_distances: gpu.zeros(&[chunk, k_max], DType::F32)?,
            nearest: gpu.zeros(&[chunk, k_max], DType::U32)?,
            n,
            dim,
            k_max,
        })
    }

    /// The kernels of a chunk of `m` queries: a full chunk's are built once; a short last
    /// chunk gets its own over views of the same buffers (offset 0, so always aligned).
    fn program(&self, gpu: &Gpu, metric: PairwiseMetric, m: usize) -> Result<ChunkProgram> {
        let (n, dim, k_max) = (self.n, self.dim, self.k_max);
        let view = |t: &Tensor, shape: &[usize]| t.view(0, shape).expect("a view within the chunk");
        let program = ChunkProgram {
            queries: view(&self.queries, &[m, dim]),
            exclude: view(&self.exclude, &[m]),
            distances: view(&self.distances, &[m, n]),
            nearest: view(&self.nearest, &[m, k_max]),
            nearest_distances: view(&self.nearest_distances, &[m, k_max]),
            kernel: None,
        };
        let pairwise = match &self.packed_references {
            Some(refs_tex) => {
                let (pack, queries_tex) = pack::rows4(gpu, &program.queries, false)?;
                let product = distance::pairwise_forward_tex(
                    gpu,
                    metric,
                    &queries_tex,
                    refs_tex,
                    (m, n, dim),
                    &program.distances,
                )?;
                Kernel::chain([pack, product])
            }
            None => distance::pairwise_forward(
                gpu,
                metric,
                &program.queries,
                &self.references,
                &program.distances,
            )?,
        };
        let select = topk::topk_rows(
            gpu,
            &program.distances,
            &program.exclude,
            k_max,
            &program.nearest_distances,
            &program.nearest,
        )?;
        Ok(ChunkProgram {
            kernel: Some(Kernel::chain([pairwise, select])),
            ..program
        })
    }
}

/// Scores the rows of one chunk, split over the host's cores: precision@1 and recall@k from
/// the GPU's k nearest (`nearest [m, k_max]`), R-precision and MAP@R from the distances
/// (`distances [m, n]`).
#[allow(clippy::too_many_arguments)]
fn score_rows(
    distances: &[f32],
    nearest: &[u32],
    labels: &[u8],
    exclude: &[u32],
    ref_labels: &[u8],
    class_size: &[usize; 256],
    ks: &[usize],
    k_max: usize,
) -> Sums {
    let (m, n) = (labels.len(), ref_labels.len());
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(m);
    let per = m.div_ceil(threads);
    let part = |lo: usize, hi: usize| -> Sums {
        let mut sums = Sums {
            recall: vec![0.0; ks.len()],
            ..Sums::default()
        };
        let mut scratch = Vec::with_capacity(n);
        for r in lo..hi {
            let label = labels[r];
            let own = exclude[r] != NO_EXCLUDE && ref_labels[exclude[r] as usize] == label;
            let relevant = class_size[label as usize] - usize::from(own);
            if relevant == 0 {
                sums.without_match += 1;
                continue;
            }
            sums.queries += 1;
            let top = &nearest[r * k_max..(r + 1) * k_max];
            let hit = |i: usize| ref_labels[top[i] as usize] == label;
            sums.precision_at_1 += f64::from(u8::from(hit(0)));
            for (s, &k) in sums.recall.iter_mut().zip(ks) {
                *s += f64::from(u8::from((0..k).any(hit)));
            }
            let (rp, ap) = r_precision_and_map_at_r(
                &distances[r * n..(r + 1) * n],
                exclude[r],
                ref_labels,
                label,
                relevant,
                &mut scratch,
            );
            sums.r_precision += rp;
            sums.map_at_r += ap;
        }
        sums
    };
    std::thread::scope(|s| {
        let parts: Vec<_> = (0..threads)
            .map(|t| {
                let part = &part;
                s.spawn(move || part(t * per, ((t + 1) * per).min(m)))
            })
            .collect();
        let mut total = Sums {
            recall: vec![0.0; ks.len()],
            ..Sums::default()
        };
        for p in parts {
            total.add(&p.join().expect("a scoring thread panicked"));
        }
        total
    })
}

/// Orders (distance, reference index) ascending, the lower index first on equal distances.
fn by_distance_then_index(x: &(f32, u32), y: &(f32, u32)) -> Ordering {
    x.0.partial_cmp(&y.0)
        .unwrap_or(Ordering::Equal)
        .then(x.1.cmp(&y.1))
}

/// (R-precision, AP@R) of one query from its row of distances: the `relevant` (= R) nearest
/// references but `exclude`, found by a linear-time selection, then sorted (R log R).
fn r_precision_and_map_at_r(
    row: &[f32],
    exclude: u32,
    ref_labels: &[u8],
    label: u8,
    relevant: usize,
    scratch: &mut Vec<(f32, u32)>,
) -> (f64, f64) {
    scratch.clear();
    scratch.extend(
        row.iter()
            .enumerate()
            .filter(|&(j, _)| j as u32 != exclude)
            .map(|(j, &d)| (d, j as u32)),
    );
    // The selection puts the R smallest first (the R-th in its sorted place); sort only those.
    if relevant < scratch.len() {
        scratch.select_nth_unstable_by(relevant - 1, by_distance_then_index);
    }
    let top = &mut scratch[..relevant];
    top.sort_unstable_by(by_distance_then_index);
    let (mut hits, mut ap) = (0usize, 0.0f64);
    for (i, &(_, j)) in top.iter().enumerate() {
        if ref_labels[j as usize] == label {
            hits += 1;
            ap += hits as f64 / (i + 1) as f64;
        }
    }
    (hits as f64 / relevant as f64, ap / relevant as f64)
}
