//! Whole-model gradients: a small Siamese model (conv → relu → maxpool → dense → distance →
//! loss) recorded on the tape and run on the GPU, against the composition of the CPU
//! references (forward and backward, layer by layer) and against central finite differences
//! of the composed CPU forward in f64. Likewise a small residual tower (padded stem
//! pooling, residual additions, global average pooling), where values feed a convolution
//! and an addition at once; and dropout on the tape, whose gradient is the mask's.
//!
//! And a whole model built from a tower spec with BatchNorm, residual blocks (identity and
//! projection) and dropout, through `SiameseModel::record_loss` in training (the contrastive
//! and triplet losses): loss, gradients and the running statistics' update against the
//! composed CPU references, the gradients against central differences too, on every kernel
//! path and under mixed precision; and the same model in evaluation (running statistics,
//! dropout the identity) against the CPU eval forward.

use crate::common::*;
use siamese_gpu::autograd::Tape;
use siamese_gpu::cpu::batchnorm::Dims;
use siamese_gpu::cpu::{self, Real, conv2d::Conv2dGeometry};
use siamese_gpu::model::{ModelConfig, ModelTensors, ModelValues, SiameseModel, Weights};
use siamese_gpu::nn::{Init, ParamLayout};
use siamese_gpu::ops::batchnorm::{EPS, MOMENTUM};
use siamese_gpu::vocab::Distance;
use siamese_gpu::vocab::Mode;
use siamese_gpu::vocab::PairLabel;
use siamese_gpu::vocab::{LOSSES, LossHyper, LossKind};
use siamese_gpu::{Gpu, KernelPath};
use std::sync::OnceLock;

const B: usize = 4; // samples per batch
const DIM: usize = 16; // embedding size: B·DIM·4 bytes keeps the branch views 256-byte aligned
const MARGIN: f64 = 1.0;
/// `[seed, step]` of the rng tensor every training step here reads: dropout's counters.
const RNG: [u32; 2] = [1234, 7];

/// The class ids of a batch of B images for the losses on class-labelled batches.
const CLASS_LABELS: [u32; B] = [0, 1, 0, 1];

/// Hyper-parameters for the losses on class-labelled batches, milder than the defaults (s =
/// 64 makes the loss's third derivative ~s³, beyond what central differences resolve at the
/// tolerance); kernels_tests/similarity_loss.rs checks the defaults.
const MILD: LossHyper = LossHyper {
    scale: 4.0,
    sub_centers: 3,
    alpha: Some(4.0),
    beta: 5.0,
    base: 0.5,
    epsilon: 0.1,
    temperature: Some(0.5),
};

fn model(loss: LossKind) -> SiameseModel {
    SiameseModel::new(ModelConfig {
        hyper: MILD,
        classes: 2,
        tower: format!("conv 3 3 | relu | maxpool 2 | flatten | dense {DIM}")
            .parse()
            .unwrap(),
        input: [1, 8, 8],
        loss,
        margin: if loss.uses_classes() {
            loss.default_margin()
        } else {
            MARGIN as f32
        },
        distance: if loss.uses_classes() {
            Distance::Cosine
        } else {
            Distance::Euclidean
        },
        normalize: false,
        freeze: Vec::new(),
    })
    .unwrap()
}

fn labels() -> Vec<PairLabel> {
    vec![
        PairLabel::Same,
        PairLabel::Different,
        PairLabel::Different,
        PairLabel::Same,
    ]
}

/// The tower and its backward, composed from the CPU references. `head` maps the embeddings
/// [k·B, DIM] to the loss and its gradient with respect to them.
fn cpu_loss_and_grads<T: Real>(
    m: &SiameseModel,
    flat: &[T],
    x: &[T],
    head: impl Fn(&[T]) -> (T, Vec<T>),
) -> (T, Vec<T>) {
    let p = |i: usize| {
        let info = &m.layout.params[i];
        &flat[info.offset..info.offset + info.len()]
    };
    let images = m.config.loss.branches() * B;
    let g = Conv2dGeometry {
        n: images,
        c: 1,
        h: 8,
        w: 8,
        o: 3,
        kh: 3,
        kw: 3,
        stride: 1,
        pad: 0,
    };
    let y1 = cpu::conv2d::conv2d_forward(x, p(0), p(1), &g);
    let r1 = cpu::activation::relu_forward(&y1);
    let (p1, argmax) = cpu::pool::max_pool2d_forward(&r1, images, 3, 6, 6, 2, 2, 0);
    let e = cpu::dense::dense_forward(&p1, p(2), p(3), images, 27, DIM);
    let (loss, de) = head(&e);
    let mut grads = vec![T::zero(); m.layout.len];
    let mut put = |i: usize, v: Vec<T>| {
        let info = &m.layout.params[i];
        grads[info.offset..info.offset + info.len()].copy_from_slice(&v);
    };
    put(2, cpu::dense::dense_grad_weight(&de, &p1, images, 27, DIM));
    put(3, cpu::dense::dense_grad_bias(&de, images, DIM));
    let dp1 = cpu::dense::dense_grad_input(&de, p(2), images, 27, DIM);
    let dr1 = cpu::pool::max_pool2d_backward(&dp1, &argmax, images, 3, 6, 6, 2, 2, 0);
    let dy1 = cpu::activation::relu_backward(&y1, &dr1);
    put(0, cpu::conv2d::conv2d_grad_weight(&dy1, x, &g));
    put(1, cpu::conv2d::conv2d_grad_bias(&dy1, images, 3, 36));
    (loss, grads)
}

fn contrastive_head<T: Real>(e: &[T]) -> (T, Vec<T>) {
    let (a, b) = e.split_at(B * DIM);
    let d = cpu::distance::euclidean_forward(a, b, B, DIM);
    let m = T::from_f64(MARGIN);
    let loss = cpu::loss::contrastive_loss_forward(&d, &labels(), m);
    let dd = cpu::loss::contrastive_loss_backward(&d, &labels(), m, T::one());
    let (da, db) = cpu::distance::euclidean_backward(a, b, &d, &dd, B, DIM);
    (loss, [da, db].concat())
}

fn triplet_head<T: Real>(e: &[T]) -> (T, Vec<T>) {
    let (a, rest) = e.split_at(B * DIM);
    let (p, n) = rest.split_at(B * DIM);
    let d_ap = cpu::distance::euclidean_forward(a, p, B, DIM);
    let d_an = cpu::distance::euclidean_forward(a, n, B, DIM);
    let m = T::from_f64(MARGIN);
    let loss = cpu::loss::triplet_loss_forward(&d_ap, &d_an, m);
    let (dd_ap, dd_an) = cpu::loss::triplet_loss_backward(&d_ap, &d_an, m, T::one());
    let (mut da, dp) = cpu::distance::euclidean_backward(a, p, &d_ap, &dd_ap, B, DIM);
    let (da2, dn) = cpu::distance::euclidean_backward(a, n, &d_an, &dd_an, B, DIM);
    cpu::activation::accumulate_grad(&da2, &mut da);
    (loss, [da, dp, dn].concat())
}

/// A device whose tapes take `path`'s kernels (one per path, opened once).
fn gpu_on(path: KernelPath) -> &'static Gpu {
    static DEVICES: [OnceLock<Gpu>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    gpu(); // exits with the usual message where there is no adapter
    DEVICES[path as usize].get_or_init(|| {
        let mut g = Gpu::new().expect("the adapter opened once already");
        g.set_kernel_path(path);
        g
    })
}

/// What one training step's forward and backward leave on the GPU.
struct Step {
    loss: f32,
    /// The flat parameter gradients (divided by the loss scale under mixed precision).
    grads: Vec<f32>,
    /// The running statistics after the forward moved them (empty without BatchNorm).
    running: Vec<f32>,
    /// The ops the tape recorded, in order.
    ops: Vec<&'static str>,
}

