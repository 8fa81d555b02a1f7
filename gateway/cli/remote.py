"""``unmask --gateway URL``: unmask on the investigator's machine a recording the gateway keeps.

The identity files stay on this machine. Over the gateway's API (every request signed with the
first identity's key; docs/access.md) this fetches the redacted recording and its sealed records
(:meth:`keys.VaultStore.from_bundle`), checks them against the gateway's signatures and the log
entries it sent, and posts the signed unmask request, which the gateway appends to its audit log
(:class:`RemoteLog`). The shares come from OpenBao to this machine, one request per track; the
pixels are restored here. Nothing private reaches the gateway.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

import httpx

from keys import (
    AuditError,
    CoSigner,
    CoSignerRefused,
    PrivateIdentity,
    Segment,
    VaultError,
    VaultStore,
    verify_entry,
)

from .errors import CommandError


class GatewayClient:
    """Signed requests to one gateway's API."""

    def __init__(self, base: str, identity: PrivateIdentity, ca: Path | None = None, timeout: float = 60.0) -> None:
        self.base, self.identity = base.rstrip("/"), identity
        self._verify: str | bool = str(ca) if ca is not None else True
        self._timeout = timeout
        self._fingerprint: str | None = None  # the gateway key's, which every signed request names

    def request(self, method: str, path: str, query: dict | None = None, body: bytes = b"",
                stream_to: Path | None = None) -> httpx.Response:
        from ..api.access import sign_request  # on use: the API's modules load aiortc

        if self._fingerprint is None:
            try:
                with httpx.Client(base_url=self.base, verify=self._verify, timeout=self._timeout) as http:
                    self._fingerprint = str(http.get("/api/gateway").json()["fingerprint"])
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                raise CommandError(f"the gateway at {self.base} does not answer (GET /api/gateway)") from None
        target = path + (f"?{urlencode(query)}" if query else "")
        headers = {"Authorization": sign_request(self.identity, method, target, body,
                                                 host=urlsplit(self.base).netloc, gateway=self._fingerprint)}
        if body:
            headers["Content-Type"] = "application/json"
        try:
            with httpx.Client(base_url=self.base, verify=self._verify, timeout=self._timeout) as http:
                if stream_to is None:
                    reply = http.request(method, target, content=body or None, headers=headers)
                else:
                    with http.stream(method, target, headers=headers) as reply:
                        if reply.status_code == 200:
                            with open(stream_to, "wb") as out:
                                out.writelines(reply.iter_bytes(1 << 20))
                        else:
                            reply.read()
        except httpx.HTTPError as exc:
            raise CommandError(f"the gateway at {self.base} does not answer ({type(exc).__name__})") from None
        if reply.status_code >= 400:
            try:
                message = reply.json().get("error", reply.text)
            except ValueError:
                message = reply.text
            raise CommandError(f"the gateway refused ({reply.status_code}): {message}")
        return reply


class RemoteLog:
    """The gateway's audit log, as an unmask on another machine sees it (``keys.unmask.UnmaskLog``)."""

    def __init__(self, client: GatewayClient, store: VaultStore, bundle: dict) -> None:
        self.client, self.store = client, store
        self.camera, self.recording, self._entries = bundle["camera"], bundle["recording"], bundle["entries"]
        self._path = f"/api/cameras/{quote(self.camera)}/recordings/{quote(self.recording)}/audit"

    def entries(self, chain: list[Segment]) -> list[dict]:
        for entry in self._entries:
            verify_entry(entry, self.store.key_of)
        seals = [e for e in self._entries if e["action"] == "seal"]
        if len(seals) != 1:
            raise VaultError("the gateway sent no seal entry for this recording")
        details = seals[0]["details"]
        first, last = details["segments"]
        if [s.number for s in chain] != list(range(first, last + 1)) or chain[-1].digest != details["head"]:
            raise VaultError("the sealed records the gateway sent are not the ones its log says it sealed")
        if sum(len(s.records) for s in chain) != details["records"]:
            raise VaultError("the sealed records the gateway sent do not hold the records its log counts")
        return self._entries

    def _latest(self, cosigner: CoSigner, token: str) -> int:
        anchors = self.store.cosigner_anchors(cosigner, token)  # raises if they were rolled back
        return max((seq for seq, _, _ in anchors), default=0)

    def confirm(self, cosigner: CoSigner, token: str) -> None:
        newest = max(e["seq"] for e in self._entries)
        if self._latest(cosigner, token) < newest:
            raise AuditError(f"the co-signer's checkpoint of the gateway's log does not reach entry {newest}")

    def append(self, holders: list[PrivateIdentity], action: str, details: dict) -> dict:
        body = json.dumps({"action": action, "details": details}).encode()
        try:
            entry = self.client.request("POST", self._path, body=body).json()
        except CommandError as exc:
            raise AuditError(str(exc)) from None
        verify_entry(entry, self.store.key_of)
        if entry.get("action") != action or entry.get("details") != details:
            raise AuditError("the gateway logged something else than the request")
        return entry

    def anchor(self, entry: dict, cosigner: CoSigner, token: str) -> None:
        if self._latest(cosigner, token) < entry["seq"]:
            raise CoSignerRefused("the co-signer's checkpoint does not reach the unmask entry")


def wall_time(text: str | None) -> dt.datetime | None:
    if text is None:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(f"time {text!r}: with --gateway, --from and --to are ISO 8601 times "
                           "(YYYY-MM-DDTHH:MM:SS, UTC unless they say otherwise)") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def fetch(args: argparse.Namespace, holders: list[PrivateIdentity], workdir: Path, directory=None):
    """The recording's redacted video (downloaded into ``workdir``), its sealed records as a store,
    the log to write to, and the selection's media times; the recording chosen by --recording or
    as the one that --from/--to (wall-clock) fall in."""
    client = GatewayClient(args.gateway, holders[0], args.gateway_ca)
    camera = args.camera
    if not camera:
        raise CommandError("--gateway needs --camera")
    since, until = wall_time(args.start), wall_time(args.end)
    base = f"/api/cameras/{quote(camera)}/recordings"
    query = {k: v.isoformat() for k, v in (("from", since), ("to", until)) if v is not None}
    listed = client.request("GET", base, query).json()["recordings"]
    if args.recording:
        listed = [r for r in listed if r["recording"] == args.recording]
    if not listed:
        raise CommandError(f"camera {camera}: no sealed recording matches (see --recording, --from, --to)")
    if len(listed) > 1:
        names = ", ".join(f"{r['recording']} ({r['started'][:19]} to {r['ended'][:19]})" for r in listed)
        raise CommandError(f"camera {camera}: {len(listed)} recordings match; choose one with --recording: {names}")
    chosen = listed[0]
    if not chosen["video"]:
        raise CommandError(f"recording {chosen['recording']}: the gateway no longer has its video")
    bundle = client.request("GET", f"{base}/{quote(chosen['recording'])}/sealed").json()
    store = VaultStore.from_bundle(bundle, directory)  # with the key directory: its gateway key must be the anchor
    video = workdir / f".{chosen['recording']}.mp4.part"
    try:
        client.request("GET", f"{base}/{quote(chosen['recording'])}/video", stream_to=video)
    except BaseException:
        video.unlink(missing_ok=True)
        raise
    started = wall_time(chosen["started"])
    start = None if since is None else max(0, round((since - started).total_seconds() * 1e6))
    end = None if until is None else max(0, round((until - started).total_seconds() * 1e6))
    return video, store, RemoteLog(client, store, bundle), start, end
