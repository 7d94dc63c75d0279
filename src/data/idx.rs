//! Reader for IDX files, the format of MNIST and Fashion-MNIST: a big-endian header
//! (`0x00 0x00 type ndim`, then `ndim` u32 dimensions) followed by the values, row-major.
//!
//! Only unsigned bytes (type code 0x08) are read: every image and label file of the
//! MNIST family is u8, and the engine keeps the dataset on the GPU as packed u8 anyway,
//! so widening on the host would only cost memory.
//!
//! Whether a file is gzip'd is decided by the gzip magic bytes, not by the name: a file
//! gunzip'd in place but still called `.gz` (or the reverse) is read all the same. The
//! whole file is validated before anything is returned — magic number, type code,
//! dimension count, and a payload of exactly the declared size — because a truncated
//! download otherwise shows up much later as a shape panic or as a model that trains
//! on garbage without saying so.

use std::io::Read;
use std::path::Path;

use flate2::read::MultiGzDecoder;

use crate::error::{Error, Result};

/// What to do about a damaged dataset file; appended to the messages about truncation and
/// corruption.
pub(crate) const REINSTALL_ADVICE: &str = "Re-download the file, or reinstall the Debian package: \
     `apt-get install --reinstall dataset-fashion-mnist` (files under /usr/share/datasets/fashion-mnist)";

/// The two bytes every gzip stream begins with (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The IDX type code for unsigned bytes, the only one read here.
const TYPE_U8: u8 = 0x08;

/// An unsigned-byte IDX array: `data` holds `dims.iter().product()` values, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads an IDX file, gzip'd or raw (told apart by the gzip magic bytes), and validates it.
///
/// Errors are [`Error::Data`] and name the file: unreadable, corrupt or truncated gzip,
/// bad magic number, a type code other than 0x08, or a payload whose length is not the
/// product of the declared dimensions.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let name = path.display().to_string();
    let raw = std::fs::read(path).map_err(|e| {
        Error::Data(format!(
            "cannot read IDX file {name}: {e}. Check the path and its permissions; \
             {REINSTALL_ADVICE}"
        ))
    })?;
    if raw.starts_with(&GZIP_MAGIC) {
        parse_idx(&gunzip(&raw, &name)?, &name)
    } else {
        parse_idx(&raw, &name)
    }
}

/// Decompresses a whole gzip file. `MultiGzDecoder` rather than `GzDecoder` because
/// `gzip a; cat a.gz b.gz` style multi-member files are valid gzip and `gunzip` reads them.
fn gunzip(raw: &[u8], name: &str) -> Result<Vec<u8>> {
    // The trailer's ISIZE (uncompressed size mod 2^32) sizes the buffer in one allocation;
    // it is only a hint, capped so that a corrupt trailer cannot request absurd memory.
    let hint = raw
        .len()
        .checked_sub(4)
        .map(|at| u32::from_le_bytes(raw[at..].try_into().unwrap()) as usize)
        .unwrap_or(0)
        .min(1 << 30);
    let mut out = Vec::with_capacity(hint);
    MultiGzDecoder::new(raw)
        .read_to_end(&mut out)
        .map_err(|e| {
            let what = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                "the gzip stream ends early: the file is probably truncated (an interrupted download?)"
                    .to_string()
            } else {
                format!("the gzip data is corrupt ({e})")
            };
            Error::Data(format!(
                "{name} begins like a gzip file but cannot be decompressed: {what}. {REINSTALL_ADVICE}"
            ))
        })?;
    Ok(out)
}

/// The name of an IDX type code, for error messages.
fn type_name(code: u8) -> Option<&'static str> {
    Some(match code {
        0x08 => "unsigned byte",
        0x09 => "signed byte",
        0x0B => "16-bit integer",
        0x0C => "32-bit integer",
        0x0D => "32-bit float",
        0x0E => "64-bit float",
        _ => return None,
    })
}

/// Parses and validates an uncompressed IDX image held in memory; `name` (a file name)
/// is used only in error messages.
pub fn parse_idx(bytes: &[u8], name: &str) -> Result<IdxArray> {
    if bytes.len() < 4 {
        return Err(Error::Data(format!(
            "{name}: only {} bytes, fewer than the 4-byte IDX magic number; the file is \
             probably truncated. {REINSTALL_ADVICE}",
            bytes.len()
        )));
    }
    let magic = &bytes[..4];
    if magic[0] != 0 || magic[1] != 0 {
        return Err(Error::Data(format!(
            "{name} is not an IDX file: its magic number is {:02x} {:02x} {:02x} {:02x}, but an \
             IDX file begins with two zero bytes, then the type code and the dimension count. \
             Check that the path names an MNIST-style idx-ubyte file (gzip'd or raw). \
             {REINSTALL_ADVICE}",
            magic[0], magic[1], magic[2], magic[3]
        )));
    }
    let (code, ndim) = (magic[2], magic[3] as usize);
    if code != TYPE_U8 {
        let what = match type_name(code) {
            Some(t) => format!("holds {t} values (type code 0x{code:02x})"),
            None => format!("has type code 0x{code:02x}, which is not an IDX type"),
        };
        return Err(Error::Data(format!(
            "{name} {what}; only unsigned-byte IDX files (type code 0x08) are supported, as \
             MNIST and Fashion-MNIST use. Convert the data to u8 images and labels."
        )));
    }
    if ndim == 0 {
        return Err(Error::Data(format!(
            "{name}: the IDX header declares 0 dimensions; an image file has 3 \
             [count, height, width] and a label file 1 [count]. The file is corrupt. \
             {REINSTALL_ADVICE}"
        )));
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(Error::Data(format!(
            "{name}: the header declares {ndim} dimensions ({header} header bytes) but the file \
             has only {} bytes; the file is probably truncated. {REINSTALL_ADVICE}",
            bytes.len()
        )));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes(c.try_into().unwrap()) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            Error::Data(format!(
                "{name}: the declared dimensions {dims:?} multiply past the address space; \
                 the header is corrupt. {REINSTALL_ADVICE}"
            ))
        })?;
    let found = bytes.len() - header;
    if found < expected {
        return Err(Error::Data(format!(
            "{name}: the header declares dimensions {dims:?}, i.e. {expected} bytes of data, but \
             only {found} bytes follow the header; the file is probably truncated. \
             {REINSTALL_ADVICE}"
        )));
    }
    if found > expected {
        return Err(Error::Data(format!(
            "{name}: the header declares dimensions {dims:?}, i.e. {expected} bytes of data, but \
             {found} bytes follow the header ({} trailing bytes); the file is corrupt or its \
             header does not belong to its data. {REINSTALL_ADVICE}",
            found - expected
        )));
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Serialises `data` with `dims` as an unsigned-byte IDX image (uncompressed): the
/// inverse of [`parse_idx`], for writing derived datasets and test fixtures.
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Result<Vec<u8>> {
    let n: usize = dims.iter().product();
    if dims.is_empty() || dims.len() > 255 || n != data.len() {
        return Err(Error::Config(format!(
            "encode_idx: dimensions {dims:?} (1 to 255 of them) must multiply to the data \
             length {}",
            data.len()
        )));
    }
    let mut out = Vec::with_capacity(4 + 4 * dims.len() + data.len());
    out.extend_from_slice(&[0, 0, TYPE_U8, dims.len() as u8]);
    for &d in dims {
        let d = u32::try_from(d).map_err(|_| {
            Error::Config(format!("encode_idx: dimension {d} does not fit IDX's u32"))
        })?;
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    Ok(out)
}
