//! A gallery index: the embeddings of a set of images by one model, with their ids (paths),
//! their labels (the folder an image sits in under the indexed directory, when it sits in
//! one) and the model's fingerprint, so that images embedded by another model are refused.
//!
//! One safetensors file holds it: `embeddings` `[N, D]` f32 and `labels` `[N]` i32 (−1 for
//! none), with the ids, the label names, the fingerprint, the search metric and the run it
//! was built with in the metadata; and, when built for approximate search, an HNSW graph
//! of the rows as the `hnsw` bytes ([`approximate`]). Search is exact by default, on the
//! GPU: the chunked pairwise distance and top-k kernels that score retrieval
//! (`eval::retrieval::nearest`).

pub mod approximate;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde_json::json;

use crate::error::{Error, Result};
use crate::eval::retrieval::{DEFAULT_CHUNK_BYTES, nearest, retrieval_metric};
use crate::files::write_atomic;
use crate::gpu::Gpu;
use crate::ops::topk::K_MAX;
use crate::runs::saved::SavedRun;
use crate::vocab::PairwiseMetric;
use approximate::Approximate;

/// Metadata keys of the index file.
const IDS: &str = "ids";
const LABEL_NAMES: &str = "label_names";
const FINGERPRINT: &str = "fingerprint";
const METRIC: &str = "metric";
const RUN: &str = "run";

/// The embeddings of a gallery and what identifies each.
pub struct Index {
    /// `[len, dim]`, row-major.
    pub embeddings: Vec<f32>,
    pub dim: usize,
    /// Each image's id: its path.
    pub ids: Vec<String>,
    /// Each image's label (an index into `label_names`), if it has one.
    pub labels: Vec<Option<u32>>,
    pub label_names: Vec<String>,
    /// The fingerprint of the model that embedded it ([`SavedRun::fingerprint`]).
    pub fingerprint: String,
    pub metric: PairwiseMetric,
    /// The run directory (or model file) it was built with, as given.
    pub run: PathBuf,
    /// The HNSW graph of the rows, when built for approximate search.
    pub approximate: Option<Approximate>,
}

/// A gallery image found by a search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbor {
    /// Its row in the index.
    pub row: usize,
    pub distance: f32,
}

