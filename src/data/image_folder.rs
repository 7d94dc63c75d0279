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

use image::imageops::{self, FilterType};
use image::{DynamicImage, ImageDecoder, RgbImage};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use super::folder_cache::{Decoded, FolderCache};
use super::images::{DataOptions, ImageSet};
use crate::error::{Error, Result};
use crate::vocab::{Color, OnBadImage, Resize};

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
    if let Some(first) = decoded.small.first() {
        let [h, w] = [decoded.train.height, decoded.train.width];
        warnings.push(format!(
            "{} image(s) of {} are under half the {h}×{w} input on a side and were enlarged \
             more than 2× (e.g. {first}): small images blur when enlarged; use a smaller \
             --image-size or larger images",
            decoded.small.len(),
            root.display()
        ));
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
    let mut notes = Notes::default();
    let [train, test] = [0, 1].map(|s| {
        let split = root.join(["train", "test"][s]);
        read_split(
            &split,
            &listing.splits[s],
            options,
            &mut size,
            &mut notes,
            &progress,
        )
    });
    progress.finish_and_clear();
    let relative = |path: &Path| {
        path.strip_prefix(root)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    };
    let skipped = notes
        .skipped
        .iter()
        .map(|(path, why)| (relative(path), why.clone()))
        .collect();
    let small = notes
        .small
        .iter()
        .map(|(path, [h, w])| format!("{} ({w}×{h})", relative(path)))
        .collect();
    Ok(Decoded {
        train: train?,
        test: test?,
        classes: listing.classes.clone(),
        skipped,
        small,
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
        if is_image_file(&path) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Images named one by one (not a folder's splits), decoded as a folder's are.
#[derive(Debug, Default)]
pub struct DecodedFiles {
    /// `[count, C, H, W]` u8 planes of the readable images, in the order given.
    pub pixels: Vec<u8>,
    /// Each decoded image: its index among the paths given, its own `[height, width]`, and
    /// whether it had colour (before conversion to the run's colour and size).
    pub kept: Vec<(usize, Source)>,
    /// The unreadable images (index, why), when `on_bad_image` is skip.
    pub skipped: Vec<(usize, String)>,
}

/// What an image was before it was brought to the model's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    pub size: [usize; 2],
    pub color: bool,
}

/// Decodes `paths` on all cores at `size`, as the folder's images are (colour, resize
/// policy); an unreadable image is left out (`options.on_bad_image` skip) or an error
/// naming it (stop).
pub fn decode_files(
    paths: &[PathBuf],
    options: &DataOptions,
    size: [usize; 2],
) -> Result<DecodedFiles> {
    let progress = ProgressBar::new(paths.len() as u64).with_style(
        ProgressStyle::with_template("decoding {pos}/{len} images {wide_bar} {eta}")
            .expect("a valid template"),
    );
    let decoded: Vec<_> = paths
        .par_iter()
        .map(|path| {
            let pixels = decode(path, options.color, options.resize, &mut Some(size));
            progress.inc(1);
            pixels
        })
        .collect();
    progress.finish_and_clear();
    let mut files = DecodedFiles::default();
    for (i, (path, pixels)) in paths.iter().zip(decoded).enumerate() {
        match (pixels, options.on_bad_image) {
            (Ok((planes, source)), _) => {
                files.pixels.extend_from_slice(&planes);
                files.kept.push((i, source));
            }
            (Err(why), OnBadImage::Skip) => files.skipped.push((i, why)),
            (Err(why), OnBadImage::Stop) => {
                return Err(Error::Data(format!(
                    "cannot read the image {}: {why}",
                    path.display()
                )));
            }
        }
    }
    Ok(files)
}

/// Every image file under `dir`, at any depth, sorted by path (the extensions a folder
/// dataset reads); a tree without one is refused.
pub fn images_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d)
            .map_err(|e| Error::Data(format!("cannot list {}: {e}", d.display())))?;
        for entry in entries {
            let path = entry
                .map_err(|e| Error::Data(format!("cannot list {}: {e}", d.display())))?
                .path();
            if path.is_dir() {
                stack.push(path);
            } else if is_image_file(&path) {
                found.push(path);
            }
        }
    }
    if found.is_empty() {
        return Err(Error::Data(format!(
            "{} holds no .png or .jpg image at any depth",
            dir.display()
        )));
    }
    found.sort();
    Ok(found)
}

