//! References of `shaders/amp.wgsl`: the f32 ↔ f16 casts and GradScaler's scale rules.

/// `cast_to_f16`: each value rounded to the nearest f16 (ties to even), widened back.
pub fn cast_to_f16(src: &[f32]) -> Vec<f32> {
    src.iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect()
}

/// `amp_check_finite`: whether any gradient is ±inf or NaN.
pub fn any_not_finite(grads: &[f32]) -> bool {
    grads.iter().any(|g| !g.is_finite())
}

/// The scaler's `[6]` state (see the shader): `amp_update_scale` after a step that did
/// (`overflow`) or did not overflow.
pub fn update_scale(
    state: &mut [f32; 6],
    overflow: bool,
    growth: f32,
    backoff: f32,
    interval: u32,
) {
    let scale = state[0];
    state[4] = scale;
    state[5] = if overflow { 1.0 } else { 0.0 };
    let mut next = scale;
    if overflow {
        next = scale * backoff;
        state[1] = 0.0;
        state[3] += 1.0;
    } else {
        state[2] += 1.0;
        let good = state[1] + 1.0;
        if good >= interval as f32 {
            next = scale * growth;
            state[1] = 0.0;
        } else {
            state[1] = good;
        }
    }
    state[0] = next.min(2f32.powi(100));
}
