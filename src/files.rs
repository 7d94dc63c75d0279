//! Files written whole or not at all.
//!
//! Every file the project writes (checkpoints, settings, results, reports, plots, embeddings)
//! goes through [`write_atomic`]: a temporary file beside the target, then a rename. A write
//! that fails on the way (a full disk, a dead process' pipe, an encoder's error) removes its
//! temporary file, so a failure neither damages what was there nor leaves debris that fills
//! the disk further.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` through a temporary file beside it (`<name>.tmp`) and a rename,
/// so that an existing file is never left half-written.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |file| file.write_all(bytes))
}

/// [`write_atomic`] of what `write` writes into the temporary file. If `write`, the flush or
/// the rename fails, the temporary file is removed and the error returned; `path` keeps its
/// old contents (or stays absent).
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let tmp = temporary(path);
    let written = File::create(&tmp).and_then(|mut file| {
        write(&mut file)?;
        file.flush()?;
        drop(file);
        std::fs::rename(&tmp, path)
    });
    if written.is_err() {
        // The error to report is the write's; a temporary file that cannot be removed either
        // (its directory is gone) is no longer there to fill the disk.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The temporary name `path` is written under before its rename.
fn temporary(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    tmp.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("siamese-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_write_that_fails_midway_leaves_the_old_file_and_no_temporary() {
        let dir = scratch("midway");
        let path = dir.join("model.safetensors");
        std::fs::write(&path, b"the previous checkpoint").unwrap();
        let err = write_atomic_with(&path, |file| {
            file.write_all(&[7u8; 4096])?;
            Err(std::io::Error::other("No space left on device"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "No space left on device");
        assert_eq!(std::fs::read(&path).unwrap(), b"the previous checkpoint");
        assert!(
            !temporary(&path).exists(),
            "the temporary file must be removed"
        );
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_rename_removes_the_temporary_file() {
        let dir = scratch("rename");
        // A directory in the way: the temporary file is written, the rename onto it fails.
        let path = dir.join("result.json");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), b"kept").unwrap();
        assert!(write_atomic(&path, b"{}").is_err());
        assert!(
            !temporary(&path).exists(),
            "the temporary file must be removed"
        );
        assert_eq!(std::fs::read(path.join("inside")).unwrap(), b"kept");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_write_replaces_the_file_whole() {
        let dir = scratch("whole");
        let path = dir.join("config.toml");
        std::fs::write(&path, b"old").unwrap();
        write_atomic(&path, b"new contents").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new contents");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
