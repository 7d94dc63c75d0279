//! Hyperparameter sweeps: the points of a grid or a random search over run settings, and the
//! ranked summary of their results.
//!
//! A point is a list of `(key, value)` settings applied with [`RunSettings::set`] on top of
//! the base settings, so any setting can be swept (margin, embedding_dim, lr, loss, batch, …)
//! and a bad key or value is refused with the setting's own message before anything runs.
//! Runs are ranked by a validation metric only: the test split never chooses a model.
//! [`run`] holds the orchestration: checking every point first, reusing finished runs and
//! resuming interrupted ones, ranking, and the summary files.

mod run;

pub use run::{PlannedRun, Start, Summary, plan, run};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::error::{Error, Result};
use crate::settings::RunSettings;

/// `--grid KEY=V1,V2,…`: the values one setting takes.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub key: String,
    pub values: Vec<String>,
}

impl std::str::FromStr for Axis {
    type Err = Error;

    fn from_str(text: &str) -> Result<Axis> {
        let bad = || {
            Error::Config(format!(
                "--grid `{text}`: write KEY=V1,V2,… (e.g. margin=0.5,1.0 or loss=contrastive,triplet)"
            ))
        };
        let (key, values) = text.split_once('=').ok_or_else(bad)?;
        let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).collect();
        if key.trim().is_empty() || values.iter().any(String::is_empty) {
            return Err(bad());
        }
        Ok(Axis {
            key: key.trim().to_string(),
            values,
        })
    }
}

/// `--range KEY=LO:HI[:log]`: an interval a random search draws from, uniformly or (`log`)
/// log-uniformly; integers when both bounds are written as integers.
#[derive(Debug, Clone, PartialEq)]
pub struct Range {
    pub key: String,
    pub lo: f64,
    pub hi: f64,
    pub log: bool,
    pub integer: bool,
}

impl std::str::FromStr for Range {
    type Err = Error;

    fn from_str(text: &str) -> Result<Range> {
        let bad = |why: &str| {
            Error::Config(format!(
                "--range `{text}`: {why}; write KEY=LO:HI or KEY=LO:HI:log (e.g. lr=1e-4:1e-2:log, \
                 margin=0.2:2, batch=32:256)"
            ))
        };
        let (key, spec) = text.split_once('=').ok_or_else(|| bad("no `=`"))?;
        let parts: Vec<&str> = spec.split(':').collect();
        let (lo, hi, log) = match parts.as_slice() {
            [lo, hi] => (*lo, *hi, false),
            [lo, hi, "log"] => (*lo, *hi, true),
            _ => return Err(bad("expected LO:HI")),
        };
        let integer = lo.parse::<i64>().is_ok() && hi.parse::<i64>().is_ok();
        let (lo, hi): (f64, f64) = (
            lo.parse().map_err(|_| bad("LO is not a number"))?,
            hi.parse().map_err(|_| bad("HI is not a number"))?,
        );
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(bad("the bounds must be finite with LO < HI"));
        }
        if log && lo <= 0.0 {
            return Err(bad("a log range needs LO > 0"));
        }
        Ok(Range {
            key: key.trim().to_string(),
            lo,
            hi,
            log,
            integer,
        })
    }
}

/// One run of a sweep: the settings it changes, in axis order.
pub type Point = Vec<(String, String)>;

/// Every combination of the axes' values (the first axis varies slowest).
pub fn grid(axes: &[Axis]) -> Vec<Point> {
    axes.iter().fold(vec![Vec::new()], |points, axis| {
        points
            .iter()
            .flat_map(|p| {
                axis.values.iter().map(move |v| {
                    let mut q = p.clone();
                    q.push((axis.key.clone(), v.clone()));
                    q
                })
            })
            .collect()
    })
}

/// `n` points drawn with `seed`: each axis's value uniformly among its values, each range's
/// as the range says (3 significant digits, so names and tables stay readable).
pub fn random(axes: &[Axis], ranges: &[Range], n: usize, seed: u64) -> Vec<Point> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let mut point: Point = axes
                .iter()
                .map(|a| {
                    (
                        a.key.clone(),
                        a.values[rng.random_range(0..a.values.len())].clone(),
                    )
                })
                .collect();
            for r in ranges {
                let u: f64 = rng.random();
                let v = if r.log {
                    (r.lo.ln() + u * (r.hi.ln() - r.lo.ln())).exp()
                } else {
                    r.lo + u * (r.hi - r.lo)
                };
                let text = if r.integer {
                    (v.round() as i64).to_string()
                } else {
                    format!("{:.2e}", v)
                        .parse::<f64>()
                        .expect("a float")
                        .to_string()
                };
                point.push((r.key.clone(), text));
            }
            point
        })
        .collect()
}

/// The settings of `point` on top of `base`; refuses an unknown key or a bad value.
pub fn apply(base: &RunSettings, point: &Point) -> Result<RunSettings> {
    let mut settings = base.clone();
    for (key, value) in point {
        settings.set(key, value)?;
    }
    settings.to_train_config()?;
    Ok(settings)
}

