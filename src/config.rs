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

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::augment::Augment;
use crate::error::{Error, Result};
use crate::nn::spec::{Layer, REFERENCE_TOWER};
use crate::optim::{OptimizerKind, Schedule};
use crate::train::TrainConfig;
use crate::vocab::Distance;
use crate::vocab::Miner;
use crate::vocab::PixelNorm;
use crate::vocab::Precision;
use crate::vocab::{Color, OnBadImage};

/// The settings of a run, as written. `Default` is the reference recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSettings {
    /// Dataset directory (relative paths are relative to the working directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    pub pairs: usize,
    pub batch: usize,
    pub lr: f64,
    pub margin: f64,
    pub loss: String,
    pub distance: String,
    pub normalize_embeddings: bool,
    pub tower: String,
    /// Width of the tower's last dense layer (the embedding), replacing the spec's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding_dim: Option<usize>,
    pub optimizer: String,
    pub weight_decay: f64,
    pub schedule: String,
    pub positive_fraction: f64,
    /// Online triplet mining for `loss = "triplet"`: none, batch-all, batch-hard, semi-hard.
    /// Left out of the written settings when none, so runs saved before it existed match.
    #[serde(skip_serializing_if = "is_no_miner")]
    pub miner: String,
    /// P of the P×K batches a miner trains on [default: 10, or all classes if fewer].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classes_per_batch: Option<usize>,
    pub seed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_images: Option<usize>,
    pub val_pairs: usize,
    pub test_pairs: usize,
    pub eval_every: usize,
    pub pixel_norm: String,
    /// `HxW` (or `N` for N×N) that folder images are resized to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_size: Option<String>,
    pub color: String,
    pub on_bad_image: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub held_out_classes: Vec<String>,
    // Augmentation of training images, Keras's `ImageDataGenerator` keys (all 0: off).
    pub rotation_range: f64,
    pub width_shift_range: f64,
    pub height_shift_range: f64,
    pub shear_range: f64,
    pub zoom_range: f64,
    pub horizontal_flip: bool,
    pub fill_mode: String,
    /// f32, or mixed (f16 activations, f32 master weights, dynamic loss scaling). Left out
    /// of the written settings when f32, so runs saved before it existed match.
    #[serde(skip_serializing_if = "is_f32")]
    pub precision: String,
}

