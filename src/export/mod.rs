//! A trained tower as a standard ONNX model (opset 17, IR version 8), written with `prost`
//! from the schema's messages (`proto`): input `images`, float32 `[N, C, H, W]` with pixels
//! in [0, 1] as torchvision's `ToTensor` gives them and any batch size; the run's pixel
//! normalisation, `(x − shift) · scale`, as the graph's first two nodes; output `embeddings`
//! `[N, D]`, exactly what `siamese embed` computes (evaluation mode: BatchNorm from its
//! running statistics, dropout off, the final L2 normalisation when the run has one). A BCE
//! run's head, `σ(w · |a − b| + b)`, is a second model (inputs `embedding_a`, `embedding_b`,
//! output `probability`). The run's settings, fingerprint and operating points are in the
//! model's metadata.
//!
//! Layers map one to one: conv → Conv, BatchNorm → BatchNormalization (ε 1e-5), max-pool →
//! MaxPool (padding at −∞, as PyTorch), avg-pool → AveragePool, gap → GlobalAveragePool +
//! Flatten, dense → Gemm (transB), relu/sigmoid/tanh → Relu/Sigmoid/Tanh, flatten → Flatten,
//! a residual block → its two sides and Add, L2 normalisation → ReduceL2, Max(ε), Div
//! (PyTorch's `F.normalize`: the norm clamped at 1e-12; ONNX's LpNormalization has no ε).

pub mod proto;

use std::collections::HashMap;
use std::path::Path;

use prost::Message;

use crate::cpu;
use crate::error::{Error, Result};
use crate::files::write_atomic;
use crate::model::TOWER_PREFIX;
use crate::nn::spec::{Layer, Node};
use crate::ops::activation::Activation;
use crate::ops::batchnorm;
use crate::runs::saved::SavedRun;
use crate::vocab::LossKind;
use proto::{
    ATTRIBUTE_FLOAT, ATTRIBUTE_INT, ATTRIBUTE_INTS, AttributeProto, Dimension, DimensionValue,
    FLOAT, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TensorTypeProto, TypeProto, ValueInfoProto,
};

pub const OPSET: i64 = 17;
pub const IR_VERSION: i64 = 8;

/// The name of the symbolic batch dimension.
const BATCH: &str = "N";

/// A graph being built: its nodes and initializers, and the values to name them from.
struct Builder<'a> {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    /// Every tensor of the model by name: its shape and values, in the run's buffers.
    tensors: HashMap<&'a str, (&'a [usize], &'a [f32])>,
    next: usize,
}

fn ints(name: &str, values: &[usize]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: ATTRIBUTE_INTS,
        ints: values.iter().map(|&v| v as i64).collect(),
        ..Default::default()
    }
}

fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: ATTRIBUTE_INT,
        i: value,
        ..Default::default()
    }
}

fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: ATTRIBUTE_FLOAT,
        f: value,
        ..Default::default()
    }
}

fn tensor(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: FLOAT,
        name: name.into(),
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// A float32 tensor of shape `[N, rest…]` named `name`.
fn value_info(name: &str, rest: &[usize]) -> ValueInfoProto {
    let batch = Dimension {
        value: Some(DimensionValue::DimParam(BATCH.into())),
    };
    let dims = rest.iter().map(|&d| Dimension {
        value: Some(DimensionValue::DimValue(d as i64)),
    });
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: FLOAT,
                shape: Some(TensorShapeProto {
                    dim: std::iter::once(batch).chain(dims).collect(),
                }),
            }),
        }),
    }
}

