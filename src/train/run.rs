//! A run, as four parts a screen long each: set-up (data on the GPU, the model, the step
//! program, the evaluation protocol), the step loop (reading the losses back now and then,
//! stopping on Ctrl-C or divergence), validation, and the finish (test scores, metrics and
//! the doctor's diagnosis).
//!
//! Evaluation follows the reference protocol: validation images are held out of training;
//! 10,000 balanced pairs of them choose the verification threshold; 10,000 balanced test
//! pairs are scored at that threshold, with their ROC AUC.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::evidence::{self, LayerGroups};
use super::{Progress, TrainConfig, TrainStep};
use crate::data::dataset::{self, Dataset};
use crate::data::images::ImageSet;
use crate::error::{Error, Result};
use crate::eval::doctor::{CenterSpread, Diagnosis, Evidence, MemoryDrift, ValidationPoint};
use crate::eval::embed::Embedder;
use crate::eval::embedding_metrics::EmbeddingMetrics;
use crate::eval::operating_points::{OperatingPoint, Target, operating_point};
use crate::eval::protocol::{PairProtocol, Validation};
use crate::eval::verification::Verification;
use crate::gpu::{DType, Gpu, Profiler, Tensor};
use crate::model::{ModelTensors, ModelValues, SiameseModel};
use crate::ops::gather::{self, PackedImages};

/// Everything needed to continue a run: the model's values, optimizer state, steps taken.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingState {
    pub values: ModelValues,
    pub optimizer: Vec<Vec<f32>>,
    pub steps_done: usize,
}

/// Control of a run from outside: initial values (weights trained elsewhere), a state to
/// resume from, a flag that stops it (Ctrl-C), and where its state goes (called after every
/// validation, when stopped, and at the end).
#[derive(Default)]
pub struct RunControl<'a> {
    /// Puts initial values into the freshly initialised ones and says what it did.
    #[allow(clippy::type_complexity)] // a callback, named by its field
    pub init: Option<&'a dyn Fn(&SiameseModel, &mut ModelValues) -> Result<String>>,
    pub resume: Option<TrainingState>,
    pub stop: Option<&'a AtomicBool>,
    #[allow(clippy::type_complexity)] // a callback, named by its field
    pub save: Option<&'a mut dyn FnMut(&SiameseModel, &TrainingState) -> Result<()>>,
}

/// How a run ended. A run that could not start, or failed on the way, is an [`Error`].
#[derive(Debug)]
pub enum Outcome {
    /// Trained through its budget, evaluated and diagnosed.
    Trained(Box<TrainReport>),
    /// Stopped by the run's stop flag after `steps_done` of `steps` (its state saved if
    /// the control saves).
    Stopped {
        steps_done: usize,
        steps: usize,
        saved: bool,
    },
    /// The loss stopped being a number (or mixed precision ran out of loss scale).
    Diverged(Box<Divergence>),
}

impl Outcome {
    /// The report of a run that trained to the end; stopped and diverged runs become errors
    /// saying why, for callers that need the report or nothing.
    pub fn into_report(self) -> Result<TrainReport> {
        match self {
            Outcome::Trained(report) => Ok(*report),
            stopped @ Outcome::Stopped { .. } => Err(Error::Training(stopped.to_string())),
            Outcome::Diverged(d) => Err(Error::Training(d.message)),
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Trained(r) => write!(f, "trained {} steps", r.steps),
            Outcome::Stopped {
                steps_done,
                steps,
                saved,
            } => {
                let saved = if *saved {
                    "; the state of that step was saved"
                } else {
                    ""
                };
                write!(f, "stopped after step {steps_done} of {steps}{saved}")
            }
            Outcome::Diverged(d) => f.write_str(&d.message),
        }
    }
}

