//! Files written whole or not at all.

use std::path::Path;

/// Writes `bytes` to `path` through a temporary file beside it (`<name>.tmp`) and a rename,
/// so that an existing file is never left half-written.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
