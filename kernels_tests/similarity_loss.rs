//! The losses on cosine similarities (`shaders/similarity_loss.wgsl`) against
//! `cpu::similarity_loss`, the reference's gradients against f64 finite differences, and
//! ArcFace and ProxyAnchor against their formulas written out by hand.
//!
//! Entry points, through their launchers: `rows_match_cpu` checks the first passes
//! (`margin_softmax_rows`, `proxy_anchor_rows`, `supcon_rows`, `ntxent_rows`,
//! `multi_similarity_rows`), `forward_matches_cpu` adds `similarity_reduce`, and
//! `backward_matches_cpu` checks `margin_softmax_backward`, `proxy_anchor_backward`,
//! `supcon_backward`, `ntxent_backward` and `multi_similarity_backward`; the cross-batch
//! memory's windows go through the same entries in `memory_windows_match_cpu`, and
//! `memory_enqueue_fills_the_ring` checks `memory_enqueue`.
//!
//! Tolerances. The GPU and the reference read the same f32 `s = 1 − dm` and make the same
//! comparisons, so counts (d0, d1) and every selection (sub-center, mined pair, counted
//! anchor) agree exactly. Values differ by the order of the sums (64 strided partial sums
//! and a tree against index order: 2·γ_R relative to the sum of |terms|) and by `exp` and
//! `log`, which WGSL does not round correctly: Vulkan allows exp 3 + 2|x| ULP and log 3 ULP
//! (or 2⁻²¹ absolute near 1). After the shift by the maximum an exponent is at most 2·s = 128
//! in magnitude: ≤ 259 ULP ≈ 1.6e-5 relative on that term, and the terms that large are
//! e^{−128}-small. So 5e-5 relative (plus 1e-5 of the row's magnitude absolute) bounds values
//! of order 1–100 with room, and gradients (a probability difference times s or α) likewise.

use crate::common::*;
use rand::RngExt;
use rand::rngs::StdRng;
use siamese_gpu::Tensor;
use siamese_gpu::cpu::similarity_loss::{self as cpu, ROW, STATS, Similarities, Window};
use siamese_gpu::ops::similarity_loss::{self as ops, Similarities as GpuSimilarities};
use siamese_gpu::vocab::{MarginKind, SimilarityLoss};

/// pytorch-metric-learning's defaults (ArcFace's 28.6° as 0.5 rad), and one more sub-center.
fn losses() -> Vec<SimilarityLoss> {
    use SimilarityLoss::*;
    vec![
        MarginSoftmax {
            margin: MarginKind::Angular(0.5),
            scale: 64.0,
            sub_centers: 1,
        },
        MarginSoftmax {
            margin: MarginKind::Angular(0.5),
            scale: 64.0,
            sub_centers: 3,
        },
        MarginSoftmax {
            margin: MarginKind::Cosine(0.35),
            scale: 64.0,
            sub_centers: 1,
        },
        ProxyAnchor {
            alpha: 32.0,
            margin: 0.1,
        },
        SupCon { temperature: 0.1 },
        NtXent { temperature: 0.07 },
        MultiSimilarity {
            alpha: 2.0,
            beta: 50.0,
            base: 0.5,
            epsilon: 0.1,
        },
    ]
}

/// Milder hyper-parameters for the finite differences: at s = 64 the third derivative of
/// the loss is ~s³, and the central difference's O(h²·f''') error would exceed the
/// tolerance. The formulas are the same; `forward_matches_cpu` covers the defaults.
fn mild(loss: SimilarityLoss) -> SimilarityLoss {
    use SimilarityLoss::*;
    match loss {
        MarginSoftmax {
            margin,
            sub_centers,
            ..
        } => MarginSoftmax {
            margin,
            scale: 4.0,
            sub_centers,
        },
        ProxyAnchor { margin, .. } => ProxyAnchor { alpha: 4.0, margin },
        SupCon { .. } => SupCon { temperature: 0.5 },
        NtXent { .. } => NtXent { temperature: 0.5 },
        MultiSimilarity { base, epsilon, .. } => MultiSimilarity {
            alpha: 2.0,
            beta: 5.0,
            base,
            epsilon,
        },
    }
}

