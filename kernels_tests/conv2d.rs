//! Convolution (`shaders/conv2d.wgsl`): every entry against `cpu::conv2d` at each point of a
//! matrix of kernel path × element type × geometry, and the gradients against f64 finite
//! differences.
//!
//! On f16 tensors (mixed precision) the inputs are rounded to f16 first, so the reference
//! runs on exactly the values the kernel reads. f16 × f16 products are exact in f32 and the
//! sums run in f32, so the f32 bounds hold unchanged, plus one f16 rounding where the output
//! is stored as f16 (y and dx; dw and db are f32): `stored_bound`. A kernel reading f16 as
//! f32, or summing in f16, is far outside (an f16 sum of C·KH·KW terms errs by up to about
//! C·KH·KW·U16·Σ|terms|).

use crate::common::*;
use siamese_gpu::DType::{self, F16};
use siamese_gpu::cpu::conv2d::{self as cpu, Conv2dGeometry};
use siamese_gpu::gpu::{Conv2dKernels, Operands};
use siamese_gpu::ops::conv2d::{Conv2dTensors, plan};
// The launcher of each entry point (what `plan` composes), to drive one with operands of
// the test's own.
use siamese_gpu::ops::conv2d::kernels as conv2d;
use siamese_gpu::ops::pack;
use siamese_gpu::{Kernel, Tensor, Texels};

#[allow(clippy::too_many_arguments)] // one argument per field of the geometry
const fn geom(
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
) -> Conv2dGeometry {
    Conv2dGeometry {
        n,
        c,
        h,
        w,
        o,
        kh,
        kw,
        stride,
        pad,
    }
}

/// The convolution's kernel paths. Their launchers are called in the `launch_*` functions
/// below; elsewhere only where a test hands texels from one kernel to the next
/// (`conv2d_texel_handoffs_give_the_launchers_bits`) or checks a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// conv2d_forward, conv2d_grad_input, conv2d_grad_weight (with conv2d_grad_weight_reduce
    /// summing its splits) and conv2d_grad_bias, on storage buffers.
    Storage,
    /// The operands packed as texels (pack_nhwc4, pack_conv_weight), then
    /// conv2d_forward_tex; grad_input is conv2d_forward_tex as grad_input, over dy bordered
    /// by ⌈(KH − 1 − pad)/S⌉ with the weights flipped, dx's positions phase by phase at
    /// stride S > 1; conv2d_grad_weight_tex sums dw and db from the same dy fetches.
    Texels,
    /// Single-channel layers with four images in a texel's lanes: pack_images4 and pack_rows4,
    /// then conv2d_forward_tex_images4. A forward only.
    Images4,
}

const FORWARD_PATHS: [Path; 3] = [Path::Storage, Path::Texels, Path::Images4];
const GRAD_PATHS: [Path; 2] = [Path::Storage, Path::Texels];

/// Storage: batch 1, channel and pixel counts off the 4×4 register block and the 16×4
/// workgroup, stride 2 and 3, padding up to 2, non-square and 1×1 kernels, a kernel as large
/// as the padded input, the reference network's two layers (1→32 5×5 on 28×28; 32→64 3×3 on
/// the pooled 12×12), and 3·28·28 = 2,352 positions per output channel (many strides of
/// conv2d_grad_bias's 64-wide loop, across images).
const SHAPES: &[Conv2dGeometry] = &[
    geom(1, 1, 1, 1, 1, 1, 1, 1, 0),
    geom(1, 1, 28, 28, 32, 5, 5, 1, 0),
    geom(2, 32, 12, 12, 64, 3, 3, 1, 0),
    geom(3, 3, 7, 9, 5, 3, 3, 2, 1),
    geom(2, 5, 8, 6, 7, 4, 2, 3, 2),
    geom(1, 2, 5, 5, 3, 5, 5, 1, 2),
    geom(4, 6, 11, 13, 9, 1, 1, 1, 0),
    geom(3, 1, 30, 30, 2, 3, 3, 1, 0),
];

