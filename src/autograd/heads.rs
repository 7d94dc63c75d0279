//! The heads' ops on the tape: distances between embeddings and the losses on them.

use super::{Tape, ValueId};
use crate::error::Result;
use crate::gpu::{DType, Tensor};
use crate::ops::{distance, loss, mining, similarity_loss};
use crate::vocab::{Distance, Miner, PairwiseMetric, SimilarityLoss};

impl Tape<'_> {
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
    /// `ops::loss`: Euclidean or cosine, f32, and a batch within [`loss::FUSED_MAX_ELEMENTS`].
    fn fuses(&self, kind: Distance, a: ValueId) -> bool {
        matches!(kind, Distance::Euclidean | Distance::Cosine)
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

    /// The distance matrix `Dm [N, M]` between every row of `a [N, D]` and every row of
    /// `b [M, D]` (`a` itself for the batch against itself, or a parameter such as class
    /// weights). When both sides are one value, the pairwise backward writes two gradients
    /// of it: through [`pair_slots`](Self::pair_slots) it counts two consumers and the walk
    /// sums the second buffer into the first.
    pub fn pairwise(&mut self, metric: PairwiseMetric, a: ValueId, b: ValueId) -> Result<ValueId> {
        let (rows, cols) = (self.shape(a)[0], self.shape(b)[0]);
        let dm = self.output(&[rows, cols], &[a, b])?;
        let (ta, tb, tdm) = (
            self.tensor(a).clone(),
            self.tensor(b).clone(),
            self.tensor(dm).clone(),
        );
        let forward = vec![distance::pairwise_forward(
            self.gpu, metric, &ta, &tb, &tdm,
        )?];
        let mut backward = Vec::new();
        if let Some(ddm) = self.grad(dm).cloned() {
            let (d_rows, d_cols) = self.pair_slots(a, b)?;
            backward.push(distance::pairwise_backward(
                self.gpu, metric, &ta, &tb, &tdm, &ddm, &d_rows, &d_cols,
            )?);
        }
        self.record("pairwise", Some(dm), forward, backward);
        Ok(dm)
    }

    /// A loss on cosine distances `dm [N, R]` (see [`similarity_loss`]) with row classes
    /// `labels [N]` and, for the losses over embeddings, `columns` = (column classes
    /// `[R]`, the window `[4]` of the columns each row pairs with). Returns the scalar loss
    /// and the step's `stats [4]`, a tensor the caller may copy or read.
    pub fn similarity_loss(
        &mut self,
        loss: SimilarityLoss,
        dm: ValueId,
        labels: &Tensor,
        columns: Option<(&Tensor, &Tensor)>,
    ) -> Result<(ValueId, Tensor)> {
        let l = self.output(&[1], &[dm])?;
        let (n, r) = (self.shape(dm)[0], self.shape(dm)[1]);
        let rows = self.zeros(&[loss.partial_rows(n, r), similarity_loss::ROW])?;
        let stats = self.zeros(&[similarity_loss::STATS])?;
        let (tdm, tl) = (self.tensor(dm).clone(), self.tensor(l).clone());
        let m = similarity_loss::Similarities {
            dm: &tdm,
            labels,
            columns,
        };
        let forward = vec![similarity_loss::forward(
            self.gpu, loss, &m, &rows, &tl, &stats,
        )?];
        let mut backward = Vec::new();
        if let (Some(dl), Some(ddm)) = (self.grad(l).cloned(), self.grad_slot(dm)?) {
            backward.push(similarity_loss::backward(
                self.gpu, loss, &m, &rows, &stats, &dl, &ddm,
            )?);
        }
        self.record("similarity_loss", Some(l), forward, backward);
        Ok((l, stats))
    }

    /// Writes the values of `e [N, D]` and their `labels [N]` into a cross-batch memory
    /// (`memory [M, D]`, `memory_labels [M]`) at the ring slots `window` names: a forward-only
    /// op (the memory is detached, so nothing flows back through it).
    pub fn memory_enqueue(
        &mut self,
        e: ValueId,
        labels: &Tensor,
        window: &Tensor,
        memory: &Tensor,
        memory_labels: &Tensor,
    ) -> Result<()> {
        let te = self.tensor(e).clone();
        let forward = vec![similarity_loss::memory_enqueue(
            self.gpu,
            &te,
            labels,
            window,
            memory,
            memory_labels,
        )?];
        self.record("memory_enqueue", None, forward, Vec::new());
        Ok(())
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
    /// `[1]`. Euclidean or cosine distances of a batch the fused kernels take are one op
    /// (distance, loss and its gradient in `ops::loss::contrastive_fused_*`: two dispatches
    /// instead of four); otherwise [`distance`](Self::distance) then
    /// [`contrastive_loss`](Self::contrastive_loss).
    pub fn contrastive_distance_loss(
        &mut self,
        kind: Distance,
        a: ValueId,
        b: ValueId,
        labels: &Tensor,
        margin: f32,
    ) -> Result<ValueId> {
        if !self.fuses(kind, a) {
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
        let forward = vec![loss::contrastive_fused_forward(
            self.gpu, kind, &ta, &tb, labels, margin, &d, &tl,
        )?];
        let mut backward = Vec::new();
        if let Some(dl) = self.grad(l).cloned() {
            let (da, db) = self.pair_slots(a, b)?;
            backward.push(loss::contrastive_fused_backward(
                self.gpu, kind, &ta, &tb, labels, margin, &d, &dl, &da, &db,
            )?);
        }
        let op = match kind {
            Distance::Cosine => "contrastive_cosine",
            _ => "contrastive_euclidean",
        };
        self.record(op, Some(l), forward, backward);
        Ok(l)
    }

    /// The triplet loss of the `kind` distances of anchors `a` to positives `p` and negatives
    /// `n` (`[B, D]` each): `[1]`. Euclidean or cosine distances of a batch the fused kernels
    /// take are one op (`ops::loss::triplet_fused_*`: two dispatches instead of seven, the
    /// anchor's two gradients summed inside); otherwise two [`distance`](Self::distance)s
    /// then [`triplet_loss`](Self::triplet_loss).
    pub fn triplet_distance_loss(
        &mut self,
        kind: Distance,
        [a, p, n]: [ValueId; 3],
        margin: f32,
    ) -> Result<ValueId> {
        if !self.fuses(kind, a) {
            let d_ap = self.distance(kind, a, p)?;
            let d_an = self.distance(kind, a, n)?;
            return self.triplet_loss(d_ap, d_an, margin);
        }
        let l = self.output(&[1], &[a, p, n])?;
        let rows = self.shape(a)[0];
        let (d_ap, d_an) = (self.zeros(&[rows])?, self.zeros(&[rows])?);
        let t = [a, p, n].map(|v| self.tensor(v).clone());
        let tl = self.tensor(l).clone();
        let forward = vec![loss::triplet_fused_forward(
            self.gpu, kind, &t[0], &t[1], &t[2], margin, &d_ap, &d_an, &tl,
        )?];
        let mut backward = Vec::new();
        if let Some(dl) = self.grad(l).cloned() {
            let (da, dp) = self.pair_slots(a, p)?;
            let dn = self.grad_or_scratch(n)?;
            backward.push(loss::triplet_fused_backward(
                self.gpu,
                kind,
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
        let op = match kind {
            Distance::Cosine => "triplet_cosine",
            _ => "triplet_euclidean",
        };
        self.record(op, Some(l), forward, backward);
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
}
