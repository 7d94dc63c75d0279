//! A tower: a [`TowerSpec`] with its shapes inferred from the input size, its parameters
//! placed in a [`ParamLayout`] and its BatchNorm running statistics in a layout of their own
//! ([`Tower::state`]). Shapes come from the spec and the input, never by hand, so a flatten
//! size such as 64·4·4 where a 28×28 input gives 64·5·5 cannot happen.
//!
//! Parameters are named `<prefix>.<layer name>.weight|bias` as PyTorch names them
//! (`tower.0.weight`; `tower.layer1.0.conv1.weight` in a preset), and the running statistics
//! `<prefix>.<layer name>.running_mean|running_var`, as in a PyTorch `state_dict`.

use super::params::{Init, ParamLayout};
use super::spec::{Layer, Node, TowerSpec};
use crate::autograd::{Tape, ValueId};
use crate::error::{Error, Result};
use crate::gpu::Tensor;
use crate::ops::activation::Activation;
use crate::ops::batchnorm::{self, RunningStats};
use crate::vocab::Mode;

/// Per-sample shape between layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Map { c: usize, h: usize, w: usize },
    Flat(usize),
}

impl Shape {
    fn len(self) -> usize {
        match self {
            Shape::Map { c, h, w } => c * h * w,
            Shape::Flat(n) => n,
        }
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shape::Map { c, h, w } => write!(f, "[{c}, {h}, {w}]"),
            Shape::Flat(n) => write!(f, "[{n}]"),
        }
    }
}

/// Where a layer's tensors are: indices in the parameter layout, and for BatchNorm in the
/// state layout.
#[derive(Debug, Clone)]
enum Slots {
    None,
    /// Weight and optional bias (a convolution before a BatchNorm has none).
    Weighted {
        weight: usize,
        bias: Option<usize>,
    },
    BatchNorm {
        weight: usize,
        bias: usize,
        running_mean: usize,
        running_var: usize,
    },
    /// A dropout layer's stream: its rank among the tower's dropout layers, so that two
    /// layers draw independent masks.
    Dropout {
        stream: u32,
    },
    Residual {
        branch: Vec<Built>,
        shortcut: Vec<Built>,
    },
}

/// A layer built for its input.
#[derive(Debug, Clone)]
struct Built {
    name: String,
    layer: Layer,
    output: Shape,
    slots: Slots,
}

/// A tower ready to record: layers, their output shapes, their parameters' indices.
#[derive(Debug, Clone)]
pub struct Tower {
    pub spec: TowerSpec,
    /// Input image shape `[C, H, W]`.
    pub input: [usize; 3],
    /// The BatchNorm running statistics (f32), one mean and one variance per layer.
    pub state: ParamLayout,
    layers: Vec<Built>,
}

/// What a recording of the tower reads and writes.
pub struct TowerWeights<'a> {
    /// The flat parameter layout the tower's indices point into.
    pub layout: &'a ParamLayout,
    /// The flat parameters the layers read (their f16 copy under mixed precision).
    pub params: &'a Tensor,
    /// The flat f32 parameter gradients; None: the tower is constant (evaluation).
    pub grads: Option<&'a Tensor>,
    /// The running statistics, flat f32 in [`Tower::state`]'s layout; needed when the
    /// tower has BatchNorm (training updates them, evaluation reads them).
    pub state: Option<&'a Tensor>,
    /// `[seed, step]` (u32), from which dropout draws its masks; needed in training when the
    /// tower has dropout.
    pub rng: Option<&'a Tensor>,
    pub mode: Mode,
}

/// Builds layers in order, placing parameters and state, counting dropout streams.
struct Builder<'a> {
    prefix: &'a str,
    layout: &'a mut ParamLayout,
    state: ParamLayout,
    dropouts: u32,
}