/// Texels (square kernels, padding under the kernel): channel counts off the 4-channel
/// texel and the 8-channel block (1, 3, 5, 9, 13), position counts off the 8-position block,
/// padding 0–3, batch 1, and the reference network's two layers. Over padding (and in every
/// grad_input) positions run images innermost and border taps are skipped per block of 16:
/// batches of 16 and 37 give blocks of one (oy, ox) and blocks that straddle two.
///
/// Strided, a ResNet's convolutions at small batches: 3×3 padding 1 at stride 1 (64 → 64) and
/// stride 2 (16 → 32 on 28×28), the 7×7 stem with padding 3 at stride 2 on RGB (unfolded), the
/// 1×1 projection at stride 2; each with H + 2·pad − K or W + 2·pad − K not a multiple of S
/// (the rows or columns of x no window reaches, and phases of dx with fewer rows), C and O
/// off multiples of 4, a single image, batches of 16 and 37 over padding, stride 3, and a
/// stride past the kernel (2×2 at stride 3: phases of dx that no tap reaches).
const TEX_SHAPES: &[Conv2dGeometry] = &[
    geom(1, 1, 1, 1, 1, 1, 1, 1, 0),
    geom(1, 1, 28, 28, 32, 5, 5, 1, 0),
    geom(2, 32, 12, 12, 64, 3, 3, 1, 0),
    geom(3, 3, 7, 9, 5, 3, 3, 1, 1),
    geom(2, 9, 6, 5, 13, 3, 3, 1, 2),
    geom(1, 5, 5, 5, 3, 5, 5, 1, 2),
    geom(4, 6, 11, 13, 9, 1, 1, 1, 0),
    geom(16, 7, 6, 5, 10, 3, 3, 1, 1),
    geom(37, 2, 7, 6, 5, 3, 3, 1, 2),
    geom(2, 64, 8, 8, 64, 3, 3, 1, 1),
    geom(2, 16, 28, 28, 32, 3, 3, 2, 1),
    geom(3, 5, 8, 11, 6, 3, 3, 2, 1),
    geom(1, 7, 10, 10, 5, 3, 3, 2, 1),
    geom(2, 3, 23, 20, 10, 7, 7, 2, 3),
    geom(2, 12, 7, 8, 20, 1, 1, 2, 0),
    geom(16, 8, 6, 7, 9, 3, 3, 2, 1),
    geom(37, 2, 7, 6, 5, 3, 3, 2, 1),
    geom(2, 4, 10, 9, 6, 3, 3, 3, 1),
    geom(3, 6, 8, 8, 4, 2, 2, 3, 1),
    geom(1, 2, 9, 9, 3, 7, 7, 1, 3),
];

/// Images4 (one input channel): the reference network's first layer at batch 256 and with
/// padding 2; batches that leave lanes of the last texel empty (1, 5, 7, 9, 3); padding 1–3
/// (3 past a 3×3 kernel: whole taps of border); output channel counts off the 16-channel
/// block (1, 5, 9, 17, 20); tap counts off the step of four (1, 4, 6, 9, 25: zero-weight taps
/// in the last step) and a non-square kernel; strided: a grayscale ResNet stem (7×7, padding
/// 3, stride 2), 3×3 and 1×1 at stride 2 with H + 2·pad − K odd, and stride 3.
const IMAGES4_SHAPES: &[Conv2dGeometry] = &[
    geom(256, 1, 28, 28, 32, 5, 5, 1, 0),
    geom(1, 1, 1, 1, 1, 1, 1, 1, 0),
    geom(5, 1, 9, 7, 20, 3, 3, 1, 1),
    geom(7, 1, 6, 6, 5, 5, 5, 1, 2),
    geom(4, 1, 5, 8, 16, 2, 2, 1, 1),
    geom(3, 1, 4, 4, 17, 3, 3, 1, 3),
    geom(6, 1, 7, 5, 9, 2, 3, 1, 0),
    geom(9, 1, 28, 28, 32, 5, 5, 1, 2),
    geom(5, 1, 9, 8, 20, 7, 7, 2, 3),
    geom(3, 1, 8, 7, 9, 3, 3, 2, 1),
    geom(4, 1, 6, 7, 5, 1, 1, 2, 0),
    geom(2, 1, 11, 10, 6, 3, 3, 3, 0),
];

fn shapes(path: Path) -> &'static [Conv2dGeometry] {
    match path {
        Path::Storage => SHAPES,
        Path::Texels => TEX_SHAPES,
        Path::Images4 => IMAGES4_SHAPES,
    }
}

/// Small geometries for finite differences: with stride and padding for the storage path;
/// for the texel path with padding and a 2×2 kernel, and strided as a ResNet's are (3×3
/// padding 1, 1×1, the 7×7 stem with padding 3, all at stride 2), each with H + 2·pad − K or
/// W + 2·pad − K odd.
const FD_SHAPES: &[Conv2dGeometry] = &[
    geom(1, 2, 5, 4, 3, 3, 3, 1, 1),
    geom(2, 1, 6, 6, 2, 3, 2, 2, 1),
    geom(1, 2, 4, 5, 2, 2, 3, 3, 2),
];
const TEX_FD_SHAPES: &[Conv2dGeometry] = &[
    geom(1, 2, 5, 4, 3, 3, 3, 1, 1),
    geom(2, 5, 4, 4, 6, 2, 2, 1, 0),
    geom(1, 2, 5, 6, 3, 3, 3, 2, 1),
    geom(2, 5, 5, 4, 6, 1, 1, 2, 0),
    geom(1, 3, 9, 8, 2, 7, 7, 2, 3),
];

