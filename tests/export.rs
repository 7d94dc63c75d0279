//! The ONNX export, read back and evaluated: the written file decodes as ONNX's messages,
//! and running its graph by ONNX's operator semantics — each node evaluated with the CPU
//! reference of the matching kernel — gives the embeddings the GPU embedder (what `siamese
//! embed` runs) gives, on towers with every layer kind the exporter writes. ONNX Runtime's
//! own check of the same files is `scripts/check_onnx.py`.

use std::collections::HashMap;

use prost::Message;
use siamese_gpu::Gpu;
use siamese_gpu::cpu::{batchnorm, conv2d, dense, pool};
use siamese_gpu::eval::embed::Embedder;
use siamese_gpu::export::proto::{AttributeProto, ModelProto, TensorProto};
use siamese_gpu::export::{OPSET, head_model, tower_model};
use siamese_gpu::model::{ModelConfig, ModelTensors, ModelValues, SiameseModel};
use siamese_gpu::ops::gather;
use siamese_gpu::runs::saved::SavedRun;
use siamese_gpu::settings::RunSettings;
use siamese_gpu::vocab::{Conv2dGeometry, Distance, LossKind, PixelNorm};

/// A value of the graph: its shape and its numbers.
type Value = (Vec<usize>, Vec<f32>);

fn attr<'a>(attrs: &'a [AttributeProto], name: &str) -> &'a AttributeProto {
    attrs
        .iter()
        .find(|a| a.name == name)
        .unwrap_or_else(|| panic!("no attribute {name}"))
}

fn square(attrs: &[AttributeProto], name: &str) -> usize {
    let v = &attr(attrs, name).ints;
    assert!(
        v.iter().all(|&x| x == v[0]),
        "{name} {v:?}: square expected"
    );
    v[0] as usize
}

fn initializer(t: &TensorProto) -> Value {
    assert_eq!(t.data_type, 1, "float32");
    let values = t
        .raw_data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (t.dims.iter().map(|&d| d as usize).collect(), values)
}

/// `x` combined with `y` broadcast from a scalar, a row per image `[N, 1]`, or equal shape.
fn broadcast(x: &Value, y: &Value, f: impl Fn(f32, f32) -> f32) -> Value {
    let per = x.1.len() / y.1.len();
    let values =
        x.1.iter()
            .enumerate()
            .map(|(i, &a)| f(a, y.1[if y.1.len() == 1 { 0 } else { i / per }]))
            .collect();
    (x.0.clone(), values)
}

