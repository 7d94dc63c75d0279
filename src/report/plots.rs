//! The run's pictures, as SVG: training curves, the validation distance histograms with the
//! margin and threshold, the test ROC curve, and a PCA projection of the test embeddings.
//! Each is drawn into a string and written whole (`write_atomic`).

use std::error::Error;
use std::io;
use std::path::Path;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::eval::doctor::{Evidence, PairScores, ValidationPoint, margin_f64};
use crate::eval::verification;
use crate::files::write_atomic;
use crate::vocab::LossKind;
use crate::vocab::PairLabel;

type Drawn = Result<Option<String>, Box<dyn Error>>;
/// A plot: its SVG, or None when the evidence has no data for it.
type Draw = fn(&Evidence) -> Drawn;
/// A part of an SVG drawing that one chart fills.
type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
/// A chart with numeric axes, drawn into an SVG.
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The plots, by file name.
pub const PLOTS: [(&str, Draw); 4] = [
    ("curves.svg", curves),
    ("distances.svg", distances),
    ("roc.svg", roc),
    ("embeddings_pca.svg", pca),
];

const SIZE: (u32, u32) = (900, 620);
const TITLE: (&str, u32) = ("sans-serif", 22);

/// Draws every plot the evidence has data for into `dir`; returns the names written.
pub fn write_all(dir: &Path, e: &Evidence) -> io::Result<Vec<String>> {
    let mut written = Vec::new();
    for (name, draw) in PLOTS {
        let svg = draw(e).map_err(|err| io::Error::other(format!("drawing {name}: {err}")))?;
        if let Some(svg) = svg {
            write_atomic(&dir.join(name), svg.as_bytes())?;
            written.push(name.to_string());
        }
    }
    Ok(written)
}

fn finite_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    (lo <= hi).then(|| {
        let pad = ((hi - lo) * 0.05).max(1e-6);
        (lo - pad, hi + pad)
    })
}

/// Training loss per step with its running mean; validation (and training-pair) accuracy
/// and ROC AUC over the samples seen.
fn curves(e: &Evidence) -> Drawn {
    let Some(range) = finite_range(e.losses.iter().map(|&l| l as f64)) else {
        return Ok(None);
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (SIZE.0, 760)).into_drawing_area();
        root.fill(&WHITE)?;
        let (top, bottom) = root.split_vertically(380);
        loss_chart(&top, &e.losses, range)?;
        accuracy_chart(&bottom, &e.validations)?;
        root.present()?;
    }
    Ok(Some(svg))
}

