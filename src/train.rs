//! The training loop.
//!
//! Set-up builds everything once: the training images are uploaded packed (never again),
//! the step program (gather → tower on both branches as one batch → distance → loss →
//! backward → optimizer) is recorded on a tape with all its buffers. Each step the host only
//! samples indices and labels, writes them, and submits the step as ONE command buffer. The
//! loss of every step is copied on the GPU into a log that the host reads every
//! `log_every` steps, so the host never waits on the GPU step by step.
//!
//! Evaluation follows the reference protocol: validation images are held out of training;
//! 10,000 balanced pairs of them choose the verification threshold; 10,000 balanced test
//! pairs are scored at that threshold, with their ROC AUC.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::autograd::Tape;
use crate::data::augment::{Augment, AugmentSampler};
use crate::data::dataset::by_class;
use crate::data::dataset::{self, DataOptions, ImageSet};
use crate::data::sampler::{
    PairBatch, PairSampler, PkBatch, PkSampler, TripletBatch, TripletSampler,
};
use crate::error::{Error, Result};
use crate::eval::doctor::{Diagnosis, Evidence, GradSample, PairScores, ValidationPoint};
use crate::eval::embed::Embedder;
use crate::eval::embedding_metrics::{EmbeddingMetrics, embedding_metrics};
use crate::eval::embedding_stats::{embedding_stats, pca_2d};
use crate::eval::probe;
use crate::eval::protocol::{PairProtocol, Validation};
use crate::eval::verification::Verification;
use crate::gpu::{DType, Gpu, Kernel, Profiler, Tensor};
use crate::model::{ModelConfig, SiameseModel};
use crate::nn::TowerSpec;
use crate::nn::spec::REFERENCE_TOWER;
use crate::ops::amp::{self, LossScaleConfig, LossScaler, ScaleState};
use crate::ops::gather;
use crate::ops::mining::MiningStats;
use crate::optim::{Optimizer, OptimizerConfig, OptimizerKind, Schedule};
use crate::vocab::{Distance, LossKind, Miner, PairLabel, PixelNorm, Precision, TRANSFORM_LEN};

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
    pub optimizer: OptimizerConfig,
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
            optimizer: OptimizerConfig {
                kind: OptimizerKind::named("adam").expect("adam exists"),
                lr: 1e-3,
                weight_decay: 0.0,
                schedule: Schedule::Constant,
            },
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
            eval_every: 10_000,
            log_every: 20,
            pixel_norm: PixelNorm::UNIT,
            augment: Augment::default(),
            eval_chunk: 500,
            profile: false,
            train_eval_pairs: 2_000,
            doctor_images: 10_000,
            pixel_baseline: true,
            precision: Precision::F32,
            invert_pair_labels: false,
        }
    }
}

