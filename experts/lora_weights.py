"""A peft LoRA adapter read as plain tensors: per adapted module, ``(A, B, scaling)``.

The gate trainer and the mixture layer do their own module replacement, so they need the
adapter's matrices, not peft's wrapped model. Module names are the base model's own
(``model.layers.0.self_attn.q_proj``), as ``model.get_submodule`` takes them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from experts.errors import ExpertError, IncompatibleAdapterError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# peft saves keys as ``base_model.model.<module>.lora_A.weight``.
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<which>[AB])\.weight$")
_UNSUPPORTED = ("use_dora", "use_qalora", "fan_in_fan_out", "lora_bias")


@dataclass
class LoraModule:
    """One adapted linear layer: ``delta(u) = scaling · B A u``."""

    A: object  # torch.Tensor [r, d_in]
    B: object  # torch.Tensor [d_out, r]
    scaling: float


@dataclass
class LoraWeights:
    """A whole adapter: its folder and its adapted modules by name."""

    path: Path
    modules: dict[str, LoraModule]
    base_model: str | None = None


def read_adapter_config(path: str | Path) -> dict:
    """The adapter's ``adapter_config.json``; clear errors when it is not a LoRA adapter."""
    path = Path(path).expanduser()
    config_file = path / ADAPTER_CONFIG
    if not config_file.exists():
        raise ExpertError(f"{path}: no {ADAPTER_CONFIG}; not a peft adapter folder")
    config = json.loads(config_file.read_text())
    if config.get("peft_type") != "LORA":
        raise IncompatibleAdapterError(f"{path}: peft_type {config.get('peft_type')!r} is not LORA")
    for flag in _UNSUPPORTED:
        if config.get(flag):
            raise IncompatibleAdapterError(f"{path}: LoRA option {flag!r} is not supported here")
    return config


def _pattern_value(patterns: dict, module: str, default: float) -> float:
    # peft matches rank_pattern/alpha_pattern keys as module-name suffixes or regexes.
    for key, value in patterns.items():
        if module == key or module.endswith("." + key) or re.fullmatch(key, module):
            return value
    return default


def _scaling(config: dict, module: str, rank: int) -> float:
    alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config["lora_alpha"])
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def load_lora(path: str | Path) -> LoraWeights:
    """Read the adapter at ``path`` (a local peft folder) into plain float32 tensors."""
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    config = read_adapter_config(path)
    weights_file = path / ADAPTER_WEIGHTS
    if not weights_file.exists():
        raise ExpertError(f"{path}: no {ADAPTER_WEIGHTS}")
    parts: dict[str, dict[str, object]] = {}
    for key, tensor in load_file(weights_file).items():
        match = _KEY.match(key)
        if match is None:
            continue  # e.g. modules_to_save: not part of the low-rank delta
        parts.setdefault(match["module"], {})[match["which"]] = tensor.float()
    modules = {}
    for name, pair in sorted(parts.items()):
        if set(pair) != {"A", "B"}:
            raise IncompatibleAdapterError(f"{path}: module {name!r} lacks lora_A or lora_B")
        rank = pair["A"].shape[0]
        modules[name] = LoraModule(pair["A"], pair["B"], _scaling(config, name, rank))
    if not modules:
        raise IncompatibleAdapterError(f"{path}: no LoRA matrices in {ADAPTER_WEIGHTS}")
    return LoraWeights(path, modules, config.get("base_model_name_or_path"))


def linear_modules(model, lora: LoraWeights) -> dict[str, object]:
    """The base model's ``nn.Linear`` for each module the adapter adapts, shape-checked.

    A module already wrapped (gated or mixture layer, which keep the linear as ``.base``)
    counts as its base linear."""
    import torch

    found = {}
    for name in lora.modules:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise IncompatibleAdapterError(
                f"adapter {lora.path}: the base model has no module {name!r}"
            ) from None
        module = getattr(module, "base", module)
        if not isinstance(module, torch.nn.Linear):
            raise IncompatibleAdapterError(f"adapter {lora.path}: {name!r} is not a linear layer")
        check_shape(lora, name, module)
        found[name] = module
    return found


def check_shape(lora: LoraWeights, name: str, linear) -> None:
    """Raise when the adapter's matrices for ``name`` do not fit the base's ``linear``."""
    part = lora.modules[name]
    expected = (linear.out_features, linear.in_features)
    if (part.B.shape[0], part.A.shape[1]) != expected:
        raise IncompatibleAdapterError(
            f"adapter {lora.path}: {name!r} is {part.B.shape[0]}x{part.A.shape[1]}, "
            f"the base's is {expected[0]}x{expected[1]} (trained for another base?)"
        )
