//! Launcher for `shaders/gather.wgsl`: the dataset lives on the GPU as packed u8 (split over
//! up to four storage buffers when one binding cannot hold it), and each
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
    per_shard: u32,
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

/// The most storage buffers one gather reads a dataset from (bindings 1, 5, 6, 7 of
/// `shaders/gather.wgsl`; with the batch, indices and transforms that is 7 storage buffers,
/// under the 8 every adapter allows a shader stage).
pub const MAX_SHARDS: usize = 4;

/// A dataset resident on the GPU as packed u8 (see [`pack_images`]), split over as many
/// storage buffers ("shards", each a whole number of images) as the adapter's largest
/// storage binding requires.
pub struct PackedImages {
    shards: Vec<Tensor>,
    /// Images per shard (the last may hold fewer).
    per_shard: usize,
    count: usize,
    words: usize,
}

impl PackedImages {
    /// Images held.
    pub fn count(&self) -> usize {
        self.count
    }

    /// u32 words per packed image.
    pub fn words(&self) -> usize {
        self.words
    }

    /// Storage buffers the images are split over.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// The four bindings a gather reads, unused ones bound to the first shard.
    fn bindings(&self) -> [(u32, &Tensor); MAX_SHARDS] {
        let shard = |i: usize| self.shards.get(i).unwrap_or(&self.shards[0]);
        [(1, shard(0)), (5, shard(1)), (6, shard(2)), (7, shard(3))]
    }
}

/// Uploads `count` images of `pixels` bytes each, packed, in as many shards as the device's
/// `max_storage_buffer_binding_size` requires; fails, saying what to do, when more than
/// [`MAX_SHARDS`] would be needed.
pub fn upload_images(gpu: &Gpu, bytes: &[u8], count: usize, pixels: usize) -> Result<PackedImages> {
    let limits = gpu.limits();
    let shard_bytes = limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size);
    upload_images_in_shards(gpu, bytes, count, pixels, shard_bytes)
}

/// [`upload_images`] with shards of at most `shard_bytes` bytes (tests lower it to cross
/// the limit on small data).
pub fn upload_images_in_shards(
    gpu: &Gpu,
    bytes: &[u8],
    count: usize,
    pixels: usize,
    shard_bytes: u64,
) -> Result<PackedImages> {
    const OP: &str = "upload_images";
    if bytes.len() != count * pixels || count == 0 {
        return Err(Error::Shape {
            op: OP,
            detail: format!(
                "{} bytes are not {count} images of {pixels} pixels (at least one)",
                bytes.len()
            ),
        });
    }
    let words = pixels.div_ceil(4);
    let image_bytes = 4 * words as u64;
    let per_shard = (shard_bytes / image_bytes).min(count as u64) as usize;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    if per_shard == 0 {
        return Err(Error::Data(format!(
            "one image of {pixels} pixels takes {image_bytes} bytes packed, over this \
             adapter's largest storage binding ({:.1} MiB); use a smaller --image-size",
            mib(shard_bytes)
        )));
    }
    let shards = count.div_ceil(per_shard);
    if shards > MAX_SHARDS {
        return Err(Error::Data(format!(
            "{count} images of {pixels} pixels are {:.1} MiB packed as u8; this adapter's \
             storage bindings hold {:.1} MiB each, and a gather reads at most {MAX_SHARDS} \
             of them ({:.1} MiB). Use a smaller --image-size, fewer images, or a GPU with \
             larger storage bindings (`siamese devices` shows them)",
            mib(count as u64 * image_bytes),
            mib(shard_bytes),
            mib(MAX_SHARDS as u64 * per_shard as u64 * image_bytes)
        )));
    }
    let shards = (0..shards)
        .map(|s| {
            let (start, end) = (s * per_shard, ((s + 1) * per_shard).min(count));
            let packed = pack_images(&bytes[start * pixels..end * pixels], end - start, pixels);
            gpu.upload_u32(&packed, &[end - start, words])
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(PackedImages {
        shards,
        per_shard,
        count,
        words,
    })
}

/// `out [M, pixels…] = norm(images[indices[m]])`; `out`'s trailing dimensions give the
/// image shape (e.g. `[M, 1, 28, 28]`), its type (f32 or f16) the precision of the batch;
/// `images` is a packed set from [`upload_images`].
/// Indices must be below the image count: the kernel does not check them.
pub fn gather_images(
    gpu: &Gpu,
    images: &PackedImages,
    indices: &Tensor,
    out: &Tensor,
    norm: PixelNorm,
) -> Result<Kernel> {
    const OP: &str = "gather_images";
    let (params, total, dtype) = checked_params(OP, images, indices, out, norm)?;
    let [s0, s1, s2, s3] = images.bindings();
    let bindings = [s0, s1, s2, s3, (2, indices), (3, out)];
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
    images: &PackedImages,
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
    let [s0, s1, s2, s3] = images.bindings();
    let bindings = [s0, s1, s2, s3, (2, indices), (3, out), (4, transforms)];
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
    images: &PackedImages,
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
    if images.words != pixels.div_ceil(4) {
        return Err(Error::Shape {
            op,
            detail: format!(
                "packed images hold {} words each, but {pixels} pixels need {}",
                images.words,
                pixels.div_ceil(4)
            ),
        });
    }
    let params = GatherParams {
        count: to_u32(op, "M", m)?,
        pixels: to_u32(op, "pixels", pixels)?,
        words: to_u32(op, "words", images.words)?,
        height: 0,
        shift: norm.shift,
        scale: norm.scale,
        width: 0,
        fill: 0,
        per_shard: to_u32(op, "images per shard", images.per_shard)?,
    };
    to_u32(
        op,
        "packed words per shard",
        images.per_shard * images.words,
    )?;
    let total = to_u32(op, "output elements", m * pixels)?;
    Ok((params, total, dtype))
}
