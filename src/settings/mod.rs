//! Run settings: everything that defines a training run, as the user writes it — in a TOML
//! file (`siamese train --config run.toml`), on the command line, or as one point of a sweep.
//!
//! The keys are the long flags of `siamese train` with `_` for `-` (`lr`, `batch`,
//! `held_out_classes`, …), so a file and a command line read alike. Values stay in their
//! written form (`loss = "triplet"`, `schedule = "cosine:100"`) until [`RunSettings::to_train_config`]
//! turns them into a checked [`TrainConfig`]; that keeps one parser per value (the engine's)
//! and lets the run directory record the settings exactly as they were given. Unknown keys
//! and values of the wrong type are refused by serde with the key's name and line; values
//! out of range by [`TrainConfig::validate`], naming the key and what is accepted.
//!
//! [`RunSettings`] is the one declaration of a setting: its field is the TOML key, the flag
//! (clap derives it, with the doc comment as the help and `default_value` as the default)
//! and the JSON of a run's fingerprint. Layering a file and a command line is generic over
//! the fields ([`RunSettings::with_flags`]), so a new hyper-parameter is one field here and
//! its use in [`RunSettings::to_train_config`].

use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches};
use serde::{Deserialize, Serialize};

use crate::data::augment::{Augment, Blur, ColorJitter, CropRange};
use crate::data::images::DataOptions;
use crate::error::{Error, Result};
use crate::nn::TowerSpec;
use crate::nn::spec::REFERENCE_TOWER;
use crate::optim::{OptimizerKind, Schedule};
use crate::train::{TrainConfig, Xbm};
use crate::vocab::{Color, Distance, LossHyper, LossKind, Miner, OnBadImage, Precision, Resize};

mod values;
use values::{parse_bytes, parse_image_size, parse_pixel_norm, parse_range};

