//! `siamese index build|add|export`: a gallery index — a folder's (or files') embeddings by
//! a trained model, with their paths and folder labels — for `siamese query`, grown without
//! embedding again what it holds, and written out for FAISS, Qdrant or pgvector. The index
//! itself is `siamese_gpu::gallery`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, Subcommand};
use siamese_gpu::Gpu;
use siamese_gpu::data::image_folder::images_under;
use siamese_gpu::error::{Error, Result};
use siamese_gpu::gallery::approximate::{self, Approximate, recall_against_exact};
use siamese_gpu::gallery::{Index, folder_label};
use siamese_gpu::runs::saved::SavedRun;

use super::embed::{Embedded, check_writable, embed_files, parse_on_bad, write};

#[derive(Args)]
pub struct IndexArgs {
    #[command(subcommand)]
    command: IndexCommand,
}

#[derive(Subcommand)]
enum IndexCommand {
    /// Embed a folder's images (at any depth; each labelled by the folder it sits in under
    /// DIR) or image files into a new index.
    Build(BuildArgs),
    /// Embed the images an index does not hold yet and add them (the rest are not embedded
    /// again).
    Add(AddArgs),
    /// Write an index's vectors for FAISS, Qdrant or pgvector: .npy with <out>.ids.txt and
    /// <out>.labels.txt beside it, or .jsonl ({"id", "label", "embedding"} a line).
    Export(ExportArgs),
}

/// Which images to index.
#[derive(Args)]
struct Images {
    /// Image files (PNG or JPEG); their paths are the ids, without labels.
    #[arg(value_name = "FILES", required_unless_present = "images")]
    files: Vec<PathBuf>,
    /// Every image under this folder, at any depth; labelled by the first folder below DIR.
    #[arg(long, value_name = "DIR", conflicts_with = "files")]
    images: Option<PathBuf>,
    /// An unreadable image file: skip (leave it out, saying which) or stop.
    #[arg(long, default_value = "skip")]
    on_bad_image: String,
}

#[derive(Args)]
struct BuildArgs {
    /// The run directory of `train --out` (or its model.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    #[command(flatten)]
    images: Images,
    /// The index file to write (a new one).
    #[arg(long, value_name = "INDEX")]
    out: PathBuf,
    /// Also build an HNSW graph for approximate search (large galleries), and print its
    /// recall@10 against the exact search.
    #[arg(long)]
    approximate: bool,
}

#[derive(Args)]
struct AddArgs {
    /// The index to grow.
    #[arg(long, value_name = "INDEX")]
    index: PathBuf,
    #[command(flatten)]
    images: Images,
    /// The model [default: the run the index was built with]; it must be that model.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
}

#[derive(Args)]
struct ExportArgs {
    /// The index to write out.
    #[arg(long, value_name = "INDEX")]
    index: PathBuf,
    /// X.npy (with X.ids.txt and X.labels.txt) or X.jsonl.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: &IndexArgs) -> Result<()> {
    match &args.command {
        IndexCommand::Build(a) => build(a),
        IndexCommand::Add(a) => add(a),
        IndexCommand::Export(a) => export(a),
    }
}

fn build(args: &BuildArgs) -> Result<()> {
    check_writable(&args.out)?;
    if args.out.exists() {
        return Err(Error::Config(format!(
            "{} exists: grow it with `siamese index add --index {0}`, or choose another --out",
            args.out.display()
        )));
    }
    let run = SavedRun::load(&args.checkpoint)?;
    let mut index = Index::new(&run, &args.checkpoint)?;
    let gpu = Gpu::new()?;
    let added = embed_into(&gpu, &run, &mut index, &args.images)?;
    if args.approximate {
        build_graph(&gpu, &mut index)?;
    }
    index.save(&args.out)?;
    println!(
        "indexed {added} images ({} labels) with {}: {}, {} search, model {}",
        index.label_names.len(),
        args.checkpoint.display(),
        args.out.display(),
        siamese_gpu::gallery::metric_name(index.metric),
        index.fingerprint
    );
    Ok(())
}

