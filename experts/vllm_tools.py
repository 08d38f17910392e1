"""``tool_choice: auto`` on vLLM, as vLLM's own OpenAI server does it: the tools go into the
prompt (the model's chat template renders them), the model writes freely, and the model
family's tool parser (``--tool-call-parser`` there, an expert's ``tool_parser`` here: hermes,
llama3_json, mistral, ...) finds the calls in its text. Text without a call is the answer.
"""

from __future__ import annotations

from experts.errors import ExpertError


def check_tool_parser(name: str) -> str:
    """``name`` when vLLM has a tool parser of that name; else a ValueError naming them."""
    from vllm.tool_parsers import ToolParserManager

    known = ToolParserManager.list_registered()
    if name not in known:
        raise ValueError(f"unknown tool parser {name!r}; vLLM's: {', '.join(sorted(known))}")
    return name


class ToolCallParser:
    """One model's tool parser; :meth:`parse` is safe to call from any request."""

    def __init__(self, name: str, tokenizer):
        from vllm.tool_parsers import ToolParserManager

        try:
            self._parser_class = ToolParserManager.get_tool_parser(name)
        except KeyError:
            raise ExpertError(f"unknown tool parser {name!r}") from None
        self.name = name
        self._tokenizer = tokenizer

    def parse(self, text: str, tools: list[dict]) -> tuple[str, list[dict] | None]:
        """The answer's content and its OpenAI ``tool_calls`` (None: it made no call)."""
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        request = ChatCompletionRequest(model="conclave", messages=[], tools=tools,
                                        tool_choice="auto")
        parser = self._parser_class(self._tokenizer, request.tools)  # parsers keep state
        found = parser.extract_tool_calls(text, request)
        if not found.tools_called:
            return text, None
        return found.content or "", [call.model_dump(exclude_none=True)
                                     for call in found.tool_calls]
