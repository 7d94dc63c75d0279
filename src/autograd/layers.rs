//! The tower's ops on the tape: convolution, pooling, activations, batch normalisation, dense
//! layers, residual additions, dropout, and the views and casts between them.

use super::{Tape, ValueId};
use crate::error::{Error, Result};
use crate::gpu::{DType, Tensor};
use crate::ops::activation::{self, Activation};
use crate::ops::batchnorm::{self, BatchNormGrads, BatchNormTensors, RunningStats};
use crate::ops::conv2d::{self, Conv2dGrads, Conv2dTensors};
use crate::ops::dense::{self, DenseGrads, DenseTensors};
use crate::ops::{amp, dropout, normalize, pool, residual};
use crate::vocab::{Conv2dGeometry, Mode};

impl Tape<'_> {
    /// `conv2d(x, w) + b`, NCHW (see `ops::conv2d`).
    pub fn conv2d(
        &mut self,
        x: ValueId,
        w: ValueId,
        b: ValueId,
        stride: usize,
        pad: usize,
    ) -> Result<ValueId> {
        let g = Conv2dGeometry::of("conv2d", self.tensor(x), self.tensor(w), stride, pad)?;
        let y = self.output(&g.output_shape(), &[x, w, b])?;
        let grads = match self.grad(y).cloned() {
            Some(dy) => Some((
                dy,
                self.grad_slot(x)?,
                self.grad_slot(w)?,
                self.grad_slot(b)?,
            )),
            None => None,
        };
        let [x, w, b, y_out] = [x, w, b, y].map(|v| self.tensor(v));
        let tensors = Conv2dTensors {
            x,
            w,
            b,
            y: y_out,
            stride,
            pad,
        };
        let grads = grads.as_ref().map(|(dy, dx, dw, db)| Conv2dGrads {
            dy,
            dx: dx.as_ref(),
            dw: dw.as_ref(),
            db: db.as_ref(),
        });
        let kernels = self.gpu.policy().conv2d(&g);
        let plan = conv2d::plan(self.gpu, &tensors, grads.as_ref(), kernels)?;
        self.values[y].dy_texels = plan.dy_texels;
        self.record("conv2d", Some(y), vec![plan.forward], plan.backward);
        Ok(y)
    }

    /// Max-pooling with a square `kernel`, `stride` and PyTorch's padding `pad` (at most
    /// kernel/2, of −∞: torchvision's ResNet stem is `max_pool2d(x, 3, 2, 1)`).
    pub fn max_pool2d(
        &mut self,
        x: ValueId,
        kernel: usize,
        stride: usize,
        pad: usize,
    ) -> Result<ValueId> {
        self.max_pool2d_maybe_relu(x, kernel, stride, pad, false)
    }

    /// `relu(max_pool2d(x))`, equal to `max_pool2d(relu(x))`, in one forward pass; the
    /// backward is the pooling's alone (windows with a max not above 0 pass no gradient).
    pub fn max_pool2d_relu(
        &mut self,
        x: ValueId,
        kernel: usize,
        stride: usize,
        pad: usize,
    ) -> Result<ValueId> {
        self.max_pool2d_maybe_relu(x, kernel, stride, pad, true)
    }

    fn max_pool2d_maybe_relu(
        &mut self,
        x: ValueId,
        kernel: usize,
        stride: usize,
        pad: usize,
        relu: bool,
    ) -> Result<ValueId> {
        let op = if relu {
            "max_pool2d_relu"
        } else {
            "max_pool2d"
        };
        let shape = pooled_shape(op, self.shape(x), kernel, stride, pad)?;
        let y = self.output(&shape, &[x])?;
        let argmax = self.gpu.zeros(&shape, DType::U32)?;
        let (tx, ty) = (self.tensor(x).clone(), self.tensor(y).clone());
        let launch = if relu {
            pool::max_relu_forward
        } else {
            pool::max_forward
        };
        let forward = vec![launch(self.gpu, &tx, kernel, stride, pad, &ty, &argmax)?];
        let mut backward = Vec::new();
        let mut writes_texels_of = None;
        if let (Some(dy), Some(dx)) = (self.grad(y).cloned(), self.grad_slot(x)?) {
            backward.push(pool::max_backward(
                self.gpu, &dy, &argmax, kernel, stride, pad, &dx,
            )?);
            // Only the first consumer writes the value's own gradient, so only it may take
            // the texels on offer.
            let gpu = self.gpu;
            let &[n, c, h, w] = self.shape(x) else {
                unreachable!("pooled_shape checked the rank")
            };
            let value = &mut self.values[x];
            if value.consumers == 1
                && let Some(dy_texels) = &mut value.dy_texels
                && dy_texels.offer_max_pool(gpu, &dy, &argmax, kernel, stride, pad, [n, c, h, w])?
            {
                writes_texels_of = Some(x);
            }
        }
        self.record(op, Some(y), forward, backward);
        self.entries
            .last_mut()
            .expect("just recorded")
            .writes_texels_of = writes_texels_of;
        Ok(y)
    }

    /// Average-pooling with a square `kernel` and `stride`, no padding.
    pub fn avg_pool2d(&mut self, x: ValueId, kernel: usize, stride: usize) -> Result<ValueId> {
        let shape = pooled_shape("avg_pool2d", self.shape(x), kernel, stride, 0)?;
        let y = self.output(&shape, &[x])?;
        let (tx, ty) = (self.tensor(x).clone(), self.tensor(y).clone());
        let forward = vec![pool::avg_forward(self.gpu, &tx, kernel, stride, &ty)?];
        let mut backward = Vec::new();
        if let (Some(dy), Some(dx)) = (self.grad(y).cloned(), self.grad_slot(x)?) {
            backward.push(pool::avg_backward(self.gpu, &dy, kernel, stride, &dx)?);
        }
        self.record("avg_pool2d", Some(y), forward, backward);
        Ok(y)
    }

    /// Global average pooling: `x [N, C, H, W]` → `[N, C]`, the mean of each plane
    /// (PyTorch's `AdaptiveAvgPool2d(1)` then `flatten(1)`, the head of a ResNet tower).
    pub fn global_avg_pool(&mut self, x: ValueId) -> Result<ValueId> {
        let &[n, c, _, _] = self.shape(x) else {
            return Err(Error::Shape {
                op: "global_avg_pool",
                detail: format!("input must be [N, C, H, W], got {:?}", self.shape(x)),
            });
        };
        let y = self.output(&[n, c], &[x])?;
        let (tx, ty) = (self.tensor(x).clone(), self.tensor(y).clone());
        let forward = vec![pool::global_avg_forward(self.gpu, &tx, &ty)?];
        let mut backward = Vec::new();
        if let (Some(dy), Some(dx)) = (self.grad(y).cloned(), self.grad_slot(x)?) {
            backward.push(pool::global_avg_backward(self.gpu, &dy, &dx)?);
        }
        self.record("global_avg_pool", Some(y), forward, backward);
        Ok(y)
    }

    /// `a + b` (same shape and type): the addition that closes a residual block. Both inputs
    /// receive the output's gradient. The block's input is typically read twice, by the
    /// branch's first convolution and here; like any value with several consumers, its
    /// gradients are summed in the backward walk.
    pub fn add(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.add_maybe_relu(a, b, false)
    }

    /// `relu(a + b)` in one pass, the end of a ResNet basic block; both inputs receive
    /// `dy·[y > 0]`.
    pub fn add_relu(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.add_maybe_relu(a, b, true)
    }

    fn add_maybe_relu(&mut self, a: ValueId, b: ValueId, relu: bool) -> Result<ValueId> {
        let op = if relu { "add_relu" } else { "add" };
        let (ta, tb) = (self.tensor(a).clone(), self.tensor(b).clone());
        if ta.shape() != tb.shape() || ta.dtype() != tb.dtype() {
            return Err(Error::Shape {
                op,
                detail: format!(
                    "the inputs must share shape and type, got {:?} {:?} and {:?} {:?}",
                    ta.dtype(),
                    ta.shape(),
                    tb.dtype(),
                    tb.shape()
                ),
            });
        }
        let y = self.output(ta.shape(), &[a, b])?;
        let ty = self.tensor(y).clone();
        let forward = if relu {
            residual::add_relu(self.gpu, &ta, &tb, &ty)?
        } else {
            residual::add(self.gpu, &ta, &tb, &ty)?
        };
        let mut backward = Vec::new();
        if let Some(dy) = self.grad(y).cloned() {
            // y has a gradient, so at least one input needs one.
            let (da, db) = (self.grad_slot(a)?, self.grad_slot(b)?);
            backward.push(if relu {
                residual::add_relu_backward(self.gpu, &ty, &dy, da.as_ref(), db.as_ref())?
            } else {
                residual::add_backward(self.gpu, &dy, da.as_ref(), db.as_ref())?
            });
        }
        self.record(op, Some(y), vec![forward], backward);
        Ok(y)
    }

    /// Dropout in training (PyTorch's `nn.Dropout(p)` under `model.train()`): each element
    /// zeroed with probability `p` ∈ [0, 1), the survivors scaled by 1/(1 − p). The mask is
    /// drawn on the GPU from `rng` (`[2]` u32 = `[seed, step]`, which the trainer writes
    /// before each step) and `stream` (one per dropout layer, so that layers draw
    /// independent masks); the backward recomputes it (see `ops::dropout`). Record it only
    /// in training: in evaluation dropout is the identity and the tower records nothing.
    /// With p = 0 nothing is recorded either and `x` itself is returned.
    pub fn dropout(&mut self, x: ValueId, p: f32, rng: &Tensor, stream: u32) -> Result<ValueId> {
        dropout::check_p("dropout", p)?;
        if p == 0.0 {
            return Ok(x);
        }
        let shape = self.shape(x).to_vec();
        let y = self.output(&shape, &[x])?;
        let (tx, ty) = (self.tensor(x).clone(), self.tensor(y).clone());
        let forward = vec![dropout::forward(self.gpu, &tx, p, rng, stream, &ty)?];
        let mut backward = Vec::new();
        if let (Some(dy), Some(dx)) = (self.grad(y).cloned(), self.grad_slot(x)?) {
            backward.push(dropout::backward(self.gpu, &dy, p, rng, stream, &dx)?);
        }
        self.record("dropout", Some(y), forward, backward);
        Ok(y)
    }

    /// An elementwise activation.
    pub fn activation(&mut self, x: ValueId, act: Activation) -> Result<ValueId> {
        let shape = self.shape(x).to_vec();
        let y = self.output(&shape, &[x])?;
        let (tx, ty) = (self.tensor(x).clone(), self.tensor(y).clone());
        let forward = vec![activation::forward(self.gpu, act, &tx, &ty)?];
        let mut backward = Vec::new();
        if let (Some(dy), Some(dx)) = (self.grad(y).cloned(), self.grad_slot(x)?) {
            let saved = if act.backward_takes_output() {
                &ty
            } else {
                &tx
            };
            backward.push(activation::backward(self.gpu, act, saved, &dy, &dx)?);
        }
        self.record(act.forward_entry(), Some(y), forward, backward);
        Ok(y)
    }

    /// Batch normalisation of `x` ([N, C, H, W] or [N, C]) with affine `gamma`, `beta` [C]
    /// and the layer's `running` statistics (f32 [C], the model's), PyTorch's
    /// `nn.BatchNorm2d` / `nn.BatchNorm1d` (see `ops::batchnorm`). In [`Mode::Train`] the
    /// forward normalises with the batch's statistics and moves `running` by `momentum`
    /// each time it runs; the backward gives x, γ and β their gradients (each where it needs
    /// one). In [`Mode::Eval`] the forward normalises with `running`, leaving it as it is,
    /// and the backward gives x alone its gradient (a frozen layer): γ and β that need a
    /// gradient are refused there. The output has x's type.
    #[allow(clippy::too_many_arguments)] // PyTorch's arguments, each named
    pub fn batch_norm(
        &mut self,
        x: ValueId,
        gamma: ValueId,
        beta: ValueId,
        running: RunningStats<'_>,
        mode: Mode,
        momentum: f32,
        eps: f32,
    ) -> Result<ValueId> {
        if mode == Mode::Eval && (self.needs_grad(gamma) || self.needs_grad(beta)) {
            return Err(Error::Shape {
                op: "batch_norm",
                detail: "in eval mode γ and β get no gradient (an eval-mode BatchNorm is for \
                         evaluation and frozen layers): record them without one, or train the \
                         layer in train mode"
                    .into(),
            });
        }
        let shape = self.shape(x).to_vec();
        let y = self.output(&shape, &[x, gamma, beta])?;
        let dy = self.grad(y).cloned();
        let [tx, tg, tb, ty] = [x, gamma, beta, y].map(|v| self.tensor(v).clone());
        let tensors = BatchNormTensors {
            x: &tx,
            gamma: &tg,
            beta: &tb,
            y: &ty,
        };
        let (forward, backward) = match mode {
            Mode::Train => {
                let saved = self.zeros(&batchnorm::saved_shape(&tx)?)?;
                let forward =
                    batchnorm::train_forward(self.gpu, &tensors, running, momentum, eps, &saved)?;
                let mut backward = Vec::new();
                if let Some(dy) = dy {
                    let (dx, dgamma, dbeta) = (
                        self.grad_slot(x)?,
                        self.grad_slot(gamma)?,
                        self.grad_slot(beta)?,
                    );
                    let grads = BatchNormGrads {
                        dy: &dy,
                        dx: dx.as_ref(),
                        dgamma: dgamma.as_ref(),
                        dbeta: dbeta.as_ref(),
                    };
                    backward.push(batchnorm::train_backward(
                        self.gpu, &tx, &tg, &saved, &grads,
                    )?);
                }
                (forward, backward)
            }
            Mode::Eval => {
                let forward = batchnorm::eval_forward(self.gpu, &tensors, running, eps)?;
                let mut backward = Vec::new();
                if let (Some(dy), Some(dx)) = (dy, self.grad_slot(x)?) {
                    backward.push(batchnorm::eval_backward(
                        self.gpu, &dy, &tg, running, eps, &dx,
                    )?);
                }
                (forward, backward)
            }
        };
        self.record("batch_norm", Some(y), vec![forward], backward);
        Ok(y)
    }

    /// `x [N, K] · wᵀ + b`, with `w [M, K]` (PyTorch's `nn.Linear`).
    pub fn dense(&mut self, x: ValueId, w: ValueId, b: ValueId) -> Result<ValueId> {
        let (n, m) = (self.shape(x)[0], self.shape(w)[0]);
        let y = self.output(&[n, m], &[x, w, b])?;
        let grads = match self.grad(y).cloned() {
            Some(dy) => Some((
                dy,
                self.grad_slot(x)?,
                self.grad_slot(w)?,
                self.grad_slot(b)?,
            )),
            None => None,
        };
        let [x, w, b, y_out] = [x, w, b, y].map(|v| self.tensor(v));
        let tensors = DenseTensors { x, w, b, y: y_out };
        let grads = grads.as_ref().map(|(dy, dx, dw, db)| DenseGrads {
            dy,
            dx: dx.as_ref(),
            dw: dw.as_ref(),
            db: db.as_ref(),
        });
        let plan = dense::plan(
            self.gpu,
            &tensors,
            grads.as_ref(),
            self.gpu.policy().dense(),
        )?;
        self.record("dense", Some(y), vec![plan.forward], plan.backward);
        Ok(y)
    }

    /// The same elements under another shape (no copy; the gradient aliases too).
    pub fn reshape(&mut self, x: ValueId, shape: &[usize]) -> Result<ValueId> {
        let reshape = |t: &Tensor| {
            t.reshaped(shape).ok_or_else(|| Error::Shape {
                op: "reshape",
                detail: format!("{:?} cannot be viewed as {shape:?}", t.shape()),
            })
        };
        let tensor = reshape(self.tensor(x))?;
        let grad = self.grad_slot(x)?.map(|g| reshape(&g)).transpose()?;
        let y = self.push(tensor, grad);
        self.record("reshape", Some(y), Vec::new(), Vec::new());
        Ok(y)
    }

    /// Splits the rows of `x [R, …]` into `parts` equal blocks of rows, as views. Both
    /// Siamese branches run as one batch of 2B through the tower; this separates them.
    pub fn split_rows(&mut self, x: ValueId, parts: usize) -> Result<Vec<ValueId>> {
        let shape = self.shape(x).to_vec();
        if parts == 0 || !shape[0].is_multiple_of(parts) {
            return Err(Error::Shape {
                op: "split_rows",
                detail: format!("{shape:?} has no {parts} equal blocks of rows"),
            });
        }
        let mut part_shape = shape.clone();
        part_shape[0] /= parts;
        let part_len: usize = part_shape.iter().product();
        let align = self.gpu.limits().min_storage_buffer_offset_alignment as usize;
        let dtype = self.tensor(x).dtype();
        if parts > 1 && !(part_len * dtype.size_bytes() as usize).is_multiple_of(align) {
            return Err(Error::Shape {
                op: "split_rows",
                detail: format!(
                    "blocks of {part_len} {dtype:?} of {shape:?} do not start on this device's {align}-byte storage alignment"
                ),
            });
        }
        let grad = self.grad_slot(x)?;
        let mut ids = Vec::with_capacity(parts);
        for k in 0..parts {
            let view = |t: &Tensor| {
                t.view(k * part_len, &part_shape)
                    .expect("split inside the tensor")
            };
            let tensor = view(self.tensor(x));
            let g = grad.as_ref().map(view);
            let id = self.push(tensor, g);
            self.record("split_rows", Some(id), Vec::new(), Vec::new());
            ids.push(id);
        }
        Ok(ids)
    }

    /// `x` as f32: itself if it is f32, else an f16 → f32 cast whose backward casts the
    /// gradient back to f16 (where mixed precision hands the embedding to the f32 head).
    pub fn to_f32(&mut self, x: ValueId) -> Result<ValueId> {
        if self.tensor(x).dtype() == DType::F32 {
            return Ok(x);
        }
        let shape = self.shape(x).to_vec();
        let y = self.output_as(&shape, &[x], DType::F32)?;
        let forward = vec![amp::cast(self.gpu, self.tensor(x), self.tensor(y))?];
        let mut backward = Vec::new();
        if let (Some(dy), Some(dx)) = (self.grad(y).cloned(), self.grad_slot(x)?) {
            backward.push(amp::cast(self.gpu, &dy, &dx)?);
        }
        self.record("to_f32", Some(y), forward, backward);
        Ok(y)
    }

    /// Row-wise `x / max(‖x‖, 1e-12)` of `x [B, D]`.
    pub fn l2_normalize(&mut self, x: ValueId) -> Result<ValueId> {
        let shape = self.shape(x).to_vec();
        let y = self.output(&shape, &[x])?;
        let norms = self.zeros(&shape[..1])?;
        let (tx, ty) = (self.tensor(x).clone(), self.tensor(y).clone());
        let forward = vec![normalize::forward(self.gpu, &tx, &ty, &norms)?];
        let mut backward = Vec::new();
        if let (Some(dy), Some(dx)) = (self.grad(y).cloned(), self.grad_slot(x)?) {
            backward.push(normalize::backward(self.gpu, &ty, &norms, &dy, &dx)?);
        }
        self.record("l2_normalize", Some(y), forward, backward);
        Ok(y)
    }
}

fn pooled_shape(
    op: &'static str,
    shape: &[usize],
    kernel: usize,
    stride: usize,
    pad: usize,
) -> Result<Vec<usize>> {
    let &[n, c, h, w] = shape else {
        return Err(Error::Shape {
            op,
            detail: format!("input must be [N, C, H, W], got {shape:?}"),
        });
    };
    let (oh, ow) = pool::output_size(op, h, w, kernel, stride, pad)?;
    Ok(vec![n, c, oh, ow])
}
