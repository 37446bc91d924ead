"""K Q-networks as one batched network whose parameters live in one flat ``(K, P)`` tensor.

On a CPU the update of a small MLP is almost all per-operation overhead (``shared/notes/trading-rl.md``), so:

- every layer is one ``torch.baddbmm`` over K stacked weight matrices (K networks cost little more than one);
- all parameters of seed k are row k of one flat tensor: per-seed gradient norms, the optimiser step and the target
  sync are each a few operations on that tensor, however many layers there are (each block starts on a 64-byte
  boundary; the few floats between blocks are zero and stay zero);
- the backward pass is written out by hand (a two-hidden-layer MLP has a short, well-known gradient), which skips
  autograd's bookkeeping; ``tests/test_training.py`` checks it against autograd.

Member k is initialised from its own seed only, exactly as a one-member network with that seed would be. Members
may differ in hidden widths and head (issue 14): see :class:`BatchedMLP`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

ALIGN = 16  # floats: 64 bytes


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class ForwardCache(NamedTuple):
    """Activations kept for the backward pass."""

    inputs: list[torch.Tensor]  # input of each layer (K, B, d_in)
    pre: list[torch.Tensor]  # pre-activation of each hidden layer
    head_in: torch.Tensor  # last hidden activation (K, B, H)


class BatchedMLP:
    """K independent MLP Q-networks with ReLU hidden layers; optional dueling head (Wang et al. 2016).

    ``forward(x)`` maps ``(K, B, obs_dim)`` to Q-values ``(K, B, n_actions)``.

    Members may differ in hidden widths (not depth) and in having a dueling head (issue 14, packed trials): each
    layer is as wide as its widest member, and a narrower member's extra units have zero weights in and out, so
    they output 0, receive a zero gradient and stay 0 (Adam, weight decay and Polyak averaging keep zeros at zero).
    In a pack with any dueling member the head has a value and an advantage branch; a plain member's Q-values are its
    advantage branch alone (its value branch is zero and its gradient masked), so it computes exactly what it would
    alone.
    """

    def __init__(self, obs_dim: int, n_actions: int, hidden: tuple[int, ...] | Sequence[tuple[int, ...]],
                 seeds: Sequence[int], *, dueling: bool | Sequence[bool] = False,
                 device: torch.device | str = "cpu", init: bool = True) -> None:
        """``hidden`` and ``dueling`` apply to every member, or give one value per member (as many as ``seeds``).

        ``init=False`` leaves the parameters at zero (for a network that is filled by :meth:`relayout`).
        """
        self.k = len(seeds)
        if len(hidden) and all(isinstance(h, int) for h in hidden):
            member_hidden = [tuple(hidden)] * self.k  # type: ignore[arg-type]
        else:
            member_hidden = [tuple(h) for h in hidden]  # type: ignore[union-attr]
        member_dueling = [bool(dueling)] * self.k if isinstance(dueling, bool) else [bool(d) for d in dueling]
        if len(member_hidden) != self.k or len(member_dueling) != self.k:
            raise ValueError(f"{len(member_hidden)} hidden tuples and {len(member_dueling)} dueling flags for "
                             f"{self.k} members")
        depths = {len(h) for h in member_hidden}
        if len(depths) != 1 or 0 in depths:
            raise ValueError(f"members must have the same number of hidden layers (>= 1), got {sorted(depths)}")
        self.obs_dim = obs_dim
        self.n_actions = n_actions
        self.member_hidden = member_hidden
        self.member_dueling = np.array(member_dueling, dtype=bool)
        self.dueling = bool(self.member_dueling.any())
        hid = tuple(max(h[i] for h in member_hidden) for i in range(len(member_hidden[0])))
        self.hidden = hid
        self.n_hidden = len(hid)
        dims = [obs_dim, *hid]
        # Named slots: hidden layers h0.., then the head: "v" (dueling value) and "a" (advantage, or the plain Q head).
        self.slots = [f"h{i}" for i in range(len(hid))] + (["v", "a"] if self.dueling else ["a"])
        self.shapes = [(dims[i], dims[i + 1]) for i in range(len(hid))]
        self.shapes += [(hid[-1], 1), (hid[-1], n_actions)] if self.dueling else [(hid[-1], n_actions)]
        # Every weight and bias block starts on a 64-byte boundary, and so does every member's row: MKL's thin
        # products (the value head's one column) round differently with the output's alignment, so a member must see
        # the same alignment in any row of any pack as alone, for it to compute the same bits (issue 14).
        self.offsets: list[tuple[int, int]] = []
        off = 0
        for fan_in, fan_out in self.shapes:
            w_off = off
            off = _aligned(off + fan_in * fan_out)
            self.offsets.append((w_off, off))
            off = _aligned(off + fan_out)
        self.n_params = off
        mixed = self.dueling and not self.member_dueling.all()
        # A plain member inside a dueling pack: 0 for it, 1 for dueling members (None when all are alike).
        self.dueling_mask = (torch.from_numpy(self.member_dueling.astype(np.float32)).view(self.k, 1, 1).to(device)
                             if mixed else None)
        self.flat = torch.zeros(self.k, self.n_params)
        if init:
            ws, bs = self.views(self.flat)
            for m, s in enumerate(seeds):
                # The member's own layers, drawn in its own order from its own seed (nn.Linear's initialisation),
                # then placed in the top-left corner of the pack's (wider) slots.
                g = torch.Generator().manual_seed(int(s))
                own = [obs_dim, *member_hidden[m]]
                layers = [(f"h{i}", own[i], own[i + 1]) for i in range(len(hid))]
                layers += ([("v", own[-1], 1), ("a", own[-1], n_actions)] if member_dueling[m]
                           else [("a", own[-1], n_actions)])
                for name, fan_in, fan_out in layers:
                    j = self.slots.index(name)
                    bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default initialisation
                    ws[j][m, :fan_in, :fan_out] = ((torch.rand(fan_in * fan_out, generator=g) * 2 - 1) * bound
                                                   ).view(fan_in, fan_out)
                    bs[j][m, 0, :fan_out] = (torch.rand(fan_out, generator=g) * 2 - 1) * bound
        self.flat = self.flat.to(device)
        self.weights, self.biases = self.views(self.flat)

    def from_unaligned(self, flat: torch.Tensor) -> torch.Tensor:
        """Parameters stored in the earlier layout (blocks back to back, no alignment) in this network's layout."""
        out = torch.zeros(flat.shape[0], self.n_params, dtype=flat.dtype)
        ws, bs = self.views(out)
        off = 0
        for (fan_in, fan_out), w, b in zip(self.shapes, ws, bs, strict=True):
            w.copy_(flat[:, off:off + fan_in * fan_out].view(-1, fan_in, fan_out))
            off += fan_in * fan_out
            b.copy_(flat[:, off:off + fan_out].view(-1, 1, fan_out))
            off += fan_out
        return out

    @property
    def unaligned_size(self) -> int:
        """Parameters per member in the earlier, unaligned layout."""
        return sum(a * b + b for a, b in self.shapes)

    def subset(self, rows: Sequence[int], device: torch.device | str | None = None) -> BatchedMLP:
        """An empty network for members ``rows`` of this one, each layer as wide as its widest remaining member."""
        return BatchedMLP(self.obs_dim, self.n_actions, [self.member_hidden[r] for r in rows], list(rows),
                          dueling=[bool(self.member_dueling[r]) for r in rows],
                          device=self.flat.device if device is None else device, init=False)

    def relayout(self, src: BatchedMLP, src_flat: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        """Rows ``rows`` of ``src_flat`` (laid out as ``src``) in this network's layout: ``(len(rows), P)``.

        Each slot's overlapping corner is copied and the rest is zero: a member keeps all its parameters as long as
        this network is at least as wide as the member (its padding is zero). A slot this network lacks (the value
        branch of a plain member) is dropped.
        """
        idx = torch.as_tensor(list(rows), dtype=torch.long, device=src_flat.device)
        out = torch.zeros(len(rows), self.n_params, dtype=src_flat.dtype, device=src_flat.device)
        sw, sb = src.views(src_flat)
        dw, db = self.views(out)
        for j, name in enumerate(self.slots):
            if name not in src.slots:
                continue
            i = src.slots.index(name)
            fi, fo = min(sw[i].shape[1], dw[j].shape[1]), min(sw[i].shape[2], dw[j].shape[2])
            dw[j][:, :fi, :fo] = sw[i][idx, :fi, :fo]
            db[j][:, :, :fo] = sb[i][idx, :, :fo]
        return out

    def views(self, flat: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Weight ``(K, d_in, d_out)`` and bias ``(K, 1, d_out)`` views into a ``(K, P)`` tensor."""
        ws, bs = [], []
        k = flat.shape[0]
        for (fan_in, fan_out), (w_off, b_off) in zip(self.shapes, self.offsets, strict=True):
            ws.append(flat[:, w_off:w_off + fan_in * fan_out].view(k, fan_in, fan_out))
            bs.append(flat[:, b_off:b_off + fan_out].view(k, 1, fan_out))
        return ws, bs

    def forward(self, x: torch.Tensor, weights: list[torch.Tensor] | None = None,
                biases: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Q-values ``(K, B, n_actions)``; ``weights``/``biases`` default to this network's (pass a target's)."""
        return self.forward_cached(x, weights, biases)[0]

    def forward_cached(self, x: torch.Tensor, weights: list[torch.Tensor] | None = None,
                       biases: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, ForwardCache]:
        """Q-values and the activations the backward pass needs."""
        ws = self.weights if weights is None else weights
        bs = self.biases if biases is None else biases
        inputs, pre = [], []
        h = x
        for i in range(self.n_hidden):
            inputs.append(h)
            z = torch.baddbmm(bs[i], h, ws[i])
            pre.append(z)
            h = torch.relu(z)
        if not self.dueling:
            return torch.baddbmm(bs[-1], h, ws[-1]), ForwardCache(inputs, pre, h)
        v = torch.baddbmm(bs[-2], h, ws[-2])
        a = torch.baddbmm(bs[-1], h, ws[-1])
        mean = a.mean(dim=-1, keepdim=True)
        if self.dueling_mask is not None:
            # A plain member's value branch is zero and its mean term masked: its Q is its advantage branch, exactly.
            mean = mean * self.dueling_mask
        return v + a - mean, ForwardCache(inputs, pre, h)

    def backward(self, cache: ForwardCache, dq: torch.Tensor,
                 grad_views: tuple[list[torch.Tensor], list[torch.Tensor]]) -> None:
        """Write the gradient of a loss whose gradient w.r.t. the Q-values is ``dq`` into ``grad_views``.

        ``grad_views`` are :meth:`views` of a ``(K, P)`` gradient tensor (made once by the caller). ``cache`` may
        cover more rows than ``dq`` (a forward over observations and next observations together): only its first
        ``dq.shape[1]`` rows are used.
        """
        b = dq.shape[1]
        gws, gbs = grad_views
        h = cache.head_in[:, :b]
        ht = h.transpose(1, 2)
        if self.dueling:
            dv = dq.sum(dim=-1, keepdim=True)
            dmean = dq.mean(dim=-1, keepdim=True)
            if self.dueling_mask is not None:  # a plain member's value branch gets no gradient
                dv = dv * self.dueling_mask
                dmean = dmean * self.dueling_mask
            da = dq - dmean
            torch.bmm(ht, dv, out=gws[-2])
            gbs[-2].copy_(dv.sum(dim=1, keepdim=True))
            torch.bmm(ht, da, out=gws[-1])
            gbs[-1].copy_(da.sum(dim=1, keepdim=True))
            dh = torch.baddbmm(torch.bmm(dv, self.weights[-2].transpose(1, 2)), da, self.weights[-1].transpose(1, 2))
        else:
            torch.bmm(ht, dq, out=gws[-1])
            gbs[-1].copy_(dq.sum(dim=1, keepdim=True))
            dh = torch.bmm(dq, self.weights[-1].transpose(1, 2))
        for i in range(self.n_hidden - 1, -1, -1):
            # The ReLU gradient in one op ("dh * (pre > 0)" is three: compare, cast, multiply).
            dz = torch.ops.aten.threshold_backward(dh, cache.pre[i][:, :b], 0.0)
            torch.bmm(cache.inputs[i][:, :b].transpose(1, 2), dz, out=gws[i])
            gbs[i].copy_(dz.sum(dim=1, keepdim=True))
            if i > 0:
                dh = torch.bmm(dz, self.weights[i].transpose(1, 2))
