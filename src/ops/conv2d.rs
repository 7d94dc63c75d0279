//! Launchers for `shaders/conv2d.wgsl`: 2-D convolution, NCHW, PyTorch's weight layout
//! `[out, in, kh, kw]`, stride and zero padding, with its three gradients.
//!
//! Mixed precision: the activations and their gradients (x, y, dy, dx) and the weights and
//! bias a launcher reads (w, b: the f16 copies of the master weights) are all f32 or all
//! f16, the type read off the tensors; weight and bias gradients (dw, db) are always f32.
//! Every sum is accumulated in f32. Texels passed in must hold the components of that type
//! too ([`pack`] makes f16 texels of f16 tensors).

use bytemuck::{Pod, Zeroable};

use super::{expect, expect_f32, expect_float_rank, expect_rank, float_dtype, pack, to_u32};
use crate::error::{Error, Result};
use crate::gpu::{
    DType, F16Variant, Gpu, Kernel, Shader, Tensor, Texels, conv_unrolls_positions, grid_1d,
};
pub use crate::vocab::Conv2dGeometry;

pub const SHADER: Shader = Shader::new("conv2d", include_str!("../../shaders/conv2d.wgsl"));

/// What the shader's `out` binding receives: an activation or its gradient (y, dx), of the
/// inputs' type, or a weight or bias gradient or its partial sums, always f32.
#[derive(Clone, Copy)]
enum Out {
    Activation,
    Gradient,
}

/// The shader for inputs (x, dy, w, b: `elem`) of `dtype`, with `out` (`out_elem`) as `out`
/// says. For f32 inputs, the file as written.
fn shader(dtype: DType, out: Out) -> Shader {
    match (dtype, out) {
        (DType::F16, Out::Activation) => SHADER.with_f16(F16Variant {
            aliases: &["elem", "out_elem"],
            texels: false,
        }),
        (DType::F16, Out::Gradient) => SHADER.with_f16(F16Variant {
            aliases: &["elem"],
            texels: false,
        }),
        _ => SHADER,
    }
}

/// Fails unless texels `t` hold components of `dtype`, the type of the op's other operands
/// (`other`: "y is", "the dy texels hold", ...).
fn expect_texels(
    op: &'static str,
    what: &str,
    t: &Texels,
    dtype: DType,
    other: &str,
) -> Result<()> {
    if t.dtype() == dtype {
        return Ok(());
    }
    Err(Error::Shape {
        op,
        detail: format!(
            "{what} hold {:?} components but {other} {dtype:?}; the texels must be packed \
             from tensors of the op's type",
            t.dtype()
        ),
    })
}

const WG_PIX: u32 = 16;
const WG_CH: u32 = 4;
const BLOCK: u32 = 4;
const CONSTANTS: [(&str, f64); 2] = [("WG_PIX", WG_PIX as f64), ("WG_CH", WG_CH as f64)];
/// grad_weight splits its reduction until about this many invocations run at once.
const TARGET_INVOCATIONS: u32 = 16_384;
/// llvmpipe stops an invocation's loops after 65,535 iterations in all, silently (the
/// gradient comes out partly zero). grad_weight splits its reduction so that no invocation
/// walks more output positions than this, half that limit; elsewhere the extra splits only
/// appear for reductions far longer than the reference network's.
const MAX_POSITIONS_PER_INVOCATION: usize = 32_768;

impl Conv2dGeometry {
    /// Reads the geometry off an input and a weight tensor (each f32 or f16; the launchers
    /// check their types), checking that they fit.
    pub fn of(op: &'static str, x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Self> {
        let (&[n, c, h, wd], _) = expect_float_rank(op, "x", x, 4)? else {
            unreachable!()
        };
        let (&[o, wc, kh, kw], _) = expect_float_rank(op, "w", w, 4)? else {
            unreachable!()
        };
        Self::checked(
            op,
            Conv2dGeometry {
                n,
                c,
                h,
                w: wd,
                o,
                kh,
                kw,
                stride,
                pad,
            },
            wc,
        )
    }

    fn checked(op: &'static str, g: Self, weight_channels: usize) -> Result<Self> {
        let fail = |detail: String| Err(Error::Shape { op, detail });
        if weight_channels != g.c {
            return fail(format!(
                "w has {weight_channels} input channels but x has {}",
                g.c
            ));
        }
        if g.stride == 0 {
            return fail("stride must be at least 1".into());
        }
        if g.h + 2 * g.pad < g.kh || g.w + 2 * g.pad < g.kw {
            return fail(format!(
                "a {}x{} kernel does not fit a {}x{} input with padding {}",
                g.kh, g.kw, g.h, g.w, g.pad
            ));
        }
        Ok(g)
    }

