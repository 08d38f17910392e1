"""Short causal-LM training loops: the one loss loop behind gate training and small LoRA runs.

Plain torch: seeded shuffling, padded batches with padding masked out of the loss, AdamW on
whichever parameters the caller passes. Meant for the few hundred steps that gate training
and test/demo adapters need, not for real fine-tuning runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from experts.errors import ExpertError


def lm_batches(
    tokenizer, texts: Sequence[str], batch_size: int, max_length: int, seed: int
) -> Iterator[dict]:
    """Endless seeded batches of ``texts``: input ids, attention mask, labels (-100 on pads)."""
    import torch

    texts = [text for text in texts if text and text.strip()]
    if not texts:
        raise ExpertError("no training texts (every example is empty)")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(texts), generator=generator).tolist()
        for start in range(0, len(order), batch_size):
            rows = [texts[i] for i in order[start : start + batch_size]]
            batch = tokenizer(
                rows, return_tensors="pt", padding=True, truncation=True, max_length=max_length
            )
            labels = batch["input_ids"].clone()
            labels[batch["attention_mask"] == 0] = -100
            yield {**batch, "labels": labels}


def train_lm(
    model,
    parameters: list,
    tokenizer,
    texts: Sequence[str],
    *,
    steps: int,
    lr: float,
    batch_size: int = 8,
    max_length: int = 128,
    seed: int = 0,
) -> list[float]:
    """Train ``parameters`` of ``model`` on the LM loss over ``texts``; returns the losses."""
    import torch

    if steps < 1:
        raise ExpertError(f"steps must be >= 1, got {steps}")
    if not parameters:
        raise ExpertError("nothing to train: no parameters given")
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    batches = lm_batches(tokenizer, texts, batch_size, max_length, seed)
    model.train()
    losses = []
    for _ in range(steps):
        batch = next(batches)
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def train_lora_adapter(
    base_path: str | Path,
    adapter_path: str | Path,
    texts: Sequence[str],
    *,
    steps: int = 50,
    rank: int = 8,
    lr: float = 3e-3,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
    seed: int = 0,
) -> Path:
    """Train a small peft LoRA adapter on ``texts`` and save it to ``adapter_path``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    model = get_peft_model(
        base, LoraConfig(r=rank, lora_alpha=rank * 2, target_modules=list(target_modules))
    )
    trainable = [param for param in model.parameters() if param.requires_grad]
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    train_lm(model, trainable, tokenizer, texts, steps=steps, lr=lr, seed=seed)
    adapter_path = Path(adapter_path)
    model.save_pretrained(adapter_path)
    return adapter_path
