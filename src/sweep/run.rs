//! Running a sweep into a directory of run directories: every point's settings are checked
//! before the first run starts; a run directory left by an earlier call is reused when its
//! run finished, resumed when it was interrupted, and refused when it holds other settings;
//! the runs are ranked and `summary.json` / `summary.csv` written. The training itself is
//! the caller's (`train`), so this is testable without a GPU.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::{Metrics, Point, RankBy, SweepRun, apply, csv, rank, run_name};
use crate::error::{Error, Result};
use crate::files::write_atomic;
use crate::runs::RunDir;
use crate::settings::RunSettings;

/// One run of a sweep: its directory name, its point and its full settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedRun {
    pub name: String,
    pub point: Point,
    pub settings: RunSettings,
}

/// The runs of `points` over `base`, every one's settings checked, refused if `out` already
/// holds a run of the same name with other settings (nothing has run or been written yet).
pub fn plan(base: &RunSettings, points: &[Point], out: &Path) -> Result<Vec<PlannedRun>> {
    let runs = points
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let name = run_name(i, p);
            let settings = apply(base, p).map_err(|e| Error::Config(format!("run {name}: {e}")))?;
            Ok(PlannedRun {
                name,
                point: p.clone(),
                settings,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    for run in &runs {
        let saved = out.join(&run.name).join("config.toml");
        if !saved.exists() {
            continue;
        }
        let differences = RunSettings::from_file(&saved)?.differences(&run.settings);
        if !differences.is_empty() {
            return Err(Error::Config(format!(
                "{} holds a run of other settings ({}); sweep into another --out, or delete \
                 that directory",
                out.join(&run.name).display(),
                differences.join("; ")
            )));
        }
    }
    Ok(runs)
}

/// How a planned run starts, from what its directory holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// It finished: its `result.json`'s figures.
    Reuse(Metrics),
    /// It was interrupted after a checkpoint.
    Resume,
    /// Nothing of it is there yet.
    Fresh,
}

impl Start {
    /// What `dir` holds.
    pub fn of(dir: &Path) -> Start {
        let finished = std::fs::read(dir.join("result.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .and_then(|r: serde_json::Value| Metrics::of_result(&r));
        match finished {
            Some(m) => Start::Reuse(m),
            None if dir.join("model.safetensors").exists() => Start::Resume,
            None => Start::Fresh,
        }
    }
}

/// A finished sweep: its runs ranked, `summary.json`'s contents and path.
#[derive(Debug, Clone)]
pub struct Summary {
    pub ranked: Vec<SweepRun>,
    pub json: serde_json::Value,
    pub path: PathBuf,
}

impl Summary {
    /// Whether no run of the sweep succeeded.
    pub fn all_failed(&self) -> bool {
        self.ranked.iter().all(|o| o.result.is_err())
    }
}

/// Runs `runs` in order into `out` with `train` (which trains one run into the directory it
/// is given and returns its figures; a failed run does not stop the sweep), telling `log`
/// what happens; ranks the runs by `rank_by` and writes the summary files. `stopped` is
/// asked after each run: a stopped sweep is an error saying how to continue it.
pub fn run(
    runs: Vec<PlannedRun>,
    out: &Path,
    rank_by: RankBy,
    train: &mut dyn FnMut(&PlannedRun, RunDir) -> Result<Metrics>,
    log: &mut dyn FnMut(&str),
    stopped: &dyn Fn() -> bool,
) -> Result<Summary> {
    std::fs::create_dir_all(out).map_err(|e| {
        Error::File(format!(
            "cannot create the sweep directory {}: {e}",
            out.display()
        ))
    })?;
    let total = runs.len();
    let mut done = Vec::with_capacity(total);
    for (i, planned) in runs.into_iter().enumerate() {
        let dir = out.join(&planned.name);
        log(&format!("\nrun {}/{total}: {}", i + 1, planned.name));
        let result = match Start::of(&dir) {
            Start::Reuse(m) => {
                log(&format!(
                    "already finished in {}: reusing its result.json",
                    dir.display()
                ));
                Ok(m)
            }
            Start::Resume => train(&planned, RunDir::Resume(&dir)),
            Start::Fresh => train(&planned, RunDir::Fresh(&dir)),
        };
        if let Err(e) = &result {
            log(&format!("run {} failed: {e}", planned.name));
        }
        if stopped() {
            return Err(Error::Training(format!(
                "sweep stopped during run {}; run the same command again to continue it",
                planned.name
            )));
        }
        done.push(SweepRun {
            name: planned.name,
            point: planned.point,
            result,
        });
    }
    rank(&mut done, rank_by);
    let json = summary_json(&done, out, rank_by);
    let path = out.join("summary.json");
    let text = serde_json::to_string_pretty(&json).expect("JSON");
    write_atomic(&path, text.as_bytes()).map_err(|e| Error::writing("summary.json", e))?;
    write_atomic(&out.join("summary.csv"), csv(&done).as_bytes())
        .map_err(|e| Error::writing("summary.csv", e))?;
    Ok(Summary {
        ranked: done,
        json,
        path,
    })
}

/// `summary.json`: the ranked runs with their settings and figures (or why they failed).
fn summary_json(ranked: &[SweepRun], out: &Path, rank_by: RankBy) -> serde_json::Value {
    let runs: Vec<serde_json::Value> = ranked
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let settings: serde_json::Map<_, _> =
                o.point.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            let mut run = json!({
                "rank": i + 1, "run": o.name, "dir": out.join(&o.name).display().to_string(),
                "settings": settings,
            });
            let fields = match &o.result {
                Ok(m) => json!({"status": "ok", "val_roc_auc": m.val_roc_auc, "val_pair_accuracy": m.val_pair_accuracy,
                    "test_pair_accuracy": m.test_pair_accuracy, "test_roc_auc": m.test_roc_auc, "pairs_per_sec": m.pairs_per_sec}),
                Err(e) => json!({"status": "failed", "error": e.to_string()}),
            };
            let run_fields = run.as_object_mut().expect("an object");
            run_fields.extend(fields.as_object().expect("an object").clone());
            run
        })
        .collect();
    json!({"rank_by": rank_by.name(), "runs": runs})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::{Axis, grid};

    fn metrics(auc: f64) -> Metrics {
        Metrics {
            val_roc_auc: auc,
            val_pair_accuracy: auc,
            test_pair_accuracy: 0.5,
            test_roc_auc: 0.5,
            pairs_per_sec: 1.0,
        }
    }

    /// A sweep over margins with a stand-in trainer: what each run directory holds decides
    /// whether a run is reused, resumed or started, and the summary ranks them.
    #[test]
    fn finished_runs_are_reused_interrupted_ones_resumed_and_the_rest_started() {
        let out = std::env::temp_dir().join(format!("siamese-sweep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let axes = [Axis {
            key: "margin".into(),
            values: vec!["0.5".into(), "1.0".into(), "2.0".into()],
        }];
        let runs = plan(&RunSettings::default(), &grid(&axes), &out).unwrap();
        let names: Vec<String> = runs.iter().map(|r| r.name.clone()).collect();
        // Run 0 finished earlier; run 1 was interrupted after a checkpoint; run 2 is new.
        for name in &names[..2] {
            std::fs::create_dir_all(out.join(name)).unwrap();
        }
        let result = r#"{"val_roc_auc": 0.7, "val_pair_accuracy": 0.7, "test_pair_accuracy": 0.5,
            "test_roc_auc": 0.5, "pairs_per_sec": 1.0}"#;
        std::fs::write(out.join(&names[0]).join("result.json"), result).unwrap();
        std::fs::write(out.join(&names[1]).join("model.safetensors"), b"").unwrap();

        let mut calls = Vec::new();
        let mut train = |run: &PlannedRun, dir: RunDir| {
            let how = match dir {
                RunDir::Resume(_) => "resume",
                RunDir::Fresh(_) => "fresh",
                RunDir::None => "none",
            };
            calls.push((run.name.clone(), how));
            match run.settings.margin {
                Some(m) if m > 1.5 => Err(Error::Training("the loss became NaN at step 2".into())),
                _ => Ok(metrics(0.9)),
            }
        };
        let mut lines = Vec::new();
        let summary = run(
            runs,
            &out,
            RankBy::ValRocAuc,
            &mut train,
            &mut |l| lines.push(l.to_string()),
            &|| false,
        )
        .unwrap();
        assert_eq!(
            calls,
            [(names[1].clone(), "resume"), (names[2].clone(), "fresh")]
        );
        assert!(lines.iter().any(|l| l.contains("reusing its result.json")));
        let order: Vec<&str> = summary.ranked.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            order,
            [&names[1], &names[0], &names[2]],
            "best first, failed last"
        );
        assert!(!summary.all_failed());
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
        assert_eq!(written, summary.json);
        assert_eq!(written["runs"][2]["status"], "failed");
        let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
        assert_eq!(csv.lines().count(), 4);

        // Other base settings are refused by the plan, before anything runs.
        let other = RunSettings {
            seed: 7,
            ..RunSettings::default()
        };
        let err = plan(&other, &grid(&axes), &out);
        assert!(
            err.is_ok(),
            "no config.toml was written by the stand-in trainer"
        );
        std::fs::write(
            out.join(&names[0]).join("config.toml"),
            RunSettings::default().to_toml(),
        )
        .unwrap();
        let err = plan(&other, &grid(&axes), &out).unwrap_err().to_string();
        assert!(err.contains("holds a run of other settings"), "{err}");
        std::fs::remove_dir_all(&out).unwrap();
    }
}
