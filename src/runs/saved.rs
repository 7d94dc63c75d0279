//! What a run directory holds, read back: the trained model with the settings and pixel
//! normalisation it was trained with (for `eval` and `embed`), its dataset split as in
//! training, and the state to `--resume` from.

use std::path::{Path, PathBuf};

use crate::checkpoint;
use crate::data::dataset::{self, Dataset};
#[cfg(feature = "images")]
use crate::data::image_folder::{self, DecodedFiles};
use crate::data::images::{DataOptions, ImageSet};
use crate::error::{Error, Result};
use crate::eval::operating_points::Target;
use crate::model::{ModelValues, SiameseModel};
use crate::runs::OPERATING_POINTS_KEY;
use crate::runs::json::{StoredPoint, parse_operating_points};
use crate::settings::RunSettings;
use crate::train::{TrainConfig, TrainingState};
#[cfg(feature = "images")]
use crate::vocab::OnBadImage;
use crate::vocab::{Color, PixelNorm};

/// The weights file of a run directory (or the file itself, when given one).
pub fn model_file(run: &Path) -> PathBuf {
    if run.is_dir() {
        run.join("model.safetensors")
    } else {
        run.to_path_buf()
    }
}

/// A trained model: the model, its values, the pixel normalisation and the settings it was
/// trained with.
#[derive(Clone)]
pub struct SavedRun {
    pub model: SiameseModel,
    pub values: ModelValues,
    pub norm: PixelNorm,
    pub settings: RunSettings,
    /// The thresholds stored at the end of training (none for weights from elsewhere, or a
    /// run saved before it finished).
    pub operating_points: Vec<StoredPoint>,
}

