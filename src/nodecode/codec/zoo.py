"""The bundled operating points c8, c16, c32 (§3.1), c8-joint (§6), and how to load or save any codec as safetensors."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from nodecode.codec.autoencoder import CodecConfig, CompressionModel
from nodecode.errors import NodecodeError
from nodecode.utils import atomic_path, write_json

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
OPERATING_POINTS = {"c8": 0.0983, "c16": 0.330, "c32": 0.635}  # the paper's bpp for C = 8, 16, 32
FINE_TUNED = ("c8-joint",)  # §6: c8 jointly fine-tuned with cResNet-51 (Eq. 2), bundled where that won
BUNDLED = (*OPERATING_POINTS, *FINE_TUNED)


def list_codecs() -> list[str]:
    return [n for n in BUNDLED if (WEIGHTS_DIR / f"{n}.safetensors").exists()]


def resolve(name_or_path: str) -> Path:
    if name_or_path in BUNDLED:
        p = WEIGHTS_DIR / f"{name_or_path}.safetensors"
        if not p.exists():
            raise NodecodeError(f"bundled codec '{name_or_path}' is missing from {WEIGHTS_DIR}")
        return p
    p = Path(name_or_path)
    if not p.exists():
        raise NodecodeError(f"no codec named '{name_or_path}' (bundled: {', '.join(BUNDLED)}) and no such file")
    return p


def save_codec(model: CompressionModel, path: str | Path, half: bool = True) -> None:
    """Weights as safetensors (fp16 floats if `half`; the integer tables exact), the config in its metadata and beside it."""
    state = {k: (v.half() if half and v.is_floating_point() and k != "quantizer.centers" else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    meta = {"config": json.dumps(model.config.to_dict()), "format": "nodecode-codec-1"}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    write_json(path.with_suffix(".json"), model.config.to_dict())


def load_codec(name_or_path: str = "c8", device: str | torch.device = "cpu") -> CompressionModel:
    """A bundled operating point by name, or a codec saved with save_codec by path; in eval mode, fp32."""
    path = resolve(str(name_or_path))
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise NodecodeError(f"cannot read codec weights {path}: {e}") from None
    if "config" in meta:
        cfg = json.loads(meta["config"])
    elif path.with_suffix(".json").exists():
        cfg = json.loads(path.with_suffix(".json").read_text())
    else:
        raise NodecodeError(f"{path} carries no codec configuration")
    model = CompressionModel(CodecConfig.from_dict(cfg))
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as e:
        raise NodecodeError(f"{path} does not hold a codec of this configuration: {str(e).splitlines()[0]}") from None
    return model.to(device).eval()