    fn params(&self, op: &'static str, splits: u32, images_per_split: u32) -> Result<ConvParams> {
        let u = |what, v| to_u32(op, what, v);
        // The largest tensor must be indexable in 32 bits (the shader's index type).
        u("input elements", self.n * self.c * self.h * self.w)?;
        u(
            "output elements",
            self.n * self.o * self.out_h() * self.out_w(),
        )?;
        Ok(ConvParams {
            n: u("N", self.n)?,
            c: u("C", self.c)?,
            h: u("H", self.h)?,
            w: u("W", self.w)?,
            o: u("O", self.o)?,
            kh: u("KH", self.kh)?,
            kw: u("KW", self.kw)?,
            stride: u("stride", self.stride)?,
            pad: u("pad", self.pad)?,
            oh: u("OH", self.out_h())?,
            ow: u("OW", self.out_w())?,
            splits,
            images_per_split,
            unfold: 1,
            bias_partials: 0,
            dy_pad: 0,
        })
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ConvParams {
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    o: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    oh: u32,
    ow: u32,
    splits: u32,
    images_per_split: u32,
    unfold: u32,
    bias_partials: u32,
    dy_pad: u32,
}

fn blocks(rows: usize, cols: usize) -> [u32; 3] {
    [
        (cols as u32).div_ceil(BLOCK * WG_PIX),
        (rows as u32).div_ceil(BLOCK * WG_CH),
        1,
    ]
}

/// `y = conv2d(x, w) + b`; `x [N, C, H, W]`, `w [O, C, KH, KW]`, `b [O]`, `y [N, O, OH, OW]`,
/// all f32 or all f16.
pub fn forward(
    gpu: &Gpu,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    y: &Tensor,
    stride: usize,
    pad: usize,
) -> Result<Kernel> {
    const OP: &str = "conv2d_forward";
    let g = Conv2dGeometry::of(OP, x, w, stride, pad)?;
    let dtype = x.dtype();
    expect(OP, "w", w, &g.weight_shape(), dtype)?;
    expect(OP, "b", b, &[g.o], dtype)?;
    expect(OP, "y", y, &g.output_shape(), dtype)?;
    let params = g.params(OP, 1, 0)?;
    let groups = blocks(g.o, g.n * g.out_h() * g.out_w());
    let bindings = [(1, x), (2, w), (3, b), (4, y)];
    Ok(Kernel::single(gpu.dispatch(
        &shader(dtype, Out::Activation),
        OP,
        &CONSTANTS,
        &params,
        &bindings,
        groups,
    )?))
}

/// `dx [N, C, H, W]` from `dy [N, O, OH, OW]` and `w [O, C, KH, KW]`, all f32 or all f16.
pub fn grad_input(
    gpu: &Gpu,
    dy: &Tensor,
    w: &Tensor,
    dx: &Tensor,
    stride: usize,
    pad: usize,
) -> Result<Kernel> {
    const OP: &str = "conv2d_grad_input";
    let g = Conv2dGeometry::of(OP, dx, w, stride, pad)?;
    let dtype = dx.dtype();
    expect(OP, "w", w, &g.weight_shape(), dtype)?;
    expect(OP, "dy", dy, &g.output_shape(), dtype)?;
    let params = g.params(OP, 1, 0)?;
    let groups = blocks(g.c, g.n * g.h * g.w);
    let bindings = [(1, dy), (2, w), (4, dx)];
    let constants = [
        CONSTANTS[0],
        CONSTANTS[1],
        ("GRAD_INPUT_STRIDE", stride as f64),
    ];
    Ok(Kernel::single(gpu.dispatch(
        &shader(dtype, Out::Activation),
        OP,
        &constants,
        &params,
        &bindings,
        groups,
    )?))
}

/// `dw [O, C, KH, KW]` (f32) from `dy [N, O, OH, OW]` and `x [N, C, H, W]` (both f32 or both
/// f16), splitting the reduction over images so that enough invocations run (see the
/// shader's header).
pub fn grad_weight(
    gpu: &Gpu,
    dy: &Tensor,
    x: &Tensor,
    dw: &Tensor,
    stride: usize,
    pad: usize,
) -> Result<Kernel> {
    let g = Conv2dGeometry::of("conv2d_grad_weight", x, dw, stride, pad)?;
    let block_count = (g.o as u32).div_ceil(BLOCK) * ((g.c * g.kh * g.kw) as u32).div_ceil(BLOCK);
    let splits = (TARGET_INVOCATIONS / block_count).clamp(1, g.n as u32) as usize;
    // Whole images per split, each walked row by row (a row's loop exit counts too).
    let per_image = g.out_h() * (g.out_w() + 1);
    let max_images = (MAX_POSITIONS_PER_INVOCATION / per_image).max(1);
    let splits = splits.max(g.n.div_ceil(max_images));
    grad_weight_split(gpu, dy, x, dw, stride, pad, splits)
}

/// [`grad_weight`] with an explicit number of splits (1 writes `dw` in a single dispatch).
pub fn grad_weight_split(
    gpu: &Gpu,
    dy: &Tensor,
    x: &Tensor,
    dw: &Tensor,
    stride: usize,
    pad: usize,
    splits: usize,
) -> Result<Kernel> {
    const OP: &str = "conv2d_grad_weight";
    let g = Conv2dGeometry::of(OP, x, dw, stride, pad)?;
    let dtype = x.dtype();
    expect(OP, "dy", dy, &g.output_shape(), dtype)?;
    expect_f32(OP, "dw", dw, &g.weight_shape())?;
    if splits == 0 || splits > g.n {
        return Err(Error::Shape {
            op: OP,
            detail: format!("splits must be in 1..={}, got {splits}", g.n),
        });
    }
    let images_per_split = g.n.div_ceil(splits);
    // Round so that no split is empty.
    let splits = g.n.div_ceil(images_per_split);
    let params = g.params(OP, splits as u32, images_per_split as u32)?;
    let taps = g.c * g.kh * g.kw;
    let [gx, gy, _] = blocks(g.o, taps);
    let groups = [gx, gy, splits as u32];
    let shader = shader(dtype, Out::Gradient);
    if splits == 1 {
        let bindings = [(1, dy), (5, x), (4, dw)];
        return Ok(Kernel::single(
            gpu.dispatch(&shader, OP, &CONSTANTS, &params, &bindings, groups)?,
        ));
    }
    let partial = gpu.zeros(&[splits, g.o * taps], DType::F32)?;
    let partial_pass = gpu.dispatch(
        &shader,
        OP,
        &CONSTANTS,
        &params,
        &[(1, dy), (5, x), (4, &partial)],
        groups,
    )?;
    let reduce = grad_weight_reduce(gpu, &partial, dw)?;
    let mut dispatches = vec![partial_pass];
    dispatches.extend(reduce.dispatches);
    Ok(Kernel::with_scratch(dispatches, vec![partial]))
}

/// `dw [O, C, KH, KW] = Σ_split partial[split, :]`, the second pass of a split grad_weight
/// (f32 partials and dw whatever the type of the activations).
pub fn grad_weight_reduce(gpu: &Gpu, partial: &Tensor, dw: &Tensor) -> Result<Kernel> {
    const OP: &str = "conv2d_grad_weight_reduce";
    let &[o, c, kh, kw] = expect_rank(OP, "dw", dw, 4)? else {
        unreachable!()
    };
    let splits = expect_rank(OP, "partial", partial, 2)?[0];
    expect_f32(OP, "partial", partial, &[splits, o * c * kh * kw])?;
    let g = Conv2dGeometry {
        n: 1,
        c,
        h: kh,
        w: kw,
        o,
        kh,
        kw,
        stride: 1,
        pad: 0,
    };
    let params = g.params(OP, to_u32(OP, "splits", splits)?, 0)?;
    let groups = grid_1d(to_u32(OP, "dw elements", dw.len())?.div_ceil(256));
    Ok(Kernel::single(gpu.dispatch(
        &SHADER,
        OP,
        &[],
        &params,
        &[(1, partial), (4, dw)],
        groups,
    )?))
}

/// `db [O] = Σ_{n, oy, ox} dy[n, :, oy, ox]`; dy f32 or f16, db f32.
pub fn grad_bias(gpu: &Gpu, dy: &Tensor, db: &Tensor) -> Result<Kernel> {
    const OP: &str = "conv2d_grad_bias";
    let (&[n, o, oh, ow], dtype) = expect_float_rank(OP, "dy", dy, 4)? else {
        unreachable!()
    };
    expect_f32(OP, "db", db, &[o])?;
    let g = Conv2dGeometry {
        n,
        c: 1,
        h: oh,
        w: ow,
        o,
        kh: 1,
        kw: 1,
        stride: 1,
        pad: 0,
    };
    let params = g.params(OP, 1, 0)?;
    Ok(Kernel::single(gpu.dispatch(
        &shader(dtype, Out::Gradient),
        OP,
        &[],
        &params,
        &[(1, dy), (4, db)],
        [o as u32, 1, 1],
    )?))
}

// ---- texel path (stride 1): operands packed by `ops::pack`, see the shader's header ----

const TEX_WG: u32 = 64;
const TEX_POS: usize = 16;

impl Conv2dGeometry {
    /// The convolution grad_input runs: dy padded by KH − 1 − pad, through the flipped
    /// weights, back to x's shape.
    fn transposed(&self) -> Conv2dGeometry {
        Conv2dGeometry {
            c: self.o,
            h: self.out_h(),
            w: self.out_w(),
            o: self.c,
            pad: self.grad_input_pad(),
            ..*self
        }
    }

    /// The zero border of dy that grad_input on the texel path reads: KH − 1 − pad. The dy
    /// texels of a layer are packed so once, and grad_weight reads them too.
    pub fn grad_input_pad(&self) -> usize {
        self.kh - 1 - self.pad
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
}

fn texel_groups(invocations: usize) -> [u32; 3] {
    grid_1d((invocations as u32).div_ceil(TEX_WG))
}

fn expect_texel_path(op: &'static str, g: &Conv2dGeometry) -> Result<()> {
    if g.texel_path_fits() {
        return Ok(());
    }
    Err(Error::Shape {
        op,
        detail: format!(
            "the texel kernels need stride 1, a square kernel and padding under its size; got \
             stride {}, a {}x{} kernel, padding {}",
            g.stride, g.kh, g.kw, g.pad
        ),
    })
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
    let unroll = [(
        "UNROLL_POSITIONS",
        f64::from(u8::from(conv_unrolls_positions(unfold))),
    )];
    Ok(Kernel::single(gpu.dispatch_with_texels(
        &shader(dtype, Out::Activation),
        OP,
        &unroll,
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

/// `y = conv2d(x, w) + b` at stride 1 for a single-channel `x` (any kernel and padding), from
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
    if g.stride != 1 || !g.images_in_lanes() || taps > MAX_IMAGES4_TAPS {
        return Err(Error::Shape {
            op: OP,
            detail: format!(
                "takes stride 1, one input channel and at most {MAX_IMAGES4_TAPS} taps; got \
                 stride {}, {} channels, a {}x{} kernel",
                g.stride, g.c, g.kh, g.kw
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
        &[],
        &params,
        &[(3, b), (4, y)],
        &[(6, xt), (7, wt)],
        texel_groups(invocations),
    )?))
}

/// The forward of a single-channel layer through [`forward_tex_images4`]: packs x four images
/// per texel and w four taps per texel, then convolves (all f32 or all f16, as [`forward`]).
pub fn forward_packed_images4(
    gpu: &Gpu,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    y: &Tensor,
    pad: usize,
) -> Result<Kernel> {
    const OP: &str = "conv2d_forward_tex_images4";
    let g = Conv2dGeometry::of(OP, x, w, 1, pad)?;
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

/// `dw` from `xt` (x packed by [`pack::nhwc4`] with `g.pad` and `g.unfold()`) and `dyt` (dy
/// packed by [`pack::nhwc4`] with `dy_pad`, no unfolding), split over chunks of output rows
/// like [`grad_weight`] over images; with `db`, the bias gradient too (from the same dy
/// fetches). The texels are both f32 or both f16; `dw` and `db` are f32.
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
    // Splits take whole output rows (n, oy), at least 64 positions' worth each.
    let rows = g.n * g.out_h();
    let min_rows = 64usize.div_ceil(g.out_w());
    let target = gpu.adapter_kind().conv_grad_weight_tex_invocations();
    let max_rows = (MAX_POSITIONS_PER_INVOCATION / (g.out_w() + 1)).max(1);
    let splits = (target / blocks)
        .clamp(1, rows.div_ceil(min_rows))
        .max(rows.div_ceil(max_rows));
    let per_split = rows.div_ceil(splits);
    let splits = rows.div_ceil(per_split);
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
    // The entry's only storage binding is f32 (dw or partials) and it reads texels of either
    // type as vec4<f32>: the file as written serves f32 and f16 texels alike.
    if splits == 1 && db.is_none() {
        return Ok(Kernel::single(gpu.dispatch_with_texels(
            &SHADER,
            OP,
            &[],
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
        &[],
        &params,
        &[(4, &partial)],
        &textures,
        groups,
    )?;
    let view = |offset, shape: &[usize]| partial.view(offset, shape).expect("inside the partials");
    let mut dispatches = vec![partial_pass];
    dispatches.extend(grad_weight_reduce(gpu, &view(0, &[splits, weights]), dw)?.dispatches);
    if let Some(db) = db {
        let db4 = db.reshaped(&[g.o, 1, 1, 1]).expect("same length");
        let reduce = grad_weight_reduce(gpu, &view(bias_partials, &[splits, g.o]), &db4)?;
        dispatches.extend(reduce.dispatches);
    }
    Ok(Kernel::with_scratch(dispatches, vec![partial]))
}

/// The forward through the texel kernels: packs x and w, convolves (all f32 or all f16, as
/// [`forward`]). Also returns x's texels, which [`grad_weight_packed`] reads in the backward.
pub fn forward_packed(
    gpu: &Gpu,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    y: &Tensor,
    pad: usize,
) -> Result<(Kernel, Texels)> {
    const OP: &str = "conv2d_forward_tex";
    let g = Conv2dGeometry::of(OP, x, w, 1, pad)?;
    expect_texel_path(OP, &g)?;
    expect(OP, "w", w, &g.weight_shape(), x.dtype())?;
    let unfold = g.unfold();
    let (pack_x, xt) = pack::nhwc4(gpu, x, pad, unfold)?;
    let (pack_w, wt) = pack::conv_weight(gpu, w, false, unfold)?;
    let conv = forward_tex(gpu, &g, unfold, &xt, &wt, b, y)?;
    Ok((Kernel::chain([pack_x, pack_w, conv]), xt))
}

/// grad_input through the texel kernels: dy padded and the weights flipped, then the
/// forward kernel (with a zero bias); all f32 or all f16, as [`grad_input`].
pub fn grad_input_packed(
    gpu: &Gpu,
    dy: &Tensor,
    w: &Tensor,
    dx: &Tensor,
    pad: usize,
) -> Result<Kernel> {
    const OP: &str = "conv2d_grad_input";
    let g = Conv2dGeometry::of(OP, dx, w, 1, pad)?;
    expect_texel_path(OP, &g)?;
    expect(OP, "dy", dy, &g.output_shape(), dx.dtype())?;
    let (pack_dy, dyt) = pack::nhwc4(gpu, dy, g.grad_input_pad(), 1)?;
    let conv = grad_input_tex(gpu, &dyt, w, dx, pad)?;
    Ok(Kernel::chain([pack_dy, conv]))
}

/// grad_input from `dyt`, dy packed by [`pack::nhwc4`] with the border
/// [`Conv2dGeometry::grad_input_pad`]: the weights flipped, then the forward kernel (with a
/// zero bias). `w` and `dx` are f32 or f16, and `dyt` holds components of their type.
pub fn grad_input_tex(
    gpu: &Gpu,
    dyt: &Texels,
    w: &Tensor,
    dx: &Tensor,
    pad: usize,
) -> Result<Kernel> {
    const OP: &str = "conv2d_grad_input";
    let g = Conv2dGeometry::of(OP, dx, w, 1, pad)?;
    expect_texel_path(OP, &g)?;
    let dtype = dx.dtype();
    expect(OP, "w", w, &g.weight_shape(), dtype)?;
    expect_dy_texels(OP, &g, dyt, g.grad_input_pad())?;
    expect_texels(OP, "the dy texels", dyt, dtype, "dx is")?;
    let (pack_w, wt) = pack::conv_weight(gpu, w, true, 1)?;
    let zero_bias = gpu.zeros(&[g.c], dtype)?;
    let conv = forward_tex(gpu, &g.transposed(), 1, dyt, &wt, &zero_bias, dx)?;
    Ok(Kernel::chain([
        pack_w,
        conv,
        Kernel::with_scratch(Vec::new(), vec![zero_bias]),
    ]))
}

/// grad_weight (and with `db` grad_bias) through the texel kernels, from x's texels as
/// [`forward_packed`] or [`pack::nhwc4`] made them: `dy` f32 or f16 and `xt` of its type,
/// `dw` and `db` f32.
pub fn grad_weight_packed(
    gpu: &Gpu,
    dy: &Tensor,
    xt: &Texels,
    dw: &Tensor,
    db: Option<&Tensor>,
    g: &Conv2dGeometry,
) -> Result<Kernel> {
    const OP: &str = "conv2d_grad_weight_tex";
    let dtype = float_dtype(OP, "dy", dy)?;
    expect(OP, "dy", dy, &g.output_shape(), dtype)?;
    expect_texels(OP, "the x texels", xt, dtype, "dy is")?;
    let (pack_dy, dyt) = pack::nhwc4(gpu, dy, 0, 1)?;
    let product = grad_weight_tex(gpu, g, xt, &dyt, 0, dw, db)?;
    Ok(Kernel::chain([pack_dy, product]))
}
