//! Triplet mining (`shaders/mining.wgsl`) against `cpu::mining`, its gradients against finite
//! differences, and hand-computed examples of each miner.
//!
//! Selections (which positive, which negative, whether a hinge is on) depend only on
//! comparisons of the same f32 inputs, which the f32 reference makes on the same values in
//! the same order: counts must agree EXACTLY, and so must every index a gradient lands on.
//! Sums are compared under the stated rounding bounds.
//!
//! Entry points, through their launchers: `rows_match_cpu` checks the first passes
//! (`batch_hard_rows`, `semi_hard_pairs`, `batch_all_pairs`), `forward_matches_cpu` adds
//! `mining_reduce`, and `backward_matches_cpu` checks `batch_hard_backward`,
//! `semi_hard_choices` + `semi_hard_backward` and `batch_all_backward` against the CPU
//! backward, which `backward_matches_finite_differences` checks against f64 finite
//! differences of the CPU forward.

use crate::common::*;
use rand::RngExt;
use rand::rngs::StdRng;
use siamese_gpu::cpu::mining as cpu;
use siamese_gpu::cpu::mining::ROW_STATS;
use siamese_gpu::ops::mining::{self, MiningStats};
use siamese_gpu::vocab::Miner;
use siamese_gpu::{Kernel, Tensor};

const MINERS: [Miner; 3] = [Miner::BatchHard, Miner::SemiHard, Miner::BatchAll];
const MARGIN: f32 = 0.2;
/// Upstream gradient of the `_matches_cpu` tests: not 1, so a backward that ignores it fails.
const DLOSS: f32 = 0.75;
/// WGSL's division is within 2.5 ULP: at most 5u relative.
const DIV_ERR: f64 = 5.0 * U32;

/// How the labels of a batch are drawn.
#[derive(Debug, Clone, Copy)]
enum Labels {
    /// P classes × K images, shuffled: what the P×K sampler gives.
    Balanced { k: usize },
    /// Uniform over `classes`: some anchors are alone in their class (no positive).
    Random { classes: u32 },
    /// One class: no anchor has a negative.
    OneClass,
}

/// N = 2 both ways, sizes off the 64-wide workgroup, exactly one workgroup, 257 (over the
/// reduction's 256 strides) and the training default 160 = 16 × 10.
const CASES: &[(usize, Labels)] = &[
    (2, Labels::Balanced { k: 2 }),
    (2, Labels::Random { classes: 2 }),
    (2, Labels::OneClass),
    (5, Labels::Random { classes: 3 }),
    (12, Labels::Balanced { k: 3 }),
    (63, Labels::Random { classes: 20 }),
    (64, Labels::Balanced { k: 4 }),
    (65, Labels::Random { classes: 40 }),
    (160, Labels::Balanced { k: 16 }),
    (257, Labels::Random { classes: 10 }),
];

fn labels(r: &mut StdRng, n: usize, how: Labels) -> Vec<u32> {
    match how {
        Labels::Balanced { k } => {
            let mut l: Vec<u32> = (0..n).map(|i| (i / k) as u32).collect();
            for i in (1..n).rev() {
                l.swap(i, r.random_range(0..=i));
            }
            l
        }
        Labels::Random { classes } => (0..n).map(|_| r.random_range(0..classes)).collect(),
        Labels::OneClass => vec![7; n],
    }
}

fn upload_labels(l: &[u32]) -> Tensor {
    gpu().upload_u32(l, &[l.len()]).expect("upload labels")
}

/// Distances in [0, 2): the range of unit embeddings' Euclidean distances. dm need not be
/// symmetric: the kernels read only row a for anchor a.
fn distances(r: &mut StdRng, n: usize) -> Vec<f32> {
    uniform(r, n * n, 0.0, 2.0)
}

/// Triplets summed into one row of the first pass at most: batch-all sums a positive's
/// triplets over all negatives; the others write one triplet per row.
fn terms(miner: Miner, n: usize) -> usize {
    match miner {
        Miner::BatchHard | Miner::SemiHard => 1,
        Miner::BatchAll => n,
    }
}

