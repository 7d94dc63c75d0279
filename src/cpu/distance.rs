//! Reference for `shaders/distance.wgsl`, row-major.
//!
//! Paired rows: `a [B, D]`, `b [B, D]` → one distance per row, `d [B]` (upstream `dd [B]`);
//! `abs_diff` is elementwise, `[B, D]`. Pairwise: `A [B1, D]`, `B [B2, D]` → `Dm [B1, B2]`
//! (upstream `dDm [B1, B2]`). Every backward returns `(da, db)`, the gradients of
//! `L = Σ upstream ⊙ forward(a, b)` with respect to both inputs.

use super::Real;

/// Inside the square root of the Euclidean distance, so that its gradient `(a − b)/d` is 0,
/// not 0/0, at `a = b`.
pub const EUCLIDEAN_EPS: f64 = 1e-12;
/// Lower clamp of each norm in the cosine distance (PyTorch's `cosine_similarity` eps).
pub const COSINE_EPS: f64 = 1e-8;

/// sign(x), with sign(0) = 0: the subgradient of |x| taken at x = 0.
fn sign<T: Real>(x: T) -> T {
    if x > T::zero() {
        T::one()
    } else if x < T::zero() {
        -T::one()
    } else {
        T::zero()
    }
}

/// d[i] = sqrt(Σ_k (a[i,k] − b[i,k])² + 1e-12)
pub fn euclidean_forward<T: Real>(a: &[T], b: &[T], rows: usize, dim: usize) -> Vec<T> {
    squared_euclidean_forward(a, b, rows, dim)
        .into_iter()
        .map(|s| (s + T::from_f64(EUCLIDEAN_EPS)).sqrt())
        .collect()
}

/// da[i,k] = dd[i]·(a[i,k] − b[i,k]) / d[i], db = −da, with `d` the forward output.
pub fn euclidean_backward<T: Real>(
    a: &[T],
    b: &[T],
    d: &[T],
    dd: &[T],
    rows: usize,
    dim: usize,
) -> (Vec<T>, Vec<T>) {
    let mut da = vec![T::zero(); rows * dim];
    let mut db = vec![T::zero(); rows * dim];
    for e in 0..rows * dim {
        let i = e / dim;
        let g = dd[i] * (a[e] - b[e]) / d[i];
        da[e] = g;
        db[e] = -g;
    }
    (da, db)
}

/// d[i] = Σ_k (a[i,k] − b[i,k])²
pub fn squared_euclidean_forward<T: Real>(a: &[T], b: &[T], rows: usize, dim: usize) -> Vec<T> {
    let mut d = vec![T::zero(); rows];
    for i in 0..rows {
        let mut s = T::zero();
        for k in 0..dim {
            let t = a[i * dim + k] - b[i * dim + k];
            s += t * t;
        }
        d[i] = s;
    }
    d
}

/// da[i,k] = 2·dd[i]·(a[i,k] − b[i,k]), db = −da
pub fn squared_euclidean_backward<T: Real>(
    a: &[T],
    b: &[T],
    dd: &[T],
    rows: usize,
    dim: usize,
) -> (Vec<T>, Vec<T>) {
    let mut da = vec![T::zero(); rows * dim];
    let mut db = vec![T::zero(); rows * dim];
    for e in 0..rows * dim {
        let i = e / dim;
        let g = T::from_f64(2.0) * dd[i] * (a[e] - b[e]);
        da[e] = g;
        db[e] = -g;
    }
    (da, db)
}

/// d[i] = Σ_k |a[i,k] − b[i,k]|
pub fn l1_forward<T: Real>(a: &[T], b: &[T], rows: usize, dim: usize) -> Vec<T> {
    let mut d = vec![T::zero(); rows];
    for i in 0..rows {
        let mut s = T::zero();
        for k in 0..dim {
            s += (a[i * dim + k] - b[i * dim + k]).abs();
        }
        d[i] = s;
    }
    d
}

/// da[i,k] = dd[i]·sign(a[i,k] − b[i,k]) (0 at equality), db = −da
pub fn l1_backward<T: Real>(
    a: &[T],
    b: &[T],
    dd: &[T],
    rows: usize,
    dim: usize,
) -> (Vec<T>, Vec<T>) {
    let mut da = vec![T::zero(); rows * dim];
    let mut db = vec![T::zero(); rows * dim];
    for e in 0..rows * dim {
        let i = e / dim;
        let g = dd[i] * sign(a[e] - b[e]);
        da[e] = g;
        db[e] = -g;
    }
    (da, db)
}

