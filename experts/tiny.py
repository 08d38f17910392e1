"""Tiny causal LMs built offline: a transformers config, random weights, and a byte-level
BPE tokenizer trained on a little text. They exercise every real loading and generation
code path (``from_pretrained`` on a local folder) without downloading anything.

They are untrained: what they generate is noise. Real experts come from a config.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

# A chat template in the usual Jinja form, so the chat-template code path is exercised.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, chat_template: bool = True):
    """A byte-level BPE tokenizer trained on ``texts`` (deterministic for the same input)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(list(texts), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_lm(
    path: str | Path,
    texts: Iterable[str],
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int | None = None,
    intermediate_size: int | None = None,
    vocab_size: int = 512,
    seed: int = 0,
    chat_template: bool = True,
    init_std: float = 0.02,
) -> Path:
    """Build a random-init Llama-architecture LM + tokenizer and save both to ``path``.

    Returns ``path``. Same arguments, same weights (seeded). A larger ``init_std`` (say 0.2)
    makes greedy output depend more on the prompt instead of repeating one token.
    ``heads`` defaults to one per 32 hidden units: vLLM's CPU attention takes head sizes of 32
    and up, so the same tiny model runs on both engines.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size, chat_template=chat_template)
    heads = heads or max(1, hidden_size // 32)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or hidden_size * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        initializer_range=init_std,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def add_random_lora(
    base_path: str | Path,
    adapter_path: str | Path,
    *,
    rank: int = 8,
    seed: int = 0,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
    scale: float = 0.5,
) -> Path:
    """Save a peft LoRA adapter for ``base_path`` with random (non-zero) A and B, so each
    adapter changes the model's output. Same seed, same adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_path)
    model = get_peft_model(
        base,
        LoraConfig(r=rank, lora_alpha=rank * 2, target_modules=list(target_modules)),
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    adapter_path = Path(adapter_path)
    model.save_pretrained(adapter_path)
    return adapter_path
