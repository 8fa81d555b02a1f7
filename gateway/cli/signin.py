"""``token`` and ``console``: signing in to a running gateway with one's own key, no secret pasted.

Both ask ``POST /api/tokens`` with a request signed by the identity's Ed25519 key (docs/access.md,
"Signed requests"): :func:`mint` is that one request. ``token`` prints the token; ``console`` opens
the officer's console with it in the URL fragment (``URL/console#token=...``), which browsers never
send to a server: the console keeps it for the tab, as the viewer page does.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
import webbrowser
from pathlib import Path

from .errors import CommandError
from .prompt import open_identities

TOKEN_TTL = 8 * 3600  # seconds a token asked for on the command line lives by default
_REQUEST_TIMEOUT = 30.0  # seconds to wait for the gateway's answer


def register(commands: argparse._SubParsersAction) -> None:
    token = commands.add_parser("token", help="get an API/viewer token from a running gateway, signed with your identity key")
    _gateway_arguments(token)
    token.add_argument("--for", dest="holder", metavar="NAME", help="issue it to another identity (privacy officers)")
    token.add_argument("--camera", dest="cameras", action="append", metavar="ID", help="limit it to this camera (repeatable)")
    token.add_argument("--ttl", type=float, default=TOKEN_TTL, metavar="SECONDS", help="lifetime (default: 8 hours)")
    token.set_defaults(run=_token)

    console = commands.add_parser("console", help="open the gateway's console in your browser, signed in with a fresh "
                                  "token that your identity key asked for",
                                  description="Asks the gateway for a token with a request signed by your identity "
                                  "key (as `token` does), prints the console's URL with the token in its fragment "
                                  "(#token=..., never sent to a server) and opens it in your browser.")
    _gateway_arguments(console)
    console.add_argument("--ttl", type=float, default=TOKEN_TTL, metavar="SECONDS",
                         help="how long the console's token lives (default: 8 hours)")
    console.add_argument("--no-browser", action="store_true", help="only print the URL")
    console.set_defaults(run=_console)


def _gateway_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gateway", required=True, metavar="URL", help="the gateway's base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--identity", type=Path, required=True, metavar="FILE",
                        help="your private identity file (passphrase from PRIVACY_GATEWAY_PASSPHRASE_<NAME> or "
                             "PRIVACY_GATEWAY_PASSPHRASE, else prompted)")
    parser.add_argument("--cafile", type=Path, metavar="FILE", help="CA certificate to trust for an https gateway")


def mint(gateway: str, identity: Path, fields: dict, cafile: Path | None = None) -> dict:
    """``POST /api/tokens`` with ``fields``, signed with the key in the identity file: the gateway's
    answer (``token``, ``identity``, ``cameras``, ``expires``, ...). :class:`CommandError` if the file
    does not open, the gateway cannot be reached or it refuses."""
    from ..api.access import sign_request  # on use: the API's modules load aiortc

    (holder,) = open_identities([identity])
    body = json.dumps(fields).encode()
    base = gateway.rstrip("/")
    context = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    try:
        with urllib.request.urlopen(f"{base}/api/gateway", timeout=_REQUEST_TIMEOUT, context=context) as reply:
            fingerprint = json.loads(reply.read())["fingerprint"]
        signature = sign_request(holder, "POST", "/api/tokens", body, host=urllib.parse.urlsplit(base).netloc,
                                 gateway=fingerprint)
        request = urllib.request.Request(f"{base}/api/tokens", data=body, method="POST", headers={
            "Content-Type": "application/json", "Authorization": signature})
        with urllib.request.urlopen(request, timeout=_REQUEST_TIMEOUT, context=context) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as error:
        try:
            message = json.loads(error.read()).get("error", "")
        except ValueError:
            message = ""
        raise CommandError(f"the gateway refused ({error.code}): {message or error.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise CommandError(f"cannot reach {base}: {getattr(exc, 'reason', exc)}") from None


def _describe(answer: dict) -> str:
    cameras = "every camera it may use" if answer["cameras"] is None else ", ".join(answer["cameras"])
    return f"token for {answer['identity']} ({cameras}), expires {answer['expires']}"


def _token(args: argparse.Namespace) -> int:
    """Prints the token (and nothing else) on stdout."""
    fields = {"ttl": args.ttl, **({"identity": args.holder} if args.holder else {}),
              **({"cameras": args.cameras} if args.cameras else {})}
    answer = mint(args.gateway, args.identity, fields, args.cafile)
    print(f"{_describe(answer)}:", file=sys.stderr)
    print(answer["token"])
    return 0


def _console(args: argparse.Namespace) -> int:
    """Prints the console's URL (with the token) on stdout, then opens it unless --no-browser."""
    answer = mint(args.gateway, args.identity, {"ttl": args.ttl}, args.cafile)
    url = f"{args.gateway.rstrip('/')}/console#token={answer['token']}"
    print(f"{_describe(answer)}; the console, signed in for this browser tab:", file=sys.stderr)
    print(url, flush=True)
    if not args.no_browser and not webbrowser.open(url):
        print("no browser could be opened here: open the URL above yourself (it holds the token: keep it to yourself)",
              file=sys.stderr)
    return 0