/// Whether `path` is a file with an extension the readers take.
fn is_image_file(path: &Path) -> bool {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    path.is_file() && EXTENSIONS.contains(&ext.as_str())
}

/// What decoding noticed: the images left out as unreadable (and why), and those under half
/// the input size on a side (with their `[height, width]`).
#[derive(Default)]
struct Notes {
    skipped: Vec<(PathBuf, String)>,
    small: Vec<(PathBuf, [usize; 2])>,
}

/// Decodes one split, round-robin over the classes (`per_class`: each class's files).
/// `size` is fixed by the first image decoded when the options leave it open; the rest are
/// decoded in parallel, and kept or refused in order.
fn read_split(
    split: &Path,
    per_class: &[Vec<PathBuf>],
    options: &DataOptions,
    size: &mut Option<[usize; 2]>,
    notes: &mut Notes,
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
        decoded.push(decode(path, options.color, options.resize, &mut first));
        *size = first;
        progress.inc(1);
    }
    let fixed = *size;
    decoded.par_extend(order[decoded.len()..].par_iter().map(|&(_, path)| {
        let mut size = fixed;
        let pixels = decode(path, options.color, options.resize, &mut size);
        progress.inc(1);
        pixels
    }));
    let channels = options.color.channels();
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for (&(label, path), pixels) in order.iter().zip(decoded) {
        match pixels {
            Ok((pixels, Source { size: [h0, w0], .. })) => {
                let [h, w] = size.expect("a decoded image fixed the size");
                if 2 * h0 < h || 2 * w0 < w {
                    notes.small.push((path.to_path_buf(), [h0, w0]));
                }
                images.extend_from_slice(&pixels);
                labels.push(label);
            }
            Err(why) => match options.on_bad_image {
                OnBadImage::Skip => notes.skipped.push((path.to_path_buf(), why)),
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

/// One image as `[C, H, W]` u8 planes at `size` (set to the image's own size if unset), and
/// what it was (its own `[height, width]`, whether it had colour):
/// decoded, turned as its EXIF orientation says, converted to 8-bit RGB (see
/// [`to_rgb8`]), brought to `size` as `resize` says, then kept as RGB planes or turned to
/// grey by ITU-R 601-2 luma, L = (19595 R + 38470 G + 7471 B + 2¹⁵) >> 16 (PIL's
/// `convert("L")`, so torchvision's `Grayscale` of the same file gives the same bytes).
fn decode(
    path: &Path,
    color: Color,
    resize: Resize,
    size: &mut Option<[usize; 2]>,
) -> std::result::Result<(Vec<u8>, Source), String> {
    let reader = image::ImageReader::open(path).map_err(|e| e.to_string())?;
    decode_from(reader, (color, resize), size, None)
}

/// An image file's bytes (PNG or JPEG, e.g. from a request) decoded at `size` as a file of
/// the run is ([`decode`]); refused, before it is decoded, when it holds more than
/// `max_pixels` pixels (a small file can hold a huge image) or none.
pub fn decode_bytes(
    bytes: &[u8],
    options: &DataOptions,
    size: [usize; 2],
    max_pixels: u64,
) -> std::result::Result<(Vec<u8>, Source), String> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes));
    decode_from(
        reader,
        (options.color, options.resize),
        &mut Some(size),
        Some(max_pixels),
    )
}