/// Images4 has no backward, so no finite differences.
fn fd_shapes(path: Path) -> &'static [Conv2dGeometry] {
    match path {
        Path::Storage => FD_SHAPES,
        Path::Texels => TEX_FD_SHAPES,
        Path::Images4 => &[],
    }
}

struct Case {
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    dy: Vec<f32>,
}

/// Random inputs in [-1, 1), as tensors of `dtype` hold them (rounded to f16 for f16).
fn case(g: &Conv2dGeometry, seed: u64, dtype: DType) -> Case {
    let mut r = rng(seed);
    let len = |s: [usize; 4]| s.iter().product();
    let mut draw = |n| as_dtype(&uniform(&mut r, n, -1.0, 1.0), dtype);
    Case {
        x: draw(len(g.input_shape())),
        w: draw(len(g.weight_shape())),
        b: draw(g.o),
        dy: draw(len(g.output_shape())),
    }
}

/// The case's tensors, of `dtype`.
struct Tensors {
    x: Tensor,
    w: Tensor,
    b: Tensor,
    dy: Tensor,
}

fn tensors(g: &Conv2dGeometry, c: &Case, dtype: DType) -> Tensors {
    Tensors {
        x: upload_as(&c.x, &g.input_shape(), dtype),
        w: upload_as(&c.w, &g.weight_shape(), dtype),
        b: upload_as(&c.b, &[g.o], dtype),
        dy: upload_as(&c.dy, &g.output_shape(), dtype),
    }
}

// ---- dispatch: each path's launchers ----

/// y = conv2d(x, w) + b on `path`.
fn launch_forward(path: Path, g: &Conv2dGeometry, t: &Tensors, y: &Tensor) -> Kernel {
    match path {
        Path::Storage => conv2d::forward(gpu(), &t.x, &t.w, &t.b, y, g.stride, g.pad).unwrap(),
        Path::Texels => launch_texel_forward(g, t, y).0,
        Path::Images4 => {
            conv2d::forward_packed_images4(gpu(), &t.x, &t.w, &t.b, y, g.stride, g.pad).unwrap()
        }
    }
}

/// The texel forward and the x texels it packs, which conv2d_grad_weight_tex reads.
fn launch_texel_forward(g: &Conv2dGeometry, t: &Tensors, y: &Tensor) -> (Kernel, Texels) {
    let (kernel, xt) = conv2d::forward_packed(gpu(), &t.x, &t.w, &t.b, y, g.stride, g.pad).unwrap();
    assert_eq!(xt.dtype(), t.x.dtype(), "the x texels of {g:?}");
    (kernel, xt)
}

/// grad_input on the texel path as one kernel: dy packed with grad_input's border, then
/// conv2d_grad_input's texel kernel.
fn texel_grad_input(
    g: &Conv2dGeometry,
    dy: &Tensor,
    w: &Tensor,
    dx: &Tensor,
) -> siamese_gpu::Result<Kernel> {
    let (pack_dy, dyt) = pack::nhwc4(gpu(), dy, g.grad_input_pad(), 1)?;
    let conv = conv2d::grad_input_tex(gpu(), &dyt, w, dx, g.stride, g.pad)?;
    Ok(Kernel::chain([pack_dy, conv]))
}

/// grad_weight (and with `db` grad_bias) on the texel path as one kernel, from x's texels:
/// dy packed without a border, then conv2d_grad_weight_tex.
fn texel_grad_weight(
    g: &Conv2dGeometry,
    dy: &Tensor,
    xt: &Texels,
    dw: &Tensor,
    db: Option<&Tensor>,
) -> siamese_gpu::Result<Kernel> {
    let (pack_dy, dyt) = pack::nhwc4(gpu(), dy, 0, 1)?;
    let product = conv2d::grad_weight_tex(gpu(), g, xt, &dyt, 0, dw, db)?;
    Ok(Kernel::chain([pack_dy, product]))
}

/// dx from dy on `path`.
fn launch_grad_input(path: Path, g: &Conv2dGeometry, t: &Tensors, dx: &Tensor) -> Kernel {
    match path {
        Path::Storage => conv2d::grad_input(gpu(), &t.dy, &t.w, dx, g.stride, g.pad).unwrap(),
        Path::Texels => texel_grad_input(g, &t.dy, &t.w, dx).unwrap(),
        Path::Images4 => unreachable!("conv2d_forward_tex_images4 has no backward"),
    }
}

