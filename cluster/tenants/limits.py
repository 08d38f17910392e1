"""Per-key limits, enforced across gateway replicas by Redis scripts (atomic; time from
the Redis server, so replicas' clocks do not matter).

- **rpm**: requests in any sliding 60 s (a sorted set of admission times): exact.
- **tpm**: tokens in the current clock minute; **budget**: tokens in the current period
  (``budget_period_s``, periods starting at multiples of it since the epoch).

Check before, count after: a request is refused (429) only before it starts, when the key
is at its rpm, or its tokens already reached tpm or the budget; its tokens are counted
once it is answered, and an answer is never cut for a budget. Requests admitted together
may therefore take a key past its tpm or budget by their own tokens, never further.
"""

from __future__ import annotations

import math
import uuid

from cluster.http.errors import ApiError
from cluster.tenants.keys import StoredKey

# KEYS: rpm zset, token hash, usage hash. ARGV: rpm, tpm, budget (0: none), period, member.
# Returns {limit name or "ok", seconds until it frees up}.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rpm, tpm, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local period = tonumber(ARGV[4])
local function used(window, field, total)
  local at = redis.call('HGET', KEYS[2], field)
  if at and tonumber(at) == window then
    return tonumber(redis.call('HGET', KEYS[2], total) or '0')
  end
  return 0
end
if tpm > 0 and used(math.floor(now / 60), 'm', 'mt') >= tpm then
  return {'tpm', tostring(60 - now % 60)}
end
if budget > 0 and used(math.floor(now / period), 'b', 'bt') >= budget then
  return {'budget', tostring(period - now % period)}
end
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60)
  if redis.call('ZCARD', KEYS[1]) >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {'rpm', tostring(tonumber(oldest[2]) + 60 - now)}
  end
  redis.call('ZADD', KEYS[1], now, ARGV[5])
  redis.call('EXPIRE', KEYS[1], 61)
end
redis.call('HINCRBY', KEYS[3], 'requests', 1)
return {'ok', '0'}
"""

# KEYS: token hash, usage hash. ARGV: tokens, budget period, then (kind, field, amount)
# triples for the usage hash (kind i: HINCRBY, f: HINCRBYFLOAT). Adds the tokens to this
# minute's and period's totals, and the usage, in one call.
_COUNT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local period = tonumber(ARGV[2])
local function add(window, field, total)
  local at = redis.call('HGET', KEYS[1], field)
  if not at or tonumber(at) ~= window then
    redis.call('HSET', KEYS[1], field, window, total, 0)
  end
  redis.call('HINCRBY', KEYS[1], total, ARGV[1])
end
add(math.floor(now / 60), 'm', 'mt')
add(math.floor(now / period), 'b', 'bt')
redis.call('EXPIRE', KEYS[1], math.max(120, 2 * period))
for i = 3, #ARGV, 3 do
  redis.call(ARGV[i] == 'f' and 'HINCRBYFLOAT' or 'HINCRBY', KEYS[2], ARGV[i + 1], ARGV[i + 2])
end
"""

# limit → (its field in KeyLimits, what it is called in errors)
_LIMITS = {"rpm": ("rpm", "requests per minute"), "tpm": ("tpm", "tokens per minute"),
           "budget": ("budget_tokens", "token budget")}


class Limits:
    """The admission check and the token count of every key, in one Redis."""

    def __init__(self, client, namespace: str):
        self._redis = client
        self._ns = namespace
        self._admit = client.register_script(_ADMIT)
        self._count = client.register_script(_COUNT)

    def keys(self, key_id: str) -> dict[str, str]:
        """The Redis keys holding one key's counters."""
        return {"rpm": f"{self._ns}:rpm:{key_id}", "tokens": f"{self._ns}:tokens:{key_id}",
                "usage": f"{self._ns}:usage:{key_id}"}

    async def admit(self, record: StoredKey) -> None:
        """Let one request of ``record`` start, or raise 429 naming the limit reached."""
        limits, keys = record.limits, self.keys(record.id)
        name, wait = await self._admit(
            keys=[keys["rpm"], keys["tokens"], keys["usage"]],
            args=[limits.rpm or 0, limits.tpm or 0, limits.budget_tokens or 0,
                  limits.budget_period_s, uuid.uuid4().hex])
        if name != "ok":
            raise over_limit(record, name, float(wait))

    async def count(self, pipe, record: StoredKey, tokens: int,
                    usage: list[tuple[str, str, int | float]]) -> None:
        """Queue, on ``pipe``, adding ``tokens`` to the key's minute and period totals and
        ``usage`` (kind ``i`` or ``f``, field, amount) to its usage hash."""
        keys = self.keys(record.id)
        await self._count(keys=[keys["tokens"], keys["usage"]],
                          args=[tokens, record.limits.budget_period_s,
                                *(part for triple in usage for part in triple)], client=pipe)

    async def used(self, record: StoredKey) -> dict:
        """Tokens counted in the current budget period (0 once it has rolled over)."""
        period = record.limits.budget_period_s
        now_s, _micro = await self._redis.time()
        window, total = await self._redis.hmget(self.keys(record.id)["tokens"], "b", "bt")
        used = int(total or 0) if window is not None and int(window) == now_s // period else 0
        return {"tokens": used, "limit": record.limits.budget_tokens, "period_s": period,
                "resets_in_s": period - now_s % period}


def over_limit(record: StoredKey, limit: str, wait_s: float) -> ApiError:
    """429 with ``Retry-After`` and an OpenAI error body naming the limit."""
    field, called = _LIMITS[limit]
    value = getattr(record.limits, field)
    seconds = max(1, math.ceil(wait_s))
    return ApiError(429, f"key {record.name!r} reached its {called} limit ({value}); "
                    f"retry in {seconds} s", type="rate_limit_error", param=f"limits.{field}",
                    code=f"{limit}_limit_exceeded", headers={"Retry-After": str(seconds)})
