"""Resumable training state as safetensors (no pickle), written atomically."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file

from nodecode.utils import atomic_path


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{k}"] = v.detach().cpu().contiguous()
            elif v is not None:
                tensors[f"optim.{idx}.{k}"] = torch.tensor(v)
    return tensors, {"param_groups": sd["param_groups"]}


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    meta: dict | None = None) -> None:
    """Model weights, optimizer state and RNG state in one safetensors file; `meta` (JSON-able) in its header."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    info = {"meta": meta or {}}
    if optimizer is not None:
        opt_tensors, opt_info = _flatten_optimizer(optimizer)
        tensors.update(opt_tensors)
        info["optimizer"] = opt_info
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"nodecode": json.dumps(info)})


def resume_log(path: str | Path, step: int) -> None:
    """Cut log.jsonl back to what the checkpoint at `step` had seen (lines past it, and a line torn by a kill, go:
    the resumed run writes them again) and, when resuming, mark where it resumed ({"split": "resume"})."""
    path = Path(path)
    if not path.exists():
        return
    keep = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
            keep.append(line)
    if step > 0:
        keep.append(json.dumps({"step": step, "split": "resume"}))
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in keep))


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    restore_rng: bool = True) -> dict:
    """Restore what save_checkpoint wrote; returns its `meta`."""
    with safe_open(str(path), framework="pt") as f:
        info = json.loads((f.metadata() or {}).get("nodecode", "{}"))
    tensors = load_file(str(path))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if optimizer is not None and "optimizer" in info:
        state: dict = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, name = k.split(".", 2)
                state.setdefault(int(idx), {})[name] = v
        optimizer.load_state_dict({"state": state, "param_groups": info["optimizer"]["param_groups"]})
    if restore_rng:
        torch.set_rng_state(tensors["rng.cpu"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
    return info.get("meta", {})


def save_weights(model: torch.nn.Module, path: str | Path, meta: dict, fmt: str, half: bool = False) -> None:
    """Final weights (fp32, or fp16 floats if `half`) as safetensors; `fmt` and `meta` in its header, meta as JSON beside it."""
    from nodecode.utils import write_json
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": fmt, "meta": json.dumps(meta)})
    write_json(path.with_suffix(".json"), meta)


def read_weights(path: str | Path, fmt: str, what: str) -> tuple[dict, dict]:
    """(fp32 state dict, meta) of a file save_weights wrote with format `fmt`; NodecodeError on anything else."""
    from nodecode.errors import NodecodeError
    path = Path(path)
    if not path.is_file():
        raise NodecodeError(f"no such {what} checkpoint: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            info = f.metadata() or {}
        state = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user error here
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise NodecodeError(f"cannot read {what} {path}: {why}") from None
    if info.get("format") != fmt:
        raise NodecodeError(f"{path} is not a nodecode {what}")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, json.loads(info["meta"])


def load_network(path: str | Path, fmt: str, what: str, device=None) -> tuple[torch.nn.Module, dict]:
    """(registry model in eval mode, fp32, meta) from `<what>.safetensors` (save_weights, format `fmt`) or its run folder."""
    from nodecode.models import create_model
    from nodecode.utils import pick_device
    path = Path(path)
    path = path / f"{what}.safetensors" if path.is_dir() else path
    state, meta = read_weights(path, fmt, what)
    model = create_model(meta["model"], in_channels=meta["in_channels"], num_classes=len(meta["classes"]),
                         width=meta["width"])
    model.load_state_dict(state)
    return model.to(pick_device(device)).eval(), meta
