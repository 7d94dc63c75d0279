//! Retrieval metrics (`eval::retrieval`) through the GPU path, against values worked out by
//! hand on points of a line and against a brute-force reference (every row fully sorted on
//! the host, distances in f64) on random inputs.
//!
//! Where the inputs are small integers, every squared distance is an exact f32 integer on
//! both sides and equal squared distances give bit-equal distances, so the GPU ranking is the
//! exact one and the metrics must agree to rounding of the means (1e-12). For random real
//! inputs (cosine) a query whose row holds two distances within 1e-5 of each other may be
//! ranked either way by f32 arithmetic; each such query may move a mean by at most 1/Q, and
//! that is the tolerance.

use crate::common::*;
use rand::RngExt;
use siamese_gpu::cpu;
use siamese_gpu::data::images::ImageSet;
use siamese_gpu::eval::retrieval::{
    self, Protocol, References, RetrievalMetrics, RetrievalOptions, evaluate_retrieval,
    stratified_sample,
};
use siamese_gpu::vocab::PairwiseMetric;
use siamese_gpu::vocab::PixelNorm;

/// Means agree to summation order.
const EXACT: f64 = 1e-12;

fn options(metric: PairwiseMetric, ks: &[usize]) -> RetrievalOptions {
    RetrievalOptions {
        recall_ks: ks.to_vec(),
        ..RetrievalOptions::new(metric)
    }
}

fn assert_close(what: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got}, want {want} (tolerance {tol})"
    );
}

/// Six points on a line, classes A = 0 and B = 1, each of size 3 (R = 2 in leave-one-out):
///
/// ```text
///   index   0    1    2    3    4    5
///   x       0    1    3    4    6    8
///   class   A    A    B    A    B    B
/// ```
const LINE: [f32; 6] = [0.0, 1.0, 3.0, 4.0, 6.0, 8.0];
const LINE_CLASSES: [u8; 6] = [0, 0, 1, 0, 1, 1];

#[test]
fn leave_one_out_on_a_line_matches_the_hand_computed_values() {
    // Each query's ranking (ties → lower index), top R = 2 marked with [ ]:
    //   q0 (A): [1A 2B] 3A 4B 5B        P@1 1  R@2 1  R@4 1  R-prec 1/2  AP@R (1/1)/2 = 1/2
    //   q1 (A): [0A 2B] 3A 4B 5B        P@1 1  R@2 1  R@4 1  R-prec 1/2  AP@R 1/2
    //   q2 (B): [3A 1A] 0A(d3) 4B(d3) 5B  P@1 0  R@2 0  R@4 1  R-prec 0  AP@R 0
    //   q3 (A): [2B 4B] 1A 0A(d4) 5B(d4)  P@1 0  R@2 0  R@4 1  R-prec 0  AP@R 0
    //   q4 (B): [3A(d2) 5B(d2)] 2B 1A 0A  P@1 0  R@2 1  R@4 1  R-prec 1/2  AP@R (1/2)/2 = 1/4
    //   q5 (B): [4B 3A] 2B 1A 0A        P@1 1  R@2 1  R@4 1  R-prec 1/2  AP@R 1/2
    // Means: P@1 3/6, R@2 4/6, R@4 1, R-precision 2/6, MAP@R (1/2+1/2+0+0+1/4+1/2)/6 = 1.75/6.
    let m = evaluate_retrieval(
        gpu(),
        &LINE,
        &LINE_CLASSES,
        1,
        References::LeaveOneOut,
        &options(PairwiseMetric::Euclidean, &[1, 2, 4]),
    )
    .unwrap();
    assert_eq!(m.protocol, Protocol::LeaveOneOut);
    assert_eq!(
        (m.queries, m.queries_without_match, m.references),
        (6, 0, 6)
    );
    assert_eq!(m.sample, None);
    assert_close("P@1", m.precision_at_1, 0.5, EXACT);
    assert_close("R@1", m.recall_at(1).unwrap(), 0.5, EXACT);
    assert_close("R@2", m.recall_at(2).unwrap(), 4.0 / 6.0, EXACT);
    assert_close("R@4", m.recall_at(4).unwrap(), 1.0, EXACT);
    assert_close("R-precision", m.r_precision, 2.0 / 6.0, EXACT);
    assert_close("MAP@R", m.map_at_r, 1.75 / 6.0, EXACT);
    let line = m.to_string();
    assert!(
        line.starts_with("P@1 0.5000  R@2 0.6667  R@4 1.0000  R-precision 0.3333  MAP@R 0.2917")
            && line.contains("6 queries, leave-one-out, euclidean"),
        "{line}"
    );
}

