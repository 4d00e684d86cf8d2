"""Entry point of the ``p2pnet`` command.

Every command reports failure as one line on stderr and a non-zero exit code;
a traceback is shown only with ``P2PNET_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys

import click

from p2pnet.errors import P2PNetError

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="p2pnet")
def cli() -> None:
    """p2pnet: a peer-to-peer network of expert LLMs."""


def _register() -> None:
    from p2pnet_cli import ask, ledger, models, node, swarm  # noqa: F401  (each adds its commands)
    from p2pnet_cli import recommend  # noqa: F401  (adds `models recommend`)
    from p2pnet_cli import sim  # noqa: F401  (adds `sim`)
    from p2pnet_cli import dashboard  # noqa: F401  (adds `dashboard`)
    from p2pnet_cli import testnet  # noqa: F401  (adds `testnet`)
    from p2pnet_cli import knowledge  # noqa: F401  (adds `knowledge build` and `knowledge check`)
    from p2pnet_cli import network  # noqa: F401  (adds `network init|show|list`)


def _user_errors(exc: BaseException) -> list:
    """The errors to report in one line: ``exc`` itself, or every leaf of an
    exception group (Trio wraps a failing task's error in one) when all are
    P2PNetError or OSError; [] when any is something else."""
    if not isinstance(exc, BaseExceptionGroup):
        return [exc] if isinstance(exc, (P2PNetError, OSError)) else []
    leaves = [_user_errors(sub) for sub in exc.exceptions]
    return [leaf for found in leaves for leaf in found] if all(leaves) else []


def main(argv: list[str] | None = None) -> None:
    _register()
    try:
        code = cli.main(args=argv, prog_name="p2pnet", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except click.exceptions.Abort:
        click.echo("p2pnet: aborted", err=True)
        sys.exit(130)
    except click.exceptions.ClickException as exc:
        click.echo(f"p2pnet: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code or 2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("p2pnet: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # never a traceback for a user; the class name helps a bug report
        if os.environ.get("P2PNET_DEBUG"):
            raise
        errors = _user_errors(exc)
        if errors:
            click.echo(f"p2pnet: error: {errors[0]}", err=True)
            sys.exit(1)
        click.echo(f"p2pnet: internal error: {type(exc).__name__}: {exc} (set P2PNET_DEBUG=1 for details)", err=True)
        sys.exit(1)