impl TrainConfig {
    /// The model this run trains, for images of shape `input` (`[C, H, W]`).
    pub fn model_config(&self, input: [usize; 3]) -> ModelConfig {
        ModelConfig {
            tower: self.tower.clone(),
            input,
            loss: self.loss,
            margin: self.margin,
            distance: self.distance,
            normalize: self.normalize,
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
        if let Some(miner) = self.miner {
            if self.loss != LossKind::Triplet {
                return bad(format!(
                    "miner {miner} mines triplets: use it with loss = triplet, or miner = none"
                ));
            }
            if let Some(p) = self.classes_per_batch
                && (p < 2 || !self.batch.is_multiple_of(p))
            {
                return bad(format!(
                    "with a miner, batch = classes_per_batch × K images: batch {} is not a multiple \
                     of classes_per_batch {p} (which must be at least 2)",
                    self.batch
                ));
            }
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
        self.augment.validate()
    }

    /// Images through the tower per sample: 1 with a miner (a sample is an image), else the
    /// loss's branches.
    pub fn images_per_sample(&self) -> usize {
        if self.miner.is_some() {
            1
        } else {
            self.loss.branches()
        }
    }
}

/// What the loop reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Set-up is done; training starts.
    Started {
        adapter: String,
        tower: String,
        params: usize,
        train_images: usize,
        val_images: usize,
        steps: usize,
    },
    /// Mean loss of the steps read back since the last report.
    Loss {
        step: usize,
        pairs: usize,
        loss: f32,
        lr: f32,
        pairs_per_sec: f64,
    },
    /// A validation pass (and the training pairs' accuracy, if they are scored).
    Validation {
        pairs: usize,
        loss: f32,
        accuracy: f64,
        roc_auc: f64,
        train_accuracy: Option<f64>,
        pairs_per_sec: f64,
    },
    /// Time of every dispatch of one step, in recording order (milliseconds): device
    /// timestamps, or host wall-clock per dispatch where `host_timed`.
    Profile {
        step: usize,
        host_timed: bool,
        kernels: Vec<(&'static str, f64)>,
    },
    /// Something the user should know that is not an error.
    Note(String),
}

impl std::fmt::Display for Progress {
    /// The plain log line of each event.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Progress::Started {
                adapter,
                tower,
                params,
                train_images,
                val_images,
                steps,
            } => write!(
                f,
                "adapter: {adapter}\n{tower}\n{params} parameters; {train_images} training images, \
                 {val_images} held out for validation; {steps} steps"
            ),
            Progress::Loss {
                step,
                pairs,
                loss,
                lr,
                pairs_per_sec,
            } => {
                write!(
                    f,
                    "step {step:>5}  pairs {pairs:>7}  loss {loss:.4}  lr {lr:.2e}  {pairs_per_sec:.0} pairs/s"
                )
            }
            Progress::Validation {
                pairs,
                loss,
                accuracy,
                roc_auc,
                train_accuracy,
                pairs_per_sec,
            } => {
                write!(
                    f,
                    "validation after {pairs} pairs: loss {loss:.4}  val pair accuracy {accuracy:.4}  \
                     ROC AUC {roc_auc:.4}"
                )?;
                if let Some(t) = train_accuracy {
                    write!(f, "  (train pairs {t:.4})")?;
                }
                write!(f, "  {pairs_per_sec:.0} pairs/s")
            }
            Progress::Profile {
                step,
                host_timed,
                kernels,
            } => {
                let total: f64 = kernels.iter().map(|(_, ms)| ms).sum();
                let how = if *host_timed {
                    "host wall-clock, one submission per dispatch, optimizer left out"
                } else {
                    "device time"
                };
                writeln!(
                    f,
                    "profile of step {step} ({} dispatches, {total:.2} ms of {how}):",
                    kernels.len()
                )?;
                // Slowest first; `#k` is the kernel's place in the step (layers share names).
                let mut by_time: Vec<(usize, &(&str, f64))> = kernels.iter().enumerate().collect();
                by_time.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
                for (k, (name, ms)) in by_time {
                    let share = 100.0 * ms / total.max(1e-12);
                    writeln!(f, "  #{k:<3} {name:<28} {ms:>9.3} ms  {share:>5.1}%")?;
                }
                Ok(())
            }
            Progress::Note(text) => write!(f, "note: {text}"),
        }
    }
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct TrainReport {
    pub adapter: String,
    pub train_pairs: usize,
    pub steps: usize,
    /// Test pair accuracy at the threshold chosen on validation, and the test ROC AUC.
    pub test: Verification,
    /// Validation accuracy at its own best threshold, and its ROC AUC.
    pub val_accuracy: f64,
    pub val_roc_auc: f64,
    /// Training throughput, evaluation excluded.
    pub pairs_per_sec: f64,
    pub train_s: f64,
    pub wall_s: f64,
    /// Mean loss of the first and the last 20 steps.
    pub first_loss: f32,
    pub last_loss: f32,
    /// Every step's loss.
    pub losses: Vec<f32>,
    /// The trained model and its final parameters (its flat layout).
    pub model: SiameseModel,
    pub params: Vec<f32>,
    /// Retrieval (with the raw-pixel baseline) and one-shot accuracy of the test embeddings.
    pub embedding_metrics: EmbeddingMetrics,
    /// What the run looked like, and what the doctor made of it.
    pub diagnosis: Diagnosis,
}

/// The dataset on the host and its packed copies on the GPU.
struct Data {
    sets: dataset::Dataset,
    train: Tensor,
    val: Tensor,
    test: Tensor,
}

fn upload(gpu: &Gpu, set: &ImageSet) -> Result<Tensor> {
    gather::upload_images(gpu, &set.images, set.count, set.pixels())
}

/// One training step of a model, built once and submitted once per step: sample a batch,
/// write its indices and labels, then gather → forward → loss → backward → optimizer in one
/// command buffer, with the loss copied into a log the host reads now and then.
pub struct TrainStep<'g> {
    gpu: &'g Gpu,
    batch: usize,
    indices: Tensor,
    labels: Tensor,
    /// Gather, forward, backward (and under mixed precision the f16 weight copy first and
    /// the overflow check last): everything before the optimizer.
    kernels: Vec<Kernel>,
    loss: Tensor,
    optimizer: Optimizer,
    /// Mixed precision's loss scale, whose update follows the optimizer.
    scaler: Option<LossScaler>,
    sampler: BatchSampler,
    idx: Vec<u32>,
    codes: Vec<u32>,
    /// With augmentation on: the transform sampler and the `[M, 8]` buffer it fills.
    augment: Option<(AugmentSampler, Tensor, Vec<f32>)>,
    loss_log: Tensor,
    logged: usize,
    invert_labels: bool,
    /// Same pairs and all pairs sampled so far (pair losses).
    pub sampled_same: u64,
    pub sampled_pairs: u64,
    /// The mined loss's stats of the last step (see `ops::mining::MiningStats`).
    mining_stats: Option<Tensor>,
}

