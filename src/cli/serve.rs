//! `siamese serve`: a trained model (and a gallery index) over HTTP; the API is
//! `siamese_gpu::serve`'s.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde_json::json;
use siamese_gpu::error::{Error, Result};
use siamese_gpu::runs::saved::SavedRun;
use siamese_gpu::serve::batcher::{Batcher, Batching};
use siamese_gpu::serve::{Limits, router};

#[derive(Args)]
pub struct ServeArgs {
    /// The run directory of `train --out` (or its model.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// A gallery index (`siamese index build`) for POST /query.
    #[arg(long, value_name = "INDEX")]
    index: Option<PathBuf>,
    /// Where to listen (port 0: any free port, printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Images per GPU batch at most: requests that arrive together are embedded together
    /// (1 embeds each request alone).
    #[arg(long, default_value_t = 64)]
    max_batch: usize,
    /// How long a batch's first request waits for others, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2.0)]
    batch_window_ms: f64,
    /// Requests waiting for the GPU at most; more are answered 503.
    #[arg(long, default_value_t = 256)]
    queue: usize,
    /// Bytes of a request body at most (413 beyond).
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
    max_body: usize,
    /// Images in one request at most.
    #[arg(long, default_value_t = 64)]
    max_images: usize,
    /// Pixels (width × height) of one image at most, checked before decoding.
    #[arg(long, default_value_t = 1 << 24)]
    max_pixels: u64,
}

pub fn run(args: &ServeArgs) -> Result<()> {
    if args.max_batch == 0 || args.queue == 0 || args.max_images == 0 {
        return Err(Error::Config(
            "--max-batch, --queue and --max-images must be at least 1".into(),
        ));
    }
    let run = SavedRun::load(&args.checkpoint)?;
    let batching = Batching {
        max_images: args.max_batch,
        window: Duration::from_secs_f64(args.batch_window_ms.max(0.0) / 1000.0),
        queue: args.queue,
    };
    let limits = Limits {
        body_bytes: args.max_body,
        images: args.max_images,
        pixels: args.max_pixels,
    };
    let (batcher, gpu_thread, index_rows) =
        Batcher::start(run.clone(), args.index.clone(), batching)?;
    let info = json!({"index": index_rows.map(|n| json!({"images": n}))});
    let app = router(&run, batcher, args.index.is_some(), info, limits)?;
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| Error::Training(format!("cannot start the server's runtime: {e}")))?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.addr)
            .await
            .map_err(|e| Error::Config(format!("cannot listen on {}: {e}", args.addr)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Config(format!("cannot listen on {}: {e}", args.addr)))?;
        println!(
            "listening on http://{addr} (GET /health /model; POST /embed /compare{}); Ctrl-C stops",
            if args.index.is_some() { " /query" } else { "" }
        );
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
                eprintln!("stopping: finishing the requests in flight");
            })
            .await
            .map_err(|e| Error::Training(format!("the server failed: {e}")))
    })?;
    // The router (and with it the last queue sender) is gone: the GPU thread drains and ends.
    let _ = gpu_thread.join();
    Ok(())
}
