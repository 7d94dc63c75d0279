//! The words the layers share: plain types with no behaviour beyond their names, parsing,
//! the codes the shaders read and the arithmetic of their shapes, so that any layer can use
//! them without importing another.
//!
//! Everything here depends on nothing but [`crate::error`]. A type belongs here when two
//! layers that must not import each other both need it (the sampler and the loss kernels
//! both speak of [`PairLabel`]; the settings, the model and the doctor all of [`Distance`]).
//! How a kernel implements one of these (its entry point names, its scratch layout) stays in
//! the launcher module of `ops`.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

// ---- Pairs and losses ----

/// Whether the two inputs of a pair show the same identity (class) or different ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PairLabel {
    Same,
    Different,
}

impl PairLabel {
    /// The u32 the shaders read (`SAME` / `DIFFERENT` in `shaders/loss.wgsl`).
    pub const fn code(self) -> u32 {
        match self {
            PairLabel::Same => 1,
            PairLabel::Different => 0,
        }
    }

    /// The label a code stands for, `None` for a code that is neither.
    pub const fn from_code(code: u32) -> Option<PairLabel> {
        match code {
            1 => Some(PairLabel::Same),
            0 => Some(PairLabel::Different),
            _ => None,
        }
    }

    /// The binary cross-entropy target: 1 for Same, 0 for Different.
    pub const fn target(self) -> f32 {
        match self {
            PairLabel::Same => 1.0,
            PairLabel::Different => 0.0,
        }
    }

    /// Codes of a slice of labels, in order.
    pub fn codes(labels: &[PairLabel]) -> Vec<u32> {
        labels.iter().map(|l| l.code()).collect()
    }
}

/// The training objective, with the head it implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossKind {
    /// Contrastive loss on the distance between the two embeddings (Hadsell et al. 2006).
    Contrastive,
    /// Triplet loss `max(0, d(a, p) − d(a, n) + m)` averaged over the batch.
    Triplet,
    /// The Keras head: `|a − b| → Linear(1)`, trained as a logit with binary cross-entropy.
    Bce,
}

impl LossKind {
    /// Images per training sample.
    pub fn branches(self) -> usize {
        match self {
            LossKind::Triplet => 3,
            LossKind::Contrastive | LossKind::Bce => 2,
        }
    }
}

impl FromStr for LossKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_lowercase().as_str() {
            "contrastive" => Ok(LossKind::Contrastive),
            "triplet" => Ok(LossKind::Triplet),
            "bce" => Ok(LossKind::Bce),
            _ => Err(Error::Config(format!(
                "unknown loss `{s}`: use contrastive, triplet or bce"
            ))),
        }
    }
}

impl fmt::Display for LossKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LossKind::Contrastive => "contrastive",
            LossKind::Triplet => "triplet",
            LossKind::Bce => "bce",
        })
    }
}

/// Which triplets of a batch the loss trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Miner {
    /// Every valid (a, p, n); the mean over the triplets with a positive loss.
    BatchAll,
    /// Per anchor, the farthest positive and the nearest negative (Hermans et al. 2017).
    BatchHard,
    /// Per anchor-positive pair, the nearest negative farther than the positive, else the
    /// farthest negative (Schroff et al. 2015; TensorFlow's `triplet_semihard_loss`).
    SemiHard,
}

impl Miner {
    /// Rows of partial sums the forward's first pass writes for a batch of `n`: one per
    /// anchor (batch-hard) or one per (anchor, positive) slot, `n²` (see the shader).
    pub fn partial_rows(self, n: usize) -> usize {
        match self {
            Miner::BatchHard => n,
            Miner::SemiHard | Miner::BatchAll => n * n,
        }
    }

    /// Whether the loss is divided by the active triplets (batch-all) rather than the mined.
    pub fn averages_active(self) -> bool {
        self == Miner::BatchAll
    }

    /// A setting's value: `none` (random triplets, no mining) or a miner's name.
    pub fn parse_setting(s: &str) -> Result<Option<Miner>> {
        if s.eq_ignore_ascii_case("none") {
            Ok(None)
        } else {
            s.parse().map(Some)
        }
    }
}

