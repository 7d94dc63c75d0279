//! The server under load, on loopback: N clients each sending `POST /embed` requests of one
//! 28×28 PNG to the reference network (random weights: speed does not depend on them), at
//! several concurrencies; requests/s and the p50 and p99 latency, with the GPU thread
//! batching requests that arrive together (up to 64 images, a 2 ms window) and embedding
//! each alone (`--max-batch 1`), in the same run.
//!
//! `cargo bench --bench serve`; `SIAMESE_BENCH_REQUESTS=400` sets the requests per
//! concurrency (bounded in count: each level ends when they are answered). Each figure is a
//! line for people and a JSON object for tools.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use siamese_gpu::model::{ModelConfig, ModelValues, SiameseModel};
use siamese_gpu::runs::json::StoredPoint;
use siamese_gpu::runs::saved::SavedRun;
use siamese_gpu::serve::batcher::{Batcher, Batching};
use siamese_gpu::serve::{Limits, router};
use siamese_gpu::settings::RunSettings;
use siamese_gpu::vocab::{Distance, LossKind, PixelNorm};

const CONCURRENCY: [usize; 3] = [1, 8, 32];

fn model() -> SavedRun {
    let model = SiameseModel::new(ModelConfig {
        hyper: Default::default(),
        classes: 0,
        tower: siamese_gpu::nn::spec::REFERENCE_TOWER.parse().unwrap(),
        input: [1, 28, 28],
        loss: LossKind::Contrastive,
        margin: 1.0,
        distance: Distance::Euclidean,
        normalize: false,
        freeze: Vec::new(),
    })
    .unwrap();
    SavedRun {
        values: ModelValues::init(&model, 0),
        model,
        norm: PixelNorm::UNIT,
        settings: RunSettings::default(),
        operating_points: vec![StoredPoint {
            name: "accuracy".into(),
            threshold: 0.5,
        }],
    }
}

/// One grey 28×28 PNG as a JSON body of `/embed`.
fn body() -> String {
    let pixels: Vec<u8> = (0..784u32).map(|i| (i * 37 % 251) as u8).collect();
    let mut png = Vec::new();
    image::GrayImage::from_raw(28, 28, pixels)
        .unwrap()
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(png);
    format!(r#"{{"images": ["{b64}"]}}"#)
}

/// Starts a server with `max_batch` on a free port; returns its URL and a stopper.
fn serve(
    max_batch: usize,
    window: Duration,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let run = model();
    let batching = Batching {
        max_images: max_batch,
        window,
        queue: 1024,
    };
    let (batcher, gpu_thread, _) = Batcher::start(run.clone(), None, batching).unwrap();
    let limits = Limits {
        body_bytes: 1 << 20,
        images: 64,
        pixels: 1 << 24,
    };
    let app = router(&run, batcher, false, serde_json::json!({}), limits).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        gpu_thread.join().unwrap();
    });
    let addr = addr_rx.recv().unwrap();
    (format!("http://{addr}/embed"), stop, server)
}

/// `total` requests from `clients` threads; (requests/s, p50 ms, p99 ms).
fn load(url: &str, body: &Arc<String>, clients: usize, total: usize) -> (f64, f64, f64) {
    let start = Instant::now();
    let per = total.div_ceil(clients);
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (url, body) = (url.to_string(), body.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
                (0..per)
                    .map(|_| {
                        let t = Instant::now();
                        let mut r = agent
                            .post(&url)
                            .header("content-type", "application/json")
                            .send(body.as_str())
                            .unwrap();
                        r.body_mut().read_to_string().unwrap();
                        t.elapsed().as_secs_f64() * 1000.0
                    })
                    .collect::<Vec<f64>>()
            })
        })
        .collect();
    let mut latencies: Vec<f64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let seconds = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    (latencies.len() as f64 / seconds, at(0.5), at(0.99))
}

fn main() {
    let total: usize = std::env::var("SIAMESE_BENCH_REQUESTS")
        .map(|v| v.parse().expect("SIAMESE_BENCH_REQUESTS: a number"))
        .unwrap_or(400);
    let body = Arc::new(body());
    let mut rates = Vec::new();
    for (mode, max_batch, window) in [
        ("batched", 64, Duration::from_millis(2)),
        ("one at a time", 1, Duration::ZERO),
    ] {
        let (url, stop, server) = serve(max_batch, window);
        load(&url, &body, 4, 40); // warm the pipelines and connections
        for clients in CONCURRENCY {
            let (rps, p50, p99) = load(&url, &body, clients, total);
            println!(
                "{mode:>13}, {clients:>2} clients: {rps:7.1} requests/s, p50 {p50:7.2} ms, p99 {p99:7.2} ms"
            );
            println!(
                "{}",
                serde_json::json!({"bench": "serve", "mode": mode, "clients": clients, "requests": total,
                    "requests_per_s": rps, "p50_ms": p50, "p99_ms": p99})
            );
            rates.push((mode, clients, rps));
        }
        let _ = stop.send(());
        server.join().unwrap();
    }
    for clients in CONCURRENCY {
        let rate = |m: &str| rates.iter().find(|r| r.0 == m && r.1 == clients).unwrap().2;
        println!(
            "{clients:>2} clients: batched {:.2}× one at a time",
            rate("batched") / rate("one at a time")
        );
    }
}
