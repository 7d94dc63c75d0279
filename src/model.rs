//! A Siamese model: a shared tower and the head its loss needs.
//!
//! Every branch of a sample runs through the tower as ONE batch (pairs: 2B images, the
//! first B the left images and the last B the right ones; triplets: 3B, anchors, positives,
//! negatives), and the embeddings are split into views afterwards. The shared weights thus
//! get one gradient, computed by the same kernels as any other batch.

use crate::autograd::{Tape, ValueId};
use crate::cpu::similarity_loss::Window;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::nn::{Init, ParamLayout, Tower, TowerSpec, TowerWeights};
use crate::vocab::{Distance, LossHyper, LossKind, Miner, Mode, PairwiseMetric, SimilarityLoss};

/// The name prefix of the tower's parameters and running statistics (`tower.0.weight`).
pub const TOWER_PREFIX: &str = "tower";

/// What a model is: tower, input size, loss and its settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub tower: TowerSpec,
    /// Input image shape `[C, H, W]`.
    pub input: [usize; 3],
    pub loss: LossKind,
    pub margin: f32,
    /// Distance between embeddings for the contrastive and triplet losses.
    pub distance: Distance,
    /// L2-normalise embeddings before the distance (common with the triplet loss).
    pub normalize: bool,
    /// Name prefixes of the frozen parameters (`layer1` freezes `tower.layer1.*`).
    pub freeze: Vec<String>,
    /// The hyper-parameters of the losses on class-labelled batches.
    pub hyper: LossHyper,
    /// Classes of the training labels (ids 0..classes): the rows of a class head. 0 builds
    /// no class head (a model loaded to embed, whose head is not needed).
    pub classes: usize,
}

/// A model's values on the host: its flat parameters (the model's layout), its BatchNorm
/// running statistics (the tower's state layout; empty without BatchNorm) and the training
/// steps the statistics have seen.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelValues {
    pub params: Vec<f32>,
    pub running: Vec<f32>,
    pub batches_tracked: i64,
}

impl ModelValues {
    /// The initial values of `model` from `seed`.
    pub fn init(model: &SiameseModel, seed: u64) -> ModelValues {
        ModelValues {
            params: model.layout.init(seed),
            running: model.tower.state.init(0),
            batches_tracked: 0,
        }
    }
}

/// A model's values on the GPU: the flat parameters and (with BatchNorm) the running
/// statistics.
pub struct ModelTensors {
    pub params: Tensor,
    pub state: Option<Tensor>,
}

impl ModelTensors {
    pub fn upload(gpu: &Gpu, model: &SiameseModel, values: &ModelValues) -> Result<ModelTensors> {
        let (params, state) = (&values.params, &values.running);
        if params.len() != model.layout.len || state.len() != model.tower.state.len {
            return Err(Error::Config(format!(
                "{} parameters and {} running statistics given for a model of {} and {}",
                params.len(),
                state.len(),
                model.layout.len,
                model.tower.state.len
            )));
        }
        Ok(ModelTensors {
            params: gpu.upload_f32(params, &[params.len()])?,
            state: match model.tower.has_batch_norm() {
                true => Some(gpu.upload_f32(state, &[state.len()])?),
                false => None,
            },
        })
    }

    /// Overwrites the values with `values` (of the same model).
    pub fn write(&self, gpu: &Gpu, values: &ModelValues) -> Result<()> {
        gpu.write_f32(&self.params, &values.params)?;
        if let Some(state) = &self.state {
            gpu.write_f32(state, &values.running)?;
        }
        Ok(())
    }

    /// The values read back (waits for the GPU), with `batches_tracked` training steps.
    pub fn read(&self, gpu: &Gpu, batches_tracked: i64) -> Result<ModelValues> {
        Ok(ModelValues {
            params: gpu.read_f32(&self.params)?,
            running: match &self.state {
                Some(state) => gpu.read_f32(state)?,
                None => Vec::new(),
            },
            batches_tracked,
        })
    }

    /// The values as constants in evaluation mode.
    pub fn eval(&self) -> Weights<'_> {
        Weights::eval(&self.params, self.state.as_ref())
    }
}

/// A cross-batch memory on the GPU (Wang et al. 2020): a ring of the last `slots` embeddings
/// `[slots, D]` and their class ids `[slots]` (u32), and the step's `window [4]` (u32,
/// `cpu::similarity_loss::Window::words`): where the batch is written and which slots the
/// loss reads.
pub struct CrossBatchMemory {
    pub embeddings: Tensor,
    pub labels: Tensor,
    pub window: Tensor,
}

