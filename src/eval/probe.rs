//! Probing the tower's activations: which ReLU units never fire on a batch of images.
//!
//! A forward-only tape of the tower over a fixed probe batch; after one submission every
//! ReLU output is read back and each unit (a conv channel, over all positions and images; a
//! dense feature, over all images) is dead if it is never above 0. The tower records
//! ReLU→max-pool as one op, relu(max-pool) (`max_pool2d_relu`); a channel is positive
//! somewhere after pooling exactly when it is before, so the count is the same.

use crate::autograd::Tape;
use crate::error::Result;
use crate::eval::doctor::ReluActivity;
use crate::gpu::{DType, Gpu, Tensor};
use crate::model::SiameseModel;
use crate::ops::activation::Activation;
use crate::ops::gather;
use crate::vocab::PixelNorm;

/// The ReLU activity of `model` (parameters `params`) on the images `indices` of the packed
/// set `images`.
pub fn relu_activity(
    gpu: &Gpu,
    model: &SiameseModel,
    params: &Tensor,
    norm: PixelNorm,
    images: &Tensor,
    indices: &[u32],
) -> Result<Vec<ReluActivity>> {
    let [c, h, w] = model.config.input;
    let n = indices.len();
    let idx = gpu.upload_u32(indices, &[n])?;
    let input = gpu.zeros(&[n, c, h, w], DType::F32)?;
    let gather = gather::gather_images(gpu, images, &idx, &input, norm)?;
    let mut tape = Tape::new(gpu);
    let x = tape.input(input);
    model
        .tower
        .record(&mut tape, x, &model.layout, params, None)?;
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
            _ if *op == relu || *op == "max_pool2d_relu" => {
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
            _ => {}
        }
    }
    Ok(out)
}
