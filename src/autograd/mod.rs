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
//! Which kernels an op runs is its launcher's plan under the device's
//! [`Policy`](crate::gpu::Policy); the tape records what the plan returns. One gradient may
//! pass between two ops as texels rather than a tensor (a convolution's output gradient,
//! written by the max-pooling after it: [`handoff`](crate::ops::handoff)); whether it does
//! is settled in [`Tape::backward`], once every consumer is known.
//!
//! The ops are recorded in `layers` (the tower's) and `heads` (distances and losses); this
//! module holds the values, the entries and the walk.
//!
//! Mixed precision: a value's type follows its op's first input, so a tower fed f16 images
//! and f16 weights computes in f16 (values and their gradients) until [`Tape::to_f32`];
//! parameter gradients are always the f32 buffers the caller passes.

mod heads;
mod layers;

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Kernel, Tensor};
use crate::ops::activation;
use crate::ops::handoff::DyTexels;

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
    /// Set when the producer's backward reads the gradient only as texels (its plan's
    /// hand-off).
    dy_texels: Option<DyTexels>,
}

struct Entry {
    op: &'static str,
    /// The value this op produced (None for ops that only write gradients).
    output: Option<ValueId>,
    forward: Vec<Kernel>,
    backward: Vec<Kernel>,
    /// The value whose gradient texels this op's backward can write instead (it took the
    /// value's [`DyTexels`] offer).
    writes_texels_of: Option<ValueId>,
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
            dy_texels: None,
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
            writes_texels_of: None,
        });
    }

    /// The consumer's kernel that writes `id`'s gradient texels, if it does.
    fn texels_written_by_consumer(&self, id: ValueId) -> Option<&Kernel> {
        let value = &self.values[id];
        let dy_texels = value.dy_texels.as_ref()?;
        dy_texels.written_by_consumer(value.consumers)
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
                if let Some(dy_texels) = &self.values[out].dy_texels
                    && self.texels_written_by_consumer(out).is_none()
                {
                    kernels.push(dy_texels.pack().clone());
                }
            }
            match entry
                .writes_texels_of
                .and_then(|v| self.texels_written_by_consumer(v))
            {
                Some(write) => kernels.push(write.clone()),
                None => kernels.extend(entry.backward.iter().cloned()),
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
