"""From a prompt (plain text or chat messages) to the token ids a model reads, the same
for every engine: through the tokenizer's chat template when it has one."""

from __future__ import annotations

from experts.engine import Prompt


def encode_prompt(tokenizer, prompt: Prompt, tools: list[dict] | None = None) -> list[int]:
    """Token ids of one prompt; without a chat template, a plain transcript. ``tools``
    (OpenAI function tools) go to the chat template, which renders them its own way."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                             tokenize=False, tools=tools)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    if not isinstance(prompt, str):
        prompt = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
    return tokenizer(prompt)["input_ids"]
