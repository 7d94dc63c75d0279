//! The subcommands, one module each, and what they share: the Ctrl-C flag, the exit status,
//! the terminal output.
//!
//! Run settings come in three layers: the defaults (the reference recipe), then a TOML file
//! (`--config`), then the flags actually typed — clap reports where each value came from, so
//! a flag overrides the file only when given (`siamese_gpu::settings`).

mod compare;
mod devices;
mod embed;
mod eval;
mod export;
mod index;
mod output;
mod pairs_eval;
mod query;
#[cfg(feature = "serve")]
mod serve;
mod sweep;
mod train;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{ArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "siamese",
    version,
    about = "Train Siamese (metric-learning) networks on the GPU"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Train a Siamese network and report its test verification accuracy.
    Train(Box<train::TrainArgs>),
    /// Train one run per point of a grid or random search and rank them by a validation metric.
    Sweep(Box<sweep::SweepArgs>),
    /// List the GPU adapters wgpu can see, best first, and open the one that would be used
    /// (SIAMESE_ADAPTER=<name substring> picks another).
    Devices,
    /// Embed image files, a folder (recursively) or a dataset split with a trained model;
    /// write a float32 [N, D] array (.npy with the ids beside it, .safetensors or .jsonl).
    Embed(embed::EmbedArgs),
    /// Evaluate a trained model: every metric of the evaluation module on the run's dataset.
    Eval(eval::EvalArgs),
    /// Decide whether two images (or each pair of a CSV) show the same thing, at an operating
    /// point the run stored; exit status 0 Same, 1 Different, 2 error.
    Compare(compare::CompareArgs),
    /// Build, grow or export a gallery index of images embedded by a trained model.
    Index(index::IndexArgs),
    /// The nearest images of an index to each query image, and the label most of them share.
    Query(query::QueryArgs),
    /// Write a trained model as an ONNX graph (the tower, and a BCE run's head).
    Export(export::ExportArgs),
    /// Serve a trained model (and a gallery index) over HTTP: embed, compare, query.
    #[cfg(feature = "serve")]
    Serve(serve::ServeArgs),
}

/// Raised by Ctrl-C; the trainer saves its state and stops at the next step.
static STOP: AtomicBool = AtomicBool::new(false);

/// Runs `command` (`matches` are its subcommand's) and says how it went: 0, 1 with the
/// error on stderr, or 130 (128 + SIGINT) when Ctrl-C stopped it.
pub fn run(command: Command, matches: &ArgMatches) -> ExitCode {
    if matches!(command, Command::Train(_) | Command::Sweep(_)) {
        let installed = ctrlc::set_handler(|| {
            if STOP.swap(true, Ordering::Relaxed) {
                std::process::exit(130); // a second Ctrl-C does not wait
            }
            eprintln!("\nstopping after this step (Ctrl-C again to quit at once)");
        });
        if let Err(e) = installed {
            eprintln!("error: cannot install the Ctrl-C handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    let outcome = match &command {
        Command::Train(args) => train::run(args, matches),
        Command::Sweep(args) => sweep::run(args, matches),
        Command::Devices => devices::run(),
        Command::Embed(args) => embed::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Index(args) => index::run(args),
        Command::Query(args) => query::run(args),
        Command::Export(args) => export::run(args),
        #[cfg(feature = "serve")]
        Command::Serve(args) => serve::run(args),
        // The exit status is the decision; an error is 2, as `cmp` and `diff` have it.
        Command::Compare(args) => {
            return match compare::run(args) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            };
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            if STOP.load(Ordering::Relaxed) {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