impl Index {
    /// An empty index of `run`'s model, which must have a distance the GPU search offers.
    pub fn new(run: &SavedRun, path: &Path) -> Result<Index> {
        let metric = retrieval_metric(run.model.config.distance).ok_or_else(|| {
            Error::Config(
                "this model trains with the L1 distance, which the GPU search does not offer \
                 (euclidean and cosine): train with --distance euclidean or cosine to index"
                    .into(),
            )
        })?;
        Ok(Index {
            embeddings: Vec::new(),
            dim: run.model.embedding_dim(),
            ids: Vec::new(),
            labels: Vec::new(),
            label_names: Vec::new(),
            fingerprint: run.fingerprint(),
            metric,
            run: path.to_path_buf(),
            approximate: None,
        })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Refuses `run` unless it is the model the index was built with.
    pub fn check_model(&self, run: &SavedRun, index: &Path) -> Result<()> {
        let theirs = run.fingerprint();
        if theirs == self.fingerprint {
            return Ok(());
        }
        Err(Error::Config(format!(
            "{} was built with another model (fingerprint {}; this one's is {theirs}): its \
             embeddings and this model's are not comparable. Use the model it was built with \
             ({}), or build a new index with this one",
            index.display(),
            self.fingerprint,
            self.run.display()
        )))
    }

    /// Appends images: their ids, labels (names) and embeddings (`ids.len()` rows), to the
    /// approximate search's graph too when there is one.
    pub fn add(
        &mut self,
        ids: Vec<String>,
        labels: Vec<Option<String>>,
        embeddings: &[f32],
    ) -> Result<()> {
        let first = self.len();
        assert_eq!(ids.len(), labels.len(), "a label (or none) per id");
        assert_eq!(embeddings.len(), ids.len() * self.dim, "a row per id");
        let mut known: HashMap<String, u32> = self
            .label_names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u32))
            .collect();
        for label in labels {
            self.labels.push(label.map(|name| {
                *known.entry(name.clone()).or_insert_with(|| {
                    self.label_names.push(name);
                    self.label_names.len() as u32 - 1
                })
            }));
        }
        self.ids.extend(ids);
        self.embeddings.extend_from_slice(embeddings);
        if let Some(mut graph) = self.approximate.take() {
            graph.add(self, first)?;
            self.approximate = Some(graph);
        }
        Ok(())
    }

    /// The label name of row `row`, if it has one.
    pub fn label(&self, row: usize) -> Option<&str> {
        self.labels[row].map(|l| self.label_names[l as usize].as_str())
    }

    /// The `k` nearest gallery images of each query (`[Q, dim]` row-major), nearest first:
    /// by the approximate graph when the index has one and `exact` is false, else exactly
    /// on the GPU.
    pub fn search(
        &self,
        gpu: &Gpu,
        queries: &[f32],
        k: usize,
        exact: bool,
    ) -> Result<Vec<Vec<Neighbor>>> {
        if self.is_empty() {
            return Err(Error::Config(
                "the index is empty: add images with `siamese index add` first".into(),
            ));
        }
        if k == 0 || k > K_MAX {
            return Err(Error::Config(format!(
                "-k {k}: the GPU search returns 1 to {K_MAX} neighbours"
            )));
        }
        let k = k.min(self.len());
        if let (Some(graph), false) = (&self.approximate, exact) {
            return graph.search(queries, self.dim, k);
        }
        let found = nearest(
            gpu,
            queries,
            &self.embeddings,
            self.dim,
            self.metric,
            (k, DEFAULT_CHUNK_BYTES),
        )?;
        Ok(found
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|(i, distance)| Neighbor {
                        row: i as usize,
                        distance,
                    })
                    .collect()
            })
            .collect())
    }

    /// The label most of `neighbors` have (the nearest one's among tied labels) and the
    /// share of the labelled neighbours that have it; None if none has a label.
    pub fn vote(&self, neighbors: &[Neighbor]) -> Option<(&str, f64)> {
        let labelled: Vec<u32> = neighbors
            .iter()
            .filter_map(|n| self.labels[n.row])
            .collect();
        let mut votes: HashMap<u32, usize> = HashMap::new();
        for &l in &labelled {
            *votes.entry(l).or_default() += 1;
        }
        let most = *votes.values().max()?;
        // Among the labels with the most votes, the one met first (the nearest).
        let winner = labelled.iter().find(|l| votes[l] == most)?;
        Some((
            self.label_names[*winner as usize].as_str(),
            most as f64 / labelled.len() as f64,
        ))
    }

    /// Writes the index to `path` (through a temporary file and a rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let labels: Vec<i32> = self
            .labels
            .iter()
            .map(|l| l.map_or(-1, |l| l as i32))
            .collect();
        let invalid = |e: safetensors::SafeTensorError| {
            Error::Config(format!("cannot lay out the index: {e}"))
        };
        let graph = self
            .approximate
            .as_ref()
            .map(Approximate::to_bytes)
            .transpose()?;
        let mut views = vec![
            (
                "embeddings",
                TensorView::new(
                    Dtype::F32,
                    vec![self.len(), self.dim],
                    bytemuck::cast_slice(&self.embeddings),
                )
                .map_err(invalid)?,
            ),
            (
                "labels",
                TensorView::new(Dtype::I32, vec![self.len()], bytemuck::cast_slice(&labels))
                    .map_err(invalid)?,
            ),
        ];
        if let Some(bytes) = &graph {
            views.push((
                "hnsw",
                TensorView::new(Dtype::U8, vec![bytes.len()], bytes).map_err(invalid)?,
            ));
        }
        let metadata = [
            (IDS, json!(self.ids).to_string()),
            (LABEL_NAMES, json!(self.label_names).to_string()),
            (FINGERPRINT, self.fingerprint.clone()),
            (METRIC, metric_name(self.metric).to_string()),
            (RUN, self.run.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let bytes = safetensors::serialize(views, Some(metadata)).map_err(invalid)?;
        write_atomic(path, &bytes).map_err(|e| Error::writing(path.display(), e))
    }

    /// Reads an index [`save`](Self::save) wrote; anything else is refused naming the file.
    pub fn load(path: &Path) -> Result<Index> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Data(format!("cannot read the index {}: {e}", path.display())))?;
        let bad = |why: String| {
            Error::Data(format!(
                "{} is not an index written by `siamese index build` ({why})",
                path.display()
            ))
        };
        let file = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let field = |key: &str| {
            meta.get(key)
                .cloned()
                .ok_or_else(|| bad(format!("no `{key}` in its metadata")))
        };
        let embeddings = file
            .tensor("embeddings")
            .map_err(|e| bad(format!("embeddings: {e}")))?;
        let labels = file
            .tensor("labels")
            .map_err(|e| bad(format!("labels: {e}")))?;
        let [n, dim] = embeddings.shape()[..] else {
            return Err(bad("embeddings are not [N, D]".into()));
        };
        let ids: Vec<String> =
            serde_json::from_str(&field(IDS)?).map_err(|e| bad(format!("ids: {e}")))?;
        let label_names: Vec<String> = serde_json::from_str(&field(LABEL_NAMES)?)
            .map_err(|e| bad(format!("label names: {e}")))?;
        let labels: Vec<Option<u32>> = labels
            .data()
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")))
            .map(|l| u32::try_from(l).ok())
            .collect();
        if embeddings.dtype() != Dtype::F32
            || ids.len() != n
            || labels.len() != n
            || labels
                .iter()
                .flatten()
                .any(|&l| l as usize >= label_names.len())
        {
            return Err(bad(format!(
                "{n} rows, {} ids, {} labels of {} names",
                ids.len(),
                labels.len(),
                label_names.len()
            )));
        }
        let metric = match field(METRIC)?.as_str() {
            "euclidean" => PairwiseMetric::Euclidean,
            "cosine" => PairwiseMetric::Cosine,
            other => return Err(bad(format!("unknown metric `{other}`"))),
        };
        let approximate = match file.tensor("hnsw") {
            Ok(bytes) => Some(Approximate::from_bytes(bytes.data(), dim, metric)?),
            Err(_) => None,
        };
        if approximate.as_ref().is_some_and(|g| g.len() != n) {
            return Err(bad(format!(
                "its graph has other rows than its {n} embeddings"
            )));
        }
        Ok(Index {
            embeddings: embeddings
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect(),
            dim,
            ids,
            labels,
            label_names,
            fingerprint: field(FINGERPRINT)?,
            metric,
            run: PathBuf::from(field(RUN)?),
            approximate,
        })
    }
}

