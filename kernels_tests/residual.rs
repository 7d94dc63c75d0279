//! Residual additions (`shaders/residual.wgsl`): every entry against `cpu::residual` in f32
//! and on f16 tensors (mixed precision), and the gradients against f64 finite differences.
//!
//! In f32, a + b is one correctly rounded addition on both sides and the backwards copy or
//! select dy: exact. In f16 the kernel adds the two f16 values in f32 and rounds once on
//! store, as the reference (in f32) rounded to f16 does: within one f16 rounding.

use crate::common::*;
use siamese_gpu::DType;
use siamese_gpu::cpu::residual as cpu;
use siamese_gpu::ops::residual;

/// Tensor shapes: one element; sizes that are not multiples of the 256-wide workgroup, C off
/// multiples of 4; the maps of a ResNet basic block (64 channels of 56×56 after the stem for
/// 224-pixel inputs, at batch 1; 16 of 32×32 for CIFAR-sized ones).
const SHAPES: &[&[usize]] = &[
    &[1],
    &[7],
    &[3, 5, 17],
    &[2, 3, 7, 7],
    &[1, 64, 56, 56],
    &[3, 16, 32, 32],
];

/// Small shapes for finite differences.
const FD_SHAPES: &[&[usize]] = &[&[1], &[5], &[2, 3, 4]];

/// Uniform in [-2, 2) as a tensor of `dtype` holds it; even seeds set one element in eight of
/// `b` to exactly −a, so that a + b = 0 (the fused ReLU's kink, where its gradient is 0).
fn inputs(len: usize, seed: u64, dtype: DType) -> (Vec<f32>, Vec<f32>) {
    let mut r = rng(seed);
    let a = as_dtype(&uniform(&mut r, len, -2.0, 2.0), dtype);
    let mut b = as_dtype(&uniform(&mut r, len, -2.0, 2.0), dtype);
    if seed.is_multiple_of(2) {
        for i in (0..len).step_by(8) {
            b[i] = -a[i];
        }
    }
    (a, b)
}

/// The bound of a result the reference computes exactly in f32 (a sum, a copy, a select):
/// nothing in f32; one f16 rounding of the f32 result in f16.
fn f16_store(want: &[f32], dtype: DType) -> Vec<f64> {
    stored_bound(vec![0.0; want.len()], want, dtype)
}

#[test]
fn add_forward_matches_cpu() {
    for p in dtype_matrix(&DTYPES, SHAPES) {
        let len = p.shape.iter().product();
        let (a, b) = inputs(len, p.seed, p.dtype);
        let y = zeros_as(p.shape, p.dtype);
        let kernel = residual::add(
            gpu(),
            &upload_as(&a, p.shape, p.dtype),
            &upload_as(&b, p.shape, p.dtype),
            &y,
        )
        .unwrap();
        let got = run_and_read_floats(&kernel, &y);
        let want = cpu::add_forward(&a, &b);
        // One addition, correctly rounded in f32 on both sides: exact; in f16, the f32 sum
        // rounded once on store.
        assert_within(
            &format!("add_forward {p}"),
            &got,
            &want,
            &f16_store(&want, p.dtype),
        );
    }
}

#[test]
fn add_relu_forward_matches_cpu() {
    for p in dtype_matrix(&DTYPES, SHAPES) {
        let len = p.shape.iter().product();
        let (a, b) = inputs(len, 10 + p.seed, p.dtype);
        let y = zeros_as(p.shape, p.dtype);
        let kernel = residual::add_relu(
            gpu(),
            &upload_as(&a, p.shape, p.dtype),
            &upload_as(&b, p.shape, p.dtype),
            &y,
        )
        .unwrap();
        let got = run_and_read_floats(&kernel, &y);
        let want = cpu::add_relu_forward(&a, &b);
        // The sum as above, then max with 0, which rounds nothing (rounding to f16 keeps
        // the sign, so the ReLU selects alike): exact in f32, one f16 rounding in f16.
        assert_within(
            &format!("add_relu_forward {p}"),
            &got,
            &want,
            &f16_store(&want, p.dtype),
        );
    }
}

