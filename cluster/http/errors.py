"""HTTP errors in the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``, and
the mapping from domain errors (routing, experts, validation) to status codes."""

from __future__ import annotations

from pydantic import BaseModel

from experts.errors import ExpertError, ExpertExistsError, UnknownExpertError
from routing.errors import RoutingError


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class ApiError(Exception):
    """An error the client sees, with its HTTP status and OpenAI error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",  # noqa: A002 - the OpenAI field name
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        error = ErrorBody(message=self.message, type=self.type, param=self.param, code=self.code)
        return ErrorResponse(error=error).model_dump()


def from_domain(err: Exception) -> ApiError:
    """The :class:`ApiError` for a routing or expert error (bad input, never a 5xx)."""
    if isinstance(err, ApiError):
        return err
    if isinstance(err, UnknownExpertError):
        return ApiError(404, str(err), code="model_not_found", param="model")
    if isinstance(err, ExpertExistsError):
        return ApiError(409, str(err), code="expert_exists")
    if isinstance(err, ExpertError | RoutingError):
        return ApiError(400, str(err), code="bad_request")
    raise TypeError(f"not a domain error: {err!r}")


def from_validation(errors: list[dict]) -> ApiError:
    """A 400 naming the first invalid field of a pydantic / FastAPI validation failure."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return ApiError(400, "request body is not valid JSON", code="invalid_json")
    param = ".".join(loc) or None
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    if first.get("type") == "missing":
        message = f"missing required field {param!r}"
    elif param:
        message = f"{param}: {message}"
    return ApiError(400, message, param=param, code="invalid_value")


async def json_body(request) -> object:
    """A request's JSON body; 400 when it is not JSON."""
    try:
        return await request.json()
    except ValueError:
        raise ApiError(400, "request body is not valid JSON", code="invalid_json") from None


def timeout_error(seconds: float) -> ApiError:
    return ApiError(
        504,
        f"the request did not finish within {seconds:g}s; try fewer experts (k) or fewer tokens",
        type="timeout_error",
        code="request_timeout",
    )


def unauthorized() -> ApiError:
    return ApiError(
        401,
        "admin endpoints need 'Authorization: Bearer <token>' with the configured token",
        type="authentication_error",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )
