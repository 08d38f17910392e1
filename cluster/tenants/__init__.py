"""API keys, per-key limits and usage by key (issue 25): plain asyncio over Redis, no Ray.

- :mod:`~cluster.tenants.keys`: the key format, the key spec, the record (salted hash).
- :mod:`~cluster.tenants.store`: keys in Redis, each replica's short local copy.
- :mod:`~cluster.tenants.limits`: rpm, tpm and budget, atomic across replicas (Lua).
- :mod:`~cluster.tenants.usage`: tokens and cost per key and expert.
- :mod:`~cluster.tenants.tenancy`: what the gateway asks of them.
- :mod:`~cluster.tenants.routes`: ``/v1/keys`` (admin) and ``/v1/usage``.

See docs/tenants.md.
"""
