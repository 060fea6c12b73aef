"""One zoo for every bundled artifact (codecs, classifiers, segmenters), in the spirit of timm's PretrainedCfg.

Each bundled network is one entry of ``weights/zoo.json`` plus its ``weights/NAME.safetensors``; the entry is a
:class:`PretrainedCfg`, and the same config is stored (as JSON) in the safetensors header under ``pretrained_cfg``,
so a file carries its own typed description. ``read_cfg`` validates it on every load; ``load_codec`` and
``create_model(name, pretrained=...)`` build from it. Files written by the training code (``save_codec``'s
``nodecode-codec-1``, ``save_weights``'s classifier / segmenter formats) are read too, as "legacy" configs, and
``python -m nodecode.zoo import-legacy SRC NAME`` turns one into a bundled artifact (see ``zoo/__main__.py``).

This module sits beside utils (it imports no codec or model code), so codec/ and models/ may use it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from nodecode.errors import NodecodeError

FORMAT = "nodecode-pretrained-1"
LEGACY_FORMATS = {"nodecode-codec-1": "codec", "nodecode-classifier-1": "classifier",
                  "nodecode-segmenter-1": "segmenter"}
KINDS = ("codec", "classifier", "segmenter")
INPUTS = ("rgb", "decoded", "latent", "webp")
CODEC_ARCHITECTURE = "theis2017"      # g_a / Q̄ / g_s of App. A.1 (codec/autoencoder.py)
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
INDEX = "zoo.json"
OPERATING_POINTS = {"c8": 0.0983, "c16": 0.330, "c32": 0.635}  # the paper's bpp for C = 8, 16, 32 (§3.1)
_TYPED = ("name", "kind", "architecture", "codec", "fingerprint", "input", "width", "in_channels", "mean", "classes",
          "class_names", "ignore_index", "codec_config")   # what a legacy meta maps onto; the rest goes to `extra`


@dataclass(frozen=True)
class PretrainedCfg:
    """Everything a caller needs to use one pretrained network, typed; validated by ``check()``."""
    name: str                               # zoo name: c8, classifier-c8, segmenter-c8, ...
    kind: str                               # codec | classifier | segmenter
    architecture: str                       # CODEC_ARCHITECTURE, or a models.registry name (cresnet51, cresnet51_d)
    codec: str                              # the operating point it reads (a codec: its own name)
    fingerprint: str                        # 16 hex digits: that codec's weights+tables (every .ndc header carries it);
                                            # "" for a network read from a training-code file (not recorded there)
    input: str = "rgb"                      # rgb | decoded | latent | webp (a codec takes rgb)
    width: float = 1.0                      # ResNet width multiplier
    in_channels: int = 3
    mean: tuple[float, ...] = ()            # training-set channel means subtracted from the input
    classes: tuple = ()                     # dataset labels (wnids, or CamVid indices)
    class_names: tuple[str, ...] = ()
    ignore_index: int | None = None         # segmenters: the void label
    codec_config: dict | None = None        # codecs: the CodecConfig fields
    metrics: dict = field(default_factory=dict)   # measured numbers (val/test accuracy, mIoU, bpp)
    extra: dict = field(default_factory=dict)     # other training metadata, verbatim (webp_bpp, size, init, ...)
    license: str = "unspecified"
    source: str = ""                        # provenance: how and from what it was trained / imported

    def check(self, where: str = "") -> "PretrainedCfg":
        """Self; NodecodeError naming `where` if the config is inconsistent."""
        def bad(msg):
            raise NodecodeError(f"{where or self.name}: invalid pretrained config: {msg}")
        if self.kind not in KINDS:
            bad(f"kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.input not in INPUTS:
            bad(f"input {self.input!r} is not one of {', '.join(INPUTS)}")
        if (len(self.fingerprint) != 16 or any(c not in "0123456789abcdef" for c in self.fingerprint)) and \
                (self.fingerprint or self.kind == "codec"):
            bad(f"fingerprint {self.fingerprint!r} is not 16 hex digits")
        if self.kind == "codec":
            if self.codec_config is None or self.codec_config.get("name") != self.name or self.codec != self.name:
                bad("a codec needs codec_config with its own name")
            return self
        if len(self.classes) != len(self.class_names) or not self.classes:
            bad(f"{len(self.classes)} classes but {len(self.class_names)} class names")
        if self.mean and len(self.mean) != self.in_channels:
            bad(f"{len(self.mean)} channel means for {self.in_channels} input channels")
        if self.width <= 0 or self.in_channels <= 0:
            bad("width and in_channels must be positive")
        return self

    @property
    def fingerprint_bytes(self) -> bytes:
        return bytes.fromhex(self.fingerprint)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict, where: str = "") -> "PretrainedCfg":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise NodecodeError(f"{where}: invalid pretrained config: unknown fields {', '.join(sorted(unknown))}")
        try:
            d = {**d, **{k: tuple(d[k]) for k in ("mean", "classes", "class_names") if k in d}}
            return cls(**d).check(where)
        except TypeError as e:
            raise NodecodeError(f"{where}: invalid pretrained config: {e}") from None

    def to_meta(self) -> dict:
        """The training code's meta dict (model, input, in_channels, codec, mean, classes, ...) for this network."""
        meta = {"model": self.architecture, "width": self.width, "input": self.input, "in_channels": self.in_channels,
                "codec": self.codec or None, "codec_name": self.codec or None, "classes": list(self.classes),
                "class_names": list(self.class_names), "mean": list(self.mean), **self.extra, **self.metrics}
        if self.ignore_index is not None:
            meta["ignore_index"] = self.ignore_index
        return meta


