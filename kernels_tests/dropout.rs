//! Dropout (`shaders/dropout.wgsl`): the generator against Philox4x32-10's published known
//! answers, the GPU's masks against `cpu::dropout`'s bit for bit, both entries against the
//! reference in f32 and on f16 tensors, the masks' statistics (the kept fraction, and
//! independence across seeds, steps and streams), and the gradient against f64 finite
//! differences under a fixed mask.

use crate::common::*;
use siamese_gpu::cpu::dropout as cpu;
use siamese_gpu::ops::dropout;
use siamese_gpu::{DType, Tensor};

/// Tensor shapes: one element (a block of four with three past the end); element counts
/// off multiples of 4 (a partial last block) and of the 256-wide workgroup; an embedding
/// batch; a convolution's map with C off multiples of 4.
const SHAPES: &[&[usize]] = &[&[1], &[7], &[3, 5, 17], &[256, 128], &[2, 3, 7, 7]];

/// Dropout probabilities: the identity (p = 0), ResNet heads' and PyTorch's default (0.5),
/// and light and heavy dropout.
const PS: [f32; 4] = [0.0, 0.1, 0.5, 0.9];

/// The rng tensor of a step: `[seed, step]`.
fn rng_tensor(seed: u32, step: u32) -> Tensor {
    gpu().upload_u32(&[seed, step], &[2]).unwrap()
}

/// Values with |v| in [0.5, 1) and a random sign, as a tensor of `dtype` holds them: never
/// 0, so an output is 0 exactly where its element was dropped.
fn nonzero(len: usize, seed: u64, dtype: DType) -> Vec<f32> {
    let mut r = rng(seed);
    let signs = uniform(&mut r, len, -1.0, 1.0);
    let v: Vec<f32> = uniform(&mut r, len, 0.5, 1.0)
        .iter()
        .zip(&signs)
        .map(|(&m, &s)| if s < 0.0 { -m } else { m })
        .collect();
    as_dtype(&v, dtype)
}

/// The (seed, step, stream) of a test point: varied with the point's seed.
fn counters(seed: u64) -> (u32, u32, u32) {
    (
        0x5eed_0000 + seed as u32,
        (seed * 1000) as u32,
        seed as u32 % 3,
    )
}

/// Random123's `kat_vectors` lines for philox4x32 10 (counter, key, expected output): the
/// zero counter and key, all ones, and the digits of π.
#[test]
fn philox4x32_10_matches_the_published_known_answers() {
    const KAT: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
        (
            [0, 0, 0, 0],
            [0, 0],
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8],
        ),
        (
            [u32::MAX; 4],
            [u32::MAX; 2],
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
        ),
        (
            [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
            [0xa4093822, 0x299f31d0],
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
        ),
    ];
    for (counter, key, want) in KAT {
        assert_eq!(
            cpu::philox4x32_10(counter, key),
            want,
            "philox4x32_10({counter:x?}, {key:x?})"
        );
    }
}

#[test]
fn dropout_forward_matches_cpu() {
    for (p, drop) in dtype_matrix(&DTYPES, SHAPES)
        .into_iter()
        .flat_map(|p| PS.map(|drop| (p, drop)))
    {
        let len = p.shape.iter().product();
        let (seed, step, stream) = counters(p.seed);
        let x = nonzero(len, p.seed, p.dtype);
        let y = upload_as(&vec![f32::NAN; len], p.shape, p.dtype);
        let kernel = dropout::forward(
            gpu(),
            &upload_as(&x, p.shape, p.dtype),
            drop,
            &rng_tensor(seed, step),
            stream,
            &y,
        )
        .unwrap();
        let got = run_and_read_floats(&kernel, &y);
        let want = cpu::dropout_forward(&x, drop, seed, step, stream);
        let what = format!("dropout_forward {p} p {drop}");
        // The same mask, then x times the same f32 factor (scale or 0), one correctly
        // rounded product on both sides: exact in f32 (p = 0 included: x·1 = x). In f16 the
        // f32 product of the f16 x is rounded once on store.
        assert_within(
            &what,
            &got,
            &want,
            &stored_bound(vec![0.0; len], &want, p.dtype),
        );
        // x is never 0: a zero is a dropped element, and the masks agree bit for bit.
        let got_mask: Vec<bool> = got.iter().map(|&v| v != 0.0).collect();
        assert_eq!(
            got_mask,
            cpu::keeps(len, drop, seed, step, stream),
            "{what}: mask"
        );
    }
}

