//! `siamese query`: the nearest gallery images of each query image in an index (exact search
//! on the GPU), with their distances and labels, and the label most of them share.

use std::path::PathBuf;

use clap::Args;
use serde_json::{Value, json};
use siamese_gpu::Gpu;
use siamese_gpu::error::{Error, Result};
use siamese_gpu::gallery::{Index, metric_name};
use siamese_gpu::runs::json::num;
use siamese_gpu::runs::saved::SavedRun;
use siamese_gpu::vocab::OnBadImage;

use super::embed::embed_files;

#[derive(Args)]
pub struct QueryArgs {
    /// The index to search (`siamese index build`).
    #[arg(long, value_name = "INDEX")]
    index: PathBuf,
    /// The images to look up.
    #[arg(value_name = "IMAGES", required = true)]
    images: Vec<PathBuf>,
    /// Neighbours per query (1 to 64).
    #[arg(short, default_value_t = 10)]
    k: usize,
    /// The model [default: the run the index was built with]; it must be that model.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Search exactly on the GPU even where the index has an approximate graph.
    #[arg(long)]
    exact: bool,
    /// One JSON object per query on stdout: query (its path), neighbors (a list of {id,
    /// distance, label}, nearest first), label and confidence (the vote).
    #[arg(long)]
    json: bool,
}

pub fn run(args: &QueryArgs) -> Result<()> {
    let index = Index::load(&args.index)?;
    if index.is_empty() {
        return Err(Error::Config(format!(
            "{} is empty: add images with `siamese index add --index {0} --images DIR`",
            args.index.display()
        )));
    }
    let checkpoint = args.checkpoint.as_ref().unwrap_or(&index.run).clone();
    let run = SavedRun::load(&checkpoint)?;
    index.check_model(&run, &args.index)?;
    let gpu = Gpu::new()?;
    // Every query is wanted: an unreadable one is an error naming it.
    let (queries, ids) = embed_files(&gpu, &run, &args.images, OnBadImage::Stop)?;
    let found = index.search(&gpu, &queries, args.k, args.exact)?;
    for (query, neighbors) in ids.iter().zip(&found) {
        let vote = index.vote(neighbors);
        if args.json {
            let list: Vec<Value> = neighbors
                .iter()
                .map(|n| {
                    json!({
                        "id": index.ids[n.row],
                        "distance": num(n.distance),
                        "label": index.label(n.row),
                    })
                })
                .collect();
            println!(
                "{}",
                json!({
                    "query": query,
                    "neighbors": list,
                    "label": vote.map(|v| v.0),
                    "confidence": vote.map(|v| v.1),
                })
            );
            continue;
        }
        match vote {
            Some((label, share)) => println!(
                "{query}: {label} ({:.0}% of the labelled neighbours)",
                100.0 * share
            ),
            None => println!("{query}: (no labelled neighbour)"),
        }
        for (rank, n) in neighbors.iter().enumerate() {
            println!(
                "  {:>2}  {:.4}  {}  {}",
                rank + 1,
                n.distance,
                index.ids[n.row],
                index.label(n.row).unwrap_or("")
            );
        }
    }
    if !args.json {
        let how = match (&index.approximate, args.exact) {
            (Some(_), false) => "approximate (HNSW) search",
            _ => "exact search",
        };
        println!(
            "({} distance, {how} over {} images)",
            metric_name(index.metric),
            index.len()
        );
    }
    Ok(())
}
