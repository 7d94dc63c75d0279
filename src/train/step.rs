//! One training step of a model, built once and submitted once per step.
//!
//! Set-up records the step program on a tape with all its buffers: (under mixed precision
//! the f16 weight copy) → gather → tower on every branch as one batch → distance → loss →
//! backward → (the overflow check) → optimizer (→ the loss scale's update). Each step the
//! host only samples indices and labels, writes them, and submits the step as ONE command
//! buffer; the loss is copied on the GPU into a log the host reads every `log_every` steps,
//! so the host never waits on the GPU step by step.

use std::time::Instant;

use super::{TrainConfig, Xbm};
use crate::autograd::{Tape, ValueId};
use crate::cpu::similarity_loss::Window;
use crate::data::augment::AugmentSampler;
use crate::data::batches::BatchSampler;
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Kernel, Profiler, Tensor};
use crate::model::{CrossBatchMemory, ModelTensors, SiameseModel, Weights};
use crate::ops::amp::{self, LossScaleConfig, LossScaler, ScaleState};
use crate::ops::gather::{self, PackedImages, Stager};
use crate::ops::mining::MiningStats;
use crate::ops::photo;
use crate::optim::{Optimizer, OptimizerConfig};
use crate::vocab::{LossKind, Mode, PairLabel, Precision, TRANSFORM_LEN};

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
    /// The optimizer of the trainable parameters; with a class head of its own learning
    /// rate, two: the tower's, then the head's.
    optimizers: Vec<Optimizer>,
    /// Mixed precision's loss scale, whose update follows the optimizer.
    scaler: Option<LossScaler>,
    sampler: BatchSampler,
    idx: Vec<u32>,
    codes: Vec<u32>,
    /// With augmentation on: its sampler and the `[M, 8]` buffers it fills.
    augment: Option<Augmentation>,
    /// Training images in host memory (over the GPU data budget): each step's batch is
    /// staged into a set of the step's size, which the gather reads at slots 0..M.
    stager: Option<Stager>,
    loss_log: Tensor,
    logged: usize,
    invert_labels: bool,
    /// Same pairs and all pairs sampled so far (pair losses).
    pub sampled_same: u64,
    pub sampled_pairs: u64,
    /// The mined loss's stats of the last step (see `ops::mining::MiningStats`).
    mining_stats: Option<Tensor>,
    /// The cross-batch memory, if the run keeps one.
    memory: Option<Memory>,
    /// `[seed, step]`, from which dropout draws the step's masks; rewritten every step.
    rng: Tensor,
    seed: u32,
    /// Steps submitted, a resumed run's included.
    steps_done: u32,
}

