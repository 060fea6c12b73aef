"""Recipe configs -> command-line flags: every default lives once, in its dataclass (torchvision's get_args_parser).

A field becomes a flag when it is declared with `option(default, "help")`; the flag's name is the field's with
dashes (or `flag=`), its type, default and choices come from the annotation and the default:

    int | float | str (optionally `| None`)   --name VALUE
    Literal["a", "b"]                         --name {a,b}
    bool (default False)                      --name (a switch)
    bool (default True) or bool | None        --name / --no-name (None: neither given, e.g. "the recipe's")
    tuple[T, ...]                             --name A,B,C (comma-separated; tuple[T, T]: exactly two)

Fields without `option(...)` (schedule details, test knobs) are library-only. `add_config_args` adds the flags to
an argparse parser, `config_from_args` builds the dataclass back from the parsed namespace. Flags that are not a
recipe's but every command's (`--json [PATH]`, deprecated aliases) are defined once at the end.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from dataclasses import MISSING, field

__all__ = ["option", "add_config_args", "config_from_args", "cli_fields", "add_json_option", "emit_json",
           "add_deprecated_alias"]


def option(default=MISSING, help: str = "", *, flag: str | None = None, metavar: str | None = None):
    """A dataclass field that is also a command-line flag (`help` is required: it is what makes it one)."""
    if not help:
        raise ValueError("option() needs a help text")
    return field(default=default, metadata={"help": help, "flag": flag, "metavar": metavar})


def cli_fields(cls) -> list[dataclasses.Field]:
    """The fields of a config dataclass that are command-line flags: the class's own in declaration order, then
    those it inherits (e.g. RunOptions's --seed, --device)."""
    own = cls.__dict__.get("__annotations__", {})
    return sorted((f for f in dataclasses.fields(cls) if "help" in f.metadata), key=lambda f: f.name not in own)


def flag_name(f: dataclasses.Field) -> str:
    return "--" + (f.metadata.get("flag") or f.name.replace("_", "-"))


def _not_none(tp):
    """X of an annotation `X | None`, else the annotation itself."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported flag type {tp}")
        return args[0]
    return tp


def _unwrap(tp):
    """(base type, choices or None) of an annotation, `X | None` taken as X."""
    tp = _not_none(tp)
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        return type(choices[0]), choices
    return (tuple if origin is tuple else tp), None


def _comma_list(tp):
    args = typing.get_args(tp)
    elem = args[0] if args else str
    size = None if not args or args[-1] is Ellipsis else len(args)     # tuple[float, float]: exactly two

    def parse(text: str) -> tuple:
        values = tuple(elem(s) for s in text.split(",") if s.strip())
        if size is not None and len(values) != size:
            raise ValueError(f"{size} values expected")
        return values
    parse.__name__ = f"comma-separated {elem.__name__} list" + (f" of {size}" if size else "")   # named in errors
    return parse


def _help(f: dataclasses.Field) -> str:
    text = f.metadata["help"].replace("%", "%%")
    d = f.default
    if d is MISSING or d is None or d is False or "default" in text:
        return text
    if d is True:
        return f"{text} (default: --{flag_name(f)[2:]})"
    shown = ",".join(map(str, d)) if isinstance(d, tuple) else d
    return f"{text} (default: {shown})"


def add_config_args(parser, cls, *, into: dict | None = None, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per `option` field of `cls` to `parser` (`into` maps field names to another container, e.g. a
    mutually exclusive group); fields without a default are required."""
    hints = typing.get_type_hints(cls)
    for f in cli_fields(cls):
        if f.name in skip:
            continue
        tp, choices = _unwrap(hints[f.name])
        kw: dict = {"dest": f.name, "help": _help(f)}
        if f.metadata.get("metavar"):
            kw["metavar"] = f.metadata["metavar"]
        if f.default is MISSING:
            kw["required"] = True
        else:
            kw["default"] = f.default
        if tp is bool:
            if f.default not in (False, True, None):
                raise TypeError(f"{cls.__name__}.{f.name}: a bool flag defaults to False, True or None")
            kw["action"] = "store_true" if f.default is False else argparse.BooleanOptionalAction
        elif tp is tuple:
            kw["type"] = _comma_list(_not_none(hints[f.name]))
            kw.setdefault("metavar", "A,B,...")
        else:
            kw["type"] = tp
            if choices:
                kw["choices"] = choices
        if "action" not in kw and not choices:
            kw.setdefault("metavar", flag_name(f)[2:].upper().replace("-", "_"))
        (into or {}).get(f.name, parser).add_argument(flag_name(f), **kw)


def config_from_args(cls, ns: argparse.Namespace, **override):
    """The config dataclass of a parsed namespace: every field the namespace carries, then `override`."""
    kw = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if f.init and hasattr(ns, f.name)}
    return cls(**{**kw, **override})


# -- flags every command spells the same way --------------------------------------------------------------------
def _json_path(text: str) -> str:
    if text == "-" or text.endswith(".json"):
        return text
    raise argparse.ArgumentTypeError(f"takes a .json path or - (stdout), not {text[:60]!r}")


def add_json_option(parser, what: str = "the result") -> None:
    """`--json [PATH]`, the same in every command: `what` as JSON to PATH (a .json file), or to stdout with no PATH
    (or -). Put it after positional arguments, or give it a PATH."""
    parser.add_argument("--json", nargs="?", const="-", default=None, type=_json_path, metavar="PATH",
                        help=f"write {what} as JSON to PATH (.json), or to stdout with no PATH or -")


def emit_json(dest: str | None, obj) -> bool:
    """Write obj for a parsed `--json` value (stdout for -); True if it went to stdout (print nothing else)."""
    if dest is None:
        return False
    if dest == "-":
        print(json.dumps(obj, indent=2, default=str))
        return True
    from nodecode.utils import write_json
    write_json(dest, obj)
    return False


def add_deprecated_alias(parser, old: str, new: str, dest: str) -> None:
    """A hidden `old` flag that still sets `dest` (the value of `new`), with a one-line warning on stderr."""

    class Alias(argparse.Action):
        def __call__(self, p, ns, values, option_string=None):
            print(f"nodecode: warning: {old} is deprecated here, use {new}", file=sys.stderr)
            setattr(ns, dest, values)

    parser.add_argument(old, dest=dest, action=Alias, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
