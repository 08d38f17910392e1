"""GLIDER's local router: a mixture-of-LoRA linear layer with PHATGOOSE gates as routing keys.

Each adapted linear module of the base is replaced by a :class:`MixtureLoraLinear` holding
the N experts' LoRA matrices stacked (``A``: ``[N·r, d_in]``, ``B``: ``[N·r, d_out]``, ranks
zero-padded to the largest) and their gate vectors ``v_i``. For each token activation ``h``:

    logit_i = LN(h)·LN(v_i)/sqrt(d_in) + α·cos(q, g_i)
    p = renormalise(top_k(softmax(logit)))
    out = W h + Σ_topk p_i · scaling_i · B_i A_i h

``LN`` is a layer norm without affine parameters. ``q`` is the row's instruction embedding and
``g_i`` expert i's (GLIDER's global router computes both); the engine passes the per-row,
per-expert term ``α·cos(q, g_i)`` in through a shared :class:`RoutingState`.

α sets who decides: 0 is purely local (only the learned gates); large α lets the global
router dictate (with α ≫ sqrt(d_in) the expert whose ``g_i`` best matches ``q`` gets all the
mass). The GLIDER paper uses α from 3 to 1000 depending on the setting.
"""

from __future__ import annotations

import math


def top_k_weights(logits, k: int):
    """Softmax over the last axis, keep the ``k`` largest, renormalise; dense, zeros elsewhere.

    Computed as a softmax over the ``k`` largest logits, which is the same thing
    (``p_i / Σ_topk p_j = exp(l_i) / Σ_topk exp(l_j)``) in fewer operations."""
    top, index = logits.topk(min(k, logits.shape[-1]), dim=-1)
    return logits.new_zeros(logits.shape).scatter(-1, index, top.softmax(dim=-1))


class RoutingState:
    """What every mixture layer of one model shares: the global term and the trace sums.

    ``bias`` is ``[batch, N]`` (``α·cos(q, g_i)``) or None (no global term). When
    ``recording``, layers add their dense routing weights and top-k picks, as ``[batch, T, N]``
    over all N experts, to ``weight_sum`` and ``pick_sum``; ``layers`` counts the additions.
    """

    def __init__(self, n_experts: int = 0):
        self.n_experts = n_experts
        self.bias = None
        self.recording = False
        self.clear()

    def clear(self) -> None:
        """Forget the sums of the last forward pass."""
        self.weight_sum = None
        self.pick_sum = None
        self.layers = 0

    def observe(self, members, weights) -> None:
        """Add one layer's weights ``[batch, T, n]`` over its ``members`` (global indices)."""
        if not self.recording:
            return
        full = weights.new_zeros((*weights.shape[:-1], self.n_experts))
        full[..., members] = weights.detach()
        picks = (full > 0).to(full.dtype)
        if self.weight_sum is None or self.weight_sum.shape != full.shape:
            self.weight_sum, self.pick_sum = full, picks
        else:
            self.weight_sum += full
            self.pick_sum += picks
        self.layers += 1


def _mixture_linear_class():
    import torch
    from torch import nn
    from torch.nn import functional as F

    class MixtureLoraLinear(nn.Module):
        """``W h`` plus the top-k gated sum of N LoRA experts' deltas (see module doc)."""

        def __init__(self, base: nn.Linear, state: RoutingState, top_k: int):
            super().__init__()
            self.base = base
            self.state = state
            self.top_k = top_k
            self.rank = 0
            self.set_experts([], [], [])

        def set_experts(self, members: list[int], loras: list, gates: list) -> None:
            """Install experts ``members`` (global indices) with their LoRA parts and gates."""
            weight = self.base.weight
            members = torch.tensor(members, dtype=torch.long, device=weight.device)
            self.rank = max((part.A.shape[0] for part in loras), default=0)
            d_in, d_out, r = self.base.in_features, self.base.out_features, self.rank
            A = weight.new_zeros((len(loras), r, d_in))
            B = weight.new_zeros((len(loras), r, d_out))
            for i, part in enumerate(loras):  # ranks zero-padded: padding adds nothing
                A[i, : part.A.shape[0]] = part.A.to(weight)
                B[i, : part.A.shape[0]] = part.B.T.to(weight)
            keys = torch.stack([g.to(weight) for g in gates]) if gates else A.new_zeros((0, d_in))
            buffers = {
                "members": members,
                "A": A.reshape(-1, d_in),
                "B": B.reshape(-1, d_out),
                "scaling": weight.new_tensor([part.scaling for part in loras]),
                # LN(v_i)/sqrt(d_in), precomputed once: the per-token work is one matmul.
                "keys": F.layer_norm(keys, (d_in,)) / math.sqrt(d_in),
            }
            for name, tensor in buffers.items():  # buffers: counted in memory, moved by .to()
                self.register_buffer(name, tensor, persistent=False)

        def routing_weights(self, h: torch.Tensor) -> torch.Tensor:
            """Top-k renormalised weights ``[batch, T, n]`` over this layer's experts."""
            logits = F.layer_norm(h, (h.shape[-1],)) @ self.keys.T
            bias = self.state.bias
            if bias is not None:
                if bias.shape[-1] != len(self.members):  # this module has a subset of experts
                    bias = bias[:, self.members]
                logits = logits + bias.to(logits).unsqueeze(1)
            return top_k_weights(logits, self.top_k)

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            out = self.base(h)
            n = len(self.members)
            if n == 0:
                return out
            weights = self.routing_weights(h)
            self.state.observe(self.members, weights)
            low = (h @ self.A.T).unflatten(-1, (n, self.rank))  # [batch, T, n, r]
            low = low * (weights * self.scaling).unsqueeze(-1)
            return out + low.flatten(-2) @ self.B

    return MixtureLoraLinear


def install_mixture_layers(model, names: list[str], state: RoutingState, top_k: int) -> dict:
    """Replace the linear modules ``names`` of ``model`` with (empty) mixture layers."""
    mixture_linear = _mixture_linear_class()
    layers = {}
    for name in names:
        layers[name] = mixture_linear(model.get_submodule(name), state, top_k)
        model.set_submodule(name, layers[name])
    return layers
