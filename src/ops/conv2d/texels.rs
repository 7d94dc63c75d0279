//! The texel launchers of `shaders/conv2d.wgsl`: operands packed by [`pack`] into the
//! layouts the shader's header describes, any stride, square kernels with padding under
//! their size ([`Conv2dGeometry::texel_path_fits`]). The stride is the pipeline constant
//! `TEX_STRIDE`; grad_input is the forward's entry with `TEX_GRAD_INPUT`, taking dx's
//! positions phase by phase at stride > 1 (see the shader for why not over a dilated dy).

use super::storage::grad_weight_reduce as reduce;
use super::{ConvParams, MAX_POSITIONS_PER_INVOCATION, Out, SHADER, expect_texels, shader};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Kernel, Tensor, Texels, conv_unrolls_positions, grid_1d};
use crate::ops::{expect, expect_f32, float_dtype, pack, to_u32};
use crate::vocab::Conv2dGeometry;

const TEX_WG: u32 = 64;
const TEX_POS: usize = 16;

impl Conv2dGeometry {
    /// The padding of the transposed convolution grad_input runs (dy through the flipped
    /// weights, back to x's shape): KH − 1 − pad.
    fn transposed_pad(&self) -> usize {
        self.kh - 1 - self.pad
    }

    /// The zero border of dy that grad_input on the texel path reads: ⌈(KH − 1 − pad)/S⌉,
    /// KH − 1 − pad at stride 1. Taken phase by phase, the transposed convolution reads dy
    /// undilated, and no tap of a position inside x reaches further. The dy texels of a
    /// layer are packed so once, and grad_weight reads them too.
    pub fn grad_input_pad(&self) -> usize {
        self.transposed_pad().div_ceil(self.stride)
    }

    /// Texels of dy packed with `dy_pad` (channels by fours, no unfolding).
    fn dy_texels(&self, dy_pad: usize) -> usize {
        self.n * (self.out_h() + 2 * dy_pad) * (self.out_w() + 2 * dy_pad) * self.o.div_ceil(4)
    }

    fn positions(&self) -> usize {
        self.n * self.out_h() * self.out_w()
    }

    /// The shader's parameters for the texel entries over operands packed with `unfold`:
    /// a KH × KW/U convolution over C·U channels, with the layer's own output size.
    fn packed_params(
        &self,
        op: &'static str,
        unfold: usize,
        splits: u32,
        per_split: u32,
    ) -> Result<ConvParams> {
        Ok(ConvParams {
            c: to_u32(op, "C·unfold", self.c * unfold)?,
            kw: (self.kw / unfold) as u32,
            unfold: unfold as u32,
            ..self.params(op, splits, per_split)?
        })
    }

    /// The shader's parameters of grad_input as `conv2d_forward_tex` with `TEX_GRAD_INPUT`
    /// reads them: the transposed convolution, from dy's O channels of OH × OW to x's C
    /// channels of H × W, its padding KH − 1 − pad (the dy texels' border is derived from
    /// it and the stride).
    fn grad_input_params(&self, op: &'static str) -> Result<ConvParams> {
        let p = self.params(op, 1, 0)?;
        Ok(ConvParams {
            c: p.o,
            h: p.oh,
            w: p.ow,
            o: p.c,
            oh: p.h,
            ow: p.w,
            pad: to_u32(op, "KH − 1 − pad", self.transposed_pad())?,
            ..p
        })
    }

    /// The invocations of grad_input's `conv2d_forward_tex`: per output channel block of 16,
    /// S² phases of ⌈N·⌈H/S⌉·⌈W/S⌉ / 16⌉ position blocks each.
    fn grad_input_invocations(&self) -> usize {
        let s = self.stride;
        let grid = self.n * self.h.div_ceil(s) * self.w.div_ceil(s);
        s * s * grid.div_ceil(TEX_POS) * self.c.div_ceil(16)
    }
}

fn texel_groups(invocations: usize) -> [u32; 3] {
    grid_1d((invocations as u32).div_ceil(TEX_WG))
}

pub(super) fn expect_texel_path(op: &'static str, g: &Conv2dGeometry) -> Result<()> {
    if g.texel_path_fits() {
        return Ok(());
    }
    Err(Error::Shape {
        op,
        detail: format!(
            "the texel kernels need a square kernel and padding under its size; got a {}x{} \
             kernel, padding {}",
            g.kh, g.kw, g.pad
        ),
    })
}

