"""Command-line side of key escrow: ``unmask``, ``audit verify`` and ``vault shred/verify/tracks``.

The private keys used here are the people's own identity files, opened on their machine;
nothing in this module runs inside the gateway process.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from keys.audit import AuditError, verify
from keys.directory import DirectoryError, KeyDirectory
from keys.identity import IdentityError, PrivateIdentity
from keys.seal import VaultRef
from keys.store import GATEWAY_ACTOR, VaultStore
from keys.unmask import Selection, Unmask, UnmaskError
from keys.vault import VaultError, read_segment, read_wraps, segment_name, verify_camera

from .errors import CheckFailed, CommandError
from .media import MediaError, VideoTranscoder, image_comment, is_image, read_image, video_comment, write_image
from .watermark import watermark


def add_commands(commands: argparse._SubParsersAction) -> None:
    unmask = commands.add_parser("unmask", help="restore selected redacted regions from the vault (audited)")
    unmask.add_argument("input", type=Path, metavar="REDACTED", help="an image or video written by redact --vault")
    unmask.add_argument("--vault", type=Path, required=True, metavar="VAULT")
    unmask.add_argument("--keys", type=Path, required=True, metavar="DIR", help="the key directory")
    unmask.add_argument("--identity", dest="identities", type=Path, action="append", required=True, metavar="FILE",
                        help="a private identity file (repeat for a quorum); passphrases from "
                             "PRIVACY_GATEWAY_PASSPHRASE or prompted per file")
    unmask.add_argument("--track", dest="tracks", type=int, action="append", default=[], metavar="ID",
                        help="restore only this track (repeatable; see `vault tracks`)")
    unmask.add_argument("--class", dest="classes", action="append", choices=("face", "plate"), default=[],
                        help="restore only this class (repeatable)")
    unmask.add_argument("--from", dest="start", metavar="T", help="from this media time (seconds or [HH:]MM:SS)")
    unmask.add_argument("--to", dest="end", metavar="T", help="up to this media time, inclusive")
    unmask.add_argument("--case", required=True, metavar="ID", help="the case this unmask is for (audited)")
    unmask.add_argument("--reason", required=True, metavar="TEXT", help="why (audited)")
    unmask.add_argument("-o", "--output", type=Path, required=True, metavar="OUTPUT",
                        help="video, image, or a new directory (one lossless PNG per frame)")
    unmask.add_argument("--no-watermark", action="store_true", help="leave out the visible watermark (if policy allows)")

    audit = commands.add_parser("audit", help="the audit log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    check = audit_commands.add_parser("verify", help="check the log's hash chain and signatures")
    check.add_argument("--vault", type=Path, required=True, metavar="VAULT")
    check.add_argument("--keys", type=Path, metavar="DIR", help="check the vault's gateway key against this directory")

    vault = commands.add_parser("vault", help="the vault of sealed originals")
    vault_commands = vault.add_subparsers(dest="vault_command", required=True, metavar="ACTION")
    shred = vault_commands.add_parser("shred", help="destroy the wrapped keys of old segments (crypto-shredding)")
    shred.add_argument("--vault", type=Path, required=True, metavar="VAULT")
    shred.add_argument("--keys", type=Path, required=True, metavar="DIR", help="the gateway's key directory (signs the log)")
    when = shred.add_mutually_exclusive_group(required=True)
    when.add_argument("--before", metavar="DATE", help="segments that ended before DATE (YYYY-MM-DD or ISO time, UTC)")
    when.add_argument("--expired", action="store_true", help="segments past their policy's retention_days")
    check_vault = vault_commands.add_parser("verify", help="check every segment chain, key file and the audit log")
    check_vault.add_argument("--vault", type=Path, required=True, metavar="VAULT")
    check_vault.add_argument("--keys", type=Path, metavar="DIR", help="check the vault's gateway key against this directory")
    tracks = vault_commands.add_parser("tracks", help="list the sealed tracks of a redacted file (no decryption)")
    tracks.add_argument("input", type=Path, metavar="REDACTED")
    tracks.add_argument("--vault", type=Path, required=True, metavar="VAULT")


def run(args: argparse.Namespace) -> int:
    try:
        if args.command == "unmask":
            return _unmask(args)
        if args.command == "audit":
            return _audit_verify(args)
        if args.vault_command == "shred":
            return _shred(args)
        if args.vault_command == "verify":
            return _vault_verify(args)
        return _tracks(args)
    except (DirectoryError, VaultError, UnmaskError, IdentityError) as exc:
        raise CommandError(str(exc)) from None


# --- unmask -------------------------------------------------------------------------------

def parse_time(text: str | None) -> int | None:
    """Microseconds from ``SS[.fff]``, ``MM:SS[.fff]`` or ``HH:MM:SS[.fff]``."""
    if text is None:
        return None
    match = re.fullmatch(r"(?:(?:(\d+):)?(\d+):)?(\d+(?:\.\d*)?)", text.strip())
    if not match:
        raise CommandError(f"time {text!r}: use seconds (12.5) or [HH:]MM:SS[.fff]")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return round((hours * 3600 + minutes * 60 + seconds) * 1e6)


def _ref_of(path: Path) -> VaultRef:
    comment = image_comment(path) if is_image(path) else video_comment(path)
    ref = VaultRef.decode(comment)
    if ref is None:
        raise CommandError(f"{path} carries no vault reference (was it written by redact --vault?)")
    return ref


def _open_identities(paths: list[Path]) -> list[PrivateIdentity]:
    import getpass

    env = os.environ.get("PRIVACY_GATEWAY_PASSPHRASE")
    holders = []
    for path in paths:
        if not path.is_file():
            raise CommandError(f"cannot read identity {path}: no such file")
        if env:
            passphrase = env
        elif sys.stdin.isatty():
            passphrase = getpass.getpass(f"Passphrase for {path}: ")
        else:
            raise CommandError("no passphrase: set PRIVACY_GATEWAY_PASSPHRASE or run on a terminal")
        holder = PrivateIdentity.load(path, passphrase)
        if any(h.public.name == holder.public.name for h in holders):
            raise CommandError(f"identity {holder.public.name!r} given twice")
        holders.append(holder)
    return holders


def _unmask(args: argparse.Namespace) -> int:
    source, target = args.input, args.output
    if not source.is_file():
        raise CommandError(f"cannot read {source}: no such file")
    to_dir = not target.suffix or target.is_dir()
    if to_dir and target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise CommandError(f"{target}: exists and is not an empty directory; refusing to overwrite")
    if not to_dir and is_image(source) != is_image(target):
        raise CommandError(f"{target}: output must be {'an image' if is_image(source) else 'a video'} like the input, "
                           "or a directory")
    if not to_dir and target.resolve() == source.resolve():
        raise CommandError(f"refusing to overwrite the input {source}")
    start, end = parse_time(args.start), parse_time(args.end)
    if start is not None and end is not None and end < start:
        raise CommandError("--to is before --from")
    ref = _ref_of(source)
    directory = KeyDirectory.open(args.keys)
    store = VaultStore.open(args.vault, directory)
    holders = _open_identities(args.identities)
    selection = Selection(frozenset(args.tracks), frozenset(args.classes), start, end)
    job = Unmask(store, ref, selection, holders)
    if job.selected == 0:
        raise CommandError("no sealed region matches the selection (see `privacy-gateway vault tracks`)")
    names = ", ".join(sorted(h.public.name for h in holders))
    mark = None if args.no_watermark else (
        f"UNMASKED case {args.case} by {names} {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}Z")
    entry = job.authorize(args.case, args.reason, str(target), mark is not None)

    def restore(index: int, time: float, image, tolerance_us: int) -> None:
        job.restore(index, time, image, tolerance_us)
        if mark is not None:
            watermark(image, mark)

    if is_image(source):
        _unmask_image(source, target, to_dir, restore)
    else:
        _unmask_video(source, target, to_dir, restore, start, end, job)
    print(f"restored {job.restored} regions of {len(job.tracks)} tracks to {target} "
          f"(audit entry {entry['seq']}, case {args.case})")
    return 0


def _check_complete(job: Unmask) -> None:
    if job.unused:
        raise UnmaskError(f"{job.unused} selected regions belong to frames this file does not have "
                          "(cut or edited after redaction?); nothing written")


def _unmask_image(source: Path, target: Path, to_dir: bool, restore) -> None:
    image = read_image(source)
    restore(0, 0.0, image, 0)
    if to_dir:
        with _atomic_dir(target) as tmp:
            write_image(tmp / "000000.png", image)
    else:
        write_image(target, image)


def _unmask_video(source: Path, target: Path, to_dir: bool, restore, start, end, job: Unmask) -> None:
    transcoder = VideoTranscoder(source, None if to_dir else target)
    tolerance = round(5e5 / float(transcoder.info.rate))  # half a frame
    try:
        if to_dir:
            with _atomic_dir(target) as tmp:
                for item in transcoder.frames():
                    at = round(item.time * 1e6)
                    restore(item.index, item.time, item.image, tolerance)
                    if (start is None or at >= start) and (end is None or at <= end):
                        write_image(tmp / f"{item.index:06d}.png", item.image)
                _check_complete(job)
        else:
            def process(item):
                if item is None:
                    _check_complete(job)
                    return []
                restore(item.index, item.time, item.image, tolerance)
                return [item]

            transcoder.run(process)
    finally:
        transcoder.close()


class _atomic_dir:
    """A new directory filled under a temporary name and renamed into place on success."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __enter__(self) -> Path:
        parent = self.target.parent if str(self.target.parent) else Path(".")
        if not parent.is_dir():
            raise MediaError(f"cannot write {self.target}: directory {parent} does not exist")
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", dir=parent))
        return self.tmp

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.target.is_dir():
            self.target.rmdir()  # checked empty before any work
        os.replace(self.tmp, self.target)