/// A run that diverged: why, and the doctor's reading of what it did until then (the
/// losses before the divergence, the sampler's Same-pair share).
#[derive(Debug, Clone)]
pub struct Divergence {
    pub message: String,
    pub diagnosis: Diagnosis,
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
    /// The trained model and its final values.
    pub model: SiameseModel,
    pub values: ModelValues,
    /// Retrieval (with the raw-pixel baseline) and one-shot accuracy of the test embeddings.
    pub embedding_metrics: EmbeddingMetrics,
    /// The thresholds chosen on validation for accuracy, the EER and each FAR target, with
    /// the rates they give on test.
    pub operating_points: Vec<OperatingPoint>,
    /// What the run looked like, and what the doctor made of it.
    pub diagnosis: Diagnosis,
}

/// Below this loss scale a mixed-precision run stops: gradients that overflow f16 even when
/// scaled by 2⁻²⁴ are not a matter of range (f16's smallest normal is 2⁻¹⁴).
const MIN_LOSS_SCALE: f32 = 1.0 / 16_777_216.0;

/// Trains as `cfg` says on `gpu`, reporting progress through `report`.
pub fn train(gpu: &Gpu, cfg: &TrainConfig, report: &mut dyn FnMut(&Progress)) -> Result<Outcome> {
    train_with(gpu, cfg, RunControl::default(), report)
}

/// [`train`] under `control`: resumed, stoppable, saving its state.
pub fn train_with(
    gpu: &Gpu,
    cfg: &TrainConfig,
    mut control: RunControl,
    report: &mut dyn FnMut(&Progress),
) -> Result<Outcome> {
    let wall = Instant::now();
    cfg.validate()?;
    let mut run = Run::set_up(gpu, cfg, control.init, control.resume.take(), report)?;
    if let Some(ending) = run.train_steps(&mut control, report)? {
        return Ok(ending);
    }
    run.finish(wall, report)
}

/// The dataset on the host and its packed copies on the GPU.
struct Data {
    sets: Dataset,
    train: PackedImages,
    val: PackedImages,
    test: PackedImages,
}

impl Data {
    fn load(gpu: &Gpu, cfg: &TrainConfig, report: &mut dyn FnMut(&Progress)) -> Result<Data> {
        let sets = dataset::load_with(cfg.data.as_deref(), cfg.val_images, &cfg.dataset)?;
        for warning in &sets.warnings {
            report(&Progress::Note(warning.clone()));
        }
        // Validation and test first (read whole at every validation), then training: each
        // split is resident while the budget and four storage bindings hold it, else it
        // stays in host memory and is staged batch by batch.
        let binding = gpu.limits().max_storage_buffer_binding_size;
        let mut left = cfg
            .gpu_data_budget
            .unwrap_or_else(|| default_gpu_data_budget(gpu));
        let mut place = |set: &ImageSet, what: &str| {
            let (bytes, shards) = gather::packed_size(set.count, set.pixels(), binding);
            if bytes <= left && (1..=gather::MAX_SHARDS).contains(&shards) {
                left -= bytes;
                return gather::upload_images(gpu, &set.images, set.count, set.pixels());
            }
            report(&Progress::Note(format!(
                "the {what} images ({:.1} MiB packed) stay in host memory, each batch uploaded as \
                 it is needed: over the GPU data budget left ({:.1} MiB; --gpu-data-budget)",
                bytes as f64 / (1 << 20) as f64,
                left as f64 / (1 << 20) as f64
            )));
            PackedImages::on_host(&set.images, set.count, set.pixels())
        };
        let val = place(&sets.val, "validation")?;
        let test = place(&sets.test, "test")?;
        let train = place(&sets.train, "training")?;
        Ok(Data {
            train,
            val,
            test,
            sets,
        })
    }
}

/// The GPU data budget when none is given: what four storage bindings hold (the most a
/// gather reads resident), at most 2 GiB. wgpu reports no memory size, and 2 GiB leaves
/// room for the model and its activations on an 8 GB card.
pub fn default_gpu_data_budget(gpu: &Gpu) -> u64 {
    let binding = gpu.limits().max_storage_buffer_binding_size;
    (gather::MAX_SHARDS as u64 * binding).min(2 << 30)
}