def from_legacy(meta: dict, kind: str, name: str, fingerprint: str, source: str = "", license: str = "unspecified",
                where: str = "") -> PretrainedCfg:
    """A PretrainedCfg from a training-code header: a codec's CodecConfig dict or a classifier/segmenter meta."""
    if kind == "codec":
        return PretrainedCfg(name=name, kind="codec", architecture=CODEC_ARCHITECTURE, codec=name,
                             fingerprint=fingerprint, input="rgb", in_channels=3,
                             codec_config={**meta, "name": name}, source=source, license=license).check(where)
    rest = {k: v for k, v in meta.items() if k not in ("model", *_TYPED)
            and not (k == "codec_name" and v == meta.get("codec"))}   # kept where it differs (a codec path)
    metrics = {k: v for k, v in rest.items() if isinstance(v, (int, float)) and ("miou" in k or "top" in k or k == "bpp")}
    extra = {k: v for k, v in rest.items() if k not in metrics}
    return PretrainedCfg(name=name, kind=kind, architecture=meta["model"], codec=meta.get("codec") or "",
                         fingerprint=fingerprint, input=meta["input"], width=float(meta.get("width", 1.0)),
                         in_channels=int(meta["in_channels"]), mean=tuple(meta.get("mean", ())),
                         classes=tuple(meta["classes"]), class_names=tuple(meta["class_names"]),
                         ignore_index=meta.get("ignore_index"), metrics=metrics, extra=extra, source=source,
                         license=license).check(where)


def header(path: str | Path) -> dict:
    """The safetensors header metadata of `path` (no tensors read); NodecodeError if unreadable."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise NodecodeError(f"no such weights file: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user error here
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise NodecodeError(f"cannot read weights {path}: {why}") from None


def read_cfg(path: str | Path) -> PretrainedCfg | None:
    """The validated PretrainedCfg stored in a zoo file's header; None for a training-code (legacy) file."""
    meta = header(path)
    if meta.get("format") != FORMAT:
        return None
    try:
        d = json.loads(meta["pretrained_cfg"])
    except (KeyError, ValueError):
        raise NodecodeError(f"{path}: zoo file without a readable pretrained_cfg") from None
    return PretrainedCfg.from_dict(d, str(path))


def network_cfg(path: str | Path, kind: str) -> PretrainedCfg:
    """The PretrainedCfg of a classifier / segmenter file: a zoo file's, or one built from a training-code header."""
    path = Path(path)
    cfg = read_cfg(path)
    if cfg is None:
        meta = header(path)
        legacy = {v: k for k, v in LEGACY_FORMATS.items()}[kind]
        if meta.get("format") != legacy:
            raise NodecodeError(f"{path} is not a nodecode {kind}")
        try:
            cfg = from_legacy(json.loads(meta["meta"]), kind, path.stem, "", source=str(path), where=str(path))
        except (KeyError, ValueError, TypeError) as e:
            raise NodecodeError(f"{path}: unreadable {kind} metadata ({e})") from None
    if cfg.kind != kind:
        raise NodecodeError(f"{path} holds a {cfg.kind}, not a {kind}")
    return cfg