/// y[i,k] = |a[i,k] − b[i,k]|: the Keras Siamese head's merge layer, fed to Dense(1).
pub fn abs_diff_forward<T: Real>(a: &[T], b: &[T], rows: usize, dim: usize) -> Vec<T> {
    (0..rows * dim).map(|e| (a[e] - b[e]).abs()).collect()
}

/// da[i,k] = dy[i,k]·sign(a[i,k] − b[i,k]) (0 at equality), db = −da
pub fn abs_diff_backward<T: Real>(
    a: &[T],
    b: &[T],
    dy: &[T],
    rows: usize,
    dim: usize,
) -> (Vec<T>, Vec<T>) {
    let da: Vec<T> = (0..rows * dim).map(|e| dy[e] * sign(a[e] - b[e])).collect();
    let db = da.iter().map(|&g| -g).collect();
    (da, db)
}

/// max(‖x‖, 1e-8) of a row.
fn clamped_norm<T: Real>(x: &[T]) -> T {
    let mut s = T::zero();
    for &v in x {
        s += v * v;
    }
    s.sqrt().max(T::from_f64(COSINE_EPS))
}

fn dot<T: Real>(x: &[T], y: &[T]) -> T {
    let mut s = T::zero();
    for (&u, &v) in x.iter().zip(y) {
        s += u * v;
    }
    s
}

/// d[i] = 1 − ⟨a_i, b_i⟩ / (max(‖a_i‖, 1e-8)·max(‖b_i‖, 1e-8))
pub fn cosine_forward<T: Real>(a: &[T], b: &[T], rows: usize, dim: usize) -> Vec<T> {
    (0..rows)
        .map(|i| {
            let (x, y) = (&a[i * dim..(i + 1) * dim], &b[i * dim..(i + 1) * dim]);
            T::one() - dot(x, y) / (clamped_norm(x) * clamped_norm(y))
        })
        .collect()
}

/// With na = max(‖a_i‖, 1e-8), nb likewise and cos = ⟨a_i, b_i⟩/(na·nb):
/// da_i = dd[i]·(cos·a_i/na² − b_i/(na·nb)), db_i = dd[i]·(cos·b_i/nb² − a_i/(na·nb)),
/// where the first term is absent for a clamped norm (a constant passes no gradient).
pub fn cosine_backward<T: Real>(
    a: &[T],
    b: &[T],
    dd: &[T],
    rows: usize,
    dim: usize,
) -> (Vec<T>, Vec<T>) {
    let eps = T::from_f64(COSINE_EPS);
    let mut da = vec![T::zero(); rows * dim];
    let mut db = vec![T::zero(); rows * dim];
    for i in 0..rows {
        let (x, y) = (&a[i * dim..(i + 1) * dim], &b[i * dim..(i + 1) * dim]);
        let (na, nb) = (clamped_norm(x), clamped_norm(y));
        let cos = dot(x, y) / (na * nb);
        let ca = if na > eps { cos / (na * na) } else { T::zero() };
        let cb = if nb > eps { cos / (nb * nb) } else { T::zero() };
        for k in 0..dim {
            da[i * dim + k] = dd[i] * (ca * x[k] - y[k] / (na * nb));
            db[i * dim + k] = dd[i] * (cb * y[k] - x[k] / (na * nb));
        }
    }
    (da, db)
}

/// Dm[i,j] = sqrt(Σ_k (A[i,k] − B[j,k])² + 1e-12): the difference form, not
/// ‖A_i‖² + ‖B_j‖² − 2⟨A_i, B_j⟩, which cancels for near rows.
pub fn pairwise_euclidean_forward<T: Real>(
    a: &[T],
    b: &[T],
    b1: usize,
    b2: usize,
    dim: usize,
) -> Vec<T> {
    let mut dm = vec![T::zero(); b1 * b2];
    for i in 0..b1 {
        for j in 0..b2 {
            let mut s = T::zero();
            for k in 0..dim {
                let t = a[i * dim + k] - b[j * dim + k];
                s += t * t;
            }
            dm[i * b2 + j] = (s + T::from_f64(EUCLIDEAN_EPS)).sqrt();
        }
    }
    dm
}

