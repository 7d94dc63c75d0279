//! Tower presets by name: torchvision's `resnet18` and `resnet34` (the same layers, order and
//! parameter names, so a torchvision `state_dict` loads by name), and `resnet-small`, a
//! CIFAR-style residual tower for 28–64 px images (the small BatchNorm ResNet of
//! `peers/modern_reference.py`, module names included).
//!
//! Written `resnet18 [dim=N]`, `resnet34 [dim=N]`, `resnet-small [width=W] [dim=N]`: `dim`
//! is the width of the final dense layer (torchvision's `fc`, here the embedding; 128 by
//! default), `width` the small tower's first stage (16 by default; the stages are W, 2W, 4W).
//! Any input size and channel count: the stem's weight takes the input's channels and the
//! global average pooling makes the head independent of the image size.

use std::fmt;

use super::spec::{Layer, Node, TowerSpec};
use crate::error::{Error, Result};
use crate::ops::activation::Activation;

/// Which preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresetKind {
    Resnet18,
    Resnet34,
    ResnetSmall { width: usize },
}

/// A preset and its embedding width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    pub kind: PresetKind,
    pub dim: usize,
}

const DEFAULT_DIM: usize = 128;
const DEFAULT_SMALL_WIDTH: usize = 16;

impl Preset {
    /// The preset `text` names, None if its first word is not a preset's name.
    pub fn parse(text: &str) -> Result<Option<Preset>> {
        let lower = text.trim().to_lowercase();
        let mut words = lower.split_whitespace();
        let mut kind = match words.next() {
            Some("resnet18") => PresetKind::Resnet18,
            Some("resnet34") => PresetKind::Resnet34,
            Some("resnet-small" | "resnet_small") => PresetKind::ResnetSmall {
                width: DEFAULT_SMALL_WIDTH,
            },
            _ => return Ok(None),
        };
        let mut dim = DEFAULT_DIM;
        let fail = |why: String| Error::Config(format!("tower `{}`: {why}", text.trim()));
        for option in words {
            let (key, value) = option.split_once('=').ok_or_else(|| {
                fail(format!(
                    "`{option}` is not an option; presets take dim=N (and resnet-small width=W)"
                ))
            })?;
            let n = match value.parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(fail(format!(
                        "{key} must be a positive integer, got `{value}`"
                    )));
                }
            };
            match (key, &mut kind) {
                ("dim", _) => dim = n,
                ("width", PresetKind::ResnetSmall { width }) => *width = n,
                _ => {
                    return Err(fail(format!(
                        "unknown option `{option}`; presets take dim=N (and resnet-small width=W)"
                    )));
                }
            }
        }
        Ok(Some(Preset { kind, dim }))
    }

    pub fn with_embedding_dim(self, dim: usize) -> Preset {
        Preset { dim, ..self }
    }

    /// The preset's layers.
    pub fn spec(self) -> TowerSpec {
        let layers = match self.kind {
            PresetKind::Resnet18 => torchvision_resnet([2, 2, 2, 2], self.dim),
            PresetKind::Resnet34 => torchvision_resnet([3, 4, 6, 3], self.dim),
            PresetKind::ResnetSmall { width } => small_resnet(width, self.dim),
        };
        TowerSpec {
            layers,
            preset: Some(self),
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PresetKind::Resnet18 => write!(f, "resnet18")?,
            PresetKind::Resnet34 => write!(f, "resnet34")?,
            PresetKind::ResnetSmall { width } => {
                write!(f, "resnet-small")?;
                if width != DEFAULT_SMALL_WIDTH {
                    write!(f, " width={width}")?;
                }
            }
        }
        if self.dim != DEFAULT_DIM {
            write!(f, " dim={}", self.dim)?;
        }
        Ok(())
    }
}

fn conv(out: usize, kernel: usize, stride: usize, pad: usize) -> Layer {
    Layer::Conv2d {
        out,
        kernel,
        stride,
        pad,
        bias: false,
    }
}

const RELU: Layer = Layer::Activation(Activation::Relu);

/// The names of a basic block's modules: two convolutions and their BatchNorms, and the
/// shortcut's projection (a Sequential of a conv and a BatchNorm).
struct BlockNames {
    conv1: &'static str,
    bn1: &'static str,
    conv2: &'static str,
    bn2: &'static str,
    projection: &'static str,
}

