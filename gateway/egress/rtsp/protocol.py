"""RTSP 1.0 wire format (RFC 2326): request parsing, responses, URIs, Transport headers and SDP.

Pure protocol, no I/O and no server state: :mod:`.server` reads the bytes and keeps the
sessions, :mod:`.digest` checks the credentials.
"""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

if TYPE_CHECKING:
    import av

__all__ = [
    "CLOCK", "MAX_BODY", "MAX_HEAD", "MAX_HEADERS", "MAX_URI", "PAYLOAD_TYPE", "REQUEST_LINE", "TRACK", "Request",
    "RtspError", "TransportChoice", "choose_transport", "cseq_of", "error_response", "parse_request", "path_of",
    "relocate", "response", "sdp", "sprop", "target",
]

MAX_HEAD = 8192  # request line + headers, bytes
MAX_HEADERS = 64
MAX_URI = 2048
MAX_BODY = 4096  # requests carry no bodies we use; GET_PARAMETER's is read and refused
PAYLOAD_TYPE = 96
CLOCK = 90_000
TRACK = "trackID=0"

_REASONS = {
    200: "OK", 302: "Moved Temporarily", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed", 413: "Request Entity Too Large", 414: "Request-URI Too Large",
    451: "Parameter Not Understood", 453: "Not Enough Bandwidth", 454: "Session Not Found", 455: "Method Not Valid in This State",
    457: "Invalid Range", 461: "Unsupported Transport", 500: "Internal Server Error",
    501: "Not Implemented", 503: "Service Unavailable", 505: "RTSP Version Not Supported",
    551: "Option Not Supported",
}
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
REQUEST_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+ [^ ]+ [A-Z]+/\d\.\d")


class RtspError(ValueError):
    """A request answered with ``status`` (4xx/5xx, or 302 to another node) and ``message`` as a text/plain body."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}
        self.cseq: str | None = None  # set when the request was too broken to parse its CSeq normally


# -- messages -------------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    uri: str
    headers: dict[str, str]  # lower-case names
    cseq: str
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def parse_request(head: bytes) -> Request:
    """Parse a request line and headers ending with CRLF CRLF; :class:`RtspError` for anything else.

    Strict: one space between the parts of the request line, no folded headers, at most
    ``MAX_HEAD`` bytes and ``MAX_HEADERS`` fields, a numeric CSeq, no body over ``MAX_BODY``.
    """
    if len(head) > MAX_HEAD:
        raise RtspError(400, f"request header section larger than {MAX_HEAD} bytes")
    if not head.endswith(b"\r\n\r\n"):
        raise RtspError(400, "request header section does not end with CRLF CRLF")
    try:
        text = head[:-4].decode("utf-8")
    except UnicodeDecodeError:
        raise RtspError(400, "request is not UTF-8 text") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise RtspError(400, "request line is not METHOD URI RTSP/1.0")
    method, uri, version = parts
    if not _TOKEN.fullmatch(method):
        raise RtspError(400, "method is not a token")
    if not re.fullmatch(r"[A-Z]+/\d\.\d", version):
        raise RtspError(400, "request line is not METHOD URI RTSP/1.0")
    if len(uri) > MAX_URI:
        raise RtspError(414, f"request URI longer than {MAX_URI} characters")
    if not uri or any(ord(c) < 0x21 or ord(c) == 0x7F for c in uri):
        raise RtspError(400, "request URI is empty or has control characters")
    headers: dict[str, str] = {}
    if len(lines) - 1 > MAX_HEADERS:
        raise RtspError(400, f"more than {MAX_HEADERS} header fields")
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise RtspError(400, f"malformed header line {line[:40]!r}")
        value = value.strip(" \t")
        if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
            raise RtspError(400, f"header {name} has control characters")
        key = name.lower()
        if key in headers:
            if key in ("cseq", "content-length", "session", "authorization", "transport"):
                raise RtspError(400, f"header {name} repeated")
            headers[key] += ", " + value
        else:
            headers[key] = value
    cseq = headers.get("cseq", "")
    if not (cseq.isascii() and cseq.isdigit() and len(cseq) <= 10):
        raise RtspError(400, "CSeq is missing or not a number")
    if version != "RTSP/1.0":
        raise RtspError(505, f"{version} is not RTSP/1.0")
    length = headers.get("content-length", "0")
    if not (length.isascii() and length.isdigit()):
        raise RtspError(400, "Content-Length is not a number")
    if int(length) > MAX_BODY:
        raise RtspError(413, f"Content-Length over {MAX_BODY} bytes")
    return Request(method, uri, headers, cseq)


def response(status: int, cseq: str | None, headers: dict[str, str] | None = None, body: bytes = b"",
              content_type: str = "text/plain; charset=utf-8") -> bytes:
    lines = [f"RTSP/1.0 {status} {_REASONS.get(status, 'Error')}"]
    if cseq is not None:
        lines.append(f"CSeq: {cseq}")
    lines.append("Server: privacy-gateway")
    lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
    if body:
        lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def error_response(error: RtspError, cseq: str | None) -> bytes:
    return response(error.status, cseq, error.headers, (str(error) + "\n").encode())


def _split_uri(uri: str) -> tuple[str, list[str]]:
    """(``host[:port]`` without user info, path segments) of an ``rtsp://`` URI; ``ValueError`` otherwise."""
    if not uri[:7].lower() == "rtsp://":
        raise ValueError("not an rtsp:// URI")
    authority, _, path = uri[7:].partition("/")
    authority = authority.rpartition("@")[2]
    path = path.split("?", 1)[0].split("#", 1)[0]
    return authority, [segment for segment in path.split("/") if segment]