/// The storage grad_weight unsplit (`None`, as the launcher splits) or in `splits` splits.
fn launch_grad_weight_split(
    g: &Conv2dGeometry,
    t: &Tensors,
    dw: &Tensor,
    splits: Option<usize>,
) -> Kernel {
    match splits {
        Some(s) => conv2d::grad_weight_split(gpu(), &t.dy, &t.x, dw, g.stride, g.pad, s),
        None => conv2d::grad_weight(gpu(), &t.dy, &t.x, dw, g.stride, g.pad),
    }
    .unwrap()
}

/// The texel grad_weight from `xt` (the x texels of the texel forward), with db where given.
fn launch_texel_grad_weight(
    g: &Conv2dGeometry,
    t: &Tensors,
    xt: &Texels,
    dw: &Tensor,
    db: Option<&Tensor>,
) -> Kernel {
    texel_grad_weight(g, &t.dy, xt, dw, db).unwrap()
}

/// dw under each variant of `path`, labelled, and db: on the storage path conv2d_grad_weight
/// as the launcher splits it and split at every count from 1 to N (a last split short of
/// images, the reduce pass summing the splits), db from conv2d_grad_bias; on the texel path
/// conv2d_grad_weight_tex once, db summed from the same dy fetches (the shapes split their
/// positions from one chunk to many, so the bias partials are summed from one split and from
/// many).
fn grad_weight_and_bias(
    path: Path,
    g: &Conv2dGeometry,
    t: &Tensors,
) -> (Vec<(String, Vec<f32>)>, Vec<f32>) {
    let db = zeros(&[g.o]);
    match path {
        Path::Storage => {
            let dws = std::iter::once(None)
                .chain((1..=g.n).map(Some))
                .map(|splits| {
                    let dw = zeros(&g.weight_shape());
                    let kernel = launch_grad_weight_split(g, t, &dw, splits);
                    (format!("splits {splits:?}"), run_and_read(&kernel, &dw))
                })
                .collect();
            let kernel = conv2d::grad_bias(gpu(), &t.dy, &db).unwrap();
            (dws, run_and_read(&kernel, &db))
        }
        Path::Texels => {
            let (dw, y) = (
                zeros(&g.weight_shape()),
                zeros_as(&g.output_shape(), t.x.dtype()),
            );
            let (forward, xt) = launch_texel_forward(g, t, &y);
            let kernel = launch_texel_grad_weight(g, t, &xt, &dw, Some(&db));
            gpu().run(&[&forward, &kernel]);
            (
                vec![("with db".to_string(), gpu().read_f32(&dw).unwrap())],
                gpu().read_f32(&db).unwrap(),
            )
        }
        Path::Images4 => unreachable!("conv2d_forward_tex_images4 has no backward"),
    }
}

// ---- against the CPU ----

#[test]
fn conv2d_forward_matches_cpu() {
    for p in matrix(&FORWARD_PATHS, &DTYPES, shapes) {
        let (g, dtype) = (&p.shape, p.dtype);
        let c = case(g, p.seed, dtype);
        let y = zeros_as(&g.output_shape(), dtype);
        let kernel = launch_forward(p.path, g, &tensors(g, &c, dtype), &y);
        let want = cpu::conv2d_forward(&c.x, &c.w, &c.b, g);
        // C·KH·KW products plus the bias, in another order (the padded taps add exact zeros):
        // 2·γ·Σ|terms| (Σ|terms| is the reference run on |x|, |w|, |b|); then stored as y's type.
        let magnitude = cpu::conv2d_forward(&abs(&c.x), &abs(&c.w), &abs(&c.b), g);
        let bound = linear_bound(g.c * g.kh * g.kw + 1, &magnitude);
        assert_within(
            &format!("conv2d_forward {p}"),
            &run_and_read_floats(&kernel, &y),
            &want,
            &stored_bound(bound, &want, dtype),
        );
    }
}

#[test]
fn conv2d_grad_input_matches_cpu() {
    for p in matrix(&GRAD_PATHS, &DTYPES, shapes) {
        let (g, dtype) = (&p.shape, p.dtype);
        let c = case(g, 100 + p.seed, dtype);
        let dx = zeros_as(&g.input_shape(), dtype);
        let kernel = launch_grad_input(p.path, g, &tensors(g, &c, dtype), &dx);
        let want = cpu::conv2d_grad_input(&c.dy, &c.w, g);
        // Each dx element sums at most O·KH·KW products (the padded taps add exact zeros);
        // then stored as dx's type.
        let magnitude = cpu::conv2d_grad_input(&abs(&c.dy), &abs(&c.w), g);
        let bound = linear_bound(g.o * g.kh * g.kw, &magnitude);
        assert_within(
            &format!("conv2d_grad_input {p}"),
            &run_and_read_floats(&kernel, &dx),
            &want,
            &stored_bound(bound, &want, dtype),
        );
    }
}

