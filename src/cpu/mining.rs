//! Reference for `shaders/mining.wgsl`: triplet losses mined from a distance matrix
//! `dm [N, N]` (row-major) with class `labels [N]`. Each function mirrors one entry point,
//! with the same loops in the same order, including the reduction's strided-then-tree
//! summation, so that in f32 it follows the GPU's rounding step for step.
//!
//! Ties pick the lowest index (candidates scanned upwards, replaced only when strictly
//! better). Only row a of dm is read for anchor a.

use super::Real;
use crate::vocab::Miner;

/// Columns of the first pass's partial sums (`ROW_STATS` in `shaders/mining.wgsl`).
pub const ROW_STATS: usize = 5;

/// Invocations of the GPU reduction (`REDUCE_WG` in the shader).
const REDUCE_WG: usize = 256;

/// (hardest positive, hardest negative) of anchor `a`: the farthest other member of its
/// class and the nearest member of another class, `None` where there is none.
fn hardest<T: Real>(
    dm: &[T],
    labels: &[u32],
    n: usize,
    a: usize,
) -> (Option<usize>, Option<usize>) {
    let (mut pos, mut neg): (Option<usize>, Option<usize>) = (None, None);
    for j in 0..n {
        if j == a {
            continue;
        }
        let d = dm[a * n + j];
        if labels[j] == labels[a] {
            if pos.is_none_or(|q| d > dm[a * n + q]) {
                pos = Some(j);
            }
        } else if neg.is_none_or(|q| d < dm[a * n + q]) {
            neg = Some(j);
        }
    }
    (pos, neg)
}

/// The semi-hard negative of the pair (a, ·) with distance `d_ap`: the nearest negative
/// farther than d_ap, else the farthest negative; `None` if `a` has no negative.
fn semi_hard_negative<T: Real>(
    dm: &[T],
    labels: &[u32],
    n: usize,
    a: usize,
    d_ap: T,
) -> Option<usize> {
    let (mut outside, mut inside): (Option<usize>, Option<usize>) = (None, None);
    for k in 0..n {
        if labels[k] == labels[a] {
            continue;
        }
        let d = dm[a * n + k];
        if d > d_ap && outside.is_none_or(|q| d < dm[a * n + q]) {
            outside = Some(k);
        }
        if inside.is_none_or(|q| d > dm[a * n + q]) {
            inside = Some(k);
        }
    }
    outside.or(inside)
}

/// Per-row accumulator: Σ hinge, mined, active, Σ d_ap, Σ d_an.
#[derive(Default, Clone, Copy)]
struct Row<T> {
    hinge: T,
    mined: T,
    active: T,
    d_ap: T,
    d_an: T,
}

impl<T: Real> Row<T> {
    fn add(&mut self, d_ap: T, d_an: T, margin: T) {
        let t = d_ap - d_an + margin;
        self.hinge += t.max(T::zero());
        self.mined += T::one();
        if t > T::zero() {
            self.active += T::one();
        }
        self.d_ap += d_ap;
        self.d_an += d_an;
    }

    fn write(self, out: &mut [T]) {
        out.copy_from_slice(&[self.hinge, self.mined, self.active, self.d_ap, self.d_an]);
    }
}

/// `rows [N, 5]` of batch-hard: one triplet per anchor that has a positive and a negative.
pub fn batch_hard_rows<T: Real>(dm: &[T], labels: &[u32], n: usize, margin: T) -> Vec<T> {
    let mut rows = vec![T::zero(); n * ROW_STATS];
    for a in 0..n {
        let mut row = Row::default();
        if let (Some(p), Some(q)) = hardest(dm, labels, n, a) {
            row.add(dm[a * n + p], dm[a * n + q], margin);
        }
        row.write(&mut rows[a * ROW_STATS..(a + 1) * ROW_STATS]);
    }
    rows
}

fn is_pair(labels: &[u32], a: usize, j: usize) -> bool {
    j != a && labels[j] == labels[a]
}