/// A problem: `dm [n, r]` in [0, 2) (cosine distances of any two vectors), row labels and,
/// for the losses over the batch, the batch as its own reference (self columns).
struct Problem {
    dm: Vec<f32>,
    n: usize,
    r: usize,
    labels: Vec<u32>,
    ref_labels: Vec<u32>,
    window: Window,
}

impl Problem {
    /// `n` rows; class heads over `classes` classes, the batch losses over `n` columns with
    /// `classes` classes drawn at random (some anchors without a positive).
    fn new(r: &mut StdRng, loss: SimilarityLoss, n: usize, classes: usize) -> Problem {
        let labels: Vec<u32> = (0..n).map(|_| r.random_range(0..classes as u32)).collect();
        let (cols, ref_labels, window) = if loss.learns_classes() {
            let cols = classes * loss.columns_per_class();
            (cols, Vec::new(), Window::all(cols))
        } else {
            (n, labels.clone(), Window::batch(n))
        };
        Problem {
            dm: uniform(r, n * cols, 0.0, 2.0),
            n,
            r: cols,
            labels,
            ref_labels,
            window,
        }
    }

    fn cpu<'a, T>(&'a self, dm: &'a [T]) -> Similarities<'a, T> {
        Similarities {
            dm,
            n: self.n,
            r: self.r,
            labels: &self.labels,
            ref_labels: &self.ref_labels,
            window: self.window,
        }
    }
}

/// The GPU tensors of a problem.
struct Uploaded {
    dm: Tensor,
    labels: Tensor,
    columns: Option<(Tensor, Tensor)>,
}

impl Uploaded {
    fn new(p: &Problem) -> Uploaded {
        Uploaded {
            dm: upload(&p.dm, &[p.n, p.r]),
            labels: gpu().upload_u32(&p.labels, &[p.n]).unwrap(),
            columns: (!p.ref_labels.is_empty()).then(|| {
                (
                    gpu().upload_u32(&p.ref_labels, &[p.r]).unwrap(),
                    gpu().upload_u32(&p.window.words(), &[4]).unwrap(),
                )
            }),
        }
    }

    fn m(&self) -> GpuSimilarities<'_> {
        GpuSimilarities {
            dm: &self.dm,
            labels: &self.labels,
            columns: self.columns.as_ref().map(|(l, w)| (l, w)),
        }
    }
}

/// (rows, classes): one row, sizes around the 64-wide row workgroup and the 256-wide
/// reduction, a P×K-sized batch of 128, and a head of 300 classes.
const CASES: &[(usize, usize)] = &[
    (2, 2),
    (5, 3),
    (12, 3),
    (63, 10),
    (65, 40),
    (128, 10),
    (300, 7),
    (40, 300),
];

const RTOL: f64 = 5e-5;

/// |got − want| ≤ RTOL·(|want| + 0.2·max|want|): see the module header.
fn assert_near(what: &str, got: &[f32], want: &[f32]) {
    let scale = want.iter().fold(0.0f64, |m, &w| m.max((w as f64).abs()));
    let bound: Vec<f64> = want
        .iter()
        .map(|&w| RTOL * ((w as f64).abs() + 0.2 * scale) + 1e-30)
        .collect();
    assert_within(what, got, want, &bound);
}

#[test]
fn rows_match_cpu() {
    for (seed, &(n, classes)) in CASES.iter().enumerate() {
        for loss in losses() {
            let mut r = rng(seed as u64);
            let p = Problem::new(&mut r, loss, n, classes);
            let u = Uploaded::new(&p);
            let count = loss.partial_rows(p.n, p.r);
            let out = zeros(&[count, ROW]);
            let k = ops::rows(gpu(), loss, &u.m(), &out).unwrap();
            let got = run_and_read(&k, &out);
            let want = cpu::rows(loss, &p.cpu(&p.dm));
            let what = format!("{loss:?} rows N={n} classes={classes}");
            for row in 0..count {
                for c in [1, 3] {
                    assert_eq!(
                        got[row * ROW + c],
                        want[row * ROW + c],
                        "{what}: row {row}, count column {c}"
                    );
                }
            }
            assert_near(&what, &got, &want);
        }
    }
}

