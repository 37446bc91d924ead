"""K Q-networks as one batched network whose parameters live in one flat ``(K, P)`` tensor.

On a CPU the update of a small MLP is almost all per-operation overhead (``shared/notes/trading-rl.md``), so:

- every layer is one ``torch.baddbmm`` over K stacked weight matrices (K networks cost little more than one);
- all parameters of seed k are row k of one flat tensor: per-seed gradient norms, the optimiser step and the target
  sync are each a few operations on that tensor, however many layers there are;
- the backward pass is written out by hand (a two-hidden-layer MLP has a short, well-known gradient), which skips
  autograd's bookkeeping; ``tests/test_training.py`` checks it against autograd.

Member k is initialised from its own seed only, exactly as a one-member network with that seed would be.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class ForwardCache(NamedTuple):
    """Activations kept for the backward pass."""

    inputs: list[torch.Tensor]  # input of each layer (K, B, d_in)
    pre: list[torch.Tensor]  # pre-activation of each hidden layer
    head_in: torch.Tensor  # last hidden activation (K, B, H)


class BatchedMLP:
    """K independent MLP Q-networks with ReLU hidden layers; optional dueling head (Wang et al. 2016).

    ``forward(x)`` maps ``(K, B, obs_dim)`` to Q-values ``(K, B, n_actions)``.
    """

    def __init__(self, obs_dim: int, n_actions: int, hidden: tuple[int, ...], seeds: tuple[int, ...], *,
                 dueling: bool = False, device: torch.device | str = "cpu") -> None:
        self.k = len(seeds)
        self.dueling = dueling
        self.n_actions = n_actions
        dims = [obs_dim, *hidden]
        self.shapes = [(dims[i], dims[i + 1]) for i in range(len(hidden))]
        self.shapes += [(hidden[-1], 1), (hidden[-1], n_actions)] if dueling else [(hidden[-1], n_actions)]
        self.n_hidden = len(hidden)
        sizes = [a * b + b for a, b in self.shapes]
        self.n_params = sum(sizes)
        rows = []
        for s in seeds:
            g = torch.Generator().manual_seed(int(s))
            parts = []
            for fan_in, fan_out in self.shapes:
                bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default initialisation
                parts.append((torch.rand(fan_in * fan_out, generator=g) * 2 - 1) * bound)
                parts.append((torch.rand(fan_out, generator=g) * 2 - 1) * bound)
            rows.append(torch.cat(parts))
        self.flat = torch.stack(rows).to(device)
        self.weights, self.biases = self.views(self.flat)

    def views(self, flat: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Weight ``(K, d_in, d_out)`` and bias ``(K, 1, d_out)`` views into a ``(K, P)`` tensor."""
        ws, bs = [], []
        off = 0
        for fan_in, fan_out in self.shapes:
            ws.append(flat[:, off:off + fan_in * fan_out].view(self.k, fan_in, fan_out))
            off += fan_in * fan_out
            bs.append(flat[:, off:off + fan_out].view(self.k, 1, fan_out))
            off += fan_out
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
        return v + a - a.mean(dim=-1, keepdim=True), ForwardCache(inputs, pre, h)

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
            da = dq - dq.mean(dim=-1, keepdim=True)
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
