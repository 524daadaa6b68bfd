"""`bankgate certs`: client certificates of M2M users (RFC 8705 mutual TLS)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from bankgate.cli._common import Invocation, command, console, errors, propagation, ts
from bankgate.files import private_dir, write_private
from bankgate.pki import IssuedCertificate

__all__ = ["app"]

app = typer.Typer(help="Client certificates of M2M users: issue, list, show, download, revoke.",
                  no_args_is_help=True)

Serial = Annotated[str, typer.Argument(help="The certificate's serial number (hex).", show_default=False)]


def _write_issued(issued: IssuedCertificate, out: Path) -> dict[str, str | None]:
    files: dict[str, str | None] = {"certificate_file": str(out / f"{issued.serial}.crt.pem"),
                                    "private_key_file": None, "pkcs12_file": None}
    write_private(out / f"{issued.serial}.crt.pem", issued.certificate_pem.encode("ascii"), replace=False)
    # Through the admin API a generated key arrives inside the PKCS#12 bundle alone.
    if issued.private_key_pem is not None:
        files["private_key_file"] = str(out / f"{issued.serial}.key.pem")
        write_private(out / f"{issued.serial}.key.pem", issued.private_key_pem.encode("ascii"), replace=False)
    if issued.pkcs12 is not None:
        files["pkcs12_file"] = str(out / f"{issued.serial}.p12")
        write_private(out / f"{issued.serial}.p12", issued.pkcs12, replace=False)
    return files


@command(app, "issue")
def issue(
    cli: Invocation,
    username: Annotated[str, typer.Argument(help="The M2M user the certificate is for.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Directory for <serial>.crt.pem and, without --csr, "
                                      "<serial>.key.pem and <serial>.p12.", show_default=False)],
    csr: Annotated[Path | None, typer.Option("--csr", help="A certificate signing request (PKCS#10, PEM or DER) "
                                             "made by the user, so that bankgate never sees their private key.",
                                             show_default=False)] = None,
    days: Annotated[int, typer.Option(min=1, max=3650, help="Days the certificate is valid.")] = 365,
    key_type: Annotated[str, typer.Option("--key-type", help="Without --csr: ec (P-256) or rsa (2048 bits).")] = "ec",
) -> None:
    """Issue a client certificate (mutual TLS) for a user; the PKCS#12 password is shown this once."""
    if key_type not in ("ec", "rsa"):
        raise ValueError(f"--key-type {key_type} is not one of: ec, rsa")
    request = csr.read_bytes() if csr is not None else None
    private_dir(out)
    issued, files = cli.run(lambda s: s.admin.certs.issue(cli.actor, username, lambda i: _write_issued(i, out),
                                                          csr_pem=request, days=days, key_type=key_type))
    shown = {
        "serial": issued.serial,
        "username": username,
        "user_id": issued.record.user_id,
        "environment": issued.record.environment,
        "subject": issued.record.subject,
        "thumbprint": issued.thumbprint,
        "x5t#S256": issued.x5t_s256,
        "not_before": int(issued.not_before),
        "not_after": int(issued.not_after),
        **files,
        "pkcs12_password": issued.pkcs12_password,
    }
    if cli.json:
        cli.emit_json(shown)
        return
    console.print(f"[green]issued[/green] certificate {issued.serial} for {username} ({shown['environment']})",
                  highlight=False, soft_wrap=True)
    console.print(f"  thumbprint  {issued.thumbprint}", highlight=False)
    console.print(f"  valid       {ts(issued.not_before)} to {ts(issued.not_after)}", highlight=False)
    for key in ("certificate_file", "private_key_file", "pkcs12_file"):
        if files[key]:
            console.print(f"  {key.removesuffix('_file').replace('_', ' '):<11} {files[key]}", highlight=False,
                          markup=False)
    if issued.pkcs12_password:
        console.print(f"  PKCS#12 password  {issued.pkcs12_password}   [yellow](shown once: hand it over "
                      "separately from the file)[/yellow]", highlight=False)


@command(app, "list")
def list_(cli: Invocation, username: Annotated[str, typer.Argument(help="The M2M user.", show_default=False)]) -> None:
    """A user's certificates, oldest first (during a renewal two can be valid)."""
    records = cli.run(lambda s: s.admin.certs.list(username))
    if cli.json:
        cli.emit_json([r.as_json() for r in records])
        return
    if not records:
        console.print(f"{username} has no certificate; issue one with `bankgate certs issue {username} --out DIR`",
                      highlight=False, markup=False, soft_wrap=True)
    now = time.time()
    # Two lines per certificate rather than a table: serial and thumbprint (40 characters each) stay whole and
    # copyable on a narrow terminal.
    for r in records:
        status = "expired" if r.status == "valid" and now >= r.not_after else r.status
        console.print(f"{r.serial}  {status:<8} {ts(r.not_before)} to {ts(r.not_after)}", highlight=False,
                      markup=False, soft_wrap=True)
        console.print(f"  thumbprint {r.thumbprint}", highlight=False, markup=False, soft_wrap=True)


@command(app, "show")
def show(cli: Invocation, serial: Serial) -> None:
    """Show one certificate."""
    record = cli.run(lambda s: s.admin.certs.get(serial))
    if cli.json:
        cli.emit_json({**record.as_json(), "certificate_pem": record.certificate_pem})
        return
    for key, value in record.as_json().items():
        shown = ts(value) if key in ("not_before", "not_after", "revoked_at", "created_at") else value
        console.print(f"{key:>12}  {shown}", highlight=False, markup=False)


@command(app, "download", json_output=False)
def download(
    cli: Invocation,
    serial: Serial,
    out: Annotated[Path | None, typer.Option("--out", help="File to write the PEM certificate to "
                                             "[default: print it].", show_default=False)] = None,
) -> None:
    """The certificate (PEM, public): what the user downloads to learn its thumbprint."""
    record = cli.run(lambda s: s.admin.certs.get(serial))
    if out is None:
        sys.stdout.write(record.certificate_pem)
        return
    write_private(out, record.certificate_pem.encode("ascii"))
    errors.print(f"wrote {out} (thumbprint {record.thumbprint})", highlight=False, markup=False)


@command(app, "revoke")
def revoke(cli: Invocation, serial: Serial) -> None:
    """Revoke a certificate: no new token is issued for it, and every token bound to it is refused by every running
    server within 1 s."""
    settings = cli.settings()
    record, changed = cli.run(lambda s: s.admin.certs.revoke(cli.actor, serial), settings=settings)
    if cli.json:
        cli.emit_json(record.as_json())
        return
    verb = "revoked" if changed else "already revoked"
    console.print(f"[green]{verb}[/green] {record.serial} (thumbprint {record.thumbprint}) at "
                  f"{ts(record.revoked_at)}; running servers refuse the tokens bound to it within "
                  f"{propagation(settings)}", highlight=False, soft_wrap=True)
