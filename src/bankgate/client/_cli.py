"""`bankgate token`: print an access token for either style, from the same cache the SDK uses.

Works on a client-only install (argparse, no server packages). Secrets are read from environment variables or
asked for without echo, never taken as command-line arguments (those show in `ps` and shell history).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from collections.abc import Sequence

from bankgate.client._auth import BankgateAuth
from bankgate.client._cache import FileCache, MemoryCache, TokenCache, default_cache_dir
from bankgate.client._errors import ClientError
from bankgate.client._sources import AUTHORIZE_PATH, METADATA_PATH, CertificateAuthorize, ClientCredentials, TokenSource

__all__ = ["main", "without_server_extra"]

_EPILOG = """\
secrets: the secret key, password and PKCS#12 password are read from the environment variables named by
--secret-key-env / --password-env / --p12-password-env (defaults BANKGATE_SECRET_KEY, BANKGATE_PASSWORD,
BANKGATE_P12_PASSWORD), or asked for without echo when unset and a terminal is attached. They are never accepted
as arguments and never printed.

examples:
  BANKGATE_SECRET_KEY=sk_test_… bankgate token --token-url https://api.banked.com/oauth/token \\
      --api-key bk_test_… --scope app_12345
  BANKGATE_PASSWORD=… bankgate token --authorize-url https://authorizationsandbox.bankingcircleconnect.com \\
      --username robot --cert robot.crt.pem --key robot.key.pem
  bankgate token --base-url http://127.0.0.1:8000 --api-key bk_test_… --json
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bankgate token", description="Print an access token (cached until it is due for refresh).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_argument_group("where")
    where.add_argument("--base-url", help="a bankgate server: the token endpoint is read from its RFC 8414 metadata "
                       "(OAuth2), or its authorize endpoint is used (certificate style)")
    where.add_argument("--token-url", help="OAuth2 token endpoint, e.g. https://api.banked.com/oauth/token")
    where.add_argument("--authorize-url", help="certificate style: the authorization host (the path "
                       f"{AUTHORIZE_PATH} is added unless given)")
    oauth = parser.add_argument_group("OAuth2 client_credentials")
    oauth.add_argument("--api-key", help="the API key (bk_…)")
    oauth.add_argument("--secret-key-env", default="BANKGATE_SECRET_KEY", metavar="VAR",
                       help="environment variable holding the secret key (default: %(default)s)")
    oauth.add_argument("--scope", action="append", help="an application ID; repeat for more")
    cert = parser.add_argument_group("certificate style")
    cert.add_argument("--username", help="the M2M user")
    cert.add_argument("--password-env", default="BANKGATE_PASSWORD", metavar="VAR",
                      help="environment variable holding the password (default: %(default)s)")
    cert.add_argument("--cert", help="client certificate: a PEM file (with --key) or a .p12/.pfx file")
    cert.add_argument("--key", help="the certificate's private key (PEM)")
    cert.add_argument("--p12-password-env", default="BANKGATE_P12_PASSWORD", metavar="VAR",
                      help="environment variable holding the PKCS#12 password (default: %(default)s)")
    parser.add_argument("--ca", help="CA bundle to trust (e.g. bankgate's `bankgate ca-cert`)")
    parser.add_argument("--json", action="store_true", help="print the token endpoint's whole JSON answer")
    parser.add_argument("--no-cache", action="store_true", help="ask for a new token, ignore the cache")
    parser.add_argument("--cache-dir", help=f"where tokens are cached (default: {default_cache_dir()})")
    return parser


def _secret(variable: str, prompt: str) -> str:
    value = os.environ.get(variable)
    if value:
        return value
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    raise SystemExit(f"bankgate token: set {variable} (or run in a terminal to be asked)")


def _source(args: argparse.Namespace) -> TokenSource:
    verify: bool | str = args.ca or True
    if args.username:
        if not args.cert:
            raise SystemExit("bankgate token: the certificate style needs --cert (and --key for a PEM certificate)")
        base = args.authorize_url or args.base_url
        if not base:
            raise SystemExit("bankgate token: give --authorize-url or --base-url")
        url = base if base.rstrip("/").endswith(AUTHORIZE_PATH) else base.rstrip("/") + AUTHORIZE_PATH
        cert: str | tuple[str, str] = (args.cert, args.key) if args.key else args.cert
        p12_password = None
        if str(args.cert).lower().endswith((".p12", ".pfx")):
            p12_password = _secret(args.p12_password_env, "PKCS#12 password: ")
        password = _secret(args.password_env, f"password for {args.username}: ")
        return CertificateAuthorize(url, args.username, password, cert, cert_password=p12_password, verify=verify)
    if args.api_key:
        if not (args.token_url or args.base_url):
            raise SystemExit("bankgate token: give --token-url or --base-url")
        secret = _secret(args.secret_key_env, "secret key: ")
        discovery = None if args.token_url else args.base_url.rstrip("/") + METADATA_PATH
        return ClientCredentials(args.token_url, args.api_key, secret, args.scope, discovery_url=discovery,
                                 verify=verify)
    raise SystemExit("bankgate token: give --api-key (OAuth2) or --username (certificate style); see --help")


def main(argv: Sequence[str] | None = None) -> int:
    """Run `bankgate token` with `argv` (the arguments after `token`)."""
    args = _parser().parse_args(argv)
    try:
        source = _source(args)
        cache: TokenCache = MemoryCache() if args.no_cache else FileCache(args.cache_dir or None)
        token = BankgateAuth(source, cache=cache).token()
    except (ClientError, ValueError, OSError) as exc:
        sys.stderr.write(f"bankgate token: {exc}\n")
        return 1
    if args.json:
        answer = dict(token.response) or {"access_token": token.value, "token_type": token.token_type}
        answer["expires_at"] = round(token.expires_at)
        answer["expires_in_now"] = max(0, round(token.expires_at - time.time()))
        sys.stdout.write(json.dumps(answer) + "\n")
    else:
        sys.stdout.write(token.value + "\n")
    return 0


def without_server_extra(argv: Sequence[str]) -> None:
    """The `bankgate` command on an install without the server extra: `token` works, the rest says what to do."""
    if list(argv[1:2]) == ["token"]:
        raise SystemExit(main(argv[2:]))
    raise SystemExit("bankgate: this command needs the server extra: pip install 'bankgate[server]' "
                     "(`bankgate token` works without it)")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
