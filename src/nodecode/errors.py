"""The one exception type the CLI turns into a one-line error and a non-zero exit."""


class NodecodeError(Exception):
    """A user-facing error: bad input, a missing path, a corrupted file."""