/// Runs forward and backward of `m` from `values` on `g` in one submission, in training
/// mode, dropout drawing from `[seed, step]` = [`RNG`]. With `loss_scale` Some(S) under
/// mixed precision as training runs it: f16 images, the tower on an f16 copy of the weights
/// (cast on the device), the backward seeded with S; the gradients come back divided by S.
fn gpu_step(
    g: &Gpu,
    m: &SiameseModel,
    values: &ModelValues,
    x: &[f32],
    loss_scale: Option<f32>,
) -> Step {
    let [c, h, w] = m.config.input;
    let x_shape = [m.config.loss.branches() * B, c, h, w];
    let tensors = ModelTensors::upload(g, m, values).unwrap();
    let params = &tensors.params;
    let grads = g.zeros(params.shape(), siamese_gpu::DType::F32).unwrap();
    let labels = PairLabel::upload(g, &labels()).unwrap();
    let rng = g.upload_u32(&RNG, &[2]).unwrap();
    let mut tape = Tape::new(g);
    let (xt, half, cast) = match loss_scale {
        None => (g.upload_f32(x, &x_shape).unwrap(), None, None),
        Some(_) => {
            let half = g.zeros(params.shape(), siamese_gpu::DType::F16).unwrap();
            let cast = siamese_gpu::ops::amp::cast(g, params, &half).unwrap();
            (g.upload_f16(x, &x_shape).unwrap(), Some(half), Some(cast))
        }
    };
    let xv = tape.input(xt);
    let weights = Weights {
        params,
        half: half.as_ref(),
        grads: Some(&grads),
        state: tensors.state.as_ref(),
        rng: Some(&rng),
        mode: Mode::Train,
    };
    let loss = if m.config.loss.uses_classes() {
        let classes = g.upload_u32(&CLASS_LABELS, &[B]).unwrap();
        m.record_class_loss(&mut tape, xv, &classes, &weights, None)
            .unwrap()
            .0
    } else {
        m.record_loss(&mut tape, xv, &labels, &weights).unwrap()
    };
    let backward = tape.backward(loss).unwrap();
    let scale = loss_scale.unwrap_or(1.0);
    g.write_f32(tape.grad(loss).unwrap(), &[scale]).unwrap();
    let kernels: Vec<_> = cast
        .iter()
        .chain(tape.forward_kernels())
        .chain(backward.iter())
        .collect();
    g.run(&kernels);
    Step {
        loss: g.read_f32(tape.tensor(loss)).unwrap()[0],
        grads: g
            .read_f32(&grads)
            .unwrap()
            .iter()
            .map(|v| v / scale)
            .collect(),
        running: tensors.read(g, 0).unwrap().running,
        ops: tape.ops(),
    }
}

fn check(
    path: KernelPath,
    loss_kind: LossKind,
    head32: fn(&[f32]) -> (f32, Vec<f32>),
    head64: fn(&[f64]) -> (f64, Vec<f64>),
) {
    let m = model(loss_kind);
    let values = ModelValues::init(&m, 7);
    let flat = &values.params;
    let images = loss_kind.branches() * B;
    let x = uniform(&mut rng(11), images * 64, 0.0, 1.0);

    // GPU tape against the CPU composition in f32. Each gradient passes through five or six
    // ops of short sums (≤ 54 terms); 1e-4 of the largest gradient is ~1000 ulps, room for
    // the reordered sums compounding, and far below a missing or misrouted term.
    let Step {
        loss: gpu_loss,
        grads: gpu_grads,
        ..
    } = gpu_step(gpu_on(path), &m, &values, &x, None);
    let (cpu_loss, cpu_grads) = cpu_loss_and_grads(&m, flat, &x, head32);
    assert!(
        (gpu_loss - cpu_loss).abs() <= 1e-5 * cpu_loss.abs().max(1.0),
        "loss: GPU {gpu_loss} vs CPU {cpu_loss}"
    );
    let scale = cpu_grads.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    assert!(
        scale > 1e-3,
        "the gradients must not vanish for the check to mean anything"
    );
    assert_close(
        &format!("{loss_kind} model gradients ({} kernels)", path.name()),
        &gpu_grads,
        &cpu_grads,
        1e-4 * scale as f64,
        0.0,
    );

    // The f64 composition against central differences of the f64 composed forward, over
    // every parameter (the padding between views included: its gradient is 0).
    let (flat64, x64) = (to_f64(flat), to_f64(&x));
    let (_, grads64) = cpu_loss_and_grads(&m, &flat64, &x64, head64);
    let fd = finite_difference(
        |p| cpu_loss_and_grads(&m, p, &x64, head64).0,
        &flat64,
        FD_STEP,
    );
    assert_matches_fd(&format!("cpu {loss_kind} model"), &grads64, &fd);
    // And the GPU against the same differences (f32: 1e-4 of the largest gradient, as above).
    assert_gpu_matches_fd(&format!("gpu {loss_kind} model"), &gpu_grads, &fd, 1e-4);
}

// Each test runs the tape on every kernel path: the storage kernels, the texel kernels,
// and the adapter's own mix (`auto`).
const PATHS: [KernelPath; 3] = [KernelPath::Storage, KernelPath::Texels, KernelPath::Auto];

#[test]
fn contrastive_model_gradients_match_cpu_and_finite_differences() {
    for path in PATHS {
        check(
            path,
            LossKind::Contrastive,
            contrastive_head::<f32>,
            contrastive_head::<f64>,
        );
    }
}

/// The anchor feeds two distances: its gradient is the sum the tape accumulates.
#[test]
fn triplet_model_gradients_match_cpu_and_finite_differences() {
    for path in PATHS {
        check(
            path,
            LossKind::Triplet,
            triplet_head::<f32>,
            triplet_head::<f64>,
        );
    }
}

/// The composed CPU head of a loss on class-labelled batches: the embeddings' cosine
/// distances to the class head's `weights` (or to each other), the loss, and back; the
/// gradient of the weights goes to `dw`.
fn class_head<T: Real>(
    m: &SiameseModel,
    weights: &[T],
    dw: &std::cell::RefCell<Vec<T>>,
    e: &[T],
) -> (T, Vec<T>) {
    let loss = m.config.similarity().unwrap();
    let (reference, r) = if loss.learns_classes() {
        (weights, weights.len() / DIM)
    } else {
        (e, B)
    };
    let dm = cpu::distance::pairwise_cosine_forward(e, reference, B, r, DIM);
    let sims = cpu::similarity_loss::Similarities {
        dm: &dm,
        n: B,
        r,
        labels: &CLASS_LABELS,
        ref_labels: if loss.learns_classes() {
            &[]
        } else {
            &CLASS_LABELS
        },
        window: if loss.learns_classes() {
            cpu::similarity_loss::Window::all(r)
        } else {
            cpu::similarity_loss::Window::batch(r)
        },
    };
    let rows = cpu::similarity_loss::rows(loss, &sims);
    let (value, stats) = cpu::similarity_loss::reduce(&rows);
    let ddm = cpu::similarity_loss::backward(loss, &sims, &rows, &stats, T::one());
    let (mut de, d_ref) =
        cpu::distance::pairwise_cosine_backward(e, reference, &dm, &ddm, B, r, DIM);
    if loss.learns_classes() {
        *dw.borrow_mut() = d_ref;
    } else {
        cpu::activation::accumulate_grad(&d_ref, &mut de);
    }
    (value, de)
}

/// The tower and the class head (or the batch against itself) composed on the CPU: the loss
/// and every parameter's gradient, the head's included.
fn class_loss_and_grads<T: Real>(m: &SiameseModel, flat: &[T], x: &[T]) -> (T, Vec<T>) {
    let offset = m.class_head_offset();
    let weights = offset.map_or(&[][..], |o| &flat[o..m.layout.len]);
    let dw = std::cell::RefCell::new(Vec::new());
    let (loss, mut grads) = cpu_loss_and_grads(m, flat, x, |e| class_head(m, weights, &dw, e));
    if let Some(o) = offset {
        grads[o..o + dw.borrow().len()].copy_from_slice(&dw.borrow());
    }
    (loss, grads)
}