/// With w[i,j] = dDm[i,j] / Dm[i,j] (`dm` the forward output):
/// dA[i,k] = Σ_j w[i,j]·(A[i,k] − B[j,k]),  dB[j,k] = Σ_i w[i,j]·(B[j,k] − A[i,k]).
pub fn pairwise_euclidean_backward<T: Real>(
    a: &[T],
    b: &[T],
    dm: &[T],
    ddm: &[T],
    b1: usize,
    b2: usize,
    dim: usize,
) -> (Vec<T>, Vec<T>) {
    let mut da = vec![T::zero(); b1 * dim];
    let mut db = vec![T::zero(); b2 * dim];
    for i in 0..b1 {
        for k in 0..dim {
            let mut s = T::zero();
            for j in 0..b2 {
                s += ddm[i * b2 + j] / dm[i * b2 + j] * (a[i * dim + k] - b[j * dim + k]);
            }
            da[i * dim + k] = s;
        }
    }
    for j in 0..b2 {
        for k in 0..dim {
            let mut s = T::zero();
            for i in 0..b1 {
                s += ddm[i * b2 + j] / dm[i * b2 + j] * (b[j * dim + k] - a[i * dim + k]);
            }
            db[j * dim + k] = s;
        }
    }
    (da, db)
}

/// Dm[i,j] = 1 − ⟨A_i, B_j⟩ / (max(‖A_i‖, 1e-8)·max(‖B_j‖, 1e-8))
pub fn pairwise_cosine_forward<T: Real>(
    a: &[T],
    b: &[T],
    b1: usize,
    b2: usize,
    dim: usize,
) -> Vec<T> {
    let mut dm = vec![T::zero(); b1 * b2];
    for i in 0..b1 {
        let x = &a[i * dim..(i + 1) * dim];
        for j in 0..b2 {
            let y = &b[j * dim..(j + 1) * dim];
            dm[i * b2 + j] = T::one() - dot(x, y) / (clamped_norm(x) * clamped_norm(y));
        }
    }
    dm
}

/// (na [B1], nb [B2]): max(‖row‖, 1e-8) of every row of A and of B.
pub fn cosine_norms<T: Real>(
    a: &[T],
    b: &[T],
    b1: usize,
    b2: usize,
    dim: usize,
) -> (Vec<T>, Vec<T>) {
    (
        (0..b1)
            .map(|i| clamped_norm(&a[i * dim..(i + 1) * dim]))
            .collect(),
        (0..b2)
            .map(|j| clamped_norm(&b[j * dim..(j + 1) * dim]))
            .collect(),
    )
}

/// With na, nb from [`cosine_norms`], c[i,j] = 1 − Dm[i,j] (the cosine, read back from the
/// forward output `dm`) and g = dDm:
/// dA[i,k] = Σ_j g[i,j]·(c[i,j]·A[i,k]/na_i² − B[j,k]/(na_i·nb_j)),
/// dB[j,k] = Σ_i g[i,j]·(c[i,j]·B[j,k]/nb_j² − A[i,k]/(na_i·nb_j)),
/// where the c term is absent for a clamped norm (a constant passes no gradient).
pub fn pairwise_cosine_backward<T: Real>(
    a: &[T],
    b: &[T],
    dm: &[T],
    ddm: &[T],
    b1: usize,
    b2: usize,
    dim: usize,
) -> (Vec<T>, Vec<T>) {
    let eps = T::from_f64(COSINE_EPS);
    let (na, nb) = cosine_norms(a, b, b1, b2, dim);
    let mut da = vec![T::zero(); b1 * dim];
    let mut db = vec![T::zero(); b2 * dim];
    for i in 0..b1 {
        for j in 0..b2 {
            let (g, c) = (ddm[i * b2 + j], T::one() - dm[i * b2 + j]);
            let ca = if na[i] > eps {
                c / (na[i] * na[i])
            } else {
                T::zero()
            };
            let cb = if nb[j] > eps {
                c / (nb[j] * nb[j])
            } else {
                T::zero()
            };
            let inv = T::one() / (na[i] * nb[j]);
            for k in 0..dim {
                let (x, y) = (a[i * dim + k], b[j * dim + k]);
                da[i * dim + k] += g * (ca * x - inv * y);
                db[j * dim + k] += g * (cb * y - inv * x);
            }
        }
    }
    (da, db)
}