/// The pipeline constants of `conv2d_forward_tex` over operands packed with `unfold`, at
/// `stride`, as the forward or as grad_input.
fn forward_tex_constants(
    unfold: usize,
    stride: usize,
    grad_input: bool,
) -> [(&'static str, f64); 3] {
    [
        (
            "UNROLL_POSITIONS",
            f64::from(u8::from(conv_unrolls_positions(unfold))),
        ),
        ("TEX_STRIDE", stride as f64),
        ("TEX_GRAD_INPUT", f64::from(u8::from(grad_input))),
    ]
}

/// `y = conv2d(x, w) + b` from `xt` (x packed by [`pack::nhwc4`] with `g.pad` and
/// `unfold`) and `wt` (w packed by [`pack::conv_weight`], not flipped, the same `unfold`).
/// `b` and `y` are f32 or f16, and the texels hold components of their type.
pub fn forward_tex(
    gpu: &Gpu,
    g: &Conv2dGeometry,
    unfold: usize,
    xt: &Texels,
    wt: &Texels,
    b: &Tensor,
    y: &Tensor,
) -> Result<Kernel> {
    const OP: &str = "conv2d_forward_tex";
    expect_texel_path(OP, g)?;
    let dtype = float_dtype(OP, "y", y)?;
    expect(OP, "y", y, &g.output_shape(), dtype)?;
    expect(OP, "b", b, &[g.o], dtype)?;
    expect_texels(OP, "the input texels", xt, dtype, "y is")?;
    expect_texels(OP, "the weight texels", wt, dtype, "y is")?;
    let params = g.packed_params(OP, unfold, 1, 0)?;
    let invocations = g.positions().div_ceil(TEX_POS) * g.o.div_ceil(16);
    Ok(Kernel::single(gpu.dispatch_with_texels(
        &shader(dtype, Out::Activation),
        OP,
        &forward_tex_constants(unfold, g.stride, false),
        &params,
        &[(3, b), (4, y)],
        &[(6, xt), (7, wt)],
        texel_groups(invocations),
    )?))
}

const IMG_POS: usize = 4;
/// The most taps the images-in-lanes forward takes: an invocation's loops run about
/// ⌈taps/4⌉ + 400 times, which must stay under llvmpipe's 65,535 (see
/// MAX_POSITIONS_PER_INVOCATION).
const MAX_IMAGES4_TAPS: usize = 40_000;

fn expect_texel_count(op: &'static str, what: &str, t: &Texels, want: usize) -> Result<()> {
    if t.len() == want {
        return Ok(());
    }
    Err(Error::Shape {
        op,
        detail: format!(
            "{} {what} texels given, the layer packs into {want}",
            t.len()
        ),
    })
}

/// `y = conv2d(x, w) + b` for a single-channel `x` (any kernel, stride and padding), from
/// `xt` (x packed by [`pack::images4`] with `g.pad`: four images per texel) and `wt` (w as
/// `[O, KH·KW]` packed by [`pack::rows4`]: four taps per texel). `b` and `y` are f32 or f16,
/// and the texels hold components of their type.
pub fn forward_tex_images4(
    gpu: &Gpu,
    g: &Conv2dGeometry,
    xt: &Texels,
    wt: &Texels,
    b: &Tensor,
    y: &Tensor,
) -> Result<Kernel> {
    const OP: &str = "conv2d_forward_tex_images4";
    let taps = g.kh * g.kw;
    if !g.images_in_lanes() || taps > MAX_IMAGES4_TAPS {
        return Err(Error::Shape {
            op: OP,
            detail: format!(
                "takes one input channel and at most {MAX_IMAGES4_TAPS} taps; got {} \
                 channels, a {}x{} kernel",
                g.c, g.kh, g.kw
            ),
        });
    }
    let dtype = float_dtype(OP, "y", y)?;
    expect(OP, "y", y, &g.output_shape(), dtype)?;
    expect(OP, "b", b, &[g.o], dtype)?;
    expect_texels(OP, "the input texels", xt, dtype, "y is")?;
    expect_texels(OP, "the weight texels", wt, dtype, "y is")?;
    let quads = g.n.div_ceil(4);
    let x_texels = quads * (g.h + 2 * g.pad) * (g.w + 2 * g.pad);
    expect_texel_count(OP, "input", xt, x_texels)?;
    expect_texel_count(OP, "weight", wt, g.o * taps.div_ceil(4))?;
    let params = g.params(OP, 1, 0)?;
    let positions = quads * g.out_h() * g.out_w();
    let invocations = positions.div_ceil(IMG_POS) * g.o.div_ceil(16);
    Ok(Kernel::single(gpu.dispatch_with_texels(
        &shader(dtype, Out::Activation),
        OP,
        &[("TEX_STRIDE", g.stride as f64)],
        &params,
        &[(3, b), (4, y)],
        &[(6, xt), (7, wt)],
        texel_groups(invocations),
    )?))
}

/// The forward of a single-channel layer through [`forward_tex_images4`]: packs x four images
/// per texel and w four taps per texel, then convolves (all f32 or all f16, as the storage
/// forward).
pub fn forward_packed_images4(
    gpu: &Gpu,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    y: &Tensor,
    stride: usize,
    pad: usize,
) -> Result<Kernel> {
    const OP: &str = "conv2d_forward_tex_images4";
    let g = Conv2dGeometry::of(OP, x, w, stride, pad)?;
    expect(OP, "w", w, &g.weight_shape(), x.dtype())?;
    let (pack_x, xt) = pack::images4(gpu, x, pad)?;
    let rows = w.reshaped(&[g.o, g.c * g.kh * g.kw]).expect("same length");
    let (pack_w, wt) = pack::rows4(gpu, &rows, false)?;
    let conv = forward_tex_images4(gpu, &g, &xt, &wt, b, y)?;
    Ok(Kernel::chain([pack_x, pack_w, conv]))
}

fn expect_dy_texels(
    op: &'static str,
    g: &Conv2dGeometry,
    dyt: &Texels,
    dy_pad: usize,
) -> Result<()> {
    let want = g.dy_texels(dy_pad);
    if dyt.len() == want {
        return Ok(());
    }
    Err(Error::Shape {
        op,
        detail: format!(
            "{} dy texels given; dy {:?} with padding {dy_pad} packs into {want}",
            dyt.len(),
            g.output_shape()
        ),
    })
}

/// How [`grad_weight_tex`] over `blocks` register blocks splits its reduction: `(splits,
/// output rows per split)`. Splits take whole output rows (n, oy), at least 64 positions'
/// worth each, up to about the adapter's target of invocations, and never more rows than
/// llvmpipe's loop limit lets one invocation walk.
fn grad_weight_tex_splits(gpu: &Gpu, g: &Conv2dGeometry, blocks: usize) -> (usize, usize) {
    let rows = g.n * g.out_h();
    let min_rows = 64usize.div_ceil(g.out_w());
    let target = gpu.adapter_kind().conv_grad_weight_tex_invocations();
    let max_rows = (MAX_POSITIONS_PER_INVOCATION / (g.out_w() + 1)).max(1);
    let splits = (target / blocks)
        .clamp(1, rows.div_ceil(min_rows))
        .max(rows.div_ceil(max_rows));
    let per_split = rows.div_ceil(splits);
    (rows.div_ceil(per_split), per_split)
}

/// `dw` from `xt` (x packed by [`pack::nhwc4`] with `g.pad` and `g.unfold()`) and `dyt` (dy
/// packed by [`pack::nhwc4`] with `dy_pad`, no unfolding), split over chunks of output rows
/// as the storage grad_weight splits over images; with `db`, the bias gradient too (from
/// the same dy fetches). The texels are both f32 or both f16; `dw` and `db` are f32.
pub fn grad_weight_tex(
    gpu: &Gpu,
    g: &Conv2dGeometry,
    xt: &Texels,
    dyt: &Texels,
    dy_pad: usize,
    dw: &Tensor,
    db: Option<&Tensor>,
) -> Result<Kernel> {
    const OP: &str = "conv2d_grad_weight_tex";
    expect_texel_path(OP, g)?;
    expect_f32(OP, "dw", dw, &g.weight_shape())?;
    expect_dy_texels(OP, g, dyt, dy_pad)?;
    expect_texels(OP, "the x texels", xt, dyt.dtype(), "the dy texels hold")?;
    if let Some(db) = db {
        expect_f32(OP, "db", db, &[g.o])?;
    }
    let unfold = g.unfold();
    let taps = g.kh * g.kw;
    let blocks = g.o.div_ceil(8) * (g.c * unfold).div_ceil(8) * taps / unfold;
    let (splits, per_split) = grad_weight_tex_splits(gpu, g, blocks);
    let weights = g.o * g.c * taps;
    // The bias partials follow the weight partials at a 256-byte-aligned offset, so that
    // each part can be bound as a view of its own.
    let bias_partials = (splits * weights).div_ceil(64) * 64;
    let mut params = g.packed_params(
        OP,
        unfold,
        splits as u32,
        to_u32(OP, "rows per split", per_split)?,
    )?;
    params.dy_pad = to_u32(OP, "dy padding", dy_pad)?;
    let groups = texel_groups(blocks * splits);
    let textures = [(6, xt), (7, dyt)];
    let stride = [("TEX_STRIDE", g.stride as f64)];
    // The entry's only storage binding is f32 (dw or partials) and it reads texels of either
    // type as vec4<f32>: the file as written serves f32 and f16 texels alike.
    if splits == 1 && db.is_none() {
        return Ok(Kernel::single(gpu.dispatch_with_texels(
            &SHADER,
            OP,
            &stride,
            &params,
            &[(4, dw)],
            &textures,
            groups,
        )?));
    }
    if db.is_some() {
        params.bias_partials = to_u32(OP, "partials", bias_partials)?;
    }
    let partial = gpu.zeros(&[bias_partials + splits * g.o], DType::F32)?;
    let partial_pass = gpu.dispatch_with_texels(
        &SHADER,
        OP,
        &stride,
        &params,
        &[(4, &partial)],
        &textures,
        groups,
    )?;
    let view = |offset, shape: &[usize]| partial.view(offset, shape).expect("inside the partials");
    let mut dispatches = vec![partial_pass];
    dispatches.extend(reduce(gpu, &view(0, &[splits, weights]), dw)?.dispatches);
    if let Some(db) = db {
        let db4 = db.reshaped(&[g.o, 1, 1, 1]).expect("same length");
        let db_sum = reduce(gpu, &view(bias_partials, &[splits, g.o]), &db4)?;
        dispatches.extend(db_sum.dispatches);
    }
    Ok(Kernel::with_scratch(dispatches, vec![partial]))
}

/// The forward through the texel kernels: packs x and w, convolves (all f32 or all f16, as
/// the storage forward). Also returns x's texels, which [`grad_weight_tex`] reads in the
/// backward.
pub fn forward_packed(
    gpu: &Gpu,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    y: &Tensor,
    stride: usize,
    pad: usize,
) -> Result<(Kernel, Texels)> {
    const OP: &str = "conv2d_forward_tex";
    let g = Conv2dGeometry::of(OP, x, w, stride, pad)?;
    expect_texel_path(OP, &g)?;
    expect(OP, "w", w, &g.weight_shape(), x.dtype())?;
    let unfold = g.unfold();
    let (pack_x, xt) = pack::nhwc4(gpu, x, pad, unfold)?;
    let (pack_w, wt) = pack::conv_weight(gpu, w, false, unfold)?;
    let conv = forward_tex(gpu, &g, unfold, &xt, &wt, b, y)?;
    Ok((Kernel::chain([pack_x, pack_w, conv]), xt))
}

/// grad_input of the convolution of `stride` and `pad` from `dyt`, dy packed by
/// [`pack::nhwc4`] with the border [`Conv2dGeometry::grad_input_pad`]: the weights flipped,
/// then the forward's entry as grad_input (with a zero bias; see the shader). `w` and `dx`
/// are f32 or f16, and `dyt` holds components of their type.
pub fn grad_input_tex(
    gpu: &Gpu,
    dyt: &Texels,
    w: &Tensor,
    dx: &Tensor,
    stride: usize,
    pad: usize,
) -> Result<Kernel> {
    const OP: &str = "conv2d_grad_input";
    let g = Conv2dGeometry::of(OP, dx, w, stride, pad)?;
    expect_texel_path(OP, &g)?;
    let dtype = dx.dtype();
    expect(OP, "w", w, &g.weight_shape(), dtype)?;
    expect_dy_texels(OP, &g, dyt, g.grad_input_pad())?;
    expect_texels(OP, "the dy texels", dyt, dtype, "dx is")?;
    let (pack_w, wt) = pack::conv_weight(gpu, w, true, 1)?;
    let zero_bias = gpu.zeros(&[g.c], dtype)?;
    let conv = gpu.dispatch_with_texels(
        &shader(dtype, Out::Activation),
        "conv2d_forward_tex",
        &forward_tex_constants(1, stride, true),
        &g.grad_input_params(OP)?,
        &[(3, &zero_bias), (4, dx)],
        &[(6, dyt), (7, &wt)],
        texel_groups(g.grad_input_invocations()),
    )?;
    Ok(Kernel::chain([
        pack_w,
        Kernel::with_scratch(vec![conv], vec![zero_bias]),
    ]))
}
