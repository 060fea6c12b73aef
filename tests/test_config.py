"""The command line is generated from the recipes' config dataclasses: one default per setting, one meaning per flag."""
import argparse
import dataclasses
import json
from typing import Literal

import pytest

from nodecode.cli import TRAIN_RECIPES, build_parser, main
from nodecode.config import add_config_args, cli_fields, config_from_args, flag_name, option


def _subparsers(parser, path=()):
    """(command path, parser) of every leaf command."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for s in subs:
        for name, p in s.choices.items():
            yield from _subparsers(p, path + (name,))


def _recipes():
    import importlib
    return [(name, getattr(importlib.import_module(mod), cls)) for name, mod, cls, _, _ in TRAIN_RECIPES]


@pytest.mark.parametrize("name, cls", _recipes(), ids=[r[0] for r in TRAIN_RECIPES])
def test_train_defaults_are_the_dataclass_defaults(name, cls):
    extra = ["--codec-only"] if name == "joint" else []
    args = build_parser().parse_args(["train", name, "--data", "D", "--out", "O", *extra])
    assert config_from_args(cls, args) == cls(data="D", out="O")
    flags = {s for a in dict(_subparsers(build_parser()))[("train", name)]._actions for s in a.option_strings}
    assert {flag_name(f) for f in cli_fields(cls)} | {"-h", "--help", *extra} == flags


def test_classifier_codec_default_has_one_home():
    from nodecode.tasks.classification import ClassifierTrainConfig
    args = build_parser().parse_args(["train", "classifier", "--data", "D", "--out", "O"])
    assert args.codec == ClassifierTrainConfig.codec == "c8"


def test_flags_reach_the_config():
    from nodecode.tasks.compression import CodecTrainConfig
    from nodecode.tasks.joint import JointTrainConfig
    a = build_parser().parse_args("train codec --data D --out O --channels 8 --schedule cosine --compile --lr 0.002 "
                                  "--checkpoint-every 5m --max-minutes 1.5".split())
    cfg = config_from_args(CodecTrainConfig, a)
    assert (cfg.name, cfg.channels, cfg.schedule, cfg.compile, cfg.lr, cfg.checkpoint_every, cfg.max_minutes) == \
        ("c8", 8, "cosine", True, 0.002, "5m", 1.5)
    j = config_from_args(JointTrainConfig, build_parser().parse_args(
        "train joint --data D --out O --classifier C --lr 0.01 --epochs 0.5".split()))
    assert (j.classifier, j.base_lr, j.epochs) == ("C", 0.01, 0.5)


def test_every_flag_has_one_meaning():
    """A flag spelled the same in two commands takes the same kind of value (hidden deprecated aliases aside)."""
    seen: dict = {}
    for path, p in _subparsers(build_parser()):
        for a in p._actions:
            if a.help == argparse.SUPPRESS or not a.option_strings or a.dest == "help":
                continue
            for s in a.option_strings:
                kind = "number" if a.type in (int, float) else getattr(a.type, "__name__", "str")   # joint: 0.5 epochs
                seen.setdefault(s, set()).add((kind, a.nargs, a.const))
    several = {s: v for s, v in seen.items() if len(v) > 1}
    assert not several, several
    assert seen["--json"] == {("_json_path", "?", "-")}


@pytest.mark.parametrize("argv, expect", [
    (["train", "codec", "--data", "D", "--out", "O", "--steps", "many"], "train codec: argument --steps"),
    (["train", "classifier", "--data", "D", "--out", "O", "--input", "jpeg"], "argument --input: invalid choice"),
    (["train", "segmenter", "--out", "O"], "the following arguments are required: --data"),
    (["train", "joint", "--data", "D", "--out", "O"], "one of the arguments --codec-only --classifier is required"),
    (["classify", "--json", "a.ndc", "b.ndc"], "argument --json: takes a .json path or -"),
    (["bench", "speed", "--iters", "1.5"], "argument --iters: invalid int value"),
])
def test_bad_value_is_one_line_and_exit_2(argv, expect, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("nodecode: error:") and err.count("\n") == 1 and expect in err, err


def test_a_new_field_with_option_is_a_new_flag():
    @dataclasses.dataclass
    class Recipe:
        data: str = option(help="input folder")
        kind: Literal["a", "b"] = option("a", "which kind")
        ratio: float | None = option(None, "a ratio")
        sizes: tuple[int, ...] = option((1, 2), "sizes")
        fast: bool = option(False, "go fast")
        hidden: int = 3                                   # no option(): library-only

    p = argparse.ArgumentParser()
    add_config_args(p, Recipe)
    assert config_from_args(Recipe, p.parse_args(["--data", "x"])) == Recipe(data="x")
    r = config_from_args(Recipe, p.parse_args("--data x --kind b --ratio 0.5 --sizes 3,4,5 --fast".split()))
    assert r == Recipe("x", "b", 0.5, (3, 4, 5), True)
    assert "--hidden" not in p.format_help() and "(default: 1,2)" in p.format_help()


def test_json_to_stdout_or_to_a_path(tmp_path, capsys):
    assert main(["flops", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert main(["flops", "--json", str(tmp_path / "f.json")]) == 0
    table = capsys.readouterr().out              # with a PATH the JSON goes there and the table to stdout as without
    assert json.loads((tmp_path / "f.json").read_text()) == rows and "| cresnet51 |" in table
    assert main(["flops"]) == 0 and capsys.readouterr().out == table