impl<'a> Builder<'a> {
    fn new(run: &'a SavedRun) -> Builder<'a> {
        let mut tensors = HashMap::new();
        let model = &run.model;
        for (layout, flat) in [
            (&model.layout, &run.values.params),
            (&model.tower.state, &run.values.running),
        ] {
            for p in &layout.params {
                let values = &flat[p.offset..p.offset + p.len()];
                tensors.insert(p.name.as_str(), (p.shape.as_slice(), values));
            }
        }
        Builder {
            nodes: Vec::new(),
            initializers: Vec::new(),
            tensors,
            next: 0,
        }
    }

    /// Adds a node of `op` on `inputs`; returns its output's name.
    fn node(&mut self, op: &str, inputs: &[&str], attribute: Vec<AttributeProto>) -> String {
        self.next += 1;
        let output = format!("{}_{}", op.to_lowercase(), self.next);
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.clone()],
            name: output.clone(),
            op_type: op.into(),
            attribute,
        });
        output
    }

    /// Gives `x` the graph output's `name` (an Identity node, which runtimes fold away).
    fn name_output(&mut self, x: &str, name: &str) {
        self.nodes.push(NodeProto {
            input: vec![x.into()],
            output: vec![name.into()],
            name: name.into(),
            op_type: "Identity".into(),
            attribute: Vec::new(),
        });
    }

    /// A constant of the graph; returns its name.
    fn constant(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        self.initializers.push(tensor(name, dims, values));
        name.to_string()
    }

    /// The model's tensor `name` as an initializer of that name (PyTorch's), if it has one.
    fn param(&mut self, name: &str) -> Option<String> {
        let (shape, values) = *self.tensors.get(name)?;
        Some(self.constant(name, shape, values))
    }

    fn required(&mut self, name: &str) -> Result<String> {
        self.param(name)
            .ok_or_else(|| Error::Config(format!("export: the model has no tensor `{name}`")))
    }

    /// `F.normalize(x, dim=1)`: x / max(‖x‖₂, 1e-12).
    fn l2_normalize(&mut self, x: &str) -> String {
        let norm = self.node(
            "ReduceL2",
            &[x],
            vec![ints("axes", &[1]), int("keepdims", 1)],
        );
        self.next += 1;
        let eps = self.constant(
            &format!("l2_eps_{}", self.next),
            &[],
            &[cpu::normalize::EPS as f32],
        );
        let clamped = self.node("Max", &[&norm, &eps], vec![]);
        self.node("Div", &[x, &clamped], vec![])
    }

    /// The nodes of `layers` applied to `x`; returns the output's name.
    fn layers(&mut self, layers: &[Node], mut x: String) -> Result<String> {
        for node in layers {
            let name = &format!("{TOWER_PREFIX}.{}", node.name);
            x = match &node.layer {
                &Layer::Conv2d {
                    kernel,
                    stride,
                    pad,
                    bias,
                    ..
                } => {
                    let w = self.required(&format!("{name}.weight"))?;
                    let mut inputs = vec![x.clone(), w];
                    if bias {
                        inputs.push(self.required(&format!("{name}.bias"))?);
                    }
                    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                    self.node(
                        "Conv",
                        &inputs,
                        vec![
                            ints("kernel_shape", &[kernel, kernel]),
                            ints("strides", &[stride, stride]),
                            ints("pads", &[pad, pad, pad, pad]),
                        ],
                    )
                }
                Layer::BatchNorm => {
                    let [scale, shift, mean, var] =
                        ["weight", "bias", "running_mean", "running_var"]
                            .map(|p| self.required(&format!("{name}.{p}")));
                    self.node(
                        "BatchNormalization",
                        &[&x, &scale?, &shift?, &mean?, &var?],
                        vec![float("epsilon", batchnorm::EPS)],
                    )
                }
                &Layer::MaxPool2d {
                    kernel,
                    stride,
                    pad,
                } => self.node(
                    "MaxPool",
                    &[&x],
                    vec![
                        ints("kernel_shape", &[kernel, kernel]),
                        ints("strides", &[stride, stride]),
                        ints("pads", &[pad, pad, pad, pad]),
                    ],
                ),
                &Layer::AvgPool2d { kernel, stride } => self.node(
                    "AveragePool",
                    &[&x],
                    vec![
                        ints("kernel_shape", &[kernel, kernel]),
                        ints("strides", &[stride, stride]),
                    ],
                ),
                Layer::GlobalAvgPool => {
                    let pooled = self.node("GlobalAveragePool", &[&x], vec![]);
                    self.node("Flatten", &[&pooled], vec![int("axis", 1)])
                }
                // Evaluation mode: dropout passes its input through.
                Layer::Dropout { .. } => x,
                Layer::Linear { .. } => {
                    let w = self.required(&format!("{name}.weight"))?;
                    let mut inputs = vec![x.clone(), w];
                    inputs.extend(self.param(&format!("{name}.bias")));
                    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                    self.node("Gemm", &inputs, vec![int("transB", 1)])
                }
                Layer::Activation(a) => {
                    let op = match a {
                        Activation::Relu => "Relu",
                        Activation::Sigmoid => "Sigmoid",
                        Activation::Tanh => "Tanh",
                    };
                    self.node(op, &[&x], vec![])
                }
                Layer::Flatten => self.node("Flatten", &[&x], vec![int("axis", 1)]),
                Layer::L2Normalize => self.l2_normalize(&x),
                Layer::Residual { branch, shortcut } => {
                    let out = self.layers(branch, x.clone())?;
                    let short = self.layers(shortcut, x.clone())?;
                    self.node("Add", &[&out, &short], vec![])
                }
            };
        }
        Ok(x)
    }

    fn model(
        self,
        name: &str,
        inputs: Vec<ValueInfoProto>,
        output: ValueInfoProto,
        meta: &[(String, String)],
    ) -> ModelProto {
        ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "siamese-gpu".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: String::new(),
            graph: Some(GraphProto {
                node: self.nodes,
                name: name.into(),
                initializer: self.initializers,
                input: inputs,
                output: vec![output],
            }),
            metadata_props: meta
                .iter()
                .map(|(key, value)| StringStringEntryProto {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
        }
    }
}