impl<'g> TrainStep<'g> {
    /// Builds the step of `model` over the packed training `images` (with their `labels`),
    /// updating `params` through `grads`, for a run of `steps` steps.
    #[allow(clippy::too_many_arguments)] // the buffers a step binds, each named
    pub fn new(
        gpu: &'g Gpu,
        model: &SiameseModel,
        cfg: &TrainConfig,
        images: &Tensor,
        labels: &[u8],
        params: &Tensor,
        grads: &Tensor,
        steps: usize,
    ) -> Result<Self> {
        let images_per_step = cfg.images_per_sample() * cfg.batch;
        let [c, h, w] = model.config.input;
        let indices = gpu.zeros(&[images_per_step], DType::U32)?;
        // Pair label codes, or (with a miner) the class id of every image.
        let label_codes = gpu.zeros(&[cfg.batch], DType::U32)?;
        let mixed = cfg.precision == Precision::Mixed;
        if mixed && !gpu.has_f16() {
            return Err(Error::Config(format!(
                "--precision mixed needs 16-bit float shaders (wgpu's SHADER_F16), which {} does \
                 not offer; train with --precision f32",
                gpu.adapter().name
            )));
        }
        let x = gpu.zeros(&[images_per_step, c, h, w], cfg.precision.activations())?;
        // Mixed precision: the tower reads an f16 copy of the weights, made each step.
        let half = if mixed {
            Some(gpu.zeros(params.shape(), DType::F16)?)
        } else {
            None
        };
        // Augmentation off keeps the plain gather: the batches are bit for bit as before.
        let (gather, augment) = if cfg.augment.is_off() {
            let kernel = gather::gather_images(gpu, images, &indices, &x, cfg.pixel_norm)?;
            (kernel, None)
        } else {
            let m = images_per_step;
            let transforms = gpu.zeros(&[m, TRANSFORM_LEN], DType::F32)?;
            let kernel = gather::gather_images_affine(
                gpu,
                images,
                &indices,
                &transforms,
                &x,
                cfg.pixel_norm,
                cfg.augment.fill_mode,
            )?;
            let sampler = AugmentSampler::new(cfg.augment, h, w, cfg.seed);
            (kernel, Some((sampler, transforms, Vec::new())))
        };
        let mut tape = Tape::new(gpu);
        let xv = tape.input(x);
        let (loss, mining_stats) = match cfg.miner {
            Some(miner) => {
                let (loss, stats) = model.record_mined_loss(
                    &mut tape,
                    xv,
                    &label_codes,
                    miner,
                    params,
                    half.as_ref(),
                    Some(grads),
                )?;
                (loss, Some(stats))
            }
            None => (
                model.record_loss(
                    &mut tape,
                    xv,
                    &label_codes,
                    params,
                    half.as_ref(),
                    Some(grads),
                )?,
                None,
            ),
        };
        let mut kernels = Vec::new();
        if let Some(half) = &half {
            kernels.push(amp::cast(gpu, params, half)?);
        }
        kernels.push(gather);
        kernels.extend(tape.forward_kernels().cloned());
        kernels.extend(tape.backward(loss)?);
        let scaler = match mixed {
            true => {
                let seed = tape.grad(loss).expect("backward checked the seed");
                Some(LossScaler::new(
                    gpu,
                    LossScaleConfig::default(),
                    grads,
                    seed,
                )?)
            }
            false => None,
        };
        if let Some(s) = &scaler {
            kernels.push(s.check().clone());
        }
        let optimizer = Optimizer::new(
            gpu,
            cfg.optimizer,
            params,
            grads,
            steps as u32,
            scaler.as_ref(),
        )?;
        Ok(TrainStep {
            gpu,
            batch: cfg.batch,
            indices,
            labels: label_codes,
            kernels,
            loss: tape.tensor(loss).clone(),
            optimizer,
            scaler,
            sampler: BatchSampler::new(cfg, labels)?,
            idx: Vec::new(),
            codes: Vec::new(),
            augment,
            loss_log: gpu.zeros(&[cfg.log_every], DType::F32)?,
            logged: 0,
            invert_labels: cfg.invert_pair_labels && cfg.loss != LossKind::Triplet,
            sampled_same: 0,
            sampled_pairs: 0,
            mining_stats,
        })
    }

    /// Samples a batch and submits one step (timestamped for `profiler` if given); returns
    /// the learning rate it used. Read the losses with [`take_losses`](Self::take_losses) at
    /// least every `log_every` steps.
    pub fn run(&mut self, profiler: Option<&mut Profiler>) -> Result<f32> {
        assert!(
            self.logged < self.loss_log.len(),
            "the loss log is full: read it with take_losses"
        );
        self.next_batch()?;
        let lr = self.optimizer.prepare(self.gpu)?;
        let mut rec = self.gpu.recorder();
        let kernels = self.kernels.iter().chain(self.after_backward());
        match profiler {
            Some(p) => {
                kernels.for_each(|k| rec.record_timed(k, p));
                rec.resolve(p);
            }
            None => kernels.for_each(|k| rec.record(k)),
        }
        let slot = self
            .loss_log
            .view(self.logged, &[1])
            .expect("slot inside the log");
        rec.copy(&self.loss, &slot);
        rec.submit();
        self.logged += 1;
        Ok(lr)
    }

