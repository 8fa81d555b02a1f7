"""``privacy-gateway``: the parser, and one exit status per kind of failure.

Each command group registers its own parsers (:mod:`.files` redact/detect, :mod:`.identities`
keys, :mod:`.escrow` unmask/audit/vault, :mod:`.cosigning` escrow, :mod:`.serve` serve, :mod:`.signin` token/console)
and the function that runs it. Failures the user can act on are one line on stderr: exit status
2 for bad input or a refusal, 1 for a verification that found damage. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

import av

from ..files import MediaError
from . import cosigning, escrow, files, identities, prompt, serve, signin
from .errors import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, CheckFailed, CommandError

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="privacy-gateway",
                                   description="Privacy-by-design anonymization for video surveillance.",
                                   epilog=prompt.HELP)
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    files.register(commands)
    identities.register(commands)
    escrow.register(commands)
    cosigning.register(commands)
    serve.register(commands)
    signin.register(commands)
    return root


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["unmask", "approve"]:  # `unmask approve REQUEST`: its own parser (unmask's takes a file first)
        argv = ["unmask-approve", *argv[2:]]
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except CheckFailed as exc:
        print(f"privacy-gateway: error: {exc}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    except (CommandError, MediaError) as exc:
        print(f"privacy-gateway: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except av.FFmpegError as exc:  # a codec or container problem not caught closer to its cause
        print(f"privacy-gateway: error: media: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout closed early (``| head``): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
