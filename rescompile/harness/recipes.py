"""Training recipes as YAML files, validated like specs (errors at ``file:line:col``).

A recipe names the optimisation hyper-parameters of a run; the model and the data are the spec's
and the command line's. The library's recipes (``rescompile/recipes/*.yaml``: ``paper-cifar``,
``paper-imagenet``, ``fast``, ``torchvision-resnet50``) and a user's file are read the same way:
``--recipe NAME`` or ``--recipe path/to/recipe.yaml`` (a path to an existing file wins)::

    description: torchvision's ResNet-50 recipe
    batch_size: 1024              # the global batch
    epochs: 600                   # or steps: N; the unit of every length below
    lr: 0.5
    momentum: 0.9                 # default 0.9
    nesterov: false
    weight_decay: 2.0e-5          # L2, added to the gradient (SGD's weight_decay)
    norm_weight_decay: 0.0        # normalisation layers' scale and shift (default: weight_decay)
    bias_weight_decay: null       # every `bias`, norm shifts included (default: as the others)
    label_smoothing: 0.1
    clip_grad_norm: null          # rescale gradients whose global L2 norm exceeds this
    ema: {decay: 0.999, every: 32}  # an average of the weights, evaluated next to them
    augmentation: random_resized_crop  # or scale_jitter (image folders and shards only)
    schedule:                     # kind: step (every, gamma) | multistep (milestones, gamma)
      kind: cosine                #   | cosine (final_lr) | one_cycle (pct_start, div_factor,
    warmup:                       #     final_div_factor)
      length: 5                   # in epochs (or steps), from lr x start_factor up to lr
      start_factor: 0.01          # omitted: lr x (step + 1) / warm-up steps; or lr: constant
      when: always                # always | deep (nets of 110+ layers, the paper) | asked

Lengths, milestones, ``every`` and the warm-up are in the recipe's unit; a run of another length
(``--steps``, ``--epochs``) scales them proportionally (:func:`~rescompile.harness.schedules.
plan_training`). The schedules are functions of the step (torchvision's schedulers step per
epoch: the warm-up and the cosine here are their per-step versions).

``augmentation`` says how the training images of an image folder or tar shards are cropped:
``random_resized_crop`` (the default, torchvision's and timm's: area 8-100%, aspect 3/4-4/3) or
``scale_jitter`` (``paper-imagenet``: He et al. 2016, sec. 3.4, the shorter side resized to a
random length in [256, 480] and a random 224 crop; at another input size S the range is
[256, 480] * S / 224), either followed by a horizontal flip. Data held in memory (CIFAR, digits,
synthetic) has its own augmentation (pad-crop-flip) and does not use the setting.
"""

from __future__ import annotations

import difflib
import functools
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rescompile.errors import Diagnostic, SpecError
from rescompile.harness.schedules import Augmentation, Recipe, RecipeError

__all__ = ["RecipeFile", "library_names", "load_recipe", "recipe_from_file"]

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class StepSchedule(_Model):
    """The rate times ``gamma`` every ``every`` units (torchvision's ``StepLR``)."""

    kind: Literal["step"]
    every: Annotated[int, Field(gt=0)]
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.1


class MultiStepSchedule(_Model):
    """The rate times ``gamma`` at each milestone (torchvision's ``MultiStepLR``)."""

    kind: Literal["multistep"]
    milestones: list[Annotated[int, Field(gt=0)]]
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.1


class CosineSchedule(_Model):
    """Half a cosine from ``lr`` to ``final_lr`` at the run's end (``CosineAnnealingLR``)."""

    kind: Literal["cosine"]
    final_lr: NonNegative = 0.0


class OneCycleSchedule(_Model):
    """The one-cycle policy, as ``torch.optim.lr_scheduler.OneCycleLR`` (cosine, two phases):
    ``lr`` is the peak. It has its own warm-up: a recipe gives no ``warmup`` with it."""

    kind: Literal["one_cycle"]
    pct_start: Annotated[float, Field(gt=0, lt=1)] = 0.3
    div_factor: Annotated[float, Field(ge=1)] = 25.0
    final_div_factor: Annotated[float, Field(ge=1)] = 1e4