    /// Samples the next batch (indices, labels, and transforms if augmenting) and writes it.
    fn next_batch(&mut self) -> Result<()> {
        self.sampler
            .next(self.batch, &mut self.idx, &mut self.codes);
        if self.sampler.is_pairs() {
            let same = PairLabel::Same.code();
            self.sampled_same += self.codes.iter().filter(|&&c| c == same).count() as u64;
            self.sampled_pairs += self.codes.len() as u64;
            if self.invert_labels {
                let different = PairLabel::Different.code();
                for c in &mut self.codes {
                    *c = if *c == same { different } else { same };
                }
            }
        }
        self.gpu.write_u32(&self.indices, &self.idx)?;
        self.gpu.write_u32(&self.labels, &self.codes)?;
        if let Some((sampler, transforms, rows)) = self.augment.as_mut() {
            sampler.sample_into(self.idx.len(), rows);
            self.gpu.write_f32(transforms, rows)?;
        }
        Ok(())
    }

    /// The mining stats of the last submitted step (waits for it), None without a miner.
    pub fn mining_stats(&self) -> Result<Option<MiningStats>> {
        self.mining_stats
            .as_ref()
            .map(|t| Ok(MiningStats::from_slice(&self.gpu.read_f32(t)?)))
            .transpose()
    }

    /// Steps submitted since the losses were last read.
    pub fn pending(&self) -> usize {
        self.logged
    }

    /// The losses of the steps since the last call, in order (waits for them to finish).
    pub fn take_losses(&mut self) -> Result<Vec<f32>> {
        let read = self.gpu.read_f32(&self.loss_log)?;
        let new = read[..self.logged].to_vec();
        self.logged = 0;
        Ok(new)
    }

    /// The optimizer, and the loss scale's update after it.
    fn after_backward(&self) -> impl Iterator<Item = &Kernel> {
        [self.optimizer.kernel()]
            .into_iter()
            .chain(self.scaler.as_ref().map(|s| s.update()))
    }

    /// Dispatches per step, the optimizer's included.
    pub fn dispatch_count(&self) -> usize {
        self.kernels
            .iter()
            .chain(self.after_backward())
            .map(|k| k.dispatches().len())
            .sum()
    }

    /// Under mixed precision, the loss scale's state after the submitted steps (waits for
    /// them); None in f32.
    pub fn loss_scale(&self) -> Result<Option<ScaleState>> {
        self.scaler.as_ref().map(|s| s.read(self.gpu)).transpose()
    }

    /// Host wall-clock time of every dispatch of one step (forward and backward; the
    /// optimizer is left out, so the parameters do not change), each submitted alone and
    /// waited for, in milliseconds. Submission overhead is included: read it beside
    /// timestamp profiles on GPUs, where a dispatch takes microseconds.
    pub fn time_dispatches(&mut self) -> Result<Vec<(&'static str, f64)>> {
        self.next_batch()?;
        self.gpu.wait()?;
        let mut times = Vec::new();
        for kernel in &self.kernels {
            for d in kernel.dispatches() {
                let single = Kernel::single(d.clone());
                let start = Instant::now();
                self.gpu.run(&[&single]);
                self.gpu.wait()?;
                times.push((d.entry(), start.elapsed().as_secs_f64() * 1e3));
            }
        }
        Ok(times)
    }

    /// Continues after `steps_done` steps: restores the optimizer's state and step count and
    /// replays the samplers past the batches already trained on, so that the run goes on as
    /// if it had never stopped. (The caller restores the parameters.)
    pub fn resume(&mut self, optimizer_state: &[Vec<f32>], steps_done: usize) -> Result<()> {
        // Under mixed precision the loss scale's state follows the optimizer's buffers.
        let mut optimizer_state = optimizer_state;
        if let Some(scaler) = &self.scaler {
            let Some((scale, rest)) = optimizer_state.split_last() else {
                return Err(Error::Config("the saved state has no loss scale".into()));
            };
            scaler.restore(self.gpu, scale)?;
            optimizer_state = rest;
        }
        self.optimizer
            .restore(self.gpu, optimizer_state, steps_done as u32)?;
        for _ in 0..steps_done {
            self.sampler
                .next(self.batch, &mut self.idx, &mut self.codes);
            if let Some((sampler, _, rows)) = self.augment.as_mut() {
                sampler.sample_into(self.idx.len(), rows);
            }
        }
        Ok(())
    }

    /// The optimizer's state buffers, and under mixed precision the loss scale's, read back
    /// (waits for the submitted steps).
    pub fn optimizer_state(&self) -> Result<Vec<Vec<f32>>> {
        self.optimizer
            .state()
            .iter()
            .chain(self.scaler.as_ref().map(|s| s.state()))
            .map(|t| self.gpu.read_f32(t))
            .collect()
    }
}

