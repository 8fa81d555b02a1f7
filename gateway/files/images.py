"""Still images for the command line: read as BGR, written losslessly where the format allows,
with the vault reference carried in a PNG ``tEXt`` chunk or a JPEG ``COM`` segment."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

from .output import MediaError, atomic_output

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
COMMENT_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def read_image(path: Path) -> np.ndarray:
    """A BGR ``uint8`` image; alpha is dropped and grey is expanded to three channels."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise MediaError(f"cannot read {path}: {exc.strerror or exc}") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise MediaError(f"cannot read {path}: not a decodable image")
    return np.ascontiguousarray(image)


def write_image(path: Path, image: np.ndarray, comment: str | None = None) -> None:
    """Write losslessly for PNG (and other lossless formats), at JPEG quality 95 otherwise.

    ``comment`` (ASCII) is stored as a PNG ``tEXt`` chunk or a JPEG ``COM`` segment.
    """
    suffix = path.suffix.lower()
    if comment is not None and suffix not in COMMENT_IMAGE_SUFFIXES:
        raise MediaError(f"cannot write {path}: only PNG and JPEG images can carry the vault reference")
    params: list[int] = []
    if suffix in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, 95]
    elif suffix == ".webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, 101]  # above 100 means lossless
    ok, encoded = cv2.imencode(suffix or ".png", image, params)
    if not ok:
        raise MediaError(f"cannot encode {path}: unsupported image format {suffix!r}")
    data = encoded.tobytes()
    if comment is not None:
        data = _with_comment(data, comment.encode("ascii"))
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


_PNG = b"\x89PNG\r\n\x1a\n"
_PNG_KEYWORD = b"Comment\x00"


def _with_comment(data: bytes, text: bytes) -> bytes:
    if data.startswith(_PNG):  # after the 8-byte signature and the IHDR chunk (25 bytes)
        body = b"tEXt" + _PNG_KEYWORD + text
        chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
        return data[:33] + chunk + data[33:]
    if len(text) > 65533:
        raise MediaError("comment too long for a JPEG COM segment")
    return data[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + data[2:]


def image_comment(path: Path) -> str | None:
    """The comment stored by :func:`write_image` (PNG ``tEXt`` "Comment", JPEG ``COM``), if any."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise MediaError(f"cannot read {path}: {exc.strerror or exc}") from None
    if data.startswith(_PNG):
        at = 8
        while at + 12 <= len(data):
            (length,) = struct.unpack_from(">I", data, at)
            kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
            if kind == b"tEXt" and body.startswith(_PNG_KEYWORD):
                return body[len(_PNG_KEYWORD):].decode("latin-1")
            if kind == b"IDAT":
                break
            at += 12 + length
        return None
    at = 2 if data[:2] == b"\xff\xd8" else len(data)
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        (length,) = struct.unpack_from(">H", data, at + 2)
        if marker == 0xFE:
            return data[at + 4 : at + 2 + length].decode("latin-1")
        if marker == 0xDA:  # start of scan: no more headers
            break
        at += 2 + length
    return None
