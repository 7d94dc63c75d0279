//! The autograd tape.
//!
//! Our graphs are static: one tower, one batch size, one loss. So the tape records each op
//! once, and at that moment builds both its forward kernels and its backward kernels (every
//! buffer, bind group and pipeline of a training step exists before the first step; a step
//! only records them). A value that needs a gradient gets its gradient buffer when it is
//! created. [`Tape::backward`] then lists the backward kernels in reverse order of the
//! forward: that reverse walk is the chain rule, and the only place it lives. Each op's
//! local gradient is its launcher in `ops`.
//!
//! Backward kernels overwrite the gradient they produce, so nothing needs zeroing between
//! steps. A value feeding several ops (the anchor of a triplet feeds two distances) lets
//! its first consumer write its gradient and gives every later consumer a buffer of its
//! own; the walk adds those in (`accumulate_grad`) before the value's producer reads the
//! sum. Views (reshape, split into rows) alias their input and its gradient.
//!
//! A convolution on the texel kernels reads its output's gradient only as texels: it packs
//! that gradient once for both products, and a max-pooling that is the output's only
//! consumer writes the texels directly instead (no store of the gradient, no packing pass).
//! Whether the pooling's direct write applies is settled in [`Tape::backward`], once every
//! consumer is known.
//!
//! Mixed precision: a value's type follows its op's first input, so a tower fed f16 images
//! and f16 weights computes in f16 (values and their gradients) until [`Tape::to_f32`];
//! parameter gradients are always the f32 buffers the caller passes.

use crate::error::{Error, Result};
use crate::gpu::{ConvForward, DType, Gpu, Kernel, Operands, Tensor, Texels};
use crate::ops::activation::{self, Activation};
use crate::ops::distance;
use crate::ops::mining;
use crate::ops::{amp, conv2d, dense, loss, normalize, pack, pool};
use crate::vocab::{Distance, Miner, PairwiseMetric};

/// A value on the tape.
pub type ValueId = usize;

struct Value {
    tensor: Tensor,
    /// Where this value's gradient lives, if it needs one.
    grad: Option<Tensor>,
    /// Ops that read this value and propagate a gradient into it.
    consumers: usize,
    /// Gradient buffers of the second and later consumers, summed into `grad`.
    extra_grads: Vec<Tensor>,
    /// Set when the producer's backward reads the gradient only as texels.
    grad_texels: Option<GradTexels>,
}

/// A gradient read only as texels ([`pack::nhwc4`]'s layout with `pad`, no unfolding).
struct GradTexels {
    texels: Texels,
    pad: usize,
    /// Packs `grad` into `texels`; left out when the consumer writes them.
    pack: Kernel,
    /// The first consumer can write the texels itself (its entry's `texel_backward`).
    consumer_writes: bool,
}

struct Entry {
    op: &'static str,
    /// The value this op produced (None for ops that only write gradients).
    output: Option<ValueId>,
    forward: Vec<Kernel>,
    backward: Vec<Kernel>,
    /// A backward that writes the gradient of the value named as texels instead of into
    /// its buffer; taken in place of `backward` when that value has no other consumer.
    texel_backward: Option<(ValueId, Vec<Kernel>)>,
}

/// Records ops on GPU tensors; see the module documentation.
pub struct Tape<'g> {
    gpu: &'g Gpu,
    values: Vec<Value>,
    entries: Vec<Entry>,
}

impl<'g> Tape<'g> {
    pub fn new(gpu: &'g Gpu) -> Self {
        Tape {
            gpu,
            values: Vec::new(),
            entries: Vec::new(),
        }
    }

    pub fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    /// A value that needs no gradient (data, labels).
    pub fn input(&mut self, tensor: Tensor) -> ValueId {
        self.push(tensor, None)
    }

    /// A parameter. With `grad` its gradient is written there (a view of the flat gradient
    /// buffer); without, it is a constant (evaluation, frozen layers).
    pub fn param(&mut self, tensor: Tensor, grad: Option<Tensor>) -> Result<ValueId> {
        if let Some(g) = &grad
            && g.shape() != tensor.shape()
        {
            return Err(Error::Shape {
                op: "param",
                detail: format!(
                    "gradient shape {:?} differs from the parameter's {:?}",
                    g.shape(),
                    tensor.shape()
                ),
            });
        }
        Ok(self.push(tensor, grad))
    }

    pub fn tensor(&self, id: ValueId) -> &Tensor {
        &self.values[id].tensor
    }