/// Everything needed to continue a run: parameters, optimizer state, steps taken.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingState {
    pub params: Vec<f32>,
    pub optimizer: Vec<Vec<f32>>,
    pub steps_done: usize,
}

/// Control of a run from outside: a state to resume from, a flag that stops it (Ctrl-C),
/// and where its state goes (called after every validation, when stopped, and at the end).
#[derive(Default)]
pub struct RunControl<'a> {
    pub resume: Option<TrainingState>,
    pub stop: Option<&'a AtomicBool>,
    #[allow(clippy::type_complexity)] // a callback, named by its field
    pub save: Option<&'a mut dyn FnMut(&SiameseModel, &TrainingState) -> Result<()>>,
}

/// Trains as `cfg` says on `gpu`, reporting progress through `report`.
pub fn train(
    gpu: &Gpu,
    cfg: &TrainConfig,
    report: &mut dyn FnMut(&Progress),
) -> Result<TrainReport> {
    train_with(gpu, cfg, RunControl::default(), report)
}

/// [`train`] under `control`: resumed, stoppable, saving its state.
pub fn train_with(
    gpu: &Gpu,
    cfg: &TrainConfig,
    mut control: RunControl,
    report: &mut dyn FnMut(&Progress),
) -> Result<TrainReport> {
    let wall = Instant::now();
    cfg.validate()?;
    let sets = dataset::load_with(cfg.data.as_deref(), cfg.val_images, &cfg.dataset)?;
    for warning in &sets.warnings {
        report(&Progress::Note(warning.clone()));
    }
    let (c, h, w) = (sets.train.channels, sets.train.height, sets.train.width);
    let data = Data {
        train: upload(gpu, &sets.train)?,
        val: upload(gpu, &sets.val)?,
        test: upload(gpu, &sets.test)?,
        sets,
    };
    let model = SiameseModel::new(cfg.model_config([c, h, w]))?;
    check_batch_fits(gpu, &model, cfg)?;
    let len = model.layout.len;
    let params = gpu.upload_f32(&model.layout.init(cfg.seed), &[len])?;
    let grads = gpu.zeros(&[len], DType::F32)?;
    // As the reference: whole batches within the budget.
    let steps = cfg.pairs / cfg.batch;
    let train_labels = &data.sets.train.labels;
    let mut step_program = TrainStep::new(
        gpu,
        &model,
        cfg,
        &data.train,
        train_labels,
        &params,
        &grads,
        steps,
    )?;
    let mut start = 0;
    if let Some(state) = control.resume.take() {
        if state.params.len() != len || state.steps_done > steps {
            return Err(Error::Config(format!(
                "the saved state ({} parameters, {} steps done) does not continue this run ({len} parameters, {steps} steps)",
                state.params.len(),
                state.steps_done
            )));
        }
        gpu.write_f32(&params, &state.params)?;
        step_program.resume(&state.optimizer, state.steps_done)?;
        start = state.steps_done;
    }
    let saving = control.save.is_some();
    let mut save = |step_program: &TrainStep, steps_done: usize| -> Result<()> {
        match control.save.as_mut() {
            Some(save) => {
                let state = TrainingState {
                    params: gpu.read_f32(&params)?,
                    optimizer: step_program.optimizer_state()?,
                    steps_done,
                };
                save(&model, &state)
            }
            None => Ok(()),
        }
    };
    let embedder = Embedder::new(gpu, &model, &params, cfg.pixel_norm, cfg.eval_chunk)?;
    let mut evaluator = PairProtocol::new(
        gpu,
        &params,
        &model,
        (&data.sets.val.labels, cfg.val_pairs),
        (&data.sets.test.labels, cfg.test_pairs),
    );
    if cfg.train_eval_pairs > 0 {
        evaluator = evaluator.with_train_pairs(train_labels, cfg.train_eval_pairs);
    }
    let layers = LayerGroups::new(&model);
    let mut evidence = Evidence {
        loss: Some(cfg.loss),
        margin: cfg.margin,
        miner: cfg.miner,
        distance: Some(cfg.distance),
        normalized: cfg.normalize,
        layers: layers.names.clone(),
        class_disjoint: !cfg.dataset.held_out_classes.is_empty(),
        initial_weight_norm: layers.sample(gpu, &params, &grads, start, 1.0)?.weight_norm,
        ..Default::default()
    };
    // lavapipe's timestamps do not bracket dispatches that read textures (the time lands in
    // one pass), so CPU adapters, and adapters without timestamps, are timed from the host.
    let host_timed = gpu.adapter().device_type == "Cpu";
    let mut profiler = if cfg.profile && !host_timed {
        Profiler::new(gpu, step_program.dispatch_count() as u32)
    } else {
        None
    };
    let host_timed = cfg.profile && profiler.is_none();

    report(&Progress::Started {
        adapter: gpu.adapter().to_string(),
        tower: model.tower.summary(),
        params: model.layout.params.iter().map(|p| p.len()).sum(),
        train_images: data.sets.train.count,
        val_images: data.sets.val.count,
        steps,
    });

    let mut losses: Vec<f32> = Vec::with_capacity(steps);
    let (mut train_s, mut lap, mut lap_pairs) = (0.0f64, Instant::now(), 0usize);
    let mut last_val = Validation::default();
    for step in start..steps {
        if control
            .stop
            .is_some_and(|stop| stop.load(Ordering::Relaxed))
        {
            step_program.take_losses()?;
            save(&step_program, step)?;
            let saved = if saving {
                "; the state of that step was saved"
            } else {
                ""
            };
            return Err(Error::Training(format!(
                "stopped after step {step} of {steps}{saved}"
            )));
        }
        // The last step is the profiled one: profiling never changes what is trained.
        let profile_now = if step + 1 == steps {
            profiler.as_mut()
        } else {
            None
        };
        let lr = step_program.run(profile_now)?;
        lap_pairs += cfg.batch;

        let pairs_done = (step + 1) * cfg.batch;
        let validate =
            pairs_done / cfg.eval_every > step * cfg.batch / cfg.eval_every || step + 1 == steps;
        if step_program.pending() == cfg.log_every || validate {
            // 1-based number of the first step in this read.
            let first = step + 2 - step_program.pending();
            let new = step_program.take_losses()?;
            // Under mixed precision the gradients carry the loss scale; a skipped step's
            // overflowed ones are no evidence.
            let scale = step_program.loss_scale()?;
            if !scale.is_some_and(|s| s.last_skipped) {
                let unscale = scale.map_or(1.0, |s| s.last_scale as f64);
                evidence
                    .grads
                    .push(layers.sample(gpu, &params, &grads, step + 1, unscale)?);
            }
            if let Some(s) = scale
                && s.scale < MIN_LOSS_SCALE
            {
                let message = format!(
                    "under mixed precision the gradients overflowed f16 at every loss scale down \
                     to {:e} ({} of {} steps skipped): train with --precision f32",
                    s.scale,
                    s.skipped,
                    s.skipped + s.applied
                );
                return Err(diverged(evidence, losses, message, &step_program));
            }
            if let Some(bad) = new.iter().position(|l| !l.is_finite()) {
                let message = format!(
                    "the loss became {} at step {} (lr {lr}): the learning rate is probably too high for this \
                     model; lower --lr (e.g. by 10×)",
                    new[bad],
                    first + bad
                );
                losses.extend_from_slice(&new[..bad]);
                return Err(diverged(evidence, losses, message, &step_program));
            }
            losses.extend_from_slice(&new);
            let elapsed = lap.elapsed().as_secs_f64();
            train_s += elapsed;
            let rate = lap_pairs as f64 / elapsed.max(1e-9);
            report(&Progress::Loss {
                step: step + 1,
                pairs: pairs_done,
                loss: mean(&new),
                lr,
                pairs_per_sec: rate,
            });
            if validate {
                save(&step_program, step + 1)?;
                if let Some(m) = step_program.mining_stats()? {
                    report(&Progress::Note(format!(
                        "mining, last step: {:.1}% of {} mined triplets violate the margin; mean \
                         d(a,p) {:.4}, d(a,n) {:.4}",
                        100.0 * m.active_fraction(),
                        m.mined,
                        m.mean_d_ap,
                        m.mean_d_an
                    )));
                }
                last_val = evaluator.validate(&embedder, &data.val)?;
                let train_accuracy = evaluator.train_accuracy(&embedder, &data.train)?;
                let recent = &losses[losses.len().saturating_sub(cfg.eval_every / cfg.batch)..];
                evidence.validations.push(ValidationPoint {
                    pairs: pairs_done,
                    loss: mean(recent),
                    accuracy: last_val.accuracy,
                    roc_auc: last_val.roc_auc,
                    train_accuracy,
                });
                report(&Progress::Validation {
                    pairs: pairs_done,
                    loss: mean(recent),
                    accuracy: last_val.accuracy,
                    roc_auc: last_val.roc_auc,
                    train_accuracy,
                    pairs_per_sec: ((step + 1 - start) * cfg.batch) as f64 / train_s.max(1e-9),
                });
            }
            lap = Instant::now();
            lap_pairs = 0;
        }
    }
    if let Some(p) = profiler.as_mut() {
        report(&Progress::Profile {
            step: steps,
            host_timed: false,
            kernels: p.read(gpu)?,
        });
    }
    if host_timed {
        // After the last step, so it changes nothing that was trained.
        step_program.take_losses()?;
        report(&Progress::Profile {
            step: steps,
            host_timed: true,
            kernels: step_program.time_dispatches()?,
        });
    }

    if let Some(s) = step_program.loss_scale()? {
        report(&Progress::Note(format!(
            "mixed precision: {} steps applied, {} skipped for overflowing f16; loss scale now {}",
            s.applied, s.skipped, s.scale
        )));
    }
    let (test, test_scores) = evaluator.test_scored(&embedder, &data.test, &last_val)?;

    // The doctor's look at the trained model: the test embeddings' spread, ReLU activity on
    // validation images, and the distance distributions of the last validation.
    let test_set = &data.sets.test;
    let sample = seeded_sample(test_set.count, cfg.doctor_images, cfg.seed);
    let embedded = embedder.embed_indices(&data.test, &sample)?;
    let dim = embedder.dim();
    evidence.embeddings = Some(embedding_stats(&embedded, sample.len(), dim, cfg.seed));
    let sample_labels: Vec<u8> = sample
        .iter()
        .map(|&i| test_set.labels[i as usize])
        .collect();
    let embedding_metrics = embedding_metrics(
        gpu,
        &embedded,
        &sample_labels,
        dim,
        cfg.distance,
        cfg.pixel_baseline.then_some((test_set, cfg.pixel_norm)),
    )?;
    let pca_rows = sample.len().min(PCA_POINTS);
    let (points, explained) = pca_2d(&embedded[..pca_rows * dim], pca_rows, dim);
    evidence.pca = points;
    evidence.pca_labels = sample_labels[..pca_rows].to_vec();
    evidence.pca_explained = explained;
    evidence.test_classes = data.sets.test_classes.clone();
    let probe: Vec<u32> = (0..data.sets.val.count.min(PROBE_IMAGES) as u32).collect();
    if !probe.is_empty() {
        evidence.relu =
            probe::relu_activity(gpu, &model, &params, cfg.pixel_norm, &data.val, &probe)?;
    }
    evidence.val = PairScores {
        scores: last_val.scores.clone(),
        labels: evaluator.val_labels().to_vec(),
    };
    evidence.val_accuracy = last_val.accuracy;
    evidence.val_threshold = last_val.threshold;
    evidence.val_roc_auc = last_val.roc_auc;
    evidence.train_accuracy = evidence.validations.last().and_then(|v| v.train_accuracy);
    evidence.test_accuracy = Some(test.accuracy);
    evidence.test = PairScores {
        scores: test_scores,
        labels: evaluator.test_labels().to_vec(),
    };
    evidence.sampled_same = step_program.sampled_same;
    evidence.sampled_pairs = step_program.sampled_pairs;
    evidence.losses = losses.clone();
    let diagnosis = Diagnosis::new(evidence);

    let head = |v: &[f32]| mean(&v[..v.len().min(20)]);
    let tail = |v: &[f32]| mean(&v[v.len().saturating_sub(20)..]);
    Ok(TrainReport {
        adapter: gpu.adapter().name.clone(),
        train_pairs: steps * cfg.batch,
        steps,
        test,
        val_accuracy: last_val.accuracy,
        val_roc_auc: last_val.roc_auc,
        pairs_per_sec: ((steps - start) * cfg.batch) as f64 / train_s.max(1e-9),
        train_s,
        wall_s: wall.elapsed().as_secs_f64(),
        first_loss: head(&losses),
        last_loss: tail(&losses),
        losses,
        params: gpu.read_f32(&params)?,
        model,
        embedding_metrics,
        diagnosis,
    })
}