impl Builder<'_> {
    fn name(&self, node: &str, tensor: &str) -> String {
        format!("{}.{node}.{tensor}", self.prefix)
    }

    /// Builds `nodes` on an input of `shape`; returns them and their output shape.
    fn build(&mut self, nodes: &[Node], mut shape: Shape) -> Result<(Vec<Built>, Shape)> {
        let mut built = Vec::with_capacity(nodes.len());
        let mut previous: Option<&Layer> = None;
        for node in nodes {
            let fail = |why: String| {
                Error::Config(format!(
                    "tower spec, layer {} `{}` on input {shape}: {why}",
                    node.name, node.layer
                ))
            };
            if node.layer == Layer::BatchNorm
                && !matches!(previous, Some(Layer::Conv2d { .. } | Layer::Linear { .. }))
            {
                return Err(fail(
                    "bn normalises what a conv or dense layer outputs: put it right after one"
                        .into(),
                ));
            }
            let (output, slots) = match &node.layer {
                Layer::Residual { branch, shortcut } => {
                    let (branch, out) = self.build(branch, shape)?;
                    let (shortcut, short_out) = self.build(shortcut, shape)?;
                    if out != short_out {
                        let what = if shortcut.is_empty() {
                            format!(
                                "the branch turns {shape} into {out}, but the identity \
                                 shortcut keeps {shape}; give the block a projection: \
                                 `res(BRANCH ; conv C 1 stride=S bias=false | bn)`"
                            )
                        } else {
                            format!("the branch gives {out} but the shortcut {short_out}")
                        };
                        return Err(fail(what));
                    }
                    (out, Slots::Residual { branch, shortcut })
                }
                layer => {
                    let output = output_shape(layer, shape).map_err(fail)?;
                    (output, self.slots(&node.name, layer, shape))
                }
            };
            built.push(Built {
                name: node.name.clone(),
                layer: node.layer.clone(),
                output,
                slots,
            });
            previous = Some(&node.layer);
            shape = output;
        }
        Ok((built, shape))
    }

    /// Places the tensors of `layer` (not a block) on an input of `shape`.
    fn slots(&mut self, node: &str, layer: &Layer, shape: Shape) -> Slots {
        match (layer, shape) {
            (
                &Layer::Conv2d {
                    out, kernel, bias, ..
                },
                Shape::Map { c, .. },
            ) => {
                let fan_in = Init::Uniform {
                    fan_in: c * kernel * kernel,
                };
                let weight =
                    self.layout
                        .push(self.name(node, "weight"), &[out, c, kernel, kernel], fan_in);
                let bias = bias.then(|| self.layout.push(self.name(node, "bias"), &[out], fan_in));
                Slots::Weighted { weight, bias }
            }
            (&Layer::Linear { out }, Shape::Flat(n)) => {
                let fan_in = Init::Uniform { fan_in: n };
                let weight = self
                    .layout
                    .push(self.name(node, "weight"), &[out, n], fan_in);
                let bias = Some(self.layout.push(self.name(node, "bias"), &[out], fan_in));
                Slots::Weighted { weight, bias }
            }
            (Layer::BatchNorm, shape) => {
                let c = match shape {
                    Shape::Map { c, .. } => c,
                    Shape::Flat(n) => n,
                };
                Slots::BatchNorm {
                    weight: self
                        .layout
                        .push(self.name(node, "weight"), &[c], Init::Ones),
                    bias: self.layout.push(self.name(node, "bias"), &[c], Init::Zeros),
                    running_mean: self.state.push(
                        self.name(node, "running_mean"),
                        &[c],
                        Init::Zeros,
                    ),
                    running_var: self
                        .state
                        .push(self.name(node, "running_var"), &[c], Init::Ones),
                }
            }
            (Layer::Dropout { .. }, _) => {
                self.dropouts += 1;
                Slots::Dropout {
                    stream: self.dropouts - 1,
                }
            }
            _ => Slots::None,
        }
    }
}

impl Tower {
    /// Infers every layer's shape from `input` (`[C, H, W]`) and appends the parameters to
    /// `layout`, named `<prefix>.<layer name>.weight|bias`.
    pub fn new(
        spec: &TowerSpec,
        input: [usize; 3],
        prefix: &str,
        layout: &mut ParamLayout,
    ) -> Result<Tower> {
        let [c, h, w] = input;
        let mut builder = Builder {
            prefix,
            layout,
            state: ParamLayout::default(),
            dropouts: 0,
        };
        let (layers, shape) = builder.build(&spec.layers, Shape::Map { c, h, w })?;
        if let Shape::Map { .. } = shape {
            return Err(Error::Config(format!(
                "tower spec `{spec}` ends in a {shape} feature map; end it with `flatten` (and usually `dense N`) to get an embedding"
            )));
        }
        Ok(Tower {
            spec: spec.clone(),
            input,
            state: builder.state,
            layers,
        })
    }