#[test]
fn a_gallery_on_a_line_matches_the_hand_computed_values() {
    // The six points above as the gallery (R = 3 of each class, nothing excluded); queries:
    //   x=2 (A): distances 2,1,1,2,4,6 → [1A 2B 0A] 3A 4B 5B
    //            P@1 1  R@2 1  R-prec 2/3  AP@R (1/1 + 2/3)/3 = 5/9
    //   x=5 (B): distances 5,4,2,1,1,3 → [3A 4B 2B] 5B 1A 0A
    //            P@1 0  R@2 1  R-prec 2/3  AP@R (1/2 + 2/3)/3 = 7/18
    //   x=9 (class 2, absent from the gallery): R = 0, left out of every mean.
    // Means over 2 queries: P@1 1/2, R@2 1, R-precision 2/3, MAP@R 17/36.
    let m = evaluate_retrieval(
        gpu(),
        &[2.0, 5.0, 9.0],
        &[0, 1, 2],
        1,
        References::Gallery {
            embeddings: &LINE,
            labels: &LINE_CLASSES,
        },
        &options(PairwiseMetric::Euclidean, &[1, 2]),
    )
    .unwrap();
    assert_eq!(m.protocol, Protocol::Gallery);
    assert_eq!(
        (m.queries, m.queries_without_match, m.references),
        (2, 1, 6)
    );
    assert_close("P@1", m.precision_at_1, 0.5, EXACT);
    assert_close("R@2", m.recall_at(2).unwrap(), 1.0, EXACT);
    assert_close("R-precision", m.r_precision, 2.0 / 3.0, EXACT);
    assert_close("MAP@R", m.map_at_r, 17.0 / 36.0, EXACT);
    assert!(
        m.to_string()
            .contains("1 without a same-class reference left out")
    );
}

// ---- brute-force reference ----------------------------------------------------------------

/// The metrics from f64 distances by fully sorting each row (ties → lower index), and the
/// number of queries whose row holds two distances within `near` of each other (ambiguous
/// in f32). `exclude[i]` is the reference query i skips, if any.
#[allow(clippy::too_many_arguments)] // the two sets, their labels and the protocol, each named
fn reference(
    metric: PairwiseMetric,
    queries: &[f32],
    labels: &[u8],
    refs: &[f32],
    ref_labels: &[u8],
    exclude: &[Option<usize>],
    dim: usize,
    ks: &[usize],
    near: f64,
) -> (RetrievalMetrics, usize) {
    let dist = |a: &[f32], b: &[f32]| -> f64 {
        match metric {
            PairwiseMetric::Euclidean => a
                .iter()
                .zip(b)
                .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
                .sum::<f64>()
                .sqrt(),
            PairwiseMetric::Cosine => {
                let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
                let n = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
                1.0 - dot / (n(a) * n(b))
            }
        }
    };
    let (mut n, mut without, mut ambiguous) = (0usize, 0usize, 0usize);
    let (mut p1, mut rp, mut map) = (0.0, 0.0, 0.0);
    let mut recall = vec![0.0; ks.len()];
    for (i, &label) in labels.iter().enumerate() {
        let q = &queries[i * dim..(i + 1) * dim];
        let mut row: Vec<(f64, usize)> = (0..ref_labels.len())
            .filter(|&j| Some(j) != exclude[i])
            .map(|j| (dist(q, &refs[j * dim..(j + 1) * dim]), j))
            .collect();
        row.sort_by(|x, y| x.0.partial_cmp(&y.0).unwrap().then(x.1.cmp(&y.1)));
        let rel: Vec<bool> = row.iter().map(|&(_, j)| ref_labels[j] == label).collect();
        let r = rel.iter().filter(|&&x| x).count();
        if r == 0 {
            without += 1;
            continue;
        }
        n += 1;
        if row.windows(2).any(|w| w[1].0 - w[0].0 <= near) {
            ambiguous += 1;
        }
        p1 += f64::from(u8::from(rel[0]));
        for (s, &k) in recall.iter_mut().zip(ks) {
            *s += f64::from(u8::from(rel[..k].contains(&true)));
        }
        let mut hits = 0;
        let mut ap = 0.0;
        for (pos, &is) in rel[..r].iter().enumerate() {
            if is {
                hits += 1;
                ap += hits as f64 / (pos + 1) as f64;
            }
        }
        rp += hits as f64 / r as f64;
        map += ap / r as f64;
    }
    let m = RetrievalMetrics {
        metric,
        protocol: Protocol::LeaveOneOut,
        queries: n,
        queries_without_match: without,
        references: ref_labels.len(),
        sample: None,
        precision_at_1: p1 / n as f64,
        recall_at_k: ks
            .iter()
            .zip(&recall)
            .map(|(&k, &s)| (k, s / n as f64))
            .collect(),
        r_precision: rp / n as f64,
        map_at_r: map / n as f64,
    };
    (m, ambiguous)
}

