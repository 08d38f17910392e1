"""LoRA batching: 8 adapters on one base, 64 prompts mixed across them, four ways.

``--engine hf`` (default here; the GPU check runs it):

- mixed:        one batch of 64 rows, each row with its own adapter, through the gathered
                LoRA kernel (``experts/gathered_lora.py``, the engine's default)
- mixed_peft:   the same batch through peft's own mixed path (a loop over the adapters)
- per_adapter:  one batch per adapter (8 batches of 8)
- single:       one prompt at a time (64 calls)

``--engine vllm``: the same workload on one vLLM engine (``max_loras`` 8): mixed is all 64
requests submitted at once (one continuous batch, adapters mixed by vLLM's LoRA kernels),
per_adapter 8 rounds of 8, single one request at a time; there is no mixed_peft.

Greedy decoding, a fixed number of new tokens; best of ``--repeats`` runs per mode (the
machine may be shared). Prints a table; ``--json FILE`` writes the figures, the goal's
ratio under the top-level key ``mixed_vs_per_adapter`` and the kernel's gain under
``gathered_vs_peft_mixed``. The outputs must be the same in every mode.

    .venv/bin/python bench/lora_batching.py --json lora.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ADAPTERS = 8
PROMPTS = 64
# mode → (the engine's lora_kernel, how the workload is batched)
MODES = {
    "mixed": ("gathered", "mixed"),
    "mixed_peft": ("peft", "mixed"),
    "per_adapter": ("gathered", "per_adapter"),
    "single": ("gathered", "single"),
}


def build_models(root: Path, hidden: int, layers: int) -> tuple[Path, list[Path]]:
    """A tiny base bigger than the test one, and ``ADAPTERS`` random LoRA adapters on it."""
    from experts.demo import tokenizer_texts
    from experts.tiny import add_random_lora, build_tiny_lm

    base = build_tiny_lm(
        root / "base", tokenizer_texts(), hidden_size=hidden, layers=layers, heads=8, init_std=0.2
    )
    adapters = [
        add_random_lora(base, root / f"lora-{n}", seed=n, scale=0.3) for n in range(ADAPTERS)
    ]
    return base, adapters


def workload() -> tuple[list[str], list[str]]:
    """64 questions and, per question, the adapter that answers it (round robin)."""
    from experts.demo import tokenizer_texts

    texts = tokenizer_texts()
    prompts = [texts[i % len(texts)] for i in range(PROMPTS)]
    return prompts, [f"lora-{i % ADAPTERS}" for i in range(PROMPTS)]


def run_mode(engine, batching: str, prompts, names, params) -> tuple[float, list]:
    """Seconds and outputs (in prompt order) of one way of batching the workload."""
    start = time.perf_counter()
    if batching == "mixed":
        outputs = engine.generate(prompts, params, names)
    elif batching == "per_adapter":
        outputs = [None] * len(prompts)
        for adapter in sorted(set(names)):
            rows = [i for i, name in enumerate(names) if name == adapter]
            batch = engine.generate([prompts[i] for i in rows], params, [adapter] * len(rows))
            for i, out in zip(rows, batch, strict=True):
                outputs[i] = out
    else:
        outputs = [
            engine.generate([p], params, [n])[0] for p, n in zip(prompts, names, strict=True)
        ]
    return time.perf_counter() - start, outputs


def modes(engine: str) -> dict:
    """The modes measured on ``engine``: mode → (engine key, batching)."""
    if engine == "vllm":
        return {mode: ("vllm", batching) for mode, (kernel, batching) in MODES.items()
                if kernel == "gathered"}
    return MODES


def load_engines(base: Path, adapters: list[Path], args, params) -> dict:
    """The engines the modes need (one per HF LoRA kernel, or one vLLM engine), each
    holding every adapter, warmed up."""
    prompts, names = workload()
    engines = {}
    for key in sorted({key for key, _ in modes(args.engine).values()}):
        if key == "vllm":
            from experts.vllm_engine import VLLMEngine

            engine = VLLMEngine(str(base), max_loras=ADAPTERS, max_lora_rank=8)
        else:
            from experts.hf_engine import HFEngine

            engine = HFEngine(str(base), device=args.device, lora_kernel=key)
        engines[key] = engine
        for path in adapters:
            engine.load_adapter(path.name, str(path))
        engine.generate(prompts[:ADAPTERS], params, names[:ADAPTERS])
    return engines


def measure(args) -> dict:
    import torch

    from experts.engine import GenerationParams

    torch.set_num_threads(args.threads)
    params = GenerationParams(max_tokens=args.new_tokens)
    prompts, names = workload()
    best: dict[str, float] = {}
    outputs: dict[str, list] = {}
    with tempfile.TemporaryDirectory(prefix="lora-bench-") as tmp:
        base, adapters = build_models(Path(tmp), args.hidden, args.layers)
        engines = load_engines(base, adapters, args, params)
        for _ in range(args.repeats):
            for mode, (kernel, batching) in modes(args.engine).items():
                seconds, outputs[mode] = run_mode(engines[kernel], batching, prompts, names, params)
                best[mode] = min(best.get(mode, seconds), seconds)
        for engine in engines.values():
            engine.close()
    return summarise(args, best, outputs)


def summarise(args, best: dict[str, float], outputs: dict[str, list]) -> dict:
    tokens = {mode: sum(o.completion_tokens for o in outs) for mode, outs in outputs.items()}
    rate = {mode: tokens[mode] / best[mode] for mode in best}
    texts = {mode: [o.text for o in outs] for mode, outs in outputs.items()}
    return {
        "mixed_vs_per_adapter": rate["mixed"] / rate["per_adapter"],
        "gathered_vs_peft_mixed": (rate["mixed"] / rate["mixed_peft"]
                                   if "mixed_peft" in rate else None),
        "mixed_vs_single": rate["mixed"] / rate["single"],
        "per_adapter_vs_single": rate["per_adapter"] / rate["single"],
        "tokens_per_s": rate,
        "seconds": best,
        "tokens": tokens,
        "outputs_match": all(texts[mode] == texts["single"] for mode in texts),
        "setup": {
            "engine": args.engine,
            "adapters": ADAPTERS,
            "prompts": PROMPTS,
            "new_tokens": args.new_tokens,
            "hidden": args.hidden,
            "layers": args.layers,
            "threads": args.threads,
            "device": args.device or "auto",
            "repeats": args.repeats,
        },
    }


def print_table(figures: dict) -> None:
    print(f"engine: {figures['setup']['engine']}")
    print(f"{'mode':<12} {'seconds':>8} {'tokens':>7} {'tokens/s':>9}")
    for mode in figures["seconds"]:
        print(
            f"{mode:<12} {figures['seconds'][mode]:>8.3f} {figures['tokens'][mode]:>7} "
            f"{figures['tokens_per_s'][mode]:>9.1f}"
        )
    print(f"mixed / per_adapter: {figures['mixed_vs_per_adapter']:.2f}x   (goal >= 3x)")
    if figures["gathered_vs_peft_mixed"] is not None:
        print(f"mixed / mixed_peft:  {figures['gathered_vs_peft_mixed']:.2f}x   (gathered kernel)")
    print(f"mixed / single:      {figures['mixed_vs_single']:.2f}x")
    print(f"outputs identical across modes (greedy): {figures['outputs_match']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", dest="json_file", help="Write the figures to this file.")
    parser.add_argument("--engine", choices=("hf", "vllm"), default="hf",
                        help="Generation engine to measure.")
    parser.add_argument("--new-tokens", type=int, default=16, help="Tokens generated per prompt.")
    parser.add_argument("--hidden", type=int, default=256, help="Hidden size of the base.")
    parser.add_argument("--layers", type=int, default=4, help="Layers of the base.")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads.")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present).")
    parser.add_argument("--repeats", type=int, default=2, help="Runs per mode; the best counts.")
    args = parser.parse_args()
    figures = measure(args)
    print_table(figures)
    if args.json_file:
        Path(args.json_file).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