impl SavedRun {
    /// The model of a run directory (or of its model.safetensors).
    pub fn load(run: &Path) -> Result<SavedRun> {
        let (model, values, meta) = checkpoint::load_model(&model_file(run))?;
        let meta_f32 = |key: &str, default: f32| {
            meta.get(key)
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let norm = PixelNorm {
            shift: meta_f32("pixel_shift", 0.0),
            scale: meta_f32("pixel_scale", 1.0),
        };
        let settings = match meta.get("config") {
            Some(text) => RunSettings::from_fingerprint(text)?,
            None => RunSettings::default(),
        };
        let operating_points = match meta.get(OPERATING_POINTS_KEY) {
            Some(text) => parse_operating_points(text).ok_or_else(|| {
                Error::Data(format!(
                    "{}: metadata `{OPERATING_POINTS_KEY}` is not a list of operating points",
                    model_file(run).display()
                ))
            })?,
            None => Vec::new(),
        };
        Ok(SavedRun {
            model,
            values,
            norm,
            settings,
            operating_points,
        })
    }

    /// A model that was not trained here: the tower and data options of `settings`, for
    /// images of `input` (`[C, H, W]`), its weights from `settings.init_from` (a PyTorch
    /// `state_dict` in safetensors); what was loaded goes to `note`.
    pub fn from_weights(
        settings: RunSettings,
        input: [usize; 3],
        note: &mut dyn FnMut(&str),
    ) -> Result<SavedRun> {
        let Some(path) = settings.init_from.clone() else {
            return Err(Error::Config(
                "a model without a checkpoint needs its weights: give --init-from FILE.safetensors"
                    .into(),
            ));
        };
        let cfg = settings.to_train_config()?;
        // Weights from elsewhere embed: no class head is built (0 classes).
        let model = SiameseModel::new(cfg.model_config(input, 0))?;
        let mut values = ModelValues::init(&model, cfg.seed);
        let loaded =
            checkpoint::init_from(&path, &model, &mut values, settings.init_allow_mismatch)?;
        note(&format!("--init-from {}:\n{loaded}", path.display()));
        Ok(SavedRun {
            model,
            values,
            norm: cfg.pixel_norm,
            settings,
            operating_points: Vec::new(),
        })
    }

    /// What identifies this model's embeddings: a CRC-32 of its configuration, input,
    /// pixel normalisation, weights and running statistics, with the parameter count
    /// (`crc32:1a2b3c4d/224256`). Another model — or the same one trained further — has
    /// another, so a gallery index refuses its queries.
    pub fn fingerprint(&self) -> String {
        let mut crc = crc32fast::Hasher::new();
        let cfg = &self.model.config;
        crc.update(
            format!(
                "{}|{:?}|{:?}|{}|{}|{}",
                cfg.tower, cfg.input, cfg.distance, cfg.normalize, self.norm.shift, self.norm.scale
            )
            .as_bytes(),
        );
        crc.update(bytemuck::cast_slice(&self.values.params));
        crc.update(bytemuck::cast_slice(&self.values.running));
        format!("crc32:{:08x}/{}", crc.finalize(), self.values.params.len())
    }

    /// How images are read for this model: the run's settings, in the colour of the model's
    /// input (a run saved without settings reads as grey).
    pub fn read_options(&self) -> Result<DataOptions> {
        let [c, _, _] = self.model.config.input;
        Ok(DataOptions {
            color: if c == 3 { Color::Rgb } else { Color::Grey },
            ..self.settings.data_options()?
        })
    }

    /// Decodes `paths` as this model's input (the run's colour, size and resize policy);
    /// an unreadable image is left out (`on_bad_image` skip: in the result's `skipped`) or an
    /// error naming it (stop). Each image brought to the input — resized, or its colour
    /// converted — is said through `note`.
    #[cfg(feature = "images")]
    pub fn read_images(
        &self,
        paths: &[PathBuf],
        on_bad_image: OnBadImage,
        note: &mut dyn FnMut(&str),
    ) -> Result<DecodedFiles> {
        let [c, h, w] = self.model.config.input;
        let options = DataOptions {
            on_bad_image,
            ..self.read_options()?
        };
        let files = image_folder::decode_files(paths, &options, [h, w])?;
        for &(i, source) in &files.kept {
            let [h0, w0] = source.size;
            let mut changes = Vec::new();
            if [h0, w0] != [h, w] {
                changes.push(format!(
                    "resized from {h0}×{w0} to {h}×{w} ({}, the run's resize policy)",
                    self.settings.resize
                ));
            }
            if source.color && c == 1 {
                changes.push("converted to grey (the model takes grey images)".to_string());
            }
            if !changes.is_empty() {
                note(&format!("{}: {}", paths[i].display(), changes.join("; ")));
            }
        }
        Ok(files)
    }

    /// The stored operating point `target` names (`accuracy`, `eer`, `far=RATE`), refused
    /// naming the ones there are.
    pub fn operating_point(&self, target: &str) -> Result<&StoredPoint> {
        let wanted = Target::parse(target)?.to_string();
        if let Some(point) = self.operating_points.iter().find(|p| p.name == wanted) {
            return Ok(point);
        }
        let have: Vec<&str> = self
            .operating_points
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        Err(Error::Config(if have.is_empty() {
            "this model stores no operating points (weights from elsewhere, or a run that did \
             not finish): score it with `siamese eval --checkpoint RUN_DIR --store` first"
                .to_string()
        } else {
            format!(
                "the run stores no `{wanted}` operating point (it has {}); add one with \
                 `siamese eval --checkpoint RUN_DIR --far RATE --store`",
                have.join(", ")
            )
        }))
    }

    /// The dataset the model was trained on (or the one in `data`), split as in training
    /// (`val_images` overriding the run's), its validation and test images checked to fit
    /// the model. Warnings about the data go to `warn`.
    pub fn dataset(
        &self,
        data: Option<&Path>,
        val_images: Option<usize>,
        warn: &mut dyn FnMut(&str),
    ) -> Result<Dataset> {
        let saved = &self.settings;
        let options = self.read_options()?;
        let data = data.or(saved.data.as_deref());
        let sets = dataset::load_with(data, val_images.or(saved.val_images), &options)?;
        for warning in &sets.warnings {
            warn(warning);
        }
        for (set, what) in [(&sets.val, "val"), (&sets.test, "test")] {
            self.check_size(set, what)?;
        }
        Ok(sets)
    }

    /// The images of `set` (the `what` split) must have the model's input shape.
    pub fn check_size(&self, set: &ImageSet, what: &str) -> Result<()> {
        let [c, h, w] = self.model.config.input;
        if (set.channels, set.height, set.width) != (c, h, w) {
            return Err(Error::Config(format!(
                "the model takes {c}×{h}×{w} images (channels×height×width) but the {what} split holds \
                 {}×{}×{}; evaluate it on the dataset it was trained on (--data)",
                set.channels, set.height, set.width
            )));
        }
        Ok(())
    }
}

/// The state to continue from `path`, refused unless it was saved by a run of the same
/// settings (budget aside), naming the settings that differ.
pub fn resume_state(
    path: &Path,
    cfg: &TrainConfig,
    settings: &RunSettings,
) -> Result<TrainingState> {
    let (_, values, meta) = checkpoint::load_model(path)?;
    let weights_only = |what: &str| {
        Error::Config(format!(
            "{} records no {what}: it holds weights only",
            path.display()
        ))
    };
    let saved = match meta.get("config") {
        Some(text) => RunSettings::from_fingerprint(text)?,
        None => return Err(weights_only("run settings")),
    };
    let budgetless = |s: &RunSettings| RunSettings {
        pairs: 0,
        ..s.clone()
    };
    let differences = budgetless(&saved).differences(&budgetless(settings));
    if !differences.is_empty() {
        return Err(Error::Config(format!(
            "{} was trained with other settings; resume with the same ones (only --pairs may \
             change). Saved → now:\n  {}",
            path.display(),
            differences.join("\n  ")
        )));
    }
    let steps_done: usize = meta
        .get("steps_done")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| weights_only("steps_done"))?;
    if steps_done >= cfg.pairs / cfg.batch {
        return Err(Error::Config(format!(
            "{} has already trained {steps_done} steps, all of this budget; give a larger --pairs to train on",
            path.display()
        )));
    }
    let optimizer = checkpoint::load_optimizer_state(path)?;
    Ok(TrainingState {
        values,
        optimizer,
        steps_done,
    })
}
