//! The decoded image folder, cached on disk so that a second run of the same data starts in
//! seconds instead of decoding every image again.
//!
//! One file per folder and read settings (`<cache dir>/folders/<key>.cache`, the key a hash
//! of the folder's canonical path, the image size, colour, resize and unreadable-image
//! policy). The
//! file holds a manifest of what it was decoded from — every image's path, size and
//! modification time, and the settings — and is used only when the folder's manifest now is
//! the same, so a changed, added or removed image decodes the folder again and rewrites it.
//! A CRC-32 over the manifest and the pixels detects a corrupt or truncated file, which is
//! then decoded again, never trusted. Files are written to a temporary name and renamed, so
//! an interrupted write leaves the old cache or none.
//!
//! Like `make`, the check trusts size and modification time: a file rewritten with the same
//! size within the file system's time resolution is not noticed.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::images::{DataOptions, ImageSet};

const MAGIC: &[u8; 28] = b"siamese-gpu folder cache v1\n";

/// The default cache directory: `$XDG_CACHE_HOME/siamese-gpu`, else
/// `$HOME/.cache/siamese-gpu`; None when neither variable is set.
pub fn default_dir() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .map(|dir| dir.join("siamese-gpu"))
}

/// A decoded folder: both splits, the class names, the images left out as unreadable (path
/// relative to the folder, and why) and those enlarged more than twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub train: ImageSet,
    pub test: ImageSet,
    pub classes: Vec<String>,
    pub skipped: Vec<(String, String)>,
    /// Images under half the input size on a side (path relative to the folder, and its
    /// size), enlarged more than 2×.
    pub small: Vec<String>,
}

/// The cache file of one folder and read settings, and the manifest it must match.
pub struct FolderCache {
    pub path: PathBuf,
    manifest: Vec<u8>,
}

impl FolderCache {
    /// The cache in `dir` for `root` read with `options`, whose image files (relative to
    /// `root`) are `files`.
    pub fn new(dir: &Path, root: &Path, options: &DataOptions, files: &[String]) -> FolderCache {
        let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
        let settings = format!(
            "root {}\nimage_size {:?}\ncolor {:?}\nresize {:?}\non_bad_image {:?}\n",
            root.display(),
            options.image_size,
            options.color,
            options.resize,
            options.on_bad_image
        );
        let mut manifest = settings.clone().into_bytes();
        for file in files {
            let (len, modified) = std::fs::metadata(root.join(file))
                .map(|m| {
                    let modified = m
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_nanos());
                    (m.len(), modified)
                })
                .unwrap_or((u64::MAX, 0));
            manifest.extend_from_slice(format!("{file}\t{len}\t{modified}\n").as_bytes());
        }
        FolderCache {
            path: dir
                .join("folders")
                .join(format!("{:016x}.cache", fnv1a(settings.as_bytes()))),
            manifest,
        }
    }

    /// The cached folder: None when there is no cache file or it was made from other files;
    /// an error saying what is wrong with a file that cannot be trusted.
    pub fn load(&self) -> Result<Option<Decoded>, String> {
        if !self.path.is_file() {
            return Ok(None);
        }
        let bytes = std::fs::read(&self.path).map_err(|e| e.to_string())?;
        let body = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or("not a siamese-gpu folder cache")?;
        let (body, crc) = body.split_at_checked(body.len().saturating_sub(4)).unwrap();
        let crc = u32::from_le_bytes(crc.try_into().map_err(|_| "truncated")?);
        if crc32fast::hash(body) != crc {
            return Err("its checksum does not match: the file is corrupt or truncated".into());
        }
        let mut r = Reader(body);
        if r.bytes()? != self.manifest.as_slice() {
            return Ok(None);
        }
        let train = r.image_set()?;
        let test = r.image_set()?;
        let classes = r.strings()?;
        let skipped = r.strings()?;
        let small = r.strings()?;
        if !r.0.is_empty() || skipped.len() % 2 != 0 {
            return Err("its contents do not parse".into());
        }
        let skipped = skipped
            .chunks(2)
            .map(|p| (p[0].clone(), p[1].clone()))
            .collect();
        Ok(Some(Decoded {
            train,
            test,
            classes,
            skipped,
            small,
        }))
    }

    /// Writes `decoded` (a temporary file renamed into place).
    pub fn store(&self, decoded: &Decoded) -> std::io::Result<()> {
        let dir = self
            .path
            .parent()
            .expect("the cache file is in a directory");
        std::fs::create_dir_all(dir)?;
        let temporary = self
            .path
            .with_extension(format!("tmp-{}", std::process::id()));
        let written = self.write(&temporary, decoded);
        let renamed = written.and_then(|()| std::fs::rename(&temporary, &self.path));
        if renamed.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
        renamed
    }

    fn write(&self, path: &Path, d: &Decoded) -> std::io::Result<()> {
        let mut body = Vec::new();
        put_bytes(&mut body, &self.manifest);
        for set in [&d.train, &d.test] {
            for n in [set.count, set.channels, set.height, set.width] {
                body.extend_from_slice(&(n as u64).to_le_bytes());
            }
            put_bytes(&mut body, &set.labels);
            put_bytes(&mut body, &set.images);
        }
        put_strings(&mut body, &d.classes);
        let skipped: Vec<String> = d
            .skipped
            .iter()
            .flat_map(|(p, why)| [p.clone(), why.clone()])
            .collect();
        put_strings(&mut body, &skipped);
        put_strings(&mut body, &d.small);
        let mut out = BufWriter::new(File::create(path)?);
        out.write_all(MAGIC)?;
        out.write_all(&body)?;
        out.write_all(&crc32fast::hash(&body).to_le_bytes())?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    }
}

/// FNV-1a, 64 bits: the cache file's name from the folder and settings (collisions only
/// cost a decode, since the manifest inside is compared in full).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_strings(out: &mut Vec<u8>, strings: &[String]) {
    out.extend_from_slice(&(strings.len() as u64).to_le_bytes());
    for s in strings {
        put_bytes(out, s.as_bytes());
    }
}

/// Reads what `FolderCache::write` wrote, every length checked against what is left.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u64(&mut self) -> Result<usize, String> {
        let (head, rest) = self.0.split_at_checked(8).ok_or("truncated")?;
        self.0 = rest;
        usize::try_from(u64::from_le_bytes(head.try_into().unwrap()))
            .map_err(|_| "a length too large".to_string())
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u64()?;
        let (head, rest) = self.0.split_at_checked(n).ok_or("truncated")?;
        self.0 = rest;
        Ok(head)
    }

    fn strings(&mut self) -> Result<Vec<String>, String> {
        let n = self.u64()?;
        (0..n)
            .map(|_| {
                String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "a name is not UTF-8".into())
            })
            .collect()
    }

    fn image_set(&mut self) -> Result<ImageSet, String> {
        let [count, channels, height, width] = [self.u64()?, self.u64()?, self.u64()?, self.u64()?];
        let labels = self.bytes()?.to_vec();
        let images = self.bytes()?.to_vec();
        let pixels = count
            .checked_mul(channels)
            .and_then(|n| n.checked_mul(height))
            .and_then(|n| n.checked_mul(width));
        if labels.len() != count || pixels != Some(images.len()) {
            return Err("its image sizes do not agree with its pixels".into());
        }
        Ok(ImageSet {
            images,
            labels,
            count,
            channels,
            height,
            width,
        })
    }
}
