//! Datasets on the host: finding the files, loading them, checking that they agree, and
//! holding out the validation split. A dataset directory holds either the four IDX files
//! of the MNIST family (any image size) or, with the `images` feature, images per class in
//! torchvision's ImageFolder layout (`train/<class>/*.png|jpg`, `test/<class>/…`; see
//! [`super::image_folder`]).
//!
//! The split follows the PyTorch reference exactly: validation is the LAST
//! `min(5000, train/10)` training images (or `--val N`), removed from training, so the
//! verification threshold can be chosen on images the model never trained on and the
//! test set is never looked at for a decision. Taking the tail rather than a random subset
//! keeps the split a pure function of the files, with no seed to carry around.
//!
//! Discovery order: an explicit directory, then `$SIAMESE_DATA`, then the Debian
//! package's directory. Each file may be gzip'd or raw under the usual names; the
//! error when nothing is found says how to install the data, because that is the first
//! thing a new user hits.

use std::path::{Path, PathBuf};

use super::idx::{IdxArray, read_idx};
use super::images::{DataOptions, ImageSet};
use crate::error::{Error, Result};
use crate::vocab::Color;

/// Where the Debian package `dataset-fashion-mnist` installs the files.
pub const DEFAULT_DATA_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The environment variable naming a data directory when no explicit one is given.
pub const DATA_ENV: &str = "SIAMESE_DATA";

/// The four files, by their usual (uncompressed) names; each may also carry `.gz`.
pub const FILES: [&str; 4] = [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS];
const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";

/// Most validation images held out by default (the reference's `min(5000, len/10)`).
pub const DEFAULT_VAL_MAX: usize = 5000;

/// Training (validation held out), validation and test sets, and where they came from.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub root: PathBuf,
    pub train: ImageSet,
    pub val: ImageSet,
    pub test: ImageSet,
    /// The class name of each label of `train` and `val`, and of `test` (they differ when
    /// classes are held out; IDX classes are named by their number).
    pub train_classes: Vec<String>,
    pub test_classes: Vec<String>,
    /// What the user should know about the data that is not an error (skipped images).
    pub warnings: Vec<String>,
}

/// The path of `name` in `dir`, raw preferred over `.gz` (a user who unpacked the files
/// meant them to be read), or `None` if neither exists.
fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    [name.to_string(), format!("{name}.gz")]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// The names among [`FILES`] that `dir` lacks in both forms.
fn missing_files(dir: &Path) -> Vec<&'static str> {
    FILES
        .iter()
        .copied()
        .filter(|n| find_file(dir, n).is_none())
        .collect()
}

/// Whether `dir` has the ImageFolder layout: `train/` and `test/` directories.
fn is_image_folder(dir: &Path) -> bool {
    dir.join("train").is_dir() && dir.join("test").is_dir()
}

