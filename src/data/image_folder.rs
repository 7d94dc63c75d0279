//! Datasets in torchvision's ImageFolder layout: `DIR/train/<class>/<image>` and
//! `DIR/test/<class>/<image>`, PNG or JPEG, decoded with the `image` crate.
//!
//! Classes are the sorted union of both splits' class directories, so a label means the same
//! class in train and test (torchvision sorts each split's names on its own, which renumbers
//! when a split lacks a class). Every image is resized to one size — the configured one, else
//! the first training image's — and converted to grey or RGB planes, then stored like IDX
//! images (u8, `[count, C, H, W]`), so the rest of the engine does not know the difference.
//!
//! Images are decoded on all cores, and the result is cached (see [`super::folder_cache`]).
//!
//! Images are ordered round-robin over the classes (the first image of each class, then the
//! second of each, …): the validation split is the tail of the training set, and this way the
//! tail holds every class instead of the last class only, with no seed to carry.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use super::dataset::{DataOptions, ImageSet};
use super::folder_cache::{Decoded, FolderCache};
use crate::error::{Error, Result};
use crate::vocab::{Color, OnBadImage};

/// File extensions read as images (case-insensitive); other files are ignored.
const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Reads both splits of the image folder `root`: (train, test, class names, warnings). With
/// `options.cache_dir`, a cache of the same files and settings is read instead of decoding,
/// and a fresh decode is cached.
pub fn read(
    root: &Path,
    options: &DataOptions,
) -> Result<(ImageSet, ImageSet, Vec<String>, Vec<String>)> {
    let listing = Listing::of(root)?;
    let mut warnings = Vec::new();
    let cache = options
        .cache_dir
        .as_deref()
        .map(|dir| FolderCache::new(dir, root, options, &listing.relative_paths(root)));
    let cached = match cache.as_ref().map(FolderCache::load) {
        Some(Ok(found)) => found,
        Some(Err(why)) => {
            warnings.push(format!(
                "the decode cache {} cannot be used ({why}): decoding the images again",
                cache.as_ref().unwrap().path.display()
            ));
            None
        }
        None => None,
    };
    let decoded = match cached {
        Some(decoded) => decoded,
        None => {
            let decoded = decode_folder(root, &listing, options)?;
            if let Some(cache) = &cache
                && let Err(e) = cache.store(&decoded)
            {
                warnings.push(format!(
                    "could not write the decode cache {}: {e}; the next run decodes the images \
                     again (set --cache-dir to a writable directory, or `off`)",
                    cache.path.display()
                ));
            }
            decoded
        }
    };
    for (file, why) in &decoded.skipped {
        warnings.push(format!("skipped {}: {why}", root.join(file).display()));
    }
    Ok((decoded.train, decoded.test, decoded.classes, warnings))
}

/// What a folder holds: its classes and, per split, each class's image files.
struct Listing {
    classes: Vec<String>,
    /// `[train, test]`: per class, its files sorted by name.
    splits: [Vec<Vec<PathBuf>>; 2],
}

impl Listing {
    fn of(root: &Path) -> Result<Listing> {
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
        let files = |split: &Path| {
            classes
                .iter()
                .map(|c| image_files(&split.join(c)))
                .collect::<Result<Vec<_>>>()
        };
        let splits = [files(&train_dir)?, files(&test_dir)?];
        Ok(Listing { classes, splits })
    }

    /// Every image file, relative to `root`.
    fn relative_paths(&self, root: &Path) -> Vec<String> {
        self.splits
            .iter()
            .flatten()
            .flatten()
            .map(|p| {
                p.strip_prefix(root)
                    .unwrap_or(p)
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }
}

/// Decodes both splits on all cores, with a progress bar on a terminal.
fn decode_folder(root: &Path, listing: &Listing, options: &DataOptions) -> Result<Decoded> {
    let total = listing.splits.iter().flatten().map(Vec::len).sum::<usize>();
    let progress = ProgressBar::new(total as u64).with_style(
        ProgressStyle::with_template("decoding {pos}/{len} images {wide_bar} {eta}")
            .expect("a valid template"),
    );
    let mut size = options.image_size;
    let mut skipped = Vec::new();
    let [train, test] = [0, 1].map(|s| {
        let split = root.join(["train", "test"][s]);
        read_split(
            &split,
            &listing.splits[s],
            options,
            &mut size,
            &mut skipped,
            &progress,
        )
    });
    progress.finish_and_clear();
    let skipped = skipped
        .into_iter()
        .map(|(path, why): (PathBuf, String)| {
            let relative = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            (relative.to_string_lossy().into_owned(), why)
        })
        .collect();
    Ok(Decoded {
        train: train?,
        test: test?,
        classes: listing.classes.clone(),
        skipped,
    })
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

/// Decodes one split, round-robin over the classes (`per_class`: each class's files).
/// `size` is fixed by the first image decoded when the options leave it open; the rest are
/// decoded in parallel, and kept or refused in order.
fn read_split(
    split: &Path,
    per_class: &[Vec<PathBuf>],
    options: &DataOptions,
    size: &mut Option<[usize; 2]>,
    skipped: &mut Vec<(PathBuf, String)>,
    progress: &ProgressBar,
) -> Result<ImageSet> {
    let longest = per_class.iter().map(Vec::len).max().unwrap_or(0);
    let order: Vec<(u8, &Path)> = (0..longest)
        .flat_map(|rank| {
            per_class
                .iter()
                .enumerate()
                .filter_map(move |(label, files)| Some((label as u8, files.get(rank)?.as_path())))
        })
        .collect();
    let mut decoded = Vec::with_capacity(order.len());
    // Until an image fixes the size, one at a time.
    while size.is_none() && decoded.len() < order.len() {
        let (_, path) = order[decoded.len()];
        let mut first = None;
        decoded.push(decode(path, options.color, &mut first));
        *size = first;
        progress.inc(1);
    }
    let fixed = *size;
    decoded.par_extend(order[decoded.len()..].par_iter().map(|&(_, path)| {
        let mut size = fixed;
        let pixels = decode(path, options.color, &mut size);
        progress.inc(1);
        pixels
    }));
    let channels = options.color.channels();
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for (&(label, path), pixels) in order.iter().zip(decoded) {
        match pixels {
            Ok(pixels) => {
                images.extend_from_slice(&pixels);
                labels.push(label);
            }
            Err(why) => match options.on_bad_image {
                OnBadImage::Skip => skipped.push((path.to_path_buf(), why)),
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
    let no_image = || {
        Error::Data(format!(
            "{} holds no readable .png or .jpg image in its class directories (<class>/<image>)",
            split.display()
        ))
    };
    let Some([height, width]) = *size else {
        return Err(no_image());
    };
    if labels.is_empty() {
        return Err(no_image());
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