/// The error of a run that stopped diverging, with the doctor's diagnosis of the evidence so
/// far (the losses before the divergence, the sampler's Same-pair share).
fn diverged(
    mut evidence: Evidence,
    losses: Vec<f32>,
    message: String,
    step_program: &TrainStep,
) -> Error {
    evidence.losses = losses;
    evidence.diverged = Some(message.clone());
    evidence.sampled_same = step_program.sampled_same;
    evidence.sampled_pairs = step_program.sampled_pairs;
    Error::Diverged {
        message,
        diagnosis: Box::new(Diagnosis::new(evidence)),
    }
}

/// Below this loss scale a mixed-precision run stops: gradients that overflow f16 even when
/// scaled by 2⁻²⁴ are not a matter of range (f16's smallest normal is 2⁻¹⁴).
const MIN_LOSS_SCALE: f32 = 1.0 / 16_777_216.0;

/// Points in the PCA plot.
const PCA_POINTS: usize = 3_000;
/// Validation images the ReLU probe runs on.
const PROBE_IMAGES: usize = 256;

/// `min(n, k)` distinct indices below `n` in a seeded random order (all of them, shuffled,
/// when `n ≤ k`).
fn seeded_sample(n: usize, k: usize, seed: u64) -> Vec<u32> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let mut all: Vec<u32> = (0..n as u32).collect();
    all.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed));
    all.truncate(k);
    all
}

