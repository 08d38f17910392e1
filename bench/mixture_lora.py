"""GLIDER local mixture: decoding speed of the base alone, one LoRA adapter (peft), and a
mixture of 8 LoRA experts with top-2 routing, on the same prompts.

A tiny Llama-architecture model big enough for compute to matter (hidden 256, 4 layers) is
built offline with EOS disabled, so every run decodes exactly ``--new-tokens`` per row.
Peak memory is what loading a configuration and its first generation added at the peak
(RSS on CPU, ``torch.cuda.max_memory_allocated`` on GPU). Tokens/s is the best of
``--repeats`` runs, timed round-robin across configurations after a warm-up. Prints a table;
``--json FILE`` writes the figures.

    .venv/bin/python bench/mixture_lora.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

CONFIGS = ("base", "single_adapter", "mixture_8_k2")
PROMPTS = [
    "the quick brown fox",
    "what is the derivative of x squared",
    "def add(a, b):",
    "the patient presents with",
    "the contract is void if",
    "1 + 2 = 3 and 7 * 6 =",
    "once upon a time",
    "explain the theory of",
]


def build(root: Path, experts: int, hidden: int, layers: int) -> dict:
    """The base model and ``experts`` random LoRA adapters with random gates."""
    import torch
    from transformers import AutoConfig, GenerationConfig

    from experts.gates import save_gates
    from experts.lora_weights import load_lora
    from experts.tiny import add_random_lora, build_tiny_lm

    base = build_tiny_lm(root / "base", PROMPTS * 10, hidden_size=hidden, layers=layers, heads=4)
    for config in (AutoConfig.from_pretrained(base), GenerationConfig.from_pretrained(base)):
        config.eos_token_id = None  # decode every requested token
        config.save_pretrained(base)
    adapters = []
    for index in range(experts):
        path = add_random_lora(base, root / f"expert{index}", seed=index + 1, scale=0.05)
        generator = torch.Generator().manual_seed(index)
        gates = {
            name: torch.randn(part.A.shape[1], generator=generator)
            for name, part in load_lora(path).modules.items()
        }
        save_gates(path, gates)
        adapters.append(path)
    return {"base": base, "adapters": adapters}


def make_engine(config: str, paths: dict, device: str | None):
    """The engine for ``config`` and the keyword arguments its generate call takes."""
    import numpy as np

    from experts.hf_engine import HFEngine
    from experts.mixture_engine import MixtureEngine, MixtureMember

    if config == "mixture_8_k2":
        rng = np.random.default_rng(0)
        members = [
            MixtureMember(f"expert{i}", path, None, rng.normal(size=32))
            for i, path in enumerate(paths["adapters"])
        ]
        engine = MixtureEngine(paths["base"], members, alpha=3.0, top_k=2, device=device)
        return engine, {"embeddings": rng.normal(size=(len(PROMPTS), 32))}
    engine = HFEngine(str(paths["base"]), device=device)
    if config == "base":
        return engine, {}
    engine.load_adapter("expert0", str(paths["adapters"][0]))
    return engine, {"adapters": ["expert0"] * len(PROMPTS)}


class PeakMemory:
    """Extra memory a block of work needed at its peak, above what was resident before it.

    GPU: ``torch.cuda.max_memory_allocated``. CPU (Linux): peak RSS (``VmHWM``), reset by
    writing 5 to ``/proc/self/clear_refs``."""

    def __enter__(self):
        import torch

        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")
            self.before = _proc_status("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        import torch

        peak = torch.cuda.max_memory_allocated() if self.cuda else _proc_status("VmHWM")
        self.mb = round((peak - self.before) / 2**20, 1)


def _proc_status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(paths: dict, new_tokens: int, repeats: int, device: str | None) -> dict:
    """Load every configuration (noting its peak memory), then time them round-robin so
    that a busy machine slows all of them alike; tokens/s is each one's best run."""
    from experts.engine import GenerationParams

    params = GenerationParams(max_tokens=new_tokens)
    engine, kwargs = make_engine("base", paths, device)  # one-time costs land on no config
    engine.generate(PROMPTS, params, **kwargs)
    engine.close()
    loaded, runs = {}, {}
    for config in CONFIGS:
        with PeakMemory() as memory:
            engine, kwargs = make_engine(config, paths, device)
            engine.generate(PROMPTS, params, **kwargs)  # warm-up
        loaded[config] = (engine, kwargs)
        runs[config] = {"peak_memory_mb": memory.mb, "weights_mb": engine.memory_bytes() / 2**20}
    best = dict.fromkeys(CONFIGS, float("inf"))
    for _ in range(repeats):
        for config, (engine, kwargs) in loaded.items():
            started = time.perf_counter()
            engine.generate(PROMPTS, params, **kwargs)
            best[config] = min(best[config], time.perf_counter() - started)
    for config in CONFIGS:
        runs[config]["tokens_per_s"] = round(len(PROMPTS) * new_tokens / best[config], 1)
        runs[config]["weights_mb"] = round(runs[config]["weights_mb"], 2)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if any)")
    parser.add_argument("--json", dest="json_path", help="Write the figures here.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-mixture-") as root:
        paths = build(Path(root), args.experts, args.hidden, args.layers)
        runs = measure(paths, args.new_tokens, args.repeats, args.device)
    speed = {config: run["tokens_per_s"] for config, run in runs.items()}
    figures = {
        "mixture_vs_single_adapter": round(speed["mixture_8_k2"] / speed["single_adapter"], 3),
        "mixture_vs_base": round(speed["mixture_8_k2"] / speed["base"], 3),
        "single_adapter_vs_base": round(speed["single_adapter"] / speed["base"], 3),
        "peak_memory_mb": runs["mixture_8_k2"]["peak_memory_mb"],
        "runs": runs,
        "setup": {**vars(args), "rows": len(PROMPTS), "json_path": None},
    }
    print(f"{'config':<16}{'tokens/s':>10}{'vs base':>9}{'peak MB':>10}{'weights MB':>12}")
    for config, run in runs.items():
        ratio = run["tokens_per_s"] / speed["base"]
        print(
            f"{config:<16}{run['tokens_per_s']:>10.1f}{ratio:>9.2f}"
            f"{run['peak_memory_mb']:>10.1f}{run['weights_mb']:>12.2f}"
        )
    print(f"mixture / single adapter throughput: {figures['mixture_vs_single_adapter']:.3f}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
