//! Reference for `shaders/mining.wgsl`: triplet losses mined from a distance matrix
//! `dm [N, N]` (row-major) with class `labels [N]`. Each function mirrors one entry point,
//! with the same loops in the same order, including the reduction's strided-then-tree
//! summation, so that in f32 it follows the GPU's rounding step for step.
//!
//! Ties pick the lowest index (candidates scanned upwards, replaced only when strictly
//! better). Only row a of dm is read for anchor a.

use super::Real;
use crate::ops::mining::{Miner, ROW_STATS};

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

/// `rows [N, 5]` of semi-hard: one triplet per anchor-positive pair (none for an anchor
/// without negatives).
pub fn semi_hard_rows<T: Real>(dm: &[T], labels: &[u32], n: usize, margin: T) -> Vec<T> {
    let mut rows = vec![T::zero(); n * ROW_STATS];
    for a in 0..n {
        let mut row = Row::default();
        for p in 0..n {
            if p == a || labels[p] != labels[a] {
                continue;
            }
            let d_ap = dm[a * n + p];
            let Some(q) = semi_hard_negative(dm, labels, n, a, d_ap) else {
                break;
            };
            row.add(d_ap, dm[a * n + q], margin);
        }
        row.write(&mut rows[a * ROW_STATS..(a + 1) * ROW_STATS]);
    }
    rows
}

/// `rows [N, 5]` of batch-all: every (a, p, n) with p ≠ a of a's class and n of another.
pub fn batch_all_rows<T: Real>(dm: &[T], labels: &[u32], n: usize, margin: T) -> Vec<T> {
    let mut rows = vec![T::zero(); n * ROW_STATS];
    for a in 0..n {
        let mut row = Row::default();
        for p in 0..n {
            if p == a || labels[p] != labels[a] {
                continue;
            }
            for q in 0..n {
                if labels[q] != labels[a] {
                    row.add(dm[a * n + p], dm[a * n + q], margin);
                }
            }
        }
        row.write(&mut rows[a * ROW_STATS..(a + 1) * ROW_STATS]);
    }
    rows
}

/// The per-row pass of `miner`.
pub fn mining_rows<T: Real>(miner: Miner, dm: &[T], labels: &[u32], n: usize, margin: T) -> Vec<T> {
    match miner {
        Miner::BatchHard => batch_hard_rows(dm, labels, n, margin),
        Miner::SemiHard => semi_hard_rows(dm, labels, n, margin),
        Miner::BatchAll => batch_all_rows(dm, labels, n, margin),
    }
}

/// Column `c` of `rows` summed as the shader does: 256 strided partial sums, then a tree.
fn column_sum<T: Real>(rows: &[T], n: usize, c: usize) -> T {
    let mut partial = [T::zero(); REDUCE_WG];
    for (lid, s) in partial.iter_mut().enumerate() {
        let mut a = lid;
        while a < n {
            *s += rows[a * ROW_STATS + c];
            a += REDUCE_WG;
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

/// (loss, stats) from `rows [N, 5]`: loss = Σ hinge / (mined, or active for batch-all),
/// 0 when that count is 0; stats = (mined, active, mean d_ap, mean d_an).
pub fn mining_reduce<T: Real>(miner: Miner, rows: &[T], n: usize) -> (T, [T; 4]) {
    let hinge = column_sum(rows, n, 0);
    let mined = column_sum(rows, n, 1);
    let active = column_sum(rows, n, 2);
    let d_ap = column_sum(rows, n, 3);
    let d_an = column_sum(rows, n, 4);
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

/// The whole forward: the per-row pass, then the reduction.
pub fn forward<T: Real>(
    miner: Miner,
    dm: &[T],
    labels: &[u32],
    n: usize,
    margin: T,
) -> (T, [T; 4]) {
    mining_reduce(miner, &mining_rows(miner, dm, labels, n, margin), n)
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

/// ddm [N, N] of semi-hard: per active pair, +s at (a, p) and −s summed at (a, its negative).
pub fn semi_hard_backward<T: Real>(
    dm: &[T],
    labels: &[u32],
    n: usize,
    margin: T,
    stats: &[T; 4],
    dloss: T,
) -> Vec<T> {
    let mut ddm = vec![T::zero(); n * n];
    let s = scale(Miner::SemiHard, stats, dloss);
    for a in 0..n {
        for p in 0..n {
            if p == a || labels[p] != labels[a] {
                continue;
            }
            let d_ap = dm[a * n + p];
            let Some(q) = semi_hard_negative(dm, labels, n, a, d_ap) else {
                break;
            };
            if d_ap - dm[a * n + q] + margin > T::zero() {
                ddm[a * n + p] = s;
                let v = ddm[a * n + q] - s;
                ddm[a * n + q] = v;
            }
        }
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
