//! Using a trained model through the binary: the operating points a run stores, `compare`
//! deciding at them (its exit status the decision), `eval --far --store`, and `embed` of
//! image files and folders — with their bad inputs.

use super::*;

/// Writes image `i` of the synthetic 16×16 test split (`synthetic(200, 16, 2)`, as
/// `write_idx_dataset` writes it) as a grey PNG, returning its label.
pub(super) fn write_test_image(path: &Path, i: usize) -> u8 {
    let (x, y) = synthetic(200, 16, 2);
    let pixels = x[i * 256..(i + 1) * 256].to_vec();
    image::GrayImage::from_raw(16, 16, pixels)
        .unwrap()
        .save(path)
        .unwrap();
    y[i]
}

/// `siamese index build` of the run's model over `gallery/` in `root`, into `out`.
pub(super) fn index_build(root: &Path, out: &str, extra: &[&str]) -> Output {
    let mut a = args(&[
        "index",
        "build",
        "--checkpoint",
        "run",
        "--images",
        "gallery",
        "--out",
        out,
    ]);
    a.extend(extra.iter().map(|s| s.to_string()));
    siamese(root, &a)
}

/// The run's stored operating points, from its model file's metadata.
fn stored_points(run: &Path) -> Vec<serde_json::Value> {
    let (_, _, meta) = checkpoint::load_model(&run.join("model.safetensors")).unwrap();
    serde_json::from_str::<serde_json::Value>(&meta["operating_points"])
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn exit_code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

#[test]
fn a_run_stores_certified_operating_points_and_compare_decides_at_them() {
    // 200 validation pairs draw about 100 Different ones: a FAR of 0.05 needs 59.
    let root = trained_run("points", &["--far", "0.05"]);
    let run = root.path().join("run");
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("result.json")).unwrap()).unwrap();
    let points = result["operating_points"].as_array().unwrap();
    let names: Vec<&str> = points.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["accuracy", "eer", "far=0.05"]);
    assert_eq!(points[0]["threshold"], result["threshold"]);
    let far = &points[2];
    assert!(far["far_upper_bound"].as_f64().unwrap() <= 0.05, "{far}");
    assert_eq!(far["far_bound_method"], "one-sided Clopper-Pearson");
    let (accepted, different) = (
        far["val_false_accepts"].as_u64().unwrap(),
        far["val_different_pairs"].as_u64().unwrap(),
    );
    assert!(
        different >= 59 && accepted as f64 <= 0.05 * different as f64,
        "{far}"
    );
    // The model file carries the same points, for compare.
    assert_eq!(stored_points(&run), *points);

    // Two images of one class and one of another, as PNG files.
    let (x, y) = synthetic(200, 16, 2);
    let same_class: Vec<usize> = (0..200).filter(|&i| y[i] == y[0]).take(2).collect();
    let other = (0..200).find(|&i| y[i] != y[0]).unwrap();
    for (name, i) in [
        ("a.png", same_class[0]),
        ("b.png", same_class[1]),
        ("c.png", other),
    ] {
        write_test_image(&root.path().join(name), i);
    }
    assert_eq!(x.len(), 200 * 256);
    let compare = |extra: &[&str]| {
        siamese(
            root.path(),
            &args(&[&["compare", "--checkpoint", "run"], extra].concat()),
        )
    };
    for (pair, point) in [
        (["a.png", "b.png"], "accuracy"),
        (["a.png", "c.png"], "eer"),
        (["b.png", "c.png"], "far=0.05"),
    ] {
        let out = compare(&[pair[0], pair[1], "--operating-point", point, "--json"]);
        let o: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
        let (d, t) = (
            o["distance"].as_f64().unwrap(),
            o["threshold"].as_f64().unwrap(),
        );
        let stored = points.iter().find(|p| p["name"] == point).unwrap();
        assert_eq!(o["threshold"], stored["threshold"], "the stored threshold");
        let same = d <= t;
        assert_eq!(o["decision"], if same { "same" } else { "different" });
        assert_eq!(
            exit_code(&out),
            if same { 0 } else { 1 },
            "{}",
            stderr(&out)
        );
        assert!((o["margin"].as_f64().unwrap() - (d - t).abs()).abs() < 1e-6);
    }
    // The same pair twice, in a CSV of paths relative to it, in either order: one batch.
    std::fs::create_dir_all(root.path().join("lists")).unwrap();
    std::fs::write(
        root.path().join("lists/pairs.csv"),
        "path_a,path_b\n# a comment\n../a.png,../c.png\n../c.png,../a.png\n\n../a.png,../a.png\n",
    )
    .unwrap();
    let out = compare(&["--pairs", "lists/pairs.csv", "--json"]);
    let rows: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["distance"], rows[1]["distance"], "symmetric");
    // A distance from a sqrt with ε inside: an image against itself is a hair above 0.
    assert!(rows[2]["distance"].as_f64().unwrap() < 1e-2);
    assert_eq!(rows[2]["decision"], "same");
    let any_different = rows.iter().any(|r| r["decision"] == "different");
    assert_eq!(exit_code(&out), i32::from(any_different));

    // An RGB image of another size is brought to the model's input, saying how.
    let rgb = image::RgbImage::from_fn(20, 18, |x, _| image::Rgb([x as u8 * 10, 0, 90]));
    rgb.save(root.path().join("big.png")).unwrap();
    let out = compare(&["big.png", "a.png"]);
    assert!(exit_code(&out) < 2, "{}", stderr(&out));
    let notes = stderr(&out);
    assert!(
        notes.contains("big.png: resized from 18×20 to 16×16 (stretch, the run's resize policy)")
            && notes.contains("converted to grey"),
        "{notes}"
    );

    // Bad input: exit status 2 and a message saying what to do; nothing on disk changes.
    std::fs::write(
        root.path().join("corrupt.png"),
        b"\x89PNG\r\n\x1a\nnot an image",
    )
    .unwrap();
    let before = snapshot(root.path());
    let refused = |out: Output, needles: &[&str]| {
        let err = stderr(&out);
        assert_eq!(exit_code(&out), 2, "{err}");
        for n in needles {
            assert!(err.contains(n), "the error lacks {n:?}:\n{err}");
        }
    };
    refused(
        compare(&["corrupt.png", "a.png"]),
        &["cannot read the image corrupt.png"],
    );
    refused(
        compare(&["missing.png", "a.png"]),
        &["no image missing.png"],
    );
    refused(
        compare(&["a.png", "b.png", "--operating-point", "far=0.001"]),
        &[
            "no `far=0.001` operating point",
            "accuracy, eer, far=0.05",
            "--far RATE --store",
        ],
    );
    refused(
        compare(&["a.png", "b.png", "--operating-point", "frr=0.1"]),
        &["use accuracy, eer or far=RATE"],
    );
    std::fs::write(root.path().join("bad.csv"), "a.png,b.png,c.png\n").unwrap();
    refused(
        compare(&["--pairs", "bad.csv"]),
        &["bad.csv line 1", "is not path_a,path_b"],
    );
    std::fs::remove_file(root.path().join("bad.csv")).unwrap();
    assert!(snapshot(root.path()) == before);

    // eval chooses points for other rates; one the validation pairs cannot certify is refused
    // saying how many pairs it needs, and --store adds them to the run for compare.
    let eval = |extra: &[&str]| {
        siamese(
            root.path(),
            &args(&[&["eval", "--checkpoint", "run"], extra].concat()),
        )
    };
    assert_refused(
        &eval(&["--far", "0.01"]),
        &["cannot certify a false-accept rate of 0.01", "at least 299"],
    );
    assert!(snapshot(root.path()) == before, "a refusal stores nothing");
    let out = eval(&["--far", "0.1", "--store"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("far=0.1 "), "{}", stdout(&out));
    let names: Vec<String> = stored_points(&run)
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["accuracy", "eer", "far=0.1"]);
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("result.json")).unwrap()).unwrap();
    assert_eq!(result["operating_points"][2]["name"], "far=0.1");
    assert!(
        exit_code(&compare(&[
            "a.png",
            "b.png",
            "--operating-point",
            "far=0.1"
        ])) < 2
    );

    // Held-out classes: the drift of each threshold to the unseen classes is reported.
    let out = siamese(
        root.path(),
        &train_args(&["--pairs", "16", "--held-out-classes", "3,4"]),
    );
    assert_ok(&out);
    assert!(
        stdout(&out).contains("thresholds the unseen classes' pairs (test) would choose"),
        "{}",
        stdout(&out)
    );
    // A FAR target the validation pairs cannot certify is refused before training.
    assert_refused(
        &siamese(
            root.path(),
            &train_args(&["--pairs", "16", "--far", "1e-3"]),
        ),
        &[
            "takes at least 2995 validation Different pairs",
            "--val-pairs 6589",
        ],
    );
}

