//! Mixed precision (`shaders/amp.wgsl`) against `cpu::amp`, and the optimizers' loss-scaled
//! (`_amp`) entries against the plain ones: casts, the overflow check, the scale's moves,
//! skipped steps.
//!
//! Entry points and the tests that run them: `cast_to_f16`, `cast_to_f32`:
//! `casts_match_cpu`; `amp_check_finite`: `check_finds_a_single_bad_gradient` (and the
//! scripted run); `amp_update_scale`: `loss_scale_follows_grad_scaler_rules`;
//! `sgd_step_amp`, `adam_step_amp`, `adamw_step_amp` (optim.wgsl):
//! `amp_optimizer_steps_unscale_and_skip`.

use crate::common::*;
use siamese_gpu::cpu::amp as cpu;
use siamese_gpu::ops::amp::{self, LossScaleConfig, LossScaler, ScaleState};
use siamese_gpu::ops::optim::{self, Adam, Sgd};
use siamese_gpu::{DType, Tensor};

/// One element, sizes off the 256-wide workgroup, and the reference network's 224,256
/// parameters (877 workgroups).
const LENS: &[usize] = &[1, 7, 257, 224_256];

/// Values whose f16 rounding is interesting: ties (1 + 2⁻¹¹ rounds to even, 1 + 3·2⁻¹¹ up),
/// the largest f16 (65504), past it (overflows to inf), f16 subnormals, signed zero.
const SPECIAL: &[f32] = &[
    1.0 + 1.0 / 2048.0,
    1.0 + 3.0 / 2048.0,
    65504.0,
    65520.0,
    1e5,
    -1e5,
    6e-8,
    3e-5,
    -0.0,
    0.1,
];

#[test]
fn casts_match_cpu() {
    if !has_f16() {
        return;
    }
    for (seed, &n) in LENS.iter().enumerate() {
        let mut x = uniform(&mut rng(seed as u64), n, -100.0, 100.0);
        for (i, &v) in SPECIAL.iter().enumerate().take(n) {
            x[i * n / SPECIAL.len().min(n)] = v;
        }
        let half = zeros_f16(&[n]);
        let k = amp::cast(gpu(), &upload(&x, &[n]), &half).unwrap();
        let got = run_and_read_floats(&k, &half);
        // Rounding to nearest even is exactly specified: equal to `half`'s, bit for bit
        // (inf past 65520, where the nearest-even result leaves the f16 range). f16
        // subnormals may be flushed to zero by the adapter: within 2⁻¹⁴ there.
        let want = cpu::cast_to_f16(&x);
        let bound: Vec<f64> = want
            .iter()
            .map(|w| if w.abs() < 6.2e-5 { 6.2e-5 } else { 0.0 })
            .collect();
        let same_inf = got
            .iter()
            .zip(&want)
            .all(|(g, w)| g.is_infinite() == w.is_infinite() && (!w.is_infinite() || g == w));
        assert!(same_inf, "cast_to_f16 n={n}: infinities differ");
        let finite = |v: &[f32]| -> Vec<f32> {
            v.iter()
                .map(|x| if x.is_finite() { *x } else { 0.0 })
                .collect()
        };
        assert_within(
            &format!("cast_to_f16 n={n}"),
            &finite(&got),
            &finite(&want),
            &bound,
        );
        // And back: f16 → f32 is exact.
        let back = zeros(&[n]);
        let k = amp::cast(gpu(), &half, &back).unwrap();
        let got_back = run_and_read(&k, &back);
        assert_eq!(
            finite(&got_back),
            finite(&got),
            "cast_to_f32 n={n} is not exact"
        );
    }
    let err = amp::cast(gpu(), &zeros(&[3]), &zeros(&[3])).unwrap_err();
    assert!(err.to_string().contains("F16"), "{err}");
}

fn scaler(grads: &Tensor, seed: &Tensor, cfg: LossScaleConfig) -> LossScaler {
    LossScaler::new(gpu(), cfg, grads, seed).unwrap()
}

