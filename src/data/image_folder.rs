//! Datasets in torchvision's ImageFolder layout: `DIR/train/<class>/<image>` and
//! `DIR/test/<class>/<image>`, PNG or JPEG, decoded with the `image` crate.
//!
//! Classes are the sorted union of both splits' class directories, so a label means the same
//! class in train and test (torchvision sorts each split's names on its own, which renumbers
//! when a split lacks a class). Every image is resized to one size — the configured one, else
//! the first training image's — and converted to grey or RGB planes, then stored like IDX
//! images (u8, `[count, C, H, W]`), so the rest of the engine does not know the difference.
//!
//! Images are ordered round-robin over the classes (the first image of each class, then the
//! second of each, …): the validation split is the tail of the training set, and this way the
//! tail holds every class instead of the last class only, with no seed to carry.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;

use super::dataset::{DataOptions, ImageSet};
use crate::error::{Error, Result};
use crate::vocab::{Color, OnBadImage};

/// File extensions read as images (case-insensitive); other files are ignored.
const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Reads both splits of the image folder `root`: (train, test, class names, warnings).
pub fn read(
    root: &Path,
    options: &DataOptions,
) -> Result<(ImageSet, ImageSet, Vec<String>, Vec<String>)> {
    let (train_dir, test_dir) = (root.join("train"), root.join("test"));
    let mut classes = class_dirs(&train_dir)?;
    classes.extend(class_dirs(&test_dir)?);
    classes.sort();
    classes.dedup();
    if classes.len() > 256 {
        return Err(Error::Data(format!(
            "{} has {} classes; labels are stored as u8, so at most 256 are supported",
            root.display(),
            classes.len()
        )));
    }
    let mut warnings = Vec::new();
    let mut size = options.image_size;
    let train = read_split(&train_dir, &classes, options, &mut size, &mut warnings)?;
    let test = read_split(&test_dir, &classes, options, &mut size, &mut warnings)?;
    Ok((train, test, classes, warnings))
}

/// The names of the class directories of one split, sorted.
fn class_dirs(split: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(split)
        .map_err(|e| Error::Data(format!("cannot list {}: {e}", split.display())))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| Error::Data(format!("cannot list {}: {e}", split.display())))?;
        if entry.path().is_dir() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// The image files of one class directory, sorted by name (absent directory: none).
fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::Data(format!("cannot list {}: {e}", dir.display())))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| Error::Data(format!("cannot list {}: {e}", dir.display())))?
            .path();
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if path.is_file() && EXTENSIONS.contains(&ext.as_str()) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Decodes one split, round-robin over `classes`. `size` is fixed by the first image
/// decoded when the options leave it open.
fn read_split(
    split: &Path,
    classes: &[String],
    options: &DataOptions,
    size: &mut Option<[usize; 2]>,
    warnings: &mut Vec<String>,
) -> Result<ImageSet> {
    let per_class = classes
        .iter()
        .map(|c| image_files(&split.join(c)))
        .collect::<Result<Vec<_>>>()?;
    let longest = per_class.iter().map(Vec::len).max().unwrap_or(0);
    let channels = options.color.channels();
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for rank in 0..longest {
        for (label, files) in per_class.iter().enumerate() {
            let Some(path) = files.get(rank) else {
                continue;
            };
            match decode(path, options.color, size) {
                Ok(pixels) => {
                    images.extend_from_slice(&pixels);
                    labels.push(label as u8);
                }
                Err(why) => match options.on_bad_image {
                    OnBadImage::Skip => warnings.push(format!("skipped {}: {why}", path.display())),
                    OnBadImage::Stop => {
                        return Err(Error::Data(format!(
                            "cannot read the image {}: {why}. Replace or delete the file, or \
                             set on_bad_image = \"skip\" (--on-bad-image skip) to leave \
                             unreadable images out with a warning",
                            path.display()
                        )));
                    }
                },
            }
        }
    }
    let Some([height, width]) = *size else {
        return Err(Error::Data(format!(
            "{} holds no readable .png or .jpg image in its class directories (<class>/<image>)",
            split.display()
        )));
    };
    if labels.is_empty() {
        return Err(Error::Data(format!(
            "{} holds no readable .png or .jpg image in its class directories (<class>/<image>)",
            split.display()
        )));
    }
    Ok(ImageSet {
        count: labels.len(),
        images,
        labels,
        channels,
        height,
        width,
    })
}

/// One image as `[C, H, W]` u8 planes at `size` (set to the image's own size if unset).
fn decode(
    path: &Path,
    color: Color,
    size: &mut Option<[usize; 2]>,
) -> std::result::Result<Vec<u8>, String> {
    let img = image::ImageReader::open(path)
        .map_err(|e| e.to_string())?
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .decode()
        .map_err(|e| e.to_string())?;
    let [h, w] = *size.get_or_insert([img.height() as usize, img.width() as usize]);
    let img = if (img.height() as usize, img.width() as usize) == (h, w) {
        img
    } else {
        img.resize_exact(w as u32, h as u32, FilterType::Triangle)
    };
    Ok(match color {
        Color::Grey => img.to_luma8().into_raw(),
        Color::Rgb => {
            // Interleaved RGB → three planes, as the tower's first convolution reads them.
            let rgb = img.to_rgb8().into_raw();
            (0..3)
                .flat_map(|c| rgb.iter().skip(c).step_by(3).copied())
                .collect()
        }
    })
}
