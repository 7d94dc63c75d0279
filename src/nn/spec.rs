//! The tower spec: a compact, readable declaration of a layer stack, e.g. the reference
//! network `conv 32 5 | relu | maxpool 2 | conv 64 3 | relu | maxpool 2 | flatten | dense 128`,
//! or a preset by name (`resnet18`, `resnet34`, `resnet-small`: see [`super::presets`]).
//!
//! Grammar, one layer between `|`s (case-insensitive):
//!   `conv OUT K [stride=S] [pad=P] [bias=false]`   2-D convolution, K×K kernel (stride 1,
//!                                     pad 0 and a bias by default; a convolution before a
//!                                     `bn` needs no bias, as torchvision's have none)
//!   `maxpool K [S] [pad=P]`           max pooling, K×K window, stride S (default K), padded
//!                                     with −∞ (torchvision's stem: `maxpool 3 2 pad=1`)
//!   `avgpool K [S]`                   average pooling, no padding
//!   `gap`                             global average pooling, [C, H, W] → [C]
//!   `bn`                              BatchNorm over the channels of a map (BatchNorm2d) or
//!                                     the features of a vector (BatchNorm1d), right after a
//!                                     `conv` or `dense`
//!   `dropout P`                       zeroes each value with probability P in training
//!   `dense N` (or `linear N`)         fully connected, N outputs
//!   `relu`, `sigmoid`, `tanh`         activations
//!   `flatten`                         [C, H, W] → [C·H·W]
//!   `l2norm`                          row-wise L2 normalisation of a flat embedding
//!   `res(BRANCH)`                     a residual block: BRANCH (layers between `|`s) plus
//!                                     the block's input; the branch must keep the shape
//!   `res(BRANCH ; SHORTCUT)`          the same with a projection on the shortcut, e.g.
//!                                     `res(conv 32 3 stride=2 pad=1 bias=false | bn | relu |
//!                                     conv 32 3 pad=1 bias=false | bn ; conv 32 1 stride=2
//!                                     bias=false | bn)`
//!
//! Every layer has a name, its parameters' prefix: the position in the spec as in PyTorch's
//! `nn.Sequential` (`3`, and inside a block `3.branch.0`, `3.shortcut.1`), or torchvision's
//! module names for the presets (`conv1`, `layer1.0.conv2`, `layer2.0.downsample.0`, `fc`).

use std::fmt;
use std::str::FromStr;

use super::presets::Preset;
use crate::error::{Error, Result};
use crate::ops::activation::Activation;

/// One layer of a tower.
#[derive(Debug, Clone, PartialEq)]
pub enum Layer {
    Conv2d {
        out: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
        bias: bool,
    },
    BatchNorm,
    MaxPool2d {
        kernel: usize,
        stride: usize,
        pad: usize,
    },
    AvgPool2d {
        kernel: usize,
        stride: usize,
    },
    GlobalAvgPool,
    Dropout {
        p: f32,
    },
    Linear {
        out: usize,
    },
    Activation(Activation),
    Flatten,
    L2Normalize,
    /// `branch(x) + shortcut(x)`; an empty shortcut is the identity.
    Residual {
        branch: Vec<Node>,
        shortcut: Vec<Node>,
    },
}

/// A layer and its name (the prefix of its parameters' names).
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub layer: Layer,
}

impl Node {
    pub fn new(name: impl Into<String>, layer: Layer) -> Node {
        Node {
            name: name.into(),
            layer,
        }
    }
}

/// A parsed tower spec: its layers, and the preset they came from if they did (a preset
/// prints back as its name, so run directories and checkpoints record `resnet18`).
#[derive(Debug, Clone, PartialEq)]
pub struct TowerSpec {
    pub layers: Vec<Node>,
    pub preset: Option<Preset>,
}

/// The reference network every figure of this project is measured with.
pub const REFERENCE_TOWER: &str =
    "conv 32 5 | relu | maxpool 2 | conv 64 3 | relu | maxpool 2 | flatten | dense 128";

