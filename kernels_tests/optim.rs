//! Optimizers (`shaders/optim.wgsl`) against `cpu::optim` over several consecutive steps
//! (with a learning rate schedule set through the built kernel, never a rebuilt one), and one
//! or two steps against numbers computed by hand from PyTorch's documented update rules.
//!
//! The GPU runs in f32; the reference runs in f64 from the same f32 inputs and the same
//! per-step f32 hyperparameters, so each bound is the GPU's own rounding, stated beside it.

use crate::common::*;
use rand::rngs::StdRng;
use siamese_gpu::cpu::optim as cpu;
use siamese_gpu::ops::amp::LossScaler;
use siamese_gpu::ops::optim::{self, Adam, Sgd};

/// One element, sizes off the 256-wide workgroup, and 100 003 (391 workgroups).
const LENS: &[usize] = &[1, 7, 255, 257, 4099, 100_003];
const STEPS: usize = 5;

/// The learning rate of step t (from 1): a linear decay, so every step's uniform differs.
fn schedule(lr0: f32, t: usize) -> f32 {
    lr0 * (1.0 - 0.15 * (t - 1) as f32)
}

/// Fresh gradients for each step, both signs.
fn grads(r: &mut StdRng, n: usize) -> Vec<f32> {
    uniform(r, n, -1.0, 1.0)
}

/// (1 − β1^t, 1 − β2^t) rounded to f32, computed here rather than taken from the launcher
/// so that a wrong correction in `ops::optim` fails the comparison.
fn corrections(beta1: f32, beta2: f32, t: usize) -> (f64, f64) {
    let c = |b: f32| (1.0 - (b as f64).powi(t as i32)) as f32 as f64;
    (c(beta1), c(beta2))
}

fn read(t: &siamese_gpu::Tensor) -> Vec<f32> {
    gpu().read_f32(t).unwrap()
}

// ---------------------------------------------------------------- SGD

const SGD_CONFIGS: &[Sgd] = &[
    // plain SGD
    Sgd {
        lr: 0.1,
        momentum: 0.0,
        weight_decay: 0.0,
        nesterov: false,
    },
    // heavy ball with L2
    Sgd {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 1e-2,
        nesterov: false,
    },
    // Nesterov with L2
    Sgd {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 5e-3,
        nesterov: true,
    },
];

#[test]
fn sgd_step_matches_cpu() {
    for (ci, cfg) in SGD_CONFIGS.iter().enumerate() {
        for (li, &n) in LENS.iter().enumerate() {
            let mut r = rng((ci * 100 + li) as u64);
            let p0 = uniform(&mut r, n, -1.0, 1.0);
            let (p, g, v) = (upload(&p0, &[n]), zeros(&[n]), zeros(&[n]));
            let mut step = optim::sgd(gpu(), cfg, &p, &g, &v, None).unwrap();

            let (mut p_ref, mut v_ref) = (to_f64(&p0), vec![0.0; n]);
            // The same recurrence on |inputs| with −lr: Σ|terms| of every quantity.
            let (mut p_mag, mut v_mag) = (to_f64(&abs(&p0)), vec![0.0; n]);
            let (mu, wd) = (cfg.momentum as f64, cfg.weight_decay as f64);
            for t in 1..=STEPS {
                let gt = grads(&mut r, n);
                let lr = schedule(cfg.lr, t);
                gpu().write_f32(&g, &gt).unwrap();
                step.set_lr(gpu(), lr).unwrap();
                gpu().run(&[step.kernel()]);
                let lr = lr as f64;
                cpu::sgd_step(
                    &mut p_ref,
                    &to_f64(&gt),
                    &mut v_ref,
                    lr,
                    mu,
                    wd,
                    cfg.nesterov,
                );
                cpu::sgd_step(
                    &mut p_mag,
                    &to_f64(&abs(&gt)),
                    &mut v_mag,
                    -lr,
                    mu,
                    wd,
                    cfg.nesterov,
                );
            }
            // Every SGD quantity is a sum of products of the inputs; evaluated in f32 through
            // k roundings it errs by at most γ_k times the same sum on absolute values
            // (Higham, Accuracy and Stability, §3.1), which is the magnitude run above.
            // A step rounds each quantity at most 8 times (g + λp, μv + g, g + μv, p − lr·g:
            // two each, fewer with fused multiply-adds), so k = 8·STEPS.
            let what = format!("sgd_step {cfg:?} n={n}");
            let bound = |mag: &[f64]| -> Vec<f64> {
                mag.iter().map(|m| gamma(8 * STEPS) * m + 1e-30).collect()
            };
            assert_within(
                &format!("{what} params"),
                &read(&p),
                &to_f32(&p_ref),
                &bound(&p_mag),
            );
            assert_within(
                &format!("{what} velocity"),
                &read(&v),
                &to_f32(&v_ref),
                &bound(&v_mag),
            );
        }
    }
}

