"""Conclave against bare vLLM and Ray Serve LLM: one random-weight Llama base (about 100M
parameters, ``small``; or the demo-size ``tiny``) with 8 random LoRA adapters, served three
ways, one at a time, each started here and stopped after:

- ``vllm``: vLLM's own OpenAI server with ``--enable-lora --lora-modules`` (8 adapters);
- ``ray``: Ray Serve LLM (``build_openai_app``), base model only: its multi-LoRA loads
  adapters from s3/gs/azure folders only, never a local one;
- ``conclave``: the base and 8 LoRA experts with ``engine: vllm`` on one pool, asked two
  ways: each adapter directly (``direct``: model = expert id) and routed (``k1``: model
  ``conclave:k=1``, the router picking the adapter).

    python bench/vs_vllm.py [--json FILE] [--size small|tiny|both] [--requests 400]
                            [--concurrency 32] [--max-tokens 16] [--passes 2]

The same requests (MMLU-Pro questions of 8 domains, one adapter per domain) go to every
system, streamed through the stock ``openai`` async client. They are sent in ``--passes``
slices; the systems take turns per slice, the order flipping each pass (vllm, ray,
conclave, conclave, ray, vllm: ABBA), each system restarted for its slice (start-up not
timed), so load from other jobs drifting during the run weighs on all alike. Within a
Conclave slice the two modes alternate too. Ray Serve LLM gets the base model (it has no
local adapters), so its figures are for base-only generation: compare it with bare vLLM's
``vllm-base`` row, measured the same way. Prints a table per base; ``--json`` writes
``throughput_ratio`` (Conclave k=1 routed / bare vLLM, tokens/s), ``vs_ray_serve_llm``
(Conclave on the base model / Ray Serve LLM, tokens/s), ``ttft_p50_overhead_ms`` (Conclave
k=1 minus bare vLLM), ``errors``, a breakdown (``routing_ttft_p50_ms``: k=1 minus direct)
and the per-mode figures; the tiny base's under ``tiny``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from vs_vllm_load import Sample, models_for, send
from vs_vllm_models import Bundle, build_bundle
from vs_vllm_servers import BASE_NAME, bare_vllm, conclave, ray_serve_llm

# mode -> (system, model string for an adapter name)
MODES = {
    "vllm": ("vllm", lambda adapter: adapter),
    "vllm-base": ("vllm", lambda adapter: BASE_NAME),
    "ray-base": ("ray", lambda adapter: BASE_NAME),
    "conclave-direct": ("conclave", lambda adapter: adapter),
    "conclave-k1": ("conclave", lambda adapter: "conclave:k=1"),
    "conclave-base": ("conclave", lambda adapter: BASE_NAME),
}
SYSTEMS = ("conclave", "vllm", "ray")


def engine_environment(threads: int) -> None:
    """The CPU environment every engine runs under (set before any of them starts, so
    subprocesses and Ray workers inherit it)."""
    os.environ.update(VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
                      VLLM_CPU_OMP_THREADS_BIND="nobind", OMP_NUM_THREADS=str(threads),
                      HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                      TOKENIZERS_PARALLELISM="false", RAY_USAGE_STATS_ENABLED="0")


def start(system: str, bundle: Bundle, args):
    if system == "vllm":
        return bare_vllm(bundle, args.log_dir / f"vllm-{bundle.size}.log")
    if system == "ray":
        return ray_serve_llm(bundle, args.ray_cpus)
    return conclave(bundle, args.ray_cpus)


def run_size(bundle: Bundle, args) -> dict[str, Sample]:
    """Every mode of every system over all requests, in ABBA order of slices."""
    modes = [m for m in MODES if MODES[m][0] in args.systems]
    samples = {m: Sample() for m in modes}
    count = token_counter(bundle.base)
    size = -(-len(bundle.requests) // args.passes)
    for p in range(args.passes):
        part = bundle.requests[p * size:(p + 1) * size]
        for system in args.systems if p % 2 == 0 else args.systems[::-1]:
            mine = [m for m in modes if MODES[m][0] == system]
            mine = mine if p % 2 == 0 else mine[::-1]
            try:
                run_system(system, mine, bundle, part, count, samples, args, p)
            except Exception as err:  # noqa: BLE001 -- a system that fails counts as errors
                print(f"[{bundle.size}] pass {p + 1}: {system} failed: {err!r}", flush=True)
                for mode in mine:
                    samples[mode].errors += len(part)
                    samples[mode].error_texts.append(f"{system} failed: {err!r}"[:300])
    return samples


def run_system(system: str, modes: list[str], bundle: Bundle, part, count, samples, args,
               p: int) -> None:
    """Start ``system``, send ``part`` to each of its ``modes`` (after a warm-up of one
    request per adapter, not among the requests), stop it."""
    warmup = [(a.examples[0], a.name) for a in bundle.adapters]
    started = time.perf_counter()
    with start(system, bundle, args) as url:
        print(f"[{bundle.size}] pass {p + 1}: {system} up in "
              f"{time.perf_counter() - started:.0f}s", flush=True)
        for mode in modes:
            model = MODES[mode][1]
            send(url, models_for(warmup, model), len(warmup), args.max_tokens, count)
            sample = send(url, models_for(part, model), args.concurrency, args.max_tokens,
                          count)
            print(f"  {mode}: {sample.summary()['tokens_per_s']:.1f} tok/s, "
                  f"{sample.errors} errors", flush=True)
            samples[mode].add(sample)


def token_counter(base: Path):
    """Tokens in a text, by the base model's tokenizer (the same count for every system)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    return lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)