/// The run directory name of point `index`: `03_margin=0.5_lr=0.001`.
pub fn run_name(index: usize, point: &Point) -> String {
    let mut name = format!("{index:02}");
    for (k, v) in point {
        let v: String = v
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || ".-+".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        name.push_str(&format!("_{k}={v}"));
    }
    name
}

/// The validation metric runs are ranked by (higher is better).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RankBy {
    ValRocAuc,
    ValPairAccuracy,
}

impl std::str::FromStr for RankBy {
    type Err = Error;

    fn from_str(s: &str) -> Result<RankBy> {
        match s {
            "val_roc_auc" => Ok(RankBy::ValRocAuc),
            "val_pair_accuracy" => Ok(RankBy::ValPairAccuracy),
            other => Err(Error::Config(format!(
                "--rank-by `{other}`: use val_roc_auc or val_pair_accuracy (runs are ranked on \
                 validation, never on test)"
            ))),
        }
    }
}

impl RankBy {
    pub fn name(self) -> &'static str {
        match self {
            RankBy::ValRocAuc => "val_roc_auc",
            RankBy::ValPairAccuracy => "val_pair_accuracy",
        }
    }
}

/// The figures of a finished run.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    pub val_roc_auc: f64,
    pub val_pair_accuracy: f64,
    pub test_pair_accuracy: f64,
    pub test_roc_auc: f64,
    pub pairs_per_sec: f64,
}

impl Metrics {
    /// The figures of a run's `result.json` (None if any is missing).
    pub fn of_result(result: &serde_json::Value) -> Option<Metrics> {
        let f = |key: &str| result.get(key).and_then(serde_json::Value::as_f64);
        Some(Metrics {
            val_roc_auc: f("val_roc_auc")?,
            val_pair_accuracy: f("val_pair_accuracy")?,
            test_pair_accuracy: f("test_pair_accuracy")?,
            test_roc_auc: f("test_roc_auc")?,
            pairs_per_sec: f("pairs_per_sec")?,
        })
    }
}

/// What became of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepRun {
    pub name: String,
    pub point: Point,
    /// The figures, or why the run failed (a failed run does not stop the sweep).
    pub result: Result<Metrics>,
}

/// Best first by `by`; failed runs last, in their order.
pub fn rank(outcomes: &mut [SweepRun], by: RankBy) {
    let key = |o: &SweepRun| match &o.result {
        Ok(m) => match by {
            RankBy::ValRocAuc => m.val_roc_auc,
            RankBy::ValPairAccuracy => m.val_pair_accuracy,
        },
        Err(_) => f64::NEG_INFINITY,
    };
    outcomes.sort_by(|a, b| key(b).total_cmp(&key(a)));
}

/// Column headings of the summary after the rank, run and swept keys.
const FIGURES: [&str; 5] = [
    "val_roc_auc",
    "val_pair_accuracy",
    "test_pair_accuracy",
    "test_roc_auc",
    "pairs_per_sec",
];

fn figures(m: &Metrics) -> [String; 5] {
    [
        format!("{:.4}", m.val_roc_auc),
        format!("{:.4}", m.val_pair_accuracy),
        format!("{:.4}", m.test_pair_accuracy),
        format!("{:.4}", m.test_roc_auc),
        format!("{:.0}", m.pairs_per_sec),
    ]
}

/// The swept keys, in the order they first appear.
fn keys(outcomes: &[SweepRun]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for (k, _) in outcomes.iter().flat_map(|o| &o.point) {
        if !keys.contains(k) {
            keys.push(k.clone());
        }
    }
    keys
}

/// The rows of the summary (ranked outcomes), headings first.
fn rows(ranked: &[SweepRun]) -> Vec<Vec<String>> {
    let keys = keys(ranked);
    let mut head = vec!["rank".to_string(), "run".to_string()];
    head.extend(keys.iter().cloned());
    head.extend(FIGURES.iter().map(|s| s.to_string()));
    head.push("status".into());
    let mut rows = vec![head];
    for (i, o) in ranked.iter().enumerate() {
        let mut row = vec![(i + 1).to_string(), o.name.clone()];
        for k in &keys {
            let v = o
                .point
                .iter()
                .find(|(pk, _)| pk == k)
                .map(|(_, v)| v.clone());
            row.push(v.unwrap_or_default());
        }
        match &o.result {
            Ok(m) => {
                row.extend(figures(m));
                row.push("ok".into());
            }
            Err(e) => {
                row.extend(std::iter::repeat_n(String::new(), FIGURES.len()));
                row.push(format!("failed: {e}"));
            }
        }
        rows.push(row);
    }
    rows
}