/// The loss of each step over `range`, and over long runs its running mean.
fn loss_chart(area: &Area, losses: &[f32], (lo, hi): (f64, f64)) -> Result<(), Box<dyn Error>> {
    let steps = losses.len();
    let mut chart = ChartBuilder::on(area)
        .caption("Training loss", TITLE)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(1f64..steps.max(2) as f64, lo..hi)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss")
        .draw()?;
    let per_step = losses
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .map(|(i, &l)| ((i + 1) as f64, l as f64));
    // Short runs show every step plainly; longer ones a running mean over the noise.
    let window = (steps / 40).max(1);
    let faint = if window > 1 {
        BLUE.mix(0.3)
    } else {
        BLUE.mix(1.0)
    };
    chart
        .draw_series(LineSeries::new(per_step, faint))?
        .label("each step")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], faint));
    if window > 1 {
        chart
            .draw_series(LineSeries::new(
                running_mean(losses, window),
                BLUE.stroke_width(2),
            ))?
            .label(format!("mean of {window} steps"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    Ok(())
}

/// The mean of each `window` consecutive losses, at the step that ends the window; windows
/// holding a non-finite loss are left out.
fn running_mean(losses: &[f32], window: usize) -> Vec<(f64, f64)> {
    losses
        .windows(window)
        .enumerate()
        .map(|(i, w)| {
            let m = w.iter().map(|&l| l as f64).sum::<f64>() / window as f64;
            ((i + window) as f64, m)
        })
        .filter(|(_, m)| m.is_finite())
        .collect()
}

/// Validation accuracy, validation ROC AUC and training-pair accuracy at each validation
/// pass, against the training samples seen, with the chance line.
fn accuracy_chart(area: &Area, validations: &[ValidationPoint]) -> Result<(), Box<dyn Error>> {
    let last = validations.last().map_or(1, |v| v.pairs).max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption("Pair accuracy and ROC AUC", TITLE)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..last * 1.05, 0.4f64..1.0)?;
    chart
        .configure_mesh()
        .x_desc("training samples seen")
        .y_desc("accuracy / AUC")
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, 0.5), (last * 1.05, 0.5)],
            BLACK.mix(0.4),
        ))?
        .label("chance")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.4)));
    type Pick = fn(&ValidationPoint) -> Option<f64>;
    let series: [(&str, RGBColor, Pick); 3] = [
        ("validation accuracy", RED, |v| Some(v.accuracy)),
        ("validation ROC AUC", GREEN, |v| Some(v.roc_auc)),
        ("training-pair accuracy", MAGENTA, |v| v.train_accuracy),
    ];
    for (label, color, pick) in series {
        // Clamped into the chart's 0.4–1 band, so a point below it sits on the axis.
        let points: Vec<(f64, f64)> = validations
            .iter()
            .filter_map(|v| pick(v).map(|y| (v.pairs as f64, y.clamp(0.4, 1.0))))
            .collect();
        if points.is_empty() {
            continue;
        }
        chart.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?;
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?
            .label(label)
            .legend(move |(x, y)| Circle::new((x + 10, y), 4, color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    Ok(())
}

/// Share of `values` in each of `bins` equal bins over `[lo, hi)`.
fn histogram(values: &[f32], lo: f64, hi: f64, bins: usize) -> Vec<f64> {
    let mut counts = vec![0.0; bins];
    let width = (hi - lo) / bins as f64;
    for &v in values {
        let b = ((v as f64 - lo) / width).floor();
        if b >= 0.0 && (b as usize) < bins {
            counts[b as usize] += 1.0;
        }
    }
    let n = values.len().max(1) as f64;
    counts.iter().map(|c| c / n).collect()
}

/// Bins of the distance histograms, over the plot's x range.
const BINS: usize = 60;

/// Histograms of the validation Same and Different pair distances, with the margin and the
/// verification threshold.
fn distances(e: &Evidence) -> Drawn {
    let (same, diff) = (e.val.of(PairLabel::Same), e.val.of(PairLabel::Different));
    if same.is_empty() && diff.is_empty() {
        return Ok(None);
    }
    let bce = e.loss == Some(LossKind::Bce);
    let mut all: Vec<f32> = same.iter().chain(&diff).copied().collect();
    all.sort_by(f32::total_cmp);
    let margin = (!bce && e.margin > 0.0).then_some(margin_f64(e.margin));
    let threshold = e.val_threshold as f64;
    let (lo, hi) = distance_axis(&all, threshold, margin, bce);
    let (hs, hd) = (
        histogram(&same, lo, hi, BINS),
        histogram(&diff, lo, hi, BINS),
    );
    let ymax = hs.iter().chain(&hd).cloned().fold(0.0, f64::max).max(1e-6) * 1.1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Validation pair distances: Same vs Different", TITLE)
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(lo..hi, 0f64..ymax)?;
        chart
            .configure_mesh()
            .x_desc(if bce {
                "score (negated logit; lower = more likely Same)"
            } else {
                "distance between the two embeddings"
            })
            .y_desc("share of pairs")
            .draw()?;
        let bars = [
            (hs.as_slice(), BLUE, format!("Same pairs ({})", same.len())),
            (
                hd.as_slice(),
                RED,
                format!("Different pairs ({})", diff.len()),
            ),
        ];
        draw_histograms(&mut chart, lo, (hi - lo) / BINS as f64, bars)?;
        draw_threshold_and_margin(&mut chart, ymax, threshold, margin)?;
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.85))
            .draw()?;
        root.present()?;
    }
    Ok(Some(svg))
}

