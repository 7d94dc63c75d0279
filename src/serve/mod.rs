//! `siamese serve`: a trained model over HTTP, JSON in and out (axum on tokio).
//!
//! - `GET /health` → `{"status": "ok"}`
//! - `GET /model` → the model's settings, input, distance, fingerprint, operating points and
//!   the gallery index's size
//! - `POST /embed` `{"images": ["<base64 image file>", …]}` → `{"embeddings": [[…], …]}`
//! - `POST /compare` `{"a": "<base64>", "b": "<base64>", "operating_point": "eer"}` (the point
//!   optional: `accuracy` by default) → as `siamese compare --json`
//! - `POST /query` `{"images": [...], "k": 10}` (with `--index`) → per image its `neighbors`
//!   (`{id, distance, label}`, nearest first), `label` and `confidence`
//!
//! Images are PNG or JPEG files, read as the run read its training images. Requests are
//! decoded on tokio's blocking pool and handed to the GPU thread ([`batcher`]), which embeds
//! the requests that arrive together in one batch. Limits: the body size (413), images per
//! request and pixels per image (400), the queue (503 when full). Malformed input is a 4xx
//! with `{"error": "…"}` saying what was wrong; the server goes on serving. Ctrl-C stops
//! accepting and finishes the requests in flight.

pub mod batcher;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::data::image_folder::decode_bytes;
use crate::data::images::DataOptions;
use crate::error::Error;
use crate::eval::protocol::score_rows;
use crate::runs::json::{decision_json, num};
use crate::runs::saved::SavedRun;
use crate::vocab::LossKind;
use batcher::{Answer, Batcher, Refused};

/// What a request may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of a request body.
    pub body_bytes: usize,
    /// Images in one request.
    pub images: usize,
    /// Pixels of one image (width × height), checked before it is decoded.
    pub pixels: u64,
}

/// What every handler reads.
struct Shared {
    batcher: Batcher,
    /// The model, its host values (the BCE head's weights for `/compare`) and stored
    /// operating points.
    run: SavedRun,
    options: DataOptions,
    info: Value,
    has_index: bool,
    limits: Limits,
}

/// An answer other than 200: its status and `{"error": message}`.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

fn bad(message: impl Into<String>) -> Failure {
    Failure(StatusCode::BAD_REQUEST, message.into())
}

/// The router of the API for `run`, embedding through `batcher`; `info` is what `/model`
/// answers besides the run's own description.
pub fn router(
    run: &SavedRun,
    batcher: Batcher,
    has_index: bool,
    info: Value,
    limits: Limits,
) -> crate::error::Result<Router> {
    let [c, h, w] = run.model.config.input;
    let mut described = json!({
        "settings": run.settings.to_toml(),
        "fingerprint": run.fingerprint(),
        "input": {"channels": c, "height": h, "width": w, "pixels": "PNG or JPEG files, read as the run read its images"},
        "embedding_dim": run.model.embedding_dim(),
        "score": if run.model.config.loss == LossKind::Bce { "probability".to_string() } else { format!("{:?} distance", run.model.config.distance).to_lowercase() },
        "operating_points": run.operating_points.iter().map(|p| json!({"name": p.name, "threshold": num(p.threshold)})).collect::<Vec<_>>(),
    });
    if let (Some(o), Some(extra)) = (described.as_object_mut(), info.as_object()) {
        o.extend(extra.clone());
    }
    let shared = Arc::new(Shared {
        batcher,
        run: run.clone(),
        options: run.read_options()?,
        info: described,
        has_index,
        limits,
    });
    Ok(Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/model", get(model_info))
        .route("/embed", post(embed))
        .route("/compare", post(compare))
        .route("/query", post(query))
        .layer(DefaultBodyLimit::max(limits.body_bytes))
        .with_state(shared))
}

async fn model_info(State(s): State<Arc<Shared>>) -> Json<Value> {
    Json(s.info.clone())
}

/// The body as JSON of type `T`, or a 400/415 saying what is wrong with it (axum's own
/// rejection, kept as its status, worded as this API's error).
fn parsed<T>(body: Result<Json<T>, axum::extract::rejection::JsonRejection>) -> Result<T, Failure> {
    body.map(|Json(v)| v)
        .map_err(|e| Failure(e.status(), e.body_text()))
}

