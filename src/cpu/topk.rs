//! Reference for `shaders/topk.wgsl`: the `k` nearest columns of each row of a distance
//! matrix `dm [rows, cols]` (row-major), ascending by (distance, column), skipping column
//! `exclude[r]` of row `r` ([`NO_EXCLUDE`] skips none).

/// `exclude` value of a row that skips no column.
pub const NO_EXCLUDE: u32 = u32::MAX;

/// `(dist [rows, k], index [rows, k])`. A plain sort of every row's (distance, column)
/// pairs, which is the specification the kernel's single-pass insertion must match.
/// Distances must be finite; `k` at most the columns left after the exclusion.
pub fn topk_rows(
    dm: &[f32],
    exclude: &[u32],
    rows: usize,
    cols: usize,
    k: usize,
) -> (Vec<f32>, Vec<u32>) {
    let mut dist = Vec::with_capacity(rows * k);
    let mut index = Vec::with_capacity(rows * k);
    for r in 0..rows {
        let mut row: Vec<(f32, u32)> = (0..cols as u32)
            .filter(|&j| j != exclude[r])
            .map(|j| (dm[r * cols + j as usize], j))
            .collect();
        // partial_cmp, as the kernel's `<`: -0 and 0 tie (and fall back to the column).
        row.sort_by(|x, y| {
            x.0.partial_cmp(&y.0)
                .expect("topk_rows: distances must not be NaN")
                .then(x.1.cmp(&y.1))
        });
        for &(d, j) in &row[..k] {
            dist.push(d);
            index.push(j);
        }
    }
    (dist, index)
}
