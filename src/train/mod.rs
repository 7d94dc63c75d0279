//! Training: the run's configuration, the step program submitted once per step, the run
//! (set-up, step loop, validation, finish), the doctor's evidence gathered on the way, and
//! the progress it reports.
//!
//! A run reads as [`train_with`]: [`TrainConfig`] checked → the data uploaded once → a
//! [`TrainStep`] recorded once → steps, with losses read back every `log_every` steps →
//! validation every `eval_every` pairs → the test scores, metrics and diagnosis of the
//! finished run, or the [`Outcome`] that ended it early.

mod config;
mod evidence;
mod progress;
mod run;
mod step;

pub use config::{TrainConfig, Xbm};
pub use progress::Progress;
pub use run::{Divergence, Outcome, RunControl, TrainReport, TrainingState, train, train_with};
pub use step::TrainStep;