/// torch.optim.SGD(lr=0.1, momentum=0.9, weight_decay=0.1, nesterov=True), p = 1, g = 0.5
/// twice. Step 1: g = 0.5 + 0.1·1 = 0.6; v = 0.6; g = 0.6 + 0.9·0.6 = 1.14;
/// p = 1 − 0.114 = 0.886. Step 2: g = 0.5 + 0.0886 = 0.5886; v = 0.54 + 0.5886 = 1.1286;
/// g = 0.5886 + 1.01574 = 1.60434; p = 0.886 − 0.160434 = 0.725566.
/// Plain SGD (lr 0.1, no momentum), p = 1, g = 0.5: p = 0.95, then 0.9.
#[test]
fn sgd_step_matches_pytorch_formula() {
    let cases = [
        (
            Sgd {
                lr: 0.1,
                momentum: 0.9,
                weight_decay: 0.1,
                nesterov: true,
            },
            [(0.886, 0.6), (0.725566, 1.1286)],
        ),
        (
            Sgd {
                lr: 0.1,
                momentum: 0.0,
                weight_decay: 0.0,
                nesterov: false,
            },
            [(0.95, 0.5), (0.9, 0.5)],
        ),
    ];
    for (cfg, want) in cases {
        let (p, g, v) = (upload(&[1.0], &[1]), upload(&[0.5], &[1]), zeros(&[1]));
        let step = optim::sgd(gpu(), &cfg, &p, &g, &v, None).unwrap();
        for (t, (want_p, want_v)) in want.into_iter().enumerate() {
            gpu().run(&[step.kernel()]);
            // About eight f32 roundings of values below 2 (plus the f32 representation of
            // 0.1 and 0.9): under 1e-6; a wrong rule moves p by 1e-2 or more.
            let what = format!("sgd {cfg:?} step {}", t + 1);
            assert_close(&format!("{what} p"), &read(&p), &[want_p], 1e-6, 0.0);
            assert_close(&format!("{what} v"), &read(&v), &[want_v], 1e-6, 0.0);
        }
    }
}

// ---------------------------------------------------------------- Adam / AdamW

const ADAM_CONFIGS: &[Adam] = &[
    Adam {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    },
    Adam {
        lr: 5e-2,
        beta1: 0.8,
        beta2: 0.99,
        eps: 1e-6,
        weight_decay: 0.05,
    },
];

type AdamLauncher = fn(
    &siamese_gpu::Gpu,
    &Adam,
    &siamese_gpu::Tensor,
    &siamese_gpu::Tensor,
    &siamese_gpu::Tensor,
    &siamese_gpu::Tensor,
    Option<&LossScaler>,
) -> siamese_gpu::Result<optim::AdamStep>;

type AdamCpu = fn(&mut [f64], &[f64], &mut [f64], &mut [f64], f64, f64, f64, f64, f64, f64, f64);

