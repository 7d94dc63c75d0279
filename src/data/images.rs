//! The images a dataset holds in host memory, and how a dataset is read: the types every
//! reader (IDX files, image folders, their cache) fills and the rest of the engine takes.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::vocab::{Color, OnBadImage, Resize};

/// u8 images (grey, or RGB as planes) with their class labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSet {
    /// Row-major `[count, channels, height, width]`.
    pub images: Vec<u8>,
    /// One class label per image.
    pub labels: Vec<u8>,
    pub count: usize,
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ImageSet {
    /// Builds a set from raw parts, checking that the lengths agree.
    pub fn new(images: Vec<u8>, labels: Vec<u8>, height: usize, width: usize) -> Result<Self> {
        let count = labels.len();
        if images.len() != count * height * width {
            return Err(Error::Config(format!(
                "ImageSet::new: {} labels of {height}x{width} images need {} pixel bytes, \
                 got {}",
                count,
                count * height * width,
                images.len()
            )));
        }
        Ok(ImageSet {
            images,
            labels,
            count,
            channels: 1,
            height,
            width,
        })
    }

    /// Bytes per image: channels × height × width.
    pub fn pixels(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Pixels of image `i`, row-major `[channels, height, width]`. Panics if `i >= len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.pixels();
        &self.images[i * n..(i + 1) * n]
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Largest label + 1 (0 for an empty set). Labels are used as class indices directly,
    /// as the reference does, so a class absent from this set still counts if a higher
    /// one is present.
    pub fn num_classes(&self) -> usize {
        num_classes(&self.labels)
    }

    /// Image indices of each class `0..num_classes()`, ascending.
    pub fn by_class(&self) -> Vec<Vec<u32>> {
        by_class(&self.labels)
    }

    /// Splits off the LAST `n` images as the second set (the first keeps the rest, in
    /// order). Panics if `n > len()`; [`load`] checks its validation size first.
    pub fn split_tail(mut self, n: usize) -> (ImageSet, ImageSet) {
        assert!(
            n <= self.count,
            "split_tail: {n} images asked of a set of {}",
            self.count
        );
        let keep = self.count - n;
        let pixels = self.pixels();
        let tail = ImageSet {
            images: self.images.split_off(keep * pixels),
            labels: self.labels.split_off(keep),
            count: n,
            channels: self.channels,
            height: self.height,
            width: self.width,
        };
        self.count = keep;
        (self, tail)
    }

    /// Keeps the images whose label `keep` accepts, relabelled densely in ascending order of
    /// their old labels (the samplers need classes `0..k` with no gaps); returns the old
    /// label of each new one.
    pub fn retain_classes(&mut self, keep: impl Fn(u8) -> bool) -> Vec<u8> {
        let old: Vec<u8> = (0..self.num_classes())
            .map(|c| c as u8)
            .filter(|&c| keep(c) && self.labels.contains(&c))
            .collect();
        let pixels = self.pixels();
        let (mut images, mut labels) = (Vec::new(), Vec::new());
        for (i, &l) in self.labels.iter().enumerate() {
            if let Some(new) = old.iter().position(|&c| c == l) {
                images.extend_from_slice(&self.images[i * pixels..(i + 1) * pixels]);
                labels.push(new as u8);
            }
        }
        self.count = labels.len();
        self.images = images;
        self.labels = labels;
        old
    }
}

/// Largest label + 1, 0 for no labels.
pub(crate) fn num_classes(labels: &[u8]) -> usize {
    labels.iter().max().map_or(0, |&m| m as usize + 1)
}

/// Indices of each class `0..num_classes(labels)`, ascending.
pub(crate) fn by_class(labels: &[u8]) -> Vec<Vec<u32>> {
    let mut classes = vec![Vec::new(); num_classes(labels)];
    for (i, &c) in labels.iter().enumerate() {
        classes[c as usize].push(i as u32);
    }
    classes
}

/// How a dataset is read, beyond its directory and the validation size.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataOptions {
    /// `[height, width]` that folder images are resized to (default: the first training
    /// image's size). IDX images keep their size: a different one here is an error.
    pub image_size: Option<[usize; 2]>,
    pub color: Color,
    /// How folder images of another size are brought to `image_size`.
    pub resize: Resize,
    pub on_bad_image: OnBadImage,
    /// Classes left out of training and validation; the test split keeps only these, so the
    /// model is tested on classes it never saw (the one-shot protocol). Empty: all classes
    /// everywhere. IDX classes are named by their label number.
    pub held_out_classes: Vec<String>,
    /// Where decoded image folders are cached (see `folder_cache`); None: not cached.
    pub cache_dir: Option<PathBuf>,
}
