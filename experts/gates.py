"""PHATGOOSE gates: a learned, per-module gate vector for a trained LoRA expert.

For each module the adapter adapts, the base and the adapter stay frozen and one vector
``v`` (size ``d_in``) is added so the module computes

    W u + sigmoid(vᵀu) · scaling · B A u

Only the gates are trained, on the expert's own examples, with the LM loss. ``v`` starts at
zero, as in PHATGOOSE: at initialisation every token gets ``sigmoid(0) = 0.5``, i.e. the
adapter at half strength, the same for all tokens, so training starts from the plain adapter's
direction with no token preference. Training then raises the gate where the adapter helps;
the mixture layer (:mod:`experts.mixture`) reuses ``v`` as the expert's routing key.

Gates are saved next to the adapter as ``gates.safetensors`` (keys: base module names).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from experts.errors import ExpertError, IncompatibleAdapterError
from experts.lora_weights import LoraModule, LoraWeights, linear_modules, load_lora

GATES_FILE = "gates.safetensors"
DEFAULT_STEPS = 100
DEFAULT_LR = 5e-3


def _gated_linear_class():
    import torch
    from torch import nn
    from torch.nn import functional as F

    class GatedLoraLinear(nn.Module):
        """``W u + sigmoid(vᵀu) · scaling · B A u``; ``W``, ``A``, ``B`` frozen, ``v`` trained."""

        def __init__(self, base: nn.Linear, lora: LoraModule):
            super().__init__()
            self.base = base
            self.register_buffer("lora_A", lora.A.to(base.weight.dtype))
            self.register_buffer("lora_B", lora.B.to(base.weight.dtype))
            self.scaling = lora.scaling
            self.gate = nn.Parameter(torch.zeros(base.in_features, dtype=base.weight.dtype))

        def gate_values(self, u: torch.Tensor) -> torch.Tensor:
            """``sigmoid(vᵀu)`` per token: shape ``u.shape[:-1]``."""
            return torch.sigmoid(u @ self.gate)

        def forward(self, u: torch.Tensor) -> torch.Tensor:
            delta = F.linear(F.linear(u, self.lora_A), self.lora_B) * self.scaling
            return self.base(u) + self.gate_values(u).unsqueeze(-1) * delta

    return GatedLoraLinear


def install_gates(model, lora: LoraWeights) -> dict[str, object]:
    """Replace each module ``lora`` adapts with a gated LoRA module (gates at zero).

    Freezes every parameter of ``model`` except the new gates. Returns the modules by name.
    """
    gated_linear = _gated_linear_class()
    for param in model.parameters():
        param.requires_grad_(False)
    gated = {}
    for name, linear in linear_modules(model, lora).items():
        gated[name] = gated_linear(linear, lora.modules[name])
        model.set_submodule(name, gated[name])
    return gated


def train_gates(
    base_path: str | Path,
    adapter_path: str | Path,
    texts: Sequence[str],
    *,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    batch_size: int = 8,
    seed: int = 0,
) -> dict[str, object]:
    """Train PHATGOOSE gates for the adapter at ``adapter_path`` on ``texts``.

    Returns ``{module name: v}`` (float32 tensors); :func:`save_gates` writes them.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from experts.lm_training import train_lm

    lora = load_lora(adapter_path)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    gated = install_gates(model, lora)
    gates = [module.gate for module in gated.values()]
    train_lm(model, gates, tokenizer, texts, steps=steps, lr=lr, batch_size=batch_size, seed=seed)
    return {name: module.gate.detach().clone() for name, module in gated.items()}


def gates_path(adapter_path: str | Path) -> Path:
    """Where the gates of the adapter at ``adapter_path`` live (a ``.safetensors`` path is
    taken as the gates file itself)."""
    path = Path(adapter_path).expanduser()
    return path if path.suffix == ".safetensors" else path / GATES_FILE


def save_gates(
    adapter_path: str | Path, gates: dict[str, object], steps: int | None = None
) -> Path:
    """Write ``gates`` next to the adapter; returns the file."""
    from safetensors.torch import save_file

    if not gates:
        raise ExpertError(f"{adapter_path}: no gates to save")
    path = gates_path(adapter_path)
    tensors = {name: vector.detach().float().contiguous() for name, vector in gates.items()}
    metadata = {"format": "phatgoose-gates", "steps": str(steps if steps is not None else "")}
    save_file(tensors, str(path), metadata=metadata)
    return path


def load_gates(adapter_path: str | Path, lora: LoraWeights | None = None) -> dict[str, object]:
    """The gates saved next to the adapter; checked against ``lora``'s modules when given."""
    from safetensors.torch import load_file

    path = gates_path(adapter_path)
    if not path.exists():
        raise ExpertError(
            f"{adapter_path}: no trained gates ({GATES_FILE}); "
            "train them with `conclave experts train-gates EXPERT_ID --data examples.jsonl`"
        )
    gates = load_file(str(path))
    if lora is not None:
        check_gates(gates, lora)
    return gates


def check_gates(gates: dict[str, object], lora: LoraWeights) -> None:
    """Raise unless ``gates`` has one vector of size ``d_in`` per module ``lora`` adapts."""
    missing = sorted(set(lora.modules) - set(gates))
    if missing:
        raise IncompatibleAdapterError(f"{lora.path}: gates missing for modules {missing[:3]}")
    for name, part in lora.modules.items():
        if tuple(gates[name].shape) != (part.A.shape[1],):
            raise IncompatibleAdapterError(
                f"{lora.path}: gate for {name!r} has shape {tuple(gates[name].shape)}, "
                f"expected ({part.A.shape[1]},)"
            )
