"""Numba redaction kernels: blur, pixelate and solid-fill boxes of a BGR frame in place.

Frames are C-contiguous ``uint8`` arrays ``(H, W, 3)``, modified in place. Boxes are an
integer array-like ``(N, 4)`` of ``x, y, w, h`` in pixels (top-left origin); each box is
clipped to the frame, and a box that misses the frame is skipped.

* ``blur`` -- Gaussian-quality blur from the box's own pixels only (edges replicated), as
  3 running-sum box passes per axis: the cost does not depend on sigma. With sigma far
  beyond the box the replicated edges dominate and the box tends to one flat colour (the
  mean of its four corner pixels, not the box mean).
* ``pixelate`` -- block means, blocks anchored at the clipped box's top-left.
* ``fill`` -- a solid BGR colour.
* ``redact`` -- any mix of the three in one call, optionally returning the originals.
* ``copy_out`` -- copies of the clipped boxes.
* ``polygon_mask``, ``fill_mask``, ``copy_masked``, ``clear_outside`` -- privacy zones: a
  polygon rasterised to a mask once per frame size (``_zones`` says which pixels are inside),
  then applied to frames (filled, or composited from a redacted copy of its box).

``ellipse`` (None, a bool, or one bool per box) limits the writes to the ellipse inscribed
in the *unclipped* box: pixel ``(px, py)`` is inside when
``((px + .5 - x - w/2) / (w/2))**2 + ((py + .5 - y - h/2) / (h/2))**2 <= 1``; blur and
pixelate values are still computed from the whole clipped box.

Overlapping boxes give exactly the result of applying them one after another in order.
The kernels release the GIL, so other threads (decode, detect, encode) run meanwhile;
a call runs on the calling thread (see ``_api.PARALLEL_MIN_AREA`` for the multi-thread
driver, off by default because it did not pay on 2 busy cores). Call ``warmup()`` at
start-up so no live frame pays for JIT compilation.
"""

from ._api import blur, copy_out, fill, pixelate, redact, warmup
from ._redact import METHOD_BLUR, METHOD_PIXELATE, METHOD_SOLID
from ._zones import clear_outside, copy_masked, fill_mask, polygon_mask

__all__ = [
    "METHOD_BLUR",
    "METHOD_PIXELATE",
    "METHOD_SOLID",
    "blur",
    "clear_outside",
    "copy_masked",
    "copy_out",
    "fill",
    "fill_mask",
    "pixelate",
    "polygon_mask",
    "redact",
    "warmup",
]
