"""The ``conclave`` command. One module per command group; each registers itself here.

Errors exit non-zero with one clear line (see :func:`cluster.cli.common.fail`).
"""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="conclave")
def main() -> None:
    """Conclave: a panel of expert models behind one routed endpoint."""


def _register() -> None:
    # Each command module adds itself here (imports are light: heavy ones stay inside commands).
    from cluster.cli import aggregators as _aggregators  # noqa: F401
    from cluster.cli import batch as _batch  # noqa: F401
    from cluster.cli import demo as _demo  # noqa: F401
    from cluster.cli import deploy as _deploy  # noqa: F401
    from cluster.cli import eval as _eval  # noqa: F401
    from cluster.cli import experts as _experts  # noqa: F401
    from cluster.cli import gates as _gates  # noqa: F401
    from cluster.cli import keys as _keys  # noqa: F401
    from cluster.cli import models as _models  # noqa: F401
    from cluster.cli import router as _router  # noqa: F401
    from cluster.cli import serve as _serve  # noqa: F401
    from cluster.cli import train as _train  # noqa: F401


_register()
