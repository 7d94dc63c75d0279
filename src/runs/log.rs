//! The files a run directory gets once training has started: `config.toml` (the resolved
//! settings) and `metrics.jsonl` (one line per progress event, appended by a resumed run).

use std::io::Write;
use std::path::Path;

use super::json::progress_json;
use crate::error::{Error, Result};
use crate::files::write_atomic;
use crate::settings::RunSettings;
use crate::train::Progress;

/// The run directory's log, started by the run's first progress event. The first failure
/// is kept (and nothing more is written) for the caller to report once training returns.
pub(super) struct RunLog<'a> {
    dir: &'a Path,
    resume: bool,
    settings: &'a RunSettings,
    metrics: Option<std::io::BufWriter<std::fs::File>>,
    error: Option<Error>,
}

impl<'a> RunLog<'a> {
    pub(super) fn new(dir: &'a Path, resume: bool, settings: &'a RunSettings) -> Self {
        RunLog {
            dir,
            resume,
            settings,
            metrics: None,
            error: None,
        }
    }

    /// Writes `p` (creating the directory and `config.toml` at the start of training).
    pub(super) fn record(&mut self, p: &Progress) {
        if self.error.is_some() {
            return;
        }
        let outcome = match p {
            Progress::Started { .. } => self.start(),
            _ => Ok(()),
        };
        let outcome = outcome.and_then(|()| match self.metrics.as_mut() {
            Some(m) => writeln!(m, "{}", progress_json(p))
                .and_then(|()| m.flush())
                .map_err(|e| Error::writing("metrics.jsonl", e)),
            None => Ok(()),
        });
        self.error = outcome.err();
    }

    /// The first write that failed, if one did.
    pub(super) fn into_error(self) -> Option<Error> {
        self.error
    }

    fn start(&mut self) -> Result<()> {
        std::fs::create_dir_all(self.dir).map_err(|e| {
            Error::File(format!(
                "cannot create the run directory {}: {e}",
                self.dir.display()
            ))
        })?;
        write_atomic(
            &self.dir.join("config.toml"),
            self.settings.to_toml().as_bytes(),
        )
        .map_err(|e| Error::writing("config.toml", e))?;
        // A resumed run appends to the metrics of the run it continues.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(self.resume)
            .write(true)
            .truncate(!self.resume)
            .open(self.dir.join("metrics.jsonl"))
            .map_err(|e| Error::writing("metrics.jsonl", e))?;
        self.metrics = Some(std::io::BufWriter::new(file));
        Ok(())
    }
}