#[test]
fn forward_matches_cpu() {
    for (seed, &(n, classes)) in CASES.iter().enumerate() {
        for loss in losses() {
            let mut r = rng(100 + seed as u64);
            let p = Problem::new(&mut r, loss, n, classes);
            let u = Uploaded::new(&p);
            let rows = zeros(&[loss.partial_rows(p.n, p.r), ROW]);
            let (out, stats) = (zeros(&[1]), zeros(&[STATS]));
            let k = ops::forward(gpu(), loss, &u.m(), &rows, &out, &stats).unwrap();
            let got = run_and_read(&k, &out)[0];
            let got_stats = gpu().read_f32(&stats).unwrap();
            let (want, want_stats) = cpu::forward(loss, &p.cpu(&p.dm));
            let what = format!("{loss:?} forward N={n} classes={classes}");
            assert_eq!(got_stats[..2], want_stats[..2], "{what}: divisors");
            assert!(got.is_finite(), "{what}: loss {got}");
            assert_near(&what, &[got], &[want]);
            assert_near(&what, &got_stats[2..], &want_stats[2..]);
        }
    }
}

#[test]
fn backward_matches_cpu() {
    const DLOSS: f32 = 0.75;
    for (seed, &(n, classes)) in CASES.iter().enumerate() {
        for loss in losses() {
            let mut r = rng(200 + seed as u64);
            let p = Problem::new(&mut r, loss, n, classes);
            let u = Uploaded::new(&p);
            let rows = zeros(&[loss.partial_rows(p.n, p.r), ROW]);
            let (out, stats, ddm) = (zeros(&[1]), zeros(&[STATS]), zeros(&[p.n, p.r]));
            let fwd = ops::forward(gpu(), loss, &u.m(), &rows, &out, &stats).unwrap();
            let dloss = upload(&[DLOSS], &[1]);
            let bwd = ops::backward(gpu(), loss, &u.m(), &rows, &stats, &dloss, &ddm).unwrap();
            let got = run_and_read(&siamese_gpu::Kernel::chain([fwd, bwd]), &ddm);
            let m = p.cpu(&p.dm);
            let want_rows = cpu::rows(loss, &m);
            let (want_loss, want_stats) = cpu::reduce(&want_rows);
            let want = cpu::backward(loss, &m, &want_rows, &want_stats, DLOSS);
            let what = format!("{loss:?} backward N={n} classes={classes}");
            // Exact zeros where the reference has them: pairs never formed, sub-centers not
            // chosen, pairs the miner dropped.
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                if w == 0.0 {
                    assert_eq!(g, 0.0, "{what}: element {i} must be zero");
                }
            }
            assert_near(&what, &got, &want);
            // A check that cannot pass vacuously: a positive loss has a gradient. (Two
            // images of one class have no negative: SupCon's softmax over one column is 0.)
            assert!(
                want_loss == 0.0 || want.iter().any(|&g| g != 0.0),
                "{what}: a loss of {want_loss} with an all-zero gradient"
            );
        }
    }
}

/// The f64 reference backward against central differences of the f64 forward, on inputs
/// whose rows carry every branch: a target cosine below −cos m (ArcFace's fallback
/// logit), and classes with several sub-centers.
#[test]
fn backward_matches_finite_differences() {
    let cases: &[(usize, usize)] = &[(2, 2), (6, 3), (9, 4), (12, 2)];
    for (seed, &(n, classes)) in cases.iter().enumerate() {
        for loss in losses().into_iter().map(mild) {
            let mut r = rng(300 + seed as u64);
            let p = Problem::new(&mut r, loss, n, classes);
            let mut dm = to_f64(&p.dm);
            if loss.learns_classes() {
                // Row 0's target: cos θ = −0.95 < −cos 0.5 on every sub-center.
                let k = loss.columns_per_class();
                let y = p.labels[0] as usize;
                for q in 0..k {
                    dm[y * k + q] = 1.95 - 0.001 * q as f64;
                }
            }
            let m = p.cpu(&dm);
            let rows = cpu::rows(loss, &m);
            let (value, stats) = cpu::reduce(&rows);
            let dloss = 1.3;
            let analytic = cpu::backward(loss, &m, &rows, &stats, dloss);
            let fd = finite_difference(|x| dloss * cpu::forward(loss, &p.cpu(x)).0, &dm, FD_STEP);
            let what = format!("{loss:?} N={n} classes={classes}");
            assert_matches_fd(&what, &analytic, &fd);
            assert!(
                value == 0.0 || analytic.iter().any(|&g| g != 0.0),
                "{what}: a loss of {value} with a zero gradient"
            );
        }
    }
}

