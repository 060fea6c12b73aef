"""Loading and saving codecs: a bundled operating point (c8, c16, c32, §3.1) by name from nodecode.zoo, or any
codec file by path (a zoo file, or one save_codec wrote while training)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from nodecode import zoo
from nodecode.codec.autoencoder import CodecConfig, CompressionModel
from nodecode.errors import NodecodeError
from nodecode.utils import atomic_path, write_json
from nodecode.zoo import OPERATING_POINTS  # noqa: F401 - re-exported: the paper's bpp per operating point

LEGACY_FORMAT = "nodecode-codec-1"


def list_codecs() -> list[str]:
    return zoo.list_pretrained("codec")


def save_codec(model: CompressionModel, path: str | Path, half: bool = True) -> None:
    """Weights as safetensors (fp16 floats if `half`; the integer tables exact), the config in its metadata and beside it."""
    state = {k: (v.half() if half and v.is_floating_point() and k != "quantizer.centers" else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    meta = {"config": json.dumps(model.config.to_dict()), "format": LEGACY_FORMAT}
    path = Path(path)
    from safetensors.torch import save_file
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    write_json(path.with_suffix(".json"), model.config.to_dict())


def codec_config(path: Path) -> tuple[CodecConfig, zoo.PretrainedCfg | None]:
    """(CodecConfig, PretrainedCfg or None) of a codec file: a zoo file, or save_codec's header / JSON beside it."""
    cfg = zoo.read_cfg(path)
    if cfg is not None:
        return CodecConfig.from_dict(cfg.codec_config), cfg
    meta = zoo.header(path)
    if "config" in meta:
        return CodecConfig.from_dict(json.loads(meta["config"])), None
    if path.with_suffix(".json").exists():
        return CodecConfig.from_dict(json.loads(path.with_suffix(".json").read_text())), None
    raise NodecodeError(f"{path} carries no codec configuration")


def load_codec(name_or_path: str = "c8", device: str | torch.device = "cpu") -> CompressionModel:
    """A bundled operating point by name, or a codec file by path; in eval mode, fp32. A zoo file's stored
    fingerprint must match the weights and tables it holds."""
    path, _ = zoo.resolve(str(name_or_path), "codec")
    config, cfg = codec_config(path)
    model = CompressionModel(config)
    state = zoo.load_tensors(path)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as e:
        raise NodecodeError(f"{path} does not hold a codec of this configuration: {str(e).splitlines()[0]}") from None
    if cfg is not None and model.fingerprint().hex() != cfg.fingerprint:
        raise NodecodeError(f"{path}: weights do not match the stored fingerprint {cfg.fingerprint} "
                            f"(they hash to {model.fingerprint().hex()})")
    return model.to(device).eval()
