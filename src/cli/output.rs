//! What the subcommands print: training progress (a bar on a terminal, plain lines in a
//! pipe or a log) and the verification figures.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use siamese_gpu::eval::operating_points::{FAR_CONFIDENCE, OperatingPoint};
use siamese_gpu::eval::protocol::Validation;
use siamese_gpu::eval::verification::Verification;
use siamese_gpu::train::Progress;

/// The verification figures, as `train` and `eval` print them.
pub fn print_verification(v: &Validation, t: &Verification, val_pairs: usize) {
    println!(
        "validation pair accuracy {:.4}, ROC AUC {:.4} ({val_pairs} pairs)",
        v.accuracy, v.roc_auc
    );
    print_test(t);
}

pub fn print_test(t: &Verification) {
    println!(
        "test pair accuracy {:.4} at threshold {:.4} (chosen on validation), ROC AUC {:.4}",
        t.accuracy, t.threshold, t.roc_auc
    );
    println!(
        "Same-pair precision {:.4}, recall {:.4}, F1 {:.4} at that threshold; equal error rate {:.4}",
        t.precision, t.recall, t.f1, t.eer
    );
}

/// The operating points, one line each, and the thresholds the test pairs would choose
/// for the same targets (`unseen`: the test pairs are of classes held out of training).
pub fn print_operating_points(points: &[OperatingPoint], unseen: bool) {
    if points.is_empty() {
        return;
    }
    println!(
        "operating points (thresholds chosen on the validation pairs; rates on the test pairs):"
    );
    for p in points {
        print!(
            "  {:<10} threshold {:<10.4} test FAR {:.4}  FRR {:.4}",
            p.name(),
            p.threshold,
            p.test.far,
            p.test.frr
        );
        match p.far_bound {
            Some(b) => println!(
                "  (validation FAR ≤ {:.2e} with {:.0}% confidence: {} of {} Different pairs \
                 accepted, one-sided Clopper–Pearson)",
                b.upper,
                100.0 * FAR_CONFIDENCE,
                b.accepted,
                b.different
            ),
            None => println!(),
        }
    }
    let drift: Vec<String> = points
        .iter()
        .map(|p| {
            format!(
                "{} {:.4} ({:+.4})",
                p.name(),
                p.test_threshold,
                p.test_threshold - p.threshold
            )
        })
        .collect();
    let whose = if unseen {
        "the unseen classes' pairs (test)"
    } else {
        "the test pairs"
    };
    println!(
        "  thresholds {whose} would choose for the same targets: {}",
        drift.join(", ")
    );
}

/// Training progress on stderr: a bar with pairs/s and ETA on a terminal, plain log lines
/// otherwise (a pipe, a file, CI).
pub struct ProgressDisplay {
    terminal: bool,
    bar: Option<ProgressBar>,
}

impl ProgressDisplay {
    pub fn new() -> Self {
        ProgressDisplay {
            terminal: std::io::stderr().is_terminal(),
            bar: None,
        }
    }

    pub fn show(&mut self, p: &Progress) {
        if !self.terminal {
            eprintln!("{p}");
            return;
        }
        match p {
            Progress::Started { steps, .. } => {
                eprintln!("{p}");
                let style =
                    ProgressStyle::with_template("{bar:30} step {pos}/{len}  {msg}  ETA {eta}")
                        .expect("a valid progress template");
                self.bar = Some(ProgressBar::new(*steps as u64).with_style(style));
            }
            Progress::Loss {
                step,
                loss,
                pairs_per_sec,
                ..
            } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(*step as u64);
                    bar.set_message(format!("loss {loss:.4}  {pairs_per_sec:.0} pairs/s"));
                }
            }
            _ => match &self.bar {
                Some(bar) => bar.println(p.to_string()),
                None => eprintln!("{p}"),
            },
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