/// Runs STEPS steps of `launcher` on the GPU and `reference` in f64 and compares.
fn adam_matches_cpu(name: &str, launcher: AdamLauncher, reference: AdamCpu) {
    for (ci, cfg) in ADAM_CONFIGS.iter().enumerate() {
        for (li, &n) in LENS.iter().enumerate() {
            let mut r = rng((1000 + ci * 100 + li) as u64);
            let p0 = uniform(&mut r, n, -1.0, 1.0);
            let (p, g, m, v) = (upload(&p0, &[n]), zeros(&[n]), zeros(&[n]), zeros(&[n]));
            let mut step = launcher(gpu(), cfg, &p, &g, &m, &v, None).unwrap();

            let (mut p_ref, mut m_ref, mut v_ref) = (to_f64(&p0), vec![0.0; n], vec![0.0; n]);
            let mut m_mag = vec![0.0f64; n]; // β1-average of |g|: Σ|terms| of m
            let (b1, b2) = (cfg.beta1 as f64, cfg.beta2 as f64);
            let mut lr_sum = 0.0;
            for t in 1..=STEPS {
                let gt = grads(&mut r, n);
                let lr = schedule(cfg.lr, t);
                gpu().write_f32(&g, &gt).unwrap();
                step.set_step(gpu(), lr, t as u32).unwrap();
                gpu().run(&[step.kernel()]);
                let (bc1, bc2) = corrections(cfg.beta1, cfg.beta2, t);
                for (mm, gg) in m_mag.iter_mut().zip(&gt) {
                    // |g + λp| ≤ |g| + λ·|p|, |p| ≤ 2 throughout.
                    *mm = b1 * *mm + (1.0 - b1) * (gg.abs() as f64 + 2.0 * cfg.weight_decay as f64);
                }
                reference(
                    &mut p_ref,
                    &to_f64(&gt),
                    &mut m_ref,
                    &mut v_ref,
                    lr as f64,
                    b1,
                    b2,
                    cfg.eps as f64,
                    cfg.weight_decay as f64,
                    bc1,
                    bc2,
                );
                lr_sum += lr as f64;
            }
            let what = format!("{name} {cfg:?} n={n}");
            // m is a sum of products, 3 roundings a step (Higham §3.1): γ_(3·STEPS)·Σ|terms|,
            // doubled for the error of the p inside g + λp. v is a sum of non-negative terms:
            // γ_(4·STEPS)·v.
            let m_bound: Vec<f64> = m_mag.iter().map(|x| 2.0 * gamma(3 * STEPS) * x).collect();
            let v_bound: Vec<f64> = v_ref.iter().map(|x| gamma(4 * STEPS) * x + 1e-30).collect();
            // p: each step rounds p (p − step; AdamW's 1 − lr·λ and product) at most 3 times,
            // ≤ 3u·|p| with |p| ≤ |p_final| + √5·Σlr, and moves it by lr·m̂/(√v̂ + eps). That
            // ratio is at most √t ≤ √5 (Cauchy–Schwarz with the two averages' weights, t ≤ 5)
            // and carries m's error above (≤ 2γ_15 of its magnitude, itself ≤ √5·√v̂) plus
            // sqrt, two divisions and three products (≤ 25u): ≤ lr·(2.3·(2γ_15 + 25u)) < lr·200u
            // per step.
            let p_bound: Vec<f64> = p_ref
                .iter()
                .map(|x| STEPS as f64 * 3.0 * U32 * (x.abs() + 2.3 * lr_sum) + 200.0 * U32 * lr_sum)
                .collect();
            assert_within(
                &format!("{what} params"),
                &read(&p),
                &to_f32(&p_ref),
                &p_bound,
            );
            assert_within(
                &format!("{what} exp_avg"),
                &read(&m),
                &to_f32(&m_ref),
                &m_bound,
            );
            assert_within(
                &format!("{what} exp_avg_sq"),
                &read(&v),
                &to_f32(&v_ref),
                &v_bound,
            );
        }
    }
}

#[test]
fn adam_step_matches_cpu() {
    adam_matches_cpu("adam_step", optim::adam, cpu::adam_step::<f64>);
}

