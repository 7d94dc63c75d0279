//! Launchers for `shaders/pack.wgsl`: tensors copied into [`Texels`] in the layouts the
//! texel kernels read (see the shader's header for each layout). An f16 tensor is packed
//! into f16 (rgba16float) texels, which the kernels read exactly as they read f32 ones.

use bytemuck::{Pod, Zeroable};

use super::{expect_float_rank, to_u32};
use crate::error::{Error, Result};
use crate::gpu::{DType, F16Variant, Gpu, Kernel, Shader, Tensor, Texels, grid_1d};

pub const SHADER: Shader = Shader::new("pack", include_str!("../../shaders/pack.wgsl"));

const WG: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct PackParams {
    texels: u32,
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    pad: u32,
    c4: u32,
    hp: u32,
    flip: u32,
    unfold: u32,
    _pad: [u32; 2],
}

fn launch(
    gpu: &Gpu,
    entry: &'static str,
    constants: &[(&'static str, f64)],
    params: PackParams,
    src: &Tensor,
    texels: usize,
) -> Result<(Kernel, Texels)> {
    let dtype = src.dtype();
    let dst = gpu.texels_of(texels, dtype)?;
    let shader = match dtype {
        DType::F16 => SHADER.with_f16(F16Variant {
            aliases: &["elem"],
            texels: true,
        }),
        _ => SHADER,
    };
    let params = PackParams {
        texels: to_u32(entry, "texels", texels)?,
        unfold: params.unfold.max(1),
        ..params
    };
    let groups = grid_1d(params.texels.div_ceil(WG));
    let dispatch = gpu.dispatch_with_texels(
        &shader,
        entry,
        constants,
        &params,
        &[(1, src)],
        &[(2, &dst)],
        groups,
    )?;
    Ok((Kernel::single(dispatch), dst))
}

/// `x [N, C, H, W]` (f32 or f16, giving texels of the same) as channels-by-fours with `pad` zero borders: texel
/// `((n·(H+2·pad) + h)·(W+2·pad) + w)·⌈C/4⌉ + c4`; with `unfold` U > 1, U horizontal taps
/// as channels (see the shader's header).
pub fn nhwc4(gpu: &Gpu, x: &Tensor, pad: usize, unfold: usize) -> Result<(Kernel, Texels)> {
    const OP: &str = "pack_nhwc4";
    let (&[n, c, h, w], _) = expect_float_rank(OP, "x", x, 4)? else {
        unreachable!()
    };
    if unfold == 0 || unfold > w + 2 * pad {
        return Err(Error::Shape {
            op: OP,
            detail: format!("cannot unfold {unfold} taps of a row of {w} with padding {pad}"),
        });
    }
    let (c4, hp, wu) = (
        (c * unfold).div_ceil(4),
        h + 2 * pad,
        w + 2 * pad + 1 - unfold,
    );
    let u = |what, v| to_u32(OP, what, v);
    let params = PackParams {
        n: u("N", n)?,
        c: u("C", c)?,
        h: u("H", h)?,
        w: u("W", w)?,
        pad: u("pad", pad)?,
        c4: u("C4", c4)?,
        hp: u("HP", hp)?,
        unfold: u("unfold", unfold)?,
        ..Default::default()
    };
    let constants = [
        ("C4", c4 as f64),
        ("WU", wu as f64),
        ("HP", hp as f64),
        ("UNFOLD", unfold as f64),
    ];
    launch(gpu, OP, &constants, params, x, n * hp * wu * c4)
}

/// Single-channel images `x [N, 1, H, W]` (f32 or f16, giving texels of the same) four to a
/// texel, with `pad` zero borders: texel `(n4·(H+2·pad) + h)·(W+2·pad) + w` holds the pixel
/// `(h − pad, w − pad)` of images `4·n4 .. 4·n4+3`, zero past N (see the shader's header).
pub fn images4(gpu: &Gpu, x: &Tensor, pad: usize) -> Result<(Kernel, Texels)> {
    const OP: &str = "pack_images4";
    let (&[n, c, h, w], _) = expect_float_rank(OP, "x", x, 4)? else {
        unreachable!()
    };
    if c != 1 {
        return Err(Error::Shape {
            op: OP,
            detail: format!("packs single-channel images, got {c} channels"),
        });
    }
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    let u = |what, v| to_u32(OP, what, v);
    let params = PackParams {
        n: u("N", n)?,
        c: 1,
        h: u("H", h)?,
        w: u("W", w)?,
        pad: u("pad", pad)?,
        ..Default::default()
    };
    let constants = [("WU", wp as f64), ("HP", hp as f64)];
    launch(gpu, OP, &constants, params, x, n.div_ceil(4) * hp * wp)
}

/// Convolution weights `w [O, C, KH, KW]` as four output channels per texel, for the
/// forward (`flip` false) or, transposed and rotated by 180°, for grad_input (`flip` true);
/// `unfold` (1, or KW for a forward packed so) matches [`nhwc4`]'s.
pub fn conv_weight(gpu: &Gpu, w: &Tensor, flip: bool, unfold: usize) -> Result<(Kernel, Texels)> {
    const OP: &str = "pack_conv_weight";
    let (&[o, c, kh, kw], _) = expect_float_rank(OP, "w", w, 4)? else {
        unreachable!()
    };
    if unfold != 1 && (flip || unfold != kw) {
        return Err(Error::Shape {
            op: OP,
            detail: format!("unfold must be 1 or KW = {kw} (not flipped), got {unfold}"),
        });
    }
    let (ci, co) = if flip { (o, c) } else { (c * unfold, o) };
    let (ci4, co4) = (ci.div_ceil(4), co.div_ceil(4));
    let u = |what, v| to_u32(OP, what, v);
    let params = PackParams {
        n: u("O", o)?,
        c: u("C", c)?,
        h: u("KH", kh)?,
        w: u("KW", kw)?,
        c4: u("CI4", ci4)?,
        hp: u("CO4", co4)?,
        flip: flip as u32,
        unfold: u("unfold", unfold)?,
        ..Default::default()
    };
    launch(gpu, OP, &[], params, w, kh * (kw / unfold) * ci4 * 4 * co4)
}

/// A matrix `a [R, K]` (or, `transposed`, the transpose of `a [K, R]`) as rows of
/// ⌈K/4⌉ texels: texel `r·⌈K/4⌉ + k4`.
pub fn rows4(gpu: &Gpu, a: &Tensor, transposed: bool) -> Result<(Kernel, Texels)> {
    const OP: &str = "pack_rows4";
    let (&[d0, d1], _) = expect_float_rank(OP, "a", a, 2)? else {
        unreachable!()
    };
    let (r, k) = if transposed { (d1, d0) } else { (d0, d1) };
    let k4 = k.div_ceil(4);
    let u = |what, v| to_u32(OP, what, v);
    let params = PackParams {
        n: u("R", r)?,
        c: u("K", k)?,
        c4: u("K4", k4)?,
        flip: transposed as u32,
        ..Default::default()
    };
    launch(gpu, OP, &[], params, a, r * k4)
}