/// The settings of a run, as written: one field per key, whose doc comment is the flag's help.
/// `Default` is the reference recipe (each field's `default_value`); fields are `Option` where
/// being unset means something (the first image's size, 10% of the data, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[serde(deny_unknown_fields, default)]
#[command(
    next_help_heading = "Run settings (each also a key of --config)",
    allow_negative_numbers = true
)]
pub struct RunSettings {
    /// Dataset directory: the four IDX files (.gz or raw, any image size) or an ImageFolder
    /// tree (train/<class>/<image>.png|jpg, test/<class>/…); default: $SIAMESE_DATA, then
    /// /usr/share/datasets/fashion-mnist.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    /// Training budget, in pairs (triplets for --loss triplet; images seen with a --miner).
    #[arg(long, default_value_t = 20_000)]
    pub pairs: usize,
    /// Pairs (or triplets) per step; with a --miner, images per step (P × K).
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Margin of the loss [default: 1 contrastive and triplet; 0.5 rad arcface and
    /// subcenter-arcface; 0.35 cosface; 0.1 (δ) proxy-anchor].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub margin: Option<f64>,
    /// Loss: contrastive, triplet, bce (the Keras head |a−b| → dense(1) → sigmoid), or on
    /// class-labelled P×K batches: arcface, subcenter-arcface, cosface, proxy-anchor, supcon,
    /// ntxent, multi-similarity.
    #[arg(long, default_value = "contrastive")]
    pub loss: String,
    /// Distance between embeddings: euclidean, cosine, squared-euclidean or l1 (miners:
    /// euclidean or cosine) [default: euclidean; cosine for the losses on class-labelled
    /// batches, which work on cosine similarities].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distance: Option<String>,
    /// s, the logit scale of arcface, subcenter-arcface and cosface [default: 64].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
    /// K, the sub-centers per class of subcenter-arcface [default: 3].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_centers: Option<usize>,
    /// α of proxy-anchor [default: 32] or multi-similarity (positive pairs) [default: 2].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// β of multi-similarity (negative pairs) [default: 50].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta: Option<f64>,
    /// λ, multi-similarity's similarity offset [default: 0.5].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<f64>,
    /// ε, the multi-similarity miner's slack [default: 0.1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    /// τ of supcon [default: 0.1] or ntxent [default: 0.07].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// A cross-batch memory of SIZE slots for supcon, ntxent and multi-similarity: the last
    /// SIZE embeddings and labels, read as more pairs (Wang et al. 2020).
    #[arg(long, value_name = "SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xbm: Option<usize>,
    /// Steps before the cross-batch memory is read (the batch alone before) [default: 0].
    #[arg(long, value_name = "STEPS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xbm_warmup: Option<usize>,
    /// Learning rate of the class weights or proxies (arcface, cosface, proxy-anchor, …)
    /// [default: --lr].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_lr: Option<f64>,
    /// L2-normalise the embeddings before the distance.
    #[arg(long)]
    pub normalize_embeddings: bool,
    /// The tower, layer by layer (`conv 32 5 | relu | …`), or a preset: resnet18, resnet34, resnet-small.
    #[arg(long, default_value = REFERENCE_TOWER)]
    pub tower: String,
    /// Width of the embedding: replaces the tower's last `dense N`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding_dim: Option<usize>,
    /// Optimizer: adam, adamw, sgd (momentum 0.9) or nesterov.
    #[arg(long, default_value = "adam")]
    pub optimizer: String,
    /// Weight decay (L2 for adam and sgd, decoupled for adamw).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Learning-rate schedule: constant, step:EVERY:GAMMA, cosine[:WARMUP] (steps).
    #[arg(long, default_value = "constant")]
    pub schedule: String,
    /// Fraction of Same pairs in training batches.
    #[arg(long, default_value_t = 0.5)]
    pub positive_fraction: f64,
    /// Online triplet mining (--loss triplet) from each batch's distance matrix: none
    /// (random triplets), batch-all, batch-hard or semi-hard.
    // Left out of the written settings when none, so runs saved before it existed match.
    #[arg(long, default_value = "none")]
    #[serde(skip_serializing_if = "is_no_miner")]
    pub miner: String,
    /// P, the classes of a P×K batch (a --miner, or a loss on class-labelled batches; K =
    /// batch / P) [default: 10, or all if fewer].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classes_per_batch: Option<usize>,
    /// Seed of initialisation and sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Validation images held out of training [default: min(5000, 10%)].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_images: Option<usize>,
    /// Balanced validation pairs that choose the verification threshold.
    #[arg(long, default_value_t = 10_000)]
    pub val_pairs: usize,
    /// Balanced test pairs scored at that threshold.
    #[arg(long, default_value_t = 10_000)]
    pub test_pairs: usize,
    /// A false-accept rate to store an operating point for (repeatable: --far 1e-3 --far
    /// 1e-4): the threshold whose 95% upper bound on the FAR, from the validation Different
    /// pairs, is at most RATE. Accuracy and equal-error-rate points are always stored.
    #[arg(long, value_name = "RATE", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub far: Vec<f64>,
    /// Validate (and save the run) every this many training pairs.
    #[arg(long, default_value_t = 10_000)]
    pub eval_every: usize,
    /// Input normalisation: unit (pixel/255) or standard:MEAN:STD ((pixel/255 − MEAN)/STD).
    #[arg(long, default_value = "unit")]
    pub pixel_norm: String,
    /// Folder images are resized to HxW (or N×N) [default: the first training image's size].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_size: Option<String>,
    /// Folder images as grey (1 channel) or rgb (3).
    #[arg(long, default_value = "grey")]
    pub color: String,
    /// Folder images of another size: stretch, shorter-side+center-crop (aspect kept,
    /// the centre cropped) or pad (aspect kept, black borders).
    #[arg(long, default_value = "stretch")]
    pub resize: String,
    /// An unreadable folder image: skip (leave it out, with a warning) or stop.
    #[arg(long, default_value = "skip")]
    pub on_bad_image: String,
    /// Where decoded image folders are cached, so a second run starts in seconds (`off`: no
    /// cache) [default: $XDG_CACHE_HOME/siamese-gpu, else ~/.cache/siamese-gpu].
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<String>,
    /// Classes kept out of training and validation, the only ones tested (class-disjoint
    /// split): names of folder classes, or IDX label numbers; comma-separated.
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub held_out_classes: Vec<String>,
    /// Augmentation of training images (never validation or test), as Keras's
    /// ImageDataGenerator: rotation uniform in ±DEGREES.
    #[arg(long, value_name = "DEGREES", default_value_t = 0.0)]
    pub rotation_range: f64,
    /// Horizontal shift uniform in ±FRACTION of the width.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.0)]
    pub width_shift_range: f64,
    /// Vertical shift uniform in ±FRACTION of the height.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.0)]
    pub height_shift_range: f64,
    /// Shear angle uniform in ±DEGREES.
    #[arg(long, value_name = "DEGREES", default_value_t = 0.0)]
    pub shear_range: f64,
    /// Zoom of rows and of columns, each uniform in [1 − Z, 1 + Z] (Z < 1).
    #[arg(long, value_name = "Z", default_value_t = 0.0)]
    pub zoom_range: f64,
    /// Mirror training images left–right with probability 0.5.
    #[arg(long)]
    pub horizontal_flip: bool,
    /// torchvision's RandomResizedCrop on training images, before the other transforms: a
    /// window of a random area (crop_scale) and aspect ratio (crop_ratio) resized to the
    /// whole image.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub random_resized_crop: bool,
    /// The crop's area as a fraction of the image's, LO:HI [default: 0.08:1, torchvision's].
    #[arg(long, value_name = "LO:HI", requires = "random_resized_crop")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crop_scale: Option<String>,
    /// The crop's aspect ratio (width / height), log-uniform in LO:HI [default: 0.75:1.3333,
    /// torchvision's 3/4:4/3].
    #[arg(long, value_name = "LO:HI", requires = "random_resized_crop")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crop_ratio: Option<String>,
    /// torchvision's ColorJitter on training images, after the geometric transforms: a
    /// brightness factor uniform in [max(0, 1 − B), 1 + B].
    #[arg(long, value_name = "B", default_value_t = 0.0)]
    #[serde(skip_serializing_if = "is_zero")]
    pub brightness: f64,
    /// A contrast factor uniform in [max(0, 1 − C), 1 + C] (blends with the mean grey).
    #[arg(long, value_name = "C", default_value_t = 0.0)]
    #[serde(skip_serializing_if = "is_zero")]
    pub contrast: f64,
    /// A saturation factor uniform in [max(0, 1 − S), 1 + S] (blends with the grey image).
    #[arg(long, value_name = "S", default_value_t = 0.0)]
    #[serde(skip_serializing_if = "is_zero")]
    pub saturation: f64,
    /// A hue shift uniform in [−H, H] of a turn (H ≤ 0.5).
    #[arg(long, value_name = "H", default_value_t = 0.0)]
    #[serde(skip_serializing_if = "is_zero")]
    pub hue: f64,
    /// torchvision's RandomGrayscale: each training image turned grey with probability P.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    #[serde(skip_serializing_if = "is_zero")]
    pub random_grayscale: f64,
    /// torchvision's GaussianBlur on training images, last: a Gaussian of K taps (odd) and
    /// a σ uniform in blur_sigma, reflect padding.
    #[arg(long, value_name = "K")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gaussian_blur: Option<usize>,
    /// The blur's σ range, LO:HI (pixels) [default: 0.1:2, torchvision's].
    #[arg(long, value_name = "LO:HI", requires = "gaussian_blur")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blur_sigma: Option<String>,
    /// What augmented images show beyond their edges: nearest (the edge pixel, Keras's
    /// default) or constant (black).
    #[arg(long, default_value = "nearest")]
    pub fill_mode: String,
    /// Arithmetic of training: f32, or mixed (f16 activations and weight copies with f32
    /// master weights and a dynamic loss scale; needs an adapter with f16 shaders).
    // Left out of the written settings when f32, so runs saved before it existed match.
    #[arg(long, default_value = "f32")]
    #[serde(skip_serializing_if = "is_f32")]
    pub precision: String,
    /// Start from weights trained elsewhere: a PyTorch state_dict saved with safetensors
    /// (e.g. torchvision's resnet18). Tensors whose names and shapes match the tower's are
    /// loaded; what was loaded, left at initialisation and ignored is reported.
    #[arg(long, value_name = "FILE.safetensors")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
    /// With --init-from: leave a tensor whose shape differs from the model's at its
    /// initialisation instead of refusing the file (the embedding layer always may differ).
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    pub init_allow_mismatch: bool,
    /// Packed images the GPU holds (bytes, or with K, M, G: KiB, MiB, GiB); a split beyond it
    /// stays in host memory and each batch is uploaded as it is needed [default: what four
    /// storage bindings hold, at most 2 GiB].
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_data_budget: Option<String>,
    /// Keep the parameters under this name prefix as they are (repeatable: --freeze layer1
    /// --freeze layer2); frozen BatchNorm layers keep their running statistics.
    #[arg(long, value_name = "NAME_PREFIX")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub freeze: Vec<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Default for RunSettings {
    /// The reference recipe: what an empty command line gives.
    fn default() -> Self {
        let command = RunSettings::augment_args(clap::Command::new("defaults"));
        let matches = command.get_matches_from(["defaults"]);
        RunSettings::from_arg_matches(&matches).expect("every setting has a default")
    }
}

/// Whether an augmentation range is 0 (off: left out of the written settings, so runs saved
/// before it existed match).
fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

fn is_f32(precision: &str) -> bool {
    precision.parse::<Precision>().ok() == Some(Precision::F32)
}

fn is_no_miner(miner: &str) -> bool {
    miner.eq_ignore_ascii_case("none")
}

impl RunSettings {
    /// Settings from a TOML file; keys it leaves out keep their defaults.
    pub fn from_file(path: &Path) -> Result<RunSettings> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!(
                "cannot read the config file {}: {e}",
                path.display()
            ))
        })?;
        toml::from_str(&text).map_err(|e| {
            Error::Config(format!(
                "in the config file {}: {}",
                path.display(),
                in_words(e.to_string().trim_end())
            ))
        })
    }

    /// The settings as a TOML file that [`from_file`](Self::from_file) reads back.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("settings serialise to TOML")
    }

    /// `self` (the defaults, or a `--config` file's settings) under the flags typed on the
    /// command line: `flags` is what clap parsed and `matches` says where each value came
    /// from, so a flag overrides the file only when it was given.
    pub fn with_flags(&self, flags: &RunSettings, matches: &ArgMatches) -> Result<RunSettings> {
        let table = |s: &RunSettings| toml::Table::try_from(s).expect("settings serialise to TOML");
        let (mut merged, typed) = (table(self), table(flags));
        let keys = RunSettings::augment_args(clap::Command::new("settings"));
        for key in keys.get_arguments().map(|a| a.get_id().as_str()) {
            if matches.value_source(key) != Some(ValueSource::CommandLine) {
                continue;
            }
            match typed.get(key) {
                Some(value) => merged.insert(key.to_string(), value.clone()),
                // A value the settings leave unwritten (`miner = none`, `precision = f32`) is
                // the default: typing it undoes the file's.
                None => merged.remove(key),
            };
        }
        merged
            .try_into()
            .map_err(|e: toml::de::Error| Error::Config(in_words(e.message())))
    }

    /// Sets `key` from its written value (`0.5`, `1e-3`, `triplet`), typed as a config file
    /// types it; unknown keys and ill-typed values are refused naming the key.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let with = |v: toml::Value| -> std::result::Result<RunSettings, toml::de::Error> {
            let mut table = toml::Table::try_from(&*self).expect("settings serialise to TOML");
            table.insert(key.to_string(), v);
            table.try_into()
        };
        // As a TOML literal if it is one (numbers, booleans, arrays); failing that, as a bare
        // string (`triplet`, or `0x4` for a string-valued key).
        let literal = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"));
        let string = toml::Value::String(value.to_string());
        let outcome = match literal {
            Some(v) => with(v).or_else(|e| with(string).map_err(|_| e)),
            None => with(string),
        };
        *self = outcome
            .map_err(|e| Error::Config(format!("{key} = {value}: {}", in_words(e.message()))))?;
        Ok(())
    }

    /// The engine's configuration, every value parsed and checked.
    pub fn to_train_config(&self) -> Result<TrainConfig> {
        let loss: LossKind = self.loss.parse()?;
        let mut cfg = TrainConfig {
            data: self.data.clone(),
            tower: self.tower_spec()?,
            loss,
            margin: self.margin.map_or(loss.default_margin(), |m| m as f32),
            hyper: self.loss_hyper(loss)?,
            head_lr: self.head_lr.map(|lr| lr as f32),
            xbm: match (self.xbm, self.xbm_warmup) {
                (Some(slots), warmup) => Some(Xbm {
                    slots,
                    warmup: warmup.unwrap_or(0),
                }),
                (None, Some(_)) => {
                    return Err(Error::Config(
                        "xbm_warmup is the warm-up of a cross-batch memory: give --xbm SIZE too"
                            .into(),
                    ));
                }
                (None, None) => None,
            },
            distance: match self
                .distance
                .as_deref()
                .map(|d| d.to_lowercase().replace('_', "-"))
                .as_deref()
            {
                Some("euclidean") => Distance::Euclidean,
                Some("cosine") => Distance::Cosine,
                Some("squared-euclidean") => Distance::SquaredEuclidean,
                Some("l1") => Distance::L1,
                None if loss.uses_classes() => Distance::Cosine,
                None => Distance::Euclidean,
                Some(other) => {
                    return Err(Error::Config(format!(
                        "distance: unknown distance `{other}`: use euclidean, cosine, \
                         squared-euclidean or l1"
                    )));
                }
            },
            normalize: self.normalize_embeddings,
            batch: self.batch,
            pairs: self.pairs,
            positive_fraction: self.positive_fraction,
            miner: Miner::parse_setting(&self.miner)?,
            classes_per_batch: self.classes_per_batch,
            seed: self.seed,
            val_images: self.val_images,
            val_pairs: self.val_pairs,
            test_pairs: self.test_pairs,
            far_targets: self.far.clone(),
            eval_every: self.eval_every,
            pixel_norm: parse_pixel_norm(&self.pixel_norm)?,
            dataset: self.data_options()?,
            augment: Augment {
                rotation_range: self.rotation_range,
                width_shift_range: self.width_shift_range,
                height_shift_range: self.height_shift_range,
                shear_range: self.shear_range,
                zoom_range: self.zoom_range,
                horizontal_flip: self.horizontal_flip,
                fill_mode: self.fill_mode.parse()?,
                crop: self.crop_range()?,
                color: ColorJitter {
                    brightness: self.brightness,
                    contrast: self.contrast,
                    saturation: self.saturation,
                    hue: self.hue,
                    grayscale: self.random_grayscale,
                },
                blur: match self.gaussian_blur {
                    Some(taps) => Some(Blur {
                        taps,
                        sigma: match self.blur_sigma.as_deref() {
                            Some(text) => parse_range("blur_sigma", text)?,
                            None => Blur::SIGMA,
                        },
                    }),
                    None => None,
                },
            },
            precision: self.precision.parse()?,
            freeze: self.freeze.clone(),
            gpu_data_budget: self
                .gpu_data_budget
                .as_deref()
                .map(parse_bytes)
                .transpose()?,
            ..TrainConfig::default()
        };
        cfg.optimizer.kind = OptimizerKind::named(&self.optimizer)?;
        cfg.optimizer.lr = self.lr as f32;
        cfg.optimizer.weight_decay = self.weight_decay as f32;
        cfg.optimizer.schedule = self.schedule.parse::<Schedule>()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The loss's hyper-parameters beside the margin; one given for a loss that has no use
    /// for it is refused, naming the losses that use it.
    fn loss_hyper(&self, loss: LossKind) -> Result<LossHyper> {
        use LossKind::*;
        let given: [(&str, bool, &[LossKind]); 8] = [
            (
                "scale",
                self.scale.is_some(),
                &[ArcFace, SubCenterArcFace, CosFace],
            ),
            (
                "sub_centers",
                self.sub_centers.is_some(),
                &[SubCenterArcFace],
            ),
            (
                "alpha",
                self.alpha.is_some(),
                &[ProxyAnchor, MultiSimilarity],
            ),
            ("beta", self.beta.is_some(), &[MultiSimilarity]),
            ("base", self.base.is_some(), &[MultiSimilarity]),
            ("epsilon", self.epsilon.is_some(), &[MultiSimilarity]),
            ("temperature", self.temperature.is_some(), &[SupCon, NtXent]),
            (
                "head_lr",
                self.head_lr.is_some(),
                &[ArcFace, SubCenterArcFace, CosFace, ProxyAnchor],
            ),
        ];
        for (key, is_given, users) in given {
            if is_given && !users.contains(&loss) {
                let names: Vec<String> = users.iter().map(|l| l.to_string()).collect();
                return Err(Error::Config(format!(
                    "{key} is a hyper-parameter of the {} loss, not of {loss}",
                    names.join(" and ")
                )));
            }
        }
        if self.margin.is_some() && loss.default_margin() == 0.0 {
            return Err(Error::Config(format!(
                "margin: the {loss} loss has no margin (multi-similarity's offset is base)"
            )));
        }
        let defaults = LossHyper::default();
        let positive = |key: &str, v: Option<f64>| -> Result<Option<f32>> {
            match v {
                Some(v) if !(v.is_finite() && v > 0.0) => Err(Error::Config(format!(
                    "{key} must be a positive number, got {v}"
                ))),
                v => Ok(v.map(|v| v as f32)),
            }
        };
        let sub_centers = self.sub_centers.unwrap_or(defaults.sub_centers);
        if sub_centers == 0 {
            return Err(Error::Config(
                "sub_centers must be at least 1, got 0".into(),
            ));
        }
        Ok(LossHyper {
            scale: positive("scale", self.scale)?.unwrap_or(defaults.scale),
            sub_centers,
            alpha: positive("alpha", self.alpha)?,
            beta: positive("beta", self.beta)?.unwrap_or(defaults.beta),
            base: self.base.map_or(defaults.base, |v| v as f32),
            epsilon: self.epsilon.map_or(defaults.epsilon, |v| v as f32),
            temperature: positive("temperature", self.temperature)?,
        })
    }

    /// The random resized crop's ranges, None when it is off.
    fn crop_range(&self) -> Result<Option<CropRange>> {
        if !self.random_resized_crop {
            return Ok(None);
        }
        let pair = |key: &str, text: Option<&str>, default: (f64, f64)| match text {
            Some(text) => parse_range(key, text),
            None => Ok(default),
        };
        let default = CropRange::TORCHVISION;
        Ok(Some(CropRange {
            scale: pair("crop_scale", self.crop_scale.as_deref(), default.scale)?,
            ratio: pair("crop_ratio", self.crop_ratio.as_deref(), default.ratio)?,
        }))
    }

    /// The tower spec, its last dense layer resized to `embedding_dim` if given.
    fn tower_spec(&self) -> Result<TowerSpec> {
        let tower: TowerSpec = self.tower.parse()?;
        match self.embedding_dim {
            Some(dim) => tower.with_embedding_dim(dim),
            None => Ok(tower),
        }
    }

    /// How the dataset is read: image size and colour, unreadable images, held-out classes.
    pub fn data_options(&self) -> Result<DataOptions> {
        Ok(DataOptions {
            image_size: self
                .image_size
                .as_deref()
                .map(parse_image_size)
                .transpose()?,
            color: match self.color.to_lowercase().as_str() {
                "grey" | "gray" => Color::Grey,
                "rgb" => Color::Rgb,
                other => {
                    return Err(Error::Config(format!(
                        "color: unknown colour `{other}`: use grey or rgb"
                    )));
                }
            },
            resize: Resize::parse(&self.resize).ok_or_else(|| {
                Error::Config(format!(
                    "resize: unknown policy `{}`: use {}",
                    self.resize,
                    Resize::NAMES
                ))
            })?,
            on_bad_image: OnBadImage::parse(&self.on_bad_image).ok_or_else(|| {
                Error::Config(format!(
                    "on_bad_image: unknown policy `{}`: use skip (leave the image out with a \
                     warning) or stop",
                    self.on_bad_image.to_lowercase()
                ))
            })?,
            held_out_classes: self.held_out_classes.clone(),
            cache_dir: self.cache_location(),
        })
    }

    /// The folder cache's directory: `cache_dir`, none for `off`, else the user's cache.
    #[cfg(feature = "images")]
    fn cache_location(&self) -> Option<PathBuf> {
        match self.cache_dir.as_deref() {
            Some("off") => None,
            Some(dir) => Some(PathBuf::from(dir)),
            None => crate::data::folder_cache::default_dir(),
        }
    }

    #[cfg(not(feature = "images"))]
    fn cache_location(&self) -> Option<PathBuf> {
        None
    }

    /// What a resumed run must share with the run it continues: every setting but the
    /// budget, which may grow. One JSON line, stored in the checkpoint.
    pub fn fingerprint(&self) -> String {
        let mut value = serde_json::to_value(self).expect("settings serialise to JSON");
        // The budget may grow; where the decoded images are cached, and whether they are
        // resident on the GPU, do not change the run.
        let object = value.as_object_mut().expect("an object");
        object.remove("pairs");
        object.remove("cache_dir");
        object.remove("gpu_data_budget");
        value.to_string()
    }

    /// Reads back a [`fingerprint`](Self::fingerprint) (the budget at its default).
    pub fn from_fingerprint(text: &str) -> Result<RunSettings> {
        serde_json::from_str(text)
            .map_err(|e| Error::Data(format!("the saved run settings are not understood: {e}")))
    }

    /// The settings whose values differ between `self` and `other`, as `key: a → b`.
    pub fn differences(&self, other: &RunSettings) -> Vec<String> {
        let (a, b) = (
            serde_json::to_value(self).expect("JSON"),
            serde_json::to_value(other).expect("JSON"),
        );
        let (a, b) = (
            a.as_object().expect("object"),
            b.as_object().expect("object"),
        );
        let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
        keys.sort();
        keys.dedup();
        let show =
            |v: Option<&serde_json::Value>| v.map_or("(unset)".to_string(), |v| v.to_string());
        keys.into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| format!("{k}: {} → {}", show(a.get(k)), show(b.get(k))))
            .collect()
    }
}

/// serde's type names in a message, in words a user reads.
fn in_words(message: &str) -> String {
    message
        .replace("expected usize", "expected a whole number ≥ 0")
        .replace("expected u64", "expected a whole number ≥ 0")
        .replace("expected f64", "expected a number")
}

#[cfg(test)]
mod tests;