const KNOWN: &str = "conv OUT K [stride=S] [pad=P] [bias=false], maxpool K [S] [pad=P], \
                     avgpool K [S], gap, bn, dropout P, dense N, relu, sigmoid, tanh, flatten, \
                     l2norm, res(BRANCH) or res(BRANCH ; SHORTCUT), or a preset: resnet18, \
                     resnet34, resnet-small";

impl TowerSpec {
    /// The spec with its embedding (the last `dense N`) `dim` wide.
    pub fn with_embedding_dim(&self, dim: usize) -> Result<TowerSpec> {
        if dim == 0 {
            return Err(Error::Config(
                "embedding_dim must be at least 1, got 0".into(),
            ));
        }
        if let Some(preset) = self.preset {
            return Ok(preset.with_embedding_dim(dim).spec());
        }
        let mut spec = self.clone();
        let last_dense = spec
            .layers
            .iter_mut()
            .rev()
            .find_map(|n| match &mut n.layer {
                Layer::Linear { out } => Some(out),
                _ => None,
            });
        match last_dense {
            Some(out) => *out = dim,
            None => {
                return Err(Error::Config(format!(
                    "embedding_dim = {dim}: the tower `{self}` has no dense layer to resize; \
                     end it with `flatten | dense N` or leave embedding_dim out"
                )));
            }
        }
        Ok(spec)
    }
}

impl FromStr for TowerSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<TowerSpec> {
        if let Some(preset) = Preset::parse(s)? {
            return Ok(preset.spec());
        }
        Ok(TowerSpec {
            layers: parse_layers(s, "")?,
            preset: None,
        })
    }
}

/// The layers of `text` (a `|`-separated list), named `<prefix><index>`.
fn parse_layers(text: &str, prefix: &str) -> Result<Vec<Node>> {
    split_top_level(text, '|')
        .into_iter()
        .enumerate()
        .map(|(i, part)| {
            let name = format!("{prefix}{i}");
            let layer = parse_layer(&name, part.trim())?;
            Ok(Node { name, layer })
        })
        .collect()
}

/// `text` split at each `sep` outside parentheses.
fn split_top_level(text: &str, sep: char) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            c if c == sep && depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_layer(name: &str, text: &str) -> Result<Layer> {
    let lower = text.to_lowercase();
    if lower.starts_with("res") && lower[3..].trim_start().starts_with('(') {
        return parse_residual(name, text);
    }
    let words: Vec<String> = lower.split_whitespace().map(str::to_string).collect();
    let (positional, options) = match words.split_first() {
        Some((_, args)) => args
            .iter()
            .map(String::as_str)
            .partition(|a| !a.contains('=')),
        None => (vec![], vec![]),
    };
    let layer = LayerText {
        name,
        text,
        positional,
        options,
    };
    let Some(kind) = words.first() else {
        return Err(layer.error(format!("empty layer; layers are: {KNOWN}")));
    };
    match kind.as_str() {
        "conv" | "conv2d" => layer.conv(),
        "maxpool" => layer.max_pool(),
        "avgpool" => {
            layer.no_options()?;
            let (kernel, stride) = layer.window("avgpool")?;
            Ok(Layer::AvgPool2d { kernel, stride })
        }
        "dense" | "linear" => {
            layer.no_options()?;
            layer.arity(1, "dense N")?;
            Ok(Layer::Linear {
                out: layer.number(layer.positional[0], "N")?,
            })
        }
        "dropout" => layer.dropout(),
        "relu" | "sigmoid" | "tanh" | "flatten" | "l2norm" | "l2normalize" | "gap" | "bn"
        | "batchnorm" => {
            layer.no_options()?;
            layer.arity(0, kind)?;
            Ok(match kind.as_str() {
                "relu" => Layer::Activation(Activation::Relu),
                "sigmoid" => Layer::Activation(Activation::Sigmoid),
                "tanh" => Layer::Activation(Activation::Tanh),
                "flatten" => Layer::Flatten,
                "gap" => Layer::GlobalAvgPool,
                "bn" | "batchnorm" => Layer::BatchNorm,
                _ => Layer::L2Normalize,
            })
        }
        other => Err(layer.error(format!("unknown layer `{other}`; layers are: {KNOWN}"))),
    }
}

