//! The `siamese` binary end to end, on tiny synthetic datasets (a 16×16 IDX set, an
//! ImageFolder tree of PNGs), so each command takes well under a second on lavapipe: config
//! files, sweeps, embeddings, other image sizes and colours, and every bad input of the
//! product — each asserting the message AND that the files already on disk are unchanged,
//! byte for byte. A process killed at random moments (SIGKILL) resumes to the weights of an
//! uninterrupted run.

#[path = "cli/serve.rs"]
mod serve;
mod support;
#[path = "cli/use_model.rs"]
mod use_model;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use siamese_gpu::checkpoint;
use siamese_gpu::data::idx::encode_idx;
use siamese_gpu::model::ModelValues;
use support::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_siamese");
const TOWER: &str = "conv 4 3 | relu | maxpool 2 | flatten | dense 16";

/// A deterministic byte stream (64-bit LCG), so the data needs no seeded RNG crate.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u8 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 56) as u8
    }
}

/// `n` noisy `size`×`size` grey images of 5 classes (a bright square whose place depends on
/// the class) and their labels.
fn synthetic(n: usize, size: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut rng = Lcg(seed);
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let c = (rng.next() % 5) as usize;
        let (r0, c0) = ((c * 3) % (size - 4), (c * 5) % (size - 4));
        for r in 0..size {
            for col in 0..size {
                let noise = rng.next() / 2;
                let square = (r0..r0 + 4).contains(&r) && (c0..c0 + 4).contains(&col);
                images.push(if square {
                    noise.saturating_add(120)
                } else {
                    noise
                });
            }
        }
        labels.push(c as u8);
    }
    (images, labels)
}

/// The four IDX files of a synthetic dataset of `size`×`size` images in `dir`.
fn write_idx_dataset(dir: &Path, size: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for (images, labels, n, seed) in [
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 400, 1),
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 200, 2),
    ] {
        let (x, y) = synthetic(n, size, seed);
        std::fs::write(dir.join(images), encode_idx(&[n, size, size], &x).unwrap()).unwrap();
        std::fs::write(dir.join(labels), encode_idx(&[n], &y).unwrap()).unwrap();
    }
}

/// An ImageFolder tree: classes a, b, c; RGB PNGs of two sizes (so some are resized).
fn write_image_folder(dir: &Path) {
    let mut rng = Lcg(3);
    for (split, per_class) in [("train", 30), ("test", 12)] {
        for (c, class) in ["a", "b", "c"].iter().enumerate() {
            let class_dir = dir.join(split).join(class);
            std::fs::create_dir_all(&class_dir).unwrap();
            for i in 0..per_class {
                let (w, h) = if i % 2 == 0 { (16, 16) } else { (20, 18) };
                let img = image::RgbImage::from_fn(w, h, |_, _| {
                    let noise = rng.next() / 3;
                    let mut px = [noise; 3];
                    px[c] = px[c].saturating_add(150); // the class is the colour
                    image::Rgb(px)
                });
                img.save(class_dir.join(format!("{i:03}.png"))).unwrap();
            }
        }
    }
}

/// The flags of every small run: the synthetic data (relative, so a copied directory is the
/// same run), a tiny tower, small batches and evaluations.
fn small(extra: &[&str]) -> Vec<String> {
    small_with_tower(TOWER, extra)
}

fn small_with_tower(tower: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--data",
        "data",
        "--tower",
        tower,
        "--batch",
        "8",
        "--val-pairs",
        "200",
        "--test-pairs",
        "200",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn command(cwd: &Path, args: &[String]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(cwd).args(args);
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        cmd.env("XDG_RUNTIME_DIR", "/tmp"); // lavapipe warns without it
    }
    // Decoded image folders are cached outside the test's directories, whose files the
    // tests compare byte for byte.
    cmd.env(
        "XDG_CACHE_HOME",
        std::env::temp_dir().join("siamese-gpu-test-cache"),
    );
    cmd
}

/// Runs `siamese ARGS` in `cwd`.
fn siamese(cwd: &Path, args: &[String]) -> Output {
    command(cwd, args)
        .output()
        .expect("the siamese binary runs")
}

fn args(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| s.to_string()).collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "siamese failed ({}):\n{}",
        out.status,
        stderr(out)
    );
}

/// Asserts that the command failed with status 1 and an `error:` line holding every needle.
fn assert_refused(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "expected a refusal:\n{err}");
    let error = &err[err
        .find("error: ")
        .unwrap_or_else(|| panic!("no error line:\n{err}"))..];
    for n in needles {
        assert!(error.contains(n), "the error lacks {n:?}:\n{error}");
    }
}

/// Every file under `dir`, path → bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// A root with `data/` (16×16 IDX) and `run/`, a trained run of 4 steps.
fn trained_run(tag: &str, extra: &[&str]) -> TempDir {
    let root = TempDir::new(tag);
    write_idx_dataset(&root.path().join("data"), 16);
    let mut a = args(&["train", "--out", "run", "--pairs", "32"]);
    a.extend(small(extra));
    assert_ok(&siamese(root.path(), &a));
    root
}

fn train_args(extra: &[&str]) -> Vec<String> {
    let mut a = args(&["train"]);
    a.extend(small(extra));
    a
}

