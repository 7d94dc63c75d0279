//! A run directory: one training run of [`RunSettings`] and the files it leaves —
//! `config.toml` (the resolved settings, which `--config` reads back), `metrics.jsonl`,
//! `model.safetensors` (weights and optimizer state, at every validation and when stopped),
//! `result.json`, the doctor's `report.json` and the plots.
//!
//! Nothing is written until training has started (set-up, data and configuration all good),
//! and every file goes through a temporary name and a rename, so a failed or interrupted
//! command leaves what was on disk as it was. The output location is checked before the
//! first step, so a run that could not be saved does not train first.

pub mod json;
mod log;
pub mod saved;

use std::path::Path;
use std::sync::atomic::AtomicBool;

use serde_json::json;

use crate::checkpoint;
use crate::error::{Error, Result};
use crate::files::write_atomic;
use crate::gpu::Gpu;
use crate::model::{ModelValues, SiameseModel};
use crate::report::{embedding_metrics_json, verification_json, write_report};
use crate::settings::RunSettings;
use crate::train::{self, Outcome, Progress, RunControl, TrainConfig, TrainReport, TrainingState};
use log::RunLog;

/// The metadata key of the model file's operating points (`json::operating_points_json`).
pub const OPERATING_POINTS_KEY: &str = "operating_points";

