//! `siamese embed`: images through a trained model (or a tower with weights trained
//! elsewhere) — image files, every image under a folder (recursively), or a dataset split —
//! written as a float32 `[N, D]` array: `.npy` (with the images' paths in `<out>.ids.txt`
//! beside it), `.safetensors` (the ids, or a split's labels and class names, in the file) or
//! `.jsonl` (one `{"id", "embedding"}` object a line).
//!
//! Files are read as the run's training images were (size, colour, resize policy, pixel
//! normalisation), decoded on all cores and embedded on the GPU a chunk at a time, so a
//! folder of any size streams through in bounded memory.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use siamese_gpu::Gpu;
use siamese_gpu::data::dataset;
use siamese_gpu::data::image_folder::images_under;
use siamese_gpu::data::images::ImageSet;
use siamese_gpu::error::{Error, Result};
use siamese_gpu::eval::embed::Embedder;
use siamese_gpu::files::write_atomic;
use siamese_gpu::model::ModelTensors;
use siamese_gpu::ops::gather;
use siamese_gpu::runs::json::num;
use siamese_gpu::runs::saved::SavedRun;
use siamese_gpu::settings::RunSettings;
use siamese_gpu::vocab::OnBadImage;

/// Files decoded, uploaded and embedded together: bounds host and GPU memory for a folder
/// of any size (4,096 RGB images of 224×224 are 617 MB of u8).
const FILE_CHUNK: usize = 4096;

#[derive(Args)]
pub struct EmbedArgs {
    /// Image files to embed (PNG or JPEG); their paths are the ids.
    #[arg(value_name = "FILES", conflicts_with_all = ["images", "data"])]
    files: Vec<PathBuf>,
    /// Embed every image under this folder, at any depth; their paths are the ids.
    #[arg(long, value_name = "DIR", conflicts_with = "data")]
    images: Option<PathBuf>,
    /// An unreadable image file: skip (leave it out, saying which) or stop.
    #[arg(long, default_value = "skip")]
    on_bad_image: String,
    /// The run directory of `train --out` (or its model.safetensors); or, without one, a
    /// tower with weights trained elsewhere (--tower and --init-from).
    #[arg(
        long,
        required_unless_present = "init_from",
        conflicts_with = "init_from"
    )]
    checkpoint: Option<PathBuf>,
    /// Without --checkpoint: the tower (a spec or a preset such as resnet18).
    #[arg(long, requires = "init_from")]
    tower: Option<String>,
    /// Without --checkpoint: the weights, a PyTorch state_dict saved with safetensors.
    #[arg(long, value_name = "FILE.safetensors", requires = "tower")]
    init_from: Option<PathBuf>,
    /// With --init-from: keep tensors whose shape differs at their initialisation.
    #[arg(long, requires = "init_from")]
    init_allow_mismatch: bool,
    /// Without --checkpoint: images are resized to HxW [default: a dataset's first image's
    /// size; required for files].
    #[arg(long, requires = "init_from")]
    image_size: Option<String>,
    /// Without --checkpoint: grey (1 channel) or rgb (3).
    #[arg(long, requires = "init_from", default_value = "grey")]
    color: String,
    /// Without --checkpoint: unit (pixel/255) or standard:MEAN:STD.
    #[arg(long, requires = "init_from", default_value = "unit")]
    pixel_norm: String,
    /// Dataset directory [default: the run's].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Which images of the dataset: train (without the validation hold-out), val, or test.
    #[arg(long, default_value = "test")]
    split: String,
    /// Validation images held out of train [default: the run's, else min(5000, 10%)].
    #[arg(long)]
    val_images: Option<usize>,
    /// Output file: .npy (the [N, D] array; image files' ids in <out>.ids.txt), .safetensors
    /// (`embeddings` [N, D]; a split's `labels` [N] and class names, or the files' ids, in
    /// the metadata) or .jsonl (one {"id", "embedding"} object a line; a split's label too).
    #[arg(long)]
    out: PathBuf,
    /// npy, safetensors or jsonl [default: from the extension of --out, else npy].
    #[arg(long)]
    format: Option<String>,
}

/// What was embedded: image files (their paths the ids, with a label where one is known)
/// or a split of a dataset.
pub(super) enum Embedded<'a> {
    Files {
        ids: Vec<String>,
        labels: Vec<Option<String>>,
    },
    Split {
        set: &'a ImageSet,
        classes: &'a [String],
        name: &'a str,
    },
}

