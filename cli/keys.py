"""``herald keys``: create, list and revoke API keys straight in the database."""

from __future__ import annotations

from datetime import datetime

import typer
from pydantic import ValidationError

from cli.common import JSON_OPTION, fail, print_json, print_table, transaction
from store import api_keys as q
from store.api_keys import KEY_CACHE_SECONDS, KeyCreate, KeyPublic

app = typer.Typer(
    help="Manage API keys (stored hashed; a key is shown once).", no_args_is_help=True
)


@app.command()
def create(
    tenant: str = typer.Option(..., "--tenant", help="The key's tenant; created if new."),
    name: str = typer.Option(..., "--name", help="What the key is for, e.g. ci."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Create a key. It is printed once: store it now."""
    try:
        body = KeyCreate(tenant=tenant, name=name)
    except ValidationError as exc:
        fail("; ".join(f"--{e['loc'][0]}: {e['msg']}" for e in exc.errors()), code=2)
    with transaction() as session:
        created = q.create_key(session, body)
    if as_json:
        print_json(created)
        return
    typer.echo(created.key)
    typer.echo(
        f"Created {created.id} for tenant {created.tenant} ({created.name}). "
        "The key above is not shown again.",
        err=True,
    )


@app.command("list")
def list_(
    tenant: str | None = typer.Option(None, "--tenant", help="Only this tenant's keys."),
    include_revoked: bool = typer.Option(False, "--all", help="Include revoked keys."),
    as_json: bool = JSON_OPTION,
) -> None:
    """List keys (never their plaintext): id, prefix, tenant, name, created, last used."""
    with transaction() as session:
        keys = q.list_keys(session, tenant, include_revoked)
    if as_json:
        print_json(keys)
        return
    if not keys:
        typer.echo("no keys", err=True)
        return
    headers = ("ID", "PREFIX", "TENANT", "NAME", "CREATED", "LAST USED", "STATUS")
    print_table(headers, [_row(k) for k in keys])


@app.command()
def revoke(
    key_id: str = typer.Argument(..., metavar="ID", help="The key's id, from `herald keys list`."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Revoke a key for good; API processes refuse it within their key cache time."""
    with transaction() as session:
        revoked = q.revoke_key(session, key_id)
    if revoked is None:
        fail(f"no API key {key_id!r}")
    if as_json:
        print_json(revoked)
        return
    typer.echo(
        f"Revoked {revoked.id} (tenant {revoked.tenant}, {revoked.name}); "
        f"running API processes refuse it within {KEY_CACHE_SECONDS:g} s."
    )


def _row(key: KeyPublic) -> tuple[str, ...]:
    status = "active" if key.revoked_at is None else f"revoked ({key.revoked_reason})"
    return (
        key.id,
        f"{key.prefix}…" if key.prefix else "-",
        key.tenant,
        key.name,
        _when(key.created_at),
        _when(key.last_used_at),
        status,
    )


def _when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC") if at else "never"
