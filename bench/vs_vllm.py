"""Conclave against bare vLLM and Ray Serve LLM: one base model with LoRA adapters, served
three ways, one at a time, each started here and stopped after. The base is a random-weight
Llama (about 100M parameters, ``small``; or the demo-size ``tiny``) with 8 random LoRA
adapters, or (``real``) the real model, SmolLM2-135M-Instruct, with the committed skill
adapters (``configs/adapters/<skill>``):

- ``vllm``: vLLM's own OpenAI server with ``--enable-lora --lora-modules`` (every adapter);
- ``ray``: Ray Serve LLM (``build_openai_app``), base model only: its multi-LoRA loads
  adapters from s3/gs/azure folders only, never a local one. Run twice: as shipped
  (``ray``: stream batching holds tokens up to 50 ms) and as a user who read ray #59681
  would (``ray-nobatch``: ``stream_batching_interval_ms: 0``);
- ``conclave``: the base and its LoRA experts with ``engine: vllm`` on one pool, asked two
  ways: each adapter directly (``direct``: model = expert id) and routed (``k1``: model
  ``conclave:k=1``, the router picking the adapter).
- ``conclave-nolora``: the base alone on a base-only pool (``engine_args: {enable_lora:
  false}``), asked directly (``nolora-base``): what a user serving no adapters gets.

    python bench/vs_vllm.py [--json FILE] [--size small|tiny|both|real] [--requests 400]
                            [--real-requests 160] [--concurrency 32] [--max-tokens 16]
                            [--passes 2] [--c1-requests 8]

The same requests go to every system, streamed through the stock ``openai`` async client:
MMLU-Pro questions of 8 domains, one adapter per domain (random bases); held-out items of
every skill, each with its own skill's adapter (``real``). They are sent in ``--passes``
slices; the systems take turns per slice, the order flipping each pass (vllm, ray,
ray-nobatch, conclave, then back: ABBA), each system restarted for its slice (start-up not
timed), so load from other jobs drifting during the run weighs on all alike. Within a
Conclave slice the modes alternate too. After each mode's load, ``--c1-requests`` of the
slice go one at a time (concurrency 1), where queueing does not hide a server's own
overhead. Ray Serve LLM gets the base model (it has no local adapters), so its figures are
for base-only generation: compare it with bare vLLM's ``vllm-base`` row, measured the same
way. Prints a table per base; ``--json`` writes ``throughput_ratio`` (Conclave k=1 routed /
bare vLLM, tokens/s), ``vs_ray_serve_llm`` and ``vs_ray_serve_llm_nobatch`` (Conclave on the
base model / Ray Serve LLM, tokens/s), ``ttft_p50_overhead_ms`` (Conclave k=1 minus bare
vLLM, under load), ``ttft_c1_ms`` (TTFT p50 of each mode at concurrency 1) and
``ttft_c1_overhead_ms`` (Conclave k=1 minus bare vLLM there), ``errors``, breakdowns
(``routing_ttft_p50_ms``: k=1 minus direct), ``cpu_ms_per_token`` (CPU spent under load per
output token, by process: engine, Serve replicas, proxy, client; :mod:`vs_vllm_cpu`),
``load_average_1m`` (the machine's, as each mode's slice began) and the per-mode figures; the ~100M base's at the top level, the tiny base's under ``tiny``, the
real model's under ``real``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from vs_vllm_cpu import cpu_by_role, per_token_ms, snapshot
from vs_vllm_load import Sample, models_for, send
from vs_vllm_models import Bundle, build_bundle, build_real_bundle
from vs_vllm_servers import BASE_NAME, bare_vllm, conclave, ray_serve_llm

# mode -> (system, model string for an adapter name)
MODES = {
    "vllm": ("vllm", lambda adapter: adapter),
    "vllm-base": ("vllm", lambda adapter: BASE_NAME),
    "ray-base": ("ray", lambda adapter: BASE_NAME),
    "ray-nobatch-base": ("ray-nobatch", lambda adapter: BASE_NAME),
    "conclave-direct": ("conclave", lambda adapter: adapter),
    "conclave-k1": ("conclave", lambda adapter: "conclave:k=1"),
    "conclave-base": ("conclave", lambda adapter: BASE_NAME),
    "nolora-base": ("conclave-nolora", lambda adapter: BASE_NAME),
}
SYSTEMS = ("vllm", "ray", "ray-nobatch", "conclave", "conclave-nolora")
REAL_REQUESTS = 160


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
    if system == "ray-nobatch":
        return ray_serve_llm(bundle, args.ray_cpus, stream_batching_ms=0)
    return conclave(bundle, args.ray_cpus, lora=system == "conclave")


@dataclass
class Measured:
    """Per mode: the load at ``--concurrency``, the requests sent one at a time, and the
    CPU seconds by process role during the load (:mod:`vs_vllm_cpu`)."""

    load: dict[str, Sample]
    c1: dict[str, Sample]
    cpu: dict[str, dict[str, float]]
    load_average: dict[str, list[float]] = field(default_factory=dict)  # 1 min, per slice

    def add_cpu(self, mode: str, seconds: dict[str, float]) -> None:
        mine = self.cpu.setdefault(mode, {})
        for role, s in seconds.items():
            mine[role] = mine.get(role, 0.0) + s

    def fail(self, modes: list[str], requests: int, c1_requests: int, text: str) -> None:
        for mode in modes:
            for sample, n in ((self.load[mode], requests), (self.c1[mode], c1_requests)):
                sample.errors += n
                sample.error_texts.append(text[:300])


def run_size(bundle: Bundle, args) -> Measured:
    """Every mode of every system over all requests, in ABBA order of slices."""
    modes = [m for m in MODES if MODES[m][0] in args.systems]
    measured = Measured({m: Sample() for m in modes}, {m: Sample() for m in modes}, {})
    for p, part in enumerate(slices(bundle.requests, args.passes)):
        for system in args.systems if p % 2 == 0 else args.systems[::-1]:
            mine = [m for m in modes if MODES[m][0] == system]
            mine = mine if p % 2 == 0 else mine[::-1]
            try:
                run_system(system, mine, bundle, part, measured, args, p)
            except Exception as err:  # noqa: BLE001 -- a system that fails counts as errors
                print(f"[{bundle.size}] pass {p + 1}: {system} failed: {err!r}", flush=True)
                c1 = c1_count(part, args)
                measured.fail(mine, len(part) - c1, c1, f"{system} failed: {err!r}")
    return measured


def slices(requests: tuple, passes: int) -> list[tuple]:
    """``requests`` cut into ``passes`` slices (the last one may be shorter)."""
    size = -(-len(requests) // passes)
    return [requests[p * size:(p + 1) * size] for p in range(passes)]


def c1_count(part, args) -> int:
    """How many of a slice's requests go one at a time: ``--c1-requests``, at most half."""
    return min(args.c1_requests, len(part) // 2)


def run_system(system: str, modes: list[str], bundle: Bundle, part, measured: Measured,
               args, p: int) -> None:
    """Start ``system``; for each of its ``modes``, a warm-up of one request per adapter
    (not among the requests), then ``part`` but its last ``--c1-requests`` at
    ``--concurrency``, then those one at a time (questions not asked before, so a
    routing cache hit is not what they time); stop it."""
    warmup = [(a.examples[0], a.name) for a in bundle.adapters]
    alone = len(part) - c1_count(part, args)
    started = time.perf_counter()
    with start(system, bundle, args) as url:
        print(f"[{bundle.size}] pass {p + 1}: {system} up in "
              f"{time.perf_counter() - started:.0f}s", flush=True)
        for mode in modes:
            model = MODES[mode][1]
            send(url, models_for(warmup, model), len(warmup), args.max_tokens, args.count)
            measured.load_average.setdefault(mode, []).append(round(os.getloadavg()[0], 1))
            before = snapshot()
            load = send(url, models_for(part[:alone], model), args.concurrency,
                        args.max_tokens, args.count)
            measured.add_cpu(mode, cpu_by_role(before, snapshot()))
            c1 = send(url, models_for(part[alone:], model), 1, args.max_tokens, args.count)
            print(f"  {mode}: {load.summary()['tokens_per_s']:.1f} tok/s, TTFT p50 at "
                  f"concurrency 1 {c1.summary()['ttft_p50_ms']:.0f} ms, "
                  f"{load.errors + c1.errors} errors, load average "
                  f"{measured.load_average[mode][-1]}", flush=True)
            measured.load[mode].add(load)
            measured.c1[mode].add(c1)


def token_counter(base: Path):
    """Tokens in a text, by the base model's tokenizer (the same count for every system)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    return lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)


def figures(measured: Measured) -> dict:
    """The headline ratios (where both sides were measured) and the per-mode figures."""
    s = {m: x.summary() for m, x in measured.load.items()}
    c1 = {m: x.summary()["ttft_p50_ms"] for m, x in measured.c1.items()}
    errors = sum(x.errors for x in [*measured.load.values(), *measured.c1.values()])
    out: dict = {"errors": errors, "modes": s, "ttft_c1_ms": c1,
                 "load_average_1m": measured.load_average,
                 "cpu_ms_per_token": {m: per_token_ms(cpu, s[m]["tokens"])
                                      for m, cpu in measured.cpu.items()}}

    def ratio(a: str, b: str) -> float | None:
        both = a in s and b in s and s[b]["tokens_per_s"]
        return s[a]["tokens_per_s"] / s[b]["tokens_per_s"] if both else None

    def diff(a: str, b: str, key: str = "ttft_p50_ms") -> float | None:
        return s[a][key] - s[b][key] if a in s and b in s else None

    def diff_c1(a: str, b: str) -> float | None:
        return c1[a] - c1[b] if a in c1 and b in c1 else None

    out["throughput_ratio"] = ratio("conclave-k1", "vllm")
    out["throughput_ratio_direct"] = ratio("conclave-direct", "vllm")
    out["vs_ray_serve_llm"] = ratio("conclave-base", "ray-base")
    out["vs_ray_serve_llm_nobatch"] = ratio("conclave-base", "ray-nobatch-base")
    out["nolora_vs_ray_serve_llm"] = ratio("nolora-base", "ray-base")
    out["nolora_vs_ray_serve_llm_nobatch"] = ratio("nolora-base", "ray-nobatch-base")
    out["k1_vs_ray_serve_llm"] = ratio("conclave-k1", "ray-base")
    out["k1_vs_ray_serve_llm_nobatch"] = ratio("conclave-k1", "ray-nobatch-base")
    out["ray_serve_llm_vs_vllm_base"] = ratio("ray-base", "vllm-base")
    out["ray_serve_llm_nobatch_vs_vllm_base"] = ratio("ray-nobatch-base", "vllm-base")
    out["ttft_p50_overhead_ms"] = diff("conclave-k1", "vllm")
    out["ttft_c1_overhead_ms"] = diff_c1("conclave-k1", "vllm")
    pairs = {"direct_ttft_p50_over_vllm": ("conclave-direct", "vllm"),
             "routing_ttft_p50_ms": ("conclave-k1", "conclave-direct"),
             "base_ttft_p50_over_vllm_base": ("conclave-base", "vllm-base"),
             "ray_ttft_p50_over_vllm_base": ("ray-base", "vllm-base"),
             "ray_nobatch_ttft_p50_over_vllm_base": ("ray-nobatch-base", "vllm-base")}
    out["breakdown_ms"] = {k: diff(a, b) for k, (a, b) in pairs.items()}
    out["breakdown_c1_ms"] = {k.replace("p50", "c1"): diff_c1(a, b)
                              for k, (a, b) in pairs.items()}
    return out


def table(size: str, out: dict, args) -> str:
    lines = [f"\n{size} base: {out['requests']} requests per mode, concurrency "
             f"{args.concurrency}, max_tokens {args.max_tokens}, {args.passes} passes ABBA; "
             f"TTFT C1: p50 of {out['c1_requests']} requests one at a time",
             f"{'MODE':<17} {'REQ/S':>7} {'TOK/S':>8} {'TTFT P50':>9} {'TTFT P99':>9} "
             f"{'LAT P50':>9} {'LAT P99':>9} {'TTFT C1':>8} {'ERRORS':>6}"]
    for mode, r in out["modes"].items():
        lines.append(f"{mode:<17} {r['rps']:>7.2f} {r['tokens_per_s']:>8.1f} "
                     f"{r['ttft_p50_ms']:>9.0f} {r['ttft_p99_ms']:>9.0f} "
                     f"{r['latency_p50_ms']:>9.0f} {r['latency_p99_ms']:>9.0f} "
                     f"{out['ttft_c1_ms'][mode]:>8.0f} {r['errors']:>6}")
    lines.append(f"throughput_ratio (conclave k=1 / vllm): "
                 f"{show(out['throughput_ratio'], '.3f')} (goal >= 0.9); vs_ray_serve_llm "
                 f"(conclave base / ray base): {show(out['vs_ray_serve_llm'], '.3f')}, "
                 f"nobatch {show(out['vs_ray_serve_llm_nobatch'], '.3f')} (goal >= 1.0); base-only "
                 f"pool (LoRA off) / ray base: {show(out['nolora_vs_ray_serve_llm'], '.3f')}, "
                 f"nobatch {show(out['nolora_vs_ray_serve_llm_nobatch'], '.3f')}; "
                 f"errors {out['errors']} (goal 0)")
    lines.append(f"ttft_p50_overhead_ms (k=1 - vllm, loaded): "
                 f"{show(out['ttft_p50_overhead_ms'], '.1f')}; ttft_c1_overhead_ms (at "
                 f"concurrency 1): {show(out['ttft_c1_overhead_ms'], '.1f')}")
    for key in ("breakdown_ms", "breakdown_c1_ms"):
        lines.append(f"{key}: " + ", ".join(f"{k} {show(v, '.1f')}"
                                            for k, v in out[key].items()))
    lines.append("CPU ms per output token under load, by process (the largest 5):")
    lines += [f"  {mode:<17} " + ", ".join(f"{role} {ms:.1f}" for role, ms in
                                           list(roles.items())[:6])
              for mode, roles in out["cpu_ms_per_token"].items()]
    return "\n".join(lines)


def show(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument("--size", choices=("small", "tiny", "both", "real"), default="both",
                        help="both: small and tiny; real: the real model and skill adapters")
    parser.add_argument("--requests", type=int, default=400,
                        help="requests per mode, --c1-requests of each slice among them")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--small-requests", type=int, default=None,
                        help="requests for the ~100M base (default: --requests); vLLM's CPU "
                        "LoRA path makes it slow")
    parser.add_argument("--real-requests", type=int, default=REAL_REQUESTS,
                        help="requests for the real model")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--passes", type=int, default=2,
                        help="slices of the requests; the systems take turns, ABBA")
    parser.add_argument("--c1-requests", type=int, default=8,
                        help="requests per mode and pass sent one at a time (TTFT at "
                        "concurrency 1)")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help=f"comma-separated subset of {','.join(SYSTEMS)}")
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


def bundle_for(size: str, args) -> Bundle:
    if size == "real":
        return build_real_bundle(args.real_requests)
    return build_bundle(size, args.small_requests or args.requests if size == "small"
                        else args.requests)


def main() -> None:
    args = parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    engine_environment(args.threads)
    sizes = {"both": ("small", "tiny")}.get(args.size, (args.size,))
    results = {}
    for size in sizes:
        bundle = bundle_for(size, args)
        args.count = token_counter(bundle.base)
        results[size] = figures(run_size(bundle, args))
        c1 = sum(c1_count(part, args) for part in slices(bundle.requests, args.passes))
        results[size].update(requests=len(bundle.requests) - c1, c1_requests=c1)
        print(table(size, results[size], args), flush=True)
        if args.json_path:  # after each base, so a long run keeps what it measured
            write_json(results, args)


def write_json(results: dict, args) -> None:
    """The ~100M base's figures at the top level, the tiny and real bases' under their
    names."""
    doc = {**results.get("small", {}),
           **{size: results[size] for size in ("tiny", "real") if size in results},
           "concurrency": args.concurrency, "max_tokens": args.max_tokens,
           "passes": args.passes, "threads": args.threads, "ray_serve_llm_adapters": False}
    Path(args.json_path).write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