def target(uri: str) -> tuple[str, str | None]:
    """(authority, camera) a request URI names: ``*`` and ``rtsp://host/`` name none; ``400`` if not rtsp."""
    if uri == "*":
        return "", None
    try:
        authority, segments = _split_uri(uri)
    except ValueError:
        raise RtspError(400, "the request URI is neither * nor rtsp://") from None
    if not segments:
        return authority, None
    if len(segments) > 2 or (len(segments) == 2 and segments[1] != TRACK):
        return authority, "/"  # no camera is called that (ids have no slash): 404 once authenticated
    return authority, unquote(segments[0])


def relocate(uri: str, base: str, login: tuple[str, str] | None = None) -> str:
    """The ``rtsp://`` request URI ``uri`` at the server ``base`` (``rtsp://host:port``): the same path and
    query, as sent, without ``uri``'s host or user info; with ``login`` (user, password) as its user info."""
    if not uri[:7].lower() == "rtsp://":
        raise RtspError(400, "the request URI is neither * nor rtsp://")
    _, slash, rest = uri[7:].partition("/")
    base = base.rstrip("/")
    if login is not None:
        scheme, _, authority = base.partition("://")
        base = f"{scheme}://{quote(login[0], safe='')}:{quote(login[1], safe='')}@{authority}"
    return f"{base}/{rest}" if slash else f"{base}/"


def path_of(uri: str) -> str:
    """The decoded path of an absolute or absolute-path URI without trailing slash, for comparisons."""
    if uri.startswith("/"):
        segments = [s for s in uri.split("?", 1)[0].split("/") if s]
    else:
        segments = _split_uri(uri)[1]
    return "/".join(unquote(s) for s in segments)


def cseq_of(head: bytes) -> str | None:
    """The CSeq of a request we could not parse, to echo in the error if it is a plain number."""
    match = re.search(rb"\r\ncseq[ \t]*:[ \t]*(\d{1,10})[ \t]*\r\n", head, re.IGNORECASE)
    return match.group(1).decode() if match else None


# -- transports -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransportChoice:
    tcp: bool
    channels: tuple[int, int] | None = None  # TCP: interleaved channels (None: we pick)
    client_ports: tuple[int, int] | None = None  # UDP


def _pair(text: str, low: int, high: int) -> tuple[int, int] | None:
    first, dash, second = text.partition("-")
    if not (first.isascii() and first.isdigit()) or (dash and not (second.isascii() and second.isdigit())):
        return None
    a = int(first)
    b = int(second) if dash else a + 1
    return (a, b) if low <= a <= high and low <= b <= high and a != b else None


def choose_transport(value: str) -> TransportChoice | None:
    """The first transport in a Transport header we serve: unicast RTP/AVP over TCP or UDP, mode PLAY."""
    for spec in value.split(","):
        parts = [part.strip() for part in spec.split(";")]
        profile = parts[0].upper()
        params: dict[str, str] = {}
        for part in parts[1:]:
            name, _, val = part.partition("=")
            params[name.strip().lower()] = val.strip().strip('"')
        if "multicast" in params or params.get("mode", "play").lower() != "play":
            continue
        if profile == "RTP/AVP/TCP":
            if "interleaved" not in params:
                return TransportChoice(tcp=True)
            channels = _pair(params["interleaved"], 0, 255)
            if channels is not None:
                return TransportChoice(tcp=True, channels=channels)
        elif profile in ("RTP/AVP", "RTP/AVP/UDP"):
            ports = _pair(params.get("client_port", ""), 1, 65535)
            if ports is not None:
                return TransportChoice(tcp=False, client_ports=ports)
    return None


# -- SDP ----------------------------------------------------------------------------------------------


def sdp(camera: str, local: str, fps: float, sprop: str | None) -> str:
    """The session description DESCRIBE answers: one H.264 track (RFC 6184, packetization-mode 1)
    offered from the server address ``local``, with ``sprop`` from :func:`sprop` if known."""
    family = "IP6" if ":" in local else "IP4"
    fmtp = "packetization-mode=1" + (f";{sprop}" if sprop else "")
    return "\r\n".join([
        "v=0",
        f"o=- {secrets.randbits(62)} 1 IN {family} {local}",
        f"s={camera}",
        f"c=IN {family} {'::' if family == 'IP6' else '0.0.0.0'}",
        "t=0 0",
        "a=control:*",
        f"m=video 0 RTP/AVP {PAYLOAD_TYPE}",
        f"a=rtpmap:{PAYLOAD_TYPE} H264/{CLOCK}",
        f"a=fmtp:{PAYLOAD_TYPE} {fmtp}",
        f"a=framerate:{fps:g}",
        f"a=control:{TRACK}",
        "",
    ])


# -- H.264 --------------------------------------------------------------------------------------------


def _nal_units(data: bytes) -> list[bytes]:
    units, starts = [], [m.end() for m in re.finditer(b"\x00\x00\x01", data)]
    for start, end in zip(starts, starts[1:] + [len(data) + 3]):
        units.append(data[start : end - 3].rstrip(b"\x00"))
    return [unit for unit in units if unit]


def sprop(packet: av.Packet) -> str | None:
    """``profile-level-id=..;sprop-parameter-sets=..`` from a keyframe's in-band SPS and PPS."""
    units = _nal_units(bytes(packet))
    sps = next((u for u in units if u[0] & 0x1F == 7 and len(u) >= 4), None)
    pps = next((u for u in units if u[0] & 0x1F == 8), None)
    if sps is None or pps is None:
        return None
    sets = ",".join(base64.b64encode(unit).decode() for unit in (sps, pps))
    return f"profile-level-id={sps[1:4].hex().upper()};sprop-parameter-sets={sets}"
