"""``serve`` (the live gateway) and ``token`` (a token from a running gateway, signed with one's key)."""

from __future__ import annotations

import argparse
import json
import logging
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from keys import EscrowError

from ..config import ConfigError, load_config
from ..openbao import OpenBaoError
from .errors import CommandError
from .prompt import open_identities

TOKEN_TTL = 8 * 3600  # seconds a token asked for on the command line lives by default
_REQUEST_TIMEOUT = 30.0  # seconds to wait for the gateway's answer


def register(commands: argparse._SubParsersAction) -> None:
    token = commands.add_parser("token", help="get an API/viewer token from a running gateway, signed with your identity key")
    token.add_argument("--gateway", required=True, metavar="URL", help="the gateway's base URL, e.g. http://127.0.0.1:8080")
    token.add_argument("--identity", type=Path, required=True, metavar="FILE",
                       help="your private identity file (passphrase from PRIVACY_GATEWAY_PASSPHRASE, else prompted)")
    token.add_argument("--for", dest="holder", metavar="NAME", help="issue it to another identity (privacy officers)")
    token.add_argument("--camera", dest="cameras", action="append", metavar="ID", help="limit it to this camera (repeatable)")
    token.add_argument("--ttl", type=float, default=TOKEN_TTL, metavar="SECONDS", help="lifetime (default: 8 hours)")
    token.add_argument("--cafile", type=Path, metavar="FILE", help="CA certificate to trust for an https gateway")
    token.set_defaults(run=_token)

    serve = commands.add_parser("serve", help="run the live gateway (without --config: the demo, a camera on a bundled "
                                "clip; not for production)")
    serve.add_argument("--config", type=Path, metavar="FILE",
                       help="the site's gateway configuration (YAML); without it, the demo: config/gateway.yaml, "
                            "demo identities created on its first start")
    serve.add_argument("--data", type=Path, metavar="DIR", help="data directory (keys, vault, recordings); overrides the config")
    serve.add_argument("--host", metavar="HOST", help="listen address (default from the config: 127.0.0.1)")
    serve.add_argument("--port", type=int, metavar="PORT", help="listen port (default from the config: 8080)")
    serve.add_argument("--demo-investigator", type=Path, metavar="FILE",
                       help="the demo only, at its first start: write the demo investigator's identity file here "
                            "(outside the data directory; its passphrase is printed once), to try unmasking. "
                            "Without it that private key is not kept")
    serve.set_defaults(run=_serve)


def _token(args: argparse.Namespace) -> int:
    """``POST /api/tokens`` signed with the identity's key; prints the token (and nothing else) on stdout."""
    from ..api.access import sign_request

    (holder,) = open_identities([args.identity])
    fields = {"ttl": args.ttl, **({"identity": args.holder} if args.holder else {}),
              **({"cameras": args.cameras} if args.cameras else {})}
    body = json.dumps(fields).encode()
    base = args.gateway.rstrip("/")
    context = ssl.create_default_context(cafile=str(args.cafile)) if args.cafile else None
    try:
        with urllib.request.urlopen(f"{base}/api/gateway", timeout=_REQUEST_TIMEOUT, context=context) as reply:
            fingerprint = json.loads(reply.read())["fingerprint"]
        signature = sign_request(holder, "POST", "/api/tokens", body, host=urllib.parse.urlsplit(base).netloc,
                                 gateway=fingerprint)
        request = urllib.request.Request(f"{base}/api/tokens", data=body, method="POST", headers={
            "Content-Type": "application/json", "Authorization": signature})
        with urllib.request.urlopen(request, timeout=_REQUEST_TIMEOUT, context=context) as reply:
            answer = json.loads(reply.read())
    except urllib.error.HTTPError as error:
        try:
            message = json.loads(error.read()).get("error", "")
        except ValueError:
            message = ""
        raise CommandError(f"the gateway refused ({error.code}): {message or error.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise CommandError(f"cannot reach {base}: {getattr(exc, 'reason', exc)}") from None
    cameras = "every camera it may use" if answer["cameras"] is None else ", ".join(answer["cameras"])
    print(f"token for {answer['identity']} ({cameras}), expires {answer['expires']}:", file=sys.stderr)
    print(answer["token"])
    return 0


def _serve(args: argparse.Namespace) -> int:
    """Configuration problems (the file, the key directory, the vault, state on disk) are one line and
    exit status 2; anything else is a bug and keeps its traceback."""
    import asyncio

    from ..api import Demo, data_dir_default, serve

    if args.config is not None and args.demo_investigator is not None:
        raise CommandError("--demo-investigator goes with the demo (serve without --config); a site configuration "
                           "creates no demo identities: add an investigator with `privacy-gateway keys add-identity`")
    demo = Demo(args.demo_investigator) if args.config is None else None  # the embedded default is the demo
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request to the co-signer is noise
    try:
        config, policies = load_config(args.config, args.data or data_dir_default(args.config))
        listen = config.listen.model_copy(update={k: v for k, v in (("host", args.host), ("port", args.port))
                                                  if v is not None})
        config = config.model_copy(update={"listen": listen})
        asyncio.run(serve(config, policies, announce=lambda line: print(line, flush=True), demo=demo))
    except (ConfigError, EscrowError, OpenBaoError) as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:  # a listening port taken, a data directory not writable
        raise CommandError(f"cannot serve: {exc.strerror or exc}"
                           f"{f' ({exc.filename})' if getattr(exc, 'filename', None) else ''}") from None
    return 0