/// `res(BRANCH)` or `res(BRANCH ; SHORTCUT)`.
fn parse_residual(name: &str, text: &str) -> Result<Layer> {
    let fail = |why: &str| {
        Error::Config(format!(
            "tower spec, layer {name} `{text}`: {why}; a residual block is `res(BRANCH)` or \
             `res(BRANCH ; SHORTCUT)`, layers between `|`s in each"
        ))
    };
    let open = text.find('(').expect("parse_layer saw the parenthesis");
    let Some(inner) = text[open + 1..].trim_end().strip_suffix(')') else {
        return Err(fail("the block does not end with `)`"));
    };
    let parts = split_top_level(inner, ';');
    let (branch, shortcut) = match parts.as_slice() {
        [branch] => (*branch, None),
        [branch, shortcut] => (*branch, Some(*shortcut)),
        _ => return Err(fail("more than one `;`")),
    };
    if branch.trim().is_empty() {
        return Err(fail("the branch is empty"));
    }
    let branch = parse_layers(branch, &format!("{name}.branch."))?;
    let shortcut = match shortcut {
        Some(s) if s.trim().is_empty() => return Err(fail("the shortcut after `;` is empty")),
        Some(s) => parse_layers(s, &format!("{name}.shortcut."))?,
        None => Vec::new(),
    };
    Ok(Layer::Residual { branch, shortcut })
}

/// One layer of a spec as written: its name, its text, its positional arguments and its
/// `key=value` options; errors name all three.
struct LayerText<'a> {
    name: &'a str,
    text: &'a str,
    positional: Vec<&'a str>,
    options: Vec<&'a str>,
}