#[test]
fn rows_match_cpu() {
    for (seed, &(n, how)) in CASES.iter().enumerate() {
        let mut r = rng(seed as u64);
        let l = labels(&mut r, n, how);
        let dm = distances(&mut r, n);
        for miner in MINERS {
            let out = zeros(&[miner.partial_rows(n), ROW_STATS]);
            let k = mining::rows(
                gpu(),
                miner,
                &upload(&dm, &[n, n]),
                &upload_labels(&l),
                MARGIN,
                &out,
            )
            .unwrap();
            let got = run_and_read(&k, &out);
            let want = cpu::mining_rows(miner, &dm, &l, n, MARGIN);
            let what = format!("{miner} rows N={n} {how:?}");
            // Columns 1 and 2 (mined, active) are counts of identical comparisons: exact.
            for a in 0..miner.partial_rows(n) {
                for c in [1, 2] {
                    assert_eq!(
                        got[a * ROW_STATS + c],
                        want[a * ROW_STATS + c],
                        "{what}: row {a} column {c}"
                    );
                }
            }
            // The sums add non-negative terms, each of one or two roundings (d_ap − d_an + m):
            // the two f32 runs differ by at most 2·γ_{terms+2}·|sum|.
            let bound: Vec<f64> = want
                .iter()
                .map(|&w| 2.0 * gamma(terms(miner, n) + 2) * w.abs() as f64 + 1e-30)
                .collect();
            assert_within(&what, &got, &want, &bound);
        }
    }
}

/// The forward (both dispatches) against the f32 reference, which mirrors its summation.
#[test]
fn forward_matches_cpu() {
    for (seed, &(n, how)) in CASES.iter().enumerate() {
        let mut r = rng(100 + seed as u64);
        let l = labels(&mut r, n, how);
        let dm = distances(&mut r, n);
        for miner in MINERS {
            let (loss, stats) = (zeros(&[1]), zeros(&[4]));
            let k = mining::forward(
                gpu(),
                miner,
                &upload(&dm, &[n, n]),
                &upload_labels(&l),
                MARGIN,
                &loss,
                &stats,
            )
            .unwrap();
            let got_loss = run_and_read(&k, &loss)[0];
            let got_stats = gpu().read_f32(&stats).unwrap();
            let (want_loss, want_stats) = cpu::forward(miner, &dm, &l, n, MARGIN);
            let what = format!("{miner} forward N={n} {how:?}");
            // Counts of identical comparisons, summed exactly (integers < 2²⁴): equal.
            assert_eq!(got_stats[..2], want_stats[..2], "{what}: mined, active");
            // Non-negative terms: each row sum errs by γ_{terms+2} relative, the sum of the R
            // rows adds γ_R, the division 5u; two runs differ by twice that.
            let tol = |w: f32| {
                2.0 * (gamma(terms(miner, n) + 2) + gamma(miner.partial_rows(n)) + DIV_ERR)
                    * w.abs() as f64
                    + 1e-30
            };
            assert_within(&what, &[got_loss], &[want_loss], &[tol(want_loss)]);
            assert_within(
                &what,
                &got_stats[2..],
                &want_stats[2..],
                &[tol(want_stats[2]), tol(want_stats[3])],
            );
            assert!(got_loss.is_finite(), "{what}: loss {got_loss}");
        }
    }
}

/// Forward then backward on the GPU (the backward reads the forward's normaliser) against
/// the reference backward fed the reference forward's stats.
#[test]
fn backward_matches_cpu() {
    for (seed, &(n, how)) in CASES.iter().enumerate() {
        let mut r = rng(200 + seed as u64);
        let l = labels(&mut r, n, how);
        let dm = distances(&mut r, n);
        for miner in MINERS {
            let (dm_t, l_t) = (upload(&dm, &[n, n]), upload_labels(&l));
            let (loss, stats, ddm) = (zeros(&[1]), zeros(&[4]), zeros(&[n, n]));
            let fwd = mining::forward(gpu(), miner, &dm_t, &l_t, MARGIN, &loss, &stats).unwrap();
            let bwd = mining::backward(
                gpu(),
                miner,
                &dm_t,
                &l_t,
                MARGIN,
                &stats,
                &upload(&[DLOSS], &[1]),
                &ddm,
            )
            .unwrap();
            let got = run_and_read(&Kernel::chain([fwd, bwd]), &ddm);
            let (_, stats_want) = cpu::forward(miner, &dm, &l, n, MARGIN);
            let want = cpu::backward(miner, &dm, &l, n, MARGIN, &stats_want, DLOSS);
            // Every element is ±s, a count times s, or (semi-hard negatives) a sum of up to N
            // copies of −s, with s = dloss/count one division: 5u relative on s, plus γ_N
            // for the sum. Zeros must be exact zeros (the bound is 0 there).
            let bound: Vec<f64> = want
                .iter()
                .map(|&w| (DIV_ERR + gamma(n)) * w.abs() as f64)
                .collect();
            assert_within(
                &format!("{miner} backward N={n} {how:?}"),
                &got,
                &want,
                &bound,
            );
        }
    }
}

