"""Constrained and extra outputs of the OpenAI API (``response_format``, ``logprobs``,
``tools``/``tool_choice``): from the request to generation params, and from the final
answer back to the response's ``tool_calls`` and ``logprobs``.

Engines honour them or refuse them with a 400 (:meth:`GenerationEngine.check_features`);
they are never ignored. In a panel only the call that writes the final answer gets them
(the lone expert, or the synthesis); a vote picks one draft, so every draft gets them.
"""

from __future__ import annotations

import json
import uuid

from cluster.http.errors import ApiError

FEATURE_KEYS = ("response_format", "logprobs", "tools", "tool_choice")
FORMATS = ("text", "json_object", "json_schema")


def feature_params(req) -> dict:
    """The request's feature fields as generation params (only those it sets)."""
    params = {}
    fmt = req.response_format
    if fmt is not None:
        if not isinstance(fmt, dict) or fmt.get("type") not in FORMATS:
            raise ApiError(400, f"response_format.type must be one of {', '.join(FORMATS)}",
                           param="response_format", code="invalid_value")
        if fmt["type"] != "text":
            params["response_format"] = fmt
    top = top_logprobs(req)
    if top is not None:
        params["logprobs"] = top
    if req.tools:
        params["tools"] = req.tools
        params["tool_choice"] = req.tool_choice or "auto"  # OpenAI's default with tools
    return params


def top_logprobs(req) -> int | None:
    """How many alternatives per token the request wants (0: the chosen only), or None."""
    if isinstance(req.logprobs, bool):  # chat: logprobs=true, top_logprobs=N
        return (req.top_logprobs or 0) if req.logprobs else None
    return req.logprobs  # completions: logprobs=N


def without_features(params: dict) -> dict:
    """``params`` for a draft whose text is not the final answer (it is synthesised)."""
    return {key: value for key, value in params.items() if key not in FEATURE_KEYS}


def tool_calls(params: dict, text: str) -> list[dict] | None:
    """The forced tool call(s) in ``text`` (guided JSON), as OpenAI ``tool_calls``; None
    when no call was forced or the text is not a whole call (cut by max_tokens)."""
    choice = params.get("tool_choice")
    if not params.get("tools") or choice in (None, "none", "auto"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(choice, dict):
        calls = [{"name": choice["function"]["name"], "parameters": value}]
    else:
        calls = value
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": call["name"], "arguments": json.dumps(call["parameters"])}}
            for call in calls]