/// A class head of 70,000 columns: every row workgroup's invocations loop R/64 ≈ 1,100
/// times, where one invocation per row would loop 70,000 times and stop at llvmpipe's
/// 65,535 silently.
#[test]
fn a_wide_class_head_is_summed_whole() {
    let loss = SimilarityLoss::MarginSoftmax {
        margin: MarginKind::Cosine(0.35),
        scale: 64.0,
        sub_centers: 1,
    };
    let mut r = rng(400);
    let p = Problem::new(&mut r, loss, 3, 70_000);
    let u = Uploaded::new(&p);
    let rows = zeros(&[3, ROW]);
    let (out, stats) = (zeros(&[1]), zeros(&[STATS]));
    let k = ops::forward(gpu(), loss, &u.m(), &rows, &out, &stats).unwrap();
    let got = run_and_read(&k, &out)[0];
    let (want, _) = cpu::forward(loss, &p.cpu(&p.dm));
    assert_near("CosFace over 70,000 classes", &[got], &[want]);
}

/// ArcFace written out for one row and two classes: cos θ₀ = 0.6 for the target, 0.2 for
/// the other, s = 64, m = 0.5: `log(e^{s·cos(θ₀+m)} + e^{s·0.2}) − s·cos(θ₀+m)`; and
/// ProxyAnchor for two rows and two proxies.
#[test]
fn hand_computed_losses() {
    let (s, m) = (64.0f64, 0.5f64);
    let target = (0.6f64.acos() + m).cos();
    let want = ((s * target).exp() + (s * 0.2).exp()).ln() - s * target;
    let arcface = SimilarityLoss::MarginSoftmax {
        margin: MarginKind::Angular(m as f32),
        scale: s as f32,
        sub_centers: 1,
    };
    let dm = [1.0 - 0.6, 1.0 - 0.2];
    let labels = [0u32];
    let sims = Similarities {
        dm: &dm,
        n: 1,
        r: 2,
        labels: &labels,
        ref_labels: &[],
        window: Window::all(2),
    };
    let (got, _) = cpu::forward(arcface, &sims);
    assert!((got - want).abs() < 1e-12, "ArcFace {got} vs {want}");

    // Rows 0 (class 0) and 1 (class 1); s = [[0.9, 0.1], [0.3, 0.7]], α = 32, δ = 0.1.
    let (alpha, delta) = (32.0f64, 0.1f64);
    let sim = [[0.9f64, 0.1], [0.3, 0.7]];
    let pos = |c: usize| (1.0 + (-alpha * (sim[c][c] - delta)).exp()).ln();
    let neg = |c: usize| (1.0 + (alpha * (sim[1 - c][c] + delta)).exp()).ln();
    let want = (pos(0) + pos(1)) / 2.0 + (neg(0) + neg(1)) / 2.0;
    let dm: Vec<f64> = sim.iter().flatten().map(|v| 1.0 - v).collect();
    let labels = [0u32, 1];
    let sims = Similarities {
        dm: &dm,
        n: 2,
        r: 2,
        labels: &labels,
        ref_labels: &[],
        window: Window::all(2),
    };
    let proxy = SimilarityLoss::ProxyAnchor {
        alpha: alpha as f32,
        margin: delta as f32,
    };
    let (got, _) = cpu::forward(proxy, &sims);
    assert!(
        (got - want).abs() < 1e-6 * want,
        "ProxyAnchor {got} vs {want}"
    );
}