/// A run in progress: what set-up built, and what the loop has gathered so far.
struct Run<'g> {
    gpu: &'g Gpu,
    cfg: &'g TrainConfig,
    data: Data,
    model: SiameseModel,
    values: ModelTensors,
    /// The BatchNorm steps the initial values had seen (weights from elsewhere).
    tracked_before: i64,
    grads: Tensor,
    step: TrainStep<'g>,
    embedder: Embedder<'g>,
    protocol: PairProtocol<'g>,
    layers: LayerGroups,
    evidence: Evidence,
    /// Timestamp queries for the last step (`--profile` on adapters whose timestamps hold).
    profiler: Option<Profiler>,
    /// `--profile` timed from the host instead (`AdapterKind::host_timed_profile`).
    host_timed: bool,
    steps: usize,
    /// The step the loop starts at (after a resumed run's).
    start: usize,
    losses: Vec<f32>,
    train_s: f64,
    last_val: Validation,
}

impl<'g> Run<'g> {
    /// Loads and uploads the data, builds the model, the step program and the evaluation,
    /// restores a resumed state, and says so through `report`.
    #[allow(clippy::type_complexity)] // RunControl's callback
    fn set_up(
        gpu: &'g Gpu,
        cfg: &'g TrainConfig,
        init: Option<&dyn Fn(&SiameseModel, &mut ModelValues) -> Result<String>>,
        resume: Option<TrainingState>,
        report: &mut dyn FnMut(&Progress),
    ) -> Result<Run<'g>> {
        let data = Data::load(gpu, cfg, report)?;
        let set = &data.sets.train;
        // Class ids run from 0: a class head has a row for each up to the largest.
        let classes = set.labels.iter().max().map_or(0, |&c| c as usize + 1);
        let model =
            SiameseModel::new(cfg.model_config([set.channels, set.height, set.width], classes))?;
        check_batch_fits(gpu, &model, cfg)?;
        let mut initial = ModelValues::init(&model, cfg.seed);
        if let Some(init) = init {
            report(&Progress::Note(init(&model, &mut initial)?));
        }
        let values = ModelTensors::upload(gpu, &model, &initial)?;
        let grads = gpu.zeros(&[model.layout.len], DType::F32)?;
        // As the reference: whole batches within the budget.
        let steps = cfg.pairs / cfg.batch;
        let mut step = TrainStep::new(
            gpu,
            &model,
            cfg,
            &data.train,
            &set.labels,
            &values,
            &grads,
            steps,
        )?;
        let start = match resume {
            Some(state) => restore(gpu, state, &values, &mut step, steps)?,
            None => 0,
        };
        let embedder = Embedder::new(gpu, &model, &values, cfg.pixel_norm, cfg.eval_chunk)?;
        let mut protocol = PairProtocol::new(
            gpu,
            &values.params,
            &model,
            (&data.sets.val.labels, cfg.val_pairs),
            (&data.sets.test.labels, cfg.test_pairs),
        );
        if cfg.train_eval_pairs > 0 {
            protocol = protocol.with_train_pairs(&set.labels, cfg.train_eval_pairs);
        }
        let layers = LayerGroups::new(&model);
        let initial_norms = layers
            .sample(gpu, &values.params, &grads, start, 1.0)?
            .weight_norm;
        let evidence = evidence::initial_evidence(cfg, &model, &layers, initial_norms);
        // Adapters whose timestamps cannot be trusted, and adapters without timestamps (no
        // profiler), are timed from the host.
        let host_timed = gpu.adapter_kind().host_timed_profile();
        let profiler = if cfg.profile && !host_timed {
            Profiler::new(gpu, step.dispatch_count() as u32)
        } else {
            None
        };
        report(&Progress::Started {
            adapter: gpu.adapter().to_string(),
            tower: model.tower.summary(),
            params: model.layout.params.iter().map(|p| p.len()).sum(),
            train_images: set.count,
            val_images: data.sets.val.count,
            steps,
        });
        Ok(Run {
            gpu,
            cfg,
            host_timed: cfg.profile && profiler.is_none(),
            profiler,
            data,
            model,
            values,
            tracked_before: initial.batches_tracked,
            grads,
            step,
            embedder,
            protocol,
            layers,
            evidence,
            steps,
            start,
            losses: Vec::with_capacity(steps),
            train_s: 0.0,
            last_val: Validation::default(),
        })
    }

    /// The step loop: submits every step, reads the losses back every `log_every` steps and
    /// at each validation. Ends early (Some) when stopped or diverged.
    fn train_steps(
        &mut self,
        control: &mut RunControl,
        report: &mut dyn FnMut(&Progress),
    ) -> Result<Option<Outcome>> {
        let (cfg, steps) = (self.cfg, self.steps);
        let (mut lap, mut lap_pairs) = (Instant::now(), 0usize);
        for step in self.start..steps {
            if control
                .stop
                .is_some_and(|stop| stop.load(Ordering::Relaxed))
            {
                self.step.take_losses()?;
                self.save(control, step)?;
                let saved = control.save.is_some();
                return Ok(Some(Outcome::Stopped {
                    steps_done: step,
                    steps,
                    saved,
                }));
            }
            // The last step is the profiled one: profiling never changes what is trained.
            let profile_now = if step + 1 == steps {
                self.profiler.as_mut()
            } else {
                None
            };
            let lr = self.step.run(profile_now)?;
            lap_pairs += cfg.batch;
            let pairs_done = (step + 1) * cfg.batch;
            let validate = pairs_done / cfg.eval_every > step * cfg.batch / cfg.eval_every
                || step + 1 == steps;
            if self.step.pending() < cfg.log_every && !validate {
                continue;
            }
            if let Some(divergence) = self.read_losses(step, lr, (lap, lap_pairs), report)? {
                return Ok(Some(Outcome::Diverged(Box::new(divergence))));
            }
            if validate {
                self.save(control, step + 1)?;
                self.validate(step, report)?;
            }
            lap = Instant::now();
            lap_pairs = 0;
        }
        Ok(None)
    }

    /// Reads back the losses of the steps since the last read (up to `step`, which used
    /// `lr`), samples the gradient norms for the doctor, and reports the mean loss and the
    /// rate of the lap (started at `lap`, `lap_pairs` pairs); the divergence if the loss (or
    /// the loss scale) gave out.
    fn read_losses(
        &mut self,
        step: usize,
        lr: f32,
        (lap, lap_pairs): (Instant, usize),
        report: &mut dyn FnMut(&Progress),
    ) -> Result<Option<Divergence>> {
        // 1-based number of the first step in this read.
        let first = step + 2 - self.step.pending();
        let new = self.step.take_losses()?;
        // Under mixed precision the gradients carry the loss scale; a skipped step's
        // overflowed ones are no evidence.
        let scale = self.step.loss_scale()?;
        if !scale.is_some_and(|s| s.last_skipped) {
            let unscale = scale.map_or(1.0, |s| s.last_scale as f64);
            let sample = self.layers.sample(
                self.gpu,
                &self.values.params,
                &self.grads,
                step + 1,
                unscale,
            )?;
            self.evidence.grads.push(sample);
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
            return Ok(Some(self.diverged(message)));
        }
        if let Some(bad) = new.iter().position(|l| !l.is_finite()) {
            let message = format!(
                "the loss became {} at step {} (lr {lr}): the learning rate is probably too high for this \
                 model; lower --lr (e.g. by 10×)",
                new[bad],
                first + bad
            );
            self.losses.extend_from_slice(&new[..bad]);
            return Ok(Some(self.diverged(message)));
        }
        self.losses.extend_from_slice(&new);
        let lap_s = lap.elapsed().as_secs_f64();
        self.train_s += lap_s;
        report(&Progress::Loss {
            step: step + 1,
            pairs: (step + 1) * self.cfg.batch,
            loss: mean(&new),
            lr,
            pairs_per_sec: lap_pairs as f64 / lap_s.max(1e-9),
        });
        Ok(None)
    }

    /// Validation after `step`: the mining stats of its last step, the validation pairs
    /// and the training pairs' accuracy (for the train/validation gap).
    fn validate(&mut self, step: usize, report: &mut dyn FnMut(&Progress)) -> Result<()> {
        let cfg = self.cfg;
        if let Some(m) = self.step.mining_stats()? {
            report(&Progress::Note(format!(
                "mining, last step: {:.1}% of {} mined triplets violate the margin; mean \
                 d(a,p) {:.4}, d(a,n) {:.4}",
                100.0 * m.active_fraction(),
                m.mined,
                m.mean_d_ap,
                m.mean_d_an
            )));
        }
        self.last_val = self.protocol.validate(&self.embedder, &self.data.val)?;
        let train_accuracy = self
            .protocol
            .train_accuracy(&self.embedder, &self.data.train)?;
        let recent = &self.losses[self.losses.len().saturating_sub(cfg.eval_every / cfg.batch)..];
        let pairs = (step + 1) * cfg.batch;
        self.evidence.validations.push(ValidationPoint {
            pairs,
            loss: mean(recent),
            accuracy: self.last_val.accuracy,
            roc_auc: self.last_val.roc_auc,
            train_accuracy,
        });
        report(&Progress::Validation {
            pairs,
            loss: mean(recent),
            accuracy: self.last_val.accuracy,
            roc_auc: self.last_val.roc_auc,
            train_accuracy,
            pairs_per_sec: ((step + 1 - self.start) * cfg.batch) as f64 / self.train_s.max(1e-9),
        });
        Ok(())
    }

    /// Hands the state after `steps_done` steps to the control's saver, if it has one.
    fn save(&self, control: &mut RunControl, steps_done: usize) -> Result<()> {
        let Some(save) = control.save.as_mut() else {
            return Ok(());
        };
        let state = TrainingState {
            values: self
                .values
                .read(self.gpu, self.tracked_before + steps_done as i64)?,
            optimizer: self.step.optimizer_state()?,
            steps_done,
        };
        save(&self.model, &state)
    }

    /// The divergence, with the doctor's diagnosis of the evidence so far.
    fn diverged(&mut self, message: String) -> Divergence {
        let mut evidence = std::mem::take(&mut self.evidence);
        evidence.losses = std::mem::take(&mut self.losses);
        evidence.diverged = Some(message.clone());
        evidence.sampled_same = self.step.sampled_same;
        evidence.sampled_pairs = self.step.sampled_pairs;
        Divergence {
            message,
            diagnosis: Diagnosis::new(evidence),
        }
    }

    /// After the last step: the profile, the mixed-precision note, the test scores at the
    /// validation threshold, the embedding metrics and the doctor's diagnosis.
    fn finish(mut self, wall: Instant, report: &mut dyn FnMut(&Progress)) -> Result<Outcome> {
        self.report_profile(report)?;
        if let Some(s) = self.step.loss_scale()? {
            report(&Progress::Note(format!(
                "mixed precision: {} steps applied, {} skipped for overflowing f16; loss scale now {}",
                s.applied, s.skipped, s.scale
            )));
        }
        let (gpu, cfg) = (self.gpu, self.cfg);
        let (test, test_scores) =
            self.protocol
                .test_scored(&self.embedder, &self.data.test, &self.last_val)?;
        let operating_points = Target::with_far(&cfg.far_targets)
            .into_iter()
            .filter_map(|target| {
                let point = operating_point(
                    target,
                    (&self.last_val.scores, self.protocol.val_labels()),
                    (&test_scores, self.protocol.test_labels()),
                );
                // The check before training counted on half the pairs being Different; a
                // draw short of that leaves the target out rather than the finished run.
                point
                    .map_err(|e| report(&Progress::Note(format!("operating point left out: {e}"))))
                    .ok()
            })
            .collect();
        let embedding_metrics = evidence::test_evidence(
            gpu,
            cfg,
            &self.embedder,
            &self.data.sets,
            &self.data.test,
            &mut self.evidence,
        )?;
        evidence::probe_evidence(
            gpu,
            cfg,
            &self.model,
            &self.values,
            (&self.data.sets, &self.data.val),
            &self.protocol,
            (&self.last_val, test_scores, test.accuracy),
            &mut self.evidence,
        )?;
        self.evidence.sampled_same = self.step.sampled_same;
        self.evidence.sampled_pairs = self.step.sampled_pairs;
        self.evidence.losses = self.losses.clone();
        let values = self
            .values
            .read(gpu, self.tracked_before + self.steps as i64)?;
        self.evidence.class_centers = self.model.class_head_weights(&values.params).and_then(|w| {
            let k = self
                .model
                .config
                .similarity()
                .map_or(1, |l| l.columns_per_class());
            CenterSpread::of(w, self.model.embedding_dim(), k)
        });
        if let Some((images, stored)) = self.step.memory_contents()? {
            // What the memory holds against what the trained tower embeds for the same images.
            let fresh = self.embedder.embed_indices(&self.data.train, &images)?;
            self.evidence.memory_drift =
                MemoryDrift::of(&stored, &fresh, self.model.embedding_dim(), cfg.batch);
        }
        let head = |v: &[f32]| mean(&v[..v.len().min(20)]);
        let tail = |v: &[f32]| mean(&v[v.len().saturating_sub(20)..]);
        let steps = self.steps;
        Ok(Outcome::Trained(Box::new(TrainReport {
            adapter: gpu.adapter().name.clone(),
            train_pairs: steps * cfg.batch,
            steps,
            test,
            val_accuracy: self.last_val.accuracy,
            val_roc_auc: self.last_val.roc_auc,
            pairs_per_sec: ((steps - self.start) * cfg.batch) as f64 / self.train_s.max(1e-9),
            train_s: self.train_s,
            wall_s: wall.elapsed().as_secs_f64(),
            first_loss: head(&self.losses),
            last_loss: tail(&self.losses),
            values,
            diagnosis: Diagnosis::new(self.evidence),
            losses: self.losses,
            model: self.model,
            embedding_metrics,
            operating_points,
        })))
    }

    /// `--profile`'s breakdown of the last step: device timestamps, or host wall-clock per
    /// dispatch where the adapter's timestamps cannot be trusted.
    fn report_profile(&mut self, report: &mut dyn FnMut(&Progress)) -> Result<()> {
        if let Some(p) = self.profiler.as_mut() {
            report(&Progress::Profile {
                step: self.steps,
                host_timed: false,
                kernels: p.read(self.gpu)?,
            });
        }
        if self.host_timed {
            // After the last step, so it changes no weight; the running statistics the timed
            // forward updates are put back.
            self.step.take_losses()?;
            let trained = self.values.read(self.gpu, 0)?;
            let kernels = self.step.time_dispatches()?;
            self.values.write(self.gpu, &trained)?;
            report(&Progress::Profile {
                step: self.steps,
                host_timed: true,
                kernels,
            });
        }
        Ok(())
    }
}

/// Puts a saved `state` back into the model's `values` and the step program of a run of
/// `steps` steps; returns the step to continue from.
fn restore(
    gpu: &Gpu,
    state: TrainingState,
    values: &ModelTensors,
    step: &mut TrainStep,
    steps: usize,
) -> Result<usize> {
    let len = values.params.len();
    let running = values.state.as_ref().map_or(0, Tensor::len);
    let saved = &state.values;
    if saved.params.len() != len || saved.running.len() != running || state.steps_done > steps {
        return Err(Error::Config(format!(
            "the saved state ({} parameters, {} running statistics, {} steps done) does not \
             continue this run ({len} parameters, {running} running statistics, {steps} steps)",
            saved.params.len(),
            saved.running.len(),
            state.steps_done
        )));
    }
    values.write(gpu, saved)?;
    step.resume(&state.optimizer, state.steps_done)?;
    Ok(state.steps_done)
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