def figures(samples: dict[str, Sample]) -> dict:
    """The headline ratios (where both sides were measured) and the per-mode figures."""
    s = {m: x.summary() for m, x in samples.items()}
    out: dict = {"errors": sum(x["errors"] for x in s.values()), "modes": s}

    def ratio(a: str, b: str) -> float | None:
        both = a in s and b in s and s[b]["tokens_per_s"]
        return s[a]["tokens_per_s"] / s[b]["tokens_per_s"] if both else None

    def diff(a: str, b: str, key: str) -> float | None:
        return s[a][key] - s[b][key] if a in s and b in s else None

    out["throughput_ratio"] = ratio("conclave-k1", "vllm")
    out["throughput_ratio_direct"] = ratio("conclave-direct", "vllm")
    out["vs_ray_serve_llm"] = ratio("conclave-base", "ray-base")
    out["ray_serve_llm_vs_vllm_base"] = ratio("ray-base", "vllm-base")
    out["ttft_p50_overhead_ms"] = diff("conclave-k1", "vllm", "ttft_p50_ms")
    out["breakdown_ms"] = {
        "direct_ttft_p50_over_vllm": diff("conclave-direct", "vllm", "ttft_p50_ms"),
        "routing_ttft_p50_ms": diff("conclave-k1", "conclave-direct", "ttft_p50_ms"),
        "base_ttft_p50_over_vllm_base": diff("conclave-base", "vllm-base", "ttft_p50_ms"),
        "ray_ttft_p50_over_vllm_base": diff("ray-base", "vllm-base", "ttft_p50_ms"),
    }
    return out


def table(size: str, out: dict, args) -> str:
    lines = [f"\n{size} base: {out['requests']} requests per mode, concurrency "
             f"{args.concurrency}, max_tokens {args.max_tokens}, {args.passes} passes ABBA",
             f"{'MODE':<16} {'REQ/S':>7} {'TOK/S':>8} {'TTFT P50':>9} {'TTFT P99':>9} "
             f"{'LAT P50':>9} {'LAT P99':>9} {'ERRORS':>6}"]
    for mode, r in out["modes"].items():
        lines.append(f"{mode:<16} {r['rps']:>7.2f} {r['tokens_per_s']:>8.1f} "
                     f"{r['ttft_p50_ms']:>9.0f} {r['ttft_p99_ms']:>9.0f} "
                     f"{r['latency_p50_ms']:>9.0f} {r['latency_p99_ms']:>9.0f} "
                     f"{r['errors']:>6}")
    lines.append(f"throughput_ratio (conclave k=1 / vllm): "
                 f"{show(out['throughput_ratio'], '.3f')} (goal >= 0.9); vs_ray_serve_llm "
                 f"(conclave base / ray base): {show(out['vs_ray_serve_llm'], '.3f')} "
                 f"(goal >= 1.0); ttft_p50_overhead_ms: "
                 f"{show(out['ttft_p50_overhead_ms'], '.1f')} (goal <= 20)")
    lines.append("breakdown (ms): " + ", ".join(
        f"{k} {show(v, '.1f')}" for k, v in out["breakdown_ms"].items()))
    return "\n".join(lines)


def show(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument("--size", choices=("small", "tiny", "both"), default="both")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--small-requests", type=int, default=None,
                        help="requests for the ~100M base (default: --requests); vLLM's CPU "
                        "LoRA path makes it slow")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--passes", type=int, default=2,
                        help="slices of the requests; the systems take turns, ABBA")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help="comma-separated subset of vllm,ray,conclave")
    parser.add_argument("--threads", type=int, default=1, help="OpenMP threads per engine")
    parser.add_argument("--ray-cpus", type=int, default=8,
                        help="logical CPUs of the local Ray (Serve's ingress and placement "
                        "groups need some; they are not cores)")
    args = parser.parse_args()
    args.systems = [s for s in args.systems.split(",") if s]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; valid: {', '.join(SYSTEMS)}")
    args.log_dir = Path(tempfile.mkdtemp(prefix="vs-vllm-"))
    return args


def main() -> None:
    args = parse_args()
    engine_environment(args.threads)
    sizes = ("small", "tiny") if args.size == "both" else (args.size,)
    results = {}
    for size in sizes:
        n = args.small_requests or args.requests if size == "small" else args.requests
        results[size] = figures(run_size(build_bundle(size, n), args))
        results[size]["requests"] = n
        print(table(size, results[size], args), flush=True)
        if args.json_path:  # after each base, so a long run keeps what it measured
            write_json(results, args)


def write_json(results: dict, args) -> None:
    """The ~100M base's figures at the top level, the tiny base's under ``tiny``."""
    doc = {**results.get("small", {}),
           **({"tiny": results["tiny"]} if "tiny" in results else {}),
           "concurrency": args.concurrency, "max_tokens": args.max_tokens,
           "passes": args.passes, "threads": args.threads, "ray_serve_llm_adapters": False}
    Path(args.json_path).write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
