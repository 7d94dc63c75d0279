//! `siamese train`: the settings flags every training command shares, and one training run.

use std::path::PathBuf;

use clap::{ArgMatches, Args};
use siamese_gpu::Gpu;
use siamese_gpu::data::augment::Augment;
use siamese_gpu::error::{Error, Result};
use siamese_gpu::runs::saved::SavedRun;
use siamese_gpu::runs::{RunDir, train_run};
use siamese_gpu::settings::RunSettings;

use super::STOP;
use super::output::{ProgressDisplay, print_operating_points, print_test};
use super::pairs_eval::PairsFileArgs;

/// The settings of `train` and `sweep`: a `--config` file, the augmentation preset, and every
/// setting as a flag, which overrides the same key of the file.
#[derive(Args)]
#[command(next_help_heading = "Run settings (each also a key of --config)")]
pub struct SettingsArgs {
    /// A TOML file of settings (keys as these flags, with `_` for `-`); flags given override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Preset: --rotation-range 10 --width-shift-range 0.1 --height-shift-range 0.1
    /// --zoom-range 0.1 --fill-mode constant (flags given beside it override it).
    #[arg(long)]
    augment: bool,
    #[command(flatten)]
    settings: RunSettings,
}

impl SettingsArgs {
    /// Defaults, then the `--config` file (and the preset), then the flags given on the
    /// command line (`matches` are this subcommand's); checked.
    pub fn resolve(&self, matches: &ArgMatches) -> Result<RunSettings> {
        let mut base = match &self.config {
            Some(path) => RunSettings::from_file(path)?,
            None => RunSettings::default(),
        };
        if self.augment {
            let preset = Augment::PRESET;
            base.rotation_range = preset.rotation_range;
            base.width_shift_range = preset.width_shift_range;
            base.height_shift_range = preset.height_shift_range;
            base.zoom_range = preset.zoom_range;
            base.fill_mode = preset.fill_mode.to_string();
        }
        let settings = base.with_flags(&self.settings, matches)?;
        settings.to_train_config()?;
        Ok(settings)
    }
}

#[derive(Args)]
pub struct TrainArgs {
    /// Write the run (config.toml, metrics.jsonl, result.json, model.safetensors) into this
    /// directory.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Make the last line of stdout one JSON object with the results.
    #[arg(long)]
    json: bool,
    /// Time every kernel of the last training step (timestamp queries) and print the breakdown.
    #[arg(long)]
    profile: bool,
    /// Continue the run saved in RUN_DIR (by --out, at every validation and on Ctrl-C) with
    /// the same settings; the result equals an uninterrupted run's.
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    #[command(flatten)]
    pairs: PairsFileArgs,
    // Last: the settings' help heading applies to every flag after it.
    #[command(flatten)]
    settings: SettingsArgs,
}

/// Prints the resolved settings (a file `--config` reads back) on stderr.
pub fn print_settings(settings: &RunSettings) {
    eprintln!("settings (defaults < --config file < flags):");
    for line in settings.to_toml().lines() {
        eprintln!("  {line}");
    }
}

pub fn run(args: &TrainArgs, matches: &ArgMatches) -> Result<()> {
    let settings = args.settings.resolve(matches)?;
    print_settings(&settings);
    let gpu = Gpu::new()?;
    let dir = match (&args.resume, &args.out) {
        (Some(dir), Some(out)) if dir != out => {
            return Err(Error::Config(
                "--resume RUN_DIR continues that directory; leave --out out".into(),
            ));
        }
        (Some(dir), _) => RunDir::Resume(dir),
        (None, Some(out)) => RunDir::Fresh(out),
        (None, None) => RunDir::None,
    };
    let mut display = ProgressDisplay::new();
    let trained = train_run(&gpu, &settings, dir, args.profile, &STOP, &mut |p| {
        display.show(p)
    });
    display.finish();
    let (report, mut result) = trained?;
    print_test(&report.test);
    print_operating_points(
        &report.operating_points,
        !settings.held_out_classes.is_empty(),
    );
    println!(
        "{} training pairs in {:.0} s ({:.0} pairs/s), {:.0} s in all, on {}",
        report.train_pairs, report.train_s, report.pairs_per_sec, report.wall_s, report.adapter
    );
    println!("{}", report.embedding_metrics);
    println!("{}", report.diagnosis);
    match args.resume.as_ref().or(args.out.as_ref()) {
        Some(dir) => println!(
            "report.json and plots (curves, distances, roc, embeddings_pca .svg) in {}",
            dir.display()
        ),
        None => println!("add --out RUN_DIR to keep the model, report.json and the plots"),
    }
    if args.pairs.pairs_file.is_some() {
        let run = SavedRun {
            model: report.model.clone(),
            values: report.values.clone(),
            norm: settings.to_train_config()?.pixel_norm,
            settings: settings.clone(),
            operating_points: Vec::new(),
        };
        if let Some(figures) = args.pairs.evaluate(&gpu, &run, None)? {
            result["pairs_file"] = figures;
        }
    }
    if args.json {
        println!("{result}");
    }
    Ok(())
}