# --- audit and vault ----------------------------------------------------------------------

def _open_store(vault: Path, keys: Path | None) -> VaultStore:
    return VaultStore.open(vault, KeyDirectory.open(keys) if keys is not None else None)


def _audit_verify(args: argparse.Namespace) -> int:
    store = _open_store(args.vault, args.keys)
    if not store.audit.path.exists():
        print(f"{store.audit.path}: no audit log yet (nothing has been sealed or unmasked)")
        return 0
    try:
        count = verify(store.audit.path, store.key_of)
    except AuditError as exc:
        raise CheckFailed(str(exc)) from None
    print(f"{store.audit.path}: {count} entries, chain and signatures intact "
          f"(gateway key {store.fingerprint}{'' if args.keys else ', compare out of band'})")
    return 0


def _shred_before(args: argparse.Namespace) -> dt.datetime | None:
    if args.before is None:
        return None
    try:
        when = dt.datetime.fromisoformat(args.before)
    except ValueError:
        raise CommandError(f"--before {args.before!r}: use YYYY-MM-DD or an ISO 8601 time") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _shred(args: argparse.Namespace) -> int:
    directory = KeyDirectory.open(args.keys)
    store = VaultStore.open(args.vault, directory)
    before = _shred_before(args)
    now = dt.datetime.now(dt.UTC)
    chosen: list[tuple[str, int]] = []
    for camera in store.cameras():
        with store.camera_lock(camera):
            for segment in verify_camera(store.camera_dir(camera), store.gateway):
                if not store.keys_path(camera, segment.number).exists():
                    continue
                ended = dt.datetime.fromisoformat(segment.ended)
                if before is not None:
                    due = ended < before
                else:
                    days = store.load_policy(segment.header.policy_sha256).get("retention_days")
                    due = days is not None and ended + dt.timedelta(days=days) < now
                if due:
                    chosen.append((camera, segment.number))
    if not chosen:
        print("nothing to shred")
        return 0
    rule = {"before": before.isoformat()} if before is not None else {"expired_at": now.isoformat()}
    try:  # the log first: no shredding that the log does not show
        entry = store.audit.append(GATEWAY_ACTOR, directory.signer, "shred",
                                   {"segments": [list(c) for c in chosen], **rule})
    except AuditError as exc:
        raise CommandError(f"{exc}; nothing shredded") from None
    for camera, number in chosen:
        store.keys_path(camera, number).unlink()
    for camera in {c for c, _ in chosen}:
        fd = os.open(store.keys_path(camera, 1).parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    print(f"shredded the keys of {len(chosen)} segments (audit entry {entry['seq']}); they can no longer be unmasked")
    return 0


def _vault_verify(args: argparse.Namespace) -> int:
    store = _open_store(args.vault, args.keys)
    log: list[dict] = []
    if store.audit.path.exists():
        try:
            verify(store.audit.path, store.key_of)
        except AuditError as exc:
            raise CheckFailed(str(exc)) from None
        log = [json.loads(line) for line in store.audit.path.read_bytes().splitlines() if line.strip()]
    shredded = {tuple(s) for e in log if e["action"] == "shred" for s in e["details"]["segments"]}
    heads = {}
    for entry in log:
        if entry["action"] == "seal":
            heads[entry["details"]["camera"]] = entry["details"]["segments"][1]
    total = 0
    for camera in sorted(set(store.cameras()) | set(heads)):
        try:
            chain = list(verify_camera(store.camera_dir(camera), store.gateway))
        except VaultError as exc:
            raise CheckFailed(f"camera {camera!r}: {exc}") from None
        if camera in heads and (not chain or chain[-1].number < heads[camera]):
            missing = segment_name(chain[-1].number + 1 if chain else 1)
            raise CheckFailed(f"camera {camera!r}: segment {missing} is missing (the audit log records segments "
                              f"up to {segment_name(heads[camera])} as sealed)")
        for segment in chain:
            path = store.keys_path(camera, segment.number)
            if path.exists():
                try:
                    read_wraps(path, store.gateway, segment.keys_sha256)
                except VaultError as exc:
                    raise CheckFailed(f"camera {camera!r}: {exc}") from None
            elif (camera, segment.number) not in shredded:
                raise CheckFailed(f"camera {camera!r}: key file of {segment_name(segment.number)} is missing "
                                  "and no shred is logged")
        total += len(chain)
        partial = list(store.camera_dir(camera).glob("*.pgv.partial"))
        if partial:
            print(f"camera {camera}: {len(partial)} unfinished segment(s) will be recovered when sealing resumes")
    print(f"{store.root}: {len(store.cameras())} cameras, {total} segments and {len(log)} audit entries verified "
          f"(gateway key {store.fingerprint})")
    return 0


def _tracks(args: argparse.Namespace) -> int:
    ref = _ref_of(args.input)
    store = VaultStore.open(args.vault)
    tracks: dict[tuple[str, int], list] = {}
    for path in sorted(store.camera_dir(ref.camera).glob("*.pgv")):
        segment = read_segment(path, store.gateway)
        if segment.header.recording != ref.recording:
            continue
        for record in segment.records:
            h = record.header
            t = (h.pts_us - ref.first_pts_us) / 1e6
            item = tracks.setdefault((h.cls, h.track), [0, t, t, h.box])
            item[0] += 1
            item[2] = t
    print(f"{args.input}: camera {ref.camera}, recording {ref.recording}")
    for (cls, track), (frames, first, last, box) in sorted(tracks.items(), key=lambda kv: (kv[1][1], kv[0])):
        print(f"  track {track:5d}  {cls:5s}  {first:8.2f}s - {last:8.2f}s  {frames:5d} frames  first box {list(box)}")
    return 0