/// The x range of the distance plot over the `sorted` scores: from 0 (for BCE scores, which
/// can be negative, from the lowest score or the threshold) to past the threshold, the
/// margin and the bulk of the scores, with 5% to spare at the top.
fn distance_axis(sorted: &[f32], threshold: f64, margin: Option<f64>, bce: bool) -> (f64, f64) {
    // The bulk of the data, not a far outlier, sets the axis (0.5% at the top may fall off).
    let top = sorted[((sorted.len() - 1) as f64 * 0.995) as usize] as f64;
    let bottom = sorted[0] as f64;
    let mut hi = top.max(threshold);
    if let Some(m) = margin {
        hi = hi.max(m);
    }
    let lo = if bce {
        bottom.min(threshold)
    } else {
        0f64.min(bottom)
    };
    (lo, hi + (hi - lo).max(1e-6) * 0.05)
}

/// Each histogram (shares per bin of `width` from `lo`) as translucent bars, with its
/// legend entry.
fn draw_histograms(
    chart: &mut Chart,
    lo: f64,
    width: f64,
    histograms: [(&[f64], RGBColor, String); 2],
) -> Result<(), Box<dyn Error>> {
    for (h, color, label) in histograms {
        chart
            .draw_series(h.iter().enumerate().map(|(b, &c)| {
                let x0 = lo + b as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width, c)], color.mix(0.35).filled())
            }))?
            .label(label)
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 18, y + 5)], color.mix(0.35).filled())
            });
    }
    Ok(())
}

/// The verification threshold, and the margin if the loss has one, as vertical lines the
/// height of the chart (`ymax`).
fn draw_threshold_and_margin(
    chart: &mut Chart,
    ymax: f64,
    threshold: f64,
    margin: Option<f64>,
) -> Result<(), Box<dyn Error>> {
    let vline = |x: f64| [(x, 0.0), (x, ymax)];
    chart
        .draw_series(LineSeries::new(vline(threshold), BLACK.stroke_width(2)))?
        .label(format!("threshold {threshold:.3} (chosen on validation)"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    if let Some(m) = margin {
        let orange = RGBColor(230, 140, 0);
        chart
            .draw_series(LineSeries::new(vline(m), orange.stroke_width(3)))?
            .label(format!("margin {m}"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], orange.stroke_width(3))
            });
    }
    Ok(())
}

/// The ROC curve of scores where a lower score means Same: (false positive rate, true positive
/// rate) as the threshold rises through the sorted scores (NaN last, as in `verification`).
pub fn roc_points(s: &PairScores) -> Vec<(f64, f64)> {
    let mut order: Vec<usize> = (0..s.scores.len()).collect();
    // Ordered and tied exactly as `roc_auc` ranks them, so the curve's area is its AUC.
    order.sort_by(|&i, &j| verification::cmp_distance(s.scores[i], s.scores[j]));
    let n_same = s.labels.iter().filter(|&&l| l == PairLabel::Same).count() as f64;
    let n_diff = s.labels.len() as f64 - n_same;
    if n_same == 0.0 || n_diff == 0.0 {
        return Vec::new();
    }
    let mut points = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0.0, 0.0);
    for (k, &i) in order.iter().enumerate() {
        if s.labels[i] == PairLabel::Same {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        // One point per group of tied scores.
        let tied_next = order.get(k + 1).is_some_and(|&j| {
            verification::cmp_distance(s.scores[j], s.scores[i]) == std::cmp::Ordering::Equal
        });
        if !tied_next {
            points.push((fp / n_diff, tp / n_same));
        }
    }
    points
}

