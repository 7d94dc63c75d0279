//! Losses (`shaders/loss.wgsl`) against `cpu::loss`, their gradients against finite
//! differences, and the values of hand-computed examples. The fused entries, through
//! `ops::loss::contrastive_fused_*` and `triplet_fused_*`, on both distances:
//! contrastive_euclidean_forward, contrastive_euclidean_backward, triplet_euclidean_forward,
//! triplet_euclidean_backward, contrastive_cosine_forward, contrastive_cosine_backward,
//! triplet_cosine_forward and triplet_cosine_backward.
//!
//! The GPU runs in f32 on f32 inputs; the reference runs in f64 on the same (exactly
//! converted) inputs, so every bound below is the GPU's own rounding, derived from WGSL's
//! stated accuracies (division 2.5 ULP, exp 3 + 2|x| ULP, log 2⁻²¹ absolute near 1).

use crate::common::*;
use rand::RngExt;
use rand::rngs::StdRng;
use siamese_gpu::Tensor;
use siamese_gpu::cpu::loss as cpu;
use siamese_gpu::ops::loss;
use siamese_gpu::vocab::{Distance, PairLabel};

/// Batch 1, sizes off the 256-wide workgroup, one workgroup exactly (128 is half of one),
/// the reference batch 512, 1000 (four strides of the reduction) and 100 000 (391 strides).
const BATCHES: &[usize] = &[1, 5, 128, 255, 257, 512, 1000, 100_000];

/// Small batches for finite differences; 300 spans two backward workgroups.
const FD_BATCHES: &[usize] = &[1, 4, 300];

const MARGIN: f32 = 1.0;
/// Upstream gradient of the `_matches_cpu` tests: not 1, so a backward that ignores it fails.
const DLOSS: f32 = 0.75;

/// 1 ULP of x is at most 2u·|x|: WGSL's 2.5-ULP division is at most 5u relative.
const DIV_ERR: f64 = 5.0 * U32;

/// Same and Different mixed, about half each.
fn labels(r: &mut StdRng, n: usize) -> Vec<PairLabel> {
    (0..n)
        .map(|_| {
            if r.random_range(0..2) == 0 {
                PairLabel::Same
            } else {
                PairLabel::Different
            }
        })
        .collect()
}

/// Distances in [0.05, 2.5) whose Different pairs stay ≥ 0.05 from the margin, so finite
/// differences never straddle the kink of max(0, m − d)².
fn distances(r: &mut StdRng, labels: &[PairLabel]) -> Vec<f32> {
    labels
        .iter()
        .map(|&l| {
            loop {
                let d: f32 = r.random_range(0.05..2.5);
                if l == PairLabel::Same || (d - MARGIN).abs() >= 0.05 {
                    break d;
                }
            }
        })
        .collect()
}

/// (d_ap, d_an) in [0, 2.5) with |d_ap − d_an + m| ≥ 0.05: both sides of the hinge, never on it.
fn triplets(r: &mut StdRng, n: usize) -> (Vec<f32>, Vec<f32>) {
    let (mut ap, mut an) = (Vec::new(), Vec::new());
    while ap.len() < n {
        let (a, b): (f32, f32) = (r.random_range(0.0..2.5), r.random_range(0.0..2.5));
        if (a - b + MARGIN).abs() >= 0.05 {
            ap.push(a);
            an.push(b);
        }
    }
    (ap, an)
}

fn upload_labels(l: &[PairLabel]) -> Tensor {
    PairLabel::upload(gpu(), l).expect("upload labels")
}

fn scalar(v: f32) -> Tensor {
    upload(&[v], &[1])
}

fn run_scalar(kernel: &siamese_gpu::Kernel, out: &Tensor) -> f32 {
    run_and_read(kernel, out)[0]
}

/// Bound of a GPU mean of B non-negative terms against the exact mean `want` of the same
/// inputs: any summation order errs by at most γ_B·Σ terms, each term carries `term_err`
/// relative error, and the division by B one more DIV_ERR.
fn mean_bound(b: usize, term_err: f64, want: f64) -> f64 {
    (gamma(b) + term_err + DIV_ERR) * want.abs() + 1e-30
}

fn assert_scalar(what: &str, got: f32, want: f64, bound: f64) {
    assert!(
        (got as f64 - want).abs() <= bound,
        "{what}: GPU {got} vs reference {want} (|diff| {:e} > bound {bound:e})",
        (got as f64 - want).abs()
    );
}

// ---------------------------------------------------------------- contrastive

#[test]
fn contrastive_loss_forward_matches_cpu() {
    for (seed, &b) in BATCHES.iter().enumerate() {
        let mut r = rng(seed as u64);
        let l = labels(&mut r, b);
        let d = distances(&mut r, &l);
        let out = zeros(&[1]);
        let k =
            loss::contrastive_forward(gpu(), &upload(&d, &[b]), &upload_labels(&l), MARGIN, &out)
                .unwrap();
        let got = run_scalar(&k, &out);
        let want = cpu::contrastive_loss_forward(&to_f64(&d), &l, MARGIN as f64);
        // Each term is one subtraction and one product: 3u relative (rounded to 4u).
        assert_scalar(
            &format!("contrastive_loss_forward B={b}"),
            got,
            want,
            mean_bound(b, 4.0 * U32, want),
        );
    }
}

