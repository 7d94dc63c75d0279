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
    /// Additive angular margin on a learned class-weight matrix (Deng et al. 2019).
    ArcFace,
    /// ArcFace with K sub-centers per class (Deng et al. 2020).
    SubCenterArcFace,
    /// Additive cosine margin on a learned class-weight matrix (Wang et al. 2018).
    CosFace,
    /// One learned proxy per class, each the anchor of its batch (Kim et al. 2020).
    ProxyAnchor,
    /// Supervised contrastive: every same-class image of the batch a positive (Khosla et al. 2020).
    SupCon,
    /// NT-Xent: one softmax per positive pair against the anchor's negatives (Chen et al. 2020).
    NtXent,
    /// Multi-Similarity loss with its pair miner (Wang et al. 2019).
    MultiSimilarity,
}

/// Every loss, in the order the help lists them.
pub const LOSSES: [LossKind; 10] = [
    LossKind::Contrastive,
    LossKind::Triplet,
    LossKind::Bce,
    LossKind::ArcFace,
    LossKind::SubCenterArcFace,
    LossKind::CosFace,
    LossKind::ProxyAnchor,
    LossKind::SupCon,
    LossKind::NtXent,
    LossKind::MultiSimilarity,
];

impl LossKind {
    /// Images per training sample: 1 for the losses on a class-labelled batch.
    pub fn branches(self) -> usize {
        match self {
            LossKind::Triplet => 3,
            LossKind::Contrastive | LossKind::Bce => 2,
            _ => 1,
        }
    }

    /// Whether the loss trains on batches of class-labelled images (P × K) rather than on
    /// pairs or triplets.
    pub fn uses_classes(self) -> bool {
        self.branches() == 1
    }

    /// The margin when none is given: 1 for contrastive and triplet (distances of unit
    /// scale), 0.5 rad for ArcFace (the paper's m; pytorch-metric-learning's 28.6° is
    /// the same angle rounded to degrees), 0.35 for CosFace and 0.1 for ProxyAnchor's δ
    /// (pytorch-metric-learning's defaults); 0 for the losses without one.
    pub fn default_margin(self) -> f32 {
        match self {
            LossKind::Contrastive | LossKind::Triplet => 1.0,
            LossKind::ArcFace | LossKind::SubCenterArcFace => 0.5,
            LossKind::CosFace => 0.35,
            LossKind::ProxyAnchor => 0.1,
            LossKind::Bce | LossKind::SupCon | LossKind::NtXent | LossKind::MultiSimilarity => 0.0,
        }
    }

    /// The loss on the cosine-similarity matrix this kind trains with, given its margin and
    /// hyper-parameters; None for the pair and triplet losses.
    pub fn similarity(self, margin: f32, h: &LossHyper) -> Option<SimilarityLoss> {
        Some(match self {
            LossKind::Contrastive | LossKind::Triplet | LossKind::Bce => return None,
            LossKind::ArcFace | LossKind::SubCenterArcFace | LossKind::CosFace => {
                SimilarityLoss::MarginSoftmax {
                    margin: if self == LossKind::CosFace {
                        MarginKind::Cosine(margin)
                    } else {
                        MarginKind::Angular(margin)
                    },
                    scale: h.scale,
                    sub_centers: if self == LossKind::SubCenterArcFace {
                        h.sub_centers
                    } else {
                        1
                    },
                }
            }
            LossKind::ProxyAnchor => SimilarityLoss::ProxyAnchor {
                alpha: h.alpha.unwrap_or(32.0),
                margin,
            },
            LossKind::SupCon => SimilarityLoss::SupCon {
                temperature: h.temperature.unwrap_or(0.1),
            },
            LossKind::NtXent => SimilarityLoss::NtXent {
                temperature: h.temperature.unwrap_or(0.07),
            },
            LossKind::MultiSimilarity => SimilarityLoss::MultiSimilarity {
                alpha: h.alpha.unwrap_or(2.0),
                beta: h.beta,
                base: h.base,
                epsilon: h.epsilon,
            },
        })
    }
}

impl FromStr for LossKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.to_lowercase().replace('_', "-");
        LOSSES
            .into_iter()
            .find(|l| l.to_string() == wanted)
            .ok_or_else(|| {
                let names: Vec<String> = LOSSES.iter().map(|l| l.to_string()).collect();
                Error::Config(format!("unknown loss `{s}`: use {}", names.join(", ")))
            })
    }
}