impl LayerText<'_> {
    fn error(&self, why: String) -> Error {
        Error::Config(format!(
            "tower spec, layer {} `{}`: {why}",
            self.name, self.text
        ))
    }

    /// `w` as a positive integer, the `what` of the layer.
    fn number(&self, w: &str, what: &str) -> Result<usize> {
        match w.parse::<usize>() {
            Ok(v) if v > 0 => Ok(v),
            _ => Err(self.error(format!("{what} must be a positive integer, got `{w}`"))),
        }
    }

    /// `w` as an integer ≥ 0 (a padding).
    fn padding(&self, w: &str) -> Result<usize> {
        w.parse()
            .map_err(|_| self.error(format!("pad must be an integer ≥ 0, got `{w}`")))
    }

    fn arity(&self, n: usize, usage: &str) -> Result<()> {
        if self.positional.len() != n {
            return Err(self.error(format!("expected `{usage}`")));
        }
        Ok(())
    }

    fn no_options(&self) -> Result<()> {
        match self.options.first() {
            Some(o) => Err(self.error(format!("unknown option `{o}`"))),
            None => Ok(()),
        }
    }

    /// The `key=value` options, each passed to `take` (which says whether it knows the key).
    fn each_option(
        &self,
        known: &str,
        mut take: impl FnMut(&str, &str) -> Result<bool>,
    ) -> Result<()> {
        for o in &self.options {
            let (key, value) = o.split_once('=').expect("partitioned on '='");
            if !take(key, value)? {
                return Err(self.error(format!("unknown option `{o}` ({known})")));
            }
        }
        Ok(())
    }

    /// `conv OUT K [stride=S] [pad=P] [bias=false]`.
    fn conv(&self) -> Result<Layer> {
        self.arity(2, "conv OUT K [stride=S] [pad=P] [bias=false]")?;
        let (mut stride, mut pad, mut bias) = (1, 0, true);
        self.each_option("conv takes stride=, pad= and bias=", |key, value| {
            match key {
                "stride" | "s" => stride = self.number(value, "stride")?,
                "pad" | "padding" | "p" => pad = self.padding(value)?,
                "bias" => {
                    bias = match value {
                        "true" | "yes" | "1" => true,
                        "false" | "no" | "0" => false,
                        _ => {
                            return Err(
                                self.error(format!("bias must be true or false, got `{value}`"))
                            );
                        }
                    }
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(Layer::Conv2d {
            out: self.number(self.positional[0], "OUT")?,
            kernel: self.number(self.positional[1], "K")?,
            stride,
            pad,
            bias,
        })
    }

    /// `K [S]` of a pooling (the stride defaults to K).
    fn window(&self, name: &str) -> Result<(usize, usize)> {
        if self.positional.is_empty() || self.positional.len() > 2 {
            return Err(self.error(format!("expected `{name} K [S]`; layers are: {KNOWN}")));
        }
        let kernel = self.number(self.positional[0], "K")?;
        let stride = self
            .positional
            .get(1)
            .map(|w| self.number(w, "S"))
            .transpose()?
            .unwrap_or(kernel);
        Ok((kernel, stride))
    }

    /// `maxpool K [S] [pad=P]`; PyTorch allows a padding of at most half the window.
    fn max_pool(&self) -> Result<Layer> {
        let (kernel, stride) = self.window("maxpool")?;
        let mut pad = 0;
        self.each_option("maxpool takes pad=", |key, value| {
            if !matches!(key, "pad" | "padding" | "p") {
                return Ok(false);
            }
            pad = self.padding(value)?;
            Ok(true)
        })?;
        if pad > kernel / 2 {
            return Err(self.error(format!(
                "pad {pad} is more than half the {kernel}×{kernel} window (PyTorch allows at most {})",
                kernel / 2
            )));
        }
        Ok(Layer::MaxPool2d {
            kernel,
            stride,
            pad,
        })
    }

    /// `dropout P`, P in [0, 1).
    fn dropout(&self) -> Result<Layer> {
        self.no_options()?;
        self.arity(1, "dropout P")?;
        let w = self.positional[0];
        match w.parse::<f32>() {
            Ok(p) if (0.0..1.0).contains(&p) => Ok(Layer::Dropout { p }),
            _ => Err(self.error(format!(
                "the drop probability must be in [0, 1), got `{w}` (1 would drop everything)"
            ))),
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            &Layer::Conv2d {
                out,
                kernel,
                stride,
                pad,
                bias,
            } => {
                write!(f, "conv {out} {kernel}")?;
                if stride != 1 {
                    write!(f, " stride={stride}")?;
                }
                if pad != 0 {
                    write!(f, " pad={pad}")?;
                }
                if !bias {
                    write!(f, " bias=false")?;
                }
                Ok(())
            }
            &Layer::MaxPool2d {
                kernel,
                stride,
                pad,
            } => {
                write!(f, "maxpool {kernel}")?;
                if stride != kernel {
                    write!(f, " {stride}")?;
                }
                if pad != 0 {
                    write!(f, " pad={pad}")?;
                }
                Ok(())
            }
            &Layer::AvgPool2d { kernel, stride } if stride == kernel => {
                write!(f, "avgpool {kernel}")
            }
            &Layer::AvgPool2d { kernel, stride } => write!(f, "avgpool {kernel} {stride}"),
            Layer::GlobalAvgPool => write!(f, "gap"),
            Layer::BatchNorm => write!(f, "bn"),
            Layer::Dropout { p } => write!(f, "dropout {p}"),
            Layer::Linear { out } => write!(f, "dense {out}"),
            Layer::Activation(Activation::Relu) => write!(f, "relu"),
            Layer::Activation(Activation::Sigmoid) => write!(f, "sigmoid"),
            Layer::Activation(Activation::Tanh) => write!(f, "tanh"),
            Layer::Flatten => write!(f, "flatten"),
            Layer::L2Normalize => write!(f, "l2norm"),
            Layer::Residual { branch, shortcut } => {
                write!(f, "res({}", join(branch))?;
                if !shortcut.is_empty() {
                    write!(f, " ; {}", join(shortcut))?;
                }
                write!(f, ")")
            }
        }
    }
}

fn join(nodes: &[Node]) -> String {
    let parts: Vec<String> = nodes.iter().map(|n| n.layer.to_string()).collect();
    parts.join(" | ")
}

impl fmt::Display for TowerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.preset {
            Some(preset) => write!(f, "{preset}"),
            None => write!(f, "{}", join(&self.layers)),
        }
    }
}
