"""Work per input is bounded by policy: one pixel limit for input images and for what a .ndc header may claim.

The default (2^25 = 33.5 M pixels, an 8K frame) keeps the codec's full-resolution activations within a few GB;
`nodecode --max-pixels N ...` or the environment variable NODECODE_MAX_PIXELS raises or lowers it.
"""
from __future__ import annotations

import os

from nodecode.errors import NodecodeError

DEFAULT_MAX_PIXELS = 1 << 25
HARD_MAX_PIXELS = 1 << 31           # what the file format's fields and int32 indexing can carry at all
MAX_ASPECT = 64                     # classification resizes the shorter side to 256: a longer strip is refused
_override: int | None = None


def max_pixels() -> int:
    """The pixel limit now in force (set_max_pixels, else NODECODE_MAX_PIXELS, else the default)."""
    if _override is not None:
        return _override
    env = os.environ.get("NODECODE_MAX_PIXELS")
    if env:
        try:
            return _checked(int(env))
        except ValueError:
            raise NodecodeError(f"NODECODE_MAX_PIXELS must be a positive integer, not {env[:40]!r}") from None
    return DEFAULT_MAX_PIXELS


def _checked(n: int) -> int:
    if not 1 <= n <= HARD_MAX_PIXELS:
        raise NodecodeError(f"the pixel limit must be between 1 and {HARD_MAX_PIXELS}, not {n}")
    return n


def set_max_pixels(n: int | None) -> None:
    """Set the pixel limit for this process (None: back to the environment / default)."""
    global _override
    _override = None if n is None else _checked(int(n))


def check_pixels(width: int, height: int, what: str) -> None:
    """NodecodeError unless a width x height image is within the pixel limit (and not empty)."""
    if width <= 0 or height <= 0:
        raise NodecodeError(f"{what} has an empty size ({width}x{height})")
    limit = max_pixels()
    if width * height > limit:
        raise NodecodeError(f"{what} is {width}x{height} = {width * height} pixels, over the limit of {limit}: refused "
                            f"(raise it with nodecode --max-pixels N or NODECODE_MAX_PIXELS)")


def check_aspect(width: int, height: int, what: str) -> None:
    """NodecodeError for a strip too thin to bring to a square network input without an absurd resize."""
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise NodecodeError(f"{what} is {width}x{height}: more than {MAX_ASPECT}:1 is refused for classification")