/// Every loss on class-labelled batches through `SiameseModel::record_class_loss`: the
/// tower, the pairwise cosine to the class weights (a parameter at the end of the flat
/// buffer: its gradient is the cosine backward's second output) or to the batch itself (the
/// embeddings then feed both sides: the tape sums the two gradients), and the loss; on every
/// kernel path against the CPU composition and central differences.
#[test]
fn class_loss_model_gradients_match_cpu_and_finite_differences() {
    for kind in LOSSES.into_iter().filter(|l| l.uses_classes()) {
        let m = model(kind);
        let values = ModelValues::init(&m, 7);
        let flat = &values.params;
        let x = uniform(&mut rng(11), B * 64, 0.0, 1.0);
        let (cpu_loss, cpu_grads) = class_loss_and_grads(&m, flat, &x);
        let scale = cpu_grads.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        assert!(scale > 1e-4, "{kind}: the gradients must not vanish");
        let (flat64, x64) = (to_f64(flat), to_f64(&x));
        let (_, grads64) = class_loss_and_grads(&m, &flat64, &x64);
        let fd = finite_difference(|p| class_loss_and_grads(&m, p, &x64).0, &flat64, FD_STEP);
        assert_matches_fd(&format!("cpu {kind} model"), &grads64, &fd);
        for path in PATHS {
            let step = gpu_step(gpu_on(path), &m, &values, &x, None);
            let what = format!("{kind} model gradients ({} kernels)", path.name());
            // As `check`: short sums through a few ops, and the loss's exp and log (see
            // kernels_tests/similarity_loss.rs): 1e-4 of the largest gradient.
            assert!(
                (step.loss - cpu_loss).abs() <= 1e-5 * cpu_loss.abs().max(1.0),
                "{what}: loss GPU {} vs CPU {cpu_loss}",
                step.loss
            );
            assert_close(&what, &step.grads, &cpu_grads, 1e-4 * scale as f64, 0.0);
            assert_gpu_matches_fd(&what, &step.grads, &fd, 1e-4);
        }
    }
}

/// Mixed precision against f32, on every kernel path: the tower in f16 (images, weight copy,
/// activations and their gradients; f32 accumulation), the backward seeded with a loss
/// scale of 1024 and the gradients divided by it. Every f16 store rounds by at most 2⁻¹¹
/// relative; a gradient here passes through about ten of them (inputs, weights, each
/// layer's value and gradient), so its error stays within ~1% of the largest gradient, the
/// bound used. A kernel that read an f16 buffer as f32, or a missing unscale, is off by far
/// more (the scale alone is a factor 1024).
#[test]
fn mixed_precision_model_gradients_match_f32() {
    if !has_f16() {
        return;
    }
    for loss_kind in [LossKind::Contrastive, LossKind::Triplet] {
        let m = model(loss_kind);
        let values = ModelValues::init(&m, 7);
        let x = uniform(&mut rng(11), loss_kind.branches() * B * 64, 0.0, 1.0);
        for path in PATHS {
            let g = gpu_on(path);
            let want = gpu_step(g, &m, &values, &x, None);
            let got = gpu_step(g, &m, &values, &x, Some(1024.0));
            let what = format!("{loss_kind} mixed precision ({} kernels)", path.name());
            assert!(
                (got.loss - want.loss).abs() <= 1e-2 * want.loss.abs().max(1e-3),
                "{what}: loss {} vs f32 {}",
                got.loss,
                want.loss
            );
            let scale = want.grads.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            assert!(scale > 1e-3, "the gradients must not vanish");
            assert_close(&what, &got.grads, &want.grads, 1e-2 * scale as f64, 0.0);
        }
    }
}

/// Parameter gradients of a two-convolution graph taped on `path`: x [4, 3, 8·S, 8·S] →
/// conv 4 3 pad 1 stride S → relu+maxpool 2 → conv 5 3 pad 1 → maxpool (2 unpadded, or with
/// `pool_pad` 1 windows of 3, stride 3, pad 1: tiling windows, padded, 2×2 out of 4×4 as
/// well) → distance of the first two images' embeddings to the last two's → contrastive
/// loss. With `shared`, the second convolution's output also feeds an average pooling whose
/// embedding is the distance's second side (its gradient then has two consumers). Returns
/// the gradients and the backward's entry points.
fn two_conv_grads(
    path: KernelPath,
    shared: bool,
    first_stride: usize,
    pool_pad: usize,
) -> (Vec<f32>, Vec<&'static str>) {
    let g = gpu_on(path);
    let shapes: [&[usize]; 4] = [&[4, 3, 3, 3], &[4], &[5, 4, 3, 3], &[5]];
    let mut tape = Tape::new(g);
    let side = 8 * first_stride;
    let x = uniform(&mut rng(21), 4 * 3 * side * side, -1.0, 1.0);
    let xv = tape.input(g.upload_f32(&x, &[4, 3, side, side]).unwrap());
    let mut params = Vec::new();
    let mut grads = Vec::new();
    for (i, shape) in shapes.iter().enumerate() {
        let len = shape.iter().product();
        let values = uniform(&mut rng(30 + i as u64), len, -0.5, 0.5);
        let grad = g.zeros(shape, siamese_gpu::DType::F32).unwrap();
        let p = tape.param(g.upload_f32(&values, shape).unwrap(), Some(grad.clone()));
        params.push(p.unwrap());
        grads.push(grad);
    }
    let y1 = tape
        .conv2d(xv, params[0], params[1], first_stride, 1)
        .unwrap();
    let p1 = tape.max_pool2d_relu(y1, 2, 2, 0).unwrap();
    let y2 = tape.conv2d(p1, params[2], params[3], 1, 1).unwrap();
    let window = 2 + pool_pad;
    let p2 = tape.max_pool2d(y2, window, window, pool_pad).unwrap();
    let e = tape.reshape(p2, &[4, 20]).unwrap();
    let (a, b) = if shared {
        let q2 = tape.avg_pool2d(y2, 2, 2).unwrap();
        (e, tape.reshape(q2, &[4, 20]).unwrap())
    } else {
        let rows = tape.split_rows(e, 2).unwrap();
        (rows[0], rows[1])
    };
    let d = tape.distance(Distance::Euclidean, a, b).unwrap();
    let rows = tape.shape(d)[0];
    let labels = PairLabel::upload(g, &labels()[..rows]).unwrap();
    let loss = tape.contrastive_loss(d, &labels, MARGIN as f32).unwrap();
    let backward = tape.backward(loss).unwrap();
    let kernels: Vec<_> = tape.forward_kernels().chain(backward.iter()).collect();
    g.run(&kernels);
    let entries = backward
        .iter()
        .flat_map(|k| k.dispatches().iter().map(|d| d.entry()))
        .collect();
    let flat = grads.iter().flat_map(|t| g.read_f32(t).unwrap()).collect();
    (flat, entries)
}

/// On the texel kernels a max-pooling writes the gradient of the convolution before it as
/// texels, bordered for grad_input, when it is that output's only consumer and its windows
/// tile unpadded; with a second consumer, or padding (3, 3, 1 windows straddle the cells),
/// the gradient is summed in its buffer and packed. The first convolution at stride 1 and at
/// stride 2 (its dy texels then bordered by ⌈(KH − 1 − pad)/2⌉, the same pack_nhwc4 layout
/// the pooling writes). All against the storage kernels (checked against the CPU in
/// kernels_tests/conv2d.rs): the same gradients up to summation order.
#[test]
fn texel_gradient_handoff_matches_the_storage_kernels() {
    for shared in [false, true] {
        for (stride, pool_pad) in [(1, 0), (2, 0), (1, 1)] {
            handoff_case(shared, stride, pool_pad);
        }
    }
}