#[test]
fn contrastive_loss_backward_matches_cpu() {
    for (seed, &b) in BATCHES.iter().enumerate() {
        let mut r = rng(10 + seed as u64);
        let l = labels(&mut r, b);
        let d = distances(&mut r, &l);
        let dd = zeros(&[b]);
        let k = loss::contrastive_backward(
            gpu(),
            &upload(&d, &[b]),
            &upload_labels(&l),
            MARGIN,
            &scalar(DLOSS),
            &dd,
        )
        .unwrap();
        let got = run_and_read(&k, &dd);
        let want = cpu::contrastive_loss_backward(&to_f64(&d), &l, MARGIN as f64, DLOSS as f64);
        // dloss/B (5u), m − d (u), the product (u): 7u of the value, rounded up to 8u.
        let bound: Vec<f64> = want.iter().map(|w| 8.0 * U32 * w.abs() + 1e-30).collect();
        assert_within(
            &format!("contrastive_loss_backward B={b}"),
            &got,
            &to_f32(&want),
            &bound,
        );
    }
}

#[test]
fn contrastive_loss_backward_matches_finite_differences() {
    for (seed, &b) in FD_BATCHES.iter().enumerate() {
        let mut r = rng(100 + seed as u64);
        let l = labels(&mut r, b);
        let d = distances(&mut r, &l);
        let d64 = to_f64(&d);
        let (m, dl) = (MARGIN as f64, DLOSS as f64);
        let fd = finite_difference(
            |x| dl * cpu::contrastive_loss_forward(x, &l, m),
            &d64,
            FD_STEP,
        );
        assert_matches_fd(
            "cpu contrastive_loss_backward",
            &cpu::contrastive_loss_backward(&d64, &l, m, dl),
            &fd,
        );
        let dd = zeros(&[b]);
        let k = loss::contrastive_backward(
            gpu(),
            &upload(&d, &[b]),
            &upload_labels(&l),
            MARGIN,
            &scalar(DLOSS),
            &dd,
        )
        .unwrap();
        // Each entry is within 8u of its exact value (see _matches_cpu); 1e-5 of the largest
        // is ~100 ulps: far above that rounding, far below a wrong factor or sign.
        assert_gpu_matches_fd(
            &format!("contrastive_loss_backward B={b}"),
            &run_and_read(&k, &dd),
            &fd,
            1e-5,
        );
    }
}

#[test]
fn contrastive_loss_hand_computed() {
    // d = [0.5, 2.0], [Same, Different], m = 1: (0.5² + max(0, 1 − 2)²)/2 = 0.125.
    // d = [0.5, 0.25]: (0.25 + 0.75²)/2 = 0.40625; gradient (2·0.5/2, −2·0.75/2) = (0.5, −0.75).
    let l = [PairLabel::Same, PairLabel::Different];
    for (d, want) in [([0.5f32, 2.0], 0.125f32), ([0.5, 0.25], 0.40625)] {
        let out = zeros(&[1]);
        let k = loss::contrastive_forward(gpu(), &upload(&d, &[2]), &upload_labels(&l), 1.0, &out)
            .unwrap();
        // Every intermediate is a short dyadic fraction, exact in f32; only the division by
        // B = 2 may round (2.5 ULP allowed by WGSL).
        assert_close(
            "contrastive hand example",
            &[run_scalar(&k, &out)],
            &[want],
            0.0,
            DIV_ERR,
        );
    }
    let dd = zeros(&[2]);
    let k = loss::contrastive_backward(
        gpu(),
        &upload(&[0.5, 0.25], &[2]),
        &upload_labels(&l),
        1.0,
        &scalar(1.0),
        &dd,
    )
    .unwrap();
    assert_close(
        "contrastive hand gradient",
        &run_and_read(&k, &dd),
        &[0.5, -0.75],
        0.0,
        DIV_ERR,
    );
}

// ---------------------------------------------------------------- triplet

#[test]
fn triplet_loss_forward_matches_cpu() {
    for (seed, &b) in BATCHES.iter().enumerate() {
        let mut r = rng(20 + seed as u64);
        let (ap, an) = triplets(&mut r, b);
        let out = zeros(&[1]);
        let k = loss::triplet_forward(gpu(), &upload(&ap, &[b]), &upload(&an, &[b]), MARGIN, &out)
            .unwrap();
        let got = run_scalar(&k, &out);
        let want = cpu::triplet_loss_forward(&to_f64(&ap), &to_f64(&an), MARGIN as f64);
        // Each term is two roundings of values below 3.5 (d_ap − d_an, then + m), so at most
        // 8u absolute; inactive terms are exactly 0 on both sides (inputs keep 0.05 from the
        // kink). Hence γ_B·mean + 8u.
        assert_scalar(
            &format!("triplet_loss_forward B={b}"),
            got,
            want,
            mean_bound(b, 0.0, want) + 8.0 * U32,
        );
    }
}

#[test]
fn triplet_loss_backward_matches_cpu() {
    for (seed, &b) in BATCHES.iter().enumerate() {
        let mut r = rng(30 + seed as u64);
        let (ap, an) = triplets(&mut r, b);
        let (dd_ap, dd_an) = (zeros(&[b]), zeros(&[b]));
        let k = loss::triplet_backward(
            gpu(),
            &upload(&ap, &[b]),
            &upload(&an, &[b]),
            MARGIN,
            &scalar(DLOSS),
            &dd_ap,
            &dd_an,
        )
        .unwrap();
        gpu().run(&[&k]);
        let (want_ap, want_an) =
            cpu::triplet_loss_backward(&to_f64(&ap), &to_f64(&an), MARGIN as f64, DLOSS as f64);
        // ±dloss/B (2.5 ULP of division) where active, exactly 0 elsewhere: inputs keep
        // 0.05 from the kink, so f32 and f64 agree on which triplets are active.
        for (what, t, want) in [("dd_ap", &dd_ap, want_ap), ("dd_an", &dd_an, want_an)] {
            let bound: Vec<f64> = want.iter().map(|w| DIV_ERR * w.abs()).collect();
            assert_within(
                &format!("triplet_loss_backward {what} B={b}"),
                &gpu().read_f32(t).unwrap(),
                &to_f32(&want),
                &bound,
            );
        }
    }
}