/// A random `dm [n, n]` in f64 whose rows keep every two entries, and every entry pair
/// shifted by the margin, at least `gap` apart: no argmin/argmax tie, no hinge at its kink
/// and no semi-hard boundary within the finite-difference step.
fn separated(r: &mut StdRng, n: usize, margin: f64, gap: f64) -> Vec<f64> {
    let mut dm = vec![0.0; n * n];
    for a in 0..n {
        'retry: loop {
            let row: Vec<f64> = (0..n).map(|_| r.random_range(0.0..2.0)).collect();
            for j in 0..n {
                for k in 0..n {
                    if j != k
                        && ((row[j] - row[k]).abs() < gap || (row[j] - row[k] + margin).abs() < gap)
                    {
                        continue 'retry;
                    }
                }
            }
            dm[a * n..(a + 1) * n].copy_from_slice(&row);
            break;
        }
    }
    dm
}

/// The f64 reference backward against central differences of the f64 reference forward.
/// The loss is piecewise linear in dm; away from its kinks (see `separated`) the central
/// difference is exact up to rounding, ~1e-16/h = 1e-11.
/// Large classes: K·N = 80,000 steps for an anchor, which a per-anchor loop on llvmpipe did
/// not finish (it stopped after about 2¹⁵ steps; see the shader's header). Forward counts and
/// the backward must still match the reference exactly in which triplets they count.
#[test]
fn large_classes_are_mined_whole() {
    let n = 400;
    let mut r = rng(500);
    let l: Vec<u32> = (0..n as u32).map(|i| i % 2).collect();
    let dm = distances(&mut r, n);
    for miner in MINERS {
        let (_, stats, ddm) = gpu_mine(miner, &dm, &l, MARGIN);
        let (_, want) = cpu::forward(miner, &dm, &l, n, MARGIN);
        assert_eq!(
            [stats.mined, stats.active],
            [want[0], want[1]],
            "{miner} N={n}"
        );
        let want_ddm = cpu::backward(miner, &dm, &l, n, MARGIN, &want, 1.0);
        let bound: Vec<f64> = want_ddm
            .iter()
            .map(|&w| 7.0 * U32 * w.abs() as f64)
            .collect();
        assert_within(&format!("{miner} backward N={n}"), &ddm, &want_ddm, &bound);
    }
}

#[test]
fn backward_matches_finite_differences() {
    let margin = MARGIN as f64;
    let cases: &[(usize, Labels)] = &[
        (2, Labels::Balanced { k: 2 }),
        (6, Labels::Balanced { k: 2 }),
        (7, Labels::Random { classes: 3 }),
        (9, Labels::Balanced { k: 3 }),
    ];
    for (seed, &(n, how)) in cases.iter().enumerate() {
        let mut r = rng(300 + seed as u64);
        let l = labels(&mut r, n, how);
        let dm = separated(&mut r, n, margin, 1e-3);
        for miner in MINERS {
            let (_, stats) = cpu::forward(miner, &dm, &l, n, margin);
            let dloss = 1.3;
            let analytic = cpu::backward(miner, &dm, &l, n, margin, &stats, dloss);
            let fd = finite_difference(
                |x| dloss * cpu::forward(miner, x, &l, n, margin).0,
                &dm,
                FD_STEP,
            );
            let what = format!("{miner} N={n} {how:?}");
            assert_matches_fd(&what, &analytic, &fd);
            // A check that cannot pass vacuously: some gradient is non-zero.
            if stats[1] > 0.0 {
                assert!(
                    analytic.iter().any(|&g| g != 0.0),
                    "{what}: active triplets but a zero gradient"
                );
            }
        }
    }
}

