//! Whole-model gradients: a small Siamese model (conv → relu → maxpool → dense → distance →
//! loss) recorded on the tape and run on the GPU, against the composition of the CPU
//! references (forward and backward, layer by layer) and against central finite differences
//! of the composed CPU forward in f64.

use crate::common::*;
use siamese_gpu::autograd::Tape;
use siamese_gpu::cpu::{self, Real, conv2d::Conv2dGeometry};
use siamese_gpu::model::{ModelConfig, SiameseModel};
use siamese_gpu::vocab::Distance;
use siamese_gpu::vocab::LossKind;
use siamese_gpu::vocab::PairLabel;
use siamese_gpu::{Gpu, KernelPath};
use std::sync::OnceLock;

const B: usize = 4; // samples per batch
const DIM: usize = 16; // embedding size: B·DIM·4 bytes keeps the branch views 256-byte aligned
const MARGIN: f64 = 1.0;

fn model(loss: LossKind) -> SiameseModel {
    SiameseModel::new(ModelConfig {
        tower: format!("conv 3 3 | relu | maxpool 2 | flatten | dense {DIM}")
            .parse()
            .unwrap(),
        input: [1, 8, 8],
        loss,
        margin: MARGIN as f32,
        distance: Distance::Euclidean,
        normalize: false,
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
    let (p1, argmax) = cpu::pool::max_pool2d_forward(&r1, images, 3, 6, 6, 2, 2);
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
    let dr1 = cpu::pool::max_pool2d_backward(&dp1, &argmax, images, 3, 6, 6, 2, 2);
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

/// Runs forward and backward on `g` in one submission; returns (loss, flat gradients).
fn gpu_loss_and_grads(g: &Gpu, m: &SiameseModel, flat: &[f32], x: &[f32]) -> (f32, Vec<f32>) {
    gpu_loss_and_grads_as(g, m, flat, x, None)
}

/// [`gpu_loss_and_grads`], or with `loss_scale` Some(S) under mixed precision as training
/// runs it: f16 images, the tower on an f16 copy of the weights (cast on the device), the
/// backward seeded with S; the gradients are returned divided by S.
fn gpu_loss_and_grads_as(
    g: &Gpu,
    m: &SiameseModel,
    flat: &[f32],
    x: &[f32],
    loss_scale: Option<f32>,
) -> (f32, Vec<f32>) {
    let images = m.config.loss.branches() * B;
    let params = g.upload_f32(flat, &[flat.len()]).unwrap();
    let grads = g.zeros(&[flat.len()], siamese_gpu::DType::F32).unwrap();
    let labels = PairLabel::upload(g, &labels()).unwrap();
    let mut tape = Tape::new(g);
    let x_shape = [images, 1, 8, 8];
    let (xt, half, cast) = match loss_scale {
        None => (g.upload_f32(x, &x_shape).unwrap(), None, None),
        Some(_) => {
            let half = g.zeros(&[flat.len()], siamese_gpu::DType::F16).unwrap();
            let cast = siamese_gpu::ops::amp::cast(g, &params, &half).unwrap();
            (g.upload_f16(x, &x_shape).unwrap(), Some(half), Some(cast))
        }
    };
    let xv = tape.input(xt);
    let loss = m
        .record_loss(&mut tape, xv, &labels, &params, half.as_ref(), Some(&grads))
        .unwrap();
    let backward = tape.backward(loss).unwrap();
    let scale = loss_scale.unwrap_or(1.0);
    g.write_f32(tape.grad(loss).unwrap(), &[scale]).unwrap();
    let kernels: Vec<_> = cast
        .iter()
        .chain(tape.forward_kernels())
        .chain(backward.iter())
        .collect();
    g.run(&kernels);
    let grads = g.read_f32(&grads).unwrap();
    (
        g.read_f32(tape.tensor(loss)).unwrap()[0],
        grads.iter().map(|v| v / scale).collect(),
    )
}

fn check(
    path: KernelPath,
    loss_kind: LossKind,
    head32: fn(&[f32]) -> (f32, Vec<f32>),
    head64: fn(&[f64]) -> (f64, Vec<f64>),
) {
    let m = model(loss_kind);
    let flat = m.layout.init(7);
    let images = loss_kind.branches() * B;
    let x = uniform(&mut rng(11), images * 64, 0.0, 1.0);

    // GPU tape against the CPU composition in f32. Each gradient passes through five or six
    // ops of short sums (≤ 54 terms); 1e-4 of the largest gradient is ~1000 ulps, room for
    // the reordered sums compounding, and far below a missing or misrouted term.
    let (gpu_loss, gpu_grads) = gpu_loss_and_grads(gpu_on(path), &m, &flat, &x);
    let (cpu_loss, cpu_grads) = cpu_loss_and_grads(&m, &flat, &x, head32);
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
    let (flat64, x64) = (to_f64(&flat), to_f64(&x));
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
        let flat = m.layout.init(7);
        let x = uniform(&mut rng(11), loss_kind.branches() * B * 64, 0.0, 1.0);
        for path in PATHS {
            let g = gpu_on(path);
            let (want_loss, want) = gpu_loss_and_grads(g, &m, &flat, &x);
            let (got_loss, got) = gpu_loss_and_grads_as(g, &m, &flat, &x, Some(1024.0));
            let what = format!("{loss_kind} mixed precision ({} kernels)", path.name());
            assert!(
                (got_loss - want_loss).abs() <= 1e-2 * want_loss.abs().max(1e-3),
                "{what}: loss {got_loss} vs f32 {want_loss}"
            );
            let scale = want.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            assert!(scale > 1e-3, "the gradients must not vanish");
            assert_close(&what, &got, &want, 1e-2 * scale as f64, 0.0);
        }
    }
}

/// Parameter gradients of a two-convolution graph taped on `path`: x [4, 3, 8, 8] →
/// conv 4 3 pad 1 → relu+maxpool 2 → conv 5 3 pad 1 → maxpool 2 → distance of the first
/// two images' embeddings to the last two's → contrastive loss. With `shared`, the second convolution's output
/// also feeds an average pooling whose embedding is the distance's second side (its
/// gradient then has two consumers). Returns the gradients and the backward's entry points.
fn two_conv_grads(path: KernelPath, shared: bool) -> (Vec<f32>, Vec<&'static str>) {
    let g = gpu_on(path);
    let shapes: [&[usize]; 4] = [&[4, 3, 3, 3], &[4], &[5, 4, 3, 3], &[5]];
    let mut tape = Tape::new(g);
    let x = uniform(&mut rng(21), 4 * 3 * 64, -1.0, 1.0);
    let xv = tape.input(g.upload_f32(&x, &[4, 3, 8, 8]).unwrap());
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
    let y1 = tape.conv2d(xv, params[0], params[1], 1, 1).unwrap();
    let p1 = tape.max_pool2d_relu(y1, 2, 2).unwrap();
    let y2 = tape.conv2d(p1, params[2], params[3], 1, 1).unwrap();
    let p2 = tape.max_pool2d(y2, 2, 2).unwrap();
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
/// texels, bordered for grad_input, when it is that output's only consumer; with a second
/// consumer the gradient is summed in its buffer and packed. Both against the storage
/// kernels (checked against the CPU above): the same gradients up to summation order.
#[test]
fn texel_gradient_handoff_matches_the_storage_kernels() {
    for shared in [false, true] {
        let (want, _) = two_conv_grads(KernelPath::Storage, shared);
        let (got, entries) = two_conv_grads(KernelPath::Texels, shared);
        let scale = want.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        assert!(scale > 1e-3, "the gradients must not vanish");
        // Sums of at most a few hundred terms, reordered: 1e-4 of the largest gradient.
        assert_close(
            &format!("two-conv gradients, shared {shared}"),
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
        // Unshared, both convolutions' gradients arrive as texels and the backward packs
        // no activation (grad_weight reads x as the forward packed it). Shared, the second
        // convolution's dy is summed, then packed.
        let (want_handoffs, want_packs) = if shared { (1, 1) } else { (2, 0) };
        assert_eq!(
            (handoffs, packs),
            (want_handoffs, want_packs),
            "shared {shared}: {entries:?}"
        );
    }
}