/// [`decode`] from any reader, its pixel count checked against `max_pixels` first.
fn decode_from<R: std::io::BufRead + std::io::Seek>(
    reader: image::ImageReader<R>,
    (color, resize): (Color, Resize),
    size: &mut Option<[usize; 2]>,
    max_pixels: Option<u64>,
) -> std::result::Result<(Vec<u8>, Source), String> {
    let mut decoder = reader
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .into_decoder()
        .map_err(|e| e.to_string())?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(format!("the image is {w}×{h}: it has no pixels"));
    }
    if let Some(max) = max_pixels
        && u64::from(w) * u64::from(h) > max
    {
        return Err(format!(
            "the image is {w}×{h}, over the limit of {max} pixels"
        ));
    }
    let orientation = decoder.orientation().map_err(|e| e.to_string())?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| e.to_string())?;
    img.apply_orientation(orientation);
    let rgb = to_rgb8(&img);
    let source = Source {
        size: [rgb.height() as usize, rgb.width() as usize],
        color: img.color().has_color(),
    };
    let [h, w] = *size.get_or_insert(source.size);
    let rgb = fit(rgb, [h as u32, w as u32], resize);
    let pixels = rgb.into_raw();
    let planes = match color {
        Color::Grey => pixels
            .chunks_exact(3)
            .map(|p| {
                let l = 19595 * p[0] as u32 + 38470 * p[1] as u32 + 7471 * p[2] as u32;
                ((l + 0x8000) >> 16) as u8
            })
            .collect(),
        // Interleaved RGB → three planes, as the tower's first convolution reads them.
        Color::Rgb => (0..3)
            .flat_map(|c| pixels.iter().skip(c).step_by(3).copied())
            .collect(),
    };
    Ok((planes, source))
}

/// Any decoded image as 8-bit RGB: grey replicated to three channels, alpha dropped (as
/// PIL's `convert("RGB")`: composite a transparent image yourself if its background
/// matters), 16-bit channels rounded to 8 bits as round(v / 257) (exact for 8-bit values
/// stored in 16).
fn to_rgb8(img: &DynamicImage) -> RgbImage {
    let wide = img.to_rgb16();
    let (w, h) = wide.dimensions();
    let narrow = wide
        .into_raw()
        .into_iter()
        .map(|v| ((v as u32 + 128) / 257) as u8)
        .collect();
    RgbImage::from_raw(w, h, narrow).expect("three channels per pixel")
}

/// `img` brought to `[height, width]`: stretched, scaled to cover and centre-cropped, or
/// scaled to fit and centred on black. Bilinear (triangle) filtering throughout.
fn fit(img: RgbImage, [height, width]: [u32; 2], resize: Resize) -> RgbImage {
    let (w0, h0) = img.dimensions();
    if (w0, h0) == (width, height) {
        return img;
    }
    let scaled = |scale: f64| {
        let side = |n: u32| ((n as f64 * scale).round() as u32).max(1);
        (side(w0), side(h0))
    };
    let (sx, sy) = (width as f64 / w0 as f64, height as f64 / h0 as f64);
    match resize {
        Resize::Stretch => imageops::resize(&img, width, height, FilterType::Triangle),
        Resize::ShorterSideCenterCrop => {
            let (nw, nh) = scaled(sx.max(sy));
            let (nw, nh) = (nw.max(width), nh.max(height));
            let big = if (nw, nh) == (w0, h0) {
                img
            } else {
                imageops::resize(&img, nw, nh, FilterType::Triangle)
            };
            // torchvision's CenterCrop: the offset rounded, int(round((size − crop) / 2)).
            let (x, y) = (
                ((nw - width) as f64 / 2.0).round() as u32,
                ((nh - height) as f64 / 2.0).round() as u32,
            );
            imageops::crop_imm(&big, x, y, width, height).to_image()
        }
        Resize::Pad => {
            let (nw, nh) = scaled(sx.min(sy));
            let (nw, nh) = (nw.min(width), nh.min(height));
            let small = imageops::resize(&img, nw, nh, FilterType::Triangle);
            let mut canvas = RgbImage::new(width, height);
            let (x, y) = ((width - nw) / 2, (height - nh) / 2);
            imageops::replace(&mut canvas, &small, x as i64, y as i64);
            canvas
        }
    }
}
