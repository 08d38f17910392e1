"""HTTP routes of the API keys: ``/v1/keys`` (admin token: create, list, revoke, every
key's usage) and ``/v1/usage`` (an API key: its own usage).

The plain key appears in exactly one place: the response to the ``POST`` that created it.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from pydantic import ValidationError

from cluster.http.admin import ExpertAdmin
from cluster.http.errors import ApiError, from_validation, json_body
from cluster.tenants.keys import KeySpec
from cluster.tenants.tenancy import Tenancy


def keys_off() -> ApiError:
    return ApiError(404, "API keys are off on this server (config: tenants.enabled)",
                    code="keys_disabled")


def add_key_routes(app: FastAPI, tenancy: Tenancy | None, admin: ExpertAdmin) -> None:
    def enabled(request: Request) -> Tenancy:
        admin.authorise(request.headers.get("authorization"))
        if tenancy is None:
            raise keys_off()
        return tenancy

    @app.post("/v1/keys")
    async def create_key(request: Request):
        keys = enabled(request)
        try:
            spec = KeySpec.model_validate(await json_body(request))
        except ValidationError as err:
            raise from_validation(err.errors()) from None
        plain, record = await keys.store.create(spec)
        return {"key": plain, **record.public()}

    @app.get("/v1/keys")
    async def list_keys(request: Request):
        records = await enabled(request).store.list()
        return {"object": "list", "data": [record.public() for record in records]}

    @app.get("/v1/keys/usage")
    async def all_usage(request: Request):
        keys = enabled(request)
        records = await keys.store.list()
        return {"object": "list", "data": [await keys.ledger.read(r) for r in records]}

    @app.delete("/v1/keys/{name}")
    async def revoke_key(name: str, request: Request):
        record = await enabled(request).store.revoke(name)
        return {"revoked": record.name, "id": record.id}

    @app.get("/v1/usage")
    async def own_usage(request: Request):
        if tenancy is None:
            raise keys_off()
        record = await tenancy.authenticate(request.headers.get("authorization"))
        return await tenancy.ledger.read(record)