#[test]
fn a_config_file_sets_a_run_flags_override_it_and_the_run_dir_reads_back() {
    let root = TempDir::new("config");
    write_idx_dataset(&root.path().join("data"), 16);
    std::fs::write(
        root.path().join("run.toml"),
        format!(
            "data = \"data\"\ntower = \"{TOWER}\"\nbatch = 8\npairs = 16\nmargin = 0.5\n\
             val_pairs = 100\ntest_pairs = 100\nval_images = 40\nloss = \"triplet\"\n"
        ),
    )
    .unwrap();
    let out = siamese(
        root.path(),
        &args(&[
            "train", "--config", "run.toml", "--pairs", "24", "--out", "run",
        ]),
    );
    assert_ok(&out);
    // The resolved settings are printed, the flag winning over the file.
    let err = stderr(&out);
    assert!(
        err.contains("settings (defaults < --config file < flags):"),
        "{err}"
    );
    assert!(
        err.contains("  pairs = 24\n") && err.contains("  margin = 0.5\n"),
        "{err}"
    );
    let saved = std::fs::read_to_string(root.path().join("run/config.toml")).unwrap();
    assert!(
        saved.contains("pairs = 24") && saved.contains("loss = \"triplet\""),
        "{saved}"
    );
    // The run directory's config.toml reproduces the run.
    let again = siamese(
        root.path(),
        &args(&["train", "--config", "run/config.toml", "--json"]),
    );
    assert_ok(&again);
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.path().join("run/result.json")).unwrap())
            .unwrap();
    let last = stdout(&again);
    let again: serde_json::Value = serde_json::from_str(last.lines().last().unwrap()).unwrap();
    assert_eq!(result["test_pair_accuracy"], again["test_pair_accuracy"]);
    assert_eq!(result["train_pairs"], 24);
}

#[test]
fn invalid_config_values_are_refused_naming_the_key_and_nothing_changes() {
    let root = trained_run("badconfig", &[]);
    let before = snapshot(root.path());
    for (file, needles) in [
        (
            "margin = -1\n",
            &["margin must be a finite number ≥ 0, got -1"][..],
        ),
        ("batch = 0\n", &["batch must be at least 1, got 0"]),
        (
            "lr = 0\n",
            &["lr (the learning rate) must be a positive number, got 0"],
        ),
        (
            "marign = 1\n",
            &[
                "bad.toml",
                "line 1",
                "unknown field `marign`",
                "expected one of",
                "`margin`",
            ],
        ),
        (
            "batch = -3\n",
            &["bad.toml", "batch = -3", "expected a whole number ≥ 0"],
        ),
        (
            "loss = \"hinge\"\n",
            &["unknown loss `hinge`: use contrastive, triplet, bce, arcface"],
        ),
        (
            "positive_fraction = 2.0\n",
            &["positive_fraction must be in [0, 1], got 2"],
        ),
    ] {
        std::fs::write(root.path().join("bad.toml"), file).unwrap();
        for command in ["train", "sweep"] {
            let mut a = args(&[command, "--config", "bad.toml", "--out", "run"]);
            if command == "sweep" {
                a.extend(args(&["--grid", "seed=1,2"]));
            }
            assert_refused(&siamese(root.path(), &a), needles);
        }
        std::fs::remove_file(root.path().join("bad.toml")).unwrap();
        assert!(
            snapshot(root.path()) == before,
            "{file:?} changed files on disk"
        );
    }
    // A flag's bad value, and a sweep point's, name the key the same way.
    assert_refused(
        &siamese(
            root.path(),
            &train_args(&["--margin=-0.5", "--resume", "run"]),
        ),
        &["margin must be a finite number ≥ 0, got -0.5"],
    );
    let mut sweep = args(&["sweep", "--out", "run", "--grid", "batch=8,0"]);
    sweep.extend(small(&[]));
    assert_refused(
        &siamese(root.path(), &sweep),
        &["run 01_batch=0", "batch must be at least 1, got 0"],
    );
    // A fresh run into a directory holding one is refused, not overwritten.
    assert_refused(
        &siamese(root.path(), &train_args(&["--out", "run", "--pairs", "16"])),
        &["already holds a trained run", "--resume run"],
    );
    assert!(snapshot(root.path()) == before);
}

/// An output location that cannot become a run directory (a file, or a path below one) is
/// refused before the first step, and the file is left as it was.
#[test]
fn an_out_that_is_a_file_is_refused_before_training() {
    let root = TempDir::new("out-file");
    write_idx_dataset(&root.path().join("data"), 16);
    std::fs::write(root.path().join("taken"), b"not a run").unwrap();
    for out in ["taken", "taken/run"] {
        let mut a = args(&["train", "--out", out, "--pairs", "32"]);
        a.extend(small(&[]));
        let before = snapshot(root.path());
        let refused = siamese(root.path(), &a);
        assert_refused(
            &refused,
            &["taken is a file, not a directory; choose another --out"],
        );
        assert!(
            !stderr(&refused).contains("step"),
            "refused before training:\n{}",
            stderr(&refused)
        );
        assert!(snapshot(root.path()) == before);
    }
}

