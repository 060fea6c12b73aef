"""Maintain the bundled zoo: ``python -m nodecode.zoo list | show NAME | import-legacy SRC NAME | remove NAME``.

``import-legacy`` turns a file written by the training code (``save_codec``: nodecode-codec-1; ``save_classifier`` /
``save_segmenter``: nodecode-classifier-1 / nodecode-segmenter-1) into ``weights/NAME.safetensors`` with its typed
PretrainedCfg in the header, and updates ``weights/zoo.json``. A codec is renamed to NAME (the name every .ndc
header carries) and its fingerprint recomputed; a classifier or segmenter records the fingerprint of the bundled
codec it reads, so import the codecs first. Tensors are copied as stored (fp16 stays fp16).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nodecode import zoo
from nodecode.errors import NodecodeError


def import_legacy(src: str | Path, name: str, kind: str | None = None, codec: str | None = None,
                  license: str = "unspecified", source: str | None = None) -> zoo.PretrainedCfg:
    """Bundle a training-code weights file as zoo entry `name`; returns its config. Re-importing replaces the entry."""
    import json
    import torch
    from nodecode.codec.autoencoder import CodecConfig, CompressionModel
    src = Path(src)
    meta = zoo.header(src)
    stored = zoo.read_cfg(src)
    fmt = meta.get("format")
    kind = kind or (stored.kind if stored else zoo.LEGACY_FORMATS.get(fmt))
    if kind is None:
        raise NodecodeError(f"{src}: unknown weights format {fmt!r}; pass --kind")
    tensors = zoo.load_tensors(src)
    source = source or f"imported from {src.name}"
    if kind == "codec":
        config = (stored.codec_config if stored else json.loads(meta["config"]))
        config = CodecConfig.from_dict({**config, "name": name})
        model = CompressionModel(config)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
        cfg = zoo.from_legacy(config.to_dict(), "codec", name, model.fingerprint().hex(), source, license, str(src))
    else:
        legacy = stored.to_meta() if stored else json.loads(meta["meta"])
        if codec:
            legacy = {**legacy, "codec": codec}
        fingerprint = ""
        if legacy["input"] in ("latent", "decoded"):
            point = legacy["codec"]
            if point not in zoo.list_pretrained("codec"):
                raise NodecodeError(f"{src} reads codec '{point}', which is not bundled: import it first or pass --codec")
            fingerprint = zoo.index()[point].fingerprint
        cfg = zoo.from_legacy(legacy, kind, name, fingerprint, source, license, str(src))
        if any(k.startswith("model.") for k in tensors):
            raise NodecodeError(f"{src} is a training checkpoint; import the final {kind}.safetensors")
    with torch.no_grad():
        zoo.save_pretrained(tensors, cfg, zoo.WEIGHTS_DIR / f"{name}.safetensors")
    stale = zoo.WEIGHTS_DIR / f"{name}.json"          # the zoo entry replaces the training code's JSON sidecar
    if stale.is_file():
        stale.unlink()
    zoo.write_index({**zoo.index(), name: cfg})
    return cfg


def remove(name: str) -> None:
    entries = zoo.index()
    if name not in entries:
        raise NodecodeError(f"'{name}' is not in the zoo")
    dependants = [n for n, c in entries.items() if c.kind != "codec" and c.codec == name]
    if entries[name].kind == "codec" and dependants:
        raise NodecodeError(f"'{name}' is read by {', '.join(dependants)}: remove those first")
    del entries[name]
    zoo.write_index(entries)
    (zoo.WEIGHTS_DIR / f"{name}.safetensors").unlink(missing_ok=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nodecode.zoo", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="bundled artifacts")
    s = sub.add_parser("show", help="one entry's config as JSON")
    s.add_argument("name")
    s = sub.add_parser("import-legacy", help="bundle a training-code weights file as NAME")
    s.add_argument("src")
    s.add_argument("name")
    s.add_argument("--kind", choices=zoo.KINDS, help="default: from the file's format")
    s.add_argument("--codec", help="the bundled operating point a classifier/segmenter reads (default: its metadata)")
    s.add_argument("--license", default="unspecified")
    s.add_argument("--source", help="provenance note (default: 'imported from SRC')")
    s = sub.add_parser("remove", help="drop NAME from the bundle")
    s.add_argument("name")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "list":
            for n, c in zoo.index().items():
                print(f"{n:16s} {c.kind:10s} {c.architecture:12s} codec={c.codec:6s} fp={c.fingerprint} {c.source}")
        elif a.cmd == "show":
            if a.name not in zoo.index():
                raise NodecodeError(f"'{a.name}' is not in the zoo")
            print(zoo.index()[a.name].to_json())
        elif a.cmd == "import-legacy":
            cfg = import_legacy(a.src, a.name, a.kind, a.codec, a.license, a.source)
            print(f"{a.name}: {cfg.kind} {cfg.architecture}, fingerprint {cfg.fingerprint} -> "
                  f"{zoo.WEIGHTS_DIR / (a.name + '.safetensors')}")
        else:
            remove(a.name)
    except NodecodeError as e:
        print(f"nodecode: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