fn install_advice() -> String {
    format!(
        "Install Fashion-MNIST with `apt-get install dataset-fashion-mnist` (Debian package; \
         files under {DEFAULT_DATA_DIR}), or pass --data DIR / set {DATA_ENV}=DIR to a \
         directory holding either train/<class>/<image>.png|jpg and test/<class>/… \
         (ImageFolder layout) or {} (each raw or .gz)",
        FILES
            .iter()
            .map(|f| format!("{f}(.gz)"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Finds the data directory: `explicit` if given, else `$SIAMESE_DATA` if set, else
/// [`DEFAULT_DATA_DIR`]. The chosen directory must hold all four IDX files or `train/` and
/// `test/` directories (an image folder); if it does not, the error lists the missing files
/// and says how to install the data. A directory named
/// explicitly or by the environment is never silently replaced by the default.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
    let (dir, source) = match explicit {
        Some(p) => (p.to_path_buf(), "given with --data".to_string()),
        None => match std::env::var_os(DATA_ENV) {
            Some(v) if !v.is_empty() => (PathBuf::from(v), format!("named by ${DATA_ENV}")),
            _ => (
                PathBuf::from(DEFAULT_DATA_DIR),
                format!("the default; neither --data nor ${DATA_ENV} was given"),
            ),
        },
    };
    if !dir.is_dir() {
        return Err(Error::Data(format!(
            "no dataset at {} ({source}): the directory does not exist. {}",
            dir.display(),
            install_advice()
        )));
    }
    let missing = missing_files(&dir);
    if !missing.is_empty() && !is_image_folder(&dir) {
        return Err(Error::Data(format!(
            "the dataset directory {} ({source}) lacks {}. {}",
            dir.display(),
            missing.join(", "),
            install_advice()
        )));
    }
    Ok(dir)
}

/// Reads one image file and its label file, checking ranks and counts.
fn read_pair(dir: &Path, images: &str, labels: &str) -> Result<ImageSet> {
    // locate() has checked that the files exist; a file removed since then still gets a
    // clear message from read_idx.
    let ipath = find_file(dir, images).unwrap_or_else(|| dir.join(images));
    let lpath = find_file(dir, labels).unwrap_or_else(|| dir.join(labels));
    let IdxArray { dims, data } = read_idx(&ipath)?;
    let &[count, height, width] = dims.as_slice() else {
        return Err(Error::Data(format!(
            "{}: expected a 3-D image array [count, height, width], found {} dimensions {dims:?}; \
             is a label file in its place?",
            ipath.display(),
            dims.len()
        )));
    };
    let lab = read_idx(&lpath)?;
    let &[nlabels] = lab.dims.as_slice() else {
        return Err(Error::Data(format!(
            "{}: expected a 1-D label array [count], found {} dimensions {:?}; is an image \
             file in its place?",
            lpath.display(),
            lab.dims.len(),
            lab.dims
        )));
    };
    if nlabels != count {
        return Err(Error::Data(format!(
            "{} holds {count} images but {} holds {nlabels} labels; the two must come from the \
             same release of the dataset. Replace both files from one source.",
            ipath.display(),
            lpath.display()
        )));
    }
    if count == 0 || height == 0 || width == 0 {
        return Err(Error::Data(format!(
            "{}: holds no pixels (dimensions {dims:?}); a dataset needs images of at least 1x1",
            ipath.display()
        )));
    }
    Ok(ImageSet {
        images: data,
        labels: lab.data,
        count,
        channels: 1,
        height,
        width,
    })
}

/// The default number of validation images for `train` training images: the reference's
/// `min(5000, train / 10)`.
pub fn default_val(train: usize) -> usize {
    DEFAULT_VAL_MAX.min(train / 10)
}

/// [`load_with`] with the default options.
pub fn load(explicit: Option<&Path>, val: Option<usize>) -> Result<Dataset> {
    load_with(explicit, val, &DataOptions::default())
}

/// Loads the dataset found by [`locate`] (IDX files, else an image folder), holds out the
/// classes `options` names, then holds out the last `val.unwrap_or(min(5000, train/10))`
/// training images as validation.
///
/// Errors: files missing, corrupt or truncated; images not 3-D or labels not 1-D; image
/// and label counts that differ; train and test images of different sizes; options that do
/// not apply to the data; held-out classes that do not exist or leave fewer than 2 classes
/// on a side; a validation size of 0 (the threshold must be chosen on validation) or not
/// smaller than the training set.
pub fn load_with(
    explicit: Option<&Path>,
    val: Option<usize>,
    options: &DataOptions,
) -> Result<Dataset> {
    let root = locate(explicit)?;
    let (full, test, classes, warnings) = if missing_files(&root).is_empty() {
        let (full, test) = read_idx_sets(&root, options)?;
        let classes = (0..full.num_classes().max(test.num_classes()))
            .map(|c| c.to_string())
            .collect();
        (full, test, classes, Vec::new())
    } else {
        read_folder_sets(&root, options)?
    };
    let (full, test, train_classes, test_classes) = hold_out(full, test, classes, options, &root)?;
    let mut warnings = warnings;
    warnings.extend(check_class_sizes(&full, &train_classes, &root)?);
    let v = val.unwrap_or_else(|| default_val(full.count));
    if v == 0 {
        return Err(Error::Config(format!(
            "a validation set of 0 images (from {} training images): the verification \
             threshold is chosen on validation, never on test. Ask for at least 1 with --val \
             (default min({DEFAULT_VAL_MAX}, 10% of training)); the training set needs at \
             least 10 images for the default to be non-zero",
            full.count
        )));
    }
    if v >= full.count {
        return Err(Error::Config(format!(
            "a validation set of {v} images leaves none of the {} training images in {} for \
             training; use a smaller --val (default min({DEFAULT_VAL_MAX}, 10% of training))",
            full.count,
            root.display()
        )));
    }
    let (train, val) = full.split_tail(v);
    Ok(Dataset {
        root,
        train,
        val,
        test,
        train_classes,
        test_classes,
        warnings,
    })
}

/// Every training class needs images: a class without any (an empty class directory, or a
/// class only under `test/`) is an error naming it; classes of one image are a warning, since
/// their Same pairs pair an image with itself.
fn check_class_sizes(train: &ImageSet, classes: &[String], root: &Path) -> Result<Vec<String>> {
    let sizes: Vec<usize> = (0..classes.len())
        .map(|c| train.labels.iter().filter(|&&l| l as usize == c).count())
        .collect();
    let named = |n: usize| {
        let names: Vec<&str> = classes
            .iter()
            .zip(&sizes)
            .filter(|&(_, &size)| size == n)
            .map(|(c, _)| c.as_str())
            .collect();
        (names.len(), names.join(", "))
    };
    let (empty, names) = named(0);
    if empty > 0 {
        return Err(Error::Data(format!(
            "the training images of {} hold no image of {empty} class(es): {names}. Every \
             class needs training images (an empty class directory, or a class only under \
             test/, gives none): add images, remove the class, or hold it out with \
             --held-out-classes",
            root.display()
        )));
    }
    let (single, names) = named(1);
    Ok(if single > 0 {
        vec![format!(
            "{single} class(es) of {} have a single training image ({names}): their Same \
             pairs pair that image with itself and teach nothing; they serve as negatives \
             only. Add images of them or remove them",
            root.display()
        )]
    } else {
        Vec::new()
    })
}

/// The training and test IDX files of `root`, checked against each other and `options`.
fn read_idx_sets(root: &Path, options: &DataOptions) -> Result<(ImageSet, ImageSet)> {
    let full = read_pair(root, TRAIN_IMAGES, TRAIN_LABELS)?;
    let test = read_pair(root, TEST_IMAGES, TEST_LABELS)?;
    if (full.height, full.width) != (test.height, test.width) {
        return Err(Error::Data(format!(
            "in {}: training images are {}x{} but test images are {}x{}; the files come from \
             different datasets. Put the four files of one dataset in one directory.",
            root.display(),
            full.height,
            full.width,
            test.height,
            test.width
        )));
    }
    if options.color != Color::Grey {
        return Err(Error::Config(format!(
            "color = rgb: the IDX files in {} hold grey images; rgb applies to image folders",
            root.display()
        )));
    }
    if let Some([h, w]) = options.image_size
        && [h, w] != [full.height, full.width]
    {
        return Err(Error::Config(format!(
            "image_size = {h}x{w}: the IDX files in {} hold {}x{} images, and IDX images \
                 are not resized (that applies to image folders); leave image_size out",
            root.display(),
            full.height,
            full.width
        )));
    }
    Ok((full, test))
}

#[cfg(feature = "images")]
fn read_folder_sets(
    root: &Path,
    options: &DataOptions,
) -> Result<(ImageSet, ImageSet, Vec<String>, Vec<String>)> {
    super::image_folder::read(root, options)
}

#[cfg(not(feature = "images"))]
fn read_folder_sets(
    root: &Path,
    _: &DataOptions,
) -> Result<(ImageSet, ImageSet, Vec<String>, Vec<String>)> {
    Err(Error::Config(format!(
        "{} is an image folder, but this build has no image decoding: build with the \
         `images` feature (on by default)",
        root.display()
    )))
}

/// Splits the classes as `options.held_out_classes` says: training keeps the others,
/// test keeps those. Returns both sets and the class names of each.
fn hold_out(
    mut train: ImageSet,
    mut test: ImageSet,
    classes: Vec<String>,
    options: &DataOptions,
    root: &Path,
) -> Result<(ImageSet, ImageSet, Vec<String>, Vec<String>)> {
    if options.held_out_classes.is_empty() {
        return Ok((train, test, classes.clone(), classes));
    }
    let mut held = Vec::new();
    for name in &options.held_out_classes {
        match classes.iter().position(|c| c == name) {
            Some(c) => held.push(c as u8),
            None => {
                return Err(Error::Config(format!(
                    "held_out_classes: no class `{name}` in {}; its classes are {}",
                    root.display(),
                    classes.join(", ")
                )));
            }
        }
    }
    let name = |old: Vec<u8>| {
        old.iter()
            .map(|&c| classes[c as usize].clone())
            .collect::<Vec<_>>()
    };
    let train_classes = name(train.retain_classes(|c| !held.contains(&c)));
    let test_classes = name(test.retain_classes(|c| held.contains(&c)));
    for (split, kept) in [("training", &train_classes), ("test", &test_classes)] {
        if kept.len() < 2 {
            return Err(Error::Config(format!(
                "held_out_classes = [{}] leaves the {split} split of {} with {} class(es) \
                 ({}); pairs need at least 2 classes on each side",
                options.held_out_classes.join(", "),
                root.display(),
                kept.len(),
                kept.join(", ")
            )));
        }
    }
    Ok((train, test, train_classes, test_classes))
}