def index() -> dict[str, PretrainedCfg]:
    """weights/zoo.json: name -> PretrainedCfg of every bundled artifact (the file's header must say the same)."""
    p = WEIGHTS_DIR / INDEX
    if not p.is_file():
        return {}
    return {n: PretrainedCfg.from_dict(d, f"{p}[{n}]") for n, d in json.loads(p.read_text()).items()}


def list_pretrained(kind: str | None = None) -> list[str]:
    """Bundled names present on disk, in index order, optionally of one kind."""
    return [n for n, c in index().items() if (kind is None or c.kind == kind)
            and (WEIGHTS_DIR / f"{n}.safetensors").is_file()]


def bundled(name: str, kind: str) -> tuple[Path, PretrainedCfg]:
    """(weights path, config) of a bundled artifact; NodecodeError if it is not bundled or its file disagrees."""
    entry = index().get(name)
    path = WEIGHTS_DIR / f"{name}.safetensors"
    if entry is None or entry.kind != kind or not path.is_file():
        raise NodecodeError(f"no bundled {kind} '{name}' in {WEIGHTS_DIR} (bundled: "
                            f"{', '.join(list_pretrained(kind)) or 'none'})")
    stored = read_cfg(path)
    if stored != entry:
        raise NodecodeError(f"{path}: its header does not match the zoo entry '{name}' in {INDEX}")
    return path, entry


def bundled_for(kind: str, codec: str) -> str:
    """The name of the bundled `kind` (classifier / segmenter) reading operating point `codec`."""
    for n in list_pretrained(kind):
        if index()[n].codec == codec:
            return n
    raise NodecodeError(f"no bundled {kind} for '{codec}' in {WEIGHTS_DIR}; pass "
                        f"{'--classifier' if kind == 'classifier' else '--segmenter'}")


def resolve(name_or_path: str | Path, kind: str) -> tuple[Path, PretrainedCfg | None]:
    """A bundled name or a file path -> (path, its PretrainedCfg, None for a legacy training-code file)."""
    s = str(name_or_path)
    if s in index():
        return bundled(s, kind)
    path = Path(s)
    if path.is_dir():
        path = path / f"{kind}.safetensors"
    if not path.is_file():
        if kind != "codec" and (path.suffix or len(path.parts) > 1):
            raise NodecodeError(f"no such {kind} checkpoint: {path}")
        raise NodecodeError(f"no {kind} named '{s}' (bundled: {', '.join(list_pretrained(kind)) or 'none'}) "
                            "and no such file")
    cfg = read_cfg(path)
    if cfg is not None and cfg.kind != kind:
        raise NodecodeError(f"{path} holds a {cfg.kind}, not a {kind}")
    return path, cfg


def load_tensors(path: str | Path, keys: tuple[str, ...] | None = None) -> dict:
    """Tensors of a weights file as stored (all, or only `keys`: e.g. a codec's centers and tables, not g_a / g_s)."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            missing = set(keys or ()) - set(f.keys())
            if missing:
                raise NodecodeError(f"{path} lacks {', '.join(sorted(missing))}")
            return {k: f.get_tensor(k) for k in (keys or f.keys())}
    except NodecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user error here
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise NodecodeError(f"cannot read weights {path}: {why}") from None


def save_pretrained(tensors: dict, cfg: PretrainedCfg, path: str | Path) -> None:
    """Write a zoo file: `tensors` as given, the validated config in the header (atomically)."""
    from safetensors.torch import save_file
    from nodecode.utils import atomic_path
    cfg.check(str(path))
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"format": FORMAT, "pretrained_cfg": cfg.to_json()})


def write_index(entries: dict[str, PretrainedCfg]) -> None:
    """Regenerate weights/zoo.json (the one place bundled fingerprints are written down)."""
    from nodecode.utils import write_json
    write_json(WEIGHTS_DIR / INDEX, {n: json.loads(c.to_json()) for n, c in entries.items()})
