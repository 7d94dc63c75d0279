//! Rules on the loss curve and the per-layer gradient and weight norms: a run that blew up
//! (`exploding_gradient`) and layers the gradient hardly reaches (`vanishing_gradient`).

use super::{Evidence, Finding, GradSample, Severity, finding};

/// Vanishing: a layer's relative gradient ‖∇w‖/‖w‖ this far below the liveliest layer's.
const VANISHING_RATIO: f64 = 1e-4;
/// Exploding: weights grown this many times over their initial norm.
const WEIGHT_GROWTH: f64 = 20.0;
/// Exploding: the loss at the end this many times its value at the start.
const LOSS_GROWTH: f64 = 2.0;

fn mean(v: &[f32]) -> f64 {
    v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64
}

pub(super) fn exploding(e: &Evidence, out: &mut Vec<Finding>) {
    let advice = "Lower the learning rate (--lr) by 10× or more; with SGD add momentum only after \
                  it is stable. Check that inputs are normalised (pixels in [0, 1] or standardised).";
    if let Some(why) = &e.diverged {
        out.push(finding(
            "exploding_gradient",
            Severity::Fail,
            format!("training diverged: {why}"),
            advice,
        ));
        return;
    }
    let non_finite = e.grads.iter().any(|g| {
        g.grad_norm
            .iter()
            .chain(&g.weight_norm)
            .any(|v| !v.is_finite())
    });
    if non_finite {
        out.push(finding(
            "exploding_gradient",
            Severity::Fail,
            "a gradient or a weight stopped being a finite number".into(),
            advice,
        ));
        return;
    }
    if let Some(last) = e.grads.last() {
        let grown: Vec<(usize, f64)> = e
            .initial_weight_norm
            .iter()
            .zip(&last.weight_norm)
            .enumerate()
            .filter(|(_, (a, _))| **a > 0.0)
            .map(|(i, (a, b))| (i, b / a))
            .filter(|(_, r)| *r > WEIGHT_GROWTH)
            .collect();
        if let Some(&(i, r)) = grown.iter().max_by(|a, b| a.1.total_cmp(&b.1)) {
            out.push(finding(
                "exploding_gradient",
                Severity::Fail,
                format!(
                    "the weights of {} grew {r:.0}× over training (and {} layer(s) over {WEIGHT_GROWTH:.0}×): \
                     the updates are far too large",
                    e.layers.get(i).map_or("a layer", |s| s.as_str()),
                    grown.len()
                ),
                advice,
            ));
            return;
        }
    }
    let n = e.losses.len();
    if n >= 20 {
        let k = (n / 10).max(5);
        let (start, end) = (mean(&e.losses[..k]), mean(&e.losses[n - k..]));
        if start > 0.0 && end > LOSS_GROWTH * start {
            out.push(finding(
                "exploding_gradient",
                Severity::Warn,
                format!(
                    "the loss rose from {start:.4} to {end:.4} over training instead of falling"
                ),
                advice,
            ));
        }
    }
}

pub(super) fn vanishing(e: &Evidence, out: &mut Vec<Finding>) {
    if e.grads.is_empty() || e.layers.is_empty() {
        return;
    }
    // The last quarter of training: what the gradients settled to.
    let recent = &e.grads[e.grads.len() - e.grads.len().div_ceil(4)..];
    let recent_median = |f: &dyn Fn(&GradSample) -> f64| {
        let mut v: Vec<f64> = recent.iter().map(f).filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let grad: Vec<f64> = (0..e.layers.len())
        .map(|i| recent_median(&|g| g.grad_norm[i]))
        .collect();
    let relative: Vec<f64> = (0..e.layers.len())
        .map(|i| recent_median(&|g| g.grad_norm[i] / g.weight_norm[i].max(1e-30)))
        .collect();
    let advice = "When no gradient flows, the loss is flat: look for dead ReLUs or a collapsed \
                  embedding (their findings), a margin of 0, or a saturated sigmoid/tanh stack. \
                  Use ReLU towers with He initialisation, fewer saturating layers, or normalisation.";
    let zero: Vec<&str> = grad
        .iter()
        .zip(&e.layers)
        .filter(|(g, _)| **g <= 1e-12)
        .map(|(_, n)| n.as_str())
        .collect();
    if !zero.is_empty() {
        out.push(finding(
            "vanishing_gradient",
            Severity::Fail,
            format!(
                "no gradient reaches {} (median gradient norm 0 over the last quarter of training)",
                zero.join(", ")
            ),
            advice,
        ));
        return;
    }
    let top = relative.iter().cloned().fold(0.0, f64::max);
    if let Some((i, r)) = relative
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(b.1))
        .filter(|(_, r)| **r < VANISHING_RATIO * top)
    {
        out.push(finding(
            "vanishing_gradient",
            Severity::Warn,
            format!(
                "the gradient reaching {} is {r:.2e} of its weights' norm, {:.0e}× less than the \
                 liveliest layer's {top:.2e}: it barely learns",
                e.layers[i],
                top / r.max(1e-300)
            ),
            advice,
        ));
    }
}