fn assert_metrics(what: &str, got: &RetrievalMetrics, want: &RetrievalMetrics, tol: f64) {
    assert_eq!(got.queries, want.queries, "{what}: queries");
    assert_eq!(
        got.queries_without_match, want.queries_without_match,
        "{what}: queries without match"
    );
    assert_close(
        &format!("{what} P@1"),
        got.precision_at_1,
        want.precision_at_1,
        tol,
    );
    for (&(k, g), &(_, w)) in got.recall_at_k.iter().zip(&want.recall_at_k) {
        assert_close(&format!("{what} R@{k}"), g, w, tol);
    }
    assert_close(
        &format!("{what} R-precision"),
        got.r_precision,
        want.r_precision,
        tol,
    );
    assert_close(&format!("{what} MAP@R"), got.map_at_r, want.map_at_r, tol);
}

/// Labels of `n` items over `classes` classes, and small-integer embeddings near a
/// per-class centre (so the metrics are far from 0 and 1 and ties are frequent).
fn integer_clusters(seed: u64, n: usize, dim: usize, classes: u8) -> (Vec<f32>, Vec<u8>) {
    let mut r = rng(seed);
    let labels: Vec<u8> = (0..n).map(|_| r.random_range(0..classes)).collect();
    let centres: Vec<i32> = (0..classes as usize * dim)
        .map(|_| r.random_range(-3..=3))
        .collect();
    let e = labels
        .iter()
        .flat_map(|&c| {
            let centre = centres[c as usize * dim..(c as usize + 1) * dim].to_vec();
            centre
                .into_iter()
                .map(|x| (x + r.random_range(-3..=3)) as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    (e, labels)
}

#[test]
fn leave_one_out_matches_brute_force_in_small_chunks() {
    // (N, D, classes, chunk rows): a chunk of one row, 7-row chunks leaving a ragged last one,
    // a single chunk, and a class with one member (no same-class reference).
    for (seed, &(n, dim, classes, chunk_rows)) in [
        (40, 3, 4, 1),
        (150, 3, 5, 7),
        (129, 5, 40, 200),
        (67, 2, 3, 16),
    ]
    .iter()
    .enumerate()
    {
        let (e, labels) = integer_clusters(seed as u64, n, dim, classes);
        let ks = [1, 2, 4, 8, 16, 39.min(n - 1)];
        let opts = RetrievalOptions {
            chunk_bytes: (chunk_rows * n * 4) as u64,
            ..options(PairwiseMetric::Euclidean, &ks)
        };
        let got =
            evaluate_retrieval(gpu(), &e, &labels, dim, References::LeaveOneOut, &opts).unwrap();
        let exclude: Vec<Option<usize>> = (0..n).map(Some).collect();
        let (want, _) = reference(
            PairwiseMetric::Euclidean,
            &e,
            &labels,
            &e,
            &labels,
            &exclude,
            dim,
            &ks,
            0.0,
        );
        assert_metrics(
            &format!("euclidean {n}x{dim} chunk {chunk_rows}"),
            &got,
            &want,
            EXACT,
        );
    }
}

#[test]
fn gallery_and_a_single_query_match_brute_force() {
    let (g, gl) = integer_clusters(11, 90, 4, 6);
    let (q, ql) = integer_clusters(12, 33, 4, 7); // class 6 is absent from the gallery
    for count in [33, 1] {
        let ks = [1, 3, 64];
        let got = evaluate_retrieval(
            gpu(),
            &q[..count * 4],
            &ql[..count],
            4,
            References::Gallery {
                embeddings: &g,
                labels: &gl,
            },
            &RetrievalOptions {
                chunk_bytes: 10 * 90 * 4,
                ..options(PairwiseMetric::Euclidean, &ks)
            },
        )
        .unwrap();
        let (want, _) = reference(
            PairwiseMetric::Euclidean,
            &q[..count * 4],
            &ql[..count],
            &g,
            &gl,
            &vec![None; count],
            4,
            &ks,
            0.0,
        );
        assert_metrics(&format!("gallery, {count} queries"), &got, &want, EXACT);
    }
}

#[test]
fn a_gallery_wider_than_one_selection_dispatch_matches_brute_force() {
    // 40,000 references: the k-nearest selection scans them in several dispatches (one pass
    // would overrun lavapipe's 65,535 loop iterations)
    // (ops::topk::columns_per_dispatch), and the chunks of queries are ragged.
    let (g, gl) = integer_clusters(13, 40_000, 2, 10);
    let (q, ql) = integer_clusters(14, 37, 2, 10);
    let ks = [1, 2, 4, 8];
    let got = evaluate_retrieval(
        gpu(),
        &q,
        &ql,
        2,
        References::Gallery {
            embeddings: &g,
            labels: &gl,
        },
        &RetrievalOptions {
            chunk_bytes: 16 * 40_000 * 4,
            ..options(PairwiseMetric::Euclidean, &ks)
        },
    )
    .unwrap();
    let (want, _) = reference(
        PairwiseMetric::Euclidean,
        &q,
        &ql,
        &g,
        &gl,
        &[None; 37],
        2,
        &ks,
        0.0,
    );
    assert_metrics("gallery of 40,000", &got, &want, EXACT);
}

#[test]
fn cosine_matches_brute_force_up_to_near_ties() {
    for (seed, &(n, dim)) in [(50, 4), (61, 7)].iter().enumerate() {
        let mut r = rng(20 + seed as u64);
        let labels: Vec<u8> = (0..n).map(|_| r.random_range(0..3)).collect();
        // Class-dependent mean direction plus noise, some rows scaled far out (cosine must
        // not see the length).
        let e: Vec<f32> = (0..n * dim)
            .map(|i| {
                let c = labels[i / dim] as usize;
                let base = if i % dim == c { 1.0 } else { 0.0 };
                let scale = if (i / dim) % 5 == 0 { 30.0 } else { 1.0 };
                (base + r.random_range(-0.8..0.8f32)) * scale
            })
            .collect();
        let ks = [1, 2, 4, 8];
        let got = evaluate_retrieval(
            gpu(),
            &e,
            &labels,
            dim,
            References::LeaveOneOut,
            &RetrievalOptions {
                chunk_bytes: (9 * n * 4) as u64,
                ..options(PairwiseMetric::Cosine, &ks)
            },
        )
        .unwrap();
        let exclude: Vec<Option<usize>> = (0..n).map(Some).collect();
        let (want, ambiguous) = reference(
            PairwiseMetric::Cosine,
            &e,
            &labels,
            &e,
            &labels,
            &exclude,
            dim,
            &ks,
            1e-5,
        );
        let tol = ambiguous as f64 / want.queries as f64 + EXACT;
        assert!(
            ambiguous * 5 < n,
            "{ambiguous} of {n} queries near a tie: choose other data"
        );
        assert_metrics(&format!("cosine {n}x{dim}"), &got, &want, tol);
        // The data separate the classes under cosine but not under Euclidean (long rows).
        let euclidean = evaluate_retrieval(
            gpu(),
            &e,
            &labels,
            dim,
            References::LeaveOneOut,
            &options(PairwiseMetric::Euclidean, &ks),
        )
        .unwrap();
        assert!(
            got.map_at_r > euclidean.map_at_r,
            "cosine MAP@R {} vs euclidean {}",
            got.map_at_r,
            euclidean.map_at_r
        );
    }
}

#[test]
fn sampled_queries_search_the_whole_set() {
    let (e, labels) = integer_clusters(30, 120, 3, 4);
    let opts = RetrievalOptions {
        max_queries: Some(25),
        sample_seed: 5,
        ..options(PairwiseMetric::Euclidean, &[1, 2, 4])
    };
    let got = evaluate_retrieval(gpu(), &e, &labels, 3, References::LeaveOneOut, &opts).unwrap();
    let chosen = stratified_sample(&labels, 25, 5);
    let q: Vec<f32> = chosen
        .iter()
        .flat_map(|&i| e[i as usize * 3..i as usize * 3 + 3].to_vec())
        .collect();
    let ql: Vec<u8> = chosen.iter().map(|&i| labels[i as usize]).collect();
    let exclude: Vec<Option<usize>> = chosen.iter().map(|&i| Some(i as usize)).collect();
    let (want, _) = reference(
        PairwiseMetric::Euclidean,
        &q,
        &ql,
        &e,
        &labels,
        &exclude,
        3,
        &[1, 2, 4],
        0.0,
    );
    assert_metrics("sampled", &got, &want, EXACT);
    assert_eq!(got.references, 120);
    let s = got.sample.expect("a sample");
    assert_eq!((s.drawn, s.of, s.seed), (25, 120, 5));
    assert!(
        got.to_string()
            .contains("25 queries sampled from 120 with seed 5")
    );
}

#[test]
fn stratified_sample_is_proportional_seeded_and_distinct() {
    // 60 of class 0, 30 of class 1, 10 of class 2; 20 drawn → 12, 6, 2.
    let labels: Vec<u8> = (0..100)
        .map(|i| {
            if i % 10 < 6 {
                0
            } else if i % 10 < 9 {
                1
            } else {
                2
            }
        })
        .collect();
    let s = stratified_sample(&labels, 20, 1);
    assert_eq!(s.len(), 20);
    assert!(s.windows(2).all(|w| w[0] < w[1]), "ascending and distinct");
    let count = |c| s.iter().filter(|&&i| labels[i as usize] == c).count();
    assert_eq!((count(0), count(1), count(2)), (12, 6, 2));
    assert_eq!(s, stratified_sample(&labels, 20, 1));
    assert_ne!(s, stratified_sample(&labels, 20, 2));
    // Remainders: 7 of (60, 30, 10) → quotas 4.2, 2.1, 0.7 → 4, 2, 0 + 1 to class 2.
    let s = stratified_sample(&labels, 7, 3);
    let count = |c| s.iter().filter(|&&i| labels[i as usize] == c).count();
    assert_eq!((count(0), count(1), count(2)), (4, 2, 1));
    assert_eq!(stratified_sample(&labels, 500, 0).len(), 100);
}

#[test]
fn pixel_baseline_flattens_and_normalises_as_the_model_input() {
    // 3×2 images of 12 items, 3 classes; the baseline must equal the metrics of the rows
    // (p/255 − shift)·scale written out here.
    let mut r = rng(40);
    let labels: Vec<u8> = (0..12).map(|i| (i % 3) as u8).collect();
    let images: Vec<u8> = (0..12 * 6)
        .map(|_| r.random_range(0..=255u32) as u8)
        .collect();
    let set = ImageSet::new(images.clone(), labels.clone(), 3, 2).unwrap();
    let norm = PixelNorm::standardize(0.3, 0.2);
    let rows: Vec<f32> = images
        .iter()
        .map(|&p| (p as f32 / 255.0 - 0.3) * 5.0)
        .collect();
    for metric in [PairwiseMetric::Euclidean, PairwiseMetric::Cosine] {
        let opts = options(metric, &[1, 2]);
        let got = retrieval::pixel_baseline(gpu(), &set, None, norm, &opts).unwrap();
        let want =
            evaluate_retrieval(gpu(), &rows, &labels, 6, References::LeaveOneOut, &opts).unwrap();
        assert_eq!(got, want, "{metric:?}");
        let exclude: Vec<Option<usize>> = (0..12).map(Some).collect();
        let (exact, ambiguous) = reference(
            metric,
            &rows,
            &labels,
            &rows,
            &labels,
            &exclude,
            6,
            &[1, 2],
            1e-5,
        );
        let tol = ambiguous as f64 / 12.0 + EXACT;
        assert_metrics(&format!("pixels {metric:?}"), &got, &exact, tol);
    }
}

#[test]
fn bad_inputs_are_refused_with_a_reason() {
    let run = |e: &[f32], l: &[u8], ks: &[usize]| {
        evaluate_retrieval(
            gpu(),
            e,
            l,
            1,
            References::LeaveOneOut,
            &options(PairwiseMetric::Euclidean, ks),
        )
    };
    let e = [0.0, 1.0, 2.0];
    let l = [0, 0, 1];
    assert!(run(&e[..2], &l, &[1]).is_err(), "length mismatch");
    let k3 = run(&e, &l, &[3]).unwrap_err().to_string();
    assert!(k3.contains("1..=2"), "{k3}"); // leave-one-out: 2 references per query
    assert!(run(&e, &l, &[0]).is_err());
    let nan = run(&[0.0, f32::NAN, 2.0], &l, &[1])
        .unwrap_err()
        .to_string();
    assert!(nan.contains("not finite"), "{nan}");
}

#[test]
fn nearest_lists_match_brute_force_across_chunks() {
    // Integer clusters tie often; a 160-byte budget is one query row per chunk of 40
    // references, so every query is its own chunk, and the whole set is one.
    let (g, _) = integer_clusters(21, 40, 3, 4);
    let (q, _) = integer_clusters(22, 9, 3, 4);
    for metric in [PairwiseMetric::Euclidean, PairwiseMetric::Cosine] {
        let brute = match metric {
            PairwiseMetric::Euclidean => {
                cpu::distance::pairwise_euclidean_forward(&q, &g, 9, 40, 3)
            }
            PairwiseMetric::Cosine => cpu::distance::pairwise_cosine_forward(&q, &g, 9, 40, 3),
        };
        for chunk_bytes in [160, 1 << 20] {
            let got = retrieval::nearest(gpu(), &q, &g, 3, metric, (5, chunk_bytes)).unwrap();
            assert_eq!(got.len(), 9);
            for (i, row) in got.iter().enumerate() {
                let mut want: Vec<(u32, f32)> = (0..40u32)
                    .map(|j| (j, brute[i * 40 + j as usize]))
                    .collect();
                want.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
                for (k, (&(j, d), &(wj, wd))) in row.iter().zip(&want).enumerate() {
                    // Distances within f32 rounding of the CPU's; the lists equal where the
                    // k-th distance is not within that rounding of another (a near-tie).
                    assert!(
                        (d - wd).abs() <= 1e-5 * wd.abs().max(1.0),
                        "{metric:?} q{i} #{k}: {d} vs {wd}"
                    );
                    let near_tie = want
                        .iter()
                        .any(|&(o, od)| o != wj && (od - wd).abs() <= 1e-5 * wd.abs().max(1.0));
                    assert!(near_tie || j == wj, "{metric:?} q{i} #{k}: {j} vs {wj}");
                }
            }
        }
    }
    let err = retrieval::nearest(gpu(), &q, &g, 3, PairwiseMetric::Euclidean, (65, 1 << 20));
    assert!(err.is_err(), "k over the selection's 64 is refused");
}