#[test]
fn triplet_loss_backward_matches_finite_differences() {
    for (seed, &b) in FD_BATCHES.iter().enumerate() {
        let mut r = rng(200 + seed as u64);
        let (ap, an) = triplets(&mut r, b);
        let (ap64, an64) = (to_f64(&ap), to_f64(&an));
        let (m, dl) = (MARGIN as f64, DLOSS as f64);
        let fd_ap = finite_difference(
            |x| dl * cpu::triplet_loss_forward(x, &an64, m),
            &ap64,
            FD_STEP,
        );
        let fd_an = finite_difference(
            |x| dl * cpu::triplet_loss_forward(&ap64, x, m),
            &an64,
            FD_STEP,
        );
        let (cpu_ap, cpu_an) = cpu::triplet_loss_backward(&ap64, &an64, m, dl);
        assert_matches_fd("cpu triplet_loss_backward dd_ap", &cpu_ap, &fd_ap);
        assert_matches_fd("cpu triplet_loss_backward dd_an", &cpu_an, &fd_an);

        let (dd_ap, dd_an) = (zeros(&[b]), zeros(&[b]));
        let k = loss::triplet_backward(
            gpu(),
            &upload(&ap, &[b]),
            &upload(&an, &[b]),
            MARGIN,
            &scalar(DLOSS),
            &dd_ap,
            &dd_an,
        )
        .unwrap();
        gpu().run(&[&k]);
        // Entries are ±dloss/B within 2.5 ULP; 1e-5 of the largest is far above that.
        assert_gpu_matches_fd(
            &format!("triplet_loss_backward dd_ap B={b}"),
            &gpu().read_f32(&dd_ap).unwrap(),
            &fd_ap,
            1e-5,
        );
        assert_gpu_matches_fd(
            &format!("triplet_loss_backward dd_an B={b}"),
            &gpu().read_f32(&dd_an).unwrap(),
            &fd_an,
            1e-5,
        );
    }
}

#[test]
fn triplet_loss_hand_computed() {
    // m = 1. d_ap = [0.5, 2.0], d_an = [1, 1]: hinges [0.5, 2.0], mean 1.25.
    // d_ap = [0.5, 0.25], d_an = [1, 2]: hinges [0.5, max(0, −0.75) = 0], mean 0.25.
    for (ap, an, want) in [
        ([0.5f32, 2.0], [1.0f32, 1.0], 1.25f32),
        ([0.5, 0.25], [1.0, 2.0], 0.25),
    ] {
        let out = zeros(&[1]);
        let k = loss::triplet_forward(gpu(), &upload(&ap, &[2]), &upload(&an, &[2]), 1.0, &out)
            .unwrap();
        // Dyadic values, exact in f32 up to the division by B = 2 (2.5 ULP).
        assert_close(
            "triplet hand example",
            &[run_scalar(&k, &out)],
            &[want],
            0.0,
            DIV_ERR,
        );
    }
}

/// d_ap = [2, 0], d_an = [0.5, 1.5], m = 1. Hinge then mean: (max(0, 2.5) + max(0, −0.5))/2
/// = 1.25. Mean then hinge (the bug): max(0, 1 − 1 + 1) = 1. The gradients differ too: only
/// the first triplet is active, so dd_ap = [0.5, 0], not [0.5, 0.5].
#[test]
fn triplet_loss_is_hinge_then_mean() {
    let (ap, an) = (upload(&[2.0, 0.0], &[2]), upload(&[0.5, 1.5], &[2]));
    let out = zeros(&[1]);
    let k = loss::triplet_forward(gpu(), &ap, &an, 1.0, &out).unwrap();
    // Exact dyadic values; 2.5 ULP for the division. 1.0 (mean first) is far outside.
    assert_close(
        "triplet hinge-then-mean",
        &[run_scalar(&k, &out)],
        &[1.25],
        0.0,
        DIV_ERR,
    );
    let (dd_ap, dd_an) = (zeros(&[2]), zeros(&[2]));
    let k = loss::triplet_backward(gpu(), &ap, &an, 1.0, &scalar(1.0), &dd_ap, &dd_an).unwrap();
    gpu().run(&[&k]);
    assert_close(
        "triplet dd_ap",
        &gpu().read_f32(&dd_ap).unwrap(),
        &[0.5, 0.0],
        0.0,
        DIV_ERR,
    );
    assert_close(
        "triplet dd_an",
        &gpu().read_f32(&dd_an).unwrap(),
        &[-0.5, 0.0],
        0.0,
        DIV_ERR,
    );
}

/// With dyadic inputs every term and partial sum of a 100 000-sample batch is exact in f32,
/// so the only rounding left is the final division: a sample counted twice or skipped by the
/// strided reduction (1e-5 relative here) cannot hide under the bound, as it could under the
/// γ_B bound of the random-input tests.
#[test]
fn losses_count_every_sample_exactly_once() {
    let b = 100_003;
    let mut r = rng(7);
    let quarter = |r: &mut StdRng| r.random_range(0..9) as f32 * 0.25; // 0, 0.25, …, 2
    let l = labels(&mut r, b);
    let d: Vec<f32> = (0..b).map(|_| quarter(&mut r)).collect();
    let out = zeros(&[1]);
    let k =
        loss::contrastive_forward(gpu(), &upload(&d, &[b]), &upload_labels(&l), 2.0, &out).unwrap();
    let want = cpu::contrastive_loss_forward(&to_f64(&d), &l, 2.0);
    // Terms are multiples of 1/16 below 4; sums below 4·10⁵·16 < 2²⁴ units: all exact.
    assert_scalar(
        "contrastive exact",
        run_scalar(&k, &out),
        want,
        DIV_ERR * want,
    );

    let ap: Vec<f32> = (0..b).map(|_| quarter(&mut r)).collect();
    let an: Vec<f32> = (0..b).map(|_| quarter(&mut r)).collect();
    let k =
        loss::triplet_forward(gpu(), &upload(&ap, &[b]), &upload(&an, &[b]), 0.5, &out).unwrap();
    let want = cpu::triplet_loss_forward(&to_f64(&ap), &to_f64(&an), 0.5);
    // Terms are multiples of 1/4 up to 2.5; sums below 2.5·10⁵·4 < 2²⁴ units: all exact.
    assert_scalar("triplet exact", run_scalar(&k, &out), want, DIV_ERR * want);
}

