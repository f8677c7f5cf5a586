"""``poisonguard ui``: serve the steward review page on this machine."""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path

import typer

from pipeline.cli_review import WORKSPACE
from pipeline.config import Settings
from pipeline.errors import PoisonguardError

TOKEN_VARIABLE = "POISONGUARD_UI_TOKEN"


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def ui(
    workspace: Path | None = WORKSPACE,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback unless --allow-remote)."),
    port: int = typer.Option(8765, "--port", min=1, max=65535, help="Port to listen on."),
    allow_remote: bool = typer.Option(
        False, "--allow-remote", help="Allow a non-loopback --host; put the page behind TLS then."
    ),
) -> None:
    """Serve the review page: batches, quarantined rows, release and reject in a browser.

    Sign in with $POISONGUARD_UI_TOKEN, or with the token printed at start when it is unset.
    """
    remote = not is_loopback(host)
    if remote and not allow_remote:
        raise PoisonguardError(
            f"Refusing to listen on {host}: the review page binds a loopback address "
            "(127.0.0.1) unless --allow-remote is given, and then it must sit behind TLS."
        )
    settings = Settings.from_environment(workspace)
    configured = os.environ.get(TOKEN_VARIABLE, "")
    token = configured or secrets.token_urlsafe(24)

    import uvicorn

    from pipeline.ui import check_token, create_app

    check_token(token)
    allowed = ("*",) if remote else ("127.0.0.1", "localhost", "::1")
    app = create_app(settings, token, allowed_hosts=allowed)
    shown = f"[{host}]" if ":" in host else host
    typer.echo(f"poisonguard review page on http://{shown}:{port}/  (ledger {app.state.ledger.url})")
    if remote:
        typer.echo(
            "poisonguard: warning: listening on a non-loopback address without TLS. Expose it only "
            "behind a TLS-terminating proxy: the sign-in token and session cookie must not cross a "
            "network in clear.",
            err=True,
        )
    if configured:
        typer.echo(f"Sign in with the token in ${TOKEN_VARIABLE}.")
    else:
        typer.echo(f"Sign-in token (shown once; set ${TOKEN_VARIABLE} to choose your own): {token}")
    uvicorn.run(app, host=host.strip("[]"), port=port, log_level="warning", server_header=False)