Schedule = Annotated[
    StepSchedule | MultiStepSchedule | CosineSchedule | OneCycleSchedule,
    Field(discriminator="kind"),
]


class Warmup(_Model):
    """A warm-up of ``length`` units: linear from ``lr * start_factor`` (torchvision's
    ``LinearLR``), linear reaching ``lr`` on its last step when no factor is given, or the
    constant rate ``lr`` (the paper's 0.01 for ResNet-110)."""

    length: Annotated[int, Field(gt=0)]
    start_factor: Annotated[float, Field(gt=0, le=1)] | None = None
    lr: PositiveFloat | None = None
    when: Literal["always", "deep", "asked"] = "always"

    @model_validator(mode="after")
    def _one_kind(self) -> Warmup:
        if self.start_factor is not None and self.lr is not None:
            raise ValueError("a warm-up is linear (start_factor) or constant (lr), not both")
        return self


class Ema(_Model):
    """An exponential moving average of the weights, updated every ``every`` steps with
    ``ema += (1 - decay) * (weights - ema)`` (:mod:`rescompile.harness.ema`)."""

    decay: Annotated[float, Field(ge=0, lt=1)]
    every: Annotated[int, Field(gt=0)] = 1


class RecipeFile(_Model):
    """A recipe file (see the module docstring)."""

    description: str = ""
    batch_size: Annotated[int, Field(gt=0)]
    epochs: Annotated[int, Field(gt=0)] | None = None
    steps: Annotated[int, Field(gt=0)] | None = None
    lr: PositiveFloat
    momentum: Fraction = 0.9
    nesterov: bool = False
    weight_decay: NonNegative = 0.0
    norm_weight_decay: NonNegative | None = None
    bias_weight_decay: NonNegative | None = None
    label_smoothing: Fraction = 0.0
    clip_grad_norm: PositiveFloat | None = None
    schedule: Schedule
    warmup: Warmup | None = None
    ema: Ema | None = None
    augmentation: Augmentation = "random_resized_crop"

    @model_validator(mode="after")
    def _consistent(self) -> RecipeFile:
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("give the recipe's length as epochs or as steps (exactly one)")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs a momentum above 0")
        length = self.epochs or self.steps or 0
        if isinstance(self.schedule, MultiStepSchedule):
            late = [m for m in self.schedule.milestones if m >= length]
            if late:
                raise ValueError(f"milestone {late[0]} is not within the run's {length}")
        if isinstance(self.schedule, OneCycleSchedule) and self.warmup is not None:
            raise ValueError("one_cycle warms up by itself (pct_start); drop warmup")
        if self.warmup is not None and self.warmup.length >= length:
            raise ValueError(f"the warm-up ({self.warmup.length}) is not shorter than the run")
        return self

    def to_recipe(self, name: str) -> Recipe:
        """The recipe as the training plan uses it."""
        s, w = self.schedule, self.warmup
        length = self.epochs or self.steps or 0
        milestones: tuple[int, ...] = ()
        if isinstance(s, StepSchedule):
            milestones = tuple(range(s.every, length, s.every))
        elif isinstance(s, MultiStepSchedule):
            milestones = tuple(sorted(s.milestones))
        kind = {"step": "step", "multistep": "step", "cosine": "cosine", "one_cycle": "one_cycle"}
        extra: dict[str, Any] = {}
        if isinstance(s, CosineSchedule):
            extra["final_lr"] = s.final_lr
        if isinstance(s, OneCycleSchedule):
            extra.update(
                pct_start=s.pct_start, div_factor=s.div_factor, final_div_factor=s.final_div_factor
            )
        return Recipe(
            name=name,
            description=" ".join(self.description.split()),
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            schedule=kind[s.kind],  # type: ignore[arg-type]
            length=length,
            unit="epochs" if self.epochs is not None else "steps",
            milestones=milestones,
            gamma=getattr(s, "gamma", 0.1),
            warmup=w.length if w else 0,
            warmup_lr=w.lr if w else None,
            warmup_factor=w.start_factor if w else None,
            warmup_by_default=w is not None and w.when == "always",
            warmup_deep=w is not None and w.when == "deep",
            nesterov=self.nesterov,
            label_smoothing=self.label_smoothing,
            norm_weight_decay=self.norm_weight_decay,
            bias_weight_decay=self.bias_weight_decay,
            clip_grad_norm=self.clip_grad_norm,
            ema_decay=self.ema.decay if self.ema else None,
            ema_every=self.ema.every if self.ema else 1,
            augmentation=self.augmentation,
            **extra,
        )


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _library() -> Path:
    folder = resources.files("rescompile.recipes")
    if not isinstance(folder, Path) or not folder.is_dir():
        raise RuntimeError(f"the recipe library is not a directory on disk: {folder}")
    return folder