/// The scale's path over a scripted run of good and overflowing steps, against
/// `cpu::update_scale`: growth after `interval` good steps in a row, backoff and a skip on
/// overflow, the seed of the next backward always the new scale. All values are powers of
/// two or small counts: exact.
#[test]
fn loss_scale_follows_grad_scaler_rules() {
    if !has_f16() {
        return;
    }
    let n = 1000;
    let cfg = LossScaleConfig {
        init: 1024.0,
        growth: 2.0,
        backoff: 0.5,
        interval: 3,
    };
    let grads = upload(&vec![0.5; n], &[n]);
    let seed = zeros(&[1]);
    let s = scaler(&grads, &seed, cfg);
    assert_eq!(gpu().read_f32(&seed).unwrap(), vec![1024.0], "first seed");
    let mut want = [1024.0, 0.0, 0.0, 0.0, 1024.0, 0.0];
    // A bad value at a different place each time, of each kind.
    let script: &[Option<(usize, f32)>] = &[
        None,
        None,
        None, // third good step in a row: grows
        Some((0, f32::INFINITY)),
        None,
        Some((n - 1, f32::NAN)),
        Some((517, f32::NEG_INFINITY)),
        None,
        None,
        None,
        None,
    ];
    for (step, bad) in script.iter().enumerate() {
        let mut g = vec![0.5; n];
        if let Some((i, v)) = *bad {
            g[i] = v;
        }
        gpu().write_f32(&grads, &g).unwrap();
        gpu().run(&[s.check(), s.update()]);
        cpu::update_scale(&mut want, bad.is_some(), 2.0, 0.5, 3);
        let got = gpu().read_f32(s.state()).unwrap();
        assert_eq!(got, want.to_vec(), "state after step {step}");
        assert_eq!(
            gpu().read_f32(&seed).unwrap(),
            vec![want[0]],
            "seed after step {step}"
        );
        assert_eq!(
            gpu().read_u32(s.found_inf()).unwrap(),
            vec![0],
            "flag cleared after step {step}"
        );
    }
    let state = s.read(gpu()).unwrap();
    assert_eq!(
        state,
        ScaleState {
            scale: want[0],
            applied: 8,
            skipped: 3,
            last_scale: want[4],
            last_skipped: false,
        }
    );
    assert!(
        LossScaler::new(
            gpu(),
            LossScaleConfig {
                backoff: 1.5,
                ..cfg
            },
            &grads,
            &seed
        )
        .is_err()
    );
}

/// The overflow check over large buffers: one bad element anywhere sets the flag, none
/// leaves it clear.
#[test]
fn check_finds_a_single_bad_gradient() {
    if !has_f16() {
        return;
    }
    for &n in LENS {
        for bad in [None, Some(0), Some(n / 2), Some(n - 1)] {
            let mut g = uniform(&mut rng(n as u64), n, -1e4, 1e4);
            if let Some(i) = bad {
                g[i] = f32::INFINITY;
            }
            let grads = upload(&g, &[n]);
            let s = scaler(&grads, &zeros(&[1]), LossScaleConfig::default());
            gpu().run(&[s.check()]);
            assert_eq!(
                gpu().read_u32(s.found_inf()).unwrap(),
                vec![bad.is_some() as u32],
                "n={n} bad at {bad:?}"
            );
        }
    }
}

