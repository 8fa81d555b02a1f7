"""``serve``: the live gateway (``token`` and ``console``, which sign in to it, are in :mod:`.signin`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from keys import EscrowError

from ..config import ConfigError, load_config
from ..openbao import OpenBaoError
from .errors import CommandError


def register(commands: argparse._SubParsersAction) -> None:
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