    /// Length of the embedding the tower outputs.
    pub fn embedding_dim(&self) -> usize {
        match self.layers.last().map(|l| l.output) {
            Some(Shape::Flat(n)) => n,
            _ => unreachable!("Tower::new refuses towers that do not end flat"),
        }
    }

    /// Whether the tower has BatchNorm layers (and so running statistics: a mean and a
    /// variance each, in [`Tower::state`]).
    pub fn has_batch_norm(&self) -> bool {
        !self.state.params.is_empty()
    }

    /// The layer called `name` (a parameter's prefix without `<prefix>.`), if any.
    pub fn layer(&self, name: &str) -> Option<&Layer> {
        fn find<'a>(layers: &'a [Built], name: &str) -> Option<&'a Layer> {
            layers.iter().find_map(|b| match &b.slots {
                _ if b.name == name => Some(&b.layer),
                Slots::Residual { branch, shortcut } => {
                    find(branch, name).or_else(|| find(shortcut, name))
                }
                _ => None,
            })
        }
        find(&self.layers, name)
    }

    /// The largest per-image tensor the tower holds (its input or a layer's output), in
    /// elements, with its shape: what bounds the batch under a device's binding limit.
    pub fn largest_activation(&self) -> (usize, String) {
        fn fold(layers: &[Built], best: (usize, String)) -> (usize, String) {
            layers.iter().fold(best, |best, b| {
                let best = match &b.slots {
                    Slots::Residual { branch, shortcut } => fold(shortcut, fold(branch, best)),
                    _ => best,
                };
                if b.output.len() > best.0 {
                    (b.output.len(), b.output.to_string())
                } else {
                    best
                }
            })
        }
        let [c, h, w] = self.input;
        fold(&self.layers, (c * h * w, format!("[{c}, {h}, {w}]")))
    }

    /// How many images the tower can take at once with f32 activations, each tensor in one
    /// storage binding of `binding_bytes` (at least 1: a single image over the limit fails
    /// where its buffer is made, naming the tensor).
    pub fn images_that_fit(&self, binding_bytes: u64) -> usize {
        let per_image = 4 * self.largest_activation().0 as u64;
        (binding_bytes / per_image).max(1) as usize
    }

    /// A readable summary: one line per layer with its name and output shape.
    pub fn summary(&self) -> String {
        fn lines(layers: &[Built], depth: usize, out: &mut Vec<String>) {
            for b in layers {
                let indent = "  ".repeat(depth);
                match &b.slots {
                    Slots::Residual { branch, shortcut } => {
                        out.push(format!("{indent}{:>2}: residual block", b.name));
                        lines(branch, depth + 1, out);
                        if shortcut.is_empty() {
                            out.push(format!("{indent}    + identity shortcut"));
                        } else {
                            out.push(format!("{indent}    + shortcut:"));
                            lines(shortcut, depth + 1, out);
                        }
                        out.push(format!("{indent}    -> {}", b.output));
                    }
                    _ => out.push(format!(
                        "{indent}{:>2}: {:<24} -> {}",
                        b.name,
                        b.layer.to_string(),
                        b.output
                    )),
                }
            }
        }
        let [c, h, w] = self.input;
        let mut out = vec![format!("input [{c}, {h}, {w}]")];
        lines(&self.layers, 0, &mut out);
        out.join("\n")
    }

    /// Records the tower on `x [N, C, H, W]` in `weights.mode`. Under mixed precision `x`
    /// and `weights.params` (the f16 copy of the weights) are f16, the gradients f32, and
    /// every layer runs its f16 kernels; the embedding comes out f32.
    pub fn record(&self, tape: &mut Tape, x: ValueId, weights: &TowerWeights) -> Result<ValueId> {
        if self.has_batch_norm() && weights.state.is_none() {
            return Err(Error::Config(
                "the tower has BatchNorm layers: recording it needs their running statistics"
                    .into(),
            ));
        }
        let v = Recorder {
            tower: self,
            weights,
        }
        .layers(tape, x, &self.layers)?;
        tape.to_f32(v)
    }
}

/// One recording of a tower.
struct Recorder<'a> {
    tower: &'a Tower,
    weights: &'a TowerWeights<'a>,
}

