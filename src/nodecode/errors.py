"""The one exception type the CLI turns into a one-line error and a non-zero exit, and how messages are cleaned."""
from __future__ import annotations

MAX_MESSAGE = 400


class NodecodeError(Exception):
    """A user-facing error: bad input, a missing path, a corrupted file."""


def safe_text(text: str, limit: int = 80) -> str:
    """Text from a file (a header's model name) made safe to print: non-printable characters escaped, clipped."""
    out = "".join(ch if ch.isprintable() and ord(ch) < 0x7f else ascii(ch)[1:-1] for ch in str(text))
    return out if len(out) <= limit else out[:limit] + "..."


def one_line(exc: BaseException) -> str:
    """An exception as one printable line: its first non-empty line, cleaned and clipped; never empty."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    first = lines[0].lower() if lines else ""
    if isinstance(exc, MemoryError) or "out of memory" in first or "can't allocate memory" in first:
        head = "out of memory" + (f" ({safe_text(lines[0], 160)})" if lines else "")
        return head + "; try a smaller image or a lower --max-pixels"
    if not lines:
        return f"{type(exc).__name__} (no message)"
    return safe_text(lines[0], MAX_MESSAGE)
