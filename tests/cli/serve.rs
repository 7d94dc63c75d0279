//! `siamese serve` through its HTTP API: every endpoint answered, a barrage of malformed
//! requests each refused with its 4xx while the server goes on serving, and Ctrl-C ending it
//! cleanly.

use super::*;
use base64::Engine;

/// A running `siamese serve` on a free loopback port, stopped (SIGKILL) if a test fails.
struct Server {
    child: std::process::Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(root: &Path, extra: &[&str]) -> Server {
    let mut a = args(&["serve", "--checkpoint", "run", "--addr", "127.0.0.1:0"]);
    a.extend(extra.iter().map(|s| s.to_string()));
    let mut child = command(root, &a)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    Server { child, url }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// (status, JSON body) of a request; `body` None for a GET.
fn call(url: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let agent = agent();
    let mut response = match body {
        Some(text) => agent
            .post(format!("{url}{path}"))
            .header("content-type", "application/json")
            .send(text)
            .unwrap(),
        None => agent.get(format!("{url}{path}")).call().unwrap(),
    };
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

fn png_base64(root: &Path, i: usize) -> String {
    let path = root.join(format!("serve-{i}.png"));
    super::use_model::write_test_image(&path, i);
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(&path).unwrap())
}

#[test]
fn the_server_answers_every_endpoint_refuses_malformed_requests_and_keeps_serving() {
    let root = trained_run("serve", &[]);
    for i in 0..6 {
        let dir = root.path().join(format!("gallery/c{}", i % 2));
        std::fs::create_dir_all(&dir).unwrap();
        super::use_model::write_test_image(&dir.join(format!("{i}.png")), i);
    }
    assert_ok(&super::use_model::index_build(root.path(), "g.index", &[]));
    let server = start(
        root.path(),
        &[
            "--index",
            "g.index",
            "--max-body",
            "65536",
            "--max-images",
            "4",
        ],
    );
    let url = &server.url;
    let (a, b) = (png_base64(root.path(), 0), png_base64(root.path(), 1));

    assert_eq!(
        call(url, "/health", None),
        (200, serde_json::json!({"status": "ok"}))
    );
    let (status, model) = call(url, "/model", None);
    assert_eq!(status, 200);
    assert_eq!(model["embedding_dim"], 16);
    assert_eq!(model["index"]["images"], 6);
    assert!(model["fingerprint"].as_str().unwrap().starts_with("crc32:"));
    let (status, e) = call(
        url,
        "/embed",
        Some(&format!(r#"{{"images": ["{a}", "{b}"]}}"#)),
    );
    assert_eq!(status, 200, "{e}");
    assert_eq!(e["embeddings"].as_array().unwrap().len(), 2);
    assert_eq!(e["embeddings"][0].as_array().unwrap().len(), 16);
    let (status, c) = call(
        url,
        "/compare",
        Some(&format!(
            r#"{{"a": "{a}", "b": "{b}", "operating_point": "eer"}}"#
        )),
    );
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["operating_point"], "eer");
    let same = c["distance"].as_f64().unwrap() <= c["threshold"].as_f64().unwrap();
    assert_eq!(c["decision"], if same { "same" } else { "different" });
    // The served embedding is `siamese embed`'s.
    let image = root.path().join("serve-0.png");
    assert_ok(&siamese(
        root.path(),
        &args(&[
            "embed",
            "--checkpoint",
            "run",
            image.to_str().unwrap(),
            "--out",
            "one.jsonl",
        ]),
    ));
    let one: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(root.path().join("one.jsonl"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    for (u, v) in one["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .zip(e["embeddings"][0].as_array().unwrap())
    {
        // The same kernels on batches of other sizes: a few ulps.
        assert!(
            (u.as_f64().unwrap() - v.as_f64().unwrap()).abs() < 1e-5,
            "{u} vs {v}"
        );
    }
    let (status, q) = call(
        url,
        "/query",
        Some(&format!(r#"{{"images": ["{a}"], "k": 3}}"#)),
    );
    assert_eq!(status, 200, "{q}");
    let neighbors = q["results"][0]["neighbors"].as_array().unwrap();
    assert_eq!(neighbors.len(), 3);
    assert_eq!(
        neighbors[0]["id"], "gallery/c0/0.png",
        "the image itself first"
    );

    // The barrage: each refused with its status and a message; none stops the server.
    let zero = {
        // A PNG header declaring a 0×0 image.
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR\0\0\0\0\0\0\0\0\x08\x00\0\0\0".to_vec();
        png.extend_from_slice(&[0, 0, 0, 0]);
        base64::engine::general_purpose::STANDARD.encode(png)
    };
    let huge = "A".repeat(100_000);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("/embed", "{not json".into(), 400, ""),
        ("/embed", r#"{"images": "not a list"}"#.into(), 422, ""),
        ("/embed", r#"{"pictures": []}"#.into(), 422, ""),
        ("/embed", r#"{"images": []}"#.into(), 400, "no image given"),
        (
            "/embed",
            r#"{"images": ["%%% not base64 %%%"]}"#.into(),
            400,
            "is not base64",
        ),
        (
            "/embed",
            format!(r#"{{"images": ["{zero}"]}}"#),
            400,
            "cannot be read",
        ),
        (
            "/embed",
            r#"{"images": ["aGVsbG8="]}"#.into(),
            400,
            "cannot be read",
        ),
        ("/embed", format!(r#"{{"images": ["{huge}"]}}"#), 413, ""),
        (
            "/embed",
            format!(r#"{{"images": ["{a}","{a}","{a}","{a}","{a}"]}}"#),
            400,
            "over the limit of 4",
        ),
        ("/compare", format!(r#"{{"a": "{a}"}}"#), 422, ""),
        (
            "/compare",
            format!(r#"{{"a": "{a}", "b": "{b}", "operating_point": "far=1e-9"}}"#),
            400,
            "no `far=0.000000001` operating point",
        ),
        (
            "/query",
            format!(r#"{{"images": ["{a}"], "k": 0}}"#),
            400,
            "1 to 64",
        ),
        ("/nowhere", "{}".into(), 404, ""),
    ];
    for (path, body, status, message) in cases {
        let (got, answer) = call(url, path, Some(&body));
        assert_eq!(
            got,
            status,
            "{path} {}: {answer}",
            &body[..body.len().min(60)]
        );
        assert!(
            answer["error"].as_str().unwrap_or("").contains(message),
            "{path}: {answer} lacks {message:?}"
        );
    }
    let (status, _) = call(url, "/embed", None);
    assert_eq!(status, 405, "GET on a POST route");
    // Still serving, and right.
    let (status, again) = call(
        url,
        "/compare",
        Some(&format!(
            r#"{{"a": "{a}", "b": "{b}", "operating_point": "eer"}}"#
        )),
    );
    assert_eq!((status, &again), (200, &c));

    // Ctrl-C: the server finishes and exits cleanly.
    let mut server = server;
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");

    // Without an index /query says so.
    let server = start(root.path(), &[]);
    let (status, answer) = call(
        &server.url,
        "/query",
        Some(&format!(r#"{{"images": ["{a}"]}}"#)),
    );
    assert_eq!(status, 404, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("--index"));
    assert_eq!(call(&server.url, "/health", None).0, 200);
}

#[test]
fn a_full_queue_refuses_jobs_until_the_gpu_thread_takes_them() {
    use siamese_gpu::model::{ModelConfig, ModelValues, SiameseModel};
    use siamese_gpu::runs::saved::SavedRun;
    use siamese_gpu::serve::batcher::{Batcher, Batching, Refused};
    let model = SiameseModel::new(ModelConfig {
        hyper: Default::default(),
        classes: 0,
        tower: TOWER.parse().unwrap(),
        input: [1, 16, 16],
        loss: siamese_gpu::vocab::LossKind::Contrastive,
        margin: 1.0,
        distance: siamese_gpu::vocab::Distance::Euclidean,
        normalize: false,
        freeze: Vec::new(),
    })
    .unwrap();
    let run = SavedRun {
        values: ModelValues::init(&model, 0),
        model,
        norm: siamese_gpu::vocab::PixelNorm::UNIT,
        settings: siamese_gpu::settings::RunSettings::default(),
        operating_points: Vec::new(),
    };
    // Batches of up to 512 images, so the long job runs in a few dispatches.
    let batching = Batching {
        max_images: 512,
        window: Duration::ZERO,
        queue: 1,
    };
    let (batcher, thread, _) = Batcher::start(run, None, batching).unwrap();
    // A long first job (4,096 images) keeps the GPU thread busy for far longer than two
    // more submissions take: whether it has taken the first job off the queue yet or not,
    // one of the next two finds the queue of one full.
    let big = 4096;
    let first = batcher.submit(vec![7; big * 256], big, None).ok().unwrap();
    let refused = [
        batcher.submit(vec![7; 256], 1, None),
        batcher.submit(vec![7; 256], 1, None),
    ]
    .into_iter()
    .filter_map(|r| r.err())
    .filter(|r| matches!(r, Refused::Busy))
    .count();
    assert!(refused >= 1, "a queue of one holds one waiting job");
    // The accepted jobs are answered in full.
    let answer = first.blocking_recv().unwrap().unwrap();
    assert_eq!(answer.embeddings.len(), big * 16);
    drop(batcher);
    thread.join().unwrap();
}