#[test]
fn conv2d_grad_weight_and_bias_match_cpu() {
    for p in matrix(&GRAD_PATHS, &DTYPES, shapes) {
        let (g, dtype) = (&p.shape, p.dtype);
        let c = case(g, 200 + p.seed, dtype);
        let (dws, db) = grad_weight_and_bias(p.path, g, &tensors(g, &c, dtype));
        // Each dw element sums N·OH·OW products (split or not, the bound covers any order),
        // each db element N·OH·OW entries of dy; both are f32 whatever the operands.
        let terms = g.n * g.out_h() * g.out_w();
        let want = cpu::conv2d_grad_weight(&c.dy, &c.x, g);
        let magnitude = cpu::conv2d_grad_weight(&abs(&c.dy), &abs(&c.x), g);
        let bound = linear_bound(terms, &magnitude);
        for (variant, dw) in &dws {
            assert_within(
                &format!("conv2d_grad_weight {variant} {p}"),
                dw,
                &want,
                &bound,
            );
        }
        let plane = g.out_h() * g.out_w();
        let magnitude = cpu::conv2d_grad_bias(&abs(&c.dy), g.n, g.o, plane);
        assert_within(
            &format!("conv2d_grad_bias {p}"),
            &db,
            &cpu::conv2d_grad_bias(&c.dy, g.n, g.o, plane),
            &linear_bound(terms, &magnitude),
        );
    }
}

#[test]
fn conv2d_grad_weight_reduce_matches_cpu() {
    // The reduce pass alone, on random partial sums (conv2d_grad_weight_and_bias_match_cpu
    // runs it after the split first pass).
    for (seed, &(splits, shape)) in [(1, [1, 1, 1, 1]), (3, [5, 2, 3, 3]), (7, [64, 32, 3, 3])]
        .iter()
        .enumerate()
    {
        let len: usize = shape.iter().product();
        let partial = uniform(&mut rng(seed as u64), splits * len, -1.0, 1.0);
        let dw = zeros(&shape);
        let kernel =
            conv2d::grad_weight_reduce(gpu(), &upload(&partial, &[splits, len]), &dw).unwrap();
        let got = run_and_read(&kernel, &dw);
        let want = cpu::conv2d_grad_weight_reduce(&partial, splits);
        // The same additions in the same order: identical up to FMA-free f32 addition, so
        // exact equality is expected; allow the γ bound anyway for compilers that reassociate.
        let magnitude = cpu::conv2d_grad_weight_reduce(&abs(&partial), splits);
        assert_within(
            &format!("conv2d_grad_weight_reduce {splits}x{len}"),
            &got,
            &want,
            &linear_bound(splits, &magnitude),
        );
    }
}

/// The texel path's handoffs as the tape runs them, in f32 and f16: dy packed once with
/// grad_input's border (pack_nhwc4) serves both grad_input_tex (conv2d_grad_input's texel
/// kernel) and conv2d_grad_weight_tex, which must give the bits of the launchers that pack dy
/// themselves (the same products in the same order); without db, grad_weight writes the same
/// dw; texels packed with another border are refused.
#[test]
fn conv2d_texel_handoffs_give_the_launchers_bits() {
    for p in dtype_matrix(&DTYPES, TEX_SHAPES) {
        let (g, dtype) = (&p.shape, p.dtype);
        let t = tensors(g, &case(g, 300 + p.seed, dtype), dtype);
        let y = zeros_as(&g.output_shape(), dtype);
        let (forward, xt) = launch_texel_forward(g, &t, &y);
        let dx = zeros_as(&g.input_shape(), dtype);
        let (dw, db, dw_only) = (
            zeros(&g.weight_shape()),
            zeros(&[g.o]),
            zeros(&g.weight_shape()),
        );
        gpu().run(&[
            &forward,
            &launch_grad_input(Path::Texels, g, &t, &dx),
            &launch_texel_grad_weight(g, &t, &xt, &dw, Some(&db)),
            &launch_texel_grad_weight(g, &t, &xt, &dw_only, None),
        ]);
        let dy_pad = g.grad_input_pad();
        let (pack_dy, dyt) = pack::nhwc4(gpu(), &t.dy, dy_pad, 1).unwrap();
        assert_eq!(dyt.dtype(), dtype, "dy texels {p}");
        let dx_tex = zeros_as(&g.input_shape(), dtype);
        let (dw_pad, db_pad) = (zeros(&g.weight_shape()), zeros(&[g.o]));
        let grad_input =
            conv2d::grad_input_tex(gpu(), &dyt, &t.w, &dx_tex, g.stride, g.pad).unwrap();
        let grad_weight =
            conv2d::grad_weight_tex(gpu(), g, &xt, &dyt, dy_pad, &dw_pad, Some(&db_pad)).unwrap();
        gpu().run(&[&forward, &pack_dy, &grad_input, &grad_weight]);
        let floats = |t: &Tensor| gpu().read_floats(t).unwrap();
        assert_eq!(
            floats(&dx_tex),
            floats(&dx),
            "grad_input_tex from the shared dy texels {p}"
        );
        assert_eq!(
            floats(&dw_pad),
            floats(&dw),
            "dw from the shared dy texels {p}"
        );
        assert_eq!(
            floats(&db_pad),
            floats(&db),
            "db from the shared dy texels {p}"
        );
        assert_eq!(floats(&dw_only), floats(&dw), "dw with and without db {p}");
        let other_border = conv2d::grad_weight_tex(gpu(), g, &xt, &dyt, dy_pad + 1, &dw_pad, None);
        assert!(
            other_border.is_err(),
            "{p}: texels of another border accepted"
        );
    }
}