/// Runs `model`'s graph on `inputs` by ONNX's semantics for the operators it holds.
fn run_graph(model: &ModelProto, inputs: &[(&str, Value)]) -> Vec<Value> {
    let graph = model.graph.as_ref().unwrap();
    let mut values: HashMap<String, Value> = inputs
        .iter()
        .map(|(n, v)| (n.to_string(), v.clone()))
        .collect();
    for t in &graph.initializer {
        values.insert(t.name.clone(), initializer(t));
    }
    for node in &graph.node {
        let ins: Vec<&Value> = node.input.iter().map(|i| &values[i]).collect();
        let a = &node.attribute;
        let x = ins[0];
        let nchw = || -> [usize; 4] { x.0.clone().try_into().expect("NCHW") };
        let out: Value = match node.op_type.as_str() {
            "Identity" => x.clone(),
            "Sub" => broadcast(x, ins[1], |p, q| p - q),
            "Mul" => broadcast(x, ins[1], |p, q| p * q),
            "Add" => broadcast(x, ins[1], |p, q| p + q),
            "Div" => broadcast(x, ins[1], |p, q| p / q),
            "Max" => broadcast(x, ins[1], f32::max),
            "Abs" => (x.0.clone(), x.1.iter().map(|v| v.abs()).collect()),
            "Relu" => (x.0.clone(), x.1.iter().map(|v| v.max(0.0)).collect()),
            "Sigmoid" => (
                x.0.clone(),
                x.1.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect(),
            ),
            "Tanh" => (x.0.clone(), x.1.iter().map(|v| v.tanh()).collect()),
            "Conv" => {
                let [n, c, h, w] = nchw();
                let (ws, wv) = ins[1];
                let pads = &attr(a, "pads").ints;
                assert!(pads.iter().all(|&p| p == pads[0]), "symmetric pads");
                let g = Conv2dGeometry {
                    n,
                    c,
                    h,
                    w,
                    o: ws[0],
                    kh: ws[2],
                    kw: ws[3],
                    stride: square(a, "strides"),
                    pad: pads[0] as usize,
                };
                assert_eq!(square(a, "kernel_shape"), ws[2]);
                let bias = ins.get(2).map_or(vec![0.0; ws[0]], |b| b.1.clone());
                let y = conv2d::conv2d_forward(&x.1, wv, &bias, &g);
                (vec![n, ws[0], g.out_h(), g.out_w()], y)
            }
            "BatchNormalization" => {
                let d = batchnorm::Dims::of(&x.0).unwrap();
                let eps = attr(a, "epsilon").f;
                let y = batchnorm::batch_norm_eval_forward(
                    &x.1, &ins[3].1, &ins[4].1, &ins[1].1, &ins[2].1, d, eps,
                );
                (x.0.clone(), y)
            }
            "MaxPool" => {
                let [n, c, h, w] = nchw();
                let (k, s, p) = (
                    square(a, "kernel_shape"),
                    square(a, "strides"),
                    square(a, "pads"),
                );
                let y = pool::max_pool2d_forward(&x.1, n, c, h, w, k, s, p).0;
                let side = |d: usize| (d + 2 * p - k) / s + 1;
                (vec![n, c, side(h), side(w)], y)
            }
            "AveragePool" => {
                let [n, c, h, w] = nchw();
                let (k, s) = (square(a, "kernel_shape"), square(a, "strides"));
                let y = pool::avg_pool2d_forward(&x.1, n, c, h, w, k, s);
                (vec![n, c, (h - k) / s + 1, (w - k) / s + 1], y)
            }
            "GlobalAveragePool" => {
                let [n, c, h, w] = nchw();
                (
                    vec![n, c, 1, 1],
                    pool::global_avg_pool2d_forward(&x.1, n, c, h, w),
                )
            }
            "Flatten" => {
                assert_eq!(attr(a, "axis").i, 1);
                (vec![x.0[0], x.1.len() / x.0[0]], x.1.clone())
            }
            "Gemm" => {
                assert_eq!(attr(a, "transB").i, 1);
                let (n, k, m) = (x.0[0], x.0[1], ins[1].0[0]);
                let bias = ins.get(2).map_or(vec![0.0; m], |b| b.1.clone());
                (
                    vec![n, m],
                    dense::dense_forward(&x.1, &ins[1].1, &bias, n, k, m),
                )
            }
            "ReduceL2" => {
                assert_eq!(attr(a, "axes").ints, [1]);
                let n = x.0[0];
                let per = x.1.len() / n;
                let norms =
                    x.1.chunks(per)
                        .map(|r| r.iter().map(|v| v * v).sum::<f32>().sqrt());
                (vec![n, 1], norms.collect())
            }
            other => panic!("an operator the exporter does not write: {other}"),
        };
        values.insert(node.output[0].clone(), out);
    }
    graph
        .output
        .iter()
        .map(|o| values[&o.name].clone())
        .collect()
}

fn saved_run(tower: &str, input: [usize; 3], normalize: bool, loss: LossKind) -> SavedRun {
    let model = SiameseModel::new(ModelConfig {
        hyper: Default::default(),
        classes: 0,
        tower: tower.parse().unwrap(),
        input,
        loss,
        margin: 1.0,
        distance: Distance::Euclidean,
        normalize,
        freeze: Vec::new(),
    })
    .unwrap();
    let mut values = ModelValues::init(&model, 3);
    // Running statistics away from 0 and 1, so that evaluation-mode BatchNorm shows.
    for (i, v) in values.running.iter_mut().enumerate() {
        *v = 0.5 + (i % 7) as f32 / 7.0;
    }
    SavedRun {
        model,
        values,
        norm: PixelNorm {
            shift: 0.2860,
            scale: 1.0 / 0.3530,
        },
        settings: RunSettings::default(),
        operating_points: Vec::new(),
    }
}

/// Random images, as u8 and as the [0, 1] floats the ONNX model takes.
fn images(n: usize, [c, h, w]: [usize; 3]) -> (Vec<u8>, Vec<f32>) {
    let mut state = 12345u64;
    let bytes: Vec<u8> = (0..n * c * h * w)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect();
    let floats = bytes.iter().map(|&b| b as f32 / 255.0).collect();
    (bytes, floats)
}