@functools.cache
def library_names() -> tuple[str, ...]:
    """The library's recipe names: the paper's first, then the others by name."""
    names = sorted(p.stem for p in _library().glob("*.yaml"))
    return tuple(sorted(names, key=lambda n: (not n.startswith("paper-"), n)))


def load_recipe(name: str) -> Recipe:
    """The recipe in the YAML file ``name`` if there is one, else the library recipe ``name``."""
    path = Path(name)
    if name and (path.is_file() or path.suffix in (".yaml", ".yml") or "/" in name):
        return recipe_from_file(path)
    if name in library_names():
        return recipe_from_file(_library() / f"{name}.yaml", name=name)
    raise RecipeError(
        f"unknown recipe {name!r}; choose one of: {', '.join(library_names())}, "
        "or give a recipe file (YAML)"
    )


def recipe_from_file(path: str | Path, *, name: str | None = None) -> Recipe:
    """Read and validate a recipe file; a :class:`SpecError` lists every problem with its
    ``file:line:col``."""
    from rescompile.spec import yamlsafe

    loc = yamlsafe.load_file(path)
    if not isinstance(loc.data, dict):
        raise SpecError(Diagnostic(loc.pos(()), "a recipe is a mapping of fields"))
    try:
        model = RecipeFile.model_validate(loc.data)
    except ValidationError as err:
        raise SpecError(_diagnostics(err, loc)) from None
    return model.to_recipe(name or Path(path).stem)


_SCHEDULES = (StepSchedule, MultiStepSchedule, CosineSchedule, OneCycleSchedule)
_FIELDS_AT = {  # where an unknown key sits -> the fields it may have meant
    (): sorted(RecipeFile.model_fields),
    ("warmup",): sorted(Warmup.model_fields),
    ("ema",): sorted(Ema.model_fields),
    ("schedule",): sorted({f for m in _SCHEDULES for f in m.model_fields}),
}


def _data_path(raw: tuple, data: Any) -> tuple:
    """pydantic's error location without the union tags it inserts (``schedule.cosine.x``)."""
    path: list[Any] = []
    node = data
    for i, part in enumerate(raw):
        if isinstance(node, dict) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(part)
            node = node[part]
        elif i == len(raw) - 1 and isinstance(part, str) and part not in _TAGS:
            path.append(part)  # a missing or unknown field
    return tuple(path)


_TAGS = {"step", "multistep", "cosine", "one_cycle", "function-after[_one_kind(), Warmup]"}


def _diagnostics(err: ValidationError, loc: Any) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    for e in err.errors(include_url=False):
        path = _data_path(tuple(e["loc"]), loc.data)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            key = str(path[-1]) if path else "?"
            msg = f"unknown field {key!r}"
            fields = _FIELDS_AT.get(tuple(path[:-1]), [])
            close = difflib.get_close_matches(key, [f for f in fields if f != key], n=1)
            if close:
                msg += f"; did you mean {close[0]!r}?"
            pos = loc.key_positions.get(path) or loc.pos(path)
        elif e["type"] == "missing":
            msg = f"missing required field {path[-1]!r}" if path else msg
            pos = loc.pos(path[:-1])
        else:
            value = e.get("input")
            if isinstance(value, str | int | float | bool) and e["type"] != "value_error":
                msg += f", got {value!r}"
            pos = loc.pos(path)
        out.append(Diagnostic(pos, msg, ".".join(map(str, path))))
    return sorted(out, key=lambda d: (d.pos.line, d.pos.col) if d.pos else (0, 0))
