"""nodecode: image understanding from learned compressed representations (Torfason et al., ICLR 2018)."""
from nodecode.errors import NodecodeError

__version__ = "0.1.0"
__all__ = ["NodecodeError", "__version__"]
