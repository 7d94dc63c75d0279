//! Launcher for `shaders/gather.wgsl`: the dataset lives on the GPU as packed u8, and each
//! step gathers and normalises a batch from a buffer of image indices.

use bytemuck::{Pod, Zeroable};

use super::{Shader, expect, expect_f32, to_u32};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Kernel, Tensor, grid_1d};

pub const SHADER: Shader = Shader {
    name: "gather",
    source: include_str!("../../shaders/gather.wgsl"),
};

const WG: u32 = 256;

/// How pixels become network inputs: `(pixel / 255 − shift) · scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelNorm {
    pub shift: f32,
    pub scale: f32,
}

impl PixelNorm {
    /// pixel / 255, values in [0, 1]: the usual PyTorch recipe (`ToTensor()`).
    pub const UNIT: PixelNorm = PixelNorm {
        shift: 0.0,
        scale: 1.0,
    };

    /// (pixel / 255 − mean) / std, as `transforms.Normalize(mean, std)` after `ToTensor()`.
    pub fn standardize(mean: f32, std: f32) -> PixelNorm {
        PixelNorm {
            shift: mean,
            scale: 1.0 / std,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct GatherParams {
    count: u32,
    pixels: u32,
    words: u32,
    _pad: u32,
    shift: f32,
    scale: f32,
    _pad1: [u32; 2],
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
/// image shape (e.g. `[M, 1, 28, 28]`), `images` is a packed set from [`upload_images`].
/// Indices must be below the image count: the kernel does not check them.
pub fn gather_images(
    gpu: &Gpu,
    images: &Tensor,
    indices: &Tensor,
    out: &Tensor,
    norm: PixelNorm,
) -> Result<Kernel> {
    const OP: &str = "gather_images";
    let m = indices.len();
    expect(OP, "indices", indices, &[m], DType::U32)?;
    let shape = out.shape();
    if shape.first() != Some(&m) || m == 0 {
        return Err(Error::Shape {
            op: OP,
            detail: format!("out {shape:?} must have one row per index ({m})"),
        });
    }
    let pixels: usize = shape[1..].iter().product();
    expect_f32(OP, "out", out, shape)?;
    let &[n, words] = expect_rank_u32(OP, images)? else {
        unreachable!()
    };
    if words != pixels.div_ceil(4) {
        return Err(Error::Shape {
            op: OP,
            detail: format!(
                "packed images hold {words} words each, but {pixels} pixels need {}",
                pixels.div_ceil(4)
            ),
        });
    }
    let params = GatherParams {
        count: to_u32(OP, "M", m)?,
        pixels: to_u32(OP, "pixels", pixels)?,
        words: to_u32(OP, "words", words)?,
        _pad: 0,
        shift: norm.shift,
        scale: norm.scale,
        _pad1: [0; 2],
    };
    to_u32(OP, "packed words", n * words)?;
    let total = to_u32(OP, "output elements", m * pixels)?;
    let bindings = [(1, images), (2, indices), (3, out)];
    Ok(Kernel::single(gpu.dispatch(
        &SHADER,
        OP,
        &[],
        &params,
        &bindings,
        grid_1d(total.div_ceil(WG)),
    )?))
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