/// An `_amp` optimizer step against its plain entry run on the unscaled gradients: with a
/// power-of-two scale the unscaled gradients are exact, so SGD matches bit for bit. Adam's
/// corrections come from the device's step count through pow, which WGSL does not promise
/// correctly rounded: 1 − β2^t cancels three digits at t = 1, so the step may differ by
/// ~1e-4 relative; the bound is 1e-3 of the step plus 4 ulps of p. A step with an overflow
/// must change nothing, and Adam's t must not count it.
#[test]
fn amp_optimizer_steps_unscale_and_skip() {
    if !has_f16() {
        return;
    }
    let n = 4099;
    let scale = 4096.0f32; // halved by the overflow at step 2
    let p0 = uniform(&mut rng(1), n, -1.0, 1.0);
    let steps: Vec<(Vec<f32>, bool)> = (0..5)
        .map(|t| (uniform(&mut rng(10 + t), n, -1.0, 1.0), t == 2))
        .collect();
    // Scaled by the scaler's current scale (an overflow halves it for the next step).
    let scaled = |g: &[f32], overflow: bool, s: &LossScaler| -> Vec<f32> {
        let scale = s.read(gpu()).unwrap().scale;
        let mut s: Vec<f32> = g.iter().map(|v| v * scale).collect();
        if overflow {
            s[n / 3] = f32::INFINITY;
        }
        s
    };
    let cfg = LossScaleConfig {
        init: scale,
        growth: 1.0,
        ..Default::default()
    };
    // SGD with momentum and L2.
    let sgd_cfg = Sgd {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 1e-2,
        nesterov: false,
    };
    let (p, g, v) = (upload(&p0, &[n]), zeros(&[n]), zeros(&[n]));
    let s = scaler(&g, &zeros(&[1]), cfg);
    let step = optim::sgd(gpu(), &sgd_cfg, &p, &g, &v, Some(&s)).unwrap();
    let (p_ref, g_ref, v_ref) = (upload(&p0, &[n]), zeros(&[n]), zeros(&[n]));
    let plain = optim::sgd(gpu(), &sgd_cfg, &p_ref, &g_ref, &v_ref, None).unwrap();
    for (t, (grad, overflow)) in steps.iter().enumerate() {
        let before = gpu().read_f32(&p).unwrap();
        gpu().write_f32(&g, &scaled(grad, *overflow, &s)).unwrap();
        gpu().run(&[s.check(), step.kernel(), s.update()]);
        let exact = vec![0.0; n];
        if *overflow {
            let what = format!("sgd: skipped step {t} moved p");
            assert_within(&what, &gpu().read_f32(&p).unwrap(), &before, &exact);
            continue;
        }
        gpu().write_f32(&g_ref, grad).unwrap();
        gpu().run(&[plain.kernel()]);
        let want = gpu().read_f32(&p_ref).unwrap();
        assert_within(
            &format!("sgd step {t}"),
            &gpu().read_f32(&p).unwrap(),
            &want,
            &exact,
        );
    }
    // Adam and AdamW: the plain entry gets t = applied steps + 1 from the host.
    for decoupled in [false, true] {
        let adam_cfg = Adam {
            lr: 0.01,
            weight_decay: 0.05,
            ..Adam::default()
        };
        let launcher = if decoupled { optim::adamw } else { optim::adam };
        let (p, g, m, v) = (upload(&p0, &[n]), zeros(&[n]), zeros(&[n]), zeros(&[n]));
        let s = scaler(&g, &zeros(&[1]), cfg);
        let step = launcher(gpu(), &adam_cfg, &p, &g, &m, &v, Some(&s)).unwrap();
        let (p_ref, g_ref, m_ref, v_ref) =
            (upload(&p0, &[n]), zeros(&[n]), zeros(&[n]), zeros(&[n]));
        let mut plain = launcher(gpu(), &adam_cfg, &p_ref, &g_ref, &m_ref, &v_ref, None).unwrap();
        let mut applied = 0;
        for (t, (grad, overflow)) in steps.iter().enumerate() {
            let what = format!("adam (decoupled {decoupled}) step {t}");
            let (before, m_before) = (gpu().read_f32(&p).unwrap(), gpu().read_f32(&m).unwrap());
            gpu().write_f32(&g, &scaled(grad, *overflow, &s)).unwrap();
            gpu().run(&[s.check(), step.kernel(), s.update()]);
            if *overflow {
                let exact = vec![0.0; n];
                let moved = |x| format!("{what}: the skipped step moved {x}");
                assert_within(&moved("p"), &gpu().read_f32(&p).unwrap(), &before, &exact);
                assert_within(&moved("m"), &gpu().read_f32(&m).unwrap(), &m_before, &exact);
                continue;
            }
            applied += 1;
            gpu().write_f32(&g_ref, grad).unwrap();
            plain.set_step(gpu(), adam_cfg.lr, applied).unwrap();
            gpu().run(&[plain.kernel()]);
            let want = gpu().read_f32(&p_ref).unwrap();
            let bound: Vec<f64> = want
                .iter()
                .zip(&before)
                .map(|(w, b)| 1e-3 * (w - b).abs() as f64 + 4.0 * U32 * w.abs() as f64)
                .collect();
            assert_within(&what, &gpu().read_f32(&p).unwrap(), &want, &bound);
            // Keep both sides on the same point, so that errors do not compound.
            gpu().write_f32(&p, &want).unwrap();
            for (a, b) in [(&m, &m_ref), (&v, &v_ref)] {
                gpu().write_f32(a, &gpu().read_f32(b).unwrap()).unwrap();
            }
        }
        assert_eq!(s.read(gpu()).unwrap().applied, applied);
    }
}

#[test]
fn scaler_refuses_wrong_buffers() {
    let err = LossScaler::new(
        gpu(),
        LossScaleConfig::default(),
        &gpu().zeros(&[4], DType::U32).unwrap(),
        &zeros(&[1]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("grads"), "{err}");
}
