"""The HTTP admin API as the CLI uses it (``conclave experts ... --url``, ``conclave
keys``): the same list/add/remove as the registry, against a running server, with the
bearer token from ``--token`` or ``$CONCLAVE_ADMIN_TOKEN``."""

from __future__ import annotations

import os

from experts.errors import ExpertError
from experts.spec import ExpertSpec

TOKEN_ENV = "CONCLAVE_ADMIN_TOKEN"


class AdminClient:
    """``list``/``add``/``remove`` over ``/v1/experts``, and any admin call with
    :meth:`send`; errors become :class:`ExpertError` carrying the server's message."""

    def __init__(self, url: str, token: str | None = None):
        self.url = url.rstrip("/")
        self.token = token or os.environ.get(TOKEN_ENV)
        if not self.token:
            raise ExpertError(f"the admin API needs a token: --token or ${TOKEN_ENV}")

    def list(self) -> list[ExpertSpec]:
        return [ExpertSpec.model_construct(**spec)
                for spec in self.send("GET", "/v1/experts")["data"]]

    def add(self, spec: ExpertSpec) -> int:
        return int(self.send("POST", "/v1/experts",
                             json=spec.model_dump(mode="json"))["version"])

    def remove(self, expert_id: str) -> int:
        return int(self.send("DELETE", "/v1/experts/" + expert_id)["version"])

    def send(self, method: str, path: str, **kwargs) -> dict:
        """``method path`` (from the server's root) with the token; the JSON answer."""
        import httpx

        try:
            resp = httpx.request(method, self.url + path, timeout=60,
                                 headers={"Authorization": f"Bearer {self.token}"}, **kwargs)
        except httpx.HTTPError as err:
            raise ExpertError(f"cannot reach {self.url}: {err}") from None
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if resp.status_code != 200:
            message = (body.get("error") or {}).get("message") or f"HTTP {resp.status_code}"
            raise ExpertError(f"server refused ({resp.status_code}): {message}")
        return body
