//! What a run reports while it runs: the events a progress display, a metrics log or a
//! test listens to.

/// What the loop reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Set-up is done; training starts.
    Started {
        adapter: String,
        tower: String,
        params: usize,
        train_images: usize,
        val_images: usize,
        steps: usize,
    },
    /// Mean loss of the steps read back since the last report.
    Loss {
        step: usize,
        pairs: usize,
        loss: f32,
        lr: f32,
        pairs_per_sec: f64,
    },
    /// A validation pass (and the training pairs' accuracy, if they are scored).
    Validation {
        pairs: usize,
        loss: f32,
        accuracy: f64,
        roc_auc: f64,
        train_accuracy: Option<f64>,
        pairs_per_sec: f64,
    },
    /// Time of every dispatch of one step, in recording order (milliseconds): device
    /// timestamps, or host wall-clock per dispatch where `host_timed`.
    Profile {
        step: usize,
        host_timed: bool,
        kernels: Vec<(&'static str, f64)>,
    },
    /// Something the user should know that is not an error.
    Note(String),
}

impl std::fmt::Display for Progress {
    /// The plain log line of each event.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Progress::Started {
                adapter,
                tower,
                params,
                train_images,
                val_images,
                steps,
            } => write!(
                f,
                "adapter: {adapter}\n{tower}\n{params} parameters; {train_images} training images, \
                 {val_images} held out for validation; {steps} steps"
            ),
            Progress::Loss {
                step,
                pairs,
                loss,
                lr,
                pairs_per_sec,
            } => {
                write!(
                    f,
                    "step {step:>5}  pairs {pairs:>7}  loss {loss:.4}  lr {lr:.2e}  {pairs_per_sec:.0} pairs/s"
                )
            }
            Progress::Validation {
                pairs,
                loss,
                accuracy,
                roc_auc,
                train_accuracy,
                pairs_per_sec,
            } => {
                write!(
                    f,
                    "validation after {pairs} pairs: loss {loss:.4}  val pair accuracy {accuracy:.4}  \
                     ROC AUC {roc_auc:.4}"
                )?;
                if let Some(t) = train_accuracy {
                    write!(f, "  (train pairs {t:.4})")?;
                }
                write!(f, "  {pairs_per_sec:.0} pairs/s")
            }
            Progress::Profile {
                step,
                host_timed,
                kernels,
            } => {
                let total: f64 = kernels.iter().map(|(_, ms)| ms).sum();
                let how = if *host_timed {
                    "host wall-clock, one submission per dispatch, optimizer left out"
                } else {
                    "device time"
                };
                writeln!(
                    f,
                    "profile of step {step} ({} dispatches, {total:.2} ms of {how}):",
                    kernels.len()
                )?;
                // Slowest first; `#k` is the kernel's place in the step (layers share names).
                let mut by_time: Vec<(usize, &(&str, f64))> = kernels.iter().enumerate().collect();
                by_time.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
                for (k, (name, ms)) in by_time {
                    let share = 100.0 * ms / total.max(1e-12);
                    writeln!(f, "  #{k:<3} {name:<28} {ms:>9.3} ms  {share:>5.1}%")?;
                }
                Ok(())
            }
            Progress::Note(text) => write!(f, "note: {text}"),
        }
    }
}