#[test]
fn embed_reads_files_and_folders_as_training_read_its_images() {
    let root = trained_run("embed-files", &[]);
    let gallery = root.path().join("gallery");
    std::fs::create_dir_all(gallery.join("x/deeper")).unwrap();
    // The first three test images, as files at two depths (sorted: x/0.png, x/1.png,
    // x/deeper/2.png), and one that is not an image.
    for (i, rel) in ["x/0.png", "x/1.png", "x/deeper/2.png"].iter().enumerate() {
        write_test_image(&gallery.join(rel), i);
    }
    std::fs::write(gallery.join("x/notes.txt"), "not an image").unwrap();
    let embed = |extra: &[&str]| {
        siamese(
            root.path(),
            &args(&[&["embed", "--checkpoint", "run"], extra].concat()),
        )
    };
    assert_ok(&embed(&["--images", "gallery", "--out", "g.jsonl"]));
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(root.path().join("g.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "gallery/x/0.png",
            "gallery/x/1.png",
            "gallery/x/deeper/2.png"
        ]
    );
    // The same images from the IDX test split give the same embeddings: the files were read
    // as training reads its images (a lossless PNG of the same bytes).
    assert_ok(&embed(&["--split", "test", "--out", "t.jsonl"]));
    let split: Vec<serde_json::Value> = std::fs::read_to_string(root.path().join("t.jsonl"))
        .unwrap()
        .lines()
        .take(3)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (file, image) in rows.iter().zip(&split) {
        // Bit-equal inputs through the same kernels, but a batch of 3 against one of 200
        // may tile differently: 1e-5 allows a few ulps of the 16-wide embeddings.
        let (a, b) = (
            file["embedding"].as_array().unwrap(),
            image["embedding"].as_array().unwrap(),
        );
        assert_eq!(a.len(), 16);
        for (u, v) in a.iter().zip(b) {
            assert!(
                (u.as_f64().unwrap() - v.as_f64().unwrap()).abs() < 1e-5,
                "{u} vs {v}"
            );
        }
    }

    // Files by name, into .npy with the ids beside it; an unreadable one is left out, named.
    std::fs::write(gallery.join("broken.png"), b"not a png").unwrap();
    let out = embed(&[
        "gallery/x/1.png",
        "gallery/broken.png",
        "gallery/x/0.png",
        "--out",
        "f.npy",
    ]);
    assert_ok(&out);
    assert!(
        stderr(&out).contains("gallery/broken.png: left out, unreadable"),
        "{}",
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("embedded 2 images"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        std::fs::read_to_string(root.path().join("f.ids.txt")).unwrap(),
        "gallery/x/1.png\ngallery/x/0.png\n"
    );
    let npy = std::fs::read(root.path().join("f.npy")).unwrap();
    let npy = npyz::NpyFile::new(&npy[..]).unwrap();
    assert_eq!(npy.shape(), [2, 16]);
    let e = npy.into_vec::<f32>().unwrap();
    // Row 0 is x/1.png: the same as its row in the folder's JSON lines.
    let folder_row: Vec<f64> = rows[1]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(
        e[..16]
            .iter()
            .zip(&folder_row)
            .all(|(&u, &v)| (f64::from(u) - v).abs() < 1e-5)
    );
    // safetensors keeps the ids in its metadata.
    assert_ok(&embed(&["gallery/x/0.png", "--out", "f.safetensors"]));
    let bytes = std::fs::read(root.path().join("f.safetensors")).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(
        header.metadata().as_ref().unwrap()["ids"],
        r#"["gallery/x/0.png"]"#
    );

    // Refusals leave the disk as it was.
    let before = snapshot(root.path());
    assert_refused(
        &embed(&[
            "gallery/broken.png",
            "--on-bad-image",
            "stop",
            "--out",
            "s.npy",
        ]),
        &["cannot read the image gallery/broken.png"],
    );
    assert_refused(
        &embed(&["--images", "gallery", "--out", "gallery"]),
        &["--out gallery is a directory"],
    );
    assert_refused(
        &embed(&["--images", "gallery", "--out", "f.npy/e.npy"]),
        &["f.npy is a file, not a directory"],
    );
    std::fs::create_dir_all(root.path().join("empty")).unwrap();
    assert_refused(
        &embed(&["--images", "empty", "--out", "e.npy"]),
        &["holds no .png or .jpg image"],
    );
    std::fs::remove_dir(root.path().join("empty")).unwrap();
    assert_refused(
        &embed(&["gallery/x/0.png", "--out", "e.parquet", "--format", "csv"]),
        &["unknown --format `csv`"],
    );
    assert!(snapshot(root.path()) == before);
}

#[test]
fn an_index_is_built_grown_queried_exported_and_refuses_another_model() {
    let root = trained_run("index", &[]);
    let (_, y) = synthetic(200, 16, 2);
    // 20 test images in folders named by class, and one loose image (no label).
    for (i, label) in y.iter().enumerate().take(20) {
        let dir = root.path().join(format!("gallery/class{label}"));
        std::fs::create_dir_all(&dir).unwrap();
        write_test_image(&dir.join(format!("{i:03}.png")), i);
    }
    write_test_image(&root.path().join("gallery/loose.png"), 20);
    let run_ok = |a: &[&str]| {
        let out = siamese(root.path(), &args(a));
        assert_ok(&out);
        out
    };
    let out = index_build(root.path(), "g.index", &[]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("indexed 21 images"),
        "{}",
        stdout(&out)
    );

    // A gallery image finds itself first (distance ≈ 0: ε inside the square root), then its
    // neighbours in ascending distance; the vote is over the labelled ones.
    let query = format!("gallery/class{}/003.png", y[3]);
    let out = run_ok(&["query", "--index", "g.index", &query, "-k", "5", "--json"]);
    let o: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(o["query"], query.as_str());
    let neighbors = o["neighbors"].as_array().unwrap();
    assert_eq!(neighbors.len(), 5);
    assert_eq!(neighbors[0]["id"], query.as_str());
    assert_eq!(neighbors[0]["label"], format!("class{}", y[3]));
    assert!(neighbors[0]["distance"].as_f64().unwrap() < 1e-2);
    let d: Vec<f64> = neighbors
        .iter()
        .map(|n| n["distance"].as_f64().unwrap())
        .collect();
    assert!(d.windows(2).all(|w| w[0] <= w[1]), "{d:?}");
    let labels: Vec<&str> = neighbors
        .iter()
        .filter_map(|n| n["label"].as_str())
        .collect();
    let winner = o["label"].as_str().unwrap();
    let share = labels.iter().filter(|&&l| l == winner).count() as f64 / labels.len() as f64;
    assert!((o["confidence"].as_f64().unwrap() - share).abs() < 1e-12);
    // The search's distance is compare's.
    let second = neighbors[1]["id"].as_str().unwrap();
    let out = siamese(
        root.path(),
        &args(&["compare", "--checkpoint", "run", &query, second, "--json"]),
    );
    let c: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert!(
        (c["distance"].as_f64().unwrap() - d[1]).abs() < 1e-5,
        "{c} vs {d:?}"
    );

    // Growing: only images the index lacks are embedded.
    write_test_image(&root.path().join("gallery/class_new.png"), 21);
    let out = run_ok(&["index", "add", "--index", "g.index", "--images", "gallery"]);
    assert!(
        stdout(&out).contains("added 1 images to g.index; it holds 22 (of 21 before)"),
        "{}",
        stdout(&out)
    );
    let out = run_ok(&["index", "add", "--index", "g.index", "--images", "gallery"]);
    assert!(
        stderr(&out).contains("in the index already"),
        "{}",
        stderr(&out)
    );

    // With an approximate (HNSW) graph: its recall is printed at build time, a query finds
    // what the exact search finds on a gallery this small, and a grown index's graph holds
    // the new image.
    let out = index_build(root.path(), "a.index", &["--approximate"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("recall@10 "), "{}", stdout(&out));
    let ask = |index: &str, image: &str, extra: &[&str]| {
        let out = run_ok(
            &[
                &["query", "--index", index, image, "-k", "5", "--json"],
                extra,
            ]
            .concat(),
        );
        let o: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
        o["neighbors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ask("a.index", &query, &[]),
        ask("a.index", &query, &["--exact"])
    );
    assert_eq!(ask("a.index", &query, &[])[0], query.as_str());
    write_test_image(&root.path().join("gallery/class_extra.png"), 22);
    run_ok(&[
        "index",
        "add",
        "--index",
        "a.index",
        "gallery/class_extra.png",
    ]);
    assert_eq!(
        ask("a.index", "gallery/class_extra.png", &[])[0],
        "gallery/class_extra.png"
    );
    std::fs::remove_file(root.path().join("gallery/class_extra.png")).unwrap();

    // Export: .npy with ids and labels beside it, or JSON lines.
    run_ok(&["index", "export", "--index", "g.index", "--out", "g.npy"]);
    let ids = std::fs::read_to_string(root.path().join("g.ids.txt")).unwrap();
    let labels = std::fs::read_to_string(root.path().join("g.labels.txt")).unwrap();
    assert_eq!(ids.lines().count(), 22);
    assert_eq!(labels.lines().count(), 22);
    let loose = ids.lines().position(|l| l == "gallery/loose.png").unwrap();
    assert_eq!(
        labels.lines().nth(loose),
        Some(""),
        "a loose image has no label"
    );
    run_ok(&["index", "export", "--index", "g.index", "--out", "g.jsonl"]);
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(root.path().join("g.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["embedding"].as_array().unwrap().len(), 16);

    // Refusals, the disk unchanged: another model, an empty index, bad k, a corrupt query,
    // an existing or unwritable output.
    let other = siamese(
        root.path(),
        &train_args(&["--pairs", "32", "--seed", "7", "--out", "run2"]),
    );
    assert_ok(&other);
    let mut empty = siamese_gpu::gallery::Index::load(&root.path().join("g.index")).unwrap();
    empty.embeddings.clear();
    empty.ids.clear();
    empty.labels.clear();
    empty.save(&root.path().join("empty.index")).unwrap();
    std::fs::write(root.path().join("corrupt.png"), b"\x89PNG\r\n\x1a\nbroken").unwrap();
    let before = snapshot(root.path());
    let refused =
        |a: &[&str], needles: &[&str]| assert_refused(&siamese(root.path(), &args(a)), needles);
    refused(
        &[
            "query",
            "--index",
            "g.index",
            &query,
            "--checkpoint",
            "run2",
        ],
        &["g.index was built with another model", "build a new index"],
    );
    refused(
        &[
            "index",
            "add",
            "--index",
            "g.index",
            "--checkpoint",
            "run2",
            &query,
        ],
        &["was built with another model"],
    );
    refused(
        &["query", "--index", "empty.index", &query],
        &["empty.index is empty"],
    );
    refused(
        &["query", "--index", "g.index", &query, "-k", "0"],
        &["1 to 64"],
    );
    refused(
        &["query", "--index", "g.index", &query, "-k", "65"],
        &["1 to 64"],
    );
    refused(
        &["query", "--index", "g.index", "corrupt.png"],
        &["cannot read the image corrupt.png"],
    );
    refused(
        &["query", "--index", "corrupt.png", &query],
        &["corrupt.png is not an index written by `siamese index build`"],
    );
    assert_refused(
        &index_build(root.path(), "g.index", &[]),
        &["g.index exists", "siamese index add"],
    );
    refused(
        &[
            "index",
            "build",
            "--checkpoint",
            "run",
            &query,
            "--out",
            "g.npy/x.index",
        ],
        &["g.npy is a file, not a directory"],
    );
    refused(
        &[
            "index",
            "export",
            "--index",
            "g.index",
            "--out",
            "g.parquet",
        ],
        &["write .npy", ".jsonl"],
    );
    assert!(snapshot(root.path()) == before);
}

#[test]
fn export_writes_an_onnx_tower_and_a_bce_runs_head() {
    use prost::Message;
    use siamese_gpu::export::proto::ModelProto;
    let root = trained_run("export", &["--loss", "bce"]);
    let out = siamese(
        root.path(),
        &args(&["export", "--checkpoint", "run", "--out", "model.onnx"]),
    );
    assert_ok(&out);
    assert!(stdout(&out).contains("ONNX opset 17"), "{}", stdout(&out));
    let read = |name: &str| {
        ModelProto::decode(&std::fs::read(root.path().join(name)).unwrap()[..]).unwrap()
    };
    let tower = read("model.onnx");
    let meta: BTreeMap<String, String> = tower
        .metadata_props
        .iter()
        .map(|m| (m.key.clone(), m.value.clone()))
        .collect();
    assert!(
        meta["siamese.settings"].contains("loss = \"bce\""),
        "{meta:?}"
    );
    assert!(
        meta["siamese.operating_points"].contains("\"eer\""),
        "{meta:?}"
    );
    let head = read("model.head.onnx");
    let graph = head.graph.unwrap();
    assert_eq!(graph.output[0].name, "probability");
    let before = snapshot(root.path());
    assert_refused(
        &siamese(
            root.path(),
            &args(&[
                "export",
                "--checkpoint",
                "run",
                "--format",
                "tflite",
                "--out",
                "m.tflite",
            ]),
        ),
        &["unknown --format `tflite`"],
    );
    assert_refused(
        &siamese(
            root.path(),
            &args(&[
                "export",
                "--checkpoint",
                "run",
                "--out",
                "model.onnx/x.onnx",
            ]),
        ),
        &["model.onnx is a file, not a directory"],
    );
    assert_refused(
        &siamese(
            root.path(),
            &args(&["export", "--checkpoint", "nowhere", "--out", "m.onnx"]),
        ),
        &["nowhere"],
    );
    assert!(snapshot(root.path()) == before);
}