/// Decodes base64 image files on the blocking pool, as the run reads images; returns the
/// `[m, C, H, W]` u8 pixels.
async fn decode(s: &Arc<Shared>, images: Vec<String>, what: &str) -> Result<Vec<u8>, Failure> {
    if images.is_empty() {
        return Err(bad(format!("{what}: no image given")));
    }
    if images.len() > s.limits.images {
        return Err(bad(format!(
            "{what}: {} images in one request, over the limit of {}",
            images.len(),
            s.limits.images
        )));
    }
    let shared = s.clone();
    let what = what.to_string();
    tokio::task::spawn_blocking(move || {
        let [_, h, w] = shared.run.model.config.input;
        let mut pixels = Vec::new();
        for (i, text) in images.iter().enumerate() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| bad(format!("{what}: image {i} is not base64: {e}")))?;
            let (planes, _) =
                decode_bytes(&bytes, &shared.options, [h, w], shared.limits.pixels)
                    .map_err(|why| bad(format!("{what}: image {i} cannot be read: {why}")))?;
            pixels.extend_from_slice(&planes);
        }
        Ok(pixels)
    })
    .await
    .map_err(|e| {
        Failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("decoding failed: {e}"),
        )
    })?
}

/// Embeds (and with `query`, searches for) the decoded images through the GPU thread.
async fn run_job(
    s: &Arc<Shared>,
    pixels: Vec<u8>,
    count: usize,
    query: Option<usize>,
) -> Result<Answer, Failure> {
    let answer = s
        .batcher
        .submit(pixels, count, query)
        .map_err(|r| match r {
            Refused::Busy => Failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is at capacity (its queue is full): retry shortly".into(),
            ),
            Refused::Stopped => Failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down".into(),
            ),
        })?;
    let answer = answer.await.map_err(|_| {
        Failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down".into(),
        )
    })?;
    answer.map_err(|e: Error| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Images {
    images: Vec<String>,
    #[serde(default)]
    k: Option<usize>,
}

async fn embed(
    State(s): State<Arc<Shared>>,
    body: Result<Json<Images>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, Failure> {
    let body = parsed(body)?;
    if body.k.is_some() {
        return Err(bad("/embed takes no k (that is /query's)"));
    }
    let count = body.images.len();
    let pixels = decode(&s, body.images, "/embed").await?;
    let answer = run_job(&s, pixels, count, None).await?;
    let dim = s.run.model.embedding_dim();
    let rows: Vec<Vec<Value>> = answer
        .embeddings
        .chunks(dim)
        .map(|r| r.iter().map(|&v| num(v)).collect())
        .collect();
    Ok(Json(json!({"embeddings": rows})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Pair {
    a: String,
    b: String,
    #[serde(default)]
    operating_point: Option<String>,
}

async fn compare(
    State(s): State<Arc<Shared>>,
    body: Result<Json<Pair>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, Failure> {
    let body = parsed(body)?;
    let wanted = body.operating_point.as_deref().unwrap_or("accuracy");
    let point = s
        .run
        .operating_point(wanted)
        .map_err(|e| bad(e.to_string()))?
        .clone();
    let pixels = decode(&s, vec![body.a, body.b], "/compare").await?;
    let answer = run_job(&s, pixels, 2, None).await?;
    let model = &s.run.model;
    let (a, b) = answer.embeddings.split_at(model.embedding_dim());
    let score = score_rows(model, &s.run.values.params, a, b)[0];
    Ok(Json(decision_json(
        score,
        &point,
        model.config.loss == LossKind::Bce,
    )))
}

async fn query(
    State(s): State<Arc<Shared>>,
    body: Result<Json<Images>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, Failure> {
    if !s.has_index {
        return Err(Failure(
            StatusCode::NOT_FOUND,
            "this server has no gallery index: start it with --index INDEX".into(),
        ));
    }
    let body = parsed(body)?;
    let k = body.k.unwrap_or(10);
    if !(1..=crate::ops::topk::K_MAX).contains(&k) {
        return Err(bad(format!(
            "k = {k}: 1 to {} neighbours",
            crate::ops::topk::K_MAX
        )));
    }
    let count = body.images.len();
    let pixels = decode(&s, body.images, "/query").await?;
    let answer = run_job(&s, pixels, count, Some(k)).await?;
    let results: Vec<Value> = answer
        .neighbors
        .iter()
        .map(|n| {
            json!({
                "neighbors": n.found.iter().map(|f| json!({"id": f.id, "distance": num(f.distance), "label": f.label})).collect::<Vec<_>>(),
                "label": n.vote.as_ref().map(|v| v.0.clone()),
                "confidence": n.vote.as_ref().map(|v| v.1),
            })
        })
        .collect();
    Ok(Json(json!({"results": results})))
}
