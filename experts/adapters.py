"""LoRA adapter compatibility: is an adapter made for the model we have loaded?

Checked from the adapter's ``adapter_config.json`` alone, before any weights are read.
"""

from __future__ import annotations

import json
from pathlib import Path

from experts.errors import ExpertError, IncompatibleAdapterError
from experts.spec import is_local_path


def adapter_base(adapter: str) -> str | None:
    """``base_model_name_or_path`` from the adapter's config (local dir or HF id)."""
    if is_local_path(adapter):
        config_file = Path(adapter).expanduser() / "adapter_config.json"
        if not config_file.exists():
            raise ExpertError(f"adapter {adapter!r}: no adapter_config.json")
        try:
            return json.loads(config_file.read_text()).get("base_model_name_or_path")
        except json.JSONDecodeError as err:
            raise ExpertError(f"adapter {adapter!r}: bad adapter_config.json: {err}") from None
    from peft import PeftConfig

    try:
        return PeftConfig.from_pretrained(adapter).base_model_name_or_path
    except (OSError, ValueError) as err:
        raise ExpertError(f"adapter {adapter!r}: cannot read its config: {err}") from None


def same_model(a: str, b: str) -> bool:
    """Whether two model references name the same model.

    Paths compare resolved. A path and an HF id ``org/name`` match when the path ends in
    ``org/name`` or ``name``, or is an HF cache snapshot of it (``models--org--name``).
    """
    a_local, b_local = is_local_path(a), is_local_path(b)
    if a_local and b_local:
        return _resolve(a) == _resolve(b)
    if not a_local and not b_local:
        return a.strip("/").lower() == b.strip("/").lower()
    path, hub_id = (_resolve(a), b) if a_local else (_resolve(b), a)
    hub_id = hub_id.strip("/").lower()
    parts = [part.lower() for part in path.parts]
    cache_name = "models--" + hub_id.replace("/", "--")
    return (
        "/".join(parts[-2:]) == hub_id
        or parts[-1] == hub_id.rsplit("/", 1)[-1]
        or cache_name in parts
    )


def check_adapter_base(adapter: str, model: str) -> None:
    """Raise :class:`IncompatibleAdapterError` when ``adapter`` was made for another base
    than ``model``. An adapter that does not name its base is accepted."""
    base = adapter_base(adapter)
    if base and not same_model(base, model):
        raise IncompatibleAdapterError(
            f"adapter {adapter!r} is for base {base!r}, not the loaded {model!r}"
        )


def check_adapter_rank(path: str, max_rank: int) -> None:
    """Refuse a LoRA adapter whose rank (the largest, with ``rank_pattern``) is above
    ``max_rank``. Only local adapters are read (a hub adapter is checked by vLLM)."""
    config_file = Path(path).expanduser() / "adapter_config.json"
    if not is_local_path(path) or not config_file.exists():
        return
    config = json.loads(config_file.read_text())
    rank = max([int(config.get("r", 0)), *map(int, (config.get("rank_pattern") or {}).values())])
    if rank > max_rank:
        raise ExpertError(f"adapter {path!r} has rank {rank}, above this pool's max_lora_rank "
                          f"of {max_rank}")


def _resolve(ref: str) -> Path:
    return Path(ref).expanduser().resolve()