pub fn metric_name(metric: PairwiseMetric) -> &'static str {
    match metric {
        PairwiseMetric::Euclidean => "euclidean",
        PairwiseMetric::Cosine => "cosine",
    }
}

/// The label of an image at `path` under the indexed directory `root`: the first folder of
/// its path below `root`, None for an image directly in `root` (or outside it).
pub fn folder_label(root: &Path, path: &Path) -> Option<String> {
    let relative = path.strip_prefix(root).ok()?;
    let mut parts = relative.components();
    let first = parts.next()?;
    parts.next()?;
    Some(first.as_os_str().to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(labels: &[Option<&str>]) -> Index {
        let mut index = Index {
            embeddings: Vec::new(),
            dim: 1,
            ids: Vec::new(),
            labels: Vec::new(),
            label_names: Vec::new(),
            fingerprint: "f".into(),
            metric: PairwiseMetric::Euclidean,
            run: "run".into(),
            approximate: None,
        };
        let ids = (0..labels.len()).map(|i| i.to_string()).collect();
        let names = labels.iter().map(|l| l.map(String::from)).collect();
        index.add(ids, names, &vec![0.0; labels.len()]).unwrap();
        index
    }

    fn near(rows: &[usize]) -> Vec<Neighbor> {
        rows.iter()
            .map(|&row| Neighbor { row, distance: 0.0 })
            .collect()
    }

    #[test]
    fn the_vote_is_the_most_common_label_the_nearest_on_ties() {
        let i = index(&[Some("cat"), Some("dog"), Some("dog"), None, Some("cat")]);
        assert_eq!(i.label_names, ["cat", "dog"]);
        // dog 2, cat 1, one unlabelled: dog with 2 of 3 labelled.
        assert_eq!(i.vote(&near(&[1, 0, 3, 2])), Some(("dog", 2.0 / 3.0)));
        // cat 2, dog 2: the nearest of the two labels wins.
        assert_eq!(i.vote(&near(&[4, 1, 0, 2])), Some(("cat", 0.5)));
        assert_eq!(i.vote(&near(&[3])), None);
    }

    #[test]
    fn a_folder_names_the_label_of_the_images_in_it() {
        let root = Path::new("gallery");
        assert_eq!(
            folder_label(root, Path::new("gallery/boots/a/1.png")),
            Some("boots".into())
        );
        assert_eq!(folder_label(root, Path::new("gallery/1.png")), None);
        assert_eq!(folder_label(root, Path::new("other/x/1.png")), None);
    }
}
