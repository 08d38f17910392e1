"""A gathered mixed-adapter LoRA forward (Punica / S-LoRA "BGMV" style) for peft models.

peft runs a batch whose rows use different adapters (``adapter_names``) by looping, in every
LoRA layer and at every decoding step, over the adapters present: one sub-batch slice and one
A/B matmul pair each. With many adapters that loop costs as much as separate batches. Here
each LoRA ``Linear`` keeps its adapters stacked, ``A[n+1, r, in]``, ``B[n+1, out, r]`` and
``scale[n+1]`` (index 0 is the null adapter, all zeros, for ``"__base__"`` rows; ranks are
zero-padded to the largest), so one gather and two batched matmuls serve every row at once:

    base_layer(x) + scale[idx] * bmm(bmm(x, A[idx]ᵀ), B[idx]ᵀ)

Only peft's ``_mixed_batch_forward`` is replaced, per module instance, so peft still does
everything else (argument checks, hooks, single-adapter batches). Modules it cannot serve
exactly (DoRA or other variants, LoRA bias, non-Linear LoRA layers) keep peft's own path.

    kernel = GatheredLoRA()
    kernel.prepare(peft_model)   # before a mixed generate: (re)builds stale stacks
    kernel.invalidate()          # after any adapter load or unload
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

BASE_ROW = "__base__"  # peft's name for "no adapter" in adapter_names


@dataclass
class LoRAStack:
    """One LoRA Linear's adapters, stacked along dim 0 in the kernel's adapter order."""

    a: Any  # [n+1, r, in]
    b: Any  # [n+1, out, r]
    scale: Any  # [n+1]


class GatheredLoRA:
    """Installs the gathered forward on a peft model's LoRA Linear modules and keeps their
    stacks in step with the loaded adapters."""

    def __init__(self):
        self._model = None  # the peft model the stacks were built for; None: stale
        self._order: dict[str, int] = {}  # adapter name → stack index (0 is the base)
        self._patched: list[tuple[Any, LoRAStack]] = []  # modules running ours, their stacks
        self._rows: tuple[list[str] | None, dict] = (None, {})  # last adapter_names → idx

    @property
    def patched_modules(self) -> int:
        """How many LoRA modules run the gathered forward (the rest run peft's)."""
        return len(self._patched)

    def memory_bytes(self) -> int:
        """Bytes of the stacks (copies of the adapters' LoRA weights)."""
        tensors = [t for _, stack in self._patched for t in (stack.a, stack.b, stack.scale)]
        return sum(t.numel() * t.element_size() for t in tensors)

    def invalidate(self) -> None:
        """Mark the stacks stale: the next :meth:`prepare` rebuilds them. Call it after
        every adapter load or unload (weights under an old name may have changed)."""
        self._remove()
        self._model = None

    def prepare(self, peft_model) -> None:
        """Build the stacks and patch the modules, unless already done for this model."""
        if self._model is peft_model:
            return
        self._remove()
        self._order = {name: i + 1 for i, name in enumerate(peft_model.peft_config)}
        for module in peft_model.modules():
            if supported(module):
                stack = build_stack(module, self._order)
                module._mixed_batch_forward = partial(self._forward, module, stack)
                self._patched.append((module, stack))
        self._model = peft_model

    def _remove(self) -> None:
        """Give every patched module back peft's own method (the class attribute)."""
        for module, _ in self._patched:
            module.__dict__.pop("_mixed_batch_forward", None)
        self._patched = []
        self._rows = (None, {})

    def _row_index(self, adapter_names: list[str], device) -> Any:
        """Stack index per row, as a tensor on ``device``. peft hands the same list object
        to every layer of one generate call, so it is converted once, not per layer."""
        import torch

        names, by_device = self._rows
        if names is not adapter_names:
            by_device = {}
            self._rows = (adapter_names, by_device)
        if device not in by_device:
            idx = [0 if n == BASE_ROW else self._order.get(n, 0) for n in adapter_names]
            by_device[device] = torch.tensor(idx, dtype=torch.long, device=device)
        return by_device[device]

    def _forward(self, module, stack: LoRAStack, x, *args, adapter_names, **kwargs):
        """The replacement for ``module._mixed_batch_forward``."""
        from peft.tuners.lora.layer import VARIANT_KWARG_KEYS

        for key in VARIANT_KWARG_KEYS:  # peft's variant options are not the base layer's
            kwargs.pop(key, None)
        result = module.base_layer(x, *args, **kwargs)
        idx = self._row_index(adapter_names, stack.a.device)
        return result + gathered_delta(x, idx, stack).reshape(result.shape).to(result)


def gathered_delta(x, idx, stack: LoRAStack):
    """``scale[idx] * (x A[idx]ᵀ) B[idx]ᵀ`` for every row at once; x is [rows, ..., in]."""
    import torch

    rows = x.shape[0]
    x = x.reshape(rows, -1, x.shape[-1]).to(device=stack.a.device, dtype=stack.a.dtype)
    shrunk = torch.bmm(x, stack.a[idx].transpose(1, 2))  # [rows, T, r]
    shrunk = shrunk * stack.scale[idx].view(rows, 1, 1)
    return torch.bmm(shrunk, stack.b[idx].transpose(1, 2))  # [rows, T, out]


def supported(module) -> bool:
    """Whether the gathered forward computes exactly what peft would for this module:
    a plain LoRA Linear (no DoRA or other variant, no LoRA bias) holding an adapter."""
    import torch
    from peft.tuners.lora.layer import Linear

    if type(module) is not Linear or not module.lora_A or module.lora_variant:
        return False
    if any(module.use_dora.get(name, False) for name in module.lora_A):
        return False
    return all(
        isinstance(module.lora_A[name], torch.nn.Linear)
        and isinstance(module.lora_B[name], torch.nn.Linear)
        and module.lora_B[name].bias is None
        and module.lora_A[name].bias is None
        for name in module.lora_A
    )


def build_stack(module, order: dict[str, int]) -> LoRAStack:
    """Stack ``module``'s adapters in ``order``; absent adapters and index 0 stay zero."""
    import torch

    names = list(module.lora_A)
    first = module.lora_A[names[0]].weight
    rank = max(module.lora_A[name].weight.shape[0] for name in names)
    size_in = first.shape[1]
    size_out = module.lora_B[names[0]].weight.shape[0]
    slots = len(order) + 1
    with torch.no_grad():
        a = torch.zeros(slots, rank, size_in, dtype=first.dtype, device=first.device)
        b = torch.zeros(slots, size_out, rank, dtype=first.dtype, device=first.device)
        scale = torch.zeros(slots, dtype=first.dtype, device=first.device)
        for name in names:
            if name not in order:
                continue
            i, r = order[name], module.lora_A[name].weight.shape[0]
            a[i, :r] = module.lora_A[name].weight
            b[i, :, :r] = module.lora_B[name].weight.to(first.dtype)
            scale[i] = module.scaling[name]
    return LoRAStack(a, b, scale)