#[test]
fn exported_towers_compute_the_embeddings_the_gpu_embeds() {
    let gpu = Gpu::new().unwrap();
    let towers = [
        (
            "conv 6 5 | relu | maxpool 2 | conv 8 3 | relu | maxpool 2 | flatten | dense 16",
            [1, 20, 20],
            false,
        ),
        (
            "conv 8 3 pad=1 bias=false | bn | relu | maxpool 3 2 pad=1 | res(conv 8 3 pad=1 \
             bias=false | bn | relu | conv 8 3 pad=1 bias=false | bn) | relu | res(conv 16 3 \
             stride=2 pad=1 bias=false | bn ; conv 16 1 stride=2 bias=false | bn) | relu | gap \
             | dropout 0.25 | dense 12 | bn",
            [3, 15, 15],
            true,
        ),
        (
            "conv 4 3 stride=2 pad=1 | tanh | avgpool 2 1 | flatten | dense 10 | sigmoid | l2norm",
            [1, 12, 12],
            false,
        ),
    ];
    for (tower, input, normalize) in towers {
        let run = saved_run(tower, input, normalize, LossKind::Contrastive);
        let model = tower_model(&run, &[("k".into(), "v".into())]).unwrap();
        // Through the bytes a file holds.
        let model = ModelProto::decode(&model.encode_to_vec()[..]).unwrap();
        assert_eq!(model.opset_import[0].version, OPSET);
        assert_eq!(model.metadata_props[0].key, "k");
        let graph = model.graph.as_ref().unwrap();
        assert_eq!(
            (graph.input[0].name.as_str(), graph.output[0].name.as_str()),
            ("images", "embeddings")
        );
        let n = 5;
        let (bytes, floats) = images(n, input);
        let [c, h, w] = input;
        let onnx = run_graph(&model, &[("images", (vec![n, c, h, w], floats))]).remove(0);
        let values = ModelTensors::upload(&gpu, &run.model, &run.values).unwrap();
        let packed = gather::upload_images(&gpu, &bytes, n, c * h * w).unwrap();
        let gpu_e = Embedder::new(&gpu, &run.model, &values, run.norm, n)
            .unwrap()
            .embed(&packed, n)
            .unwrap();
        let dim = run.model.embedding_dim();
        assert_eq!(onnx.0, [n, dim], "{tower}");
        let largest = gpu_e.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = onnx
            .1
            .iter()
            .zip(&gpu_e)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        // The GPU's texel kernels sum in another order than the plain loops, and the pixel
        // normalisation is applied as (p/255 − shift)·scale on both sides in f32: 1e-4 of the
        // largest value, as scripts/check_checkpoint.py allows.
        assert!(
            diff <= 1e-4 * largest,
            "{tower}: max |onnx − gpu| {diff} of {largest}"
        );
    }
}

#[test]
fn a_bce_runs_head_is_a_second_model_of_the_probability() {
    let run = saved_run(
        "conv 4 3 | relu | flatten | dense 6",
        [1, 8, 8],
        false,
        LossKind::Bce,
    );
    assert!(
        head_model(
            &saved_run(
                "conv 4 3 | relu | flatten | dense 6",
                [1, 8, 8],
                false,
                LossKind::Contrastive
            ),
            &[]
        )
        .is_none()
    );
    let head = head_model(&run, &[]).unwrap();
    let head = ModelProto::decode(&head.encode_to_vec()[..]).unwrap();
    let a: Vec<f32> = (0..12).map(|i| i as f32 * 0.1).collect();
    let b: Vec<f32> = (0..12).map(|i| 1.0 - i as f32 * 0.05).collect();
    let p = run_graph(
        &head,
        &[
            ("embedding_a", (vec![2, 6], a.clone())),
            ("embedding_b", (vec![2, 6], b.clone())),
        ],
    )
    .remove(0);
    let (w, bias) = run.model.head_weights(&run.values.params).unwrap();
    for r in 0..2 {
        let z: f32 = (0..6)
            .map(|j| w[j] * (a[r * 6 + j] - b[r * 6 + j]).abs())
            .sum::<f32>()
            + bias;
        let expected = 1.0 / (1.0 + (-z).exp());
        assert!((p.1[r] - expected).abs() < 1e-6, "{} vs {expected}", p.1[r]);
    }
}