/// What a recording of the model reads and writes.
#[derive(Clone, Copy)]
pub struct Weights<'a> {
    /// The flat f32 parameters.
    pub params: &'a Tensor,
    /// Their f16 copy under mixed precision, which the tower reads instead.
    pub half: Option<&'a Tensor>,
    /// The flat f32 parameter gradients; None: the model is constant (evaluation).
    pub grads: Option<&'a Tensor>,
    /// The tower's BatchNorm running statistics (flat f32, [`Tower::state`]'s layout);
    /// needed when it has BatchNorm.
    pub state: Option<&'a Tensor>,
    /// `[seed, step]` (u32) for dropout's masks; needed in training when the tower has
    /// dropout.
    pub rng: Option<&'a Tensor>,
    pub mode: Mode,
}

impl<'a> Weights<'a> {
    /// Constant weights in evaluation mode: what validation, `eval` and `embed` record.
    pub fn eval(params: &'a Tensor, state: Option<&'a Tensor>) -> Weights<'a> {
        Weights {
            params,
            half: None,
            grads: None,
            state,
            rng: None,
            mode: Mode::Eval,
        }
    }
}

/// A built model: the tower, the flat parameter layout and the head's parameters.
#[derive(Debug, Clone)]
pub struct SiameseModel {
    pub config: ModelConfig,
    pub tower: Tower,
    pub layout: ParamLayout,
    /// The BCE head's Linear(D → 1) weight and bias indices in the layout.
    head: Option<(usize, usize)>,
    /// The class weights or proxies of a loss that learns them: their index in the layout.
    class_head: Option<usize>,
}

impl SiameseModel {
    pub fn new(config: ModelConfig) -> Result<SiameseModel> {
        if !(config.margin >= 0.0 && config.margin.is_finite()) {
            return Err(Error::Config(format!(
                "margin must be a finite number ≥ 0, got {}",
                config.margin
            )));
        }
        let mut layout = ParamLayout::default();
        let tower = Tower::new(&config.tower, config.input, TOWER_PREFIX, &mut layout)?;
        let d = tower.embedding_dim();
        let head = (config.loss == LossKind::Bce).then(|| {
            (
                layout.push("head.weight".into(), &[1, d], Init::Uniform { fan_in: d }),
                layout.push("head.bias".into(), &[1], Init::Uniform { fan_in: d }),
            )
        });
        let class_head = match config.similarity() {
            Some(loss) if loss.learns_classes() && config.classes > 0 => {
                Some(push_class_head(&mut layout, loss, config.classes, d)?)
            }
            _ => None,
        };
        freeze(&mut layout, &config.freeze)?;
        Ok(SiameseModel {
            config,
            tower,
            layout,
            head,
            class_head,
        })
    }

    /// Where the class weights or proxies start in the flat parameters (they come last),
    /// None without them: the span a separate head learning rate applies to.
    pub fn class_head_offset(&self) -> Option<usize> {
        self.class_head.map(|i| self.layout.params[i].offset)
    }

    pub fn embedding_dim(&self) -> usize {
        self.tower.embedding_dim()
    }

    /// What the tower reads and writes of `w` (the f16 copy of the weights under mixed
    /// precision).
    pub fn tower_weights<'a>(&'a self, w: &Weights<'a>) -> TowerWeights<'a> {
        TowerWeights {
            layout: &self.layout,
            params: w.half.unwrap_or(w.params),
            grads: w.grads,
            state: w.state,
            rng: w.rng,
            mode: w.mode,
        }
    }

    /// Records the embedding of `x [N, C, H, W]`: the tower, then the L2 normalisation if
    /// the model asks for it. Under mixed precision the tower reads the f16 copy of the
    /// weights (and `x` is f16).
    pub fn record_embedding(&self, tape: &mut Tape, x: ValueId, w: &Weights) -> Result<ValueId> {
        let e = self.tower.record(tape, x, &self.tower_weights(w))?;
        if self.config.normalize {
            tape.l2_normalize(e)
        } else {
            Ok(e)
        }
    }