#[test]
fn damaged_dataset_files_are_refused_and_the_run_is_untouched() {
    let root = trained_run("baddata", &[]);
    let data = root.path().join("data");
    std::fs::write(root.path().join("run/test.npy"), b"embeddings made before").unwrap();
    let images = data.join("train-images-idx3-ubyte");
    let good = std::fs::read(&images).unwrap();
    let labels = data.join("t10k-labels-idx1-ubyte");
    let good_labels = std::fs::read(&labels).unwrap();
    let test_images = data.join("t10k-images-idx3-ubyte");
    let good_test = std::fs::read(&test_images).unwrap();
    let mut corrupt = good.clone();
    corrupt[2] = 0x0d; // a float type code
    let (twelve, _) = synthetic(200, 12, 5);
    let cases: Vec<(&Path, Vec<u8>, Vec<&str>)> = vec![
        (
            &images,
            good[..good.len() - 100].to_vec(),
            vec!["train-images-idx3-ubyte", "truncated"],
        ),
        (&images, corrupt, vec!["train-images-idx3-ubyte", "0x0d"]),
        (
            &labels,
            encode_idx(&[150], &good_labels[8..158]).unwrap(),
            vec!["holds 200 images but", "holds 150 labels"],
        ),
        (
            &test_images,
            encode_idx(&[200, 12, 12], &twelve).unwrap(),
            vec!["training images are 16x16 but test images are 12x12"],
        ),
    ];
    let resume = train_args(&["--resume", "run", "--pairs", "64"]);
    let eval = args(&["eval", "--checkpoint", "run"]);
    let embed = args(&["embed", "--checkpoint", "run", "--out", "run/test.npy"]);
    for (file, bytes, needles) in cases {
        let original = std::fs::read(file).unwrap();
        std::fs::write(file, &bytes).unwrap();
        let before = snapshot(&root.path().join("run"));
        for a in [&resume, &eval, &embed] {
            assert_refused(&siamese(root.path(), a), &needles);
            assert!(
                snapshot(&root.path().join("run")) == before,
                "{a:?} with {needles:?} changed the run directory"
            );
        }
        std::fs::write(file, original).unwrap();
    }
    assert_eq!(std::fs::read(&test_images).unwrap(), good_test);
}

