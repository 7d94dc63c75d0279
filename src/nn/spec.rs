//! The tower spec: a compact, readable declaration of a layer stack, e.g. the reference
//! network `conv 32 5 | relu | maxpool 2 | conv 64 3 | relu | maxpool 2 | flatten | dense 128`.
//!
//! Grammar, one layer between `|`s (case-insensitive):
//!   `conv OUT K [stride=S] [pad=P]`   2-D convolution, K×K kernel (stride 1, pad 0 by default)
//!   `maxpool K [S]`, `avgpool K [S]`  pooling, K×K window, stride S (default K)
//!   `dense N` (or `linear N`)         fully connected, N outputs
//!   `relu`, `sigmoid`, `tanh`         activations
//!   `flatten`                         [C, H, W] → [C·H·W]
//!   `l2norm`                          row-wise L2 normalisation of a flat embedding

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::ops::activation::Activation;

/// One layer of a tower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Conv2d {
        out: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
    },
    MaxPool2d {
        kernel: usize,
        stride: usize,
    },
    AvgPool2d {
        kernel: usize,
        stride: usize,
    },
    Linear {
        out: usize,
    },
    Activation(Activation),
    Flatten,
    L2Normalize,
}

/// A parsed tower spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TowerSpec {
    pub layers: Vec<Layer>,
}

/// The reference network every figure of this project is measured with.
pub const REFERENCE_TOWER: &str =
    "conv 32 5 | relu | maxpool 2 | conv 64 3 | relu | maxpool 2 | flatten | dense 128";

const KNOWN: &str = "conv OUT K [stride=S] [pad=P], maxpool K [S], avgpool K [S], dense N, relu, sigmoid, tanh, flatten, l2norm";

impl FromStr for TowerSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<TowerSpec> {
        let layers = s
            .split('|')
            .enumerate()
            .map(|(i, text)| parse_layer(i, text.trim()))
            .collect::<Result<Vec<_>>>()?;
        Ok(TowerSpec { layers })
    }
}

fn parse_layer(index: usize, text: &str) -> Result<Layer> {
    let words: Vec<String> = text.split_whitespace().map(str::to_lowercase).collect();
    let Some((name, args)) = words.split_first() else {
        return Err(LayerText {
            index,
            text,
            positional: vec![],
            options: vec![],
        }
        .error("empty layer; layers are: ".to_string() + KNOWN));
    };
    let (positional, options) = args
        .iter()
        .map(String::as_str)
        .partition(|a| !a.contains('='));
    let layer = LayerText {
        index,
        text,
        positional,
        options,
    };
    match name.as_str() {
        "conv" | "conv2d" => layer.conv(),
        "maxpool" | "avgpool" => layer.pool(name),
        "dense" | "linear" => {
            layer.no_options()?;
            layer.arity(1, "dense N")?;
            Ok(Layer::Linear {
                out: layer.number(layer.positional[0], "N")?,
            })
        }
        "relu" | "sigmoid" | "tanh" | "flatten" | "l2norm" | "l2normalize" => {
            layer.no_options()?;
            layer.arity(0, name)?;
            Ok(match name.as_str() {
                "relu" => Layer::Activation(Activation::Relu),
                "sigmoid" => Layer::Activation(Activation::Sigmoid),
                "tanh" => Layer::Activation(Activation::Tanh),
                "flatten" => Layer::Flatten,
                _ => Layer::L2Normalize,
            })
        }
        other => Err(layer.error(format!("unknown layer `{other}`; layers are: {KNOWN}"))),
    }
}

/// One layer of a spec as written: its place, its text, its positional arguments and its
/// `key=value` options; errors name all three.
struct LayerText<'a> {
    index: usize,
    text: &'a str,
    positional: Vec<&'a str>,
    options: Vec<&'a str>,
}

impl LayerText<'_> {
    fn error(&self, why: String) -> Error {
        Error::Config(format!(
            "tower spec, layer {} `{}`: {why}",
            self.index, self.text
        ))
    }

    /// `w` as a positive integer, the `what` of the layer.
    fn number(&self, w: &str, what: &str) -> Result<usize> {
        match w.parse::<usize>() {
            Ok(v) if v > 0 => Ok(v),
            _ => Err(self.error(format!("{what} must be a positive integer, got `{w}`"))),
        }
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

    /// `conv OUT K [stride=S] [pad=P]`.
    fn conv(&self) -> Result<Layer> {
        self.arity(2, "conv OUT K [stride=S] [pad=P]")?;
        let (mut stride, mut pad) = (1, 0);
        for o in &self.options {
            let (key, value) = o.split_once('=').expect("partitioned on '='");
            match key {
                "stride" | "s" => stride = self.number(value, "stride")?,
                "pad" | "padding" | "p" => {
                    pad = value
                        .parse()
                        .map_err(|_| self.error("pad must be an integer ≥ 0".into()))?
                }
                _ => {
                    return Err(self.error(format!(
                        "unknown option `{o}` (conv takes stride= and pad=); layers are: {KNOWN}"
                    )));
                }
            }
        }
        Ok(Layer::Conv2d {
            out: self.number(self.positional[0], "OUT")?,
            kernel: self.number(self.positional[1], "K")?,
            stride,
            pad,
        })
    }

    /// `maxpool K [S]` or `avgpool K [S]` (the stride defaults to K).
    fn pool(&self, name: &str) -> Result<Layer> {
        self.no_options()?;
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
        Ok(if name == "maxpool" {
            Layer::MaxPool2d { kernel, stride }
        } else {
            Layer::AvgPool2d { kernel, stride }
        })
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Layer::Conv2d {
                out,
                kernel,
                stride,
                pad,
            } => {
                write!(f, "conv {out} {kernel}")?;
                if stride != 1 {
                    write!(f, " stride={stride}")?;
                }
                if pad != 0 {
                    write!(f, " pad={pad}")?;
                }
                Ok(())
            }
            Layer::MaxPool2d { kernel, stride } | Layer::AvgPool2d { kernel, stride } => {
                let name = if matches!(self, Layer::MaxPool2d { .. }) {
                    "maxpool"
                } else {
                    "avgpool"
                };
                if stride == kernel {
                    write!(f, "{name} {kernel}")
                } else {
                    write!(f, "{name} {kernel} {stride}")
                }
            }
            Layer::Linear { out } => write!(f, "dense {out}"),
            Layer::Activation(Activation::Relu) => write!(f, "relu"),
            Layer::Activation(Activation::Sigmoid) => write!(f, "sigmoid"),
            Layer::Activation(Activation::Tanh) => write!(f, "tanh"),
            Layer::Flatten => write!(f, "flatten"),
            Layer::L2Normalize => write!(f, "l2norm"),
        }
    }
}

impl fmt::Display for TowerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.layers.iter().map(Layer::to_string).collect();
        write!(f, "{}", parts.join(" | "))
    }
}
