"""The command line is generated from the recipes' config dataclasses: one default per setting, one meaning per flag."""
import argparse
import dataclasses
import json
import typing
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
    hints = typing.get_type_hints(cls)
    negated = {"--no-" + flag_name(f)[2:] for f in cli_fields(cls)          # --name / --no-name pairs
               if f.default is not False and bool in (hints[f.name], *typing.get_args(hints[f.name]))}
    assert {flag_name(f) for f in cli_fields(cls)} | negated | {"-h", "--help", *extra} == flags


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
        amp: bool = option(True, "mixed precision")
        nesterov: bool | None = option(None, "Nesterov (default: the recipe's)")
        crop: tuple[float, float] | None = option(None, "crop range")

    p = argparse.ArgumentParser()
    add_config_args(p, Recipe)
    assert config_from_args(Recipe, p.parse_args(["--data", "x"])) == Recipe(data="x")
    r = config_from_args(Recipe, p.parse_args("--data x --kind b --ratio 0.5 --sizes 3,4,5 --fast".split()))
    assert r == Recipe("x", "b", 0.5, (3, 4, 5), True)
    assert "--hidden" not in p.format_help() and "(default: 1,2)" in p.format_help()
    r = config_from_args(Recipe, p.parse_args("--data x --no-amp --no-nesterov --crop 0.2,1".split()))
    assert (r.amp, r.nesterov, r.crop) == (False, False, (0.2, 1.0))
    assert config_from_args(Recipe, p.parse_args("--data x --nesterov".split())).nesterov is True
    assert "(default: --amp)" in p.format_help() and "(default: the recipe's)" in p.format_help()
    with pytest.raises(SystemExit):
        p.parse_args("--data x --crop 0.2".split())        # tuple[float, float]: two values


def test_classifier_recipe_flags_default_to_the_recipe():
    """Issue 12's flags: None is "the --recipe's value", said in --help with both recipes' values."""
    from nodecode.tasks.classification import ClassifierTrainConfig
    a = build_parser().parse_args("train classifier --data D --out O --recipe imagenette --weight-decay 1e-3 "
                                  "--warmup-epochs 1 --label-smoothing 0 --augment input --augment-variants 2 "
                                  "--holdout-frac 0.1 --epochs 3 --batch-size 32 --lr 0.1 --no-nesterov".split())
    cfg = config_from_args(ClassifierTrainConfig, a)
    rec = cfg.recipe_values()
    assert (rec.weight_decay, rec.warmup_epochs, rec.label_smoothing, rec.augment, rec.epochs, rec.batch_size,
            rec.base_lr, rec.nesterov, rec.schedule) == (1e-3, 1.0, 0.0, "input", 3, 32, 0.1, False, "cosine")
    assert (cfg.augment_variants, cfg.holdout_frac) == (2, 0.1)
    plain = config_from_args(ClassifierTrainConfig, build_parser().parse_args("train classifier --data D --out O".split()))
    assert plain.epochs is None and plain.recipe_values().epochs == 28 and plain.recipe_values().base_lr == 0.025
    text = dict(_subparsers(build_parser()))[("train", "classifier")].format_help()
    assert "the recipe's: paper 28, imagenette 40" in " ".join(text.split())


def test_json_to_stdout_or_to_a_path(tmp_path, capsys):
    assert main(["flops", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert main(["flops", "--json", str(tmp_path / "f.json")]) == 0
    table = capsys.readouterr().out              # with a PATH the JSON goes there and the table to stdout as without
    assert json.loads((tmp_path / "f.json").read_text()) == rows and "| cresnet51 |" in table
    assert main(["flops"]) == 0 and capsys.readouterr().out == table


def test_a_runs_recorded_recipe_is_named_back():
    """tasks.recipe.recipe_name: the recipe a run wrote to its summary (asdict, through JSON) is found again by name;
    an override makes it none of them; a field newer than the run is not compared."""
    from nodecode.tasks.classification import ClassifierTrainConfig
    from nodecode.tasks.recipe import recipe_name

    def recorded(argv):
        cfg = config_from_args(ClassifierTrainConfig, build_parser().parse_args(("train classifier --data D --out O "
                                                                                   + argv).split()))
        return json.loads(json.dumps(dataclasses.asdict(cfg.recipe_values())))
    assert recipe_name(recorded("--recipe imagenette60")) == "imagenette60"
    assert recipe_name(recorded("")) == "paper" and recipe_name(recorded("--recipe imagenette")) == "imagenette"
    assert recipe_name(recorded("--recipe imagenette60 --epochs 80")) is None
    old = recorded("--recipe imagenette")
    del old["cutmix"]
    assert recipe_name(old) == "imagenette" and recipe_name({}) is None and recipe_name({"nope": 1}) is None