// ---------------------------------------------------------------- binary cross-entropy

/// Logits in [−6, 6]: both signs, saturated and not.
fn logits(r: &mut StdRng, n: usize) -> Vec<f32> {
    uniform(r, n, -6.0, 6.0)
}

#[test]
fn bce_with_logits_forward_matches_cpu() {
    for (seed, &b) in BATCHES.iter().enumerate() {
        let mut r = rng(40 + seed as u64);
        let l = labels(&mut r, b);
        let z = logits(&mut r, b);
        let out = zeros(&[1]);
        let k = loss::bce_with_logits_forward(gpu(), &upload(&z, &[b]), &upload_labels(&l), &out)
            .unwrap();
        let got = run_scalar(&k, &out);
        let want = cpu::bce_with_logits_forward(&to_f64(&z), &l);
        // max(z, 0) − z·y is exact (y ∈ {0, 1}); log(1 + exp(−|z|)) ≤ ln 2 carries exp's
        // (3 + 2·6) ULP and log's 2⁻²¹ absolute error plus a few roundings: ≤ 2⁻²¹ + 40u
        // per term, in absolute terms, so on the mean too.
        let bound = mean_bound(b, 0.0, want) + 2f64.powi(-21) + 40.0 * U32;
        assert_scalar(&format!("bce_with_logits_forward B={b}"), got, want, bound);
    }
}

#[test]
fn bce_with_logits_backward_matches_cpu() {
    for (seed, &b) in BATCHES.iter().enumerate() {
        let mut r = rng(50 + seed as u64);
        let l = labels(&mut r, b);
        let z = logits(&mut r, b);
        let dz = zeros(&[b]);
        let k = loss::bce_with_logits_backward(
            gpu(),
            &upload(&z, &[b]),
            &upload_labels(&l),
            &scalar(DLOSS),
            &dz,
        )
        .unwrap();
        let got = run_and_read(&k, &dz);
        let want = cpu::bce_with_logits_backward(&to_f64(&z), &l, DLOSS as f64);
        // σ without cancellation: exp (3 + 2|z|) ULP = (6 + 4|z|)u, 1 + e and the product u
        // each, two divisions 5u each: (18 + 4|z|)u relative, rounded up to (20 + 4|z|)u.
        let bound: Vec<f64> = want
            .iter()
            .zip(&z)
            .map(|(w, &z)| (20.0 + 4.0 * z.abs() as f64) * U32 * w.abs() + 1e-30)
            .collect();
        assert_within(
            &format!("bce_with_logits_backward B={b}"),
            &got,
            &to_f32(&want),
            &bound,
        );
    }
}

#[test]
fn bce_with_logits_backward_matches_finite_differences() {
    for (seed, &b) in FD_BATCHES.iter().enumerate() {
        let mut r = rng(300 + seed as u64);
        let l = labels(&mut r, b);
        let z = logits(&mut r, b);
        let z64 = to_f64(&z);
        let dl = DLOSS as f64;
        let fd = finite_difference(|x| dl * cpu::bce_with_logits_forward(x, &l), &z64, FD_STEP);
        assert_matches_fd(
            "cpu bce_with_logits_backward",
            &cpu::bce_with_logits_backward(&z64, &l, dl),
            &fd,
        );
        let dz = zeros(&[b]);
        let k = loss::bce_with_logits_backward(
            gpu(),
            &upload(&z, &[b]),
            &upload_labels(&l),
            &scalar(DLOSS),
            &dz,
        )
        .unwrap();
        // Entries are within (20 + 4·6)u ≈ 3e-6 of their value (see _matches_cpu), so within
        // 1e-5 of the largest: far below a wrong sign or a missing σ.
        assert_gpu_matches_fd(
            &format!("bce_with_logits_backward B={b}"),
            &run_and_read(&k, &dz),
            &fd,
            1e-5,
        );
    }
}

/// z = [0, 2] with [Same, Different]: (ln 2 + 2 + ln(1 + e⁻²))/2. And logits of ±100 on the
/// wrong side, where the naive log(1 + exp(100)) overflows: each term is 100, the gradient
/// ±dloss/B·1.
#[test]
fn bce_with_logits_hand_computed() {
    let l = [PairLabel::Same, PairLabel::Different];
    let want = (2f64.ln() + 2.0 + (-2f64).exp().ln_1p()) / 2.0; // 1.4100375958…
    let out = zeros(&[1]);
    let k =
        loss::bce_with_logits_forward(gpu(), &upload(&[0.0, 2.0], &[2]), &upload_labels(&l), &out)
            .unwrap();
    // Terms ≤ 2.2 with exp/log errors ≤ 2⁻²¹ + 40u absolute (see _matches_cpu).
    assert_scalar(
        "bce hand example",
        run_scalar(&k, &out),
        want,
        2f64.powi(-21) + 40.0 * U32,
    );

    let z = upload(&[-100.0, 100.0], &[2]);
    let k = loss::bce_with_logits_forward(gpu(), &z, &upload_labels(&l), &out).unwrap();
    // exp(−100) underflows to 0 in f32, leaving exact 100s; division 2.5 ULP.
    assert_close(
        "bce large logits",
        &[run_scalar(&k, &out)],
        &[100.0],
        0.0,
        DIV_ERR,
    );
    let dz = zeros(&[2]);
    let k =
        loss::bce_with_logits_backward(gpu(), &z, &upload_labels(&l), &scalar(1.0), &dz).unwrap();
    // σ(100) rounds to 1 in f32: exactly ∓1/2 up to the division.
    assert_close(
        "bce large-logit gradient",
        &run_and_read(&k, &dz),
        &[-0.5, 0.5],
        0.0,
        DIV_ERR,
    );
}