/// The model's parameters grouped by layer (weight and bias together), for the doctor's
/// per-layer gradient norms.
struct LayerGroups {
    names: Vec<String>,
    /// (offset, len) of each layer's parameters in the flat buffer.
    spans: Vec<Vec<(usize, usize)>>,
}

impl LayerGroups {
    fn new(model: &SiameseModel) -> Self {
        let (mut names, mut spans): (Vec<String>, Vec<Vec<(usize, usize)>>) = (vec![], vec![]);
        for p in &model.layout.params {
            let prefix = p.name.rsplit_once('.').map_or(p.name.as_str(), |(a, _)| a);
            // `tower.<i>` names the spec's layer i.
            let name = match prefix
                .strip_prefix("tower.")
                .and_then(|i| i.parse::<usize>().ok())
                .and_then(|i| model.tower.spec.layers.get(i))
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
    fn sample(
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

/// Refuses a batch whose largest activation would exceed one storage binding of the device,
/// saying the limit and the largest batch that fits (before anything is allocated).
fn check_batch_fits(gpu: &Gpu, model: &SiameseModel, cfg: &TrainConfig) -> Result<()> {
    let (per_image, shape) = model.tower.largest_activation();
    let bytes_per_sample = (cfg.images_per_sample() * per_image * 4) as u64;
    let limit = gpu.limits().max_storage_buffer_binding_size;
    let fits = limit / bytes_per_sample;
    if cfg.batch as u64 > fits {
        return Err(Error::Config(format!(
            "a batch of {} needs {} activations of shape {shape} ({} MiB) in one buffer, over this device's \
             max_storage_buffer_binding_size of {} MiB; the largest batch that fits is {fits}",
            cfg.batch,
            cfg.images_per_sample() * cfg.batch,
            (bytes_per_sample * cfg.batch as u64) >> 20,
            limit >> 20
        )));
    }
    Ok(())
}

fn mean(v: &[f32]) -> f32 {
    if v.is_empty() {
        f32::NAN
    } else {
        v.iter().sum::<f32>() / v.len() as f32
    }
}

/// The training sampler of the loss: pairs, triplets, or P×K batches for a miner.
enum BatchSampler {
    Pairs(PairSampler, PairBatch),
    Triplets(TripletSampler, TripletBatch),
    ClassBalanced(PkSampler, PkBatch),
}

/// (P, K) of a miner's batches: P given, or 10 (all classes with ≥ 2 images if fewer).
fn pk_shape(cfg: &TrainConfig, labels: &[u8]) -> Result<(usize, usize)> {
    let p = cfg.classes_per_batch.unwrap_or_else(|| {
        let eligible = by_class(labels).iter().filter(|c| c.len() >= 2).count();
        eligible.clamp(2, 10)
    });
    if !cfg.batch.is_multiple_of(p) {
        return Err(Error::Config(format!(
            "with a miner, batch = classes_per_batch × K images: batch {} is not a multiple of \
             the {p} classes per batch; use a batch of {} or {}, or set --classes-per-batch",
            cfg.batch,
            (cfg.batch / p).max(1) * p,
            (cfg.batch / p + 1) * p
        )));
    }
    Ok((p, cfg.batch / p))
}

impl BatchSampler {
    fn is_pairs(&self) -> bool {
        matches!(self, BatchSampler::Pairs(..))
    }

    fn new(cfg: &TrainConfig, labels: &[u8]) -> Result<Self> {
        if cfg.miner.is_some() {
            let (p, k) = pk_shape(cfg, labels)?;
            return Ok(BatchSampler::ClassBalanced(
                PkSampler::new(labels, p, k, cfg.seed)?,
                PkBatch::default(),
            ));
        }
        Ok(match cfg.loss {
            LossKind::Triplet => BatchSampler::Triplets(
                TripletSampler::new(labels, cfg.seed)?,
                TripletBatch::default(),
            ),
            LossKind::Contrastive | LossKind::Bce => BatchSampler::Pairs(
                PairSampler::new(labels, cfg.positive_fraction, cfg.seed)?,
                PairBatch::default(),
            ),
        })
    }

    /// The next batch of `n` samples: image indices branch after branch (left images, then
    /// right ones; or anchors, positives, negatives) and the pair label codes.
    fn next(&mut self, n: usize, idx: &mut Vec<u32>, codes: &mut Vec<u32>) {
        idx.clear();
        codes.clear();
        match self {
            BatchSampler::Pairs(sampler, batch) => {
                sampler.sample_into(n, batch);
                idx.extend(batch.a.iter().chain(&batch.b));
                codes.extend(batch.labels.iter().map(|l| l.code()));
            }
            BatchSampler::Triplets(sampler, batch) => {
                sampler.sample_into(n, batch);
                idx.extend(
                    batch
                        .anchor
                        .iter()
                        .chain(&batch.positive)
                        .chain(&batch.negative),
                );
                // The triplet loss reads no labels; the buffer still has to hold B codes.
                codes.resize(n, PairLabel::Same.code());
            }
            BatchSampler::ClassBalanced(sampler, batch) => {
                debug_assert_eq!(sampler.batch_len(), n);
                sampler.sample_into(batch);
                idx.extend(&batch.images);
                codes.extend(&batch.classes);
            }
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