fn add(args: &AddArgs) -> Result<()> {
    let mut index = Index::load(&args.index)?;
    let checkpoint = args.checkpoint.as_ref().unwrap_or(&index.run).clone();
    let run = SavedRun::load(&checkpoint)?;
    index.check_model(&run, &args.index)?;
    let before = index.len();
    let gpu = Gpu::new()?;
    let added = embed_into(&gpu, &run, &mut index, &args.images)?;
    if added > 0 {
        index.save(&args.index)?;
    }
    println!(
        "added {added} images to {}; it holds {} (of {before} before)",
        args.index.display(),
        index.len()
    );
    Ok(())
}

/// Embeds the images `which` names that `index` does not hold and adds them; returns how
/// many were added.
fn embed_into(gpu: &Gpu, run: &SavedRun, index: &mut Index, which: &Images) -> Result<usize> {
    let (paths, root) = match &which.images {
        Some(dir) => (images_under(dir)?, Some(dir.as_path())),
        None => (which.files.clone(), None),
    };
    let held: std::collections::HashSet<&str> = index.ids.iter().map(String::as_str).collect();
    let new: Vec<PathBuf> = paths
        .into_iter()
        .filter(|p| !held.contains(p.display().to_string().as_str()))
        .collect();
    if new.is_empty() {
        eprintln!("every image named is in the index already: nothing to embed");
        return Ok(0);
    }
    let (e, ids) = embed_files(gpu, run, &new, parse_on_bad(&which.on_bad_image)?)?;
    let labels = ids
        .iter()
        .map(|id| root.and_then(|r| folder_label(r, Path::new(id))))
        .collect();
    let added = ids.len();
    index.add(ids, labels, &e)?;
    Ok(added)
}

/// Queries of the recall measurement: up to this many gallery images, evenly spaced.
const RECALL_QUERIES: usize = 1000;
const RECALL_K: usize = 10;

/// Builds the approximate search's graph over `index` and says how close it comes to the
/// exact search, and how much faster it is.
fn build_graph(gpu: &Gpu, index: &mut Index) -> Result<()> {
    let start = Instant::now();
    let graph = Approximate::build(index)?;
    let built = start.elapsed().as_secs_f64();
    let n = index.len();
    let sample: Vec<usize> = (0..n.min(RECALL_QUERIES))
        .map(|i| i * n / n.min(RECALL_QUERIES))
        .collect();
    let r = recall_against_exact(gpu, index, &graph, &sample, RECALL_K)?;
    let queries = sample.len();
    println!(
        "approximate search (HNSW, usearch, M {} ef {}): built in {built:.1} s; recall@{RECALL_K} \
         {:.4} against the exact search over {queries} gallery images as queries, each left out \
         of its own list; the {queries} queries took {:.3} s (the exact GPU search: {:.2} s)",
        approximate::CONNECTIVITY,
        approximate::EXPANSION_SEARCH,
        r.recall,
        r.approximate_s,
        r.exact_s
    );
    index.approximate = Some(graph);
    Ok(())
}

fn export(args: &ExportArgs) -> Result<()> {
    let format = match args.out.extension().and_then(|e| e.to_str()) {
        Some(f @ ("npy" | "jsonl")) => f,
        _ => {
            return Err(Error::Config(format!(
                "--out {}: write .npy (FAISS: np.load; with .ids.txt and .labels.txt) or \
                 .jsonl (Qdrant points, pgvector rows)",
                args.out.display()
            )));
        }
    };
    check_writable(&args.out)?;
    let index = Index::load(&args.index)?;
    let labels = (0..index.len())
        .map(|row| index.label(row).map(String::from))
        .collect();
    let embedded = Embedded::Files {
        ids: index.ids.clone(),
        labels,
    };
    write(&args.out, format, &index.embeddings, index.dim, &embedded)?;
    println!(
        "wrote {} vectors of {} ({} distance) to {}",
        index.len(),
        index.dim,
        siamese_gpu::gallery::metric_name(index.metric),
        args.out.display()
    );
    Ok(())
}
