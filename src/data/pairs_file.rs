//! Evaluation pairs named in a file: LFW's `pairs.txt` or a plain CSV, each pair two image
//! files and whether they show the same identity.
//!
//! LFW's format (Huang et al. 2007, "Labeled Faces in the Wild"): a header `FOLDS N` (or just
//! `N`, as `pairsDevTrain.txt`: one fold), then per fold N Same lines `name i j` and N
//! Different lines `name1 i name2 j`, fields separated by tabs or spaces; image `i` of `name`
//! is `<images>/<name>/<name>_<iiii>.<ext>` (four digits) with any extension the image
//! reader takes. The CSV has one pair a line, `path_a,path_b,same|different`, paths relative
//! to the images directory (or absolute), an optional header line `path_a,path_b,label`,
//! blank lines and `#` comments ignored; it has no folds of its own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::vocab::PairLabel;

/// Extensions an LFW name may take, tried in this order.
const EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "JPG", "JPEG", "PNG"];

/// The pairs of a file: each pair's two images (indices into `images`), its label (when the
/// file gives labels), and its fold when the file has folds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairList {
    /// Every image the pairs name, once, in order of first use.
    pub images: Vec<PathBuf>,
    pub a: Vec<u32>,
    pub b: Vec<u32>,
    pub labels: Vec<PairLabel>,
    /// The fold of each pair (LFW files); empty for a CSV.
    pub folds: Vec<usize>,
    /// How many folds the file has (0 for a CSV).
    pub fold_count: usize,
}

impl PairList {
    pub fn len(&self) -> usize {
        self.a.len()
    }

    pub fn is_empty(&self) -> bool {
        self.a.is_empty()
    }

    /// The given pairs of images, unlabelled, each image once in `images`.
    pub fn of_paths(pairs: impl IntoIterator<Item = (PathBuf, PathBuf)>) -> PairList {
        let (mut list, mut index) = (PairList::empty(0), HashMap::new());
        for (a, b) in pairs {
            list.add(&mut index, a, b, None);
        }
        list
    }

    fn empty(fold_count: usize) -> PairList {
        PairList {
            images: Vec::new(),
            a: Vec::new(),
            b: Vec::new(),
            labels: Vec::new(),
            folds: Vec::new(),
            fold_count,
        }
    }

    /// Adds a pair (with its label, if the file gives one); `index` maps each image already
    /// named to its index.
    fn add(
        &mut self,
        index: &mut HashMap<PathBuf, u32>,
        a: PathBuf,
        b: PathBuf,
        label: Option<PairLabel>,
    ) {
        let mut id = |p: PathBuf| {
            *index.entry(p.clone()).or_insert_with(|| {
                self.images.push(p);
                self.images.len() as u32 - 1
            })
        };
        let (a, b) = (id(a), id(b));
        self.a.push(a);
        self.b.push(b);
        self.labels.extend(label);
    }
}

/// Reads the pairs of `path` (a `.csv` as CSV, anything else as LFW's format), resolving
/// their images under `images`. Errors name the file and line: a malformed line, a count that
/// disagrees with the header, an image that does not exist.
pub fn read(path: &Path, images: &Path) -> Result<PairList> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Data(format!(
            "cannot read the pairs file {}: {e}",
            path.display()
        ))
    })?;
    let csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let list = if csv {
        parse_csv(&text, path, images, true)?
    } else {
        parse_lfw(&text, path, images)?
    };
    if list.is_empty() {
        return Err(Error::Data(format!("{} names no pair", path.display())));
    }
    for label in [PairLabel::Same, PairLabel::Different] {
        if !list.labels.contains(&label) {
            return Err(Error::Data(format!(
                "{} has no {label:?} pair: verification needs both kinds",
                path.display()
            )));
        }
    }
    Ok(list)
}

/// The pairs of a CSV of `path_a,path_b` lines, to compare without labels: paths relative
/// to the file's folder (or absolute), an optional header `path_a,path_b`, blank lines and
/// `#` comments ignored. `labels` is left empty.
pub fn read_unlabelled(path: &Path) -> Result<PairList> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Data(format!(
            "cannot read the pairs file {}: {e}",
            path.display()
        ))
    })?;
    let base = path.parent().unwrap_or(Path::new(""));
    let list = parse_csv(&text, path, base, false)?;
    if list.is_empty() {
        return Err(Error::Data(format!("{} names no pair", path.display())));
    }
    Ok(list)
}

fn line_error(path: &Path, line: usize, why: impl std::fmt::Display) -> Error {
    Error::Data(format!("{} line {line}: {why}", path.display()))
}