#[test]
fn dropout_backward_matches_cpu() {
    for (p, drop) in dtype_matrix(&DTYPES, SHAPES)
        .into_iter()
        .flat_map(|p| PS.map(|drop| (p, drop)))
    {
        let len = p.shape.iter().product();
        let (seed, step, stream) = counters(10 + p.seed);
        let dy = nonzero(len, 10 + p.seed, p.dtype);
        let dx = upload_as(&vec![f32::NAN; len], p.shape, p.dtype);
        let kernel = dropout::backward(
            gpu(),
            &upload_as(&dy, p.shape, p.dtype),
            drop,
            &rng_tensor(seed, step),
            stream,
            &dx,
        )
        .unwrap();
        let got = run_and_read_floats(&kernel, &dx);
        let want = cpu::dropout_backward(&dy, drop, seed, step, stream);
        // As the forward: exact in f32, one rounding on store in f16.
        assert_within(
            &format!("dropout_backward {p} p {drop}"),
            &got,
            &want,
            &stored_bound(vec![0.0; len], &want, p.dtype),
        );
    }
}

/// Elements of the statistics' masks: 2²⁰ + 3, a partial last block.
const MANY: usize = (1 << 20) + 3;

/// The mask the GPU draws for `len` elements (the forward on ones: kept elements give
/// 1/(1 − p) ≠ 0), checked bit for bit against the reference's.
fn gpu_mask(len: usize, p: f32, seed: u32, step: u32, stream: u32) -> Vec<bool> {
    let y = zeros(&[len]);
    let kernel = dropout::forward(
        gpu(),
        &upload(&vec![1.0; len], &[len]),
        p,
        &rng_tensor(seed, step),
        stream,
        &y,
    )
    .unwrap();
    let mask: Vec<bool> = run_and_read(&kernel, &y)
        .iter()
        .map(|&v| v != 0.0)
        .collect();
    assert_eq!(
        mask,
        cpu::keeps(len, p, seed, step, stream),
        "mask of p {p}, seed {seed}, step {step}, stream {stream}"
    );
    mask
}

/// Asserts that `count` successes in `n` Bernoulli(q) trials lie within six standard
/// deviations of q·n. For a fresh seed a correct generator fails this with probability
/// about 2·10⁻⁹; a mask that drops by the wrong probability, reuses a word or ignores a
/// counter is off by far more (e.g. 0.05 in the fraction is 100σ at n = 2²⁰).
fn assert_bernoulli(what: &str, count: usize, n: usize, q: f64) {
    let sigma = (q * (1.0 - q) / n as f64).sqrt();
    let fraction = count as f64 / n as f64;
    assert!(
        (fraction - q).abs() <= 6.0 * sigma,
        "{what}: fraction {fraction} where {q} ± {} (6σ) was expected",
        6.0 * sigma
    );
}

/// The kept fraction is 1 − p, over all elements and over each of the four words a Philox
/// block gives (a lane reading the wrong word, or two lanes one word, would show there).
#[test]
fn dropout_keeps_a_fraction_one_minus_p() {
    for p in [0.1f32, 0.5, 0.9] {
        let mask = gpu_mask(MANY, p, 2024, 17, 1);
        let kept = mask.iter().filter(|&&k| k).count();
        let q = 1.0 - f64::from(p);
        assert_bernoulli(&format!("kept fraction at p {p}"), kept, MANY, q);
        for lane in 0..4 {
            let lane_mask: Vec<bool> = mask.iter().skip(lane).step_by(4).copied().collect();
            let kept = lane_mask.iter().filter(|&&k| k).count();
            assert_bernoulli(
                &format!("kept fraction of word {lane} at p {p}"),
                kept,
                lane_mask.len(),
                q,
            );
        }
    }
}

/// The same (seed, step, stream) gives the same mask (fresh tensors and kernels, and the
/// backward's mask is the forward's); changing any one of seed, step and stream gives a
/// mask independent of the first: two independent masks agree at a position with
/// probability p² + (1 − p)². The step is changed by rewriting the rng tensor between two
/// runs of one recorded kernel, as the trainer does.
#[test]
fn dropout_masks_repeat_for_the_same_counters_and_differ_across_seeds_steps_and_streams() {
    let p = 0.5f32;
    let (seed, step, stream) = (99, 5, 2);
    let base = gpu_mask(MANY, p, seed, step, stream);
    assert_eq!(base, gpu_mask(MANY, p, seed, step, stream), "same counters");

    let dx = zeros(&[MANY]);
    let backward = dropout::backward(
        gpu(),
        &upload(&vec![1.0; MANY], &[MANY]),
        p,
        &rng_tensor(seed, step),
        stream,
        &dx,
    )
    .unwrap();
    let backward_mask: Vec<bool> = run_and_read(&backward, &dx)
        .iter()
        .map(|&v| v != 0.0)
        .collect();
    assert_eq!(base, backward_mask, "the backward's mask");

    let q = f64::from(p * p + (1.0 - p) * (1.0 - p));
    let agreement = |other: &[bool]| base.iter().zip(other).filter(|(a, b)| a == b).count();
    for (what, other) in [
        ("another seed", gpu_mask(MANY, p, seed + 1, step, stream)),
        ("another step", gpu_mask(MANY, p, seed, step + 1, stream)),
        ("another stream", gpu_mask(MANY, p, seed, step, stream + 1)),
    ] {
        assert_bernoulli(
            &format!("agreement with {what}"),
            agreement(&other),
            MANY,
            q,
        );
    }

    // One recorded kernel, the rng tensor rewritten for the next step.
    let rng = rng_tensor(seed, step);
    let y = zeros(&[MANY]);
    let kernel = dropout::forward(
        gpu(),
        &upload(&vec![1.0; MANY], &[MANY]),
        p,
        &rng,
        stream,
        &y,
    )
    .unwrap();
    let mask_of_run = || -> Vec<bool> {
        run_and_read(&kernel, &y)
            .iter()
            .map(|&v| v != 0.0)
            .collect()
    };
    assert_eq!(
        mask_of_run(),
        base,
        "step {step} through the recorded kernel"
    );
    gpu().write_u32(&rng, &[seed, step + 1]).unwrap();
    assert_eq!(
        mask_of_run(),
        cpu::keeps(MANY, p, seed, step + 1, stream),
        "step {} after rewriting the rng tensor",
        step + 1
    );
}