/// Forward and backward of `miner` on the GPU: (loss, stats, ddm).
fn gpu_mine(miner: Miner, dm: &[f32], l: &[u32], margin: f32) -> (f32, MiningStats, Vec<f32>) {
    let n = l.len();
    let (dm_t, l_t) = (upload(dm, &[n, n]), upload_labels(l));
    let (loss, stats, ddm) = (zeros(&[1]), zeros(&[4]), zeros(&[n, n]));
    let fwd = mining::forward(gpu(), miner, &dm_t, &l_t, margin, &loss, &stats).unwrap();
    let bwd = mining::backward(
        gpu(),
        miner,
        &dm_t,
        &l_t,
        margin,
        &stats,
        &upload(&[1.0], &[1]),
        &ddm,
    )
    .unwrap();
    let ddm = run_and_read(&Kernel::chain([fwd, bwd]), &ddm);
    let loss = gpu().read_f32(&loss).unwrap()[0];
    let stats = MiningStats::from_slice(&gpu().read_f32(&stats).unwrap());
    (loss, stats, ddm)
}

/// Points 0, 1, 3, 6 on a line, classes [0, 0, 1, 1], margin 1.5, dm = |x_i − x_j|.
/// Every value is a small dyadic number, so every addition is exact; only the final
/// division by the count may round (WGSL allows 2.5 ULP): `assert_quotient` allows 5u.
fn line() -> (Vec<f32>, Vec<u32>) {
    let x = [0.0f32, 1.0, 3.0, 6.0];
    let dm = (0..16).map(|k| (x[k / 4] - x[k % 4]).abs()).collect();
    (dm, vec![0, 0, 1, 1])
}

/// `got` equals `want` but for the rounding of one WGSL division (5u relative).
fn assert_quotient(what: &str, got: &[f32], want: &[f32]) {
    let bound: Vec<f64> = want.iter().map(|&w| DIV_ERR * w.abs() as f64).collect();
    assert_within(what, got, want, &bound);
}

#[test]
fn batch_hard_on_four_points() {
    let (dm, l) = line();
    let (loss, stats, ddm) = gpu_mine(Miner::BatchHard, &dm, &l, 1.5);
    // Anchor: hardest positive, hardest negative → hinge of d_ap − d_an + 1.5:
    // 0: 1 (d 1), 2 (d 3) → 0;  1: 0 (1), 2 (2) → 0.5;  2: 3 (3), 1 (2) → 2.5;  3: 2 (3), 1 (5) → 0.
    assert_quotient("loss", &[loss], &[(0.5 + 2.5) / 4.0]);
    assert_eq!((stats.mined, stats.active), (4.0, 2.0));
    assert_quotient(
        "mean d_ap",
        &[stats.mean_d_ap],
        &[(1.0 + 1.0 + 3.0 + 3.0) / 4.0],
    );
    assert_quotient(
        "mean d_an",
        &[stats.mean_d_an],
        &[(3.0 + 2.0 + 2.0 + 5.0) / 4.0],
    );
    let mut want = vec![0.0f32; 16];
    (want[4], want[4 + 2]) = (0.25, -0.25); // anchor 1: +s at its positive 0, −s at negative 2
    (want[8 + 3], want[8 + 1]) = (0.25, -0.25); // anchor 2: positive 3, negative 1
    assert_quotient("ddm", &ddm, &want);
    assert_eq!(cpu::forward(Miner::BatchHard, &dm, &l, 4, 1.5).0, 0.75);
}