pub fn run(args: &EmbedArgs) -> Result<()> {
    let format = match args.format.as_deref() {
        Some(f) => f.to_string(),
        None => match args.out.extension().and_then(|e| e.to_str()) {
            Some(e @ ("safetensors" | "jsonl")) => e.to_string(),
            _ => "npy".into(),
        },
    };
    if !["npy", "safetensors", "jsonl"].contains(&format.as_str()) {
        return Err(Error::Config(format!(
            "unknown --format `{format}`: use npy, safetensors or jsonl"
        )));
    }
    check_writable(&args.out)?;
    let paths = match (&args.images, args.files.is_empty()) {
        (Some(dir), _) => Some(images_under(dir)?),
        (None, false) => Some(args.files.clone()),
        (None, true) => None,
    };
    let gpu = Gpu::new()?;
    let start = Instant::now();
    // A split's images, which what is written refers to.
    let data;
    let (e, embedded, dim) = match paths {
        Some(paths) => {
            let run = load_model(args, None)?;
            let (e, ids) = embed_files(&gpu, &run, &paths, parse_on_bad(&args.on_bad_image)?)?;
            let labels = vec![None; ids.len()];
            let embedded = Embedded::Files { ids, labels };
            (e, embedded, run.model.embedding_dim())
        }
        None => {
            let (run, sets) = match &args.checkpoint {
                Some(checkpoint) => {
                    let run = SavedRun::load(checkpoint)?;
                    data = run.dataset(args.data.as_deref(), args.val_images, &mut |w| {
                        eprintln!("warning: {w}")
                    })?;
                    (run, &data)
                }
                None => {
                    let settings = settings_from_flags(args);
                    data = dataset::load_with(
                        settings.data.as_deref(),
                        settings.val_images,
                        &settings.data_options()?,
                    )?;
                    data.warnings.iter().for_each(|w| eprintln!("warning: {w}"));
                    let t = &data.train;
                    (
                        load_model(args, Some([t.channels, t.height, t.width]))?,
                        &data,
                    )
                }
            };
            let (set, classes) = match args.split.as_str() {
                "train" => (&sets.train, &sets.train_classes),
                "val" => (&sets.val, &sets.train_classes),
                "test" => (&sets.test, &sets.test_classes),
                other => {
                    return Err(Error::Config(format!(
                        "unknown split `{other}`: use train, val or test"
                    )));
                }
            };
            run.check_size(set, &args.split)?;
            let e = embed_set(&gpu, &run, set)?;
            let embedded = Embedded::Split {
                set,
                classes,
                name: &args.split,
            };
            (e, embedded, run.model.embedding_dim())
        }
    };
    let rows = e.len() / dim;
    let seconds = start.elapsed().as_secs_f64();
    write(&args.out, &format, &e, dim, &embedded)?;
    let what = match &embedded {
        Embedded::Files { .. } => "images".to_string(),
        Embedded::Split { name, .. } => format!("images of the {name} split"),
    };
    println!(
        "embedded {rows} {what} in {seconds:.1} s ({:.0} images/s): float32 [{rows}, {dim}] \
         written to {}",
        rows as f64 / seconds.max(1e-9),
        args.out.display()
    );
    Ok(())
}