impl fmt::Display for LossKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LossKind::Contrastive => "contrastive",
            LossKind::Triplet => "triplet",
            LossKind::Bce => "bce",
            LossKind::ArcFace => "arcface",
            LossKind::SubCenterArcFace => "subcenter-arcface",
            LossKind::CosFace => "cosface",
            LossKind::ProxyAnchor => "proxy-anchor",
            LossKind::SupCon => "supcon",
            LossKind::NtXent => "ntxent",
            LossKind::MultiSimilarity => "multi-similarity",
        })
    }
}

/// The hyper-parameters of the losses on class-labelled batches, beside the margin
/// (`Default`: pytorch-metric-learning's defaults; `None` where two losses default
/// differently and [`LossKind::similarity`] picks the loss's own).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossHyper {
    /// s, the logit scale of ArcFace and CosFace (64).
    pub scale: f32,
    /// K, the sub-centers per class of Sub-center ArcFace (3).
    pub sub_centers: usize,
    /// α: ProxyAnchor's (32) or Multi-Similarity's positive weight (2).
    pub alpha: Option<f32>,
    /// β, Multi-Similarity's negative weight (50).
    pub beta: f32,
    /// λ, Multi-Similarity's similarity offset (0.5).
    pub base: f32,
    /// ε, the Multi-Similarity miner's slack (0.1).
    pub epsilon: f32,
    /// τ: SupCon's (0.1) or NT-Xent's (0.07).
    pub temperature: Option<f32>,
}

impl Default for LossHyper {
    fn default() -> Self {
        LossHyper {
            scale: 64.0,
            sub_centers: 3,
            alpha: None,
            beta: 50.0,
            base: 0.5,
            epsilon: 0.1,
            temperature: None,
        }
    }
}

/// The margin of a margin-softmax head: added to the angle (ArcFace) or subtracted from the
/// cosine (CosFace) of the target class.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MarginKind {
    /// m in radians: the target logit is cos(θ + m), or cos θ − m·sin m where θ + m > π.
    Angular(f32),
    /// m: the target logit is cos θ − m.
    Cosine(f32),
}

/// A loss on the cosine similarities `s = 1 − dm` between a batch's embeddings (rows) and a
/// reference set (columns): the learned class weights, the proxies, or the batch itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SimilarityLoss {
    /// Softmax cross-entropy over `scale`·cos to each class (the best of its `sub_centers`
    /// columns), the target's cosine changed by `margin`: ArcFace, CosFace, Sub-center
    /// ArcFace. Columns are classes × sub-centers, class c's at c·K .. c·K + K.
    MarginSoftmax {
        margin: MarginKind,
        scale: f32,
        sub_centers: usize,
    },
    /// ProxyAnchor: columns are the classes' proxies.
    ProxyAnchor { alpha: f32, margin: f32 },
    /// SupCon over the batch (columns: the batch, or more reference embeddings).
    SupCon { temperature: f32 },
    /// NT-Xent over the batch.
    NtXent { temperature: f32 },
    /// Multi-Similarity over the batch, on the pairs its miner keeps.
    MultiSimilarity {
        alpha: f32,
        beta: f32,
        base: f32,
        epsilon: f32,
    },
}

impl SimilarityLoss {
    /// Whether the columns are learned per-class parameters (class weights or proxies)
    /// rather than embeddings of images.
    pub fn learns_classes(self) -> bool {
        matches!(
            self,
            SimilarityLoss::MarginSoftmax { .. } | SimilarityLoss::ProxyAnchor { .. }
        )
    }

    /// Columns per class of the learned reference (sub-centers; 1 for proxies).
    pub fn columns_per_class(self) -> usize {
        match self {
            SimilarityLoss::MarginSoftmax { sub_centers, .. } => sub_centers,
            _ => 1,
        }
    }

    /// Rows of per-row partial sums the forward writes for an `n × r` matrix: one per
    /// proxy for ProxyAnchor (its sums run down the columns), else one per batch row.
    pub fn partial_rows(self, n: usize, r: usize) -> usize {
        match self {
            SimilarityLoss::ProxyAnchor { .. } => r,
            _ => n,
        }
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