    /// Records the training loss of a batch `x [k·B, C, H, W]` (k = branches), with pair
    /// labels `labels [B]` (unused by the triplet loss). Returns the scalar loss. The BCE
    /// head reads the f32 parameters.
    pub fn record_loss(
        &self,
        tape: &mut Tape,
        x: ValueId,
        labels: &Tensor,
        w: &Weights,
    ) -> Result<ValueId> {
        let e = self.record_embedding(tape, x, w)?;
        let parts = tape.split_rows(e, self.config.loss.branches())?;
        let margin = self.config.margin;
        match self.config.loss {
            LossKind::Contrastive => tape.contrastive_distance_loss(
                self.config.distance,
                parts[0],
                parts[1],
                labels,
                margin,
            ),
            LossKind::Triplet => tape.triplet_distance_loss(
                self.config.distance,
                [parts[0], parts[1], parts[2]],
                margin,
            ),
            LossKind::Bce => {
                let (wi, bi) = self.head.expect("a BCE model has a head");
                let bind = |tape: &mut Tape, i| {
                    tape.param(
                        self.layout.view(w.params, i),
                        w.grads.map(|g| self.layout.view(g, i)),
                    )
                };
                let (head_w, head_b) = (bind(tape, wi)?, bind(tape, bi)?);
                let diff = tape.abs_diff(parts[0], parts[1])?;
                let z = tape.dense(diff, head_w, head_b)?;
                tape.bce_with_logits(z, labels)
            }
            other => Err(Error::Config(format!(
                "the {other} loss trains on class-labelled batches: record it with record_class_loss"
            ))),
        }
    }

    /// Records the triplet loss of `miner` on a batch `x [N, C, H, W]` of N images with class
    /// ids `classes [N]` (u32): embeddings, their distance matrix `[N, N]`, the mined loss.
    /// Returns the scalar loss and the step's mining stats tensor (`ops::mining::MiningStats`).
    pub fn record_mined_loss(
        &self,
        tape: &mut Tape,
        x: ValueId,
        classes: &Tensor,
        miner: Miner,
        w: &Weights,
    ) -> Result<(ValueId, Tensor)> {
        let metric = match self.config.distance {
            Distance::Euclidean => PairwiseMetric::Euclidean,
            Distance::Cosine => PairwiseMetric::Cosine,
            other => {
                return Err(Error::Config(format!(
                    "miner {miner} works on euclidean or cosine distances, not {other:?}"
                )));
            }
        };
        let e = self.record_embedding(tape, x, w)?;
        let dm = tape.pairwise(metric, e, e)?;
        tape.mined_triplet_loss(dm, classes, miner, self.config.margin)
    }

    /// Records a loss on class-labelled images (ArcFace, ProxyAnchor, SupCon, …) of a batch
    /// `x [N, C, H, W]` with class ids `classes [N]` (u32): the embeddings, their cosine
    /// distances to the class weights or proxies (or to each other, or with a cross-batch
    /// `memory` to its slots, the batch written into them first), the loss. Returns the
    /// scalar loss and its `stats [4]` tensor (`ops::similarity_loss`).
    pub fn record_class_loss(
        &self,
        tape: &mut Tape,
        x: ValueId,
        classes: &Tensor,
        w: &Weights,
        memory: Option<&CrossBatchMemory>,
    ) -> Result<(ValueId, Tensor)> {
        let Some(loss) = self.config.similarity() else {
            return Err(Error::Config(format!(
                "the {} loss does not train on class-labelled batches",
                self.config.loss
            )));
        };
        let e = self.record_embedding(tape, x, w)?;
        if !loss.learns_classes() {
            let Some(memory) = memory else {
                let n = tape.shape(e)[0];
                let window = tape.gpu().upload_u32(&Window::batch(n).words(), &[4])?;
                let dm = tape.pairwise(PairwiseMetric::Cosine, e, e)?;
                return tape.similarity_loss(loss, dm, classes, Some((classes, &window)));
            };
            tape.memory_enqueue(
                e,
                classes,
                &memory.window,
                &memory.embeddings,
                &memory.labels,
            )?;
            let slots = tape.input(memory.embeddings.clone());
            let dm = tape.pairwise(PairwiseMetric::Cosine, e, slots)?;
            return tape.similarity_loss(loss, dm, classes, Some((&memory.labels, &memory.window)));
        }
        if memory.is_some() {
            return Err(Error::Config(format!(
                "a cross-batch memory serves the losses over embeddings (supcon, ntxent, \
                 multi-similarity), not {}",
                self.config.loss
            )));
        }
        let i = self.class_head.ok_or_else(|| {
            Error::Config(format!(
                "the {} loss needs its class head: build the model with the number of classes",
                self.config.loss
            ))
        })?;
        let head = tape.param(
            self.layout.view(w.params, i),
            w.grads.map(|g| self.layout.view(g, i)),
        )?;
        let dm = tape.pairwise(PairwiseMetric::Cosine, e, head)?;
        tape.similarity_loss(loss, dm, classes, None)
    }