// ---------------------------------------------------------------- bad input

#[test]
fn contrastive_loss_forward_rejects_mismatched_shapes() {
    let d = zeros(&[4]);
    let short = PairLabel::upload(gpu(), &[PairLabel::Same; 3]).unwrap();
    let err = loss::contrastive_forward(gpu(), &d, &short, 1.0, &zeros(&[1])).unwrap_err();
    assert!(
        err.to_string()
            .contains("labels must be a U32 tensor of shape [4], got U32 of shape [3]"),
        "{err}"
    );
    // f32 labels (a bare 0.0/1.0 buffer) are refused too.
    let err = loss::bce_with_logits_forward(gpu(), &d, &zeros(&[4]), &zeros(&[1])).unwrap_err();
    assert!(
        err.to_string().contains("labels must be a U32 tensor"),
        "{err}"
    );
}

#[test]
fn pair_label_codes_round_trip() {
    for l in [PairLabel::Same, PairLabel::Different] {
        assert_eq!(PairLabel::from_code(l.code()), Some(l));
    }
    assert_ne!(PairLabel::Same.code(), PairLabel::Different.code());
    assert_eq!(PairLabel::from_code(7), None);
    let t = PairLabel::upload(gpu(), &[PairLabel::Different, PairLabel::Same]).unwrap();
    assert_eq!(
        gpu().read_u32(&t).unwrap(),
        vec![PairLabel::Different.code(), PairLabel::Same.code()]
    );
}

// ---- contrastive loss fused with the Euclidean distance ----

/// (B, D): one pair, odd sizes, the reference batch (128 pairs of 128-d embeddings), pairs
/// across several strides of the one-workgroup forward, the largest B·D the fused kernel takes.
const FUSED_SHAPES: &[(usize, usize)] = &[
    (1, 1),
    (5, 3),
    (128, 128),
    (257, 7),
    (1000, 64),
    (8192, 128),
];

/// Embeddings whose pair distances spread over both sides of the margin.
fn embeddings(r: &mut StdRng, rows: usize, dim: usize) -> (Vec<f32>, Vec<f32>) {
    let spread = 1.2 / (dim as f32).sqrt();
    let a = uniform(r, rows * dim, -spread, spread);
    let b = uniform(r, rows * dim, -spread, spread);
    (a, b)
}

/// The distances the fused kernels take.
const FUSED_KINDS: [Distance; 2] = [Distance::Euclidean, Distance::Cosine];

/// Runs the fused pair of kernels; returns (d, loss, da, db).
fn fused_on_gpu(
    kind: Distance,
    a: &[f32],
    b: &[f32],
    l: &[PairLabel],
    dim: usize,
    dloss: f32,
) -> (Vec<f32>, f32, Vec<f32>, Vec<f32>) {
    let rows = l.len();
    let (ta, tb, labels) = (
        upload(a, &[rows, dim]),
        upload(b, &[rows, dim]),
        upload_labels(l),
    );
    let (d, out, da, db) = (
        zeros(&[rows]),
        zeros(&[1]),
        zeros(&[rows, dim]),
        zeros(&[rows, dim]),
    );
    let fwd =
        loss::contrastive_fused_forward(gpu(), kind, &ta, &tb, &labels, MARGIN, &d, &out).unwrap();
    let bwd = loss::contrastive_fused_backward(
        gpu(),
        kind,
        &ta,
        &tb,
        &labels,
        MARGIN,
        &d,
        &scalar(dloss),
        &da,
        &db,
    )
    .unwrap();
    gpu().run(&[&fwd, &bwd]);
    let read = |t: &Tensor| gpu().read_f32(t).unwrap();
    (read(&d), read(&out)[0], read(&da), read(&db))
}

/// The separate kernels the fused ones replace: the distance's forward, contrastive_loss_forward,
/// contrastive_loss_backward, the distance's backward.
fn separate_on_gpu(
    kind: Distance,
    a: &[f32],
    b: &[f32],
    l: &[PairLabel],
    dim: usize,
    dloss: f32,
) -> (Vec<f32>, f32, Vec<f32>, Vec<f32>) {
    use siamese_gpu::ops::distance;
    let rows = l.len();
    let (ta, tb, labels) = (
        upload(a, &[rows, dim]),
        upload(b, &[rows, dim]),
        upload_labels(l),
    );
    let (d, out, dd) = (zeros(&[rows]), zeros(&[1]), zeros(&[rows]));
    let (da, db) = (zeros(&[rows, dim]), zeros(&[rows, dim]));
    let kernels = [
        distance::forward(gpu(), kind, &ta, &tb, &d).unwrap(),
        loss::contrastive_forward(gpu(), &d, &labels, MARGIN, &out).unwrap(),
        loss::contrastive_backward(gpu(), &d, &labels, MARGIN, &scalar(dloss), &dd).unwrap(),
        distance::backward(gpu(), kind, &ta, &tb, &d, &dd, &da, &db).unwrap(),
    ];
    gpu().run(&kernels.iter().collect::<Vec<_>>());
    let read = |t: &Tensor| gpu().read_f32(t).unwrap();
    (read(&d), read(&out)[0], read(&da), read(&db))
}