/// The tower of `run` as an ONNX model: `images` `[N, C, H, W]` in [0, 1] → `embeddings`
/// `[N, D]`; `meta` goes into its metadata.
pub fn tower_model(run: &SavedRun, meta: &[(String, String)]) -> Result<ModelProto> {
    let mut b = Builder::new(run);
    let [c, h, w] = run.model.config.input;
    let shift = b.constant("pixel_shift", &[], &[run.norm.shift]);
    let scale = b.constant("pixel_scale", &[], &[run.norm.scale]);
    let centred = b.node("Sub", &["images", &shift], vec![]);
    let x = b.node("Mul", &[&centred, &scale], vec![]);
    let mut e = b.layers(&run.model.config.tower.layers, x)?;
    if run.model.config.normalize {
        e = b.l2_normalize(&e);
    }
    b.name_output(&e, "embeddings");
    let dim = run.model.embedding_dim();
    Ok(b.model(
        "tower",
        vec![value_info("images", &[c, h, w])],
        value_info("embeddings", &[dim]),
        meta,
    ))
}

/// A BCE run's head as an ONNX model: `embedding_a`, `embedding_b` `[N, D]` →
/// `probability` `[N, 1]` = σ(w · |a − b| + b); None for other losses.
pub fn head_model(run: &SavedRun, meta: &[(String, String)]) -> Option<ModelProto> {
    if run.model.config.loss != LossKind::Bce {
        return None;
    }
    let (w, bias) = run.model.head_weights(&run.values.params)?;
    let dim = run.model.embedding_dim();
    let mut b = Builder::new(run);
    let w = b.constant("head.weight", &[1, dim], w);
    let bias = b.constant("head.bias", &[1], &[bias]);
    let diff = b.node("Sub", &["embedding_a", "embedding_b"], vec![]);
    let abs = b.node("Abs", &[&diff], vec![]);
    let logit = b.node("Gemm", &[&abs, &w, &bias], vec![int("transB", 1)]);
    let probability = b.node("Sigmoid", &[&logit], vec![]);
    b.name_output(&probability, "probability");
    Some(b.model(
        "head",
        vec![
            value_info("embedding_a", &[dim]),
            value_info("embedding_b", &[dim]),
        ],
        value_info("probability", &[1]),
        meta,
    ))
}

/// Writes `model` to `path` (through a temporary file and a rename).
pub fn write_model(model: &ModelProto, path: &Path) -> Result<()> {
    write_atomic(path, &model.encode_to_vec()).map_err(|e| Error::writing(path.display(), e))
}