/// The test ROC curve with its AUC and the equal-error point.
fn roc(e: &Evidence) -> Drawn {
    let points = roc_points(&e.test);
    if points.is_empty() {
        return Ok(None);
    }
    let auc = verification::roc_auc(&e.test.scores, &e.test.labels);
    let (eer, _) = verification::equal_error_rate(&e.test.scores, &e.test.labels);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (700, 680)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("ROC curve, test pairs (AUC {auc:.4})"), TITLE)
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..1.0, 0f64..1.0)?;
        chart
            .configure_mesh()
            .x_desc("false positive rate (Different pairs called Same)")
            .y_desc("true positive rate (Same pairs called Same)")
            .draw()?;
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.4)))?
            .label("chance")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.4)));
        chart
            .draw_series(LineSeries::new(points, BLUE.stroke_width(2)))?
            .label("model")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        chart
            .draw_series([Circle::new((eer, 1.0 - eer), 6, RED.filled())])?
            .label(format!("equal error rate {eer:.3}"))
            .legend(|(x, y)| Circle::new((x + 10, y), 5, RED.filled()));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.85))
            .draw()?;
        root.present()?;
    }
    Ok(Some(svg))
}

/// The test embeddings on their first two principal components, coloured by class.
fn pca(e: &Evidence) -> Drawn {
    let Some((x0, x1)) = finite_range(e.pca.iter().map(|p| p[0] as f64)) else {
        return Ok(None);
    };
    let Some((y0, y1)) = finite_range(e.pca.iter().map(|p| p[1] as f64)) else {
        return Ok(None);
    };
    let mut classes: Vec<u8> = e.pca_labels.clone();
    classes.sort_unstable();
    classes.dedup();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 760)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "Test embeddings, PCA ({} images; 2 components explain {:.0}% of the variance)",
                    e.pca.len(),
                    100.0 * e.pca_explained
                ),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc("principal component 1")
            .y_desc("principal component 2")
            .draw()?;
        for (k, &class) in classes.iter().enumerate() {
            let color = Palette99::pick(k).mix(0.9);
            let name = e
                .test_classes
                .get(class as usize)
                .cloned()
                .unwrap_or_else(|| class.to_string());
            chart
                .draw_series(
                    e.pca
                        .iter()
                        .zip(&e.pca_labels)
                        .filter(|(_, l)| **l == class)
                        .filter(|(p, _)| p[0].is_finite() && p[1].is_finite())
                        .map(|(p, _)| Circle::new((p[0] as f64, p[1] as f64), 2, color.filled())),
                )?
                .label(name)
                .legend(move |(x, y)| Circle::new((x + 8, y), 5, color.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.85))
            .draw()?;
        root.present()?;
    }
    Ok(Some(svg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roc_points_of_a_hand_worked_case() {
        // Scores 0.1 (Same), 0.2 (Different), 0.3 (Same), 0.4 (Different): rising through them
        // gives TPR/FPR 0/0, ½/0, ½/½, 1/½, 1/1.
        let s = PairScores {
            scores: vec![0.3, 0.1, 0.4, 0.2],
            labels: vec![
                PairLabel::Same,
                PairLabel::Same,
                PairLabel::Different,
                PairLabel::Different,
            ],
        };
        assert_eq!(
            roc_points(&s),
            vec![(0.0, 0.0), (0.0, 0.5), (0.5, 0.5), (0.5, 1.0), (1.0, 1.0)]
        );
    }

    #[test]
    fn tied_scores_make_one_diagonal_step() {
        let s = PairScores {
            scores: vec![0.5, 0.5],
            labels: vec![PairLabel::Same, PairLabel::Different],
        };
        assert_eq!(roc_points(&s), vec![(0.0, 0.0), (1.0, 1.0)]);
    }

    #[test]
    fn histogram_shares_sum_to_the_share_inside_the_range() {
        let h = histogram(&[0.05, 0.15, 0.15, 0.95, 2.0], 0.0, 1.0, 10);
        assert_eq!(h[0], 0.2);
        assert_eq!(h[1], 0.4);
        assert_eq!(h[9], 0.2);
        assert!((h.iter().sum::<f64>() - 0.8).abs() < 1e-12);
    }
}
