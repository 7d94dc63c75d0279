//! Launcher for `shaders/gather.wgsl`: the dataset lives on the GPU as packed u8 (split over
//! up to four storage buffers when one binding cannot hold it), and each
//! step gathers and normalises a batch from a buffer of image indices — as stored, or each
//! image resampled through its own affine transform (augmentation, see `data::augment`).
//! The batch `out` is f32, or f16 for mixed precision (the shader's f16 variant computes in
//! f32 and rounds once on the store); pixels stay packed u8, transforms f32.

use std::sync::Arc;

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

/// A packed u8 dataset (see [`pack_images`]): resident on the GPU, split over as many
/// storage buffers ("shards", each a whole number of images) as the adapter's largest
/// storage binding requires; or, for a set over the GPU data budget, kept in host memory and
/// staged batch by batch into a small GPU set (see [`Stager`]).
pub struct PackedImages {
    place: Place,
    count: usize,
    words: usize,
}

enum Place {
    Device {
        shards: Vec<Tensor>,
        /// Images per shard (the last may hold fewer).
        per_shard: usize,
    },
    Host(Arc<[u32]>),
}

impl PackedImages {
    /// `count` images of `pixels` bytes each, packed and kept in host memory.
    pub fn on_host(bytes: &[u8], count: usize, pixels: usize) -> Result<PackedImages> {
        check_bytes(bytes, count, pixels)?;
        Ok(PackedImages {
            place: Place::Host(pack_images(bytes, count, pixels).into()),
            count,
            words: pixels.div_ceil(4),
        })
    }

    /// Images held.
    pub fn count(&self) -> usize {
        self.count
    }

    /// u32 words per packed image.
    pub fn words(&self) -> usize {
        self.words
    }

    /// Whether the images are on the GPU (else in host memory, to be staged).
    pub fn is_resident(&self) -> bool {
        matches!(self.place, Place::Device { .. })
    }

    /// Storage buffers the images are split over (0 in host memory).
    pub fn shards(&self) -> usize {
        match &self.place {
            Place::Device { shards, .. } => shards.len(),
            Place::Host(_) => 0,
        }
    }

    /// For a set in host memory, a stager of `slots` images at a time; None when resident
    /// (gathers read the set itself).
    pub fn stager(&self, gpu: &Gpu, slots: usize) -> Result<Option<Stager>> {
        let Place::Host(host) = &self.place else {
            return Ok(None);
        };
        let staging = gpu.zeros(&[slots, self.words], DType::U32)?;
        Ok(Some(Stager {
            host: host.clone(),
            staging: PackedImages {
                place: Place::Device {
                    shards: vec![staging],
                    per_shard: slots,
                },
                count: slots,
                words: self.words,
            },
            scratch: Vec::with_capacity(slots * self.words),
        }))
    }

    /// The four bindings a gather reads, unused ones bound to the first shard; a set in
    /// host memory must be staged first.
    fn bindings(&self, op: &'static str) -> Result<[(u32, &Tensor); MAX_SHARDS]> {
        let Place::Device { shards, .. } = &self.place else {
            return Err(Error::Shape {
                op,
                detail: "the images are in host memory: gather from their stager's set".into(),
            });
        };
        let shard = |i: usize| shards.get(i).unwrap_or(&shards[0]);
        Ok([(1, shard(0)), (5, shard(1)), (6, shard(2)), (7, shard(3))])
    }

    fn per_shard(&self) -> usize {
        match &self.place {
            Place::Device { per_shard, .. } => *per_shard,
            Place::Host(_) => self.count,
        }
    }
}

/// Stages images of a host set into a GPU set of a fixed number of slots: slot m holds the
/// image [`stage`](Self::stage) was given at m, so a gather from [`images`](Self::images) at
/// indices 0, 1, … reads exactly what a gather from the whole set at those images would.
/// The write is a queue write: ordered after every submission before it (which still read
/// the previous images) and before the next, so staging step t + 1 on the host overlaps
/// step t on the GPU, and a step stays one submission.
pub struct Stager {
    host: Arc<[u32]>,
    staging: PackedImages,
    scratch: Vec<u32>,
}

impl Stager {
    /// The GPU set a gather binds.
    pub fn images(&self) -> &PackedImages {
        &self.staging
    }

    /// Slot indices 0..slots, what the gather reads the staged images at.
    pub fn slots(&self) -> Vec<u32> {
        (0..self.staging.count as u32).collect()
    }

    /// Copies images `indices` (at most the stager's slots) into slots 0.., for the next
    /// submission.
    pub fn stage(&mut self, gpu: &Gpu, indices: &[u32]) -> Result<()> {
        let words = self.staging.words;
        if indices.len() > self.staging.count {
            return Err(Error::Shape {
                op: "stage",
                detail: format!("{} images for {} slots", indices.len(), self.staging.count),
            });
        }
        self.scratch.clear();
        for &i in indices {
            let at = i as usize * words;
            let image = self.host.get(at..at + words).ok_or_else(|| Error::Shape {
                op: "stage",
                detail: format!("image {i} of a set of {}", self.host.len() / words),
            })?;
            self.scratch.extend_from_slice(image);
        }
        let Place::Device { shards, .. } = &self.staging.place else {
            unreachable!("a staging set is on the device")
        };
        gpu.write_u32(&shards[0], &self.scratch)
    }
}

fn check_bytes(bytes: &[u8], count: usize, pixels: usize) -> Result<()> {
    if bytes.len() != count * pixels || count == 0 {
        return Err(Error::Shape {
            op: "upload_images",
            detail: format!(
                "{} bytes are not {count} images of {pixels} pixels (at least one)",
                bytes.len()
            ),
        });
    }
    Ok(())
}

/// The bytes `count` images of `pixels` bytes take packed, and the shards a device with
/// storage bindings of `binding_bytes` needs for them (0 if one image is over a binding).
pub fn packed_size(count: usize, pixels: usize, binding_bytes: u64) -> (u64, usize) {
    let (image_bytes, per_shard) = shard_plan(count, pixels, binding_bytes);
    let shards = if per_shard == 0 {
        0
    } else {
        count.div_ceil(per_shard)
    };
    (count as u64 * image_bytes, shards)
}

/// Bytes per packed image, and whole images per shard of `binding_bytes`.
fn shard_plan(count: usize, pixels: usize, binding_bytes: u64) -> (u64, usize) {
    let image_bytes = 4 * pixels.div_ceil(4) as u64;
    let per_shard = (binding_bytes / image_bytes).min(count as u64) as usize;
    (image_bytes, per_shard)
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
    check_bytes(bytes, count, pixels)?;
    let words = pixels.div_ceil(4);
    let (image_bytes, per_shard) = shard_plan(count, pixels, shard_bytes);
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
        place: Place::Device { shards, per_shard },
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
    let [s0, s1, s2, s3] = images.bindings(OP)?;
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
    let [s0, s1, s2, s3] = images.bindings(OP)?;
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
        per_shard: to_u32(op, "images per shard", images.per_shard())?,
    };
    to_u32(
        op,
        "packed words per shard",
        images.per_shard() * images.words,
    )?;
    let total = to_u32(op, "output elements", m * pixels)?;
    Ok((params, total, dtype))
}