#[test]
fn conv2d_grad_weight_tex_survives_long_reductions() {
    // 64 → 64 channels leave one split on a CPU adapter, so one invocation would walk all
    // 340·14 output rows of 14 positions (~71,000 loop iterations): past llvmpipe's 65,535
    // iterations per invocation, beyond which it silently stops looping. The launcher must
    // split the rows finer than that.
    let g = geom(340, 64, 16, 16, 64, 3, 3, 1, 0);
    let c = case(&g, 900, DType::F32);
    let (dws, db) = grad_weight_and_bias(Path::Texels, &g, &tensors(&g, &c, DType::F32));
    let terms = g.n * g.out_h() * g.out_w();
    let magnitude = cpu::conv2d_grad_weight(&abs(&c.dy), &abs(&c.x), &g);
    assert_within(
        "conv2d_grad_weight_tex, long reduction",
        &dws[0].1,
        &cpu::conv2d_grad_weight(&c.dy, &c.x, &g),
        &linear_bound(terms, &magnitude),
    );
    let magnitude = cpu::conv2d_grad_bias(&abs(&c.dy), g.n, g.o, g.out_h() * g.out_w());
    assert_within(
        "conv2d_grad_weight_tex bias, long reduction",
        &db,
        &cpu::conv2d_grad_bias(&c.dy, g.n, g.o, g.out_h() * g.out_w()),
        &linear_bound(terms, &magnitude),
    );
}

// ---- against finite differences ----

// GPU against finite differences: f32 sums of at most ~50 products of values in [-1, 1];
// 1e-5 of the largest entry is ~100 ulps, above rounding and far below any indexing or
// padding mistake.
const GPU_FD_RTOL: f64 = 1e-5;

/// Finite differences of L = Σ dy ⊙ conv2d_forward(x, w, b) (f64 reference forward), the
/// scalar whose gradients the backward entries compute for upstream dy, with respect to the
/// input `of` picks: 0 for x, 1 for w, 2 for b.
fn fd_of(g: &Conv2dGeometry, c: &Case, of: usize) -> Vec<f64> {
    let inputs = [to_f64(&c.x), to_f64(&c.w), to_f64(&c.b)];
    let dy = to_f64(&c.dy);
    let loss = |u: &[f64]| {
        let mut v = inputs.clone();
        v[of] = u.to_vec();
        dot(&dy, &cpu::conv2d_forward(&v[0], &v[1], &v[2], g))
    };
    finite_difference(loss, &inputs[of], FD_STEP)
}

#[test]
fn conv2d_grad_input_matches_finite_differences() {
    for p in matrix(&GRAD_PATHS, &F32_ONLY, fd_shapes) {
        let g = &p.shape;
        let c = case(g, 400 + p.seed, DType::F32);
        let fd_x = fd_of(g, &c, 0);
        assert_matches_fd(
            &format!("cpu conv2d_grad_input {p}"),
            &cpu::conv2d_grad_input(&to_f64(&c.dy), &to_f64(&c.w), g),
            &fd_x,
        );
        let dx = zeros(&g.input_shape());
        let kernel = launch_grad_input(p.path, g, &tensors(g, &c, DType::F32), &dx);
        assert_gpu_matches_fd(
            &format!("conv2d_grad_input {p}"),
            &run_and_read(&kernel, &dx),
            &fd_x,
            GPU_FD_RTOL,
        );
    }
}