impl FromStr for Miner {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_lowercase().replace('_', "-").as_str() {
            "batch-all" => Ok(Miner::BatchAll),
            "batch-hard" => Ok(Miner::BatchHard),
            "semi-hard" => Ok(Miner::SemiHard),
            _ => Err(Error::Config(format!(
                "unknown miner `{s}`: use none, batch-all, batch-hard or semi-hard"
            ))),
        }
    }
}

impl fmt::Display for Miner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Miner::BatchAll => "batch-all",
            Miner::BatchHard => "batch-hard",
            Miner::SemiHard => "semi-hard",
        })
    }
}

// ---- Distances ----

/// A distance between paired rows, one value per row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Distance {
    /// `sqrt(Σ(a − b)² + 1e-12)`: the epsilon keeps the gradient finite (zero) at `a = b`.
    Euclidean,
    /// `Σ(a − b)²`.
    SquaredEuclidean,
    /// `Σ|a − b|`; gradient `sign(a − b)`, 0 at equality.
    L1,
    /// `1 − ⟨a, b⟩ / (max(‖a‖, 1e-8)·max(‖b‖, 1e-8))`.
    Cosine,
}

/// A distance for the pairwise matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PairwiseMetric {
    /// `sqrt(Σ(A_i − B_j)² + 1e-12)`, summed as differences (no `‖a‖² + ‖b‖² − 2ab`
    /// cancellation for near rows).
    Euclidean,
    /// `1 − ⟨A_i, B_j⟩ / (max(‖A_i‖, 1e-8)·max(‖B_j‖, 1e-8))`.
    Cosine,
}

// ---- Images ----

/// How pixels become network inputs: `(pixel / 255 − shift) · scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelNorm {
    pub shift: f32,
    pub scale: f32,
}

impl PixelNorm {
    /// pixel / 255, values in [0, 1]: the usual PyTorch recipe (`ToTensor()`).
    pub const UNIT: PixelNorm = PixelNorm {
        shift: 0.0,
        scale: 1.0,
    };

    /// (pixel / 255 − mean) / std, as `transforms.Normalize(mean, std)` after `ToTensor()`.
    pub fn standardize(mean: f32, std: f32) -> PixelNorm {
        PixelNorm {
            shift: mean,
            scale: 1.0 / std,
        }
    }
}

/// Floats per image in the transform buffer (six used; eight keeps rows 32-byte aligned).
pub const TRANSFORM_LEN: usize = 8;

/// What a source pixel outside the image reads, with Keras's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FillMode {
    /// The nearest edge pixel (`aaaa|abcd|dddd`): Keras's default.
    #[default]
    Nearest,
    /// Pixel value 0, i.e. black before normalisation (Keras's `cval = 0`): the background
    /// of MNIST-like data, where `nearest` would smear the edge rows into streaks.
    Constant,
}

impl FillMode {
    /// The code the shader reads (`p.fill`).
    pub fn code(self) -> u32 {
        match self {
            FillMode::Nearest => 0,
            FillMode::Constant => 1,
        }
    }
}

impl fmt::Display for FillMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FillMode::Nearest => "nearest",
            FillMode::Constant => "constant",
        })
    }
}

impl FromStr for FillMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<FillMode> {
        match s.to_lowercase().as_str() {
            "nearest" => Ok(FillMode::Nearest),
            "constant" => Ok(FillMode::Constant),
            other => Err(Error::Config(format!(
                "fill_mode: unknown fill mode `{other}`: use nearest (repeat the edge pixel) or \
                 constant (black)"
            ))),
        }
    }
}

/// Colour of the network's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Color {
    /// One channel (images in colour are converted to luma).
    #[default]
    Grey,
    /// Three channels, R, G, B planes.
    Rgb,
}

impl Color {
    pub fn channels(self) -> usize {
        match self {
            Color::Grey => 1,
            Color::Rgb => 3,
        }
    }
}