#[test]
fn adamw_step_matches_cpu() {
    adam_matches_cpu("adamw_step", optim::adamw, cpu::adamw_step::<f64>);
}

/// torch.optim.Adam / AdamW(lr=0.1, betas=(0.9, 0.999), eps=1e-8), p = 1, g = 0.5 twice;
/// expected values from the documented algorithm, evaluated in f64:
/// - Adam, no decay: a constant gradient gives m̂ = g, v̂ = g², so p moves by lr·g/(|g| + eps)
///   each step: 0.900000002, 0.800000004 (m = 0.05, 0.095; v = 2.5e-4, 4.9975e-4).
/// - Adam, weight_decay 0.1 (L2): g = 0.6 then 0.59: 0.9000000017, 0.8000473405.
/// - AdamW, weight_decay 0.1 (decoupled): p·0.99 then the same steps as without decay:
///   0.890000002, 0.781100004.
#[test]
fn adam_step_matches_pytorch_formula() {
    let base = Adam {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let decayed = Adam {
        weight_decay: 0.1,
        ..base
    };
    let cases: [(&str, Adam, bool, [f64; 2]); 3] = [
        ("adam", base, false, [0.900000002, 0.800000004]),
        ("adam L2", decayed, false, [0.9000000017, 0.8000473405]),
        ("adamw", decayed, true, [0.890000002, 0.781100004]),
    ];
    for (name, cfg, decoupled, want) in cases {
        let (p, g, m, v) = (
            upload(&[1.0], &[1]),
            upload(&[0.5], &[1]),
            zeros(&[1]),
            zeros(&[1]),
        );
        let launcher = if decoupled { optim::adamw } else { optim::adam };
        let mut step = launcher(gpu(), &cfg, &p, &g, &m, &v, None).unwrap();
        for (i, want_p) in want.into_iter().enumerate() {
            let t = i as u32 + 1;
            step.set_step(gpu(), cfg.lr, t).unwrap();
            gpu().run(&[step.kernel()]);
            // A few tens of f32 roundings of values ≤ 1, and the f32 betas (whose effect
            // cancels between the moments and their bias corrections to first order):
            // 2e-6 absolute. A missing bias correction moves p by 0.2, L2 vs decoupled by 0.01.
            assert_close(
                &format!("{name} step {t}"),
                &read(&p),
                &[want_p as f32],
                2e-6,
                0.0,
            );
        }
    }
}

// ---------------------------------------------------------------- bad input

#[test]
fn optimizers_reject_mismatched_shapes_and_bad_settings() {
    let p = zeros(&[10]);
    let cfg = SGD_CONFIGS[1];
    let err = optim::sgd(gpu(), &cfg, &p, &zeros(&[10]), &zeros(&[9]), None).unwrap_err();
    assert!(
        err.to_string().contains(
            "sgd_step: velocity must be a F32 tensor of shape [10], got F32 of shape [9]"
        ),
        "{err}"
    );
    let err = optim::adamw(
        gpu(),
        &Adam::default(),
        &p,
        &zeros(&[11]),
        &zeros(&[10]),
        &zeros(&[10]),
        None,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("adamw_step: grads must be a F32 tensor of shape [10]"),
        "{err}"
    );
    let nesterov_without_momentum = Sgd {
        momentum: 0.0,
        nesterov: true,
        ..cfg
    };
    let err = optim::sgd(
        gpu(),
        &nesterov_without_momentum,
        &p,
        &zeros(&[10]),
        &zeros(&[10]),
        None,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("Nesterov momentum requires momentum > 0"),
        "{err}"
    );
    let (m, v) = (zeros(&[10]), zeros(&[10]));
    let mut step = optim::adam(gpu(), &Adam::default(), &p, &zeros(&[10]), &m, &v, None).unwrap();
    let err = step.set_step(gpu(), 1e-3, 0).unwrap_err();
    assert!(err.to_string().contains("t starts at 1"), "{err}");
}