/// The fused kernels do the separate kernels' arithmetic in their order. On lavapipe d and
/// the gradients agree to the last bit and the loss within 1 ulp (the compiler contracts d²
/// into the running sum in one module and not in the other). Allowed: 2 ulps (4u relative)
/// per value, for any such contraction; a wrong term, sign or 1/B is far outside.
#[test]
fn contrastive_fused_matches_the_separate_kernels() {
    for kind in FUSED_KINDS {
        for (seed, &(rows, dim)) in FUSED_SHAPES.iter().enumerate() {
            let mut r = rng(5000 + seed as u64);
            let l = labels(&mut r, rows);
            let (a, b) = embeddings(&mut r, rows, dim);
            let fused = fused_on_gpu(kind, &a, &b, &l, dim, DLOSS);
            let separate = separate_on_gpu(kind, &a, &b, &l, dim, DLOSS);
            let what = |x: &str| format!("contrastive {kind:?} {x} B={rows} D={dim}");
            let ulps =
                |v: &[f32]| -> Vec<f64> { v.iter().map(|x| 4.0 * U32 * x.abs() as f64).collect() };
            assert_within(&what("d"), &fused.0, &separate.0, &ulps(&separate.0));
            assert_within(
                &what("loss"),
                &[fused.1],
                &[separate.1],
                &ulps(&[separate.1]),
            );
            assert_within(&what("da"), &fused.2, &separate.2, &ulps(&separate.2));
            assert_within(&what("db"), &fused.3, &separate.3, &ulps(&separate.3));
        }
    }
}

/// The bound on a fused distance against the f64 reference. Euclidean: a D-term f32 sum,
/// then a sqrt (WGSL: its inverse-sqrt accuracy, ≤ 4 ulps here), so ≤ (γ_(D+1) + 8u)·d.
/// Cosine: 1 − ⟨a,b⟩/(‖a‖‖b‖), whose quotient errs by γ_(D+1) of Σ|a_k b_k|/(‖a‖‖b‖) ≤ 1
/// (Cauchy–Schwarz) plus the two square roots and the division, ≤ 16u: absolute, not
/// relative to d (which may be near 0).
fn distance_bound(kind: Distance, dim: usize, d: f64) -> f64 {
    match kind {
        Distance::Cosine => gamma(dim + 1) + 16.0 * U32,
        _ => (gamma(dim + 1) + 8.0 * U32) * d,
    }
}

/// Against the f64 composition of the CPU references: the distance within
/// [`distance_bound`]; the loss and gradients inherit it through terms of size ≤ 2·d²: 1e-5
/// of the largest value (≥ 80 ulps) covers the sum over B and the division; a wrong sign,
/// factor or missing pair is ≫ that.
#[test]
fn contrastive_fused_matches_cpu() {
    for kind in FUSED_KINDS {
        for (seed, &(rows, dim)) in FUSED_SHAPES.iter().enumerate() {
            let mut r = rng(6000 + seed as u64);
            let l = labels(&mut r, rows);
            let (a, b) = embeddings(&mut r, rows, dim);
            let (d, got_loss, da, db) = fused_on_gpu(kind, &a, &b, &l, dim, DLOSS);
            let (a64, b64) = (to_f64(&a), to_f64(&b));
            let (want_d, want_loss) =
                cpu::contrastive_fused_forward(kind, &a64, &b64, &l, dim, MARGIN as f64);
            let (want_da, want_db) = cpu::contrastive_fused_backward(
                kind,
                &a64,
                &b64,
                &want_d,
                &l,
                dim,
                MARGIN as f64,
                DLOSS as f64,
            );
            let what = |x: &str| format!("contrastive {kind:?} {x} B={rows} D={dim}");
            let d_bound: Vec<f64> = want_d
                .iter()
                .map(|&x| distance_bound(kind, dim, x))
                .collect();
            assert_within(&what("d vs cpu"), &d, &to_f32(&want_d), &d_bound);
            assert_scalar(
                &what("loss vs cpu"),
                got_loss,
                want_loss,
                1e-5 * want_loss.abs(),
            );
            let largest = want_da.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for (x, got, want) in [("da", &da, &want_da), ("db", &db, &want_db)] {
                assert_close(&what(x), got, &to_f32(want), 1e-5 * largest, 0.0);
            }
        }
    }
}

/// The fused pair's gradient is the derivative of its loss: the f64 composition against
/// central differences over every embedding element, and the GPU against the same.
#[test]
fn contrastive_fused_backward_matches_finite_differences() {
    for kind in FUSED_KINDS {
        for (seed, rows) in [1usize, 4, 9].into_iter().enumerate() {
            let dim = 3;
            let mut r = rng(7000 + seed as u64);
            let l = labels(&mut r, rows);
            let (a, b) = embeddings(&mut r, rows, dim);
            let both = to_f64(&[a.clone(), b.clone()].concat());
            let n = rows * dim;
            let f = |x: &[f64]| {
                cpu::contrastive_fused_forward(kind, &x[..n], &x[n..], &l, dim, MARGIN as f64).1
            };
            let fd = finite_difference(f, &both, FD_STEP);
            let (d, _) = cpu::contrastive_fused_forward(kind, &both[..n], &both[n..], &l, dim, 1.0);
            let (da, db) = cpu::contrastive_fused_backward(
                kind,
                &both[..n],
                &both[n..],
                &d,
                &l,
                dim,
                1.0,
                1.0,
            );
            let analytic = [da, db].concat();
            assert_matches_fd(
                &format!("cpu fused contrastive {kind:?} B={rows}"),
                &analytic,
                &fd,
            );
            let (_, _, gda, gdb) = fused_on_gpu(kind, &a, &b, &l, dim, 1.0);
            assert_gpu_matches_fd(
                &format!("gpu fused contrastive {kind:?} B={rows}"),
                &[gda, gdb].concat(),
                &fd,
                1e-4,
            );
        }
    }
}

