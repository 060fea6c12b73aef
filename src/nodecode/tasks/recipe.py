"""Classification training recipes, the same for every input kind: the paper's App. A.4 and one for Imagenette.

  paper       App. A.4: SGD momentum 0.9, lr 0.025 at batch 64 (scaled linearly with the batch), ÷10 at epochs
              8, 16 and 24 of 28, weight decay 1e-4, no label smoothing; crop and mirror of the network input itself
              (for a latent: a mirrored latent, 4-px latent shifts; data.augment).
  imagenette  for a 9.5k-image training set (issue 12): SGD Nesterov momentum 0.9, lr 0.2 at batch 128, a 2-epoch
              linear warm-up then cosine to 0, weight decay 5e-4, label smoothing 0.1, 40 epochs; augmentation in RGB
              (random-resized crop, scale 0.35-1 of the area, aspect 3/4-4/3, true mirror) then through the frozen
              codec (data.codec_augment). A starting point for the search on a held-out part of train.
  imagenette60  the search's winner (results/classification/matched/search.md: ResNet-50 on RGB, held-out 10% of
              train): imagenette with 60 epochs.

Weight decay is on conv and fc weights only (parameters of 2+ dimensions), never on norms or biases.
Every value lives here once; a train config's field left at None takes the recipe's value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from torch import nn

from nodecode.errors import NodecodeError


@dataclass(frozen=True)
class Recipe:
    epochs: int = 28
    batch_size: int = 64                # global, over all processes
    base_lr: float = 0.025              # at batch lr_batch, scaled linearly with batch_size
    lr_batch: int = 64
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4          # weights only
    schedule: str = "step"              # step: ÷10 at lr_epochs | cosine: warm-up then cosine to 0
    lr_epochs: tuple[int, ...] = (8, 16, 24)
    warmup_epochs: float = 0.0          # linear warm-up from lr / warm-up steps (cosine and step)
    label_smoothing: float = 0.0
    augment: str = "input"              # input: crop/mirror of the network input (App. A.4) | codec: RGB, then codec
    scale: tuple[float, float] = (0.35, 1.0)      # codec augmentation: random-resized crop area fraction
    ratio: tuple[float, float] = (3 / 4, 4 / 3)   # and aspect ratio range
    cutmix: bool = False                # codec augmentation: CutMix in RGB before the codec, soft labels

    def lr(self) -> float:
        """The peak learning rate at this recipe's batch size."""
        return self.base_lr * self.batch_size / self.lr_batch

    def lr_factor(self, step: int, steps_per_epoch: int) -> float:
        """Multiplier of the peak learning rate at `step` (0-based)."""
        warm = round(self.warmup_epochs * steps_per_epoch)
        if step < warm:
            return (step + 1) / warm
        if self.schedule == "cosine":
            total = max(self.epochs * steps_per_epoch - warm, 1)
            return 0.5 * (1 + math.cos(math.pi * min(step - warm, total) / total))
        return 0.1 ** sum(step >= e * steps_per_epoch for e in self.lr_epochs)

    def with_overrides(self, **kw) -> "Recipe":
        """This recipe with every non-None value of `kw` (names of Recipe fields) replaced."""
        names = {f.name for f in fields(self)}
        if unknown := set(kw) - names:
            raise NodecodeError(f"not recipe fields: {sorted(unknown)}")
        r = replace(self, **{k: tuple(v) if isinstance(v, list) else v for k, v in kw.items() if v is not None})
        r.check()
        return r

    def check(self) -> None:
        if self.schedule not in ("step", "cosine"):
            raise NodecodeError(f"unknown lr schedule {self.schedule!r} (step or cosine)")
        if self.augment not in AUGMENTS:
            raise NodecodeError(f"unknown augmentation {self.augment!r} (choose from {', '.join(AUGMENTS)})")
        if not 0 <= self.label_smoothing < 1 or self.weight_decay < 0 or self.base_lr <= 0 or self.epochs < 1:
            raise NodecodeError("recipe values out of range (label smoothing in [0, 1), weight decay >= 0, lr > 0)")
        if self.cutmix and self.augment != "codec":
            raise NodecodeError("CutMix is part of the augmentation through the codec (augment codec)")
        if not 0 < self.scale[0] <= self.scale[1] <= 1 or not 0 < self.ratio[0] <= self.ratio[1]:
            raise NodecodeError(f"bad random-resized crop ranges: scale {self.scale}, ratio {self.ratio}")


AUGMENTS = ("input", "codec")
RECIPES = {
    "paper": Recipe(),
    "imagenette": Recipe(epochs=40, batch_size=128, base_lr=0.2, lr_batch=128, nesterov=True, weight_decay=5e-4,
                         schedule="cosine", lr_epochs=(), warmup_epochs=2.0, label_smoothing=0.1, augment="codec"),
}
RECIPES["imagenette60"] = replace(RECIPES["imagenette"], epochs=60)


def by_recipe(name: str) -> str:
    """"(default: the recipe's: paper V, imagenette W)" for the help of a config field left at None (a Recipe field)."""
    def show(v) -> str:
        if isinstance(v, tuple):
            return ",".join(f"{x:g}" for x in v) or "none"
        if isinstance(v, bool):
            return "on" if v else "off"
        return f"{v:g}" if isinstance(v, float) else str(v)
    return "(default: the recipe's: " + ", ".join(f"{r} {show(getattr(rec, name))}" for r, rec in RECIPES.items()) + ")"


def recipe_name(values: dict) -> str | None:
    """The registered recipe that a run recorded (its Recipe as a dict; fields newer than the run are not compared),
    or None when it is none of them (a search variant, --set overrides)."""
    for name, r in RECIPES.items():
        want = {f.name: list(v) if isinstance(v := getattr(r, f.name), tuple) else v for f in fields(r)}
        if values and all(k in want and want[k] == v for k, v in values.items()):
            return name
    return None


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise NodecodeError(f"unknown recipe {name!r} (choose from {', '.join(RECIPES)})")
    return RECIPES[name]


def param_groups(model: nn.Module, weight_decay: float, **extra) -> list[dict]:
    """Two optimizer groups: conv / fc weights with `weight_decay`, norms and biases (ndim <= 1) without."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay, **extra},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, **extra}]


def sgd(model: nn.Module, recipe: Recipe, front_lr_scale: float | None = None):
    """SGD (Nesterov if the recipe says so) at the recipe's peak lr, weight decay on weights only; with
    `front_lr_scale` (a ModelConfig's), the first module of an nn.Sequential at that fraction of the lr."""
    import torch
    if front_lr_scale is None:
        groups = param_groups(model, recipe.weight_decay)
    else:
        groups = (param_groups(model[0], recipe.weight_decay, lr=recipe.lr() * front_lr_scale)
                  + param_groups(model[1:], recipe.weight_decay))
    return torch.optim.SGD(groups, lr=recipe.lr(), momentum=recipe.momentum, nesterov=recipe.nesterov)