fn handoff_case(shared: bool, stride: usize, pool_pad: usize) {
    {
        let (want, _) = two_conv_grads(KernelPath::Storage, shared, stride, pool_pad);
        let (got, entries) = two_conv_grads(KernelPath::Texels, shared, stride, pool_pad);
        let scale = want.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        assert!(scale > 1e-3, "the gradients must not vanish");
        // Sums of at most a few hundred terms, reordered: 1e-4 of the largest gradient.
        assert_close(
            &format!(
                "two-conv gradients, shared {shared}, first stride {stride}, pool pad {pool_pad}"
            ),
            &got,
            &want,
            1e-4 * scale as f64,
            0.0,
        );
        let handoffs = entries
            .iter()
            .filter(|&&e| e == "max_pool2d_backward_tex")
            .count();
        let packs = entries.iter().filter(|&&e| e == "pack_nhwc4").count();
        // Unshared and unpadded, both convolutions' gradients arrive as texels and the
        // backward packs no activation (grad_weight reads x as the forward packed it).
        // Shared or padded, the second convolution's dy is stored (summed where shared),
        // then packed.
        let (want_handoffs, want_packs) = if shared || pool_pad > 0 {
            (1, 1)
        } else {
            (2, 0)
        };
        assert_eq!(
            (handoffs, packs),
            (want_handoffs, want_packs),
            "shared {shared}, first stride {stride}, pool pad {pool_pad}: {entries:?}"
        );
    }
}

/// The residual graph's parameters: three convolutions of 3 → 3 channels, 3×3, pad 1
/// (weights and biases, in this order).
const RESIDUAL_PARAMS: [&[usize]; 6] = [
    &[3, 3, 3, 3],
    &[3],
    &[3, 3, 3, 3],
    &[3],
    &[3, 3, 3, 3],
    &[3],
];

/// A small residual tower on x [4, 3, 8, 8] (data: no gradient), its loss and parameter
/// gradients composed from the CPU references:
///
/// ```text
/// y1 = conv1(x)          s0 = y1 + x                 (x needs no gradient: one side)
/// p1 = relu(maxpool 3, stride 2, pad 1 (s0))         [4, 3, 4, 4], the ResNet stem's pooling
/// y2 = conv2(p1)         s1 = relu(y2 + p1)          (p1 feeds conv2 and the addition)
/// y3 = conv3(s1)         s2 = y3 + s1                (s1 feeds conv3, the addition, and b)
/// a = gap(s2), b = gap(s1)  [4, 3]  →  Euclidean distance  →  contrastive loss
/// ```
fn residual_cpu_loss_and_grads<T: Real>(params: &[Vec<T>], x: &[T]) -> (T, Vec<Vec<T>>) {
    use cpu::{conv2d as conv, pool, residual as add};
    let g1 = Conv2dGeometry {
        n: B,
        c: 3,
        h: 8,
        w: 8,
        o: 3,
        kh: 3,
        kw: 3,
        stride: 1,
        pad: 1,
    };
    let g2 = Conv2dGeometry { h: 4, w: 4, ..g1 };
    let [w1, b1, w2, b2, w3, b3] = [0, 1, 2, 3, 4, 5].map(|i| &params[i][..]);
    let y1 = conv::conv2d_forward(x, w1, b1, &g1);
    let s0 = add::add_forward(&y1, x);
    let (p1, argmax) = pool::max_pool2d_relu_forward(&s0, B, 3, 8, 8, 3, 2, 1);
    let y2 = conv::conv2d_forward(&p1, w2, b2, &g2);
    let s1 = add::add_relu_forward(&y2, &p1);
    let y3 = conv::conv2d_forward(&s1, w3, b3, &g2);
    let s2 = add::add_forward(&y3, &s1);
    let a = pool::global_avg_pool2d_forward(&s2, B, 3, 4, 4);
    let b = pool::global_avg_pool2d_forward(&s1, B, 3, 4, 4);
    let d = cpu::distance::euclidean_forward(&a, &b, B, 3);
    let m = T::from_f64(MARGIN);
    let loss = cpu::loss::contrastive_loss_forward(&d, &labels(), m);

    let dd = cpu::loss::contrastive_loss_backward(&d, &labels(), m, T::one());
    let (da, db) = cpu::distance::euclidean_backward(&a, &b, &d, &dd, B, 3);
    let ds2 = pool::global_avg_pool2d_backward(&da, B, 3, 4, 4);
    let mut ds1 = pool::global_avg_pool2d_backward(&db, B, 3, 4, 4);
    // s2 = y3 + s1: both receive ds2.
    let dy3 = add::add_backward(&ds2);
    cpu::activation::accumulate_grad(&add::add_backward(&ds2), &mut ds1);
    let dw3 = conv::conv2d_grad_weight(&dy3, &s1, &g2);
    let db3 = conv::conv2d_grad_bias(&dy3, B, 3, 16);
    cpu::activation::accumulate_grad(&conv::conv2d_grad_input(&dy3, w3, &g2), &mut ds1);
    // s1 = relu(y2 + p1): both receive ds1·[s1 > 0].
    let dy2 = add::add_relu_backward(&s1, &ds1);
    let mut dp1 = add::add_relu_backward(&s1, &ds1);
    let dw2 = conv::conv2d_grad_weight(&dy2, &p1, &g2);
    let db2 = conv::conv2d_grad_bias(&dy2, B, 3, 16);
    cpu::activation::accumulate_grad(&conv::conv2d_grad_input(&dy2, w2, &g2), &mut dp1);
    let ds0 = pool::max_pool2d_backward(&dp1, &argmax, B, 3, 8, 8, 3, 2, 1);
    // s0 = y1 + x: only y1 needs its gradient.
    let dy1 = add::add_backward(&ds0);
    let dw1 = conv::conv2d_grad_weight(&dy1, x, &g1);
    let db1 = conv::conv2d_grad_bias(&dy1, B, 3, 64);
    (loss, vec![dw1, db1, dw2, db2, dw3, db3])
}

/// The residual graph taped on `path` and run on the GPU: (loss, parameter gradients, the
/// backward's entry points).
fn residual_gpu_loss_and_grads(
    path: KernelPath,
    params: &[Vec<f32>],
    x: &[f32],
) -> (f32, Vec<Vec<f32>>, Vec<&'static str>) {
    let g = gpu_on(path);
    let mut tape = Tape::new(g);
    let xv = tape.input(g.upload_f32(x, &[B, 3, 8, 8]).unwrap());
    let mut ids = Vec::new();
    let mut grads = Vec::new();
    for (values, shape) in params.iter().zip(RESIDUAL_PARAMS) {
        let grad = g.zeros(shape, siamese_gpu::DType::F32).unwrap();
        let id = tape.param(g.upload_f32(values, shape).unwrap(), Some(grad.clone()));
        ids.push(id.unwrap());
        grads.push(grad);
    }
    let y1 = tape.conv2d(xv, ids[0], ids[1], 1, 1).unwrap();
    let s0 = tape.add(y1, xv).unwrap();
    let p1 = tape.max_pool2d_relu(s0, 3, 2, 1).unwrap();
    let y2 = tape.conv2d(p1, ids[2], ids[3], 1, 1).unwrap();
    let s1 = tape.add_relu(y2, p1).unwrap();
    let y3 = tape.conv2d(s1, ids[4], ids[5], 1, 1).unwrap();
    let s2 = tape.add(y3, s1).unwrap();
    let a = tape.global_avg_pool(s2).unwrap();
    let b = tape.global_avg_pool(s1).unwrap();
    assert_eq!(tape.shape(a), &[B, 3]);
    let d = tape.distance(Distance::Euclidean, a, b).unwrap();
    let labels = PairLabel::upload(g, &labels()).unwrap();
    let loss = tape.contrastive_loss(d, &labels, MARGIN as f32).unwrap();
    let backward = tape.backward(loss).unwrap();
    let kernels: Vec<_> = tape.forward_kernels().chain(backward.iter()).collect();
    g.run(&kernels);
    let entries = backward
        .iter()
        .flat_map(|k| k.dispatches().iter().map(|d| d.entry()))
        .collect();
    (
        g.read_f32(tape.tensor(loss)).unwrap()[0],
        grads.iter().map(|t| g.read_f32(t).unwrap()).collect(),
        entries,
    )
}