#[test]
fn contrastive_fused_refuses_what_it_does_not_take() {
    let l = upload_labels(&[PairLabel::Same; 4]);
    let (d, out) = (zeros(&[4]), zeros(&[1]));
    let err = loss::contrastive_fused_forward(
        gpu(),
        Distance::L1,
        &zeros(&[4, 3]),
        &zeros(&[4, 3]),
        &l,
        MARGIN,
        &d,
        &out,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("Euclidean or cosine distance, not L1"),
        "{err}"
    );
    let err = loss::contrastive_fused_forward(
        gpu(),
        Distance::Euclidean,
        &zeros(&[4, 3]),
        &zeros(&[4, 2]),
        &l,
        MARGIN,
        &d,
        &out,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("b must be a F32 tensor of shape [4, 3]"),
        "{err}"
    );
    let rows = loss::FUSED_MAX_ELEMENTS / 128 + 1;
    let big = zeros(&[rows, 128]);
    let err = loss::contrastive_fused_forward(
        gpu(),
        Distance::Cosine,
        &big,
        &big,
        &upload_labels(&vec![PairLabel::Same; rows]),
        MARGIN,
        &zeros(&[rows]),
        &out,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("separate distance and loss kernels"),
        "{err}"
    );
}

/// Anchors, positives, negatives `[B, D]`: distances around 1, except that every other
/// negative sits far from its anchor — 3.6 away (Euclidean), or opposite it (cosine distance
/// 2) — past the hinge for most triplets (its gradient is 0).
fn triplet_embeddings(kind: Distance, r: &mut StdRng, rows: usize, dim: usize) -> Vec<Vec<f32>> {
    let spread = 1.2 / (dim as f32).sqrt();
    let mut e: Vec<Vec<f32>> = (0..3)
        .map(|_| uniform(r, rows * dim, -spread, spread))
        .collect();
    let (anchors, rest) = e.split_at_mut(1);
    for (i, (neg, anchor)) in rest[1]
        .chunks_mut(dim)
        .zip(anchors[0].chunks(dim))
        .enumerate()
    {
        if i % 2 == 0 {
            for (x, a) in neg.iter_mut().zip(anchor) {
                *x = match kind {
                    Distance::Cosine => -a,
                    _ => a + 3.0 * spread,
                };
            }
        }
    }
    e
}

/// Runs the fused triplet kernels; returns (d_ap, d_an, loss, [da, dp, dn]).
fn fused_triplet_on_gpu(
    kind: Distance,
    e: [&[f32]; 3],
    rows: usize,
    dim: usize,
    dloss: f32,
) -> (Vec<f32>, Vec<f32>, f32, [Vec<f32>; 3]) {
    let t = e.map(|v| upload(v, &[rows, dim]));
    let (d_ap, d_an, out) = (zeros(&[rows]), zeros(&[rows]), zeros(&[1]));
    let g = [0; 3].map(|_| zeros(&[rows, dim]));
    let fwd =
        loss::triplet_fused_forward(gpu(), kind, &t[0], &t[1], &t[2], MARGIN, &d_ap, &d_an, &out)
            .unwrap();
    let bwd = loss::triplet_fused_backward(
        gpu(),
        kind,
        &t[0],
        &t[1],
        &t[2],
        MARGIN,
        &d_ap,
        &d_an,
        &scalar(dloss),
        [&g[0], &g[1], &g[2]],
    )
    .unwrap();
    gpu().run(&[&fwd, &bwd]);
    let read = |t: &Tensor| gpu().read_f32(t).unwrap();
    (read(&d_ap), read(&d_an), read(&out)[0], g.map(|x| read(&x)))
}

/// The separate kernels: two distance forwards, triplet_loss_forward, triplet_loss_backward,
/// two distance backwards, and the anchor's sum (accumulate_grad), as the tape ran them.
fn separate_triplet_on_gpu(
    kind: Distance,
    e: [&[f32]; 3],
    rows: usize,
    dim: usize,
    dloss: f32,
) -> (Vec<f32>, Vec<f32>, f32, [Vec<f32>; 3]) {
    use siamese_gpu::ops::activation;
    use siamese_gpu::ops::distance;
    let t = e.map(|v| upload(v, &[rows, dim]));
    let (d_ap, d_an, out) = (zeros(&[rows]), zeros(&[rows]), zeros(&[1]));
    let (dd_ap, dd_an) = (zeros(&[rows]), zeros(&[rows]));
    let g = [0; 4].map(|_| zeros(&[rows, dim]));
    let kernels = [
        distance::forward(gpu(), kind, &t[0], &t[1], &d_ap).unwrap(),
        distance::forward(gpu(), kind, &t[0], &t[2], &d_an).unwrap(),
        loss::triplet_forward(gpu(), &d_ap, &d_an, MARGIN, &out).unwrap(),
        loss::triplet_backward(gpu(), &d_ap, &d_an, MARGIN, &scalar(dloss), &dd_ap, &dd_an)
            .unwrap(),
        distance::backward(gpu(), kind, &t[0], &t[1], &d_ap, &dd_ap, &g[0], &g[1]).unwrap(),
        distance::backward(gpu(), kind, &t[0], &t[2], &d_an, &dd_an, &g[3], &g[2]).unwrap(),
        activation::accumulate_grad(gpu(), &g[3], &g[0]).unwrap(),
    ];
    gpu().run(&kernels.iter().collect::<Vec<_>>());
    let read = |t: &Tensor| gpu().read_f32(t).unwrap();
    let [ga, gp, gn, _] = g;
    (
        read(&d_ap),
        read(&d_an),
        read(&out)[0],
        [read(&ga), read(&gp), read(&gn)],
    )
}