#[test]
fn semi_hard_on_four_points() {
    let (dm, l) = line();
    let (loss, stats, ddm) = gpu_mine(Miner::SemiHard, &dm, &l, 1.5);
    // Pair: d_ap; nearest negative farther than d_ap (else the farthest) → hinge:
    // (0,1): 1; 3 (n 2) → 0.   (1,0): 1; 2 (n 2) → 0.5.
    // (2,3): 3; none > 3 (d(2,0) = 3 is not farther) → farthest, n 0 at 3 → 1.5.
    // (3,2): 3; 5 (n 1) → 0.
    assert_quotient("loss", &[loss], &[(0.5 + 1.5) / 4.0]);
    assert_eq!((stats.mined, stats.active), (4.0, 2.0));
    assert_quotient(
        "mean d_an",
        &[stats.mean_d_an],
        &[(3.0 + 2.0 + 3.0 + 5.0) / 4.0],
    );
    let mut want = vec![0.0f32; 16];
    (want[4], want[4 + 2]) = (0.25, -0.25);
    (want[8 + 3], want[8]) = (0.25, -0.25);
    assert_quotient("ddm", &ddm, &want);
    assert_eq!(cpu::forward(Miner::SemiHard, &dm, &l, 4, 1.5).0, 0.5);
}

#[test]
fn batch_all_on_four_points() {
    let (dm, l) = line();
    let (loss, stats, ddm) = gpu_mine(Miner::BatchAll, &dm, &l, 1.5);
    // The 8 triplets' hinges: (0,1,2) −0.5, (0,1,3) −3.5, (1,0,2) 0.5, (1,0,3) −2.5,
    // (2,3,0) 1.5, (2,3,1) 2.5, (3,2,0) −1.5, (3,2,1) −0.5: three active, sum 4.5.
    assert_quotient("loss", &[loss], &[4.5 / 3.0]);
    assert_eq!((stats.mined, stats.active), (8.0, 3.0));
    let s = 1.0f32 / 3.0;
    let mut want = vec![0.0f32; 16];
    (want[4], want[4 + 2]) = (s, -s); // (1,0,2)
    want[8 + 3] = 2.0 * s; // positive of (2,3,0) and (2,3,1)
    (want[8], want[8 + 1]) = (-s, -s);
    assert_quotient("ddm", &ddm, &want);
    assert_eq!(cpu::forward(Miner::BatchAll, &dm, &l, 4, 1.5).0, 1.5);
}

/// Equal distances pick the lowest index, on the GPU as in the reference.
#[test]
fn ties_pick_the_lowest_index() {
    // Anchor 0 of classes [0, 0, 0, 1, 1]: positives 1 and 2 both at 2, negatives 3 and 4 both at 1.
    let n = 5;
    let mut dm = vec![1.0f32; n * n];
    dm[..n].copy_from_slice(&[0.0, 2.0, 2.0, 1.0, 1.0]);
    let l = vec![0, 0, 0, 1, 1];
    let (_, _, ddm) = gpu_mine(Miner::BatchHard, &dm, &l, 0.5);
    let cpu_ddm = cpu::batch_hard_backward(
        &dm,
        &l,
        n,
        0.5,
        &cpu::forward(Miner::BatchHard, &dm, &l, n, 0.5).1,
        1.0,
    );
    assert_eq!(ddm, cpu_ddm);
    assert!(
        ddm[1] > 0.0 && ddm[2] == 0.0,
        "hardest positive must be 1, row {:?}",
        &ddm[..n]
    );
    assert!(
        ddm[3] < 0.0 && ddm[4] == 0.0,
        "hardest negative must be 3, row {:?}",
        &ddm[..n]
    );
}

/// No valid triplet (no positives, or no negatives): loss 0 and a zero gradient, not NaN.
#[test]
fn batches_without_triplets_give_zero() {
    for l in [vec![0, 1, 2], vec![4, 4, 4]] {
        let dm = vec![0.5f32; 9];
        for miner in MINERS {
            let (loss, stats, ddm) = gpu_mine(miner, &dm, &l, 0.2);
            assert_eq!(loss, 0.0, "{miner} {l:?}");
            assert_eq!(stats.mined, 0.0, "{miner} {l:?}");
            assert!(ddm.iter().all(|&g| g == 0.0), "{miner} {l:?}: {ddm:?}");
        }
    }
}

