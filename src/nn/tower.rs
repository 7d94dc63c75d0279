//! A tower: a [`TowerSpec`] with its shapes inferred from the input size and its parameters
//! placed in a [`ParamLayout`]. Shapes come from the spec and the input, never by hand, so
//! a flatten size such as 64·4·4 where a 28×28 input gives 64·5·5 cannot happen.

use super::params::ParamLayout;
use super::spec::{Layer, TowerSpec};
use crate::autograd::{Tape, ValueId};
use crate::error::{Error, Result};
use crate::gpu::Tensor;
use crate::ops::activation::Activation;

/// Per-sample shape between layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Map { c: usize, h: usize, w: usize },
    Flat(usize),
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shape::Map { c, h, w } => write!(f, "[{c}, {h}, {w}]"),
            Shape::Flat(n) => write!(f, "[{n}]"),
        }
    }
}

/// A tower ready to record: layers, their output shapes, and their parameters' indices.
#[derive(Debug, Clone)]
pub struct Tower {
    pub spec: TowerSpec,
    /// Input image shape `[C, H, W]`.
    pub input: [usize; 3],
    shapes: Vec<Shape>,
    /// For each layer with parameters, the indices of its weight and bias in the layout.
    params: Vec<Option<(usize, usize)>>,
}

impl Tower {
    /// Infers every layer's shape from `input` (`[C, H, W]`) and appends the parameters to
    /// `layout`, named `<prefix>.<layer index>.weight|bias` as `nn.Sequential` names them.
    pub fn new(
        spec: &TowerSpec,
        input: [usize; 3],
        prefix: &str,
        layout: &mut ParamLayout,
    ) -> Result<Tower> {
        let [c, h, w] = input;
        let mut shape = Shape::Map { c, h, w };
        let mut shapes = Vec::with_capacity(spec.layers.len());
        let mut params = Vec::with_capacity(spec.layers.len());
        for (i, layer) in spec.layers.iter().enumerate() {
            let next = output_shape(*layer, shape).map_err(|why| {
                Error::Config(format!(
                    "tower spec, layer {i} `{layer}` on input {shape}: {why}"
                ))
            })?;
            params.push(weight_shape(*layer, shape).map(|(weight, fan_in, out)| {
                let wi = layout.push(format!("{prefix}.{i}.weight"), &weight, fan_in);
                let bi = layout.push(format!("{prefix}.{i}.bias"), &[out], fan_in);
                (wi, bi)
            }));
            shape = next;
            shapes.push(shape);
        }
        if let Shape::Map { .. } = shape {
            return Err(Error::Config(format!(
                "tower spec `{spec}` ends in a {shape} feature map; end it with `flatten` (and usually `dense N`) to get an embedding"
            )));
        }
        Ok(Tower {
            spec: spec.clone(),
            input,
            shapes,
            params,
        })
    }

    /// Length of the embedding the tower outputs.
    pub fn embedding_dim(&self) -> usize {
        match self.shapes.last() {
            Some(Shape::Flat(n)) => *n,
            _ => unreachable!("Tower::new refuses towers that do not end flat"),
        }
    }

    /// The largest per-image tensor the tower holds (its input or a layer's output), in
    /// elements, with its shape: what bounds the batch under a device's binding limit.
    pub fn largest_activation(&self) -> (usize, String) {
        let [c, h, w] = self.input;
        let input = (c * h * w, format!("[{c}, {h}, {w}]"));
        self.shapes
            .iter()
            .map(|s| match *s {
                Shape::Map { c, h, w } => (c * h * w, s.to_string()),
                Shape::Flat(n) => (n, s.to_string()),
            })
            .fold(
                input,
                |best, next| if next.0 > best.0 { next } else { best },
            )
    }

    /// A readable summary: one line per layer with its output shape.
    pub fn summary(&self) -> String {
        let [c, h, w] = self.input;
        let mut lines = vec![format!("input [{c}, {h}, {w}]")];
        for (i, (layer, shape)) in self.spec.layers.iter().zip(&self.shapes).enumerate() {
            lines.push(format!("{i:>2}: {layer:<24} -> {shape}"));
        }
        lines.join("\n")
    }