impl Recorder<'_> {
    /// Parameter `index`, with its gradient unless it is frozen.
    fn param(&self, tape: &mut Tape, index: usize) -> Result<ValueId> {
        let w = self.weights;
        let grad = w.grads.filter(|_| !w.layout.params[index].frozen);
        tape.param(
            w.layout.view(w.params, index),
            grad.map(|g| w.layout.view(g, index)),
        )
    }

    fn layers(&self, tape: &mut Tape, x: ValueId, layers: &[Built]) -> Result<ValueId> {
        let mut v = x;
        let mut i = 0;
        while i < layers.len() {
            let (b, next) = (&layers[i], layers.get(i + 1).map(|n| &n.layer));
            i += 1;
            // ReLU then max-pooling is recorded as one pass of pooling then ReLU: max
            // commutes with the monotone ReLU (values and gradients are the same, bit for
            // bit), and the ReLU costs neither a pass nor a store of its own.
            if let (
                Layer::Activation(Activation::Relu),
                Some(&Layer::MaxPool2d {
                    kernel,
                    stride,
                    pad,
                }),
            ) = (&b.layer, next)
            {
                v = tape.max_pool2d_relu(v, kernel, stride, pad)?;
                i += 1;
                continue;
            }
            // A residual block then ReLU (every basic block's end) adds and rectifies in one
            // pass, whose backward routes the gradient to both sides.
            if let (
                Slots::Residual { branch, shortcut },
                Some(Layer::Activation(Activation::Relu)),
            ) = (&b.slots, next)
            {
                let (out, short) = self.block(tape, v, branch, shortcut)?;
                v = tape.add_relu(out, short)?;
                i += 1;
                continue;
            }
            v = self.layer(tape, v, b)?;
        }
        Ok(v)
    }

    /// A residual block's two sides on `v`: the branch's output and the shortcut's (`v`
    /// itself for an identity shortcut).
    fn block(
        &self,
        tape: &mut Tape,
        v: ValueId,
        branch: &[Built],
        shortcut: &[Built],
    ) -> Result<(ValueId, ValueId)> {
        let out = self.layers(tape, v, branch)?;
        let short = self.layers(tape, v, shortcut)?;
        Ok((out, short))
    }

    fn layer(&self, tape: &mut Tape, v: ValueId, b: &Built) -> Result<ValueId> {
        let mode = self.weights.mode;
        Ok(match (&b.layer, &b.slots) {
            (&Layer::Conv2d { stride, pad, .. }, &Slots::Weighted { weight, bias }) => {
                let w = self.param(tape, weight)?;
                let bias = match bias {
                    Some(index) => self.param(tape, index)?,
                    // No bias: a constant zero one, of the weights' type.
                    None => {
                        let out = tape.shape(w)[0];
                        let dtype = tape.tensor(w).dtype();
                        let zeros = tape.gpu().zeros(&[out], dtype)?;
                        tape.input(zeros)
                    }
                };
                tape.conv2d(v, w, bias, stride, pad)?
            }
            (Layer::Linear { .. }, &Slots::Weighted { weight, bias }) => {
                let w = self.param(tape, weight)?;
                let bias = self.param(tape, bias.expect("dense layers have a bias"))?;
                tape.dense(v, w, bias)?
            }
            (
                Layer::BatchNorm,
                &Slots::BatchNorm {
                    weight,
                    bias,
                    running_mean,
                    running_var,
                },
            ) => {
                let (gamma, beta) = (self.param(tape, weight)?, self.param(tape, bias)?);
                // A frozen BatchNorm keeps its statistics, as fine-tuning usually does.
                let mode = match self.weights.layout.params[weight].frozen {
                    true => Mode::Eval,
                    false => mode,
                };
                let state = self.weights.state.expect("Tower::record checked");
                let layout = &self.tower.state;
                let running = RunningStats {
                    mean: &layout.view(state, running_mean),
                    var: &layout.view(state, running_var),
                };
                tape.batch_norm(
                    v,
                    gamma,
                    beta,
                    running,
                    mode,
                    batchnorm::MOMENTUM,
                    batchnorm::EPS,
                )?
            }
            (
                &Layer::MaxPool2d {
                    kernel,
                    stride,
                    pad,
                },
                _,
            ) => tape.max_pool2d(v, kernel, stride, pad)?,
            (&Layer::AvgPool2d { kernel, stride }, _) => tape.avg_pool2d(v, kernel, stride)?,
            (Layer::GlobalAvgPool, _) => tape.global_avg_pool(v)?,
            (&Layer::Dropout { p }, &Slots::Dropout { stream }) => match mode {
                Mode::Eval => v,
                Mode::Train => {
                    let rng = self.weights.rng.ok_or_else(|| {
                        Error::Config(format!(
                            "layer {} `{}`: dropout in training needs the step's random seed",
                            b.name, b.layer
                        ))
                    })?;
                    tape.dropout(v, p, rng, stream)?
                }
            },
            (&Layer::Activation(act), _) => tape.activation(v, act)?,
            (Layer::Flatten, _) => {
                let shape = tape.shape(v);
                let (n, len) = (shape[0], shape[1..].iter().product());
                tape.reshape(v, &[n, len])?
            }
            (Layer::L2Normalize, _) => {
                // Normalisation divides by a norm: f32 under mixed precision too.
                let v = tape.to_f32(v)?;
                tape.l2_normalize(v)?
            }
            (Layer::Residual { .. }, Slots::Residual { branch, shortcut }) => {
                let (out, short) = self.block(tape, v, branch, shortcut)?;
                tape.add(out, short)?
            }
            (layer, _) => unreachable!("layer `{layer}` was built with its slots"),
        })
    }
}