#[test]
fn conv2d_grad_weight_and_bias_match_finite_differences() {
    for p in matrix(&GRAD_PATHS, &F32_ONLY, fd_shapes) {
        let g = &p.shape;
        let c = case(g, 500 + p.seed, DType::F32);
        let (fd_w, fd_b) = (fd_of(g, &c, 1), fd_of(g, &c, 2));
        let plane = g.out_h() * g.out_w();
        assert_matches_fd(
            &format!("cpu conv2d_grad_weight {p}"),
            &cpu::conv2d_grad_weight(&to_f64(&c.dy), &to_f64(&c.x), g),
            &fd_w,
        );
        assert_matches_fd(
            &format!("cpu conv2d_grad_bias {p}"),
            &cpu::conv2d_grad_bias(&to_f64(&c.dy), g.n, g.o, plane),
            &fd_b,
        );
        let (dws, db) = grad_weight_and_bias(p.path, g, &tensors(g, &c, DType::F32));
        for (variant, dw) in &dws {
            let what = format!("conv2d_grad_weight {variant} {p}");
            assert_gpu_matches_fd(&what, dw, &fd_w, GPU_FD_RTOL);
        }
        assert_gpu_matches_fd(&format!("conv2d_grad_bias {p}"), &db, &fd_b, GPU_FD_RTOL);
    }
}

// ---- refusals ----

#[test]
fn conv2d_forward_rejects_mismatched_channels() {
    let x = zeros(&[1, 3, 8, 8]);
    let w = zeros(&[4, 2, 3, 3]);
    let err =
        conv2d::forward(gpu(), &x, &w, &zeros(&[4]), &zeros(&[1, 4, 6, 6]), 1, 0).unwrap_err();
    assert!(
        err.to_string()
            .contains("w has 2 input channels but x has 3"),
        "{err}"
    );
    let err = conv2d::forward(
        gpu(),
        &zeros(&[1, 2, 2, 2]),
        &w,
        &zeros(&[4]),
        &zeros(&[1, 4, 1, 1]),
        1,
        0,
    )
    .unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
}

#[test]
fn conv2d_texel_path_refuses_what_it_does_not_cover() {
    assert!(geom(1, 2, 6, 6, 3, 3, 3, 1, 2).texel_path_fits());
    assert!(
        geom(1, 2, 6, 6, 3, 3, 3, 2, 1).texel_path_fits(),
        "stride 2"
    );
    assert!(
        !geom(1, 2, 6, 6, 3, 3, 2, 1, 0).texel_path_fits(),
        "3x2 kernel"
    );
    assert!(
        !geom(1, 2, 6, 6, 3, 3, 3, 1, 3).texel_path_fits(),
        "padding 3 of a 3x3"
    );
    let g = geom(1, 2, 6, 6, 3, 3, 3, 1, 3);
    let c = case(&g, 0, DType::F32);
    let (x, w, b, y) = (
        upload(&c.x, &g.input_shape()),
        upload(&c.w, &g.weight_shape()),
        upload(&c.b, &[g.o]),
        zeros(&g.output_shape()),
    );
    let tensors = Conv2dTensors {
        x: &x,
        w: &w,
        b: &b,
        y: &y,
        stride: g.stride,
        pad: g.pad,
    };
    let kernels = Conv2dKernels {
        grad_input: Operands::Texels,
        ..Conv2dKernels::STORAGE
    };
    let err = plan(gpu(), &tensors, None, kernels)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("padding 3"), "{err}");
}

#[test]
fn conv2d_forward_tex_images4_refuses_what_it_does_not_cover() {
    let expect_err = |what: &str, r: siamese_gpu::Result<Kernel>, needle: &str| {
        let err = r.map(|_| ()).unwrap_err().to_string();
        assert!(err.contains(needle), "{what}: {err}");
    };
    let g = geom(5, 1, 8, 8, 6, 3, 3, 1, 1);
    let c = case(&g, 0, DType::F32);
    let (x, w, b) = (
        upload(&c.x, &g.input_shape()),
        upload(&c.w, &g.weight_shape()),
        upload(&c.b, &[g.o]),
    );
    let y = zeros(&g.output_shape());
    let (_, xt) = pack::images4(gpu(), &x, g.pad).unwrap();
    let w_rows = w.reshaped(&[g.o, 9]).unwrap();
    let (_, wt) = pack::rows4(gpu(), &w_rows, false).unwrap();
    assert!(conv2d::forward_tex_images4(gpu(), &g, &xt, &wt, &b, &y).is_ok());
    expect_err(
        "three channels",
        conv2d::forward_tex_images4(gpu(), &Conv2dGeometry { c: 3, ..g }, &xt, &wt, &b, &y),
        "3 channels",
    );
    let (_, unfolded) = pack::nhwc4(gpu(), &x, g.pad, 3).unwrap();
    expect_err(
        "x packed unfolded",
        conv2d::forward_tex_images4(gpu(), &g, &unfolded, &wt, &b, &y),
        "input texels given",
    );
    let (_, wt_conv) = pack::conv_weight(gpu(), &w, false, 1).unwrap();
    expect_err(
        "w packed for conv2d_forward_tex",
        conv2d::forward_tex_images4(gpu(), &g, &xt, &wt_conv, &b, &y),
        "weight texels given",
    );
    let x3 = upload(&vec![0.0; 5 * 3 * 64], &[5, 3, 8, 8]);
    let w3 = upload(&vec![0.0; 6 * 3 * 9], &[6, 3, 3, 3]);
    expect_err(
        "forward_packed_images4 of three channels",
        conv2d::forward_packed_images4(gpu(), &x3, &w3, &b, &y, 1, 1),
        "single-channel",
    );
}