    pub fn grad(&self, id: ValueId) -> Option<&Tensor> {
        self.values[id].grad.as_ref()
    }

    pub fn shape(&self, id: ValueId) -> &[usize] {
        self.values[id].tensor.shape()
    }

    /// The names of the recorded ops, in forward order.
    pub fn ops(&self) -> Vec<&'static str> {
        self.entries.iter().map(|e| e.op).collect()
    }

    /// Each recorded op's name and the value it produced, in forward order (ops that only
    /// write gradients are left out).
    pub fn outputs(&self) -> impl Iterator<Item = (&'static str, &Tensor)> {
        self.entries
            .iter()
            .filter_map(|e| e.output.map(|id| (e.op, &self.values[id].tensor)))
    }

    /// Every forward kernel, in order.
    pub fn forward_kernels(&self) -> impl Iterator<Item = &Kernel> {
        self.entries.iter().flat_map(|e| e.forward.iter())
    }

    fn push(&mut self, tensor: Tensor, grad: Option<Tensor>) -> ValueId {
        self.values.push(Value {
            tensor,
            grad,
            consumers: 0,
            extra_grads: Vec::new(),
            grad_texels: None,
        });
        self.values.len() - 1
    }

    fn needs_grad(&self, id: ValueId) -> bool {
        self.values[id].grad.is_some()
    }

    fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        self.gpu.zeros(shape, DType::F32)
    }

    /// A new op output of `shape`, of the first input's type, with a gradient buffer when any
    /// of `inputs` needs one.
    fn output(&mut self, shape: &[usize], inputs: &[ValueId]) -> Result<ValueId> {
        let dtype = self.tensor(inputs[0]).dtype();
        self.output_as(shape, inputs, dtype)
    }

    fn output_as(&mut self, shape: &[usize], inputs: &[ValueId], dtype: DType) -> Result<ValueId> {
        let tensor = self.gpu.zeros(shape, dtype)?;
        let grad = if inputs.iter().any(|&i| self.needs_grad(i)) {
            Some(self.gpu.zeros(shape, dtype)?)
        } else {
            None
        };
        Ok(self.push(tensor, grad))
    }

    /// The buffer a consumer's backward writes `id`'s gradient into: the value's own
    /// gradient for its first consumer, a fresh buffer (summed in later) for the others.
    fn grad_slot(&mut self, id: ValueId) -> Result<Option<Tensor>> {
        let Some(grad) = self.values[id].grad.clone() else {
            return Ok(None);
        };
        let value = &mut self.values[id];
        value.consumers += 1;
        if value.consumers == 1 {
            return Ok(Some(grad));
        }
        let extra = self.gpu.zeros(grad.shape(), grad.dtype())?;
        self.values[id].extra_grads.push(extra.clone());
        Ok(Some(extra))
    }

    fn record(
        &mut self,
        op: &'static str,
        output: Option<ValueId>,
        forward: Vec<Kernel>,
        backward: Vec<Kernel>,
    ) {
        self.entries.push(Entry {
            op,
            output,
            forward,
            backward,
            texel_backward: None,
        });
    }

    /// Whether `id`'s gradient reaches its producer as texels written by its consumer.
    fn consumer_writes_texels(&self, id: ValueId) -> bool {
        let value = &self.values[id];
        value.extra_grads.is_empty()
            && value
                .grad_texels
                .as_ref()
                .is_some_and(|t| t.consumer_writes)
    }

    /// `conv2d(x, w) + b`, NCHW (see `ops::conv2d`).
    pub fn conv2d(
        &mut self,
        x: ValueId,
        w: ValueId,
        b: ValueId,
        stride: usize,
        pad: usize,
    ) -> Result<ValueId> {
        let g = conv2d::Conv2dGeometry::of("conv2d", self.tensor(x), self.tensor(w), stride, pad)?;
        let y = self.output(&g.output_shape(), &[x, w, b])?;
        let (tx, tw, tb, ty) = (
            self.tensor(x).clone(),
            self.tensor(w).clone(),
            self.tensor(b).clone(),
            self.tensor(y).clone(),
        );
        // Each product on the kernels the device's policy names; grad_weight reads x as the
        // texel forward packed it, or packs it itself (after a single-channel forward, which
        // packs four images per texel instead).
        let kernels = self.gpu.policy().conv2d(&g);
        let (forward, packed_x) = match kernels.forward {
            ConvForward::ImagesInLanes => (
                conv2d::forward_packed_images4(self.gpu, &tx, &tw, &tb, &ty, pad)?,
                None,
            ),
            ConvForward::Texels => {
                let (kernel, xt) = conv2d::forward_packed(self.gpu, &tx, &tw, &tb, &ty, pad)?;
                (kernel, Some(xt))
            }
            ConvForward::Storage => (
                conv2d::forward(self.gpu, &tx, &tw, &tb, &ty, stride, pad)?,
                None,
            ),
        };
        let forward = vec![forward];
        let mut backward = Vec::new();
        if let Some(dy) = self.grad(y).cloned() {
            let dx = self.grad_slot(x)?;
            let (dw, db) = (self.grad_slot(w)?, self.grad_slot(b)?);
            let input_tex = dx.is_some() && kernels.grad_input == Operands::Texels;
            let weight_tex = dw.is_some() && kernels.grad_weight == Operands::Texels;
            // The texel products share one packing of dy, with grad_input's border when it
            // takes part (grad_weight reads past it).
            let dy_pad = if input_tex { g.grad_input_pad() } else { 0 };
            let packed_dy = if input_tex || weight_tex {
                Some(pack::nhwc4(self.gpu, &dy, dy_pad, 1)?)
            } else {
                None
            };
            if let Some(dx) = dx {
                backward.push(match &packed_dy {
                    Some((_, dyt)) if input_tex => {
                        conv2d::grad_input_tex(self.gpu, dyt, &tw, &dx, pad)?
                    }
                    _ => conv2d::grad_input(self.gpu, &dy, &tw, &dx, stride, pad)?,
                });
            }
            let storage_reads_dy = !input_tex && self.needs_grad(x)
                || !weight_tex && (self.needs_grad(w) || self.needs_grad(b));
            match dw {
                // The texel grad_weight also sums the bias gradient from the dy it fetches.
                Some(dw) if weight_tex => {
                    let (pack_x, xt) = match &packed_x {
                        Some(xt) => (None, xt.clone()),
                        None => {
                            let (kernel, xt) = pack::nhwc4(self.gpu, &tx, pad, g.unfold())?;
                            (Some(kernel), xt)
                        }
                    };
                    let dyt = &packed_dy.as_ref().expect("packed for grad_weight").1;
                    let product =
                        conv2d::grad_weight_tex(self.gpu, &g, &xt, dyt, dy_pad, &dw, db.as_ref())?;
                    backward.push(Kernel::chain(pack_x.into_iter().chain([product])));
                }
                dw => {
                    if let Some(dw) = dw {
                        backward.push(conv2d::grad_weight(self.gpu, &dy, &tx, &dw, stride, pad)?);
                    }
                    if let Some(db) = db {
                        backward.push(conv2d::grad_bias(self.gpu, &dy, &db)?);
                    }
                }
            }
            if let Some((pack, texels)) = packed_dy {
                if storage_reads_dy {
                    backward.insert(0, pack);
                } else {
                    self.values[y].grad_texels = Some(GradTexels {
                        texels,
                        pad: dy_pad,
                        pack,
                        consumer_writes: false,
                    });
                }
            }
        }
        self.record("conv2d", Some(y), forward, backward);
        Ok(y)
    }

    /// Max-pooling with a square `kernel` and `stride`, no padding.
    pub fn max_pool2d(&mut self, x: ValueId, kernel: usize, stride: usize) -> Result<ValueId> {
        self.max_pool2d_maybe_relu(x, kernel, stride, false)
    }

    /// `relu(max_pool2d(x))`, equal to `max_pool2d(relu(x))`, in one forward pass; the
    /// backward is the pooling's alone (windows with a max not above 0 pass no gradient).
    pub fn max_pool2d_relu(&mut self, x: ValueId, kernel: usize, stride: usize) -> Result<ValueId> {
        self.max_pool2d_maybe_relu(x, kernel, stride, true)
    }

    fn max_pool2d_maybe_relu(
        &mut self,
        x: ValueId,
        kernel: usize,
        stride: usize,
        relu: bool,
    ) -> Result<ValueId> {
        let op = if relu {
            "max_pool2d_relu"
        } else {
            "max_pool2d"
        };
        let shape = pooled_shape(op, self.shape(x), kernel, stride)?;
        let y = self.output(&shape, &[x])?;
        let argmax = self.gpu.zeros(&shape, DType::U32)?;
        let (tx, ty) = (self.tensor(x).clone(), self.tensor(y).clone());
        let launch = if relu {
            pool::max_relu_forward
        } else {
            pool::max_forward
        };
        let forward = vec![launch(self.gpu, &tx, kernel, stride, &ty, &argmax)?];
        let mut backward = Vec::new();
        let mut texel_backward = None;
        if let (Some(dy), Some(dx)) = (self.grad(y).cloned(), self.grad_slot(x)?) {
            backward.push(pool::max_backward(
                self.gpu, &dy, &argmax, kernel, stride, &dx,
            )?);
            // The first consumer of a gradient read as texels, with windows that tile.
            let first = self.values[x].consumers == 1;
            if let (true, true, Some(gt), &[n, c, h, w]) = (
                first,
                kernel == stride,
                &self.values[x].grad_texels,
                self.shape(x),
            ) {
                let kernels = vec![pool::max_backward_texels(
                    self.gpu,
                    &dy,
                    &argmax,
                    kernel,
                    [n, c, h, w],
                    &gt.texels,
                    gt.pad,
                )?];
                texel_backward = Some((x, kernels));
            }
        }
        if let Some((x, _)) = &texel_backward
            && let Some(gt) = &mut self.values[*x].grad_texels
        {
            gt.consumer_writes = true;
        }
        self.record(op, Some(y), forward, backward);
        self.entries
            .last_mut()
            .expect("just recorded")
            .texel_backward = texel_backward;
        Ok(y)
    }

    /// Average-pooling with a square `kernel` and `stride`, no padding.
    pub fn avg_pool2d(&mut self, x: ValueId, kernel: usize, stride: usize) -> Result<ValueId> {
        let shape = pooled_shape("avg_pool2d", self.shape(x), kernel, stride)?;
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

    /// `x [N, K] · wᵀ + b`, with `w [M, K]` (PyTorch's `nn.Linear`).
    pub fn dense(&mut self, x: ValueId, w: ValueId, b: ValueId) -> Result<ValueId> {
        let (n, m) = (self.shape(x)[0], self.shape(w)[0]);
        let y = self.output(&[n, m], &[x, w, b])?;
        let (tx, tw, tb, ty) = (
            self.tensor(x).clone(),
            self.tensor(w).clone(),
            self.tensor(b).clone(),
            self.tensor(y).clone(),
        );
        let texels = self.gpu.policy().dense() == Operands::Texels;
        let forward = vec![if texels {
            dense::forward_packed(self.gpu, &tx, &tw, &tb, &ty)?
        } else {
            dense::forward(self.gpu, &tx, &tw, &tb, &ty)?
        }];
        let mut backward = Vec::new();
        if let Some(dy) = self.grad(y).cloned() {
            if let Some(dx) = self.grad_slot(x)? {
                backward.push(if texels {
                    dense::grad_input_packed(self.gpu, &dy, &tw, &dx)?
                } else {
                    dense::grad_input(self.gpu, &dy, &tw, &dx)?
                });
            }
            if let Some(dw) = self.grad_slot(w)? {
                backward.push(if texels {
                    dense::grad_weight_packed(self.gpu, &dy, &tx, &dw)?
                } else {
                    dense::grad_weight(self.gpu, &dy, &tx, &dw)?
                });
            }
            if let Some(db) = self.grad_slot(b)? {
                backward.push(dense::grad_bias(self.gpu, &dy, &db)?);
            }
        }
        self.record("dense", Some(y), forward, backward);
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

    /// Two gradient buffers for a binary op's inputs; a side that needs none still gets a
    /// scratch buffer, since the kernels write both.
    fn pair_slots(&mut self, a: ValueId, b: ValueId) -> Result<(Tensor, Tensor)> {
        Ok((self.grad_or_scratch(a)?, self.grad_or_scratch(b)?))
    }

    /// `v`'s gradient slot, or a scratch buffer of its shape and type where it needs none
    /// (for kernels that write every gradient they compute).
    fn grad_or_scratch(&mut self, v: ValueId) -> Result<Tensor> {
        match self.grad_slot(v)? {
            Some(g) => Ok(g),
            None => self.gpu.zeros(self.shape(v), self.tensor(v).dtype()),
        }
    }

    /// Whether a loss over `kind` distances of rows like `a`'s takes the fused kernels of
    /// `ops::loss`: Euclidean, f32, and a batch within [`loss::FUSED_MAX_ELEMENTS`].
    fn fuses_euclidean(&self, kind: Distance, a: ValueId) -> bool {
        kind == Distance::Euclidean
            && self.tensor(a).dtype() == DType::F32
            && self.tensor(a).len() <= loss::FUSED_MAX_ELEMENTS
    }

    /// The distance between paired rows of `a [B, D]` and `b [B, D]`: `[B]`.
    pub fn distance(&mut self, kind: Distance, a: ValueId, b: ValueId) -> Result<ValueId> {
        let rows = self.shape(a)[0];
        let d = self.output(&[rows], &[a, b])?;
        let (ta, tb, td) = (
            self.tensor(a).clone(),
            self.tensor(b).clone(),
            self.tensor(d).clone(),
        );
        let forward = vec![distance::forward(self.gpu, kind, &ta, &tb, &td)?];
        let mut backward = Vec::new();
        if let Some(dd) = self.grad(d).cloned() {
            let (da, db) = self.pair_slots(a, b)?;
            backward.push(distance::backward(
                self.gpu, kind, &ta, &tb, &td, &dd, &da, &db,
            )?);
        }
        self.record(kind.entries().0, Some(d), forward, backward);
        Ok(d)
    }

    /// The distance matrix `Dm [N, N]` between every two rows of `e [N, D]`. Both sides of the
    /// pairwise kernel are `e`, so its backward writes two gradients of `e`: through
    /// [`pair_slots`](Self::pair_slots), `e` counts two consumers and the walk sums the second
    /// buffer into the first.
    pub fn pairwise_self(&mut self, metric: PairwiseMetric, e: ValueId) -> Result<ValueId> {
        let rows = self.shape(e)[0];
        let dm = self.output(&[rows, rows], &[e])?;
        let (te, tdm) = (self.tensor(e).clone(), self.tensor(dm).clone());
        let forward = vec![distance::pairwise_forward(
            self.gpu, metric, &te, &te, &tdm,
        )?];
        let mut backward = Vec::new();
        if let Some(ddm) = self.grad(dm).cloned() {
            let (d_rows, d_cols) = self.pair_slots(e, e)?;
            backward.push(distance::pairwise_backward(
                self.gpu, metric, &te, &te, &tdm, &ddm, &d_rows, &d_cols,
            )?);
        }
        self.record("pairwise_self", Some(dm), forward, backward);
        Ok(dm)
    }

    /// Triplet loss mined by `miner` from the distance matrix `dm [N, N]` with class
    /// `labels [N]` (u32): the scalar loss, and the step's `stats [4]` (see
    /// [`mining::MiningStats`]), a tensor the caller may copy or read.
    pub fn mined_triplet_loss(
        &mut self,
        dm: ValueId,
        labels: &Tensor,
        miner: Miner,
        margin: f32,
    ) -> Result<(ValueId, Tensor)> {
        let l = self.output(&[1], &[dm])?;
        let stats = self.zeros(&[4])?;
        let (tdm, tl) = (self.tensor(dm).clone(), self.tensor(l).clone());
        let forward = vec![mining::forward(
            self.gpu, miner, &tdm, labels, margin, &tl, &stats,
        )?];
        let mut backward = Vec::new();
        if let (Some(dl), Some(ddm)) = (self.grad(l).cloned(), self.grad_slot(dm)?) {
            backward.push(mining::backward(
                self.gpu, miner, &tdm, labels, margin, &stats, &dl, &ddm,
            )?);
        }
        self.record("mined_triplet_loss", Some(l), forward, backward);
        Ok((l, stats))
    }

    /// Elementwise `|a − b|` of `a [B, D]` and `b [B, D]` (the Keras Siamese head).
    pub fn abs_diff(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        let shape = self.shape(a).to_vec();
        let y = self.output(&shape, &[a, b])?;
        let (ta, tb, ty) = (
            self.tensor(a).clone(),
            self.tensor(b).clone(),
            self.tensor(y).clone(),
        );
        let forward = vec![distance::abs_diff_forward(self.gpu, &ta, &tb, &ty)?];
        let mut backward = Vec::new();
        if let Some(dy) = self.grad(y).cloned() {
            let (da, db) = self.pair_slots(a, b)?;
            backward.push(distance::abs_diff_backward(
                self.gpu, &ta, &tb, &dy, &da, &db,
            )?);
        }
        self.record("abs_diff", Some(y), forward, backward);
        Ok(y)
    }

    /// Contrastive loss of distances `d [B]` with `labels [B]` (PairLabel codes): `[1]`.
    pub fn contrastive_loss(
        &mut self,
        d: ValueId,
        labels: &Tensor,
        margin: f32,
    ) -> Result<ValueId> {
        let l = self.output(&[1], &[d])?;
        let (td, tl) = (self.tensor(d).clone(), self.tensor(l).clone());
        let forward = vec![loss::contrastive_forward(
            self.gpu, &td, labels, margin, &tl,
        )?];
        let mut backward = Vec::new();
        if let (Some(dl), Some(dd)) = (self.grad(l).cloned(), self.grad_slot(d)?) {
            backward.push(loss::contrastive_backward(
                self.gpu, &td, labels, margin, &dl, &dd,
            )?);
        }
        self.record("contrastive_loss", Some(l), forward, backward);
        Ok(l)
    }

    /// The contrastive loss of the `kind` distance between the paired rows of `a`, `b [B, D]`:
    /// `[1]`. Euclidean distances of a batch the fused kernels take are one op (distance,
    /// loss and its gradient in `ops::loss::contrastive_euclidean_*`: two dispatches instead of
    /// four); otherwise [`distance`](Self::distance) then
    /// [`contrastive_loss`](Self::contrastive_loss).
    pub fn contrastive_distance_loss(
        &mut self,
        kind: Distance,
        a: ValueId,
        b: ValueId,
        labels: &Tensor,
        margin: f32,
    ) -> Result<ValueId> {
        if !self.fuses_euclidean(kind, a) {
            let d = self.distance(kind, a, b)?;
            return self.contrastive_loss(d, labels, margin);
        }
        let l = self.output(&[1], &[a, b])?;
        let d = self.zeros(&[self.shape(a)[0]])?;
        let (ta, tb, tl) = (
            self.tensor(a).clone(),
            self.tensor(b).clone(),
            self.tensor(l).clone(),
        );
        let forward = vec![loss::contrastive_euclidean_forward(
            self.gpu, &ta, &tb, labels, margin, &d, &tl,
        )?];
        let mut backward = Vec::new();
        if let Some(dl) = self.grad(l).cloned() {
            let (da, db) = self.pair_slots(a, b)?;
            backward.push(loss::contrastive_euclidean_backward(
                self.gpu, &ta, &tb, labels, margin, &d, &dl, &da, &db,
            )?);
        }
        self.record("contrastive_euclidean", Some(l), forward, backward);
        Ok(l)
    }

    /// The triplet loss of the `kind` distances of anchors `a` to positives `p` and negatives
    /// `n` (`[B, D]` each): `[1]`. Euclidean distances of a batch the fused kernels take are
    /// one op (`ops::loss::triplet_euclidean_*`: two dispatches instead of seven, the
    /// anchor's two gradients summed inside); otherwise two [`distance`](Self::distance)s
    /// then [`triplet_loss`](Self::triplet_loss).
    pub fn triplet_distance_loss(
        &mut self,
        kind: Distance,
        [a, p, n]: [ValueId; 3],
        margin: f32,
    ) -> Result<ValueId> {
        if !self.fuses_euclidean(kind, a) {
            let d_ap = self.distance(kind, a, p)?;
            let d_an = self.distance(kind, a, n)?;
            return self.triplet_loss(d_ap, d_an, margin);
        }
        let l = self.output(&[1], &[a, p, n])?;
        let rows = self.shape(a)[0];
        let (d_ap, d_an) = (self.zeros(&[rows])?, self.zeros(&[rows])?);
        let t = [a, p, n].map(|v| self.tensor(v).clone());
        let tl = self.tensor(l).clone();
        let forward = vec![loss::triplet_euclidean_forward(
            self.gpu, &t[0], &t[1], &t[2], margin, &d_ap, &d_an, &tl,
        )?];
        let mut backward = Vec::new();
        if let Some(dl) = self.grad(l).cloned() {
            let (da, dp) = self.pair_slots(a, p)?;
            let dn = self.grad_or_scratch(n)?;
            backward.push(loss::triplet_euclidean_backward(
                self.gpu,
                &t[0],
                &t[1],
                &t[2],
                margin,
                &d_ap,
                &d_an,
                &dl,
                [&da, &dp, &dn],
            )?);
        }
        self.record("triplet_euclidean", Some(l), forward, backward);
        Ok(l)
    }

    /// Triplet loss of `d_ap [B]`, `d_an [B]`: mean of per-sample hinges, `[1]`.
    pub fn triplet_loss(&mut self, d_ap: ValueId, d_an: ValueId, margin: f32) -> Result<ValueId> {
        let l = self.output(&[1], &[d_ap, d_an])?;
        let (tp, tn, tl) = (
            self.tensor(d_ap).clone(),
            self.tensor(d_an).clone(),
            self.tensor(l).clone(),
        );
        let forward = vec![loss::triplet_forward(self.gpu, &tp, &tn, margin, &tl)?];
        let mut backward = Vec::new();
        if let Some(dl) = self.grad(l).cloned() {
            let (dp, dn) = self.pair_slots(d_ap, d_an)?;
            backward.push(loss::triplet_backward(
                self.gpu, &tp, &tn, margin, &dl, &dp, &dn,
            )?);
        }
        self.record("triplet_loss", Some(l), forward, backward);
        Ok(l)
    }

    /// Binary cross-entropy of logits `z [B]` (or `[B, 1]`) against `labels [B]`: `[1]`.
    pub fn bce_with_logits(&mut self, z: ValueId, labels: &Tensor) -> Result<ValueId> {
        let rows = self.shape(z)[0];
        let z = if self.shape(z).len() == 2 {
            self.reshape(z, &[rows])?
        } else {
            z
        };
        let l = self.output(&[1], &[z])?;
        let (tz, tl) = (self.tensor(z).clone(), self.tensor(l).clone());
        let forward = vec![loss::bce_with_logits_forward(self.gpu, &tz, labels, &tl)?];
        let mut backward = Vec::new();
        if let (Some(dl), Some(dz)) = (self.grad(l).cloned(), self.grad_slot(z)?) {
            backward.push(loss::bce_with_logits_backward(
                self.gpu, &tz, labels, &dl, &dz,
            )?);
        }
        self.record("bce_with_logits", Some(l), forward, backward);
        Ok(l)
    }

    /// Seeds `loss`'s gradient with 1 and returns every backward kernel in execution order:
    /// the ops in reverse, each preceded by the sums of its output's extra gradients.
    pub fn backward(&self, loss: ValueId) -> Result<Vec<Kernel>> {
        let seed = self.values[loss]
            .grad
            .as_ref()
            .ok_or_else(|| Error::Shape {
                op: "backward",
                detail: "the loss depends on no parameter that needs a gradient".into(),
            })?;
        if seed.len() != 1 {
            return Err(Error::Shape {
                op: "backward",
                detail: format!("the loss must be a scalar, got {:?}", seed.shape()),
            });
        }
        self.gpu.write_f32(seed, &[1.0])?;
        let mut kernels = Vec::new();
        let mut produced = vec![false; self.values.len()];
        for entry in self.entries.iter().rev() {
            if let Some(out) = entry.output {
                produced[out] = true;
                self.accumulate(out, &mut kernels)?;
                if let Some(gt) = &self.values[out].grad_texels
                    && !self.consumer_writes_texels(out)
                {
                    kernels.push(gt.pack.clone());
                }
            }
            match &entry.texel_backward {
                Some((v, fused)) if self.consumer_writes_texels(*v) => {
                    kernels.extend(fused.iter().cloned())
                }
                _ => kernels.extend(entry.backward.iter().cloned()),
            }
        }
        // Leaves (parameters) used by several ops: their sums come last.
        for id in (0..self.values.len()).filter(|&i| !produced[i]) {
            self.accumulate(id, &mut kernels)?;
        }
        Ok(kernels)
    }

    fn accumulate(&self, id: ValueId, kernels: &mut Vec<Kernel>) -> Result<()> {
        let value = &self.values[id];
        if let Some(grad) = &value.grad {
            for extra in &value.extra_grads {
                kernels.push(activation::accumulate_grad(self.gpu, extra, grad)?);
            }
        }
        Ok(())
    }
}

fn pooled_shape(
    op: &'static str,
    shape: &[usize],
    kernel: usize,
    stride: usize,
) -> Result<Vec<usize>> {
    let &[n, c, h, w] = shape else {
        return Err(Error::Shape {
            op,
            detail: format!("input must be [N, C, H, W], got {shape:?}"),
        });
    };
    let (oh, ow) = pool::output_size(op, h, w, kernel, stride)?;
    Ok(vec![n, c, oh, ow])
}