impl<'g> TrainStep<'g> {
    /// Builds the step of `model` over the packed training `images` (with their `labels`;
    /// resident on the GPU, or in host memory and staged step by step), updating the
    /// model's `values` through `grads`, for a run of `steps` steps.
    #[allow(clippy::too_many_arguments)] // the buffers a step binds, each named
    pub fn new(
        gpu: &'g Gpu,
        model: &SiameseModel,
        cfg: &TrainConfig,
        images: &PackedImages,
        labels: &[u8],
        values: &ModelTensors,
        grads: &Tensor,
        steps: usize,
    ) -> Result<Self> {
        let params = &values.params;
        let mixed = mixed_precision(gpu, cfg)?;
        let images_per_step = cfg.images_per_sample() * cfg.batch;
        let indices = gpu.zeros(&[images_per_step], DType::U32)?;
        // Pair label codes, or (with a miner) the class id of every image.
        let label_codes = gpu.zeros(&[cfg.batch], DType::U32)?;
        let [c, h, w] = model.config.input;
        let x = gpu.zeros(&[images_per_step, c, h, w], cfg.precision.activations())?;
        // Mixed precision: the tower reads an f16 copy of the weights, made each step.
        let half = if mixed {
            Some(gpu.zeros(params.shape(), DType::F16)?)
        } else {
            None
        };
        let stager = images.stager(gpu, images_per_step)?;
        let source = stager.as_ref().map_or(images, Stager::images);
        if let Some(s) = &stager {
            gpu.write_u32(&indices, &s.slots())?;
        }
        let (gather, augment) = gather_kernel(gpu, cfg, source, &indices, &x, [h, w])?;
        let mut tape = Tape::new(gpu);
        let xv = tape.input(x);
        let rng = gpu.zeros(&[2], DType::U32)?;
        let weights = Weights {
            params,
            half: half.as_ref(),
            grads: Some(grads),
            state: values.state.as_ref(),
            rng: Some(&rng),
            mode: Mode::Train,
        };
        let memory = match cfg.xbm {
            Some(xbm) => Some(Memory {
                ring: CrossBatchMemory {
                    embeddings: gpu.zeros(&[xbm.slots, model.embedding_dim()], DType::F32)?,
                    labels: gpu.zeros(&[xbm.slots], DType::U32)?,
                    window: gpu.zeros(&[4], DType::U32)?,
                },
                xbm,
                images: vec![EMPTY_SLOT; xbm.slots],
            }),
            None => None,
        };
        let (loss, mining_stats) = record_loss(
            model,
            cfg,
            &mut tape,
            xv,
            &label_codes,
            &weights,
            memory.as_ref().map(|m| &m.ring),
        )?;
        let mut kernels = Vec::new();
        if let Some(half) = &half {
            kernels.push(amp::cast(gpu, params, half)?);
        }
        kernels.extend(gather);
        kernels.extend(tape.forward_kernels().cloned());
        kernels.extend(tape.backward(loss)?);
        let scaler = if mixed {
            let seed = tape.grad(loss).expect("backward checked the seed");
            let scaler = LossScaler::new(gpu, LossScaleConfig::default(), grads, seed)?;
            kernels.push(scaler.check().clone());
            Some(scaler)
        } else {
            None
        };
        let optimizers = optimizers(gpu, model, cfg, params, grads, steps, scaler.as_ref())?;
        Ok(TrainStep {
            gpu,
            batch: cfg.batch,
            indices,
            labels: label_codes,
            kernels,
            loss: tape.tensor(loss).clone(),
            optimizers,
            scaler,
            sampler: BatchSampler::new(cfg.batches(), labels, cfg.seed)?,
            idx: Vec::new(),
            codes: Vec::new(),
            augment,
            stager,
            loss_log: gpu.zeros(&[cfg.log_every], DType::F32)?,
            logged: 0,
            invert_labels: cfg.invert_pair_labels && cfg.loss != LossKind::Triplet,
            sampled_same: 0,
            sampled_pairs: 0,
            mining_stats,
            memory,
            rng,
            // Dropout's masks are drawn from the low 32 bits of the run's seed.
            seed: cfg.seed as u32,
            steps_done: 0,
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
        self.gpu
            .write_u32(&self.rng, &[self.seed, self.steps_done])?;
        if let Some(m) = &self.memory {
            let window = m.window(self.steps_done as usize, self.batch);
            self.gpu.write_u32(&m.ring.window, &window.words())?;
        }
        self.steps_done += 1;
        let mut lr = None;
        for optimizer in &mut self.optimizers {
            lr = lr.or(Some(optimizer.prepare(self.gpu)?));
        }
        let lr = lr.expect("a step has an optimizer");
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
        if let Some(m) = self.memory.as_mut() {
            m.remember(self.steps_done as usize, &self.idx);
        }
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
        match self.stager.as_mut() {
            Some(stager) => stager.stage(self.gpu, &self.idx)?,
            None => self.gpu.write_u32(&self.indices, &self.idx)?,
        }
        self.gpu.write_u32(&self.labels, &self.codes)?;
        if let Some(augment) = self.augment.as_mut() {
            augment.draw(self.idx.len(), Some(self.gpu))?;
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
        self.optimizers
            .iter()
            .map(Optimizer::kernel)
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
        // The cross-batch memory comes first (its embeddings, then its labels), and under
        // mixed precision the loss scale's state follows the optimizer's buffers.
        let mut optimizer_state = optimizer_state;
        if let Some(m) = &self.memory {
            let [embeddings, labels, rest @ ..] = optimizer_state else {
                return Err(Error::Config(
                    "the saved state has no cross-batch memory: resume with the same --xbm".into(),
                ));
            };
            m.restore(self.gpu, embeddings, labels)?;
            optimizer_state = rest;
        }
        if let Some(scaler) = &self.scaler {
            let Some((scale, rest)) = optimizer_state.split_last() else {
                return Err(Error::Config("the saved state has no loss scale".into()));
            };
            scaler.restore(self.gpu, scale)?;
            optimizer_state = rest;
        }
        let needed: usize = self.optimizers.iter().map(|o| o.state().len()).sum();
        if optimizer_state.len() != needed {
            return Err(Error::Config(format!(
                "the saved optimizer has {} state buffers, this run's needs {needed}",
                optimizer_state.len()
            )));
        }
        for optimizer in &mut self.optimizers {
            let (mine, rest) = optimizer_state.split_at(optimizer.state().len());
            optimizer.restore(self.gpu, mine, steps_done as u32)?;
            optimizer_state = rest;
        }
        self.steps_done = steps_done as u32;
        for step in 0..steps_done {
            self.sampler
                .next(self.batch, &mut self.idx, &mut self.codes);
            if let Some(m) = self.memory.as_mut() {
                m.remember(step, &self.idx);
            }
            if let Some(augment) = self.augment.as_mut() {
                augment.draw(self.idx.len(), None)?;
            }
        }
        Ok(())
    }

    /// The cross-batch memory's filled slots, if the run keeps one (waits for the submitted
    /// steps): the training images they hold and the embeddings written for them, `[n, D]`.
    pub fn memory_contents(&self) -> Result<Option<(Vec<u32>, Vec<f32>)>> {
        let Some(m) = &self.memory else {
            return Ok(None);
        };
        let all = self.gpu.read_f32(&m.ring.embeddings)?;
        let dim = all.len() / m.images.len();
        let (mut images, mut rows) = (Vec::new(), Vec::new());
        for (slot, &image) in m.images.iter().enumerate() {
            if image != EMPTY_SLOT {
                images.push(image);
                rows.extend_from_slice(&all[slot * dim..(slot + 1) * dim]);
            }
        }
        Ok(Some((images, rows)))
    }

    /// The optimizer's state buffers, and under mixed precision the loss scale's, read back
    /// (waits for the submitted steps).
    pub fn optimizer_state(&self) -> Result<Vec<Vec<f32>>> {
        let mut state = match &self.memory {
            Some(m) => m.state(self.gpu)?,
            None => Vec::new(),
        };
        let rest: Result<Vec<Vec<f32>>> = self
            .optimizers
            .iter()
            .flat_map(|o| o.state())
            .chain(self.scaler.as_ref().map(|s| s.state()))
            .map(|t| self.gpu.read_f32(t))
            .collect();
        state.extend(rest?);
        Ok(state)
    }
}

/// A cross-batch memory and its settings.
struct Memory {
    ring: CrossBatchMemory,
    xbm: Xbm,
    /// The training image each slot holds (host side: what the doctor re-embeds to measure
    /// how stale the slots are), [`EMPTY_SLOT`] before it is written.
    images: Vec<u32>,
}

/// A memory slot not yet written.
const EMPTY_SLOT: u32 = u32::MAX;

impl Memory {
    /// Notes that step `step` writes the images `batch` into their slots.
    fn remember(&mut self, step: usize, batch: &[u32]) {
        let slots = self.images.len();
        for (i, &image) in batch.iter().enumerate() {
            self.images[(step * batch.len() + i) % slots] = image;
        }
    }

    /// The window of step `step` (0-based) of batches of `n`: the batch goes to the slots
    /// from `(step·n) mod M`; the loss reads the batch alone during the warm-up, then every
    /// slot filled so far (the last min((step + 1)·n, M) written).
    fn window(&self, step: usize, n: usize) -> Window {
        let slots = self.xbm.slots;
        let at = step * n % slots;
        let filled = ((step + 1) * n).min(slots);
        let (start, count) = if step < self.xbm.warmup {
            (at, n)
        } else {
            ((at + n + slots - filled) % slots, filled)
        };
        Window {
            self_cols: true,
            self_start: at,
            start,
            count,
        }
    }

    /// The memory's embeddings and its labels (as f32: class ids, exact below 2²⁴), read back.
    fn state(&self, gpu: &Gpu) -> Result<Vec<Vec<f32>>> {
        let labels = gpu.read_u32(&self.ring.labels)?;
        Ok(vec![
            gpu.read_f32(&self.ring.embeddings)?,
            labels.iter().map(|&l| l as f32).collect(),
        ])
    }

    fn restore(&self, gpu: &Gpu, embeddings: &[f32], labels: &[f32]) -> Result<()> {
        if embeddings.len() != self.ring.embeddings.len() || labels.len() != self.ring.labels.len()
        {
            return Err(Error::Config(format!(
                "the saved cross-batch memory has {} slots, this run's has {}: resume with the \
                 same --xbm",
                labels.len(),
                self.ring.labels.len()
            )));
        }
        gpu.write_f32(&self.ring.embeddings, embeddings)?;
        let labels: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
        gpu.write_u32(&self.ring.labels, &labels)
    }
}

/// The optimizers of the trainable span (frozen parameters lie before it): one, or with a
/// class head and `head_lr`, the tower's and then the head's at its own learning rate.
fn optimizers(
    gpu: &Gpu,
    model: &SiameseModel,
    cfg: &TrainConfig,
    params: &Tensor,
    grads: &Tensor,
    steps: usize,
    scaler: Option<&LossScaler>,
) -> Result<Vec<Optimizer>> {
    let layout = &model.layout;
    let new =
        |config, p: &Tensor, g: &Tensor| Optimizer::new(gpu, config, p, g, steps as u32, scaler);
    let split = cfg
        .head_lr
        .zip(model.class_head_offset())
        .and_then(|(lr, at)| {
            let (p, g) = (
                layout.split_trainable(params, at)?,
                layout.split_trainable(grads, at)?,
            );
            Some((lr, p, g))
        });
    Ok(match split {
        Some((lr, (tower_p, head_p), (tower_g, head_g))) => {
            let head = OptimizerConfig {
                lr,
                ..cfg.optimizer
            };
            vec![
                new(cfg.optimizer, &tower_p, &tower_g)?,
                new(head, &head_p, &head_g)?,
            ]
        }
        None => vec![new(
            cfg.optimizer,
            &layout.trainable(params),
            &layout.trainable(grads),
        )?],
    })
}

/// Whether the step runs in mixed precision, refused on an adapter without f16 shaders.
fn mixed_precision(gpu: &Gpu, cfg: &TrainConfig) -> Result<bool> {
    let mixed = cfg.precision == Precision::Mixed;
    if mixed && !gpu.has_f16() {
        return Err(Error::Config(format!(
            "--precision mixed needs 16-bit float shaders (wgpu's SHADER_F16), which {} does \
             not offer; train with --precision f32",
            gpu.adapter().name
        )));
    }
    Ok(mixed)
}

/// Augmentation's sampler and the `[M, 8]` buffers it fills each step: the affine rows of
/// the augmenting gather (geometric transforms on) and the photometric rows of `ops::photo`
/// (colour jitter or blur on), each with its host copy.
struct Augmentation {
    sampler: AugmentSampler,
    transforms: Option<(Tensor, Vec<f32>)>,
    colors: Option<(Tensor, Vec<f32>)>,
}

impl Augmentation {
    /// Draws the rows of `images` images; writes them when `gpu` is given (a replay on
    /// resume only draws).
    fn draw(&mut self, images: usize, gpu: Option<&Gpu>) -> Result<()> {
        if let Some((tensor, rows)) = self.transforms.as_mut() {
            self.sampler.sample_into(images, rows);
            if let Some(gpu) = gpu {
                gpu.write_f32(tensor, rows)?;
            }
        }
        if let Some((tensor, rows)) = self.colors.as_mut() {
            self.sampler.sample_colors_into(images, rows);
            if let Some(gpu) = gpu {
                gpu.write_f32(tensor, rows)?;
            }
        }
        Ok(())
    }
}

/// The gather of the batch `x` from the packed `images` at `indices`, with augmentation when
/// it is on (then the colour jitter and the blur after it, when they are on). Off, it is the plain gather:
/// the batches are bit for bit as before it existed.
fn gather_kernel(
    gpu: &Gpu,
    cfg: &TrainConfig,
    images: &PackedImages,
    indices: &Tensor,
    x: &Tensor,
    [h, w]: [usize; 2],
) -> Result<(Vec<Kernel>, Option<Augmentation>)> {
    let augment = &cfg.augment;
    if augment.is_off() {
        let kernel = gather::gather_images(gpu, images, indices, x, cfg.pixel_norm)?;
        return Ok((vec![kernel], None));
    }
    let rows = || gpu.zeros(&[indices.len(), TRANSFORM_LEN], DType::F32);
    let mut kernels = Vec::new();
    let transforms = if augment.geometric_is_off() {
        kernels.push(gather::gather_images(
            gpu,
            images,
            indices,
            x,
            cfg.pixel_norm,
        )?);
        None
    } else {
        let transforms = rows()?;
        kernels.push(gather::gather_images_affine(
            gpu,
            images,
            indices,
            &transforms,
            x,
            cfg.pixel_norm,
            augment.fill_mode,
        )?);
        Some((transforms, Vec::new()))
    };
    let colors = if augment.photometric_is_off() {
        None
    } else {
        let colors = rows()?;
        if !augment.color.is_off() {
            kernels.push(photo::color_jitter(gpu, x, &colors, cfg.pixel_norm)?);
        }
        if let Some(blur) = augment.blur {
            kernels.push(photo::gaussian_blur(gpu, x, &colors, blur.taps)?);
        }
        Some((colors, Vec::new()))
    };
    let sampler = AugmentSampler::new(cfg.augment, h, w, cfg.seed);
    Ok((
        kernels,
        Some(Augmentation {
            sampler,
            transforms,
            colors,
        }),
    ))
}

/// Records the tower and the loss of the batch `x` (with its label codes) on `tape`: the
/// loss value, and with a miner the tensor of its stats.
fn record_loss(
    model: &SiameseModel,
    cfg: &TrainConfig,
    tape: &mut Tape,
    x: ValueId,
    label_codes: &Tensor,
    w: &Weights,
    memory: Option<&CrossBatchMemory>,
) -> Result<(ValueId, Option<Tensor>)> {
    Ok(match cfg.miner {
        Some(miner) => {
            let (loss, stats) = model.record_mined_loss(tape, x, label_codes, miner, w)?;
            (loss, Some(stats))
        }
        None if cfg.loss.uses_classes() => (
            model.record_class_loss(tape, x, label_codes, w, memory)?.0,
            None,
        ),
        None => (model.record_loss(tape, x, label_codes, w)?, None),
    })
}