/// The gradients of the add's two inputs; `both` false takes the one-input entry (the other
/// input needs no gradient). Every gradient buffer starts as NaN: each must be written.
fn run_add_backward(dy: &[f32], shape: &[usize], dtype: DType, both: bool) -> Vec<Vec<f32>> {
    let nan = vec![f32::NAN; dy.len()];
    let grads: Vec<_> = (0..if both { 2 } else { 1 })
        .map(|_| upload_as(&nan, shape, dtype))
        .collect();
    let kernel = residual::add_backward(
        gpu(),
        &upload_as(dy, shape, dtype),
        grads.first(),
        grads.get(1),
    )
    .unwrap();
    let entry = if both {
        "add_backward"
    } else {
        "add_backward_single"
    };
    assert_eq!(kernel.dispatches()[0].entry(), entry);
    gpu().run(&[&kernel]);
    grads
        .iter()
        .map(|g| gpu().read_floats(g).unwrap())
        .collect()
}

/// add_backward writes dy into both gradients, add_backward_single into the one given.
#[test]
fn add_backward_matches_cpu() {
    for p in dtype_matrix(&DTYPES, SHAPES) {
        let len: usize = p.shape.iter().product();
        let dy = as_dtype(&uniform(&mut rng(20 + p.seed), len, -1.0, 1.0), p.dtype);
        let want = cpu::add_backward(&dy);
        for both in [true, false] {
            for (side, got) in run_add_backward(&dy, p.shape, p.dtype, both)
                .iter()
                .enumerate()
            {
                // A copy of dy, of dx's type: exact.
                assert_within(
                    &format!("add_backward {p} both {both}, gradient {side}"),
                    got,
                    &want,
                    &vec![0.0; len],
                );
            }
        }
    }
}

/// add_relu_backward writes dy·[y > 0] into both gradients, add_relu_backward_single into
/// the one given; y comes from the fused forward's reference, a + b = 0 included (y = 0,
/// gradient 0).
#[test]
fn add_relu_backward_matches_cpu() {
    for p in dtype_matrix(&DTYPES, SHAPES) {
        let len: usize = p.shape.iter().product();
        let (a, b) = inputs(len, 30 + p.seed, p.dtype);
        // The saved y as the tensor holds it: the reference takes the same (rounded) y.
        let y = as_dtype(&cpu::add_relu_forward(&a, &b), p.dtype);
        let dy = as_dtype(&uniform(&mut rng(40 + p.seed), len, -1.0, 1.0), p.dtype);
        let want = cpu::add_relu_backward(&y, &dy);
        for both in [true, false] {
            let nan = vec![f32::NAN; len];
            let grads: Vec<_> = (0..if both { 2 } else { 1 })
                .map(|_| upload_as(&nan, p.shape, p.dtype))
                .collect();
            // One gradient given as db here (as da in add_backward_matches_cpu): either
            // side may be the one that needs it.
            let kernel = residual::add_relu_backward(
                gpu(),
                &upload_as(&y, p.shape, p.dtype),
                &upload_as(&dy, p.shape, p.dtype),
                grads.get(1),
                grads.first(),
            )
            .unwrap();
            let entry = if both {
                "add_relu_backward"
            } else {
                "add_relu_backward_single"
            };
            assert_eq!(kernel.dispatches()[0].entry(), entry, "{p}");
            gpu().run(&[&kernel]);
            for (side, g) in grads.iter().enumerate() {
                // A selection between dy and 0: exact.
                assert_within(
                    &format!("add_relu_backward {p} both {both}, gradient {side}"),
                    &gpu().read_floats(g).unwrap(),
                    &want,
                    &vec![0.0; len],
                );
            }
        }
    }
}