/// The residual tower's parameter gradients on every kernel path against the CPU
/// composition (f32) and central differences of the composed f64 forward. The block inputs
/// p1 and s1 each feed a convolution and an addition (s1 the second pooling too): their
/// gradients are the sums the tape accumulates, which a missing or doubled term would show.
#[test]
fn residual_tower_gradients_match_cpu_and_finite_differences() {
    let params: Vec<Vec<f32>> = RESIDUAL_PARAMS
        .iter()
        .enumerate()
        .map(|(i, shape)| {
            let len = shape.iter().product();
            uniform(&mut rng(50 + i as u64), len, -0.4, 0.4)
        })
        .collect();
    let x = uniform(&mut rng(60), B * 3 * 64, -1.0, 1.0);
    let (cpu_loss, cpu_grads) = residual_cpu_loss_and_grads(&params, &x);
    let cpu_flat: Vec<f32> = cpu_grads.concat();
    let scale = cpu_flat.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(scale > 1e-3, "the gradients must not vanish");

    let params64: Vec<Vec<f64>> = params.iter().map(|p| to_f64(p)).collect();
    let x64 = to_f64(&x);
    let (_, grads64) = residual_cpu_loss_and_grads(&params64, &x64);
    // Central differences over every parameter, the flat vector split back into tensors.
    let sizes: Vec<usize> = params.iter().map(Vec::len).collect();
    let unflatten = |flat: &[f64]| -> Vec<Vec<f64>> {
        let mut rest = flat;
        sizes
            .iter()
            .map(|&n| {
                let (head, tail) = rest.split_at(n);
                rest = tail;
                head.to_vec()
            })
            .collect()
    };
    let fd = finite_difference(
        |p| residual_cpu_loss_and_grads(&unflatten(p), &x64).0,
        &params64.concat(),
        FD_STEP,
    );
    assert_matches_fd("cpu residual tower", &grads64.concat(), &fd);

    for path in PATHS {
        let (gpu_loss, gpu_grads, entries) = residual_gpu_loss_and_grads(path, &params, &x);
        let what = format!("residual tower ({} kernels)", path.name());
        assert!(
            (gpu_loss - cpu_loss).abs() <= 1e-5 * cpu_loss.abs().max(1.0),
            "{what}: loss GPU {gpu_loss} vs CPU {cpu_loss}"
        );
        let gpu_flat = gpu_grads.concat();
        // Each gradient passes through about a dozen ops of short sums (≤ 81 terms) and the
        // accumulations; 1e-4 of the largest gradient is ~1000 ulps, room for reordered sums
        // compounding, and far below a missing or doubled term.
        assert_close(&what, &gpu_flat, &cpu_flat, 1e-4 * scale as f64, 0.0);
        assert_gpu_matches_fd(&what, &gpu_flat, &fd, 1e-4);
        // The one-sided addition (x needs no gradient), the two-sided ones, the gathered
        // (padded) pooling backward, and the sums of p1's and s1's extra gradients (one and
        // two).
        let count = |entry: &str| entries.iter().filter(|&&e| e == entry).count();
        assert_eq!(count("add_backward_single"), 1, "{what}: {entries:?}");
        assert_eq!(count("add_backward"), 1, "{what}: {entries:?}");
        assert_eq!(count("add_relu_backward"), 1, "{what}: {entries:?}");
        assert_eq!(count("max_pool2d_backward"), 1, "{what}: {entries:?}");
        assert_eq!(
            count("global_avg_pool2d_backward"),
            2,
            "{what}: {entries:?}"
        );
        assert_eq!(count("accumulate_grad"), 3, "{what}: {entries:?}");
    }
}

/// Dropout on the tape in training: x [4, 32] (a parameter) → dropout(p 0.5) → the first two
/// rows' distance to the last two's → contrastive loss. The forward is x·keep/(1 − p) and
/// the gradient reaching x is the dropout output's times keep/(1 − p), with the mask of
/// `cpu::dropout` for the rng tensor's (seed, step) and the layer's stream. p = 0 records
/// nothing; p = 1 is refused.
#[test]
fn dropout_on_the_tape_scales_the_gradient_by_the_mask() {
    let g = gpu();
    let (p, seed, step, stream) = (0.5f32, 31, 4, 3);
    let x = uniform(&mut rng(70), B * 32, -1.0, 1.0);
    let rng_t = g.upload_u32(&[seed, step], &[2]).unwrap();
    let mut tape = Tape::new(g);
    let grad = g.zeros(&[B, 32], siamese_gpu::DType::F32).unwrap();
    let xv = tape
        .param(g.upload_f32(&x, &[B, 32]).unwrap(), Some(grad.clone()))
        .unwrap();
    assert_eq!(tape.dropout(xv, 0.0, &rng_t, stream).unwrap(), xv);
    let err = tape.dropout(xv, 1.0, &rng_t, stream).unwrap_err();
    assert!(
        err.to_string()
            .contains("dropout: the dropout probability p = 1 must be in [0, 1)"),
        "{err}"
    );
    assert!(tape.ops().is_empty(), "{:?}", tape.ops());
    let y = tape.dropout(xv, p, &rng_t, stream).unwrap();
    let rows = tape.split_rows(y, 2).unwrap();
    let d = tape
        .distance(Distance::Euclidean, rows[0], rows[1])
        .unwrap();
    let labels = PairLabel::upload(g, &[PairLabel::Same, PairLabel::Different]).unwrap();
    let loss = tape.contrastive_loss(d, &labels, MARGIN as f32).unwrap();
    let backward = tape.backward(loss).unwrap();
    let kernels: Vec<_> = tape.forward_kernels().chain(backward.iter()).collect();
    g.run(&kernels);

    // Exact: the same mask and one correctly rounded f32 product on both sides.
    let got_y = g.read_f32(tape.tensor(y)).unwrap();
    let want_y = cpu::dropout::dropout_forward(&x, p, seed, step, stream);
    assert_within(
        "dropout on the tape: y",
        &got_y,
        &want_y,
        &vec![0.0; x.len()],
    );
    let dy = g.read_f32(tape.grad(y).unwrap()).unwrap();
    let dx = g.read_f32(&grad).unwrap();
    let want_dx = cpu::dropout::dropout_backward(&dy, p, seed, step, stream);
    assert_within(
        "dropout on the tape: dx",
        &dx,
        &want_dx,
        &vec![0.0; x.len()],
    );
    // The check means something only if dropped elements had a gradient to lose: the
    // distance's gradient reaches every element of y, dropped or not.
    let keep = cpu::dropout::keeps(x.len(), p, seed, step, stream);
    assert!(
        keep.iter().zip(&dy).any(|(&k, &g)| !k && g != 0.0),
        "no dropped element had a nonzero upstream gradient"
    );
    assert!(dx.iter().any(|&v| v != 0.0), "the gradient vanished");
}

/// Dropout's probability in the BatchNorm tower.
const DROPOUT_P: f32 = 0.25;
/// The BatchNorm tower's input image [C, H, W], and its length.
const BN_INPUT: [usize; 3] = [3, 8, 8];
const BN_IMAGE: usize = BN_INPUT[0] * BN_INPUT[1] * BN_INPUT[2];