/// As for the contrastive pair: the separate kernels' arithmetic, within 2 ulps per value.
#[test]
fn triplet_fused_matches_the_separate_kernels() {
    for kind in FUSED_KINDS {
        for (seed, &(rows, dim)) in FUSED_SHAPES.iter().enumerate() {
            let mut r = rng(8000 + seed as u64);
            let e = triplet_embeddings(kind, &mut r, rows, dim);
            let e = [&e[0][..], &e[1][..], &e[2][..]];
            let fused = fused_triplet_on_gpu(kind, e, rows, dim, DLOSS);
            let separate = separate_triplet_on_gpu(kind, e, rows, dim, DLOSS);
            let what = |x: &str| format!("triplet {kind:?} {x} B={rows} D={dim}");
            let ulps =
                |v: &[f32]| -> Vec<f64> { v.iter().map(|x| 4.0 * U32 * x.abs() as f64).collect() };
            assert_within(&what("d_ap"), &fused.0, &separate.0, &ulps(&separate.0));
            assert_within(&what("d_an"), &fused.1, &separate.1, &ulps(&separate.1));
            assert_within(
                &what("loss"),
                &[fused.2],
                &[separate.2],
                &ulps(&[separate.2]),
            );
            for (k, name) in ["da", "dp", "dn"].iter().enumerate() {
                assert_within(
                    &what(name),
                    &fused.3[k],
                    &separate.3[k],
                    &ulps(&separate.3[k]),
                );
            }
            assert!(
                rows < 128
                    || separate.3[2].iter().any(|&v| v != 0.0) && separate.3[2].contains(&0.0),
                "{}: the batch must hold triplets on both sides of the hinge",
                what("dn")
            );
        }
    }
}

/// Against the f64 CPU composition (bounds as for the contrastive pair) and, on small
/// batches, against central differences of it.
#[test]
fn triplet_fused_matches_cpu_and_finite_differences() {
    for kind in FUSED_KINDS {
        triplet_fused_against_cpu(kind);
    }
}

fn triplet_fused_against_cpu(kind: Distance) {
    for (seed, &(rows, dim)) in FUSED_SHAPES.iter().enumerate() {
        let mut r = rng(9000 + seed as u64);
        let e = triplet_embeddings(kind, &mut r, rows, dim);
        let (d_ap, d_an, got_loss, g) =
            fused_triplet_on_gpu(kind, [&e[0], &e[1], &e[2]], rows, dim, DLOSS);
        let e64: Vec<Vec<f64>> = e.iter().map(|v| to_f64(v)).collect();
        let (w_ap, w_an, w_loss) =
            cpu::triplet_fused_forward(kind, &e64[0], &e64[1], &e64[2], dim, MARGIN as f64);
        let want = cpu::triplet_fused_backward(
            kind,
            &e64[0],
            &e64[1],
            &e64[2],
            &w_ap,
            &w_an,
            dim,
            MARGIN as f64,
            DLOSS as f64,
        );
        let what = |x: &str| format!("triplet {kind:?} {x} vs cpu B={rows} D={dim}");
        for (x, got, w) in [("d_ap", &d_ap, &w_ap), ("d_an", &d_an, &w_an)] {
            let bound: Vec<f64> = w.iter().map(|&v| distance_bound(kind, dim, v)).collect();
            assert_within(&what(x), got, &to_f32(w), &bound);
        }
        assert_scalar(
            &what("loss"),
            got_loss,
            w_loss,
            1e-5 * w_loss.abs().max(1e-3),
        );
        // The anchor's gradient is a difference of the other two, cancelling: bound all three by
        // the largest of any.
        let largest = [&want.0, &want.1, &want.2]
            .iter()
            .flat_map(|v| v.iter())
            .fold(0.0f64, |m, v| m.max(v.abs()))
            .max(1e-30);
        for (x, got, w) in [
            ("da", &g[0], &want.0),
            ("dp", &g[1], &want.1),
            ("dn", &g[2], &want.2),
        ] {
            assert_close(&what(x), got, &to_f32(w), 1e-5 * largest, 0.0);
        }
    }
    // Finite differences: 3-d embeddings, triplets kept 0.05 off the hinge.
    for (seed, rows) in [1usize, 4, 9].into_iter().enumerate() {
        let dim = 3;
        let mut r = rng(9500 + seed as u64);
        let all = loop {
            let v = uniform(&mut r, 3 * rows * dim, -1.0, 1.0);
            let v64 = to_f64(&v);
            let n = rows * dim;
            let (ap, an, _) = cpu::triplet_fused_forward(
                kind,
                &v64[..n],
                &v64[n..2 * n],
                &v64[2 * n..],
                dim,
                1.0,
            );
            if ap.iter().zip(&an).all(|(p, q)| (p - q + 1.0).abs() >= 0.05) {
                break v;
            }
        };
        let n = rows * dim;
        let x = to_f64(&all);
        let f = |x: &[f64]| {
            cpu::triplet_fused_forward(kind, &x[..n], &x[n..2 * n], &x[2 * n..], dim, 1.0).2
        };
        let fd = finite_difference(f, &x, FD_STEP);
        let (ap, an, _) =
            cpu::triplet_fused_forward(kind, &x[..n], &x[n..2 * n], &x[2 * n..], dim, 1.0);
        let (da, dp, dn) = cpu::triplet_fused_backward(
            kind,
            &x[..n],
            &x[n..2 * n],
            &x[2 * n..],
            &ap,
            &an,
            dim,
            1.0,
            1.0,
        );
        assert_matches_fd(
            &format!("cpu fused triplet {kind:?} B={rows}"),
            &[da, dp, dn].concat(),
            &fd,
        );
        let (_, _, _, g) = fused_triplet_on_gpu(
            kind,
            [&all[..n], &all[n..2 * n], &all[2 * n..]],
            rows,
            dim,
            1.0,
        );
        assert_gpu_matches_fd(
            &format!("gpu fused triplet {kind:?} B={rows}"),
            &g.concat(),
            &fd,
            1e-4,
        );
    }
}