/// L = Σ r ⊙ add(a, b), and with `relu` Σ r ⊙ relu(a + b): the gradient with respect to a
/// and to b is the backward with dy = r, each checked on the CPU in f64 and on the GPU
/// (forward then backward, the fused backward reading the GPU's own y).
#[test]
fn add_backward_matches_finite_differences() {
    for (p, relu) in dtype_matrix(&F32_ONLY, FD_SHAPES)
        .into_iter()
        .flat_map(|p| [(p, false), (p, true)])
    {
        let shape = p.shape;
        let len: usize = shape.iter().product();
        let mut r = rng(100 + p.seed);
        let a32 = uniform(&mut r, len, -1.0, 1.0);
        // b = a shifted by at least 0.1 from −a, so that a + b stays 10⁴ steps from the kink.
        let b32: Vec<f32> = uniform(&mut r, len, 0.1, 1.0)
            .iter()
            .zip(&a32)
            .enumerate()
            .map(|(i, (&d, &a))| if i % 2 == 0 { d - a } else { -d - a })
            .collect();
        let r32 = uniform(&mut r, len, -1.0, 1.0);
        let (a, b, rr) = (to_f64(&a32), to_f64(&b32), to_f64(&r32));
        let forward = |a: &[f64], b: &[f64]| {
            if relu {
                cpu::add_relu_forward(a, b)
            } else {
                cpu::add_forward(a, b)
            }
        };
        let fd_a = finite_difference(|v| dot(&rr, &forward(v, &b)), &a, FD_STEP);
        let fd_b = finite_difference(|v| dot(&rr, &forward(&a, v)), &b, FD_STEP);
        let analytic = if relu {
            cpu::add_relu_backward(&forward(&a, &b), &rr)
        } else {
            cpu::add_backward(&rr)
        };
        let what = format!("add relu {relu} {p}");
        assert_matches_fd(&format!("cpu {what} da"), &analytic, &fd_a);
        assert_matches_fd(&format!("cpu {what} db"), &analytic, &fd_b);

        let (ta, tb, ty) = (upload(&a32, shape), upload(&b32, shape), zeros(shape));
        let (da, db, dy) = (zeros(shape), zeros(shape), upload(&r32, shape));
        let (fwd, bwd) = if relu {
            (
                residual::add_relu(gpu(), &ta, &tb, &ty).unwrap(),
                residual::add_relu_backward(gpu(), &ty, &dy, Some(&da), Some(&db)).unwrap(),
            )
        } else {
            (
                residual::add(gpu(), &ta, &tb, &ty).unwrap(),
                residual::add_backward(gpu(), &dy, Some(&da), Some(&db)).unwrap(),
            )
        };
        gpu().run(&[&fwd, &bwd]);
        // Each gradient is dy or 0, exactly; 1e-5 of the largest entry only absorbs the
        // differences' own f64 error.
        for (side, (t, fd)) in [(&da, &fd_a), (&db, &fd_b)].into_iter().enumerate() {
            assert_gpu_matches_fd(
                &format!("{what} gradient {side}"),
                &gpu().read_f32(t).unwrap(),
                fd,
                1e-5,
            );
        }
    }
}

#[test]
fn residual_launchers_reject_mismatched_tensors() {
    let a = zeros(&[2, 3]);
    let err = residual::add(gpu(), &a, &zeros(&[3, 2]), &zeros(&[2, 3])).unwrap_err();
    assert!(
        err.to_string()
            .contains("add_forward: b must be a F32 tensor of shape [2, 3]"),
        "{err}"
    );
    let err = residual::add_relu(gpu(), &a, &a, &zeros_as(&[2, 3], DType::F16)).unwrap_err();
    assert!(
        err.to_string()
            .contains("y must be a F32 tensor of shape [2, 3], got F16"),
        "{err}"
    );
    let err = residual::add_backward(gpu(), &a, None, None).unwrap_err();
    assert!(
        err.to_string().contains("neither input's gradient"),
        "{err}"
    );
    let err = residual::add_relu_backward(gpu(), &zeros(&[6]), &a, Some(&zeros(&[2, 3])), None)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("saved (the forward output y) must be a F32 tensor of shape [2, 3]"),
        "{err}"
    );
}