/// A model whose tower has BatchNorm, residual blocks and dropout, from its spec: a stem
/// (conv 4 3 + bn + relu), an identity block, a projection block (a strided 3×3 branch and a
/// strided 1×1 shortcut, each with its BatchNorm), gap, dropout and the embedding, on
/// [3, 8, 8] images. Its convolutions have no bias, as before a BatchNorm they need none.
fn bn_model(loss: LossKind) -> SiameseModel {
    SiameseModel::new(ModelConfig {
        hyper: Default::default(),
        classes: 0,
        tower: format!(
            "conv 4 3 pad=1 bias=false | bn | relu \
             | res(conv 4 3 pad=1 bias=false | bn | relu | conv 4 3 pad=1 bias=false | bn) \
             | relu \
             | res(conv 6 3 stride=2 pad=1 bias=false | bn ; conv 6 1 stride=2 bias=false | bn) \
             | relu | gap | dropout {DROPOUT_P} | dense {DIM}"
        )
        .parse()
        .unwrap(),
        input: BN_INPUT,
        loss,
        margin: MARGIN as f32,
        distance: Distance::Euclidean,
        normalize: false,
        freeze: Vec::new(),
    })
    .unwrap()
}

/// The model's initial values, with every BatchNorm γ drawn from [0.5, 1.5) and β from
/// [−0.5, 0.5) instead of PyTorch's ones and zeros (at γ = 1, β = 0 a wrongly routed γ or β
/// would hide), and the running means and variances likewise off their zeros and ones (so
/// that the momentum update, and eval mode, read something).
fn bn_values(m: &SiameseModel) -> ModelValues {
    let mut values = ModelValues::init(m, 17);
    let mut r = rng(18);
    for (layout, flat) in [
        (&m.layout, &mut values.params),
        (&m.tower.state, &mut values.running),
    ] {
        for p in &layout.params {
            let (lo, hi) = match p.init {
                Init::Ones => (0.5, 1.5),
                Init::Zeros => (-0.5, 0.5),
                Init::Uniform { .. } | Init::Normal | Init::KaimingNormalFanOut { .. } => continue,
            };
            flat[p.offset..p.offset + p.len()].copy_from_slice(&uniform(&mut r, p.len(), lo, hi));
        }
    }
    values
}

/// Where `tower.<name>` lies in `layout`'s flat buffer.
fn span(layout: &ParamLayout, name: &str) -> std::ops::Range<usize> {
    let full = format!("tower.{name}");
    let i = layout
        .index_of(&full)
        .unwrap_or_else(|| panic!("the tower has no {full}"));
    let p = &layout.params[i];
    p.offset..p.offset + p.len()
}

/// The BatchNorm tower's convolutions on `n` images: the 3×3 stem (3 → 4 channels), the
/// identity block's 3×3s (4 → 4), the projection block's strided 3×3 and 1×1 (4 → 6, 8×8 →
/// 4×4).
fn bn_geometries(n: usize) -> [Conv2dGeometry; 4] {
    let stem = Conv2dGeometry {
        n,
        c: 3,
        h: 8,
        w: 8,
        o: 4,
        kh: 3,
        kw: 3,
        stride: 1,
        pad: 1,
    };
    let block = Conv2dGeometry { c: 4, ..stem };
    let branch = Conv2dGeometry {
        o: 6,
        stride: 2,
        ..block
    };
    let shortcut = Conv2dGeometry {
        kh: 1,
        kw: 1,
        pad: 0,
        ..branch
    };
    [stem, block, branch, shortcut]
}

/// One BatchNorm layer of the host forward: its name (`3.branch.1`), sizes, input and
/// output, and in training the batch statistics [mean; invstd] the backward reads.
struct HostBn<T> {
    layer: &'static str,
    d: Dims,
    x: Vec<T>,
    y: Vec<T>,
    saved: Vec<T>,
}

/// The BatchNorm tower's forward composed from the CPU references, every value its backward
/// reads kept (named as in [`bn_forward`]), and the running statistics after it.
struct BnForward<T> {
    n: usize,
    x: Vec<T>,
    stem: HostBn<T>,
    r0: Vec<T>,
    a1: HostBn<T>,
    r1: Vec<T>,
    a2: HostBn<T>,
    s3: Vec<T>,
    r3: Vec<T>,
    b1: HostBn<T>,
    b2: HostBn<T>,
    s5: Vec<T>,
    dropped: Vec<T>,
    embedding: Vec<T>,
    running: Vec<T>,
}

/// The BatchNorm tower on `x [N, 3, 8, 8]` with flat `params` and `running` statistics, in
/// `mode`:
///
/// ```text
/// r0 = relu(stem = bn 1(conv 0(x)))
/// r1 = relu(a1 = bn 3.branch.1(conv 3.branch.0(r0)))
/// r3 = relu(s3 = a2 + r0),  a2 = bn 3.branch.4(conv 3.branch.3(r1))     identity block
/// r5 = relu(s5 = b1 + b2),  b1 = bn 5.branch.1(conv 5.branch.0(r3))     strided 3×3
///                           b2 = bn 5.shortcut.1(conv 5.shortcut.0(r3)) strided 1×1
/// embedding = dense 9(dropped = dropout 8(gap(r5)))
/// ```
///
/// In training each BatchNorm normalises with its batch's statistics over all N images (the
/// Siamese branches are one batch) and moves its running statistics; dropout masks with the
/// counters of [`RNG`] and stream 0 (the tower's first dropout layer). In evaluation each
/// BatchNorm normalises with its running statistics and dropout passes values through.
fn bn_forward<T: Real>(
    m: &SiameseModel,
    params: &[T],
    running: &[T],
    x: &[T],
    mode: Mode,
) -> BnForward<T> {
    use cpu::activation::relu_forward as relu;
    use cpu::batchnorm as bn_ref;
    use cpu::residual::add_forward as add;
    let n = x.len() / BN_IMAGE;
    let [g_stem, g_block, g_branch, g_short] = bn_geometries(n);
    let p = |name: &str| &params[span(&m.layout, name)];
    let conv = |x: &[T], name: &str, g: &Conv2dGeometry| {
        // No bias: the tower binds a zero one.
        cpu::conv2d::conv2d_forward(x, p(name), &vec![T::zero(); g.o], g)
    };
    let mut running = running.to_vec();
    let (eps, momentum) = (T::from_f64(EPS as f64), T::from_f64(MOMENTUM as f64));
    let mut bn = |layer: &'static str, x: Vec<T>, g: &Conv2dGeometry| {
        let d = Dims {
            n,
            c: g.o,
            hw: g.out_h() * g.out_w(),
        };
        let (gamma, beta) = (p(&format!("{layer}.weight")), p(&format!("{layer}.bias")));
        let mean = span(&m.tower.state, &format!("{layer}.running_mean"));
        let var = span(&m.tower.state, &format!("{layer}.running_var"));
        match mode {
            Mode::Train => {
                let (mut rm, mut rv) = (
                    running[mean.clone()].to_vec(),
                    running[var.clone()].to_vec(),
                );
                let saved = bn_ref::batch_norm_stats(&x, d, eps, momentum, &mut rm, &mut rv);
                running[mean].copy_from_slice(&rm);
                running[var].copy_from_slice(&rv);
                // Every channel varies (var + eps > 0.01): in a constant one x̂ would move by
                // h/sqrt(eps) under a step h, and the differences' truncation error grow by
                // that factor cubed.
                for &invstd in &saved[d.c..] {
                    assert!(invstd.to_f64() < 10.0, "{layer}: invstd {invstd:?}");
                }
                let y = bn_ref::batch_norm_normalize(&x, &saved, gamma, beta, d);
                HostBn {
                    layer,
                    d,
                    x,
                    y,
                    saved,
                }
            }
            Mode::Eval => {
                let (rm, rv) = (&running[mean], &running[var]);
                let y = bn_ref::batch_norm_eval_forward(&x, rm, rv, gamma, beta, d, eps);
                HostBn {
                    layer,
                    d,
                    x,
                    y,
                    saved: Vec::new(),
                }
            }
        }
    };
    let stem = bn("1", conv(x, "0.weight", &g_stem), &g_stem);
    let r0 = relu(&stem.y);
    let a1 = bn(
        "3.branch.1",
        conv(&r0, "3.branch.0.weight", &g_block),
        &g_block,
    );
    let r1 = relu(&a1.y);
    let a2 = bn(
        "3.branch.4",
        conv(&r1, "3.branch.3.weight", &g_block),
        &g_block,
    );
    let s3 = add(&a2.y, &r0);
    let r3 = relu(&s3);
    let b1 = bn(
        "5.branch.1",
        conv(&r3, "5.branch.0.weight", &g_branch),
        &g_branch,
    );
    let b2 = bn(
        "5.shortcut.1",
        conv(&r3, "5.shortcut.0.weight", &g_short),
        &g_short,
    );
    let s5 = add(&b1.y, &b2.y);
    let pooled = cpu::pool::global_avg_pool2d_forward(&relu(&s5), n, 6, 4, 4);
    let dropped = match mode {
        Mode::Train => cpu::dropout::dropout_forward(&pooled, DROPOUT_P, RNG[0], RNG[1], 0),
        Mode::Eval => pooled,
    };
    let embedding = cpu::dense::dense_forward(&dropped, p("9.weight"), p("9.bias"), n, 6, DIM);
    BnForward {
        n,
        x: x.to_vec(),
        stem,
        r0,
        a1,
        r1,
        a2,
        s3,
        r3,
        b1,
        b2,
        s5,
        dropped,
        embedding,
        running,
    }
}

