"""API keys: their format, their spec (name, expiry, allowed experts or pools, limits) and
the record kept in Redis, which holds a salted hash of the key, never the key.

A key is ``ck-`` then 48 letters or digits: the first 8 are the key's id (how its record
is found; shown in listings, like the visible end of other services' keys), the other 40
its secret (about 238 bits). The secret is random, so one salted SHA-256 stores it safely
and checks it in microseconds; a slow password hash would only add latency.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
import time
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field

PREFIX = "ck-"
ID_CHARS = 8
SECRET_CHARS = 40
KEY_LENGTH = len(PREFIX) + ID_CHARS + SECRET_CHARS
_ALPHABET = string.ascii_letters + string.digits
_KEY = re.compile(rf"{PREFIX}[A-Za-z0-9]{{{ID_CHARS + SECRET_CHARS}}}")
KEY_SHAPE = f"'{PREFIX}' followed by {ID_CHARS + SECRET_CHARS} letters or digits"


class KeyFormatError(ValueError):
    """The Authorization header or the key in it is not well formed; ``field`` names
    which of the two."""

    def __init__(self, message: str, field: str = "authorization"):
        super().__init__(message)
        self.field = field


class KeyLimits(BaseModel):
    """What one key may use; a limit left out is no limit."""

    model_config = ConfigDict(extra="forbid")

    rpm: int | None = Field(None, gt=0, description="Requests per minute (a sliding minute).")
    tpm: int | None = Field(None, gt=0, description="Tokens (prompt + completion, every "
                            "panel call included) per clock minute.")
    budget_tokens: int | None = Field(None, gt=0, description="Tokens per budget period.")
    budget_period_s: int = Field(86400, gt=0, description="Length of the budget period in "
                                 "seconds (periods start at multiples of it since the epoch).")


class KeySpec(BaseModel):
    """What the admin asks for when creating a key (``POST /v1/keys``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$",
                      description="Unique among live keys; the metrics label and usage name.")
    expires_at: datetime | None = Field(None, description="When the key stops working "
                                        "(ISO 8601; default: never).")
    experts: list[str] = Field(default_factory=list, description="Experts the key may use "
                               "(empty: any, unless pools restricts it).")
    pools: list[str] = Field(default_factory=list, description="Pools whose experts the key "
                             "may use (empty: any).")
    limits: KeyLimits = Field(default_factory=KeyLimits, description="Rate limits, budget.")


class StoredKey(KeySpec):
    """A key's record in Redis: the spec, the salt and the salted hash of the secret."""

    id: str
    salt: str
    digest: str
    created_at: float
    revoked_at: float | None = None

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(self.digest, digest(self.salt, secret))

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and self.expires_at.timestamp() <= (now or time.time())

    def allows(self, expert: str, pool: str) -> bool:
        """Whether this key may use ``expert`` (of ``pool``)."""
        return ((not self.experts or expert in self.experts)
                and (not self.pools or pool in self.pools))

    def public(self) -> dict:
        """What listings show: everything but the salt and the hash."""
        return self.model_dump(mode="json", exclude={"salt", "digest"})


def digest(salt: str, secret: str) -> str:
    return hashlib.sha256(f"{salt}:{secret}".encode()).hexdigest()


def new_key(spec: KeySpec) -> tuple[str, StoredKey]:
    """A fresh plain key (shown once, to its creator) and the record to store."""
    key_id = "".join(secrets.choice(_ALPHABET) for _ in range(ID_CHARS))
    secret = "".join(secrets.choice(_ALPHABET) for _ in range(SECRET_CHARS))
    salt = secrets.token_hex(16)
    if spec.expires_at is not None and spec.expires_at.tzinfo is None:
        spec = spec.model_copy(update={"expires_at": spec.expires_at.replace(tzinfo=UTC)})
    record = StoredKey(**spec.model_dump(), id=key_id, salt=salt, digest=digest(salt, secret),
                       created_at=time.time())
    return PREFIX + key_id + secret, record


def parse_header(header: str | None) -> tuple[str, str]:
    """``(key id, secret)`` from an ``Authorization: Bearer <key>`` header; raises
    :class:`KeyFormatError` naming what is wrong (never echoing the key)."""
    if not header:
        raise KeyFormatError("this endpoint needs an API key: 'Authorization: Bearer <key>'")
    scheme, _, key = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise KeyFormatError("the Authorization header must be 'Bearer <key>'")
    return split_key(key.strip())


def split_key(key: str) -> tuple[str, str]:
    """``(key id, secret)`` of a well-formed key; :class:`KeyFormatError` otherwise."""
    if len(key) != KEY_LENGTH:
        raise KeyFormatError(f"the API key has {len(key)} characters; a key is {KEY_SHAPE}",
                             field="api_key")
    if not _KEY.fullmatch(key):
        raise KeyFormatError(f"the API key has characters outside its alphabet; a key is "
                             f"{KEY_SHAPE}", field="api_key")
    body = key[len(PREFIX):]
    return body[:ID_CHARS], body[ID_CHARS:]