/// The shape `layer` (not a block) makes of an input of `shape`, or why it cannot take it.
fn output_shape(layer: &Layer, shape: Shape) -> std::result::Result<Shape, String> {
    match (layer, shape) {
        (
            &Layer::Conv2d {
                out,
                kernel,
                stride,
                pad,
                ..
            },
            Shape::Map { h, w, .. },
        ) => {
            if h + 2 * pad < kernel || w + 2 * pad < kernel {
                return Err(format!(
                    "a {kernel}×{kernel} kernel does not fit a {h}×{w} map with padding {pad}"
                ));
            }
            Ok(Shape::Map {
                c: out,
                h: (h + 2 * pad - kernel) / stride + 1,
                w: (w + 2 * pad - kernel) / stride + 1,
            })
        }
        (
            &Layer::MaxPool2d {
                kernel,
                stride,
                pad,
            },
            Shape::Map { c, h, w },
        ) => {
            if kernel > h + 2 * pad || kernel > w + 2 * pad {
                return Err(format!(
                    "a {kernel}×{kernel} window does not fit a {h}×{w} map with padding {pad}"
                ));
            }
            Ok(Shape::Map {
                c,
                h: (h + 2 * pad - kernel) / stride + 1,
                w: (w + 2 * pad - kernel) / stride + 1,
            })
        }
        (&Layer::AvgPool2d { kernel, stride }, Shape::Map { c, h, w }) => {
            if kernel > h || kernel > w {
                return Err(format!(
                    "a {kernel}×{kernel} window does not fit a {h}×{w} map"
                ));
            }
            Ok(Shape::Map {
                c,
                h: (h - kernel) / stride + 1,
                w: (w - kernel) / stride + 1,
            })
        }
        (Layer::GlobalAvgPool, Shape::Map { c, .. }) => Ok(Shape::Flat(c)),
        (
            Layer::Conv2d { .. }
            | Layer::MaxPool2d { .. }
            | Layer::AvgPool2d { .. }
            | Layer::GlobalAvgPool,
            Shape::Flat(_),
        ) => Err("needs a [C, H, W] feature map, but the input is already flat".into()),
        (&Layer::Linear { out }, Shape::Flat(_)) => Ok(Shape::Flat(out)),
        (Layer::Linear { .. }, Shape::Map { .. }) => {
            Err("dense needs a flat input: add `flatten` (or `gap`) before it".into())
        }
        (Layer::Activation(_) | Layer::BatchNorm | Layer::Dropout { .. }, s) => Ok(s),
        (Layer::Flatten, Shape::Map { c, h, w }) => Ok(Shape::Flat(c * h * w)),
        (Layer::Flatten, s) => Ok(s),
        (Layer::L2Normalize, Shape::Flat(n)) => Ok(Shape::Flat(n)),
        (Layer::L2Normalize, Shape::Map { .. }) => {
            Err("l2norm normalises a flat embedding: add `flatten` before it".into())
        }
        (Layer::Residual { .. }, _) => unreachable!("blocks are built by Builder::build"),
    }
}