/// The ranked summary as an aligned text table.
pub fn table(ranked: &[SweepRun]) -> String {
    let rows = rows(ranked);
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, &w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The ranked summary as CSV (RFC 4180 quoting).
pub fn csv(ranked: &[SweepRun]) -> String {
    let quote = |cell: &String| {
        if cell.contains([',', '"', '\n']) {
            format!("\"{}\"", cell.replace('"', "\"\""))
        } else {
            cell.clone()
        }
    };
    rows(ranked)
        .iter()
        .map(|r| r.iter().map(quote).collect::<Vec<_>>().join(",") + "\n")
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axis(s: &str) -> Axis {
        s.parse().unwrap()
    }

    #[test]
    fn a_grid_is_every_combination_first_axis_slowest() {
        let points = grid(&[axis("margin=0.5,1.0"), axis("lr=1e-3,3e-4")]);
        let names: Vec<String> = points
            .iter()
            .enumerate()
            .map(|(i, p)| run_name(i, p))
            .collect();
        assert_eq!(
            names,
            [
                "00_margin=0.5_lr=1e-3",
                "01_margin=0.5_lr=3e-4",
                "02_margin=1.0_lr=1e-3",
                "03_margin=1.0_lr=3e-4"
            ]
        );
    }

    #[test]
    fn random_points_stay_in_their_ranges_and_repeat_with_the_seed() {
        let ranges: Vec<Range> = ["lr=1e-4:1e-2:log", "batch=32:256", "margin=0.2:2"]
            .iter()
            .map(|r| r.parse().unwrap())
            .collect();
        let points = random(&[axis("loss=contrastive,triplet")], &ranges, 50, 7);
        assert_eq!(
            points,
            random(&[axis("loss=contrastive,triplet")], &ranges, 50, 7)
        );
        for p in &points {
            assert!(["contrastive", "triplet"].contains(&p[0].1.as_str()));
            let lr: f64 = p[1].1.parse().unwrap();
            assert!((1e-4..=1e-2).contains(&lr), "{lr}");
            let batch: i64 = p[2].1.parse().expect("an integer batch");
            assert!((32..=256).contains(&batch));
            let margin: f64 = p[3].1.parse().unwrap();
            assert!((0.2..=2.0).contains(&margin));
        }
        // Log-uniform: about half the draws below the geometric middle 1e-3.
        let below = points
            .iter()
            .filter(|p| p[1].1.parse::<f64>().unwrap() < 1e-3)
            .count();
        assert!((10..=40).contains(&below), "{below} of 50 below 1e-3");
    }

    #[test]
    fn bad_axes_ranges_and_settings_are_refused_naming_them() {
        assert!(
            "margin"
                .parse::<Axis>()
                .unwrap_err()
                .to_string()
                .contains("KEY=V1,V2")
        );
        assert!(
            "lr=1:0"
                .parse::<Range>()
                .unwrap_err()
                .to_string()
                .contains("LO < HI")
        );
        assert!(
            "lr=0:1:log"
                .parse::<Range>()
                .unwrap_err()
                .to_string()
                .contains("LO > 0")
        );
        let base = RunSettings::default();
        let e = apply(&base, &vec![("marign".into(), "1".into())])
            .unwrap_err()
            .to_string();
        assert!(e.contains("marign") && e.contains("unknown field"), "{e}");
        let e = apply(&base, &vec![("margin".into(), "-1".into())])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("margin must be a finite number ≥ 0, got -1"),
            "{e}"
        );
        let e = apply(&base, &vec![("batch".into(), "0.5".into())])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("batch = 0.5"), "{e}");
        let s = apply(
            &base,
            &vec![
                ("loss".into(), "triplet".into()),
                ("embedding_dim".into(), "32".into()),
            ],
        )
        .unwrap();
        assert_eq!(s.loss, "triplet");
        assert!(
            s.to_train_config()
                .unwrap()
                .tower
                .to_string()
                .ends_with("dense 32")
        );
    }

    #[test]
    fn runs_rank_by_the_validation_metric_failures_last() {
        let run = |name: &str, auc: f64, acc: f64| SweepRun {
            name: name.into(),
            point: vec![("margin".into(), name.into())],
            result: Ok(Metrics {
                val_roc_auc: auc,
                val_pair_accuracy: acc,
                test_pair_accuracy: 0.5,
                test_roc_auc: 0.5,
                pairs_per_sec: 10.0,
            }),
        };
        let failed = SweepRun {
            name: "f".into(),
            point: vec![("margin".into(), "9".into())],
            result: Err(Error::Training("the loss became NaN at step 2".into())),
        };
        let mut outcomes = vec![failed, run("a", 0.8, 0.9), run("b", 0.9, 0.7)];
        rank(&mut outcomes, RankBy::ValRocAuc);
        let order: Vec<&str> = outcomes.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(order, ["b", "a", "f"]);
        rank(&mut outcomes, RankBy::ValPairAccuracy);
        assert_eq!(outcomes[0].name, "a");
        let t = table(&outcomes);
        assert!(
            t.lines()
                .next()
                .unwrap()
                .starts_with("rank  run  margin  val_roc_auc"),
            "{t}"
        );
        assert!(t.contains("failed: the loss became NaN at step 2"));
        let c = csv(&outcomes);
        assert_eq!(
            c.lines().nth(1).unwrap(),
            "1,a,a,0.8000,0.9000,0.5000,0.5000,10,ok"
        );
    }
}