/// `rows [N², 5]` of semi-hard: row a·N + j holds the triplet of the pair (a, j) when j is a
/// positive of a and a has a negative, zeros elsewhere.
pub fn semi_hard_pairs<T: Real>(dm: &[T], labels: &[u32], n: usize, margin: T) -> Vec<T> {
    let mut rows = vec![T::zero(); n * n * ROW_STATS];
    for e in 0..n * n {
        let (a, p) = (e / n, e % n);
        let mut row = Row::default();
        if is_pair(labels, a, p)
            && let Some(q) = semi_hard_negative(dm, labels, n, a, dm[e])
        {
            row.add(dm[e], dm[a * n + q], margin);
        }
        row.write(&mut rows[e * ROW_STATS..(e + 1) * ROW_STATS]);
    }
    rows
}

/// `rows [N², 5]` of batch-all: row a·N + j sums the triplets (a, j, q) over a's negatives q
/// when j is a positive of a, zeros elsewhere.
pub fn batch_all_pairs<T: Real>(dm: &[T], labels: &[u32], n: usize, margin: T) -> Vec<T> {
    let mut rows = vec![T::zero(); n * n * ROW_STATS];
    for e in 0..n * n {
        let (a, p) = (e / n, e % n);
        let mut row = Row::default();
        if is_pair(labels, a, p) {
            for q in 0..n {
                if labels[q] != labels[a] {
                    row.add(dm[e], dm[a * n + q], margin);
                }
            }
        }
        row.write(&mut rows[e * ROW_STATS..(e + 1) * ROW_STATS]);
    }
    rows
}

/// The first pass of `miner`: `rows [R, 5]`, R = `miner.partial_rows(n)`.
pub fn mining_rows<T: Real>(miner: Miner, dm: &[T], labels: &[u32], n: usize, margin: T) -> Vec<T> {
    match miner {
        Miner::BatchHard => batch_hard_rows(dm, labels, n, margin),
        Miner::SemiHard => semi_hard_pairs(dm, labels, n, margin),
        Miner::BatchAll => batch_all_pairs(dm, labels, n, margin),
    }
}

/// Column `c` of `rows [R, 5]` summed as the shader does: 256 strided partial sums, then a
/// tree.
fn column_sum<T: Real>(rows: &[T], c: usize) -> T {
    let r_len = rows.len() / ROW_STATS;
    let mut partial = [T::zero(); REDUCE_WG];
    for (lid, s) in partial.iter_mut().enumerate() {
        let mut r = lid;
        while r < r_len {
            *s += rows[r * ROW_STATS + c];
            r += REDUCE_WG;
        }
    }
    let mut stride = REDUCE_WG / 2;
    while stride > 0 {
        for lid in 0..stride {
            let v = partial[lid + stride];
            partial[lid] += v;
        }
        stride /= 2;
    }
    partial[0]
}

/// (loss, stats) from `rows [R, 5]`: loss = Σ hinge / (mined, or active for batch-all),
/// 0 when that count is 0; stats = (mined, active, mean d_ap, mean d_an).
pub fn mining_reduce<T: Real>(miner: Miner, rows: &[T]) -> (T, [T; 4]) {
    let hinge = column_sum(rows, 0);
    let mined = column_sum(rows, 1);
    let active = column_sum(rows, 2);
    let d_ap = column_sum(rows, 3);
    let d_an = column_sum(rows, 4);
    let count = if miner.averages_active() {
        active
    } else {
        mined
    };
    let ratio = |x: T, c: T| if c == T::zero() { T::zero() } else { x / c };
    (
        ratio(hinge, count),
        [mined, active, ratio(d_ap, mined), ratio(d_an, mined)],
    )
}

/// The whole forward: the first pass, then the reduction.
pub fn forward<T: Real>(
    miner: Miner,
    dm: &[T],
    labels: &[u32],
    n: usize,
    margin: T,
) -> (T, [T; 4]) {
    mining_reduce(miner, &mining_rows(miner, dm, labels, n, margin))
}

/// dloss / normaliser, as the backward entries read it from the forward's stats.
fn scale<T: Real>(miner: Miner, stats: &[T; 4], dloss: T) -> T {
    let count = if miner.averages_active() {
        stats[1]
    } else {
        stats[0]
    };
    if count == T::zero() {
        T::zero()
    } else {
        dloss / count
    }
}

