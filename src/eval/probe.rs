//! Probing the tower's activations on a batch of images, in evaluation mode: which ReLU
//! units never fire, and how far each BatchNorm layer's running statistics are from the
//! statistics of what it is given.
//!
//! A forward-only tape of the tower over a fixed probe batch; after one submission every
//! ReLU output is read back and each unit (a conv channel, over all positions and images; a
//! dense feature, over all images) is dead if it is never above 0. The tower records
//! ReLU→max-pool as one op, relu(max-pool) (`max_pool2d_relu`); a channel is positive
//! somewhere after pooling exactly when it is before, so the count is the same; a residual
//! block's closing ReLU is recorded with its addition (`add_relu`). The input of
//! every BatchNorm is the output of the conv or dense layer just before it (the spec puts
//! `bn` nowhere else), read back and compared channel by channel with the running mean and
//! variance.

use crate::autograd::Tape;
use crate::error::Result;
use crate::eval::doctor::ReluActivity;
use crate::gpu::{DType, Gpu, Tensor};
use crate::model::{ModelTensors, SiameseModel};
use crate::ops::activation::Activation;
use crate::ops::gather::{self, PackedImages, Stager};
use crate::vocab::PixelNorm;

/// What a probe found: every ReLU layer's activity, and for every BatchNorm layer (in
/// order) the median over channels of |batch mean − running mean| / running std and of the
/// variance ratio max(v, 1/v), v = batch variance / running variance.
pub struct Probe {
    pub relu: Vec<ReluActivity>,
    pub batch_norm: Vec<(f64, f64)>,
}

/// Probes `model` (with its `values`, in evaluation mode) on the images `indices` of the
/// packed set `images`.
pub fn probe(
    gpu: &Gpu,
    model: &SiameseModel,
    values: &ModelTensors,
    norm: PixelNorm,
    images: &PackedImages,
    indices: &[u32],
) -> Result<Probe> {
    let [c, h, w] = model.config.input;
    let n = indices.len();
    // A set in host memory is staged and gathered at slots 0..n.
    let mut stager = images.stager(gpu, n)?;
    let idx = match stager.as_mut() {
        Some(s) => {
            s.stage(gpu, indices)?;
            gpu.upload_u32(&s.slots(), &[n])?
        }
        None => gpu.upload_u32(indices, &[n])?,
    };
    let source = stager.as_ref().map_or(images, Stager::images);
    let input = gpu.zeros(&[n, c, h, w], DType::F32)?;
    let gather = gather::gather_images(gpu, source, &idx, &input, norm)?;
    let mut tape = Tape::new(gpu);
    let x = tape.input(input);
    model
        .tower
        .record(&mut tape, x, &model.tower_weights(&values.eval()))?;
    let mut rec = gpu.recorder();
    rec.record(&gather);
    tape.forward_kernels().for_each(|k| rec.record(k));
    rec.submit();

    let relu = Activation::Relu.forward_entry();
    let ops: Vec<(&str, &Tensor)> = tape.outputs().collect();
    let last_weighted = ops
        .iter()
        .rposition(|(op, _)| matches!(*op, "conv2d" | "dense"));
    let (mut convs, mut denses) = (0, 0);
    let mut after = String::from("the input");
    let mut out = Vec::new();
    let mut batch_norm = Vec::new();
    let state = match &values.state {
        Some(t) => gpu.read_f32(t)?,
        None => Vec::new(),
    };
    for (k, (op, t)) in ops.iter().enumerate() {
        match *op {
            "conv2d" => {
                convs += 1;
                after = format!("conv {convs}");
            }
            "dense" => {
                denses += 1;
                after = format!("dense {denses}");
            }
            _ if *op == relu || *op == "max_pool2d_relu" || *op == "add_relu" => {
                let values = gpu.read_f32(t)?;
                let shape = t.shape();
                // [N, C, H, W]: a channel over all positions; [N, F]: a feature.
                let units = shape[1];
                let per_unit: usize = shape[2..].iter().product();
                let mut alive = vec![false; units];
                for (i, v) in values.iter().enumerate() {
                    if *v > 0.0 {
                        alive[(i / per_unit) % units] = true;
                    }
                }
                out.push(ReluActivity {
                    layer: format!("the ReLU after {after}"),
                    units,
                    dead: alive.iter().filter(|a| !**a).count(),
                    is_output: last_weighted.is_none_or(|l| k > l),
                });
            }
            "batch_norm" => {
                let (_, input) = ops[k - 1];
                let i = batch_norm.len();
                batch_norm.push(drift(gpu, model, &state, i, input)?);
            }
            _ => {}
        }
    }
    Ok(Probe {
        relu: out,
        batch_norm,
    })
}

/// The drift of BatchNorm layer `i` (in the order of the tower's `state`, read back) given
/// `input`.
fn drift(
    gpu: &Gpu,
    model: &SiameseModel,
    state: &[f32],
    i: usize,
    input: &Tensor,
) -> Result<(f64, f64)> {
    let layout = &model.tower.state;
    let (mean, var) = (&layout.params[2 * i], &layout.params[2 * i + 1]);
    let x = gpu.read_f32(input)?;
    let shape = input.shape();
    let (n, c, per) = (shape[0], shape[1], shape[2..].iter().product::<usize>());
    let mut shifts = Vec::with_capacity(c);
    let mut ratios = Vec::with_capacity(c);
    for ch in 0..c {
        let values = (0..n).flat_map(|img| {
            let start = (img * c + ch) * per;
            x[start..start + per].iter().map(|&v| v as f64)
        });
        let count = (n * per) as f64;
        let m = values.clone().sum::<f64>() / count;
        let v = values.map(|x| (x - m) * (x - m)).sum::<f64>() / count;
        let (rm, rv) = (
            state[mean.offset + ch] as f64,
            state[var.offset + ch] as f64,
        );
        shifts.push((m - rm).abs() / rv.max(1e-12).sqrt());
        let ratio = v.max(1e-12) / rv.max(1e-12);
        ratios.push(ratio.max(1.0 / ratio));
    }
    Ok((median(shifts), median(ratios)))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
