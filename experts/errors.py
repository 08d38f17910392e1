"""Errors of the experts layer. All are ``ValueError``s: bad input, mapped to HTTP 400/404."""

from __future__ import annotations


class ExpertError(ValueError):
    """An expert cannot be registered, loaded or used as asked."""


class UnknownExpertError(ExpertError, KeyError):
    """No expert has this id."""

    def __init__(self, expert_id: str, known: list[str] | None = None):
        self.expert_id = expert_id
        message = f"unknown expert {expert_id!r}"
        if known is not None:
            message += f" (known: {', '.join(sorted(known)) or 'none'})"
        super().__init__(message)

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message and wrap it in quotes.
        return str(self.args[0])


class ExpertExistsError(ExpertError):
    """An expert with this id is already registered."""


class IncompatibleAdapterError(ExpertError):
    """A LoRA adapter was trained for another base model than the loaded one."""


class PromptTooLongError(ExpertError):
    """A prompt does not fit the model's context: the request's fault (HTTP 400), not the
    expert's, so it is not failed over to another expert."""


class UnsupportedFeatureError(ExpertError):
    """A request asks an engine for something it cannot honour (HTTP 400, never ignored)."""