/// Refuses an --out that cannot be written before anything is embedded: a directory, or a
/// path below a file.
pub(super) fn check_writable(out: &Path) -> Result<()> {
    if out.is_dir() {
        return Err(Error::Config(format!(
            "--out {} is a directory; name a file (e.g. embeddings.npy)",
            out.display()
        )));
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(file) = parent.and_then(|p| p.ancestors().find(|a| a.exists() && !a.is_dir())) {
        return Err(Error::Config(format!(
            "--out {}: {} is a file, not a directory",
            out.display(),
            file.display()
        )));
    }
    Ok(())
}

pub(super) fn parse_on_bad(text: &str) -> Result<OnBadImage> {
    OnBadImage::parse(text).ok_or_else(|| {
        Error::Config(format!(
            "--on-bad-image: unknown policy `{text}`: use skip or stop"
        ))
    })
}

/// The settings of a tower with weights from elsewhere, as the flags give them.
fn settings_from_flags(args: &EmbedArgs) -> RunSettings {
    RunSettings {
        tower: args.tower.clone().expect("clap requires --tower"),
        init_from: args.init_from.clone(),
        init_allow_mismatch: args.init_allow_mismatch,
        image_size: args.image_size.clone(),
        color: args.color.clone(),
        pixel_norm: args.pixel_norm.clone(),
        data: args.data.clone(),
        val_images: args.val_images,
        ..RunSettings::default()
    }
}

/// The model to embed with: the checkpoint's, or the tower and weights of the flags for
/// images of `input` (for files: the flags' --image-size and --color).
fn load_model(args: &EmbedArgs, input: Option<[usize; 3]>) -> Result<SavedRun> {
    if let Some(checkpoint) = &args.checkpoint {
        return SavedRun::load(checkpoint);
    }
    let settings = settings_from_flags(args);
    let input = match input {
        Some(input) => input,
        None => {
            let options = settings.data_options()?;
            let [h, w] = options.image_size.ok_or_else(|| {
                Error::Config(
                    "embedding files with --init-from needs the model's input size: give \
                     --image-size HxW"
                        .into(),
                )
            })?;
            [options.color.channels(), h, w]
        }
    };
    SavedRun::from_weights(settings, input, &mut |n| eprintln!("{n}"))
}

/// A bar with images/s and ETA on a terminal; nothing in a pipe (the result line follows).
fn progress_bar(images: usize) -> Option<ProgressBar> {
    std::io::stderr().is_terminal().then(|| {
        let style =
            ProgressStyle::with_template("{bar:30} {pos}/{len} images  {per_sec}  ETA {eta}")
                .expect("a valid progress template");
        ProgressBar::new(images as u64).with_style(style)
    })
}

/// The embeddings of a dataset split, in its order.
fn embed_set(gpu: &Gpu, run: &SavedRun, set: &ImageSet) -> Result<Vec<f32>> {
    let bar = progress_bar(set.count);
    let images = gather::upload_images(gpu, &set.images, set.count, set.pixels())?;
    let values = ModelTensors::upload(gpu, &run.model, &run.values)?;
    let all: Vec<u32> = (0..set.count as u32).collect();
    let e = Embedder::new(gpu, &run.model, &values, run.norm, 500)?.embed_indices_reporting(
        &images,
        &all,
        &mut |done| {
            if let Some(bar) = &bar {
                bar.set_position(done as u64);
            }
        },
    );
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    e
}

/// The embeddings of the readable `paths` (a chunk decoded and embedded at a time) and their
/// ids; unreadable ones are said and left out, or stop the command, as `on_bad` says.
pub(super) fn embed_files(
    gpu: &Gpu,
    run: &SavedRun,
    paths: &[PathBuf],
    on_bad: OnBadImage,
) -> Result<(Vec<f32>, Vec<String>)> {
    let [c, h, w] = run.model.config.input;
    let values = ModelTensors::upload(gpu, &run.model, &run.values)?;
    let embedder = Embedder::new(gpu, &run.model, &values, run.norm, paths.len().min(500))?;
    let bar = progress_bar(paths.len());
    let (mut e, mut ids) = (Vec::new(), Vec::new());
    let say = |n: &str| match &bar {
        Some(bar) => bar.println(format!("note: {n}")),
        None => eprintln!("note: {n}"),
    };
    let mut notes = 0usize;
    for (k, chunk) in paths.chunks(FILE_CHUNK).enumerate() {
        // Resizing and conversion are said for the first few images; every one left out is
        // named.
        let files = run.read_images(chunk, on_bad, &mut |n| {
            if notes < 5 {
                say(n);
            }
            notes += 1;
        })?;
        for (i, why) in &files.skipped {
            say(&format!(
                "{}: left out, unreadable ({why})",
                chunk[*i].display()
            ));
        }
        notes += files.skipped.len();
        let count = files.kept.len();
        if count > 0 {
            let packed = gather::upload_images(gpu, &files.pixels, count, c * h * w)?;
            let all: Vec<u32> = (0..count as u32).collect();
            let done_before = k * FILE_CHUNK;
            e.extend(
                embedder.embed_indices_reporting(&packed, &all, &mut |done| {
                    if let Some(bar) = &bar {
                        bar.set_position((done_before + done) as u64);
                    }
                })?,
            );
            ids.extend(
                files
                    .kept
                    .iter()
                    .map(|&(i, _)| chunk[i].display().to_string()),
            );
        }
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    if notes > 5 {
        eprintln!("note: {notes} images were resized, converted or left out in all");
    }
    if ids.is_empty() {
        return Err(Error::Data(
            "none of the images could be read: nothing to embed".into(),
        ));
    }
    Ok((e, ids))
}

/// Writes `embeddings` (`dim` wide) and what identifies them to `out` in `format` (npy,
/// safetensors or jsonl).
pub(super) fn write(
    out: &Path,
    format: &str,
    embeddings: &[f32],
    dim: usize,
    embedded: &Embedded,
) -> Result<()> {
    let rows = embeddings.len() / dim;
    let written = match format {
        "npy" => write_npy(out, embeddings, rows, dim, embedded),
        "safetensors" => write_safetensors(out, embeddings, dim, embedded),
        _ => write_jsonl(out, embeddings, dim, embedded),
    };
    written.map_err(|e| Error::writing(out.display(), e))
}

/// Writes a float32 `[rows, cols]` array as .npy; image files' ids one a line in
/// `<out>.ids.txt`, and their labels (an empty line for none) in `<out>.labels.txt` when
/// any has one; each through a temporary file and a rename.
fn write_npy(
    path: &Path,
    data: &[f32],
    rows: usize,
    cols: usize,
    embedded: &Embedded,
) -> std::io::Result<()> {
    use npyz::WriterBuilder;
    let mut bytes = Vec::new();
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&[rows as u64, cols as u64])
        .writer(&mut bytes)
        .begin_nd()?;
    writer.extend(data.iter().copied())?;
    writer.finish()?;
    write_atomic(path, &bytes)?;
    if let Embedded::Files { ids, labels } = embedded {
        let lines = |items: &mut dyn Iterator<Item = &str>| {
            items.flat_map(|item| [item, "\n"]).collect::<String>()
        };
        write_atomic(
            &path.with_extension("ids.txt"),
            lines(&mut ids.iter().map(String::as_str)).as_bytes(),
        )?;
        if labels.iter().any(Option::is_some) {
            let text = lines(&mut labels.iter().map(|l| l.as_deref().unwrap_or("")));
            write_atomic(&path.with_extension("labels.txt"), text.as_bytes())?;
        }
    }
    Ok(())
}

/// Writes `embeddings` [N, D] f32 as safetensors, with a split's `labels` [N] u8 and class
/// names or the files' ids in the metadata, through a temporary file and a rename.
fn write_safetensors(
    path: &Path,
    embeddings: &[f32],
    dim: usize,
    embedded: &Embedded,
) -> std::io::Result<()> {
    use safetensors::tensor::{Dtype, TensorView};
    let invalid = |e: safetensors::SafeTensorError| std::io::Error::other(e.to_string());
    let rows = embeddings.len() / dim;
    let mut views = vec![(
        "embeddings",
        TensorView::new(
            Dtype::F32,
            vec![rows, dim],
            bytemuck::cast_slice(embeddings),
        )
        .map_err(invalid)?,
    )];
    let metadata = match embedded {
        Embedded::Split { set, classes, name } => {
            views.push((
                "labels",
                TensorView::new(Dtype::U8, vec![set.count], &set.labels).map_err(invalid)?,
            ));
            [
                ("split".to_string(), name.to_string()),
                ("classes".to_string(), json!(classes).to_string()),
            ]
        }
        Embedded::Files { ids, labels } => [
            ("ids".to_string(), json!(ids).to_string()),
            ("labels".to_string(), json!(labels).to_string()),
        ],
    };
    let bytes =
        safetensors::serialize(views, Some(metadata.into_iter().collect())).map_err(invalid)?;
    write_atomic(path, &bytes)
}

/// Writes one JSON object a line: `id` (a file's path, or a split image's index), `label`
/// (a split's class name, a file's where known, else null) and `embedding`, through a
/// temporary file and a rename.
fn write_jsonl(
    path: &Path,
    embeddings: &[f32],
    dim: usize,
    embedded: &Embedded,
) -> std::io::Result<()> {
    let mut text = String::new();
    for (i, row) in embeddings.chunks_exact(dim).enumerate() {
        // Each value in its shortest decimal form that reads back as the same f32.
        let row: Vec<_> = row.iter().map(|&v| num(v)).collect();
        let line = match embedded {
            Embedded::Files { ids, labels } => {
                json!({"id": ids[i], "label": labels[i], "embedding": row})
            }
            Embedded::Split { set, classes, .. } => json!({
                "id": i,
                "label": classes[set.labels[i] as usize],
                "embedding": row,
            }),
        };
        text.push_str(&line.to_string());
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())
}