/// ddm [N, N] of batch-hard: +s at (a, hardest p), −s at (a, hardest n) where the hinge is on.
pub fn batch_hard_backward<T: Real>(
    dm: &[T],
    labels: &[u32],
    n: usize,
    margin: T,
    stats: &[T; 4],
    dloss: T,
) -> Vec<T> {
    let mut ddm = vec![T::zero(); n * n];
    for a in 0..n {
        let (Some(p), Some(q)) = hardest(dm, labels, n, a) else {
            continue;
        };
        // Subgradient 0 at the kink.
        if dm[a * n + p] - dm[a * n + q] + margin > T::zero() {
            let s = scale(Miner::BatchHard, stats, dloss);
            ddm[a * n + p] = s;
            ddm[a * n + q] = -s;
        }
    }
    ddm
}

/// `choice [N, N]`: the negative of the pair (a, j) where its hinge is on, `None` elsewhere
/// (the first dispatch of the semi-hard backward).
pub fn semi_hard_choices<T: Real>(
    dm: &[T],
    labels: &[u32],
    n: usize,
    margin: T,
) -> Vec<Option<usize>> {
    (0..n * n)
        .map(|e| {
            let a = e / n;
            if !is_pair(labels, a, e % n) {
                return None;
            }
            // Subgradient 0 at the kink.
            semi_hard_negative(dm, labels, n, a, dm[e])
                .filter(|&q| dm[e] - dm[a * n + q] + margin > T::zero())
        })
        .collect()
}

/// ddm [N, N] of semi-hard: +s at each active pair (a, j), −s at (a, j) per active pair of a
/// whose negative is j.
pub fn semi_hard_backward<T: Real>(
    dm: &[T],
    labels: &[u32],
    n: usize,
    margin: T,
    stats: &[T; 4],
    dloss: T,
) -> Vec<T> {
    let choice = semi_hard_choices(dm, labels, n, margin);
    let s = scale(Miner::SemiHard, stats, dloss);
    let mut ddm = vec![T::zero(); n * n];
    for e in 0..n * n {
        let (a, j) = (e / n, e % n);
        let mut count = T::zero();
        if is_pair(labels, a, j) {
            if choice[e].is_some() {
                count = T::one();
            }
        } else if labels[j] != labels[a] {
            for p in 0..n {
                if choice[a * n + p] == Some(j) {
                    count += -T::one();
                }
            }
        }
        ddm[e] = s * count;
    }
    ddm
}

/// ddm [N, N] of batch-all: s × (active triplets with j as positive) − s × (with j as negative).
pub fn batch_all_backward<T: Real>(
    dm: &[T],
    labels: &[u32],
    n: usize,
    margin: T,
    stats: &[T; 4],
    dloss: T,
) -> Vec<T> {
    let mut ddm = vec![T::zero(); n * n];
    let s = scale(Miner::BatchAll, stats, dloss);
    for a in 0..n {
        for j in 0..n {
            // One GPU invocation per element a·N + j.
            let mut count = T::zero();
            if j != a {
                let d_aj = dm[a * n + j];
                let positive = labels[j] == labels[a];
                for k in 0..n {
                    if k == a {
                        continue;
                    }
                    let d_ak = dm[a * n + k];
                    if positive && labels[k] != labels[a] && d_aj - d_ak + margin > T::zero() {
                        count += T::one();
                    }
                    if !positive && labels[k] == labels[a] && d_ak - d_aj + margin > T::zero() {
                        count += -T::one();
                    }
                }
            }
            ddm[a * n + j] = s * count;
        }
    }
    ddm
}

/// The backward of `miner`, given the forward's `stats` and the upstream `dloss`.
pub fn backward<T: Real>(
    miner: Miner,
    dm: &[T],
    labels: &[u32],
    n: usize,
    margin: T,
    stats: &[T; 4],
    dloss: T,
) -> Vec<T> {
    match miner {
        Miner::BatchHard => batch_hard_backward(dm, labels, n, margin, stats, dloss),
        Miner::SemiHard => semi_hard_backward(dm, labels, n, margin, stats, dloss),
        Miner::BatchAll => batch_all_backward(dm, labels, n, margin, stats, dloss),
    }
}