#[test]
fn a_checkpoint_of_another_architecture_is_refused_saying_what_differs() {
    let root = trained_run("arch", &[]);
    let before = snapshot(root.path());
    // Resuming with another tower names the setting, saved and now.
    let other = "conv 8 3 | relu | maxpool 2 | flatten | dense 16";
    assert_refused(
        &siamese(
            root.path(),
            &[
                args(&["train"]),
                small_with_tower(
                    other,
                    &["--resume", "run", "--pairs", "64", "--margin", "2"],
                ),
            ]
            .concat(),
        ),
        &[
            "was trained with other settings",
            &format!("tower: \"{TOWER}\" → \"{other}\""),
            "margin: (unset) → 2.0",
        ],
    );
    // A file whose metadata names another tower than its tensors.
    let bytes = std::fs::read(root.path().join("run/model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap();
    meta.insert("tower".into(), other.into());
    let tensors: Vec<(String, safetensors::tensor::TensorView)> = file.tensors();
    let tampered = safetensors::serialize(tensors, Some(meta)).unwrap();
    std::fs::write(root.path().join("other.safetensors"), &tampered).unwrap();
    let before_other = snapshot(root.path());
    for command in ["eval", "embed"] {
        let mut a = args(&[command, "--checkpoint", "other.safetensors"]);
        if command == "embed" {
            a.extend(args(&["--out", "e.npy"]));
        }
        assert_refused(
            &siamese(root.path(), &a),
            &[
                "does not fit the model `conv 8 3",
                "tower.0.weight is F32 [4, 1, 3, 3], the model needs F32 [8, 1, 3, 3]",
            ],
        );
    }
    // The model on a dataset of another image size.
    write_idx_dataset(&root.path().join("data12"), 12);
    let before_data = snapshot(root.path());
    assert_refused(
        &siamese(
            root.path(),
            &args(&["eval", "--checkpoint", "run", "--data", "data12"]),
        ),
        &["the model takes 1×16×16 images", "holds 1×12×12"],
    );
    assert!(snapshot(root.path()) == before_data);
    std::fs::remove_dir_all(root.path().join("data12")).unwrap();
    assert!(snapshot(root.path()) == before_other);
    std::fs::remove_file(root.path().join("other.safetensors")).unwrap();
    assert!(snapshot(root.path()) == before);
}

#[test]
fn a_diverging_run_names_the_step_and_keeps_the_last_checkpoint_byte_for_byte() {
    // From step 5 on the learning rate is multiplied by 1e20: the weights overflow.
    let root = trained_run("nan", &["--schedule", "step:4:1e20"]);
    let before = snapshot(&root.path().join("run"));
    let out = siamese(
        root.path(),
        &train_args(&[
            "--schedule",
            "step:4:1e20",
            "--resume",
            "run",
            "--pairs",
            "64",
        ]),
    );
    assert_refused(
        &out,
        &[
            "the loss became",
            "at step",
            "the learning rate is probably too high",
        ],
    );
    let err = stderr(&out);
    let step: usize = err[err.find("at step ").unwrap() + 8..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        step > 4,
        "the resumed run starts after step 4, yet stopped at {step}"
    );
    // The checkpoint and the result stay byte for byte; the log only grows (the failed
    // attempt's losses are appended), and config.toml records the attempted budget.
    let after = snapshot(&root.path().join("run"));
    for file in ["model.safetensors", "result.json"] {
        let path = root.path().join("run").join(file);
        assert!(after[&path] == before[&path], "{file} changed");
    }
    let log = root.path().join("run/metrics.jsonl");
    assert!(after[&log].starts_with(&before[&log]));
    assert_eq!(after.len(), before.len(), "no file was added");
}

#[test]
fn a_folder_dataset_resizes_keeps_rgb_and_skips_or_stops_at_an_unreadable_image() {
    let root = TempDir::new("folder");
    write_image_folder(&root.path().join("data"));
    // Colour jitter on RGB images, every op on.
    let rgb = [
        "--color",
        "rgb",
        "--image-size",
        "12x12",
        "--pairs",
        "32",
        "--brightness",
        "0.2",
        "--contrast",
        "0.2",
        "--saturation",
        "0.5",
        "--hue",
        "0.1",
        "--random-grayscale",
        "0.2",
        "--gaussian-blur",
        "5",
    ];
    let out = siamese(
        root.path(),
        &train_args(&[&rgb[..], &["--out", "run"]].concat()),
    );
    assert_ok(&out);
    assert!(
        stderr(&out).contains("input [3, 12, 12]"),
        "{}",
        stderr(&out)
    );
    // Embeddings of an RGB folder model, to safetensors with labels and class names.
    assert_ok(&siamese(
        root.path(),
        &args(&[
            "embed",
            "--checkpoint",
            "run",
            "--split",
            "test",
            "--out",
            "test.safetensors",
        ]),
    ));
    let bytes = std::fs::read(root.path().join("test.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(file.tensor("embeddings").unwrap().shape(), [36, 16]);
    let labels = file.tensor("labels").unwrap();
    assert_eq!(
        &labels.data()[..6],
        [0, 1, 2, 0, 1, 2],
        "round-robin over the classes"
    );
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(
        header.metadata().as_ref().unwrap()["classes"],
        r#"["a","b","c"]"#
    );

    // Class-disjoint splits need at least two classes on each side.
    assert_refused(
        &siamese(root.path(), &train_args(&["--held-out-classes", "c"])),
        &[
            "held_out_classes = [c] leaves the test split",
            "1 class(es) (c)",
        ],
    );
    assert_refused(
        &siamese(root.path(), &train_args(&["--held-out-classes", "z"])),
        &["no class `z`", "a, b, c"],
    );

    // An unreadable image: skipped with a warning by default, or the run stops naming it.
    std::fs::write(root.path().join("data/train/b/broken.png"), b"not a png").unwrap();
    let before = snapshot(root.path());
    let out = siamese(root.path(), &train_args(&["--pairs", "16"]));
    assert_ok(&out);
    assert!(
        stderr(&out).contains("skipped data/train/b/broken.png"),
        "{}",
        stderr(&out)
    );
    assert!(snapshot(root.path()) == before);
    assert_refused(
        &siamese(
            root.path(),
            &train_args(&["--pairs", "16", "--on-bad-image", "stop", "--out", "run2"]),
        ),
        &[
            "cannot read the image data/train/b/broken.png",
            "on_bad_image = \"skip\"",
        ],
    );
    // eval reads the run's own policy (skip): it warns and evaluates.
    let out = siamese(root.path(), &args(&["eval", "--checkpoint", "run"]));
    assert_ok(&out);
    assert!(stderr(&out).contains("warning: skipped data/train/b/broken.png"));
    assert!(
        snapshot(root.path()) == before,
        "run2 must not exist, nothing may change"
    );
}

#[test]
fn a_two_by_two_sweep_ranks_its_runs_and_a_second_call_reuses_them() {
    let root = TempDir::new("sweep");
    write_idx_dataset(&root.path().join("data"), 16);
    let mut a = args(&[
        "sweep",
        "--grid",
        "margin=0.5,1.0",
        "--grid",
        "lr=1e-3,3e-4",
        "--pairs",
        "32",
        "--out",
        "sw",
    ]);
    a.extend(small(&[]));
    let out = siamese(root.path(), &a);
    assert_ok(&out);
    let table = stdout(&out);
    assert!(
        table.contains("runs ranked by val_roc_auc (validation):"),
        "{table}"
    );
    let rows: Vec<&str> = table
        .lines()
        .skip_while(|l| !l.starts_with("rank"))
        .take(5)
        .collect();
    assert!(
        rows[0].starts_with("rank  run") && rows[0].contains("margin  lr"),
        "{table}"
    );
    for (i, row) in rows[1..].iter().enumerate() {
        assert!(
            row.starts_with(&(i + 1).to_string()) && row.ends_with("ok"),
            "{table}"
        );
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.path().join("sw/summary.json")).unwrap())
            .unwrap();
    let aucs: Vec<f64> = summary["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["val_roc_auc"].as_f64().unwrap())
        .collect();
    assert_eq!(aucs.len(), 4);
    assert!(
        aucs.windows(2).all(|w| w[0] >= w[1]),
        "ranked best first: {aucs:?}"
    );
    let csv = std::fs::read_to_string(root.path().join("sw/summary.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5);
    for run in ["00_margin=0.5_lr=1e-3", "03_margin=1.0_lr=3e-4"] {
        assert!(
            root.path()
                .join("sw")
                .join(run)
                .join("result.json")
                .is_file()
        );
    }
    // A second call finds every run finished and ranks them again, identically.
    let again = siamese(root.path(), &a);
    assert_ok(&again);
    assert_eq!(stderr(&again).matches("reusing its result.json").count(), 4);
    assert_eq!(
        std::fs::read_to_string(root.path().join("sw/summary.csv")).unwrap(),
        csv
    );
    // Other base settings in the same directory are refused, not mixed with the old runs.
    let before = snapshot(root.path());
    let mut other = a.clone();
    other.extend(args(&["--seed", "7"]));
    assert_refused(
        &siamese(root.path(), &other),
        &["00_margin=0.5_lr=1e-3 holds a run of other settings (seed: 0 → 7)"],
    );
    assert!(snapshot(root.path()) == before);
}

/// `model.safetensors` of a run: the model's values (parameters, running statistics) and
/// the optimizer state.
fn weights(run: &Path) -> (ModelValues, Vec<Vec<f32>>) {
    let path = run.join("model.safetensors");
    let (_, values, _) = checkpoint::load_model(&path).unwrap();
    (values, checkpoint::load_optimizer_state(&path).unwrap())
}

/// With BatchNorm (whose running statistics are part of what is saved) and dropout (whose
/// masks must be drawn again as the uninterrupted run drew them).
#[test]
fn a_run_killed_at_random_moments_resumes_to_the_uninterrupted_weights() {
    let root = TempDir::new("kill");
    write_idx_dataset(&root.path().join("data"), 16);
    let tower = "conv 4 3 bias=false | bn | relu | maxpool 2 | flatten | dropout 0.2 | dense 16";
    // 240 steps, saved after every one: a kill often lands in or near a checkpoint write.
    let run = |out: &str, extra: &[&str]| {
        let mut a = args(&["train"]);
        a.extend(small_with_tower(
            tower,
            &["--pairs", "1920", "--eval-every", "8"],
        ));
        a.extend(args(&[out]).into_iter().chain(args(extra)));
        a
    };
    assert_ok(&siamese(root.path(), &run("--out", &["reference"])));

    let mut rng = Lcg(11);
    let (mut kills, mut tmp_left) = (0, 0);
    let started = Instant::now();
    loop {
        let dir = root.path().join("killed");
        let a = if dir.join("model.safetensors").exists() {
            run("--resume", &["killed"])
        } else {
            run("--out", &["killed"])
        };
        let mut child = command(root.path(), &a)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Kill at a random moment of the first ~0.8 s, for at most 8 kills.
        if kills < 8 {
            std::thread::sleep(Duration::from_millis(50 + rng.next() as u64 * 3));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL: no handler runs
                child.wait().unwrap();
                kills += 1;
                let tmp = dir.join("model.safetensors.tmp");
                tmp_left += tmp.exists() as usize;
                // Whatever the moment, the checkpoint on disk is a whole one.
                if dir.join("model.safetensors").exists() {
                    weights(&dir);
                    // A kill inside the write is rare at these sizes; leave what it leaves
                    // (a half-written temporary beside the checkpoint) every time.
                    if !tmp.exists() {
                        let whole = std::fs::read(dir.join("model.safetensors")).unwrap();
                        std::fs::write(&tmp, &whole[..whole.len() / 2]).unwrap();
                    }
                }
                continue;
            }
        }
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        // Killed after the last checkpoint but before result.json: the weights are final.
        if out.status.success() || err.contains("has already trained 240 steps") {
            break;
        }
        panic!("the resumed run failed:\n{err}");
    }
    eprintln!(
        "{kills} kills, {tmp_left} of them left a half-written model.safetensors.tmp, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        kills >= 3,
        "only {kills} kills landed before the run finished"
    );
    let (values, state) = weights(&root.path().join("killed"));
    let (want, want_state) = weights(&root.path().join("reference"));
    assert!(
        values.params == want.params,
        "the resumed weights differ from the uninterrupted run's"
    );
    assert!(
        values.running == want.running && !values.running.is_empty(),
        "the resumed running statistics differ from the uninterrupted run's"
    );
    assert_eq!(values.batches_tracked, 240);
    assert_eq!(want.batches_tracked, 240);
    assert!(state == want_state, "the optimizer state differs");
}

#[test]
fn an_augmented_run_resumes_to_the_uninterrupted_weights_and_differs_from_a_plain_one() {
    let root = TempDir::new("augment");
    write_idx_dataset(&root.path().join("data"), 16);
    let run = |pairs: &str, extra: &[&str]| {
        let mut a = train_args(&["--pairs", pairs, "--eval-every", "32"]);
        a.extend(args(&[
            "--augment",
            "--shear-range",
            "10",
            "--horizontal-flip",
            "--random-resized-crop",
            "--crop-scale",
            "0.5:1",
            "--brightness",
            "0.4",
            "--contrast",
            "0.4",
            "--gaussian-blur",
            "3",
        ]));
        a.extend(args(extra));
        assert_ok(&siamese(root.path(), &a));
    };
    run("64", &["--out", "whole"]);
    // Half the budget, then resumed to all of it: the transforms of the first half are
    // replayed, so the second half draws what the uninterrupted run drew.
    run("32", &["--out", "halves"]);
    run("64", &["--resume", "halves"]);
    assert!(
        weights(&root.path().join("halves")) == weights(&root.path().join("whole")),
        "the resumed augmented run differs from the uninterrupted one"
    );
    let saved = std::fs::read_to_string(root.path().join("whole/config.toml")).unwrap();
    for key in [
        "rotation_range = 10.0",
        "shear_range = 10.0",
        "horizontal_flip = true",
        "fill_mode = \"constant\"",
        "random_resized_crop = true",
        "crop_scale = \"0.5:1\"",
        "brightness = 0.4",
        "contrast = 0.4",
        "gaussian_blur = 3",
    ] {
        assert!(saved.contains(key), "config.toml lacks `{key}`:\n{saved}");
    }
    let plain = train_args(&["--pairs", "64", "--eval-every", "32", "--out", "plain"]);
    assert_ok(&siamese(root.path(), &plain));
    assert!(
        weights(&root.path().join("plain")).0 != weights(&root.path().join("whole")).0,
        "augmentation changed nothing that was trained"
    );
}

#[test]
fn ctrl_c_saves_and_exits_with_status_130() {
    let root = TempDir::new("ctrlc");
    write_idx_dataset(&root.path().join("data"), 16);
    let mut child = command(
        root.path(),
        &train_args(&["--pairs", "80000", "--out", "run"]),
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // Interrupt once training has passed its first loss report.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut err = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        err += &line;
        err.push('\n');
        if line.starts_with("step ") {
            break;
        }
    }
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    for line in lines {
        err += &line.unwrap();
        err.push('\n');
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        err.contains("the state of that step was saved: continue with --resume run"),
        "{err}"
    );
    let (_, _, meta) = checkpoint::load_model(&root.path().join("run/model.safetensors")).unwrap();
    assert!(meta["steps_done"].parse::<usize>().unwrap() >= 20);
}

#[test]
fn a_mined_triplet_run_trains_on_pk_batches_and_refuses_a_batch_that_does_not_split() {
    let root = TempDir::new("mined");
    write_idx_dataset(&root.path().join("data"), 16);
    // P = 3 classes does not divide a batch of 8.
    let triplet = |extra: &[&str]| {
        let mut a = vec!["--loss", "triplet", "--pairs", "32"];
        a.extend(extra);
        train_args(&a)
    };
    assert_refused(
        &siamese(
            root.path(),
            &triplet(&["--miner", "batch-hard", "--classes-per-batch", "3"]),
        ),
        &["batch 8 is not a multiple of classes_per_batch 3"],
    );
    assert_refused(
        &siamese(
            root.path(),
            &train_args(&["--miner", "semi-hard", "--pairs", "32"]),
        ),
        &["use it with loss = triplet"],
    );
    let out = siamese(
        root.path(),
        &triplet(&[
            "--miner",
            "semi-hard",
            "--classes-per-batch",
            "4",
            "--out",
            "run",
        ]),
    );
    assert_ok(&out);
    let log = stderr(&out) + &stdout(&out);
    assert!(log.contains("mined triplets violate the margin"), "{log}");
    let config = std::fs::read_to_string(root.path().join("run/config.toml")).unwrap();
    assert!(config.contains("miner = \"semi-hard\""), "{config}");
}

/// A run's `model.safetensors` rewritten as a PyTorch `state_dict` of the tower alone: the
/// `tower.` prefix dropped, the head, the optimizer state and our metadata left out.
fn as_state_dict(checkpoint: &Path, out: &Path) {
    use safetensors::SafeTensors;
    let bytes = std::fs::read(checkpoint).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<(String, safetensors::tensor::TensorView)> = file
        .tensors()
        .into_iter()
        .filter_map(|(name, t)| Some((name.strip_prefix("tower.")?.to_string(), t)))
        .collect();
    std::fs::write(out, safetensors::serialize(tensors, None).unwrap()).unwrap();
}

const BN_TOWER: &str = "conv 4 3 bias=false | bn | relu | maxpool 2 | flatten | dense 16";

#[test]
fn weights_from_elsewhere_load_by_name_and_frozen_layers_stay_as_loaded() {
    let root = TempDir::new("init-from");
    write_idx_dataset(&root.path().join("data"), 16);
    let mut a = args(&["train"]);
    a.extend(small_with_tower(
        BN_TOWER,
        &["--pairs", "64", "--out", "source"],
    ));
    assert_ok(&siamese(root.path(), &a));
    as_state_dict(
        &root.path().join("source/model.safetensors"),
        &root.path().join("pretrained.safetensors"),
    );
    let (source, _) = weights(&root.path().join("source"));

    // Fine-tune with the stem (conv and BatchNorm) frozen.
    let mut a = args(&["train"]);
    a.extend(small_with_tower(
        BN_TOWER,
        &[
            "--pairs",
            "64",
            "--init-from",
            "pretrained.safetensors",
            "--freeze",
            "0",
            "--freeze",
            "1",
            "--out",
            "tuned",
        ],
    ));
    let out = siamese(root.path(), &a);
    assert_ok(&out);
    let said = stderr(&out);
    // Conv weight, BatchNorm weight, bias and running statistics, dense weight and bias;
    // `num_batches_tracked` is read too.
    assert!(
        said.contains("loaded 7 tensors") && said.contains("ignored from the file: none"),
        "{said}"
    );
    assert!(said.contains("left at initialisation: none"), "{said}");
    let (tuned, optimizer) = weights(&root.path().join("tuned"));
    let model = checkpoint::load_model(&root.path().join("tuned/model.safetensors"))
        .unwrap()
        .0;
    let tensor = |m: &siamese_gpu::model::SiameseModel, v: &ModelValues, name: &str| {
        let p = &m.layout.params[m.layout.index_of(name).unwrap()];
        v.params[p.offset..p.offset + p.len()].to_vec()
    };
    let source_model = checkpoint::load_model(&root.path().join("source/model.safetensors"))
        .unwrap()
        .0;
    for frozen in ["tower.0.weight", "tower.1.weight", "tower.1.bias"] {
        assert_eq!(
            tensor(&model, &tuned, frozen),
            tensor(&source_model, &source, frozen),
            "{frozen} is frozen"
        );
    }
    assert_ne!(
        tensor(&model, &tuned, "tower.5.weight"),
        tensor(&source_model, &source, "tower.5.weight"),
        "the dense layer trains"
    );
    // A frozen BatchNorm keeps its running statistics (evaluation mode while training).
    assert_eq!(tuned.running, source.running);
    // Adam's two state buffers cover the trainable parameters only.
    let trainable: usize = model.layout.len - model.layout.trainable_offset;
    assert!(
        optimizer.iter().all(|s| s.len() == trainable),
        "{trainable}"
    );

    // The same weights embedded without training.
    let out = siamese(
        root.path(),
        &args(&[
            "embed",
            "--tower",
            BN_TOWER,
            "--init-from",
            "pretrained.safetensors",
            "--data",
            "data",
            "--out",
            "e.npy",
        ]),
    );
    assert_ok(&out);
    assert!(
        stdout(&out).contains("float32 [200, 16]"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn weights_of_another_architecture_are_refused_naming_the_tensors() {
    let root = TempDir::new("init-mismatch");
    write_idx_dataset(&root.path().join("data"), 16);
    let mut a = args(&["train"]);
    a.extend(small_with_tower(
        BN_TOWER,
        &["--pairs", "16", "--out", "source"],
    ));
    assert_ok(&siamese(root.path(), &a));
    as_state_dict(
        &root.path().join("source/model.safetensors"),
        &root.path().join("pretrained.safetensors"),
    );
    let wider = "conv 8 3 bias=false | bn | relu | maxpool 2 | flatten | dense 16";
    let mut a = args(&["train"]);
    a.extend(small_with_tower(
        wider,
        &["--pairs", "16", "--init-from", "pretrained.safetensors"],
    ));
    assert_refused(
        &siamese(root.path(), &a),
        &[
            "does not fit the tower",
            "0.weight: the file's is [4, 1, 3, 3], the model's [8, 1, 3, 3]",
            "--init-allow-mismatch",
        ],
    );
    // Allowed, the mismatched tensors stay at their initialisation and are named.
    a.push("--init-allow-mismatch".into());
    let out = siamese(root.path(), &a);
    assert_ok(&out);
    assert!(
        stderr(&out).contains(
            "0.weight: the file's is [4, 1, 3, 3], the model's [8, 1, 3, 3] (kept at initialisation)"
        ),
        "{}",
        stderr(&out)
    );
    // A file that shares no name with the tower.
    let mut a = args(&["train"]);
    a.extend(small_with_tower(
        "flatten | flatten | flatten | dense 16",
        &["--pairs", "16", "--init-from", "pretrained.safetensors"],
    ));
    assert_refused(
        &siamese(root.path(), &a),
        &[
            "has no tensor of the tower",
            "a state_dict of another architecture?",
        ],
    );
    // A frozen prefix that names nothing.
    let mut a = args(&["train"]);
    a.extend(small_with_tower(
        BN_TOWER,
        &["--pairs", "16", "--freeze", "layer1"],
    ));
    assert_refused(
        &siamese(root.path(), &a),
        &["--freeze layer1 names no parameter", "tower.0, tower.1"],
    );
}

/// An LFW-style tree: `<name>/<name>_000i.png`, four people of four images each, each
/// person a colour (as write_image_folder's classes).
fn write_lfw(dir: &Path) {
    let mut rng = Lcg(11);
    for (p, name) in ["Ann_A", "Bob_B", "Cid_C", "Dee_D"].iter().enumerate() {
        let person = dir.join(name);
        std::fs::create_dir_all(&person).unwrap();
        for i in 1..=4 {
            let img = image::RgbImage::from_fn(14, 14, |_, _| {
                let mut px = [rng.next() / 3; 3];
                px[p % 3] = px[p % 3].saturating_add(120 + 30 * (p / 3) as u8);
                image::Rgb(px)
            });
            img.save(person.join(format!("{name}_{i:04}.png"))).unwrap();
        }
    }
}

#[test]
fn eval_and_train_score_an_lfw_pairs_file_by_folds_and_a_csv_at_the_validation_threshold() {
    let root = TempDir::new("pairs");
    write_image_folder(&root.path().join("data"));
    write_lfw(&root.path().join("lfw"));
    let rgb = [
        "--color",
        "rgb",
        "--image-size",
        "12x12",
        "--pairs",
        "32",
        "--out",
        "run",
    ];
    assert_ok(&siamese(root.path(), &train_args(&rgb)));
    // Two folds of 2 Same and 2 Different pairs, spaces and tabs as LFW writes them.
    std::fs::write(
        root.path().join("pairs.txt"),
        "2\t2\nAnn_A\t1\t2\nBob_B 1 3\nAnn_A\t1\tCid_C\t2\nBob_B 4 Dee_D 1\n\
         Cid_C 1 4\nDee_D 2 3\nAnn_A 3 Bob_B 2\nCid_C 3 Dee_D 4\n",
    )
    .unwrap();
    let eval = |extra: &[&str]| {
        siamese(
            root.path(),
            &args(
                &[
                    &["eval", "--checkpoint", "run", "--images", "lfw", "--json"],
                    extra,
                ]
                .concat(),
            ),
        )
    };
    let out = eval(&["--pairs-file", "pairs.txt"]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.contains("pairs: 8 (4 Same, 4 Different)"), "{text}");
    assert!(text.contains("2-fold accuracy "), "{text}");
    let result: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(result["folds"], 2);
    let accuracies = result["fold_accuracies"].as_array().unwrap();
    assert_eq!(accuracies.len(), 2);
    let mean = accuracies.iter().map(|a| a.as_f64().unwrap()).sum::<f64>() / 2.0;
    assert!((result["fold_accuracy_mean"].as_f64().unwrap() - mean).abs() < 1e-12);
    assert!(result["roc_auc"].as_f64().unwrap() >= 0.0);

    // A CSV has no folds: scored at the run's validation threshold.
    std::fs::write(
        root.path().join("pairs.csv"),
        "path_a,path_b,label\n# people\nAnn_A/Ann_A_0001.png,Ann_A/Ann_A_0004.png,same\n\
         Ann_A/Ann_A_0001.png,Bob_B/Bob_B_0001.png,different\n",
    )
    .unwrap();
    let out = eval(&["--pairs-file", "pairs.csv"]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("chosen on the run's validation pairs"),
        "{}",
        stdout(&out)
    );
    // With --folds, the CSV is cut into contiguous folds.
    assert!(
        stdout(&eval(&["--pairs-file", "pairs.csv", "--folds", "2"])).contains("2-fold accuracy")
    );

    // Bad input names the line.
    std::fs::write(
        root.path().join("bad.txt"),
        "1 1\nAnn_A 1 9\nAnn_A 1 Bob_B 1\n",
    )
    .unwrap();
    assert_refused(
        &eval(&["--pairs-file", "bad.txt"]),
        &["bad.txt line 2", "no image lfw/Ann_A/Ann_A_0009.jpg"],
    );
    std::fs::write(
        root.path().join("bad.txt"),
        "1 1\nAnn_A 1 Bob_B 1\nAnn_A 1 2\n",
    )
    .unwrap();
    assert_refused(
        &eval(&["--pairs-file", "bad.txt"]),
        &["bad.txt line 2", "expected a Same pair `name i j`"],
    );
    std::fs::write(
        root.path().join("bad.csv"),
        "Ann_A/Ann_A_0001.png,Bob_B/Bob_B_0001.png,maybe\n",
    )
    .unwrap();
    assert_refused(
        &eval(&["--pairs-file", "bad.csv"]),
        &[
            "bad.csv line 1",
            "the label `maybe` is neither same nor different",
        ],
    );
    assert_refused(
        &eval(&["--pairs-file", "pairs.txt", "--folds", "4"]),
        &["has 2 folds of its own"],
    );

    // train scores the same file after training, beside its own test figures.
    let trained = siamese(
        root.path(),
        &train_args(&[
            "--color",
            "rgb",
            "--image-size",
            "12x12",
            "--pairs",
            "32",
            "--pairs-file",
            "pairs.txt",
            "--images",
            "lfw",
            "--json",
        ]),
    );
    assert_ok(&trained);
    let text = stdout(&trained);
    assert!(
        text.contains("test pair accuracy") && text.contains("2-fold accuracy"),
        "{text}"
    );
    let result: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(result["pairs_file"]["folds"], 2);
}

#[test]
fn a_gpu_data_budget_below_the_dataset_streams_it_and_says_so() {
    let root = TempDir::new("budget");
    write_idx_dataset(&root.path().join("data"), 16);
    let out = siamese(
        root.path(),
        &train_args(&["--gpu-data-budget", "1K", "--pairs", "32"]),
    );
    assert_ok(&out);
    for split in ["validation", "test", "training"] {
        assert!(
            stderr(&out).contains(&format!("the {split} images (")),
            "{}",
            stderr(&out)
        );
    }
    assert!(stderr(&out).contains("stay in host memory, each batch uploaded"));
    assert_refused(
        &siamese(root.path(), &train_args(&["--gpu-data-budget", "lots"])),
        &["gpu_data_budget: `lots` is not a size in bytes"],
    );
}
