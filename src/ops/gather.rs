//! Launcher for `shaders/gather.wgsl`: the dataset lives on the GPU as packed u8, and each
//! step gathers and normalises a batch from a buffer of image indices — as stored, or each
//! image resampled through its own affine transform (augmentation, see `data::augment`).
//! The batch `out` is f32, or f16 for mixed precision (the shader's f16 variant computes in
//! f32 and rounds once on the store); pixels stay packed u8, transforms f32.

use bytemuck::{Pod, Zeroable};

use super::{expect, float_dtype, to_u32};
use crate::error::{Error, Result};
use crate::gpu::{DType, F16Variant, Gpu, Kernel, Shader, Tensor, grid_1d};
use crate::vocab::{FillMode, PixelNorm, TRANSFORM_LEN};

pub const SHADER: Shader = Shader::new("gather", include_str!("../../shaders/gather.wgsl"));

/// The shader writing an `out` of type `dtype`.
fn shader(dtype: DType) -> Shader {
    match dtype {
        DType::F16 => SHADER.with_f16(F16Variant {
            aliases: &["elem"],
            texels: false,
        }),
        _ => SHADER,
    }
}

const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct GatherParams {
    count: u32,
    pixels: u32,
    words: u32,
    height: u32,
    shift: f32,
    scale: f32,
    width: u32,
    fill: u32,
}

/// Packs `count` images of `pixels` bytes each into u32 words, four pixels per word
/// (little-endian), each image padded to a whole number of words.
pub fn pack_images(bytes: &[u8], count: usize, pixels: usize) -> Vec<u32> {
    let words = pixels.div_ceil(4);
    let mut packed = vec![0u32; count * words];
    for (img, chunk) in bytes.chunks_exact(pixels).take(count).enumerate() {
        for (q, &b) in chunk.iter().enumerate() {
            packed[img * words + q / 4] |= (b as u32) << (8 * (q % 4));
        }
    }
    packed
}

/// Uploads `count` images of `pixels` bytes each as a packed `[count, ceil(pixels/4)]` u32
/// tensor; fails with the device's limit when the set does not fit one storage binding.
pub fn upload_images(gpu: &Gpu, bytes: &[u8], count: usize, pixels: usize) -> Result<Tensor> {
    if bytes.len() != count * pixels {
        return Err(Error::Shape {
            op: "upload_images",
            detail: format!(
                "{} bytes are not {count} images of {pixels} pixels",
                bytes.len()
            ),
        });
    }
    gpu.upload_u32(
        &pack_images(bytes, count, pixels),
        &[count, pixels.div_ceil(4)],
    )
}

/// `out [M, pixels…] = norm(images[indices[m]])`; `out`'s trailing dimensions give the
/// image shape (e.g. `[M, 1, 28, 28]`), its type (f32 or f16) the precision of the batch;
/// `images` is a packed set from [`upload_images`].
/// Indices must be below the image count: the kernel does not check them.
pub fn gather_images(
    gpu: &Gpu,
    images: &Tensor,
    indices: &Tensor,
    out: &Tensor,
    norm: PixelNorm,
) -> Result<Kernel> {
    const OP: &str = "gather_images";
    let (params, total, dtype) = checked_params(OP, images, indices, out, norm)?;
    let bindings = [(1, images), (2, indices), (3, out)];
    Ok(Kernel::single(gpu.dispatch(
        &shader(dtype),
        OP,
        &[],
        &params,
        &bindings,
        grid_1d(total.div_ceil(WG)),
    )?))
}

/// [`gather_images`] with image m resampled through row m of `transforms` `[M, 8]` (the
/// inverse map output pixel → source pixel of `data::augment`), bilinearly, outside pixels
/// read as `fill` says. `out` must be `[M, C, H, W]`, f32 or f16; `transforms` is f32.
pub fn gather_images_affine(
    gpu: &Gpu,
    images: &Tensor,
    indices: &Tensor,
    transforms: &Tensor,
    out: &Tensor,
    norm: PixelNorm,
    fill: FillMode,
) -> Result<Kernel> {
    const OP: &str = "gather_images_affine";
    let (mut params, total, dtype) = checked_params(OP, images, indices, out, norm)?;
    let &[m, _c, h, w] = out.shape() else {
        return Err(Error::Shape {
            op: OP,
            detail: format!("out {:?} must be [M, C, H, W]", out.shape()),
        });
    };
    expect(
        OP,
        "transforms",
        transforms,
        &[m, TRANSFORM_LEN],
        DType::F32,
    )?;
    params.height = to_u32(OP, "H", h)?;
    params.width = to_u32(OP, "W", w)?;
    params.fill = fill.code();
    let bindings = [(1, images), (2, indices), (3, out), (4, transforms)];
    Ok(Kernel::single(gpu.dispatch(
        &shader(dtype),
        OP,
        &[],
        &params,
        &bindings,
        grid_1d(total.div_ceil(WG)),
    )?))
}

/// The shapes both entries share, checked; their uniform (image size and fill left 0), the
/// number of output elements and `out`'s element type.
fn checked_params(
    op: &'static str,
    images: &Tensor,
    indices: &Tensor,
    out: &Tensor,
    norm: PixelNorm,
) -> Result<(GatherParams, u32, DType)> {
    let m = indices.len();
    expect(op, "indices", indices, &[m], DType::U32)?;
    let shape = out.shape();
    if shape.first() != Some(&m) || m == 0 {
        return Err(Error::Shape {
            op,
            detail: format!("out {shape:?} must have one row per index ({m})"),
        });
    }
    let pixels: usize = shape[1..].iter().product();
    let dtype = float_dtype(op, "out", out)?;
    let &[n, words] = expect_rank_u32(op, images)? else {
        unreachable!()
    };
    if words != pixels.div_ceil(4) {
        return Err(Error::Shape {
            op,
            detail: format!(
                "packed images hold {words} words each, but {pixels} pixels need {}",
                pixels.div_ceil(4)
            ),
        });
    }
    let params = GatherParams {
        count: to_u32(op, "M", m)?,
        pixels: to_u32(op, "pixels", pixels)?,
        words: to_u32(op, "words", words)?,
        height: 0,
        shift: norm.shift,
        scale: norm.scale,
        width: 0,
        fill: 0,
    };
    to_u32(op, "packed words", n * words)?;
    let total = to_u32(op, "output elements", m * pixels)?;
    Ok((params, total, dtype))
}

fn expect_rank_u32<'t>(op: &'static str, t: &'t Tensor) -> Result<&'t [usize]> {
    if t.shape().len() != 2 || t.dtype() != DType::U32 {
        return Err(Error::Shape {
            op,
            detail: format!(
                "images must be a packed u32 tensor [N, words], got {:?} of shape {:?}",
                t.dtype(),
                t.shape()
            ),
        });
    }
    Ok(t.shape())
}
