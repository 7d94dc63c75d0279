//! k-nearest selection (`shaders/topk.wgsl`) against `cpu::topk`.
//!
//! Selection only compares and copies, so the kernel and the reference must agree exactly,
//! indices and distances bit for bit; the inputs are rounded to a coarse grid so that many
//! distances tie and the lower-column-first rule is exercised.

use crate::common::*;
use rand::RngExt;
use siamese_gpu::DType;
use siamese_gpu::cpu::topk::{self as cpu, NO_EXCLUDE};
use siamese_gpu::ops::topk::{self, K_MAX};

/// (rows, cols, k): one row, one column, k = cols, rows that are not a multiple of the
/// 64-wide workgroup (65, 130), k = K_MAX, a retrieval-like row of 2,000 columns, and rows
/// of 60,000 columns (a gallery of training images), which take several dispatches.
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 9, 4),
    (3, 5, 5),
    (65, 40, 8),
    (130, 200, 1),
    (70, 300, K_MAX),
    (17, 2000, 16),
    (3, 60000, 8),
];

/// Runs the kernel; returns (dist, index).
fn gpu_topk(
    dm: &[f32],
    exclude: &[u32],
    rows: usize,
    cols: usize,
    k: usize,
) -> (Vec<f32>, Vec<u32>) {
    gpu_topk_in_segments(dm, exclude, rows, cols, k, topk::columns_per_dispatch(k))
}

/// Runs the kernel with `segment` columns per dispatch.
fn gpu_topk_in_segments(
    dm: &[f32],
    exclude: &[u32],
    rows: usize,
    cols: usize,
    k: usize,
    segment: usize,
) -> (Vec<f32>, Vec<u32>) {
    let dm_t = upload(dm, &[rows, cols]);
    let ex = gpu().upload_u32(exclude, &[rows]).unwrap();
    let dist = zeros(&[rows, k]);
    let index = gpu().zeros(&[rows, k], DType::U32).unwrap();
    let kernel = topk::topk_rows_in_segments(gpu(), &dm_t, &ex, k, &dist, &index, segment).unwrap();
    let d = run_and_read(&kernel, &dist);
    (d, gpu().read_u32(&index).unwrap())
}

/// Distances on a grid of 1/8 in [0, 4) (many ties), some negative (cosine distances of
/// nearly identical rows can round below 0).
fn grid_matrix(seed: u64, rows: usize, cols: usize) -> Vec<f32> {
    let mut r = rng(seed);
    (0..rows * cols)
        .map(|_| r.random_range(-2..32i32) as f32 / 8.0)
        .collect()
}

#[test]
fn topk_rows_matches_cpu_without_exclusion() {
    for (seed, &(rows, cols, k)) in SHAPES.iter().enumerate() {
        let dm = grid_matrix(seed as u64, rows, cols);
        let exclude = vec![NO_EXCLUDE; rows];
        let got = gpu_topk(&dm, &exclude, rows, cols, k);
        let want = cpu::topk_rows(&dm, &exclude, rows, cols, k);
        assert_eq!(got, want, "topk_rows {rows}x{cols} k={k}");
    }
}

#[test]
fn topk_rows_matches_cpu_skipping_one_column_per_row() {
    for (seed, &(rows, cols, k)) in SHAPES.iter().enumerate() {
        if k == cols {
            continue; // a row with an excluded column has only cols − 1 left
        }
        let dm = grid_matrix(100 + seed as u64, rows, cols);
        let mut r = rng(200 + seed as u64);
        // Mostly a real column, sometimes none, as leave-one-out over a query subset does.
        let exclude: Vec<u32> = (0..rows)
            .map(|_| {
                if r.random_range(0..4) == 0 {
                    NO_EXCLUDE
                } else {
                    r.random_range(0..cols as u32)
                }
            })
            .collect();
        let got = gpu_topk(&dm, &exclude, rows, cols, k);
        let want = cpu::topk_rows(&dm, &exclude, rows, cols, k);
        assert_eq!(got, want, "topk_rows {rows}x{cols} k={k} with exclusion");
    }
}

#[test]
fn topk_rows_breaks_ties_by_lower_column_and_skips_the_excluded_one() {
    // Row 0: all equal → columns 0, 1, 2. Row 1: column 1 excluded, the smallest.
    let dm = [1.0, 1.0, 1.0, 1.0, 0.5, 0.0, 0.5, 0.25];
    let (d, i) = gpu_topk(&dm, &[NO_EXCLUDE, 1], 2, 4, 3);
    assert_eq!(i, [0, 1, 2, 3, 0, 2]);
    assert_eq!(d, [1.0, 1.0, 1.0, 0.25, 0.5, 0.5]);
}

#[test]
fn topk_rows_refuses_k_out_of_range() {
    // (cols, k): more than the columns; more than K_MAX with columns enough.
    for (cols, k) in [(3, 4), (K_MAX + 6, K_MAX + 1)] {
        let dm = upload(&vec![0.0; cols], &[1, cols]);
        let ex = gpu().upload_u32(&[NO_EXCLUDE], &[1]).unwrap();
        let dist = zeros(&[1, k]);
        let index = gpu().zeros(&[1, k], DType::U32).unwrap();
        assert!(
            topk::topk_rows(gpu(), &dm, &ex, k, &dist, &index).is_err(),
            "cols = {cols}, k = {k}"
        );
    }
}

#[test]
fn topk_rows_in_short_segments_matches_cpu() {
    // Segments of k + 1 columns (the least allowed) and a ragged last one; descending runs
    // make nearly every column enter the list, across segment boundaries.
    for (seed, &(rows, cols, k)) in [(5, 23, 4), (66, 100, 9), (2, 64, 1)].iter().enumerate() {
        let mut dm = grid_matrix(300 + seed as u64, rows, cols);
        for (j, v) in dm.iter_mut().enumerate().filter(|(j, _)| j % 3 == 0) {
            *v = -(j as f32);
        }
        let mut r = rng(400 + seed as u64);
        let exclude: Vec<u32> = (0..rows).map(|_| r.random_range(0..cols as u32)).collect();
        let got = gpu_topk_in_segments(&dm, &exclude, rows, cols, k, k + 1);
        let want = cpu::topk_rows(&dm, &exclude, rows, cols, k);
        assert_eq!(
            got,
            want,
            "topk_rows {rows}x{cols} k={k} in segments of {}",
            k + 1
        );
    }
}

#[test]
fn topk_rows_survives_a_row_where_every_column_enters() {
    // Strictly decreasing: each column displaces the k-th and shifts the whole list, the most
    // loop iterations a column can cost (lavapipe cuts a shader's loops off at 65,535).
    let (cols, k) = (20_000, K_MAX);
    let dm: Vec<f32> = (0..cols).map(|j| (cols - j) as f32).collect();
    let got = gpu_topk(&dm, &[NO_EXCLUDE], 1, cols, k);
    assert_eq!(got, cpu::topk_rows(&dm, &[NO_EXCLUDE], 1, cols, k));
}
