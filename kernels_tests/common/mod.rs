//! Shared harness of the kernel tests: one GPU for the whole binary, the matrix of points
//! (kernel path × element type × shape) a test body runs over, seeded random inputs, error
//! bounds, and central finite differences in f64.
//!
//! A kernel test is one body run at every point of a declared matrix: build random inputs
//! for the point, run the path's GPU launcher and the CPU reference of `siamese_gpu::cpu`,
//! compare under a stated bound, and name the point in every failure message. Shapes are
//! data beside the test (odd sizes, batch 1, the reference network's shapes).

use std::fmt::{self, Debug, Display};
use std::io::Write;
use std::sync::OnceLock;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use siamese_gpu::{DType, Gpu, Kernel, Tensor};

/// Unit roundoff of f32 (half the machine epsilon).
pub const U32: f64 = f32::EPSILON as f64 / 2.0;

/// Unit roundoff of f16 (2⁻¹¹): storing an f32 value as f16 moves it by at most U16·|v|
/// (normal range, round to nearest even).
pub const U16: f64 = 1.0 / 2048.0;

/// The device every test shares. Without an adapter the binary prints the
/// engine's actionable message (e.g. `apt-get install mesa-vulkan-drivers`) once and exits
/// with status 1: every test would fail the same way, and a panic per test buries the advice.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| match Gpu::new() {
        Ok(gpu) => {
            eprintln!("kernel tests on {}", gpu.adapter());
            gpu
        }
        Err(e) => {
            // Straight to the stderr handle: the test harness captures eprintln! output.
            let _ = writeln!(std::io::stderr(), "error: {e}");
            std::process::exit(1);
        }
    })
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// `n` values uniform in [lo, hi).
pub fn uniform(rng: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

pub fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

pub fn abs(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x.abs()).collect()
}

pub fn upload(data: &[f32], shape: &[usize]) -> Tensor {
    gpu().upload_f32(data, shape).expect("upload")
}

/// `data` rounded to the nearest f16 and widened back: what an f16 tensor holds.
pub fn round_f16(data: &[f32]) -> Vec<f32> {
    data.iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect()
}

pub fn zeros_f16(shape: &[usize]) -> Tensor {
    gpu().zeros(shape, DType::F16).expect("allocate")
}

/// Whether the adapter runs f16 shaders. Tests of the f16 variants print a note and pass
/// where it does not (lavapipe does run them).
pub fn has_f16() -> bool {
    let has = gpu().has_f16();
    if !has {
        eprintln!(
            "note: {} has no SHADER_F16; f16 variants not tested",
            gpu().adapter()
        );
    }
    has
}

/// Both float element types, for a kernel with an f16 variant (mixed precision).
pub const DTYPES: [DType; 2] = [DType::F32, DType::F16];

/// f32 alone: kernels without an f16 variant, and the finite-difference checks (which hold
/// the f32 GPU gradient against f64 differences).
pub const F32_ONLY: [DType; 1] = [DType::F32];

/// One point of a kernel test's matrix: kernel path × element type × shape, and the seed of
/// its inputs. Every failure message prints it (`{point}`), so a failure names its point.
#[derive(Debug, Clone, Copy)]
pub struct Point<P, S> {
    pub path: P,
    pub dtype: DType,
    pub shape: S,
    /// The shape's index in its list; each test adds its own offset, so that two tests of
    /// one shape draw different inputs.
    pub seed: u64,
}

impl<P: Debug, S: Debug> Display for Point<P, S> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        // A kernel with a single path declares it as `()`: there is nothing to tell apart.
        if size_of::<P>() > 0 {
            write!(f, "{:?} ", self.path)?;
        }
        write!(f, "{:?} {:?}", self.dtype, self.shape)
    }
}

/// The points of `paths` × `dtypes` × `shapes(path)`. f16 points are left out where the
/// adapter has no SHADER_F16 ([`has_f16`] prints a note saying so).
pub fn matrix<P: Copy, S: Copy + 'static>(
    paths: &[P],
    dtypes: &[DType],
    shapes: impl Fn(P) -> &'static [S],
) -> Vec<Point<P, S>> {
    let dtypes: Vec<DType> = dtypes
        .iter()
        .copied()
        .filter(|&d| d != DType::F16 || has_f16())
        .collect();
    let mut points = Vec::new();
    for &path in paths {
        for &dtype in &dtypes {
            for (i, &shape) in shapes(path).iter().enumerate() {
                points.push(Point {
                    path,
                    dtype,
                    shape,
                    seed: i as u64,
                });
            }
        }
    }
    points
}

/// The matrix of a kernel with a single path: `dtypes` × `shapes`.
pub fn dtype_matrix<S: Copy + 'static>(
    dtypes: &[DType],
    shapes: &'static [S],
) -> Vec<Point<(), S>> {
    matrix(&[()], dtypes, |()| shapes)
}

/// `data` as the values a tensor of `dtype` holds: rounded to f16 for f16, else unchanged.
pub fn as_dtype(data: &[f32], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F16 => round_f16(data),
        _ => data.to_vec(),
    }
}

/// Uploads `data` as a tensor of float `dtype` (f16 rounds it, as [`as_dtype`]).
pub fn upload_as(data: &[f32], shape: &[usize], dtype: DType) -> Tensor {
    gpu().upload_floats(data, shape, dtype).expect("upload")
}

pub fn zeros_as(shape: &[usize], dtype: DType) -> Tensor {
    gpu().zeros(shape, dtype).expect("allocate")
}

