"""The admin API's logic: list, add and remove experts at runtime, behind a bearer token.

The token comes from the config (``serving.admin_token``) or the env var it names
(``serving.admin_token_env``, default ``CONCLAVE_ADMIN_TOKEN``). With no token configured
the admin API refuses every call. The token is compared in constant time and never
echoed, logged or listed.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from pydantic import ValidationError

from cluster.catalog import ExpertCatalog
from cluster.config import ServingConfig
from cluster.http.errors import ApiError, from_domain, from_validation, unauthorized
from experts.errors import ExpertError
from experts.loader import ExpertLoader
from experts.real_model import models_root
from experts.redis_conn import cache_dir
from experts.spec import ExpertSpec
from routing.profile_store import ProfileStore


def allowed_roots(serving: ServingConfig) -> list[str]:
    """Folders local model and adapter paths must lie under (default: the cache dir and
    the prepared models' folder, ``$CONCLAVE_MODELS`` where that is set elsewhere)."""
    return list(serving.allowed_model_roots) or [str(cache_dir()), str(models_root())]


def admin_token(serving: ServingConfig) -> str | None:
    """The configured admin token, or None when the admin API is disabled."""
    return serving.admin_token or os.environ.get(serving.admin_token_env) or None


class ExpertAdmin:
    """Registry changes on behalf of an authorised caller.

    After a change returns, this replica's catalog already reflects it (it refreshes
    synchronously), so a removed expert gets no new work from here on."""

    def __init__(self, catalog: ExpertCatalog, token: str | None, roots: list[str],
                 engines: dict | None = None):
        self._catalog = catalog
        self._token = token
        # only its checks are used (paths, adapter base and rank); ``engines``: per pool
        self._paths = ExpertLoader(catalog.get, roots, engines=engines)

    def authorise(self, header: str | None) -> None:
        """Raise 401 unless ``header`` is ``Bearer <the token>``."""
        scheme, _, given = (header or "").partition(" ")
        if (
            not self._token
            or scheme.lower() != "bearer"
            or not hmac.compare_digest(given.strip().encode(), self._token.encode())
        ):
            raise unauthorized()

    def list(self) -> dict:
        return {"object": "list", "version": self._catalog.version,
                "data": [spec.model_dump(mode="json") for spec in self._catalog.specs()]}

    def add(self, body: object) -> dict:
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be one expert spec (a JSON object)")
        try:
            spec = ExpertSpec.model_validate(body)
        except ValidationError as err:
            raise from_validation(err.errors()) from None
        try:
            replay = spec.replay and str(Path(spec.replay.data).expanduser().resolve())
            for ref in (spec.model, spec.adapter, replay):
                self._paths.check_path(spec, ref)
            self._paths.check_adapter(spec)
            version = self._catalog.registry.add(spec)
        except ExpertError as err:
            raise from_domain(err) from None
        self._catalog.refresh()
        return {"added": spec.id, "version": version}

    def remove(self, expert_id: str) -> dict:
        registry = self._catalog.registry
        try:
            version = registry.remove(expert_id)
        except ExpertError as err:
            raise from_domain(err) from None
        ProfileStore(registry.client, registry.namespace).remove(expert_id)
        self._catalog.refresh()
        return {"removed": expert_id, "version": version}