impl Default for RunSettings {
    fn default() -> Self {
        let cfg = TrainConfig::default();
        RunSettings {
            data: None,
            pairs: cfg.pairs,
            batch: cfg.batch,
            lr: 1e-3,
            margin: 1.0,
            loss: cfg.loss.to_string(),
            distance: "euclidean".into(),
            normalize_embeddings: false,
            tower: REFERENCE_TOWER.into(),
            embedding_dim: None,
            optimizer: "adam".into(),
            weight_decay: 0.0,
            schedule: "constant".into(),
            positive_fraction: cfg.positive_fraction,
            miner: "none".into(),
            classes_per_batch: None,
            seed: cfg.seed,
            val_images: None,
            val_pairs: cfg.val_pairs,
            test_pairs: cfg.test_pairs,
            eval_every: cfg.eval_every,
            pixel_norm: "unit".into(),
            image_size: None,
            color: "grey".into(),
            on_bad_image: "skip".into(),
            held_out_classes: Vec::new(),
            rotation_range: 0.0,
            width_shift_range: 0.0,
            height_shift_range: 0.0,
            shear_range: 0.0,
            zoom_range: 0.0,
            horizontal_flip: false,
            fill_mode: cfg.augment.fill_mode.to_string(),
            precision: cfg.precision.to_string(),
        }
    }
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
        let mut cfg = TrainConfig {
            data: self.data.clone(),
            ..TrainConfig::default()
        };
        cfg.tower = self.tower.parse()?;
        if let Some(dim) = self.embedding_dim {
            let last_dense = cfg.tower.layers.iter_mut().rev().find_map(|l| match l {
                Layer::Linear { out } => Some(out),
                _ => None,
            });
            match last_dense {
                Some(out) if dim > 0 => *out = dim,
                Some(_) => {
                    return Err(Error::Config(
                        "embedding_dim must be at least 1, got 0".into(),
                    ));
                }
                None => {
                    return Err(Error::Config(format!(
                        "embedding_dim = {dim}: the tower `{}` has no dense layer to resize; \
                         end it with `flatten | dense N` or leave embedding_dim out",
                        self.tower
                    )));
                }
            }
        }
        cfg.loss = self.loss.parse()?;
        cfg.margin = self.margin as f32;
        cfg.distance = match self.distance.to_lowercase().as_str() {
            "euclidean" => Distance::Euclidean,
            "cosine" => Distance::Cosine,
            other => {
                return Err(Error::Config(format!(
                    "distance: unknown distance `{other}`: use euclidean or cosine"
                )));
            }
        };
        cfg.normalize = self.normalize_embeddings;
        cfg.optimizer.kind = OptimizerKind::named(&self.optimizer)?;
        cfg.optimizer.lr = self.lr as f32;
        cfg.optimizer.weight_decay = self.weight_decay as f32;
        cfg.optimizer.schedule = self.schedule.parse::<Schedule>()?;
        cfg.batch = self.batch;
        cfg.pairs = self.pairs;
        cfg.positive_fraction = self.positive_fraction;
        cfg.miner = Miner::parse_setting(&self.miner)?;
        cfg.classes_per_batch = self.classes_per_batch;
        cfg.seed = self.seed;
        cfg.val_images = self.val_images;
        cfg.val_pairs = self.val_pairs;
        cfg.test_pairs = self.test_pairs;
        cfg.eval_every = self.eval_every;
        cfg.pixel_norm = parse_pixel_norm(&self.pixel_norm)?;
        cfg.dataset.image_size = self
            .image_size
            .as_deref()
            .map(parse_image_size)
            .transpose()?;
        cfg.dataset.color = match self.color.to_lowercase().as_str() {
            "grey" | "gray" => Color::Grey,
            "rgb" => Color::Rgb,
            other => {
                return Err(Error::Config(format!(
                    "color: unknown colour `{other}`: use grey or rgb"
                )));
            }
        };
        cfg.dataset.on_bad_image = match self.on_bad_image.to_lowercase().as_str() {
            "skip" => OnBadImage::Skip,
            "stop" => OnBadImage::Stop,
            other => {
                return Err(Error::Config(format!(
                    "on_bad_image: unknown policy `{other}`: use skip (leave the image out with a \
                     warning) or stop"
                )));
            }
        };
        cfg.dataset.held_out_classes = self.held_out_classes.clone();
        cfg.augment = Augment {
            rotation_range: self.rotation_range,
            width_shift_range: self.width_shift_range,
            height_shift_range: self.height_shift_range,
            shear_range: self.shear_range,
            zoom_range: self.zoom_range,
            horizontal_flip: self.horizontal_flip,
            fill_mode: self.fill_mode.parse()?,
        };
        cfg.precision = self.precision.parse()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// What a resumed run must share with the run it continues: every setting but the
    /// budget, which may grow. One JSON line, stored in the checkpoint.
    pub fn fingerprint(&self) -> String {
        let mut value = serde_json::to_value(self).expect("settings serialise to JSON");
        value.as_object_mut().expect("an object").remove("pairs");
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

/// `unit` or `standard:MEAN:STD`.
pub fn parse_pixel_norm(s: &str) -> Result<PixelNorm> {
    let bad = || {
        Error::Config(format!(
            "pixel_norm: unknown pixel normalisation `{s}`: use unit or standard:MEAN:STD (STD > 0)"
        ))
    };
    match s.split(':').collect::<Vec<_>>().as_slice() {
        ["unit"] => Ok(PixelNorm::UNIT),
        ["standard", mean, std] => {
            let (mean, std): (f32, f32) = (
                mean.parse().map_err(|_| bad())?,
                std.parse().map_err(|_| bad())?,
            );
            if std.is_nan() || std <= 0.0 {
                return Err(bad());
            }
            Ok(PixelNorm::standardize(mean, std))
        }
        _ => Err(bad()),
    }
}

/// `HxW`, or `N` for N×N; both at least 1.
pub fn parse_image_size(s: &str) -> Result<[usize; 2]> {
    let bad = || {
        Error::Config(format!(
            "image_size: `{s}` is not a size: use HxW (e.g. 32x32) or N for N×N, each at least 1"
        ))
    };
    let parts: Vec<usize> = s
        .split(['x', 'X', '×'])
        .map(|p| p.trim().parse().map_err(|_| bad()))
        .collect::<Result<_>>()?;
    match *parts.as_slice() {
        [n] if n > 0 => Ok([n, n]),
        [h, w] if h > 0 && w > 0 => Ok([h, w]),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_read_back_from_their_toml_and_their_fingerprint() {
        let mut s = RunSettings {
            held_out_classes: vec!["7".into(), "8".into()],
            image_size: Some("32x24".into()),
            ..RunSettings::default()
        };
        s.set("lr", "3e-4").unwrap();
        s.set("loss", "triplet").unwrap();
        assert_eq!(toml::from_str::<RunSettings>(&s.to_toml()).unwrap(), s);
        let back = RunSettings::from_fingerprint(&s.fingerprint()).unwrap();
        assert_eq!(
            back,
            RunSettings {
                pairs: RunSettings::default().pairs,
                ..s.clone()
            }
        );
        let cfg = s.to_train_config().unwrap();
        assert_eq!(cfg.dataset.image_size, Some([32, 24]));
        assert_eq!(cfg.optimizer.lr, 3e-4);
        assert_eq!(
            RunSettings::default().differences(&s),
            [
                "held_out_classes: (unset) → [\"7\",\"8\"]",
                "image_size: (unset) → \"32x24\"",
                "loss: \"contrastive\" → \"triplet\"",
                "lr: 0.001 → 0.0003",
            ]
        );
    }

    #[test]
    fn augmentation_keys_reach_the_engine_and_are_off_by_default() {
        use crate::vocab::FillMode;
        assert!(
            RunSettings::default()
                .to_train_config()
                .unwrap()
                .augment
                .is_off()
        );
        let mut s = RunSettings::default();
        for (key, value) in [
            ("rotation_range", "10"),
            ("zoom_range", "0.2"),
            ("horizontal_flip", "true"),
            ("fill_mode", "constant"),
        ] {
            s.set(key, value).unwrap();
        }
        assert_eq!(
            s.to_train_config().unwrap().augment,
            Augment {
                rotation_range: 10.0,
                zoom_range: 0.2,
                horizontal_flip: true,
                fill_mode: FillMode::Constant,
                ..Augment::default()
            }
        );
    }

    #[test]
    fn values_out_of_range_are_refused_naming_the_key() {
        let refused = |key: &str, value: &str| {
            let mut s = RunSettings::default();
            match s.set(key, value) {
                Err(e) => e.to_string(),
                Ok(()) => s.to_train_config().unwrap_err().to_string(),
            }
        };
        assert!(refused("image_size", "0x4").contains("image_size: `0x4` is not a size"));
        assert!(refused("color", "cmyk").contains("color: unknown colour `cmyk`"));
        assert!(refused("on_bad_image", "ignore").contains("on_bad_image: unknown policy"));
        assert!(refused("embedding_dim", "0").contains("embedding_dim must be at least 1"));
        assert!(refused("weight_decay", "-1").contains("weight_decay must be a finite number ≥ 0"));
        assert!(refused("pixel_norm", "standard:0.5:0").contains("pixel_norm:"));
        assert!(refused("seed", "-1").starts_with("seed = -1"));
        assert!(refused("zoom_range", "1").contains("zoom_range must be in [0, 1)"));
        assert!(refused("fill_mode", "wrap").contains("fill_mode: unknown fill mode `wrap`"));
        assert!(refused("miner", "hardest").contains("unknown miner `hardest`"));
        assert!(refused("precision", "f16").contains("precision: unknown precision `f16`"));
    }

    #[test]
    fn precision_reads_from_toml_and_f32_is_not_written() {
        let s: RunSettings = toml::from_str("precision = \"mixed\"").unwrap();
        assert_eq!(s.to_train_config().unwrap().precision, Precision::Mixed);
        assert!(s.to_toml().contains("precision = \"mixed\""));
        assert!(!RunSettings::default().to_toml().contains("precision"));
    }

    #[test]
    fn a_miner_reads_from_toml() {
        let s: RunSettings = toml::from_str(
            "loss = \"triplet\"\nminer = \"semi-hard\"\nclasses_per_batch = 8\nbatch = 64",
        )
        .unwrap();
        let cfg = s.to_train_config().unwrap();
        assert_eq!(cfg.miner, Some(crate::vocab::Miner::SemiHard));
        assert_eq!(cfg.classes_per_batch, Some(8));
        assert_eq!(toml::from_str::<RunSettings>(&s.to_toml()).unwrap(), s);
        assert!(!RunSettings::default().to_toml().contains("miner"));
    }
}