#[test]
fn shapes_are_checked() {
    let dm = zeros(&[3, 4]);
    let l = upload_labels(&[0, 1, 2]);
    let err = mining::forward(
        gpu(),
        Miner::BatchHard,
        &dm,
        &l,
        0.2,
        &zeros(&[1]),
        &zeros(&[4]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("square"), "{err}");
    let dm = zeros(&[3, 3]);
    let err = mining::forward(
        gpu(),
        Miner::BatchHard,
        &dm,
        &upload_labels(&[0, 1]),
        0.2,
        &zeros(&[1]),
        &zeros(&[4]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("labels"), "{err}");
}

#[test]
fn miner_names_parse() {
    assert_eq!(Miner::parse_setting("none").unwrap(), None);
    for miner in MINERS {
        assert_eq!(
            Miner::parse_setting(&miner.to_string()).unwrap(),
            Some(miner)
        );
    }
    assert_eq!("semi_hard".parse::<Miner>().unwrap(), Miner::SemiHard);
    assert!(
        "hardest"
            .parse::<Miner>()
            .unwrap_err()
            .to_string()
            .contains("batch-hard")
    );
}

/// Embeddings `e [n, dim]` whose f64 distance matrix (by `dist`) keeps every row's entries,
/// and entry pairs shifted by the margin, at least `gap` apart (see `separated`).
fn separated_embeddings(
    r: &mut StdRng,
    n: usize,
    dim: usize,
    dist: impl Fn(&[f64]) -> Vec<f64>,
    gap: f64,
) -> Vec<f32> {
    let m = MARGIN as f64;
    'retry: loop {
        let e = uniform(r, n * dim, -1.0, 1.0);
        let dm = dist(&to_f64(&e));
        for a in 0..n {
            for j in 0..n {
                for k in 0..n {
                    let (x, y) = (dm[a * n + j], dm[a * n + k]);
                    if j != k && ((x - y).abs() < gap || (x - y + m).abs() < gap) {
                        continue 'retry;
                    }
                }
            }
        }
        return e;
    }
}

/// The tape's `pairwise` + `mined_triplet_loss` on the GPU: d loss / d e against
/// central differences of the composed f64 references. Both sides of the pairwise matrix
/// are e, so a tape that kept only one side's gradient would be off by about half.
#[test]
fn tape_gradient_of_embeddings_matches_finite_differences() {
    use siamese_gpu::autograd::Tape;
    use siamese_gpu::cpu::distance as cpu_distance;
    use siamese_gpu::vocab::PairwiseMetric;

    let (n, dim) = (8, 4);
    let l: Vec<u32> = vec![0, 1, 2, 0, 1, 2, 0, 1];
    for (seed, metric) in [PairwiseMetric::Euclidean, PairwiseMetric::Cosine]
        .into_iter()
        .enumerate()
    {
        let dist = move |e: &[f64]| match metric {
            PairwiseMetric::Euclidean => cpu_distance::pairwise_euclidean_forward(e, e, n, n, dim),
            PairwiseMetric::Cosine => cpu_distance::pairwise_cosine_forward(e, e, n, n, dim),
        };
        let mut r = rng(400 + seed as u64);
        // A gap of 1e-3 keeps the FD step's change of dm (≤ 2h·|∂d/∂e| ≈ 1e-4 for these
        // scales) from crossing a kink.
        let e = separated_embeddings(&mut r, n, dim, dist, 1e-3);
        for miner in MINERS {
            let mut tape = Tape::new(gpu());
            let grad = zeros(&[n, dim]);
            let ev = tape
                .param(upload(&e, &[n, dim]), Some(grad.clone()))
                .unwrap();
            let dm = tape.pairwise(metric, ev, ev).unwrap();
            let (loss, _) = tape
                .mined_triplet_loss(dm, &upload_labels(&l), miner, MARGIN)
                .unwrap();
            let mut kernels: Vec<Kernel> = tape.forward_kernels().cloned().collect();
            kernels.extend(tape.backward(loss).unwrap());
            gpu().run(&kernels.iter().collect::<Vec<_>>());
            let got = gpu().read_f32(&grad).unwrap();
            let f = |x: &[f64]| cpu::forward(miner, &dist(x), &l, n, MARGIN as f64).0;
            let fd = finite_difference(f, &to_f64(&e), FD_STEP);
            let what = format!("{miner} {metric:?} tape gradient");
            assert!(
                fd.iter().any(|&g| g != 0.0),
                "{what}: a zero gradient tests nothing"
            );
            // f32 distances and their gradients carry ~1e-6 relative error; 1e-4 of the largest
            // entry is well above that and far below a missing side (≈ 50%).
            assert_gpu_matches_fd(&what, &got, &fd, 1e-4);
        }
    }
}
