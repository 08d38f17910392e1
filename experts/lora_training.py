"""Training a LoRA expert: ``conclave experts train --base MODEL --data train.jsonl --out DIR``.

Each JSONL line is ``{"messages": [...]}`` (the last message the assistant's answer) or
``{"prompt": ..., "answer": ...}``. The prompt goes through the tokenizer's chat template
exactly as the engines encode it at serving time (:func:`experts.engine.encode_prompt`), and
the loss is on the answer's tokens and the end-of-turn token only, so the adapter learns to
answer and to stop. Seeded; writes a peft adapter folder whose ``adapter_config.json`` names
the base (its hub id for a prepared model) and a ``README.md`` card with the data, the
schedule and the final loss.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from experts.engine import encode_prompt
from experts.errors import ExpertError

MIN_EXAMPLES = 16


class TrainOptions(BaseModel):
    """The schedule and the adapter's shape."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(200, ge=1, description="Optimizer steps.")
    batch_size: int = Field(16, ge=1, description="Examples per step.")
    lr: float = Field(2e-3, gt=0.0, description="AdamW learning rate (linear decay to 0).")
    rank: int = Field(8, ge=1, le=64, description="LoRA rank.")
    alpha: float = Field(16.0, gt=0.0, description="LoRA alpha (scale = alpha / rank).")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Linear modules that get an adapter.")
    top_layers: int | None = Field(
        None, ge=1, description="Adapt only the top N transformer layers (the backward pass "
        "then stops there: cheaper steps); default: every layer.")
    max_length: int = Field(256, ge=8, description="Tokens per example at most.")
    seed: int = Field(0, description="Seeds the adapter's init and the data order.")


@dataclass(frozen=True)
class Example:
    """One training example: the chat so far, and the answer to learn."""

    messages: list[dict]
    answer: str


def load_examples(path: str | Path) -> list[Example]:
    """Read and check a JSONL training file; errors name the line."""
    path = Path(path)
    if not path.exists():
        raise ExpertError(f"training file {str(path)!r} does not exist")
    examples = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            examples.append(_parse_line(line, f"{path.name} line {number}"))
    if len(examples) < MIN_EXAMPLES:
        raise ExpertError(f"{path.name}: {len(examples)} examples, at least {MIN_EXAMPLES} "
                          "are needed")
    return examples


def _parse_line(line: str, where: str) -> Example:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ExpertError(f"{where}: not JSON ({err.msg})") from None
    if not isinstance(row, dict):
        raise ExpertError(f"{where}: expected an object with 'messages' or 'prompt'/'answer'")
    if "messages" in row:
        messages = row["messages"]
        if (not isinstance(messages, list) or len(messages) < 2
                or not all(isinstance(m, dict) and isinstance(m.get("content"), str)
                           for m in messages)
                or messages[-1].get("role") != "assistant"):
            raise ExpertError(f"{where}: 'messages' must be a list of {{role, content}} ending "
                              "with the assistant's answer")
        prompt, answer = messages[:-1], messages[-1]["content"]
    elif "prompt" in row and "answer" in row:
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise ExpertError(f"{where}: empty prompt")
        prompt, answer = [{"role": "user", "content": row["prompt"]}], row["answer"]
    else:
        raise ExpertError(f"{where}: expected 'messages', or 'prompt' and 'answer'")
    if not isinstance(answer, str) or not answer.strip():
        raise ExpertError(f"{where}: empty answer")
    return Example(prompt, answer)


def encode_example(tokenizer, example: Example, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels: the prompt as served (labels -100), then the answer and the
    end-of-turn token (learned)."""
    prompt = encode_prompt(tokenizer, example.messages)
    answer = tokenizer(example.answer, add_special_tokens=False)["input_ids"]
    answer = answer + [tokenizer.eos_token_id]
    ids = (prompt + answer)[:max_length]
    labels = ([-100] * len(prompt) + answer)[:max_length]
    return ids, labels


def _batches(encoded: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int,
             seed: int) -> Iterator[dict]:
    """Endless seeded, right-padded batches (pads masked out of attention and loss)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(encoded), generator=generator).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            rows = [encoded[i] for i in order[start:start + batch_size]]
            width = max(len(ids) for ids, _ in rows)
            ids = torch.full((len(rows), width), pad_id)
            labels = torch.full((len(rows), width), -100)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for row, (row_ids, row_labels) in enumerate(rows):
                ids[row, :len(row_ids)] = torch.tensor(row_ids)
                labels[row, :len(row_labels)] = torch.tensor(row_labels)
                mask[row, :len(row_ids)] = 1
            yield {"input_ids": ids, "attention_mask": mask, "labels": labels}


