//! Launchers for `shaders/photo.wgsl`: photometric augmentation of a gathered batch in
//! place — torchvision's ColorJitter and RandomGrayscale (one workgroup per image) and
//! GaussianBlur (two separable passes through a scratch batch) — from a `[M, 8]` f32 row per
//! image that `data::augment` draws. `x` is f32 or f16 (the f16 variant
//! computes in f32 and rounds once on store); `cpu::photo` is the reference.

use bytemuck::{Pod, Zeroable};

use super::{expect, float_dtype, to_u32};
use crate::error::{Error, Result};
use crate::gpu::{DType, F16Variant, Gpu, Kernel, Shader, Tensor, grid_1d};
use crate::vocab::{PixelNorm, TRANSFORM_LEN};

pub const SHADER: Shader = Shader::new("photo", include_str!("../../shaders/photo.wgsl"));

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct PhotoParams {
    count: u32,
    channels: u32,
    plane: u32,
    _pad: u32,
    shift: f32,
    scale: f32,
}

/// Jitters the batch `x` `[M, C, H, W]` (C 1 or 3, normalised by `norm`) in place by the
/// rows of `jitter` `[M, 8]`.
pub fn color_jitter(gpu: &Gpu, x: &Tensor, jitter: &Tensor, norm: PixelNorm) -> Result<Kernel> {
    const OP: &str = "color_jitter";
    let dtype = float_dtype(OP, "x", x)?;
    let &[m, c, h, w] = x.shape() else {
        return Err(Error::Shape {
            op: OP,
            detail: format!("x {:?} must be [M, C, H, W]", x.shape()),
        });
    };
    if c != 1 && c != 3 {
        return Err(Error::Shape {
            op: OP,
            detail: format!("x has {c} channels; colour jitter takes grey (1) or RGB (3)"),
        });
    }
    expect(OP, "jitter", jitter, &[m, TRANSFORM_LEN], DType::F32)?;
    to_u32(OP, "x's elements", x.len())?;
    let params = PhotoParams {
        count: to_u32(OP, "M", m)?,
        channels: c as u32,
        plane: to_u32(OP, "H·W", h * w)?,
        _pad: 0,
        shift: norm.shift,
        scale: norm.scale,
    };
    let shader = match dtype {
        DType::F16 => SHADER.with_f16(F16Variant {
            aliases: &["elem"],
            texels: false,
        }),
        _ => SHADER,
    };
    Ok(Kernel::single(gpu.dispatch(
        &shader,
        OP,
        &[],
        &params,
        &[(1, x), (2, jitter)],
        grid_1d(to_u32(OP, "M", m)?),
    )?))
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BlurParams {
    count: u32,
    plane: u32,
    width: u32,
    height: u32,
    image: u32,
    taps: u32,
}

/// Blurs each image of the batch `x` `[M, C, H, W]` with a `taps`-tap Gaussian of the σ in
/// slot 6 of its row of `jitter` `[M, 8]` (0: unchanged), rows then columns, through an f32
/// scratch batch the kernel owns.
pub fn gaussian_blur(gpu: &Gpu, x: &Tensor, jitter: &Tensor, taps: usize) -> Result<Kernel> {
    const OP: &str = "gaussian_blur";
    let dtype = float_dtype(OP, "x", x)?;
    let &[m, c, h, w] = x.shape() else {
        return Err(Error::Shape {
            op: OP,
            detail: format!("x {:?} must be [M, C, H, W]", x.shape()),
        });
    };
    if taps.is_multiple_of(2) || taps / 2 >= h.min(w) {
        return Err(Error::Shape {
            op: OP,
            detail: format!(
                "a blur of {taps} taps on {h}×{w} images: the kernel size must be odd and its \
                 half under the image's smaller side (reflect padding)"
            ),
        });
    }
    expect(OP, "jitter", jitter, &[m, TRANSFORM_LEN], DType::F32)?;
    let count = to_u32(OP, "x's elements", x.len())?;
    let params = BlurParams {
        count,
        plane: to_u32(OP, "H·W", h * w)?,
        width: w as u32,
        height: h as u32,
        image: to_u32(OP, "C·H·W", c * h * w)?,
        taps: taps as u32,
    };
    let shader = match dtype {
        DType::F16 => SHADER.with_f16(F16Variant {
            aliases: &["elem"],
            texels: false,
        }),
        _ => SHADER,
    };
    let tmp = gpu.zeros(x.shape(), DType::F32)?;
    let grid = grid_1d(count.div_ceil(256));
    let pass = |entry| {
        gpu.dispatch(
            &shader,
            entry,
            &[],
            &params,
            &[(1, x), (2, jitter), (3, &tmp)],
            grid,
        )
    };
    let dispatches = vec![pass("blur_rows")?, pass("blur_columns")?];
    Ok(Kernel::with_scratch(dispatches, vec![tmp]))
}