/// The training forward's backward from the embedding's gradient `de`: the flat parameter
/// gradients (zero in the padding between views).
fn bn_backward<T: Real>(m: &SiameseModel, params: &[T], f: &BnForward<T>, de: &[T]) -> Vec<T> {
    use cpu::activation::{accumulate_grad, relu_backward};
    use cpu::batchnorm as bn_ref;
    use cpu::conv2d::{conv2d_grad_input as grad_input, conv2d_grad_weight as grad_weight};
    use cpu::residual::add_backward;
    let n = f.n;
    let [g_stem, g_block, g_branch, g_short] = bn_geometries(n);
    let p = |name: &str| &params[span(&m.layout, name)];
    // A train-mode BatchNorm's (dx, dγ, dβ) from its dy.
    let bn = |l: &HostBn<T>, dy: &[T]| {
        let (dgamma, dbeta) = bn_ref::batch_norm_grad_reduce(&l.x, dy, &l.saved, l.d);
        let gamma = p(&format!("{}.weight", l.layer));
        let dx = bn_ref::batch_norm_grad_input(&l.x, dy, gamma, &l.saved, &dgamma, &dbeta, l.d);
        (dx, dgamma, dbeta)
    };
    let dw9 = cpu::dense::dense_grad_weight(de, &f.dropped, n, 6, DIM);
    let db9 = cpu::dense::dense_grad_bias(de, n, DIM);
    let ddropped = cpu::dense::dense_grad_input(de, p("9.weight"), n, 6, DIM);
    let dpooled = cpu::dropout::dropout_backward(&ddropped, DROPOUT_P, RNG[0], RNG[1], 0);
    let dr5 = cpu::pool::global_avg_pool2d_backward(&dpooled, n, 6, 4, 4);
    // s5 = b1 + b2: both BatchNorms receive ds5.
    let ds5 = relu_backward(&f.s5, &dr5);
    let (dy_b1, dgamma_b1, dbeta_b1) = bn(&f.b1, &add_backward(&ds5));
    let (dy_b2, dgamma_b2, dbeta_b2) = bn(&f.b2, &add_backward(&ds5));
    // r3 feeds both convolutions of the projection block: its gradient is their sum.
    let dw_b1 = grad_weight(&dy_b1, &f.r3, &g_branch);
    let dw_b2 = grad_weight(&dy_b2, &f.r3, &g_short);
    let mut dr3 = grad_input(&dy_b1, p("5.branch.0.weight"), &g_branch);
    accumulate_grad(
        &grad_input(&dy_b2, p("5.shortcut.0.weight"), &g_short),
        &mut dr3,
    );
    // s3 = a2 + r0: the identity shortcut hands ds3 to r0, which also feeds the branch.
    let ds3 = relu_backward(&f.s3, &dr3);
    let (dy_a2, dgamma_a2, dbeta_a2) = bn(&f.a2, &add_backward(&ds3));
    let mut dr0 = add_backward(&ds3);
    let dw_a2 = grad_weight(&dy_a2, &f.r1, &g_block);
    let dr1 = grad_input(&dy_a2, p("3.branch.3.weight"), &g_block);
    let (dy_a1, dgamma_a1, dbeta_a1) = bn(&f.a1, &relu_backward(&f.a1.y, &dr1));
    let dw_a1 = grad_weight(&dy_a1, &f.r0, &g_block);
    accumulate_grad(
        &grad_input(&dy_a1, p("3.branch.0.weight"), &g_block),
        &mut dr0,
    );
    let (dy_stem, dgamma_stem, dbeta_stem) = bn(&f.stem, &relu_backward(&f.stem.y, &dr0));
    let dw_stem = grad_weight(&dy_stem, &f.x, &g_stem);

    let mut grads = vec![T::zero(); m.layout.len];
    for (name, g) in [
        ("0.weight", dw_stem),
        ("1.weight", dgamma_stem),
        ("1.bias", dbeta_stem),
        ("3.branch.0.weight", dw_a1),
        ("3.branch.1.weight", dgamma_a1),
        ("3.branch.1.bias", dbeta_a1),
        ("3.branch.3.weight", dw_a2),
        ("3.branch.4.weight", dgamma_a2),
        ("3.branch.4.bias", dbeta_a2),
        ("5.branch.0.weight", dw_b1),
        ("5.branch.1.weight", dgamma_b1),
        ("5.branch.1.bias", dbeta_b1),
        ("5.shortcut.0.weight", dw_b2),
        ("5.shortcut.1.weight", dgamma_b2),
        ("5.shortcut.1.bias", dbeta_b2),
        ("9.weight", dw9),
        ("9.bias", db9),
    ] {
        grads[span(&m.layout, name)].copy_from_slice(&g);
    }
    grads
}

/// Which inputs of the forward's ReLUs are positive: the side of its kink each lies on.
fn relu_signs(f: &BnForward<f64>) -> Vec<bool> {
    [&f.stem.y, &f.a1.y, &f.s3, &f.s5]
        .iter()
        .flat_map(|v| v.iter().map(|&x| x > 0.0))
        .collect()
}