/// How a folder image of another size is brought to the input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resize {
    /// Scaled to exactly H×W, the aspect ratio changed.
    #[default]
    Stretch,
    /// Scaled (aspect kept) until it covers H×W, then the centre cropped: for a square
    /// target, torchvision's `Resize(side)` + `CenterCrop(side)`, what face and product
    /// pipelines use.
    ShorterSideCenterCrop,
    /// Scaled (aspect kept) to fit inside H×W, centred, the rest black (letterboxing).
    Pad,
}

impl Resize {
    pub const NAMES: &str = "stretch, shorter-side+center-crop or pad";

    pub fn parse(text: &str) -> Option<Resize> {
        match text.to_lowercase().as_str() {
            "stretch" => Some(Resize::Stretch),
            "shorter-side+center-crop" => Some(Resize::ShorterSideCenterCrop),
            "pad" => Some(Resize::Pad),
            _ => None,
        }
    }
}

/// What to do with an image file of a folder dataset that cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnBadImage {
    /// Leave it out, with a warning naming it.
    #[default]
    Skip,
    /// Refuse the dataset, naming the file.
    Stop,
}

impl OnBadImage {
    pub fn parse(text: &str) -> Option<OnBadImage> {
        match text.to_lowercase().as_str() {
            "skip" => Some(OnBadImage::Skip),
            "stop" => Some(OnBadImage::Stop),
            _ => None,
        }
    }
}

// ---- Shapes ----

/// Sizes of one 2-D convolution (NCHW, weights `[O, C, KH, KW]`, stride and zero padding)
/// and the shapes they imply: what the CPU reference, the kernel rules and the launchers of
/// `ops::conv2d` all speak of. Reading one off tensors, and checking that they fit, is
/// `ops::conv2d`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dGeometry {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Conv2dGeometry {
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad - self.kh) / self.stride + 1
    }

    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad - self.kw) / self.stride + 1
    }

    /// Shape of the input, `[N, C, H, W]`.
    pub fn input_shape(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }

    /// Shape of the weights, `[O, C, KH, KW]`.
    pub fn weight_shape(&self) -> [usize; 4] {
        [self.o, self.c, self.kh, self.kw]
    }

    /// Shape of the output, `[N, O, OH, OW]`.
    pub fn output_shape(&self) -> [usize; 4] {
        [self.n, self.o, self.out_h(), self.out_w()]
    }
}

/// Whether a tower runs as in training or as in evaluation (PyTorch's `model.train()` and
/// `model.eval()`): BatchNorm normalises with the batch's statistics and updates its running
/// ones in training, and uses the running ones in evaluation; dropout drops in training and
/// is the identity in evaluation. Validation, `eval`, `embed` and the doctor's probes run in
/// evaluation mode, and so do frozen BatchNorm layers while the rest trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

// ---- Arithmetic ----

/// `F32` everywhere (the default), or mixed precision: the tower's activations, their
/// gradients and a per-step f16 copy of the weights are f16 (products accumulated in f32),
/// while the master weights, weight gradients, optimizer, embeddings and loss stay f32, under
/// a dynamic loss scale (PyTorch's autocast + GradScaler recipe). Needs an adapter with
/// 16-bit float shaders (wgpu's SHADER_F16); validation and evaluation run in f32.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Precision {
    #[default]
    F32,
    Mixed,
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_lowercase().as_str() {
            "f32" | "float32" => Ok(Precision::F32),
            "mixed" | "mixed_float16" | "mixed-f16" => Ok(Precision::Mixed),
            _ => Err(Error::Config(format!(
                "precision: unknown precision `{s}`: use f32 or mixed (f16 activations and \
                 weight copies, f32 master weights, dynamic loss scaling)"
            ))),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Mixed => "mixed",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_names_round_trip_and_unknown_ones_are_refused() {
        for p in [Precision::F32, Precision::Mixed] {
            assert_eq!(p.to_string().parse::<Precision>().unwrap(), p);
        }
        assert_eq!(
            "mixed_float16".parse::<Precision>().unwrap(),
            Precision::Mixed
        );
        let err = "f16".parse::<Precision>().unwrap_err().to_string();
        assert!(err.contains("use f32 or mixed"), "{err}");
    }
}
