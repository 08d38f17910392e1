"""API keys without Ray: the key format, the store (two stores = two gateway replicas over
one real Redis), the limits and the usage ledger (cluster/tenants/)."""

from __future__ import annotations

import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta

import pytest
from faults import RestartableRedis
from pydantic import ValidationError

from cluster.http.errors import ApiError
from cluster.tenants.keys import KEY_LENGTH, KeyFormatError, KeySpec, new_key, parse_header
from cluster.tenants.limits import Limits
from cluster.tenants.store import REDIS_ERRORS, KeyStore, RedisBreaker, RedisSkipped
from cluster.tenants.tenancy import KeyLabels, connect_async
from cluster.tenants.usage import CallUsage, UsageEntry, UsageLedger
from experts.redis_conn import connect


def run(coro):
    return asyncio.run(coro)


def bearer(key: str) -> str:
    return f"Bearer {key}"


def test_a_new_key_is_well_formed_and_only_its_hash_is_kept():
    plain, record = new_key(KeySpec(name="team-a"))
    assert len(plain) == KEY_LENGTH and plain.startswith("ck-")
    key_id, secret = parse_header(bearer(plain))
    assert record.id == key_id and record.matches(secret)
    assert not record.matches(secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    stored = record.model_dump_json()
    assert secret not in stored and plain not in stored
    assert "salt" not in record.public() and "digest" not in record.public()
    other_plain, other = new_key(KeySpec(name="team-a"))
    assert other.salt != record.salt and other_plain != plain


@pytest.mark.parametrize(("header", "field", "words"), [
    (None, "authorization", "needs an API key"),
    ("Basic abc", "authorization", "'Bearer <key>'"),
    ("Bearer", "authorization", "'Bearer <key>'"),
    ("Bearer ck-short", "api_key", "has 8 characters"),
    ("Bearer ck-" + "a" * 47 + "!", "api_key", "outside its alphabet"),
    ("Bearer sk-" + "a" * 48, "api_key", "outside its alphabet"),
])
def test_malformed_headers_and_keys_name_the_field(header, field, words):
    with pytest.raises(KeyFormatError) as caught:
        parse_header(header)
    assert caught.value.field == field and words in str(caught.value)


@pytest.mark.parametrize("limits", [{"rpm": 0}, {"tpm": -5}, {"budget_tokens": 0},
                                    {"budget_period_s": 0}])
def test_a_limit_of_zero_or_below_is_refused_naming_the_field(limits):
    with pytest.raises(ValidationError) as caught:
        KeySpec(name="x", limits=limits)
    field = next(iter(limits))
    assert caught.value.errors()[0]["loc"] == ("limits", field)


def test_key_names_are_slugs_and_unknown_fields_are_refused():
    with pytest.raises(ValidationError):
        KeySpec(name="Team A")
    with pytest.raises(ValidationError):
        KeySpec(name="a", limits={"rpd": 3})


def test_allowed_experts_and_pools():
    _, record = new_key(KeySpec(name="a", experts=["math"], pools=["gpu"]))
    assert record.allows("math", "gpu")
    assert not record.allows("math", "cpu") and not record.allows("code", "gpu")
    _, anyone = new_key(KeySpec(name="b"))
    assert anyone.allows("code", "cpu")


def test_metric_labels_stay_bounded():
    label = KeyLabels(2)
    assert [label(n) for n in ("a", "b", "c", "a", "d")] == ["a", "b", "other", "a", "other"]


async def _create(store: KeyStore, **spec) -> tuple[str, object]:
    return await store.create(KeySpec(**spec))


def test_store_checks_keys_and_refuses_revoked_ones_on_every_replica(redis_url):
    async def scenario():
        one, two = (KeyStore(connect_async(redis_url), "t") for _ in range(2))
        plain, record = await _create(one, name="team-a")
        assert (await two.authenticate(bearer(plain))).id == record.id  # two caches it
        with pytest.raises(ApiError) as dup:
            await _create(two, name="team-a")
        assert dup.value.status == 409
        await one.revoke("team-a")
        started = time.monotonic()
        while True:  # the other replica refuses it within its 1 s freshness
            try:
                await two.authenticate(bearer(plain))
            except ApiError as err:
                assert err.status == 401 and "revoked" in err.message
                break
            await asyncio.sleep(0.05)
        assert time.monotonic() - started <= 1.1
        listed = await one.list()
        assert [r.name for r in listed] == ["team-a"] and listed[0].revoked_at
        await _create(one, name="team-a")  # the name is free again

    run(scenario())


@pytest.mark.parametrize("case", ["unknown", "wrong secret", "expired"])
def test_store_refuses_unknown_wrong_and_expired_keys(redis_url, case):
    async def scenario():
        store = KeyStore(connect_async(redis_url), "t")
        past = datetime.now(UTC) - timedelta(seconds=1)
        plain, _ = await _create(store, name="a", expires_at=past if case == "expired" else None)
        if case == "unknown":
            plain = plain[:3] + "Z" * 8 + plain[11:]
        elif case == "wrong secret":
            plain = plain[:-4] + ("abcd" if not plain.endswith("abcd") else "wxyz")
        with pytest.raises(ApiError) as caught:
            await store.authenticate(bearer(plain))
        assert caught.value.status == 401 and caught.value.code == "invalid_api_key"
        if case == "expired":
            assert "expired" in caught.value.message

    run(scenario())


def test_plain_keys_never_reach_redis(redis_url):
    async def scenario():
        store = KeyStore(connect_async(redis_url), "t")
        return [(await _create(store, name=f"k{i}"))[0] for i in range(3)]

    keys = run(scenario())
    sync = connect(redis_url)
    dump = " ".join(f"{k} {sync.dump(k)!r} {sync.get(k) if sync.type(k) == 'string' else ''}"
                    for k in sync.keys("*"))
    dump += " ".join(str(sync.hgetall(k)) for k in sync.keys("*") if sync.type(k) == "hash")
    for plain in keys:
        assert plain[11:] not in dump and plain not in dump


async def _admit_many(redis_url: str, record, count: int) -> list[int]:
    """``count`` concurrent admissions split over two Limits (two replicas): statuses."""
    replicas = [Limits(connect_async(redis_url), "t") for _ in range(2)]

    async def one(i: int) -> int:
        try:
            await replicas[i % 2].admit(record)
        except ApiError as err:
            return err.status
        return 200

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def test_rpm_holds_exactly_across_two_replicas(redis_url):
    _, record = new_key(KeySpec(name="a", limits={"rpm": 7}))
    statuses = run(_admit_many(redis_url, record, 30))
    assert statuses.count(200) == 7 and statuses.count(429) == 23
    with pytest.raises(ApiError) as caught:
        run(Limits(connect_async(redis_url), "t").admit(record))
    err = caught.value
    assert err.param == "limits.rpm" and err.code == "rpm_limit_exceeded"
    assert 1 <= int(err.headers["Retry-After"]) <= 60 and "requests per minute" in err.message


@pytest.mark.parametrize(("limits", "field"), [({"tpm": 10}, "tpm"),
                                               ({"budget_tokens": 10}, "budget_tokens")])
def test_token_limits_check_before_and_count_after(redis_url, limits, field):
    _, record = new_key(KeySpec(name="a", limits=limits))

    async def scenario():
        client = connect_async(redis_url)
        limits_, ledger = Limits(client, "t"), None
        ledger = UsageLedger(client, limits_)
        await limits_.admit(record)  # nothing used yet
        await ledger.record(UsageEntry(record, (CallUsage("alpha", 6, 3),)))
        await limits_.admit(record)  # 9 < 10: the next may start
        await ledger.record(UsageEntry(record, (CallUsage("alpha", 6, 3),)))  # 18: over, booked
        with pytest.raises(ApiError) as caught:
            await limits_.admit(record)
        return caught.value, await ledger.read(record)

    err, usage = run(scenario())
    assert err.status == 429 and err.param == f"limits.{field}" and "Retry-After" in err.headers
    assert usage["total_tokens"] == 18  # the answer that went over was counted, not cut
    assert usage["requests"] == 2 and usage["budget_period"]["tokens"] == 18


def test_usage_per_expert_with_cost(redis_url):
    _, record = new_key(KeySpec(name="a"))

    async def scenario():
        client = connect_async(redis_url)
        ledger = UsageLedger(client, Limits(client, "t"))
        calls = (CallUsage("alpha", 3, 4, 4e-6), CallUsage("beta", 3, 4),
                 CallUsage("alpha", 10, 5, 5e-6))
        await ledger.record(UsageEntry(record, calls))
        return await ledger.read(record)

    usage = run(scenario())
    assert usage["experts"]["alpha"] == {"prompt_tokens": 13, "completion_tokens": 9,
                                         "calls": 2, "cost_usd": pytest.approx(9e-6)}
    assert usage["experts"]["beta"]["cost_usd"] == 0
    assert usage["prompt_tokens"] == 16 and usage["completion_tokens"] == 13


def test_redis_down_known_keys_honoured_new_keys_503_usage_kept():
    server = RestartableRedis(tempfile.mkdtemp(prefix="ckeys-")).start()
    try:
        run(_outage(server))
    finally:
        server.stop()


async def _outage(server: RestartableRedis) -> None:
    client = connect_async(server.url)
    store = KeyStore(client, "t", fresh_s=0.1, outage_grace_s=30)
    ledger = UsageLedger(client, Limits(client, "t"), retry_s=0.1)
    seen, record = await _create(store, name="seen")
    unseen, _ = await _create(store, name="unseen")
    await store.authenticate(bearer(seen))
    server.stop()
    await asyncio.sleep(0.2)  # past the copy's freshness: the store must ask Redis
    assert (await store.authenticate(bearer(seen))).name == "seen"
    with pytest.raises(ApiError) as caught:
        await store.authenticate(bearer(unseen))
    assert caught.value.status == 503 and caught.value.headers["Retry-After"]
    for _ in range(2):  # two wait: written together in one MULTI/EXEC
        assert not await ledger.record(UsageEntry(record, (CallUsage("alpha", 2, 3),)))
    assert ledger.pending == 2
    server.start()
    await asyncio.sleep(1.5)  # past the breaker's pause; no request: the retry writes it
    assert ledger.pending == 0
    assert await ledger.record(UsageEntry(record, (CallUsage("alpha", 1, 1),)))
    assert (await ledger.read(record))["total_tokens"] == 12  # nothing lost, nothing twice
    stale = KeyStore(client, "t", fresh_s=0.1, outage_grace_s=0.1)
    await stale.authenticate(bearer(seen))
    server.stop()
    await asyncio.sleep(0.25)  # past the grace: a known key is refused too
    with pytest.raises(ApiError) as caught:
        await stale.authenticate(bearer(seen))
    assert caught.value.status == 503


def test_a_redis_that_does_not_answer_slows_one_call_per_pause():
    import socket

    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}"

        async def scenario() -> tuple[float, float]:
            client, breaker = connect_async(url), RedisBreaker(pause_s=1.0)
            started = time.monotonic()
            with pytest.raises(REDIS_ERRORS):
                await breaker.call(lambda: client.get("x"))
            first = time.monotonic() - started
            started = time.monotonic()
            for _ in range(20):
                with pytest.raises(RedisSkipped):
                    await breaker.call(lambda: client.get("x"))
            return first, time.monotonic() - started

        first, rest = run(scenario())
    assert 0.4 <= first <= 3.0  # its own timeouts (0.5 s, one retry)
    assert rest < 0.1  # the next 20 are not sent