const TORCHVISION: BlockNames = BlockNames {
    conv1: "conv1",
    bn1: "bn1",
    conv2: "conv2",
    bn2: "bn2",
    projection: "downsample",
};

const MODERN_REFERENCE: BlockNames = BlockNames {
    conv1: "c1",
    bn1: "b1",
    conv2: "c2",
    bn2: "b2",
    projection: "proj",
};

/// A basic block (He et al. 2016): relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), the
/// shortcut a strided 1×1 conv + BatchNorm when the shape changes. Returns the block and the
/// ReLU after it.
fn basic_block(
    name: &str,
    names: &BlockNames,
    c_in: usize,
    c_out: usize,
    stride: usize,
) -> [Node; 2] {
    let at = |module: &str| format!("{name}.{module}");
    let branch = vec![
        Node::new(at(names.conv1), conv(c_out, 3, stride, 1)),
        Node::new(at(names.bn1), Layer::BatchNorm),
        Node::new(at("relu"), RELU),
        Node::new(at(names.conv2), conv(c_out, 3, 1, 1)),
        Node::new(at(names.bn2), Layer::BatchNorm),
    ];
    let shortcut = if stride != 1 || c_in != c_out {
        vec![
            Node::new(
                format!("{name}.{}.0", names.projection),
                conv(c_out, 1, stride, 0),
            ),
            Node::new(format!("{name}.{}.1", names.projection), Layer::BatchNorm),
        ]
    } else {
        Vec::new()
    };
    [
        Node::new(name, Layer::Residual { branch, shortcut }),
        Node::new(format!("{name}.relu"), RELU),
    ]
}

/// torchvision's `ResNet(BasicBlock, blocks)`: a 7×7/2 stem, 3×3/2 max pooling, four stages
/// of 64, 128, 256, 512 channels (each but the first halving the size), global average
/// pooling and `fc`.
fn torchvision_resnet(blocks: [usize; 4], dim: usize) -> Vec<Node> {
    let mut layers = vec![
        Node::new("conv1", conv(64, 7, 2, 3)),
        Node::new("bn1", Layer::BatchNorm),
        Node::new("relu", RELU),
        Node::new(
            "maxpool",
            Layer::MaxPool2d {
                kernel: 3,
                stride: 2,
                pad: 1,
            },
        ),
    ];
    let mut c_in = 64;
    for (stage, &count) in blocks.iter().enumerate() {
        let c_out = 64 << stage;
        for b in 0..count {
            let stride = if stage > 0 && b == 0 { 2 } else { 1 };
            let name = format!("layer{}.{b}", stage + 1);
            layers.extend(basic_block(&name, &TORCHVISION, c_in, c_out, stride));
            c_in = c_out;
        }
    }
    layers.extend([
        Node::new("avgpool", Layer::GlobalAvgPool),
        Node::new("flatten", Layer::Flatten),
        Node::new("fc", Layer::Linear { out: dim }),
    ]);
    layers
}

/// The small tower: a 3×3 stem of `width` channels with BatchNorm and ReLU, one basic block
/// per stage at widths W, 2W, 4W (the last two halving the size), global average pooling and
/// a dense embedding; named as `nn.Sequential` numbers it in `peers/modern_reference.py`.
fn small_resnet(width: usize, dim: usize) -> Vec<Node> {
    let mut layers = vec![
        Node::new("0", conv(width, 3, 1, 1)),
        Node::new("1", Layer::BatchNorm),
        Node::new("2", RELU),
    ];
    let stages = [
        (width, width, 1),
        (width, 2 * width, 2),
        (2 * width, 4 * width, 2),
    ];
    for (i, (c_in, c_out, stride)) in stages.into_iter().enumerate() {
        layers.extend(basic_block(
            &(3 + i).to_string(),
            &MODERN_REFERENCE,
            c_in,
            c_out,
            stride,
        ));
    }
    layers.extend([
        Node::new("6", Layer::GlobalAvgPool),
        Node::new("7", Layer::Flatten),
        Node::new("8", Layer::Linear { out: dim }),
    ]);
    layers
}