/// The BatchNorm tower's training step of `loss_kind` on every kernel path: the loss and
/// the flat gradients against the CPU composition in f32 and against central differences of
/// the composed f64 forward over every parameter; the running statistics after the forward
/// against the references' update of the initial ones.
fn check_bn_tower(
    loss_kind: LossKind,
    head32: fn(&[f32]) -> (f32, Vec<f32>),
    head64: fn(&[f64]) -> (f64, Vec<f64>),
) {
    let m = bn_model(loss_kind);
    let values = bn_values(&m);
    let n = loss_kind.branches() * B;
    let x = uniform(&mut rng(80), n * BN_IMAGE, -1.0, 1.0);

    // The mask must drop some values and keep others for the check to mean anything.
    let keep = cpu::dropout::keeps(n * 6, DROPOUT_P, RNG[0], RNG[1], 0);
    assert!(keep.contains(&false) && keep.contains(&true), "{keep:?}");

    let f = bn_forward(&m, &values.params, &values.running, &x, Mode::Train);
    let (cpu_loss, de) = head32(&f.embedding);
    let cpu_grads = bn_backward(&m, &values.params, &f, &de);
    let scale = cpu_grads.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    assert!(scale > 1e-3, "the gradients must not vanish");

    let (params64, running64, x64) = (to_f64(&values.params), to_f64(&values.running), to_f64(&x));
    let f64_forward = bn_forward(&m, &params64, &running64, &x64, Mode::Train);
    let (_, de64) = head64(&f64_forward.embedding);
    let grads64 = bn_backward(&m, &params64, &f64_forward, &de64);
    // The dropout mask is a function of the counters alone, so the forward is a fixed,
    // piecewise smooth function of the parameters, its pieces bounded by the ReLUs' kinks.
    // Of the ~9000 ReLU inputs some lie within 1e-4 of theirs (one 3e-5 away in the triplet
    // batch), which the usual step of 1e-5 crosses; a step of 1e-6 (rounding error
    // ε·|loss|/h ≈ 1e-10, far inside FD_ATOL) does not, and every step is checked to leave
    // each ReLU input on its side, so the differences are of one smooth piece.
    let kinks = relu_signs(&f64_forward);
    let fd = finite_difference(
        |p| {
            let f = bn_forward(&m, p, &running64, &x64, Mode::Train);
            assert!(relu_signs(&f) == kinks, "a step crossed a ReLU kink");
            head64(&f.embedding).0
        },
        &params64,
        1e-6,
    );
    assert_matches_fd(&format!("cpu {loss_kind} BatchNorm tower"), &grads64, &fd);

    for path in PATHS {
        let what = format!("{loss_kind} BatchNorm tower ({} kernels)", path.name());
        let step = gpu_step(gpu_on(path), &m, &values, &x, None);
        // The tower recorded is the one composed: five BatchNorms, two additions (each block's
        // closing ReLU recorded with it), a dropout.
        let count = |op: &str| step.ops.iter().filter(|&&o| o == op).count();
        assert_eq!(
            [count("batch_norm"), count("add_relu"), count("dropout")],
            [5, 2, 1],
            "{what}: {:?}",
            step.ops
        );
        // The loss sums B distances of embeddings that agree to ~1e-6 relative: 1e-5.
        assert!(
            (step.loss - cpu_loss).abs() <= 1e-5 * cpu_loss.abs().max(1.0),
            "{what}: loss GPU {} vs CPU {cpu_loss}",
            step.loss
        );
        // Each gradient passes through about twenty ops of short sums (≤ 36 terms, the
        // channel sums ≤ 768), BatchNorm's backward subtracting sums that cancel to a fraction
        // of their terms (M·dy − Σdy − x̂·Σdy·x̂); 1e-4 of the largest gradient is ~100× the
        // ~1e-6 seen, and far below a missing, doubled or unmasked term.
        assert_close(&what, &step.grads, &cpu_grads, 1e-4 * scale as f64, 0.0);
        assert_gpu_matches_fd(&what, &step.grads, &fd, 1e-4);
        // Each statistic is one blend (momentum 0.1) of a batch mean or variance over ≤ 768
        // values summed in another order: within an ulp or two of these O(1) values (1.2e-7
        // seen). 2e-6 leaves room for that and is below what the biased variance would move
        // the running variance by, 0.1·var/(M − 1) ≥ 9e-6 in every layer here; no update, or
        // the batch's statistics copied, moves them by ~0.1.
        assert_close(
            &format!("{what}: running statistics"),
            &step.running,
            &f.running,
            2e-6,
            0.0,
        );
    }
}

#[test]
fn batch_norm_tower_contrastive_gradients_match_cpu_and_finite_differences() {
    check_bn_tower(
        LossKind::Contrastive,
        contrastive_head::<f32>,
        contrastive_head::<f64>,
    );
}

/// Three branches in one batch: each BatchNorm's statistics run over all 3B images.
#[test]
fn batch_norm_tower_triplet_gradients_match_cpu_and_finite_differences() {
    check_bn_tower(LossKind::Triplet, triplet_head::<f32>, triplet_head::<f64>);
}

/// The BatchNorm tower under mixed precision against f32, on every kernel path: f16 images,
/// the f16 weight copy (cast on the device: γ and β included), f16 activations and
/// gradients, the backward seeded with a loss scale of 1024 and the gradients divided by it.
#[test]
fn batch_norm_tower_mixed_precision_gradients_match_f32() {
    if !has_f16() {
        return;
    }
    for loss_kind in [LossKind::Contrastive, LossKind::Triplet] {
        let m = bn_model(loss_kind);
        let values = bn_values(&m);
        let x = uniform(&mut rng(80), loss_kind.branches() * B * BN_IMAGE, -1.0, 1.0);
        for path in PATHS {
            let g = gpu_on(path);
            let want = gpu_step(g, &m, &values, &x, None);
            let got = gpu_step(g, &m, &values, &x, Some(1024.0));
            let what = format!(
                "{loss_kind} BatchNorm tower, mixed precision ({} kernels)",
                path.name()
            );
            // As the mixed test above: every f16 store rounds by ≤ 2⁻¹¹ relative and a
            // gradient passes through about twenty of them (images, weights, each layer's
            // value and gradient; BatchNorm's statistics and sums are f32), ~1e-3 of the largest
            // gradient seen; 1e-2 is the bound, far below a missing unscale (a factor 1024)
            // or an f16 buffer read as f32. The loss likewise within 1e-2 of itself.
            assert!(
                (got.loss - want.loss).abs() <= 1e-2 * want.loss.abs().max(1e-3),
                "{what}: loss {} vs f32 {}",
                got.loss,
                want.loss
            );
            let scale = want.grads.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            assert!(scale > 1e-3, "the gradients must not vanish");
            assert_close(&what, &got.grads, &want.grads, 1e-2 * scale as f64, 0.0);
        }
    }
}

/// The BatchNorm tower in evaluation, as validation and `embed` record it (constant
/// weights, `ModelTensors::eval`): each BatchNorm normalises with the running statistics
/// (non-trivial ones, [`bn_values`]) and leaves them as they are, and dropout is the
/// identity (nothing recorded, no rng tensor needed). The embedding against the CPU eval
/// forward, on every kernel path.
#[test]
fn batch_norm_tower_eval_mode_matches_cpu() {
    let m = bn_model(LossKind::Contrastive);
    let values = bn_values(&m);
    let n = 2 * B;
    let x = uniform(&mut rng(81), n * BN_IMAGE, -1.0, 1.0);
    let want = bn_forward(&m, &values.params, &values.running, &x, Mode::Eval).embedding;
    let scale = want.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    for path in PATHS {
        let what = format!("BatchNorm tower in eval mode ({} kernels)", path.name());
        let g = gpu_on(path);
        let tensors = ModelTensors::upload(g, &m, &values).unwrap();
        let mut tape = Tape::new(g);
        let xv = tape.input(
            g.upload_f32(&x, &[n, BN_INPUT[0], BN_INPUT[1], BN_INPUT[2]])
                .unwrap(),
        );
        let e = m.record_embedding(&mut tape, xv, &tensors.eval()).unwrap();
        let ops = tape.ops();
        assert!(!ops.contains(&"dropout"), "{what}: {ops:?}");
        let kernels: Vec<_> = tape.forward_kernels().collect();
        g.run(&kernels);
        let got = g.read_f32(tape.tensor(e)).unwrap();
        // A forward alone, sums of ≤ 36 terms through the tower and eval BatchNorm a fixed
        // affine map: 1e-5 of the largest entry is ~100× the ~6e-8 seen, and far below
        // a batch-statistics normalisation (train mode) or a dropout mask applied.
        assert_close(&what, &got, &want, 1e-5 * scale as f64, 0.0);
        let after = tensors.read(g, 0).unwrap();
        assert_eq!(
            after.running, values.running,
            "{what}: running statistics moved"
        );
    }
}
