//! The values of settings written as text: a pixel normalisation, an image size, a range
//! `LO:HI`, a byte count — each parsed with an error that names the key and an example.

use crate::error::{Error, Result};
use crate::vocab::PixelNorm;

/// `unit` or `standard:MEAN:STD`.
pub(super) fn parse_pixel_norm(s: &str) -> Result<PixelNorm> {
    let bad = || {
        Error::Config(format!(
            "pixel_norm: unknown pixel normalisation `{s}`: use unit or standard:MEAN:STD (STD > 0)"
        ))
    };
    match s.split(':').collect::<Vec<_>>().as_slice() {
        ["unit"] => Ok(PixelNorm::UNIT),
        ["standard", mean, std] => {
            let (mean, std): (f32, f32) = (
                mean.parse().map_err(|_| bad())?,
                std.parse().map_err(|_| bad())?,
            );
            if std.is_nan() || std <= 0.0 {
                return Err(bad());
            }
            Ok(PixelNorm::standardize(mean, std))
        }
        _ => Err(bad()),
    }
}

/// A range `LO:HI` of two numbers.
pub(super) fn parse_range(key: &str, text: &str) -> Result<(f64, f64)> {
    text.split_once(':')
        .and_then(|(lo, hi)| Some((lo.trim().parse().ok()?, hi.trim().parse().ok()?)))
        .ok_or_else(|| Error::Config(format!("{key}: `{text}` is not LO:HI, e.g. 0.08:1")))
}

/// A byte count: digits, optionally followed by K, M or G (KiB, MiB, GiB).
pub(super) fn parse_bytes(text: &str) -> Result<u64> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => t.split_at(at),
        None => (t, ""),
    };
    let shift = match unit
        .to_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        _ => u32::MAX,
    };
    match digits.parse::<u64>() {
        Ok(n) if shift != u32::MAX => n.checked_shl(shift).filter(|&b| b >> shift == n),
        _ => None,
    }
    .ok_or_else(|| {
        Error::Config(format!(
            "gpu_data_budget: `{text}` is not a size in bytes (e.g. 536870912, 512M or 2G)"
        ))
    })
}

/// `HxW`, or `N` for N×N; both at least 1.
pub(super) fn parse_image_size(s: &str) -> Result<[usize; 2]> {
    let bad = || {
        Error::Config(format!(
            "image_size: `{s}` is not a size: use HxW (e.g. 32x32) or N for N×N, each at least 1"
        ))
    };
    let parts: Vec<usize> = s
        .split(['x', 'X', '×'])
        .map(|p| p.trim().parse().map_err(|_| bad()))
        .collect::<Result<_>>()?;
    match *parts.as_slice() {
        [n] if n > 0 => Ok([n, n]),
        [h, w] if h > 0 && w > 0 => Ok([h, w]),
        _ => Err(bad()),
    }
}