    /// Records the tower on `x [N, C, H, W]`. Parameters are views of `params`; their
    /// gradients views of `grads` (None: the tower is constant, e.g. for evaluation). Under
    /// mixed precision `x` and `params` (the f16 copy of the weights) are f16, the gradients
    /// f32, and every layer runs its f16 kernels; the embedding comes out f32.
    pub fn record(
        &self,
        tape: &mut Tape,
        x: ValueId,
        layout: &ParamLayout,
        params: &Tensor,
        grads: Option<&Tensor>,
    ) -> Result<ValueId> {
        let n = tape.shape(x)[0];
        let mut v = x;
        let layers = &self.spec.layers;
        let mut skip_next = false;
        for (i, (layer, p)) in layers.iter().zip(&self.params).enumerate() {
            if std::mem::take(&mut skip_next) {
                continue;
            }
            // ReLU then max-pooling is recorded as one pass of pooling then ReLU: max
            // commutes with the monotone ReLU (values and gradients are the same, bit for
            // bit), and the ReLU costs neither a pass nor a store of its own.
            if let (
                Layer::Activation(Activation::Relu),
                Some(Layer::MaxPool2d { kernel, stride }),
            ) = (*layer, layers.get(i + 1).copied())
            {
                v = tape.max_pool2d_relu(v, kernel, stride)?;
                skip_next = true;
                continue;
            }
            let bind = |tape: &mut Tape, index: usize| {
                tape.param(
                    layout.view(params, index),
                    grads.map(|g| layout.view(g, index)),
                )
            };
            let weights = match p {
                Some((wi, bi)) => Some((bind(tape, *wi)?, bind(tape, *bi)?)),
                None => None,
            };
            v = match (*layer, weights) {
                (Layer::Conv2d { stride, pad, .. }, Some((w, b))) => {
                    tape.conv2d(v, w, b, stride, pad)?
                }
                (Layer::MaxPool2d { kernel, stride }, _) => tape.max_pool2d(v, kernel, stride)?,
                (Layer::AvgPool2d { kernel, stride }, _) => tape.avg_pool2d(v, kernel, stride)?,
                (Layer::Linear { .. }, Some((w, b))) => tape.dense(v, w, b)?,
                (Layer::Activation(act), _) => tape.activation(v, act)?,
                (Layer::Flatten, _) => {
                    let len: usize = tape.shape(v)[1..].iter().product();
                    tape.reshape(v, &[n, len])?
                }
                (Layer::L2Normalize, _) => {
                    // Normalisation divides by a norm: f32 under mixed precision too.
                    let v = tape.to_f32(v)?;
                    tape.l2_normalize(v)?
                }
                (Layer::Conv2d { .. } | Layer::Linear { .. }, None) => {
                    unreachable!("layers with weights have them")
                }
            };
        }
        tape.to_f32(v)
    }
}

/// The shape `layer` makes of an input of `shape`, or why it cannot take it.
fn output_shape(layer: Layer, shape: Shape) -> std::result::Result<Shape, String> {
    match (layer, shape) {
        (
            Layer::Conv2d {
                out,
                kernel,
                stride,
                pad,
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
            Layer::MaxPool2d { kernel, stride } | Layer::AvgPool2d { kernel, stride },
            Shape::Map { c, h, w },
        ) => {
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
        (
            Layer::Conv2d { .. } | Layer::MaxPool2d { .. } | Layer::AvgPool2d { .. },
            Shape::Flat(_),
        ) => Err("needs a [C, H, W] feature map, but the input is already flat".into()),
        (Layer::Linear { out }, Shape::Flat(_)) => Ok(Shape::Flat(out)),
        (Layer::Linear { .. }, Shape::Map { .. }) => {
            Err("dense needs a flat input: add `flatten` before it".into())
        }
        (Layer::Activation(_), s) => Ok(s),
        (Layer::Flatten, Shape::Map { c, h, w }) => Ok(Shape::Flat(c * h * w)),
        (Layer::Flatten, s) => Ok(s),
        (Layer::L2Normalize, Shape::Flat(n)) => Ok(Shape::Flat(n)),
        (Layer::L2Normalize, Shape::Map { .. }) => {
            Err("l2norm normalises a flat embedding: add `flatten` before it".into())
        }
    }
}

/// The weight of `layer` on an input of `shape` (a shape [`output_shape`] accepted): its
/// shape, fan-in and output width (the bias's length); None for a layer without one.
fn weight_shape(layer: Layer, shape: Shape) -> Option<(Vec<usize>, usize, usize)> {
    match (layer, shape) {
        (Layer::Conv2d { out, kernel, .. }, Shape::Map { c, .. }) => {
            Some((vec![out, c, kernel, kernel], c * kernel * kernel, out))
        }
        (Layer::Linear { out }, Shape::Flat(n)) => Some((vec![out, n], n, out)),
        _ => None,
    }
}