def train_expert(base: str | Path, data: str | Path, out: str | Path,
                 options: TrainOptions | None = None,
                 progress: Callable[[int, float], None] | None = None) -> dict:
    """Train a LoRA adapter for ``base`` on ``data``; write it to ``out``; return the card's
    facts (also written to ``out/training.json``)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    options = options or TrainOptions()
    examples = load_examples(data)
    if options.batch_size > len(examples):
        raise ExpertError(f"batch_size {options.batch_size} is more than the "
                          f"{len(examples)} examples")
    torch.manual_seed(options.seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = [encode_example(tokenizer, example, options.max_length) for example in examples]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    model = get_peft_model(model, _lora_config(options, model.config.num_hidden_layers))
    losses, seconds = _fit(model, _batches(encoded, options.batch_size, pad_id, options.seed),
                           options, progress)
    facts = _card_facts(base, data, examples, options, losses, seconds)
    _save(model, Path(out), facts)
    return facts


def _lora_config(options: TrainOptions, layers: int):
    from peft import LoraConfig

    if options.top_layers is not None and options.top_layers > layers:
        raise ExpertError(f"top_layers {options.top_layers} is more than the model's {layers}")
    top = None if options.top_layers is None else list(range(layers - options.top_layers, layers))
    return LoraConfig(r=options.rank, lora_alpha=options.alpha, lora_dropout=0.0,
                      target_modules=list(options.target_modules), layers_to_transform=top,
                      task_type="CAUSAL_LM")


def _fit(model, batches: Iterator[dict], options: TrainOptions,
         progress: Callable[[int, float], None] | None) -> tuple[list[float], float]:
    import torch

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=options.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(0.0, 1.0 - step / options.steps))
    model.train()
    losses, started = [], time.perf_counter()
    for step in range(options.steps):
        loss = model(**next(batches)).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if progress:
            progress(step + 1, losses[-1])
    model.eval()
    return losses, time.perf_counter() - started


def _card_facts(base, data, examples, options: TrainOptions, losses: list[float],
                seconds: float) -> dict:
    tail = losses[-10:]
    return {"base": base_reference(base), "data": Path(data).name,
            "data_sha256": hashlib.sha256(Path(data).read_bytes()).hexdigest(),
            "examples": len(examples), "options": options.model_dump(),
            "first_loss": round(losses[0], 4), "final_loss": round(sum(tail) / len(tail), 4),
            "seconds": round(seconds, 1)}


def base_reference(base: str | Path) -> str:
    """What the adapter's config names as its base: a prepared model's hub id (so the
    adapter matches that model wherever it is prepared), else the path as given."""
    from experts.real_model import RECORD

    record = Path(base) / RECORD
    if record.exists():
        return json.loads(record.read_text())["hub_id"]
    return str(base)


def _save(model, out: Path, facts: dict) -> None:
    model.save_pretrained(out)
    config_file = out / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = facts["base"]
    config_file.write_text(json.dumps(config, indent=2) + "\n")
    (out / "training.json").write_text(json.dumps(facts, indent=2) + "\n")
    options = facts["options"]
    (out / "README.md").write_text(
        f"# LoRA expert on {facts['base']}\n\n"
        f"- data: `{facts['data']}` ({facts['examples']} examples, sha256 "
        f"{facts['data_sha256'][:16]}…)\n"
        f"- schedule: {options['steps']} steps of {options['batch_size']}, AdamW lr "
        f"{options['lr']} with linear decay, seed {options['seed']}\n"
        f"- adapter: rank {options['rank']}, alpha {options['alpha']}, on "
        f"{', '.join(options['target_modules'])}\n"
        f"- loss on the answer tokens: {facts['first_loss']} → {facts['final_loss']} "
        f"(mean of the last 10 steps), {facts['seconds']} s\n")