fn parse_lfw(text: &str, path: &Path, images: &Path) -> Result<PairList> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty());
    let (first, header) = lines
        .next()
        .ok_or_else(|| Error::Data(format!("{} is empty", path.display())))?;
    let numbers: Vec<usize> = header
        .split_whitespace()
        .map(|w| w.parse())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| {
            line_error(
                path,
                first,
                format!(
                    "`{header}` is not LFW's header `FOLDS N` (or `N`); a CSV of \
                     path_a,path_b,same|different needs the .csv extension"
                ),
            )
        })?;
    let (folds, per) = match numbers[..] {
        [n] => (1, n),
        [f, n] => (f, n),
        _ => {
            return Err(line_error(
                path,
                first,
                format!("`{header}` is not LFW's header `FOLDS N` (or `N`)"),
            ));
        }
    };
    let (mut list, mut index) = (PairList::empty(folds), HashMap::new());
    let want = folds * 2 * per;
    for (k, (line, text)) in lines.enumerate() {
        if k >= want {
            return Err(line_error(
                path,
                line,
                format!(
                    "the header promises {folds} fold(s) of {per} + {per} pairs ({want} lines), and this is one more"
                ),
            ));
        }
        let (fold, same) = (k / (2 * per), k % (2 * per) < per);
        let fields: Vec<&str> = text.split_whitespace().collect();
        let number = |s: &str| {
            s.parse::<u32>()
                .map_err(|_| line_error(path, line, format!("`{s}` is not an image number")))
        };
        let (a, b, label) = match (same, &fields[..]) {
            (true, [name, i, j]) => (
                lfw_image(images, name, number(i)?),
                lfw_image(images, name, number(j)?),
                PairLabel::Same,
            ),
            (false, [name1, i, name2, j]) => (
                lfw_image(images, name1, number(i)?),
                lfw_image(images, name2, number(j)?),
                PairLabel::Different,
            ),
            _ => {
                let expected = if same {
                    "a Same pair `name i j`"
                } else {
                    "a Different pair `name1 i name2 j`"
                };
                return Err(line_error(
                    path,
                    line,
                    format!(
                        "`{text}`: expected {expected} here (fold {} of {folds}, {per} Same then {per} Different lines each)",
                        fold + 1
                    ),
                ));
            }
        };
        let (a, b) = (
            a.map_err(|why| line_error(path, line, why))?,
            b.map_err(|why| line_error(path, line, why))?,
        );
        list.add(&mut index, a, b, Some(label));
        list.folds.push(fold);
    }
    if list.len() < want {
        return Err(Error::Data(format!(
            "{}: the header promises {folds} fold(s) of {per} + {per} pairs ({want} lines), but \
             {} follow",
            path.display(),
            list.len()
        )));
    }
    Ok(list)
}

/// `<images>/<name>/<name>_<n:04>.<ext>` for the first extension that exists.
fn lfw_image(images: &Path, name: &str, n: u32) -> std::result::Result<PathBuf, String> {
    let stem = images.join(name).join(format!("{name}_{n:04}"));
    EXTENSIONS
        .iter()
        .map(|ext| stem.with_extension(ext))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("no image {}.jpg (or .jpeg, .png)", stem.display()))
}

/// A CSV's pairs: `path_a,path_b,same|different` lines, or `path_a,path_b` when not
/// `labelled`.
fn parse_csv(text: &str, path: &Path, images: &Path, labelled: bool) -> Result<PairList> {
    let (mut list, mut index) = (PairList::empty(0), HashMap::new());
    let (header, form): (&[&str], _) = if labelled {
        (
            &["path_a", "path_b", "label"],
            "path_a,path_b,same|different",
        )
    } else {
        (&["path_a", "path_b"], "path_a,path_b")
    };
    for (i, raw) in text.lines().enumerate() {
        let (line, text) = (i + 1, raw.trim());
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = text.split(',').map(str::trim).collect();
        if list.is_empty()
            && fields
                .iter()
                .map(|f| f.to_lowercase())
                .eq(header.iter().copied())
        {
            continue;
        }
        if fields.len() != header.len() {
            return Err(line_error(path, line, format!("`{text}` is not {form}")));
        }
        let label = if labelled {
            match fields[2].to_lowercase().as_str() {
                "same" => Some(PairLabel::Same),
                "different" => Some(PairLabel::Different),
                other => {
                    return Err(line_error(
                        path,
                        line,
                        format!("the label `{other}` is neither same nor different"),
                    ));
                }
            }
        } else {
            None
        };
        let resolve = |p: &str| {
            let full = images.join(p);
            if full.is_file() {
                Ok(full)
            } else {
                Err(line_error(
                    path,
                    line,
                    format!("no image {}", full.display()),
                ))
            }
        };
        let (a, b) = (resolve(fields[0])?, resolve(fields[1])?);
        list.add(&mut index, a, b, label);
    }
    Ok(list)
}