/// The bound of an output computed in f32 within `f32_bound` of `want`, then stored as
/// `dtype`: unchanged for f32; for f16 the store adds one rounding, U16·(|want| + bound)
/// (round to nearest), plus 2⁻²⁵ for results in f16's subnormal range.
pub fn stored_bound(f32_bound: Vec<f64>, want: &[f32], dtype: DType) -> Vec<f64> {
    match dtype {
        DType::F16 => want
            .iter()
            .zip(f32_bound)
            .map(|(&w, b)| b + U16 * (w.abs() as f64 + b) + 2f64.powi(-25))
            .collect(),
        _ => f32_bound,
    }
}

/// Runs the kernel (one submission) and reads `out` (f32 or f16) back as f32.
pub fn run_and_read_floats(kernel: &Kernel, out: &Tensor) -> Vec<f32> {
    gpu().run(&[kernel]);
    gpu().read_floats(out).expect("readback")
}

pub fn zeros(shape: &[usize]) -> Tensor {
    gpu().zeros(shape, DType::F32).expect("allocate")
}

/// Runs the kernel (one submission) and reads `out` back.
pub fn run_and_read(kernel: &Kernel, out: &Tensor) -> Vec<f32> {
    gpu().run(&[kernel]);
    gpu().read_f32(out).expect("readback")
}

/// Higham's γ_n = n·u / (1 − n·u): the relative error bound of an n-term f32 sum or dot
/// product in any order, relative to Σ|terms|. Two implementations summing in different
/// orders (GPU vs CPU) differ by at most 2·γ_n·Σ|terms|.
pub fn gamma(n: usize) -> f64 {
    let nu = n as f64 * U32;
    nu / (1.0 - nu)
}

/// Asserts |got[i] − want[i]| ≤ bound[i] for every i, reporting the worst offender.
pub fn assert_within(what: &str, got: &[f32], want: &[f32], bound: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    let mut worst: Option<(usize, f64)> = None;
    for i in 0..got.len() {
        let err = (got[i] as f64 - want[i] as f64).abs();
        let excess = err - bound[i];
        if (excess.is_nan() || excess > 0.0) && worst.is_none_or(|(_, e)| excess > e) {
            worst = Some((i, excess));
        }
    }
    if let Some((i, _)) = worst {
        panic!(
            "{what}: element {i} is {} where the reference gives {} (|diff| {:e} > bound {:e})",
            got[i],
            want[i],
            (got[i] as f64 - want[i] as f64).abs(),
            bound[i]
        );
    }
}

/// Asserts |got − want| ≤ atol + rtol·|want| elementwise.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f64, rtol: f64) {
    let bound: Vec<f64> = want
        .iter()
        .map(|&w| atol + rtol * (w as f64).abs())
        .collect();
    assert_within(what, got, want, &bound);
}

/// Bound for a linear op (a sum of products) computed in f32 in two different orders:
/// 2·γ_n·Σ|terms| per element, where `magnitude[i]` = Σ|terms| (the reference run on |inputs|)
/// plus a floor of a few ulps of the magnitude for the final rounding.
pub fn linear_bound(terms_per_output: usize, magnitude: &[f32]) -> Vec<f64> {
    magnitude
        .iter()
        .map(|&m| (2.0 * gamma(terms_per_output + 1) + 4.0 * U32) * m as f64 + 1e-30)
        .collect()
}

/// Central finite differences of a scalar function: ∂f/∂x_i ≈ (f(x + h·e_i) − f(x − h·e_i)) / 2h.
pub fn finite_difference(f: impl Fn(&[f64]) -> f64, x: &[f64], h: f64) -> Vec<f64> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = xp[i];
            xp[i] = orig + h;
            let up = f(&xp);
            xp[i] = orig - h;
            let down = f(&xp);
            xp[i] = orig;
            (up - down) / (2.0 * h)
        })
        .collect()
}

/// Σ r_i·y_i: the scalar whose gradient a backward with upstream `r` computes.
pub fn dot(r: &[f64], y: &[f64]) -> f64 {
    r.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// Step and tolerance of the f64 finite-difference checks. With h = 1e-5 the central
/// difference's truncation error is O(h²·|f'''|) ≈ 1e-10 for the smooth functions here and
/// its rounding error O(ε₆₄·|f|/h) ≈ 1e-11; 1e-6 relative (plus 1e-7 absolute) is far above
/// both and far below any real gradient bug.
pub const FD_STEP: f64 = 1e-5;
pub const FD_ATOL: f64 = 1e-7;
pub const FD_RTOL: f64 = 1e-6;

/// Asserts an analytic f64 gradient equals finite differences within FD_ATOL + FD_RTOL.
pub fn assert_matches_fd(what: &str, analytic: &[f64], fd: &[f64]) {
    assert_eq!(analytic.len(), fd.len(), "{what}: length differs");
    for (i, (&a, &n)) in analytic.iter().zip(fd).enumerate() {
        let tol = FD_ATOL + FD_RTOL * n.abs().max(a.abs());
        assert!(
            (a - n).abs() <= tol,
            "{what}: element {i}: analytic {a} vs finite difference {n} (tol {tol:e})"
        );
    }
}

/// The f32 GPU gradient against the f64 finite-difference gradient: the GPU's own f32
/// rounding dominates, so the bound is `rtol` relative to the largest gradient entry.
pub fn assert_gpu_matches_fd(what: &str, gpu_grad: &[f32], fd: &[f64], rtol: f64) {
    assert_eq!(gpu_grad.len(), fd.len(), "{what}: length differs");
    let scale = fd.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-6);
    for (i, (&g, &n)) in gpu_grad.iter().zip(fd).enumerate() {
        assert!(
            (g as f64 - n).abs() <= rtol * scale,
            "{what}: element {i}: GPU {g} vs finite difference {n} (tol {:e})",
            rtol * scale
        );
    }
}
