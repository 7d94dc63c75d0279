//! The GPU side of the server: one thread owns the device, the model's embedding program
//! and the gallery index, and takes jobs from a bounded queue. Jobs that arrive within a
//! short window of each other — up to a maximum number of images — are embedded together,
//! in one upload and one submission per chunk, so throughput grows with load; each job then
//! gets its own rows (and, for a query, its neighbours) back.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::eval::embed::Embedder;
use crate::gallery::Index;
use crate::gpu::Gpu;
use crate::model::ModelTensors;
use crate::ops::gather;
use crate::runs::saved::SavedRun;

/// How jobs are gathered into batches.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Images per GPU batch at most (1: every job alone, as an unbatched server).
    pub max_images: usize,
    /// How long the first job of a batch waits for others.
    pub window: Duration,
    /// Jobs waiting at most; more are refused (the server answers 503).
    pub queue: usize,
}

/// A neighbour found for a query: the gallery image's id, distance and label.
#[derive(Debug, Clone)]
pub struct Found {
    pub id: String,
    pub distance: f32,
    pub label: Option<String>,
}

/// A query image's neighbours, nearest first, and the vote: the label most share, and
/// their share.
#[derive(Debug, Clone)]
pub struct Neighbors {
    pub found: Vec<Found>,
    pub vote: Option<(String, f64)>,
}

/// What a job gets back: its embeddings (`[m, D]`), and for a query the neighbours of each
/// image.
#[derive(Debug, Clone)]
pub struct Answer {
    pub embeddings: Vec<f32>,
    pub neighbors: Vec<Neighbors>,
}

struct Job {
    /// `[m, C, H, W]` u8 images, decoded as the run reads images.
    pixels: Vec<u8>,
    count: usize,
    /// Search the index for this many neighbours of each image.
    query: Option<usize>,
    reply: oneshot::Sender<Result<Answer>>,
}

/// The queue into the GPU thread.
#[derive(Clone)]
pub struct Batcher {
    jobs: SyncSender<Job>,
}

/// Why a job was not queued.
pub enum Refused {
    /// The queue is full: try again later (503).
    Busy,
    /// The GPU thread has stopped.
    Stopped,
}

impl Batcher {
    /// Starts the GPU thread for `run` (and the index at `index`, if any); returns the queue,
    /// the thread, which ends once every `Batcher` is dropped and the queue is drained, and
    /// the index's number of images.
    pub fn start(
        run: SavedRun,
        index: Option<PathBuf>,
        batching: Batching,
    ) -> Result<(Batcher, JoinHandle<()>, Option<usize>)> {
        let (jobs, rx) = sync_channel(batching.queue);
        // The device and the index are made on the thread that uses them; set-up errors
        // come back before the server listens.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("gpu".into())
            .spawn(move || {
                let set_up = || -> Result<(Gpu, Option<Index>)> {
                    let gpu = Gpu::new()?;
                    let index = match index.as_deref() {
                        Some(path) => {
                            let index = Index::load(path)?;
                            index.check_model(&run, path)?;
                            Some(index)
                        }
                        None => None,
                    };
                    Ok((gpu, index))
                };
                match set_up() {
                    Ok((gpu, index)) => {
                        let _ = ready_tx.send(Ok(index.as_ref().map(Index::len)));
                        serve_jobs(&gpu, &run, index.as_ref(), batching, rx);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| Error::Training(format!("cannot start the GPU thread: {e}")))?;
        let rows = ready_rx
            .recv()
            .map_err(|_| Error::Training("the GPU thread stopped while starting".into()))??;
        Ok((Batcher { jobs }, thread, rows))
    }

    /// Queues `count` images (`pixels`, `[count, C, H, W]` u8) to embed, and with `query`
    /// to search for; the answer comes on the returned channel.
    pub fn submit(
        &self,
        pixels: Vec<u8>,
        count: usize,
        query: Option<usize>,
    ) -> std::result::Result<oneshot::Receiver<Result<Answer>>, Refused> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            pixels,
            count,
            query,
            reply,
        };
        match self.jobs.try_send(job) {
            Ok(()) => Ok(answer),
            Err(TrySendError::Full(_)) => Err(Refused::Busy),
            Err(TrySendError::Disconnected(_)) => Err(Refused::Stopped),
        }
    }
}

/// The GPU thread's loop: a batch of jobs at a time until the queue closes.
fn serve_jobs(
    gpu: &Gpu,
    run: &SavedRun,
    index: Option<&Index>,
    batching: Batching,
    rx: Receiver<Job>,
) {
    let values = match ModelTensors::upload(gpu, &run.model, &run.values) {
        Ok(v) => v,
        Err(e) => return fail_all(rx, e),
    };
    // An embedding program per power-of-two batch up to the maximum: a batch runs on the
    // smallest that holds it (a program always embeds its whole chunk).
    let sizes = std::iter::successors(Some(1usize), |s| Some(s * 2))
        .take_while(|&s| s < batching.max_images)
        .chain([batching.max_images]);
    let embedders: Result<Vec<Embedder>> = sizes
        .map(|size| Embedder::new(gpu, &run.model, &values, run.norm, size))
        .collect();
    let embedders = match embedders {
        Ok(e) => e,
        Err(e) => return fail_all(rx, e),
    };
    let [c, h, w] = run.model.config.input;
    let dim = run.model.embedding_dim();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let mut images = batch[0].count;
        let deadline = Instant::now() + batching.window;
        while images < batching.max_images {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(job) => {
                    images += job.count;
                    batch.push(job);
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        let pixels: Vec<u8> = batch
            .iter()
            .flat_map(|j| j.pixels.iter().copied())
            .collect();
        let embedder = embedders
            .iter()
            .find(|e| e.chunk() >= images)
            .unwrap_or_else(|| embedders.last().expect("at least one program"));
        let embedded = gather::upload_images(gpu, &pixels, images, c * h * w)
            .and_then(|packed| embedder.embed(&packed, images));
        let mut row = 0;
        for job in batch {
            let answer = embedded.as_ref().map_err(Clone::clone).and_then(|e| {
                let mine = e[row * dim..(row + job.count) * dim].to_vec();
                let neighbors = match (job.query, index) {
                    (Some(k), Some(index)) => search(gpu, index, &mine, k)?,
                    _ => Vec::new(),
                };
                Ok(Answer {
                    embeddings: mine,
                    neighbors,
                })
            });
            row += job.count;
            // A client that went away drops its receiver; nothing to do then.
            let _ = job.reply.send(answer);
        }
    }
}

/// The `k` nearest gallery images of each row of `queries`, with the vote.
fn search(gpu: &Gpu, index: &Index, queries: &[f32], k: usize) -> Result<Vec<Neighbors>> {
    let found = index.search(gpu, queries, k, false)?;
    Ok(found
        .iter()
        .map(|neighbors| {
            let found = neighbors
                .iter()
                .map(|n| Found {
                    id: index.ids[n.row].clone(),
                    distance: n.distance,
                    label: index.label(n.row).map(String::from),
                })
                .collect();
            let vote = index.vote(neighbors).map(|(l, s)| (l.to_string(), s));
            Neighbors { found, vote }
        })
        .collect())
}

/// Answers every job with the set-up error that stopped the GPU thread.
fn fail_all(rx: Receiver<Job>, e: Error) {
    while let Ok(job) = rx.recv() {
        let _ = job.reply.send(Err(e.clone()));
    }
}
