//! `siamese sweep`: a grid or random search of runs, ranked by a validation metric.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use clap::{ArgMatches, Args};
use siamese_gpu::Gpu;
use siamese_gpu::error::{Error, Result};
use siamese_gpu::runs::{RunDir, train_run};
use siamese_gpu::sweep::{self, Axis, RankBy};

use super::STOP;
use super::output::ProgressDisplay;
use super::train::{SettingsArgs, print_settings};

#[derive(Args)]
pub struct SweepArgs {
    /// Values of one setting, KEY=V1,V2,… (repeat for more keys): a grid runs every
    /// combination; with --random, each run draws one of them.
    #[arg(long, value_name = "KEY=V1,V2")]
    grid: Vec<String>,
    /// A random search of N runs instead of the grid.
    #[arg(long, value_name = "N")]
    random: Option<usize>,
    /// A range a random search draws KEY from: KEY=LO:HI (uniform; integers if both are) or
    /// KEY=LO:HI:log (log-uniform, e.g. lr=1e-4:1e-2:log).
    #[arg(long, value_name = "KEY=LO:HI[:log]")]
    range: Vec<String>,
    /// Seed of the random search's draws.
    #[arg(long, default_value_t = 0)]
    sweep_seed: u64,
    /// The validation metric runs are ranked by: val_roc_auc or val_pair_accuracy.
    #[arg(long, default_value = "val_roc_auc")]
    rank_by: String,
    /// The sweep directory: one run directory per point, summary.json and summary.csv.
    /// Runs already finished there are reused; interrupted ones are resumed.
    #[arg(long)]
    out: PathBuf,
    /// Make the last line of stdout one JSON object with the ranked runs.
    #[arg(long)]
    json: bool,
    /// The base settings of every run (last: its help heading applies to every flag after it).
    #[command(flatten)]
    settings: SettingsArgs,
}

/// The points the arguments ask for: a grid, or a random search over grids and ranges.
fn points(args: &SweepArgs) -> Result<Vec<sweep::Point>> {
    let axes: Vec<Axis> = args.grid.iter().map(|g| g.parse()).collect::<Result<_>>()?;
    match args.random {
        Some(n) => {
            let ranges = args.range.iter().map(|r| r.parse()).collect::<Result<Vec<_>>>()?;
            Ok(sweep::random(&axes, &ranges, n, args.sweep_seed))
        }
        None if !args.range.is_empty() => Err(Error::Config(
            "--range draws values for a random search: add --random N".into(),
        )),
        None if axes.is_empty() => Err(Error::Config(
            "nothing to sweep: give --grid KEY=V1,V2 (and --random N with --range for a random search)"
                .into(),
        )),
        None => Ok(sweep::grid(&axes)),
    }
}

pub fn run(args: &SweepArgs, matches: &ArgMatches) -> Result<()> {
    let base = args.settings.resolve(matches)?;
    let rank_by: RankBy = args.rank_by.parse()?;
    // Every point's settings are checked before the first run starts.
    let runs = sweep::plan(&base, &points(args)?, &args.out)?;
    print_settings(&base);
    let gpu = Gpu::new()?;
    let mut train = |planned: &sweep::PlannedRun, dir: RunDir| {
        let mut display = ProgressDisplay::new();
        let trained = train_run(&gpu, &planned.settings, dir, false, &STOP, &mut |p| {
            display.show(p)
        });
        display.finish();
        let (_, result) = trained?;
        Ok(sweep::Metrics::of_result(&result).expect("train_run's result has every figure"))
    };
    let summary = sweep::run(
        runs,
        &args.out,
        rank_by,
        &mut train,
        &mut |line| eprintln!("{line}"),
        &|| STOP.load(Ordering::Relaxed),
    )?;
    println!("\nruns ranked by {} (validation):", rank_by.name());
    print!("{}", sweep::table(&summary.ranked));
    println!("summary in {} and summary.csv", summary.path.display());
    if args.json {
        println!("{}", summary.json);
    }
    if summary.all_failed() {
        return Err(Error::Training("every run of the sweep failed".into()));
    }
    Ok(())
}