/// The losses over embeddings against a cross-batch memory of 10 slots holding a batch of 6
/// at slots 7, 8, 9, 0, 1, 2 (its write wraps): the warm-up window (the batch alone), a
/// memory filled to 8 slots, and a full one; GPU against CPU, and the CPU's gradients
/// against finite differences.
#[test]
fn memory_windows_match_cpu() {
    let (n, slots, at) = (6, 10, 7);
    let windows = [
        Window {
            self_cols: true,
            self_start: at,
            start: at,
            count: n,
        },
        Window {
            self_cols: true,
            self_start: at,
            start: (at + n + slots - 8) % slots,
            count: 8,
        },
        Window {
            self_cols: true,
            self_start: at,
            start: (at + n) % slots,
            count: slots,
        },
    ];
    for (seed, window) in windows.into_iter().enumerate() {
        for loss in losses().into_iter().filter(|l| !l.learns_classes()) {
            let mut r = rng(600 + seed as u64);
            let labels: Vec<u32> = (0..n).map(|_| r.random_range(0..3)).collect();
            let mut ref_labels: Vec<u32> = (0..slots).map(|_| r.random_range(0..3)).collect();
            for (i, &l) in labels.iter().enumerate() {
                ref_labels[(at + i) % slots] = l;
            }
            let p = Problem {
                dm: uniform(&mut r, n * slots, 0.0, 2.0),
                n,
                r: slots,
                labels,
                ref_labels,
                window,
            };
            let what = format!("{loss:?} window {window:?}");
            let u = Uploaded::new(&p);
            let rows = zeros(&[n, ROW]);
            let (out, stats, ddm) = (zeros(&[1]), zeros(&[STATS]), zeros(&[n, slots]));
            let fwd = ops::forward(gpu(), loss, &u.m(), &rows, &out, &stats).unwrap();
            let dloss = upload(&[1.0], &[1]);
            let bwd = ops::backward(gpu(), loss, &u.m(), &rows, &stats, &dloss, &ddm).unwrap();
            let got = run_and_read(&siamese_gpu::Kernel::chain([fwd, bwd]), &ddm);
            let m = p.cpu(&p.dm);
            let want_rows = cpu::rows(loss, &m);
            let (want_loss, want_stats) = cpu::reduce(&want_rows);
            let want = cpu::backward(loss, &m, &want_rows, &want_stats, 1.0);
            assert_near(&what, &[gpu().read_f32(&out).unwrap()[0]], &[want_loss]);
            assert_near(&what, &got, &want);
            // Outside the window and on a row's own slot: no pair, no gradient.
            for i in 0..n {
                for j in 0..slots {
                    let inside = (j + slots - window.start) % slots < window.count;
                    if !inside || j == (at + i) % slots {
                        assert_eq!(got[i * slots + j], 0.0, "{what}: ({i}, {j})");
                    }
                }
            }
            let mild = mild(loss);
            let dm = to_f64(&p.dm);
            let m = p.cpu(&dm);
            let rows = cpu::rows(mild, &m);
            let (_, stats) = cpu::reduce(&rows);
            let analytic = cpu::backward(mild, &m, &rows, &stats, 1.0);
            let fd = finite_difference(|x| cpu::forward(mild, &p.cpu(x)).0, &dm, FD_STEP);
            assert_matches_fd(&format!("{what} (finite differences)"), &analytic, &fd);
        }
    }
}

/// A batch of 5 written at slot 6 of a ring of 8: slots 6, 7, 0, 1, 2, the rest untouched.
#[test]
fn memory_enqueue_fills_the_ring() {
    let (n, dim, slots) = (5, 3, 8);
    let mut r = rng(700);
    let batch = uniform(&mut r, n * dim, -1.0, 1.0);
    let labels: Vec<u32> = (0..n as u32).map(|i| 10 + i).collect();
    let window = Window {
        self_cols: true,
        self_start: 6,
        start: 6,
        count: n,
    };
    let before = uniform(&mut r, slots * dim, -1.0, 1.0);
    let before_labels: Vec<u32> = (0..slots as u32).collect();
    let memory = upload(&before, &[slots, dim]);
    let memory_labels = gpu().upload_u32(&before_labels, &[slots]).unwrap();
    let k = ops::memory_enqueue(
        gpu(),
        &upload(&batch, &[n, dim]),
        &gpu().upload_u32(&labels, &[n]).unwrap(),
        &gpu().upload_u32(&window.words(), &[4]).unwrap(),
        &memory,
        &memory_labels,
    )
    .unwrap();
    let got = run_and_read(&k, &memory);
    let got_labels = gpu().read_u32(&memory_labels).unwrap();
    let (mut want, mut want_labels) = (before.clone(), before_labels.clone());
    cpu::memory_enqueue(&batch, &labels, dim, &window, &mut want, &mut want_labels);
    assert_eq!(got, want);
    assert_eq!(got_labels, want_labels);
    assert_eq!(want_labels, [12, 13, 14, 3, 4, 5, 10, 11]);
}