/// Where a run goes: nowhere, a fresh run directory, or one to continue.
#[derive(Debug, Clone, Copy)]
pub enum RunDir<'a> {
    None,
    Fresh(&'a Path),
    Resume(&'a Path),
}

/// Trains one run of `settings`, showing its progress through `show`; with a run directory,
/// writes it as the module says. `stop` ends the run at the next step, saving its state.
/// Returns the report and `result.json`'s contents; a run that stopped or diverged is an
/// error saying so (and, with a directory, how to go on and where the doctor's report is).
pub fn train_run(
    gpu: &Gpu,
    settings: &RunSettings,
    dir: RunDir,
    profile: bool,
    stop: &AtomicBool,
    show: &mut dyn FnMut(&Progress),
) -> Result<(TrainReport, serde_json::Value)> {
    let mut cfg = settings.to_train_config()?;
    cfg.profile = profile;
    let (out, resume) = open(dir, &cfg, settings)?;
    let fingerprint = settings.fingerprint();
    let mut save_state = |model: &SiameseModel, state: &TrainingState| -> Result<()> {
        let dir = out.expect("saving only with a run directory");
        let metadata = [
            ("seed", cfg.seed.to_string()),
            ("steps_done", state.steps_done.to_string()),
            ("train_pairs", (state.steps_done * cfg.batch).to_string()),
            ("pixel_shift", cfg.pixel_norm.shift.to_string()),
            ("pixel_scale", cfg.pixel_norm.scale.to_string()),
            ("config", fingerprint.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        checkpoint::save_checkpoint(
            &dir.join("model.safetensors"),
            model,
            &state.values,
            &state.optimizer,
            metadata,
        )
    };
    let mut log = out.map(|dir| RunLog::new(dir, resume.is_some(), settings));
    let mut on_progress = |p: &Progress| {
        show(p);
        if let Some(log) = log.as_mut() {
            log.record(p);
        }
    };
    let init_from = |model: &SiameseModel, values: &mut ModelValues| -> Result<String> {
        let path = settings.init_from.as_ref().expect("only with --init-from");
        let report = checkpoint::init_from(path, model, values, settings.init_allow_mismatch)?;
        Ok(format!("--init-from {}:\n{report}", path.display()))
    };
    let control = RunControl {
        init: match settings.init_from {
            Some(_) => Some(&init_from),
            None => None,
        },
        resume,
        stop: Some(stop),
        save: match out {
            Some(_) => Some(&mut save_state),
            None => None,
        },
    };
    let outcome = train::train_with(gpu, &cfg, control, &mut on_progress);
    if let Some(error) = log.and_then(RunLog::into_error) {
        return Err(error);
    }
    let report = finished(outcome?, out)?;
    let result = json::result_json(&report, &cfg);
    if let Some(dir) = out {
        // The model file carries its operating points, so `compare` needs nothing else.
        checkpoint::add_metadata(
            &dir.join("model.safetensors"),
            &[(OPERATING_POINTS_KEY, result["operating_points"].to_string())],
        )?;
        write_results(dir, &report, &result)?;
    }
    Ok((report, result))
}

/// The run directory to write (checked before anything trains) and the state to resume.
fn open<'a>(
    dir: RunDir<'a>,
    cfg: &TrainConfig,
    settings: &RunSettings,
) -> Result<(Option<&'a Path>, Option<TrainingState>)> {
    match dir {
        RunDir::None => Ok((None, None)),
        RunDir::Fresh(dir) => {
            check_writable_dir(dir)?;
            if dir.join("model.safetensors").exists() {
                return Err(Error::Config(format!(
                    "{} already holds a trained run (model.safetensors); continue it with \
                     --resume {0}, or choose another --out (delete the directory to start over)",
                    dir.display()
                )));
            }
            Ok((Some(dir), None))
        }
        RunDir::Resume(dir) => {
            let path = dir.join("model.safetensors");
            if !path.exists() {
                return Err(Error::Config(format!(
                    "{} holds no model.safetensors: the run stopped before its first checkpoint \
                     (or this is not a run directory); start it again with --out {0}",
                    dir.display()
                )));
            }
            let state = saved::resume_state(&path, cfg, settings)?;
            eprintln!("resuming after step {}", state.steps_done);
            Ok((Some(dir), Some(state)))
        }
    }
}

/// Refuses a run directory that cannot be made: a path that is a file, or one below a file.
fn check_writable_dir(dir: &Path) -> Result<()> {
    let blocked = dir.ancestors().find(|p| p.exists() && !p.is_dir());
    match blocked {
        Some(file) => Err(Error::Config(format!(
            "--out {}: {} is a file, not a directory; choose another --out",
            dir.display(),
            file.display()
        ))),
        None => Ok(()),
    }
}

/// The report of a run that trained to the end; a stopped or diverged run as the error the
/// user reads (with the doctor's report written for a diverged one).
fn finished(outcome: Outcome, out: Option<&Path>) -> Result<TrainReport> {
    match outcome {
        Outcome::Trained(report) => Ok(*report),
        stopped @ Outcome::Stopped { .. } => Err(Error::Training(match out {
            Some(dir) => format!("{stopped}: continue with --resume {}", dir.display()),
            None => format!("{stopped} (without --out RUN_DIR nothing was saved)"),
        })),
        Outcome::Diverged(d) => {
            // The doctor still reads what the run did before it blew up.
            eprintln!("{}", d.diagnosis);
            let Some(dir) = out else {
                return Err(Error::Training(d.message));
            };
            write_report(dir, &d.diagnosis, json!({})).map_err(|e| {
                Error::Training(format!(
                    "{}; and report.json could not be written: {e}",
                    d.message
                ))
            })?;
            Err(Error::Training(format!(
                "{} (the doctor's report is in {})",
                d.message,
                dir.display()
            )))
        }
    }
}

/// `result.json`, `report.json` and the plots of a finished run.
fn write_results(dir: &Path, report: &TrainReport, result: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(result).expect("JSON");
    write_atomic(&dir.join("result.json"), text.as_bytes())
        .map_err(|e| Error::writing("result.json", e))?;
    let mut metrics = embedding_metrics_json(&report.embedding_metrics);
    metrics["verification"] = verification_json(&report.diagnosis.evidence, &report.test);
    write_report(dir, &report.diagnosis, metrics)
        .map_err(|e| Error::File(format!("cannot write the report: {e}")))?;
    Ok(())
}
