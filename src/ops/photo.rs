//! Launcher for `shaders/photo.wgsl`: photometric augmentation (torchvision's ColorJitter
//! and RandomGrayscale) of a gathered batch in place, one workgroup per image, from a
//! `[M, 8]` f32 row per image that `data::augment` draws. `x` is f32 or f16 (the f16 variant
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
