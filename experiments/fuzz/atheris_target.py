"""libFuzzer target (atheris): arbitrary bytes through read_symbols of the bundled codecs; any exception other
than NodecodeError is a crash. Run by experiments/fuzz/run.py --atheris-runs N."""
import sys

import atheris
import numpy  # noqa: F401 - imported before instrumentation: only nodecode's parsing code is instrumented
import torch  # noqa: F401

with atheris.instrument_imports(include=["nodecode"]):
    from nodecode.codec import bitstream
    from nodecode.codec.zoo import load_codec
    from nodecode.errors import NodecodeError

CODECS = {p: load_codec(p) for p in ("c8", "c16", "c32", "c8-joint")}


def target(data: bytes) -> None:
    try:
        name = bitstream.read_header(data).model
    except NodecodeError:
        name = "c8"
    try:
        CODECS.get(name, CODECS["c8"]).read_symbols(data)
    except NodecodeError:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