/// L = Σ r ⊙ dropout(x) under one fixed mask (seed, step, stream): linear in x, so its
/// gradient is the backward with dy = r, i.e. r·keep/(1 − p).
#[test]
fn dropout_backward_matches_finite_differences() {
    const FD_SHAPES: &[&[usize]] = &[&[1], &[5], &[2, 3, 4]];
    for (p, drop) in dtype_matrix(&F32_ONLY, FD_SHAPES)
        .into_iter()
        .flat_map(|p| [(p, 0.25f32), (p, 0.5)])
    {
        let len: usize = p.shape.iter().product();
        let (seed, step, stream) = counters(20 + p.seed);
        let x32 = uniform(&mut rng(300 + p.seed), len, -1.0, 1.0);
        let r32 = uniform(&mut rng(400 + p.seed), len, -1.0, 1.0);
        let (x, r) = (to_f64(&x32), to_f64(&r32));
        let loss = |v: &[f64]| dot(&r, &cpu::dropout_forward(v, drop, seed, step, stream));
        let fd = finite_difference(loss, &x, FD_STEP);
        let what = format!("dropout_backward {p} p {drop}");
        assert_matches_fd(
            &format!("cpu {what}"),
            &cpu::dropout_backward(&r, drop, seed, step, stream),
            &fd,
        );

        let dx = zeros(p.shape);
        let kernel = dropout::backward(
            gpu(),
            &upload(&r32, p.shape),
            drop,
            &rng_tensor(seed, step),
            stream,
            &dx,
        )
        .unwrap();
        // dx = r times the f32 factor 1/(1 − p) or 0: within 2u of the f64 gradient; 1e-5 of
        // the largest entry is far above that and far below a wrong factor or a dropped
        // element kept (an O(1) error).
        assert_gpu_matches_fd(&what, &run_and_read(&kernel, &dx), &fd, 1e-5);
    }
}

/// p outside [0, 1) is refused with the value named (NaN too), and so are an rng tensor
/// that is not `[2]` u32 and a mismatched output.
#[test]
fn dropout_launchers_reject_bad_arguments() {
    let x = zeros(&[2, 3]);
    let rng = rng_tensor(1, 0);
    for bad in [1.0f32, 1.5, -0.1, f32::NAN] {
        let err = dropout::forward(gpu(), &x, bad, &rng, 0, &zeros(&[2, 3])).unwrap_err();
        assert!(
            err.to_string().contains(&format!(
                "dropout_forward: the dropout probability p = {bad} must be in [0, 1)"
            )),
            "{err}"
        );
    }
    let err = dropout::backward(gpu(), &x, 1.0, &rng, 0, &zeros(&[2, 3])).unwrap_err();
    assert!(err.to_string().contains("p = 1 must be in [0, 1)"), "{err}");

    let err = dropout::forward(gpu(), &x, 0.5, &zeros(&[2]), 0, &zeros(&[2, 3])).unwrap_err();
    assert!(
        err.to_string()
            .contains("rng ([seed, step]) must be a U32 tensor of shape [2], got F32"),
        "{err}"
    );
    let err = dropout::forward(gpu(), &x, 0.5, &rng, 0, &zeros(&[3, 2])).unwrap_err();
    assert!(
        err.to_string()
            .contains("y must be a F32 tensor of shape [2, 3]"),
        "{err}"
    );
    let err =
        dropout::backward(gpu(), &zeros_as(&[2, 3], DType::F16), 0.5, &rng, 0, &x).unwrap_err();
    assert!(
        err.to_string()
            .contains("dx must be a F16 tensor of shape [2, 3], got F32"),
        "{err}"
    );
}