/// Mixed element types are refused with an error naming the mismatch: an f16 op's
/// activations, weights and texels share its type, and its dw and db are f32.
#[test]
fn conv2d_f16_refuses_mixed_types() {
    if !has_f16() {
        return;
    }
    let g = geom(2, 3, 6, 6, 4, 3, 3, 1, 1);
    let f16 = |shape: &[usize]| zeros_as(shape, F16);
    let f32 = |shape: &[usize]| zeros(shape);
    let (x16, w16, b16, y16, dy16) = (
        f16(&g.input_shape()),
        f16(&g.weight_shape()),
        f16(&[g.o]),
        f16(&g.output_shape()),
        f16(&g.output_shape()),
    );
    let (w32, dw32, db32) = (f32(&g.weight_shape()), f32(&g.weight_shape()), f32(&[g.o]));
    let refused = |what: &str, result: siamese_gpu::Result<Kernel>, needle: &str| {
        let err = result.err().unwrap_or_else(|| panic!("{what}: accepted"));
        let msg = err.to_string();
        assert!(msg.contains(needle), "{what}: {msg}");
    };
    refused(
        "forward, f32 w",
        conv2d::forward(gpu(), &x16, &w32, &b16, &y16, 1, 1),
        "w must be a F16 tensor",
    );
    refused(
        "forward, f32 y",
        conv2d::forward(gpu(), &x16, &w16, &b16, &f32(&g.output_shape()), 1, 1),
        "y must be a F16 tensor",
    );
    refused(
        "grad_input, f32 dy",
        conv2d::grad_input(gpu(), &f32(&g.output_shape()), &w16, &x16, 1, 1),
        "dy must be a F16 tensor",
    );
    refused(
        "grad_weight, f16 dw",
        conv2d::grad_weight(gpu(), &dy16, &x16, &w16, 1, 1),
        "dw must be a F32 tensor",
    );
    refused(
        "grad_bias, f16 db",
        conv2d::grad_bias(gpu(), &dy16, &b16),
        "db must be a F32 tensor",
    );
    // Texels of the other type than the tensors.
    let x32 = f32(&g.input_shape());
    let (_, xt32) = pack::nhwc4(gpu(), &x32, g.pad, g.unfold()).unwrap();
    let (_, wt16) = pack::conv_weight(gpu(), &w16, false, g.unfold()).unwrap();
    refused(
        "forward_tex, f32 x texels",
        conv2d::forward_tex(gpu(), &g, g.unfold(), &xt32, &wt16, &b16, &y16),
        "the input texels hold F32 components but y is F16",
    );
    let (_, dyt32) = pack::nhwc4(gpu(), &f32(&g.output_shape()), g.grad_input_pad(), 1).unwrap();
    refused(
        "grad_input_tex, f32 dy texels",
        conv2d::grad_input_tex(gpu(), &dyt32, &w16, &x16, g.stride, g.pad),
        "the dy texels hold F32 components but dx is F16",
    );
    let (_, xt16) = pack::nhwc4(gpu(), &x16, g.pad, g.unfold()).unwrap();
    refused(
        "grad_weight_tex, f16 x and f32 dy texels",
        conv2d::grad_weight_tex(gpu(), &g, &xt16, &dyt32, g.grad_input_pad(), &dw32, None),
        "the x texels hold F16 components but the dy texels hold F32",
    );
    refused(
        "texel grad_weight, f32 dy and f16 x texels",
        texel_grad_weight(&g, &f32(&g.output_shape()), &xt16, &dw32, Some(&db32)),
        "the x texels hold F16 components but the dy texels hold F32",
    );
    refused(
        "texel grad_weight, f16 db",
        texel_grad_weight(&g, &dy16, &xt16, &dw32, Some(&b16)),
        "db must be a F32 tensor",
    );
}