    /// The class weights or proxies within host parameters `flat`, as `[rows, D]` row-major,
    /// if the model has them.
    pub fn class_head_weights<'a>(&self, flat: &'a [f32]) -> Option<&'a [f32]> {
        self.class_head.map(|i| {
            let p = &self.layout.params[i];
            &flat[p.offset..p.offset + p.len()]
        })
    }

    /// The tower's BatchNorm layers in order (the order of their running statistics), each
    /// named as its parameters are (`tower.1`) and whether it is frozen.
    pub fn batch_norm_layers(&self) -> Vec<(String, bool)> {
        self.tower
            .state
            .params
            .iter()
            .filter_map(|p| p.name.strip_suffix(".running_mean"))
            .map(|layer| {
                let weight = self.layout.index_of(&format!("{layer}.weight"));
                let frozen = weight.is_some_and(|i| self.layout.params[i].frozen);
                (layer.to_string(), frozen)
            })
            .collect()
    }

    /// The BCE head's weights `(w [D], b)` within host parameters `flat`, if the model has one.
    pub fn head_weights<'a>(&self, flat: &'a [f32]) -> Option<(&'a [f32], f32)> {
        self.head.map(|(wi, bi)| {
            let (w, b) = (&self.layout.params[wi], &self.layout.params[bi]);
            (&flat[w.offset..w.offset + w.len()], flat[b.offset])
        })
    }
}

impl ModelConfig {
    /// The loss on cosine similarities this model trains with, None for the pair and
    /// triplet losses.
    pub fn similarity(&self) -> Option<SimilarityLoss> {
        self.loss.similarity(self.margin, &self.hyper)
    }
}

/// Adds the learned class weights (`head.weight [C·K, D]`, standard normal, as
/// pytorch-metric-learning's) or proxies (`head.proxies [C, D]`, Kaiming normal over fan-out)
/// of `loss` for `classes` classes; returns their index.
fn push_class_head(
    layout: &mut ParamLayout,
    loss: SimilarityLoss,
    classes: usize,
    dim: usize,
) -> Result<usize> {
    if classes < 2 {
        return Err(Error::Config(format!(
            "a class head needs at least 2 classes, the training labels have {classes}"
        )));
    }
    Ok(match loss {
        SimilarityLoss::ProxyAnchor { .. } => layout.push(
            "head.proxies".into(),
            &[classes, dim],
            Init::KaimingNormalFanOut { fan_out: classes },
        ),
        _ => layout.push(
            "head.weight".into(),
            &[classes * loss.columns_per_class(), dim],
            Init::Normal,
        ),
    })
}

/// Freezes the parameters of `layout` under the name `prefixes` (relative to the model, e.g.
/// `layer1`, or in full, `tower.layer1`); a prefix that names nothing, or freezing
/// everything, is refused.
fn freeze(layout: &mut ParamLayout, prefixes: &[String]) -> Result<()> {
    if prefixes.is_empty() {
        return Ok(());
    }
    let under = |name: &str, prefix: &str| {
        let relative = name.strip_prefix("tower.").unwrap_or(name);
        [name, relative].iter().any(|n| {
            n.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        })
    };
    for prefix in prefixes {
        if !layout.params.iter().any(|p| under(&p.name, prefix)) {
            let mut layers: Vec<&str> = layout
                .params
                .iter()
                .map(|p| p.name.rsplit_once('.').map_or(p.name.as_str(), |(l, _)| l))
                .collect();
            layers.dedup();
            return Err(Error::Config(format!(
                "--freeze {prefix} names no parameter; the model's layers are: {}",
                layers.join(", ")
            )));
        }
    }
    let frozen = |name: &str| prefixes.iter().any(|p| under(name, p));
    if layout.params.iter().all(|p| frozen(&p.name)) {
        return Err(Error::Config(format!(
            "--freeze {} freezes every parameter: nothing would train",
            prefixes.join(" --freeze ")
        )));
    }
    layout.freeze(frozen);
    Ok(())
}
