"""Learning-rate schedules and named training recipes.

Conventions:

- A schedule is a pure function of the step: ``lr = schedule(step)``. Steps count optimizer
  updates from 0, and ``schedule(k)`` is the rate used by update ``k`` (the one that takes the
  model from step ``k`` to ``k + 1``). Nothing is stateful, so a resumed run only needs the step.
- A milestone ``m`` takes effect *at* ``m``: "divide by 10 at 32k iterations" means
  ``schedule(31_999) == 0.1`` and ``schedule(32_000) == 0.01``.
- A :class:`Recipe` states its length and milestones in its own unit (steps or epochs);
  :func:`plan_training` converts everything to steps for a given epoch length and, when the user
  asks for another length (``--steps N`` or ``--epochs N``), scales the milestones and the
  warm-up proportionally, so a shortened run keeps the shape of the original schedule.
"""

from __future__ import annotations

import bisect
import math
import typing
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from rescompile.errors import UserError

__all__ = [
    "PAPER_WARMUP_DEPTH",
    "Cosine",
    "Extended",
    "OneCycle",
    "Recipe",
    "RecipeError",
    "Schedule",
    "StepDecay",
    "TRAIN_AUGMENTATIONS",
    "TrainPlan",
    "cosine",
    "extend_plan",
    "get_recipe",
    "one_cycle",
    "plan_training",
    "rescale_milestones",
    "step_decay",
]

Schedule = Callable[[int], float]
ScheduleKind = Literal["step", "cosine", "one_cycle"]
Unit = Literal["steps", "epochs"]
Augmentation = Literal["random_resized_crop", "scale_jitter"]
TRAIN_AUGMENTATIONS: tuple[str, ...] = typing.get_args(Augmentation)
"""How a streamed image source (image folders, shards) crops its training images: torchvision's
and timm's RandomResizedCrop, or the scale augmentation of He et al. (2016, sec. 3.4)."""

PAPER_WARMUP_DEPTH = 110
"""He et al. (2016) warm up CIFAR nets this deep (110, 1202 layers); others start at 0.1."""


class RecipeError(UserError, ValueError):
    """A recipe name or length request that cannot be satisfied. The message is user-facing."""


# --------------------------------------------------------------------------------------------
# Schedules: frozen dataclasses, so they print, compare and serialize as what they are
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepDecay:
    """``base_lr * gamma ** (number of milestones <= step)``, after an optional warm-up.

    During the first ``warmup_steps`` steps the rate is ``warmup_lr`` if given (the paper's
    constant 0.01 for ResNet-110), otherwise a linear ramp up to ``base_lr``.
    """

    base_lr: float
    milestones: tuple[int, ...]
    gamma: float = 0.1
    warmup_steps: int = 0
    warmup_lr: float | None = None
    warmup_factor: float | None = None

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            if self.warmup_lr is not None:
                return self.warmup_lr
            return _linear_warmup(self.base_lr, step, self.warmup_steps, self.warmup_factor)
        return self.base_lr * self.gamma ** bisect.bisect_right(self.milestones, step)


@dataclass(frozen=True)
class Cosine:
    """Linear warm-up to ``base_lr``, then half a cosine down to ``final_lr`` at ``total_steps``."""

    base_lr: float
    total_steps: int
    warmup_steps: int = 0
    final_lr: float = 0.0
    warmup_factor: float | None = None

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return _linear_warmup(self.base_lr, step, self.warmup_steps, self.warmup_factor)
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min(max((step - self.warmup_steps) / span, 0.0), 1.0)
        return _cosine_between(self.base_lr, self.final_lr, progress)


@dataclass(frozen=True)
class OneCycle:
    """The one-cycle policy (Smith & Topin 2019), as ``torch.optim.lr_scheduler.OneCycleLR``
    computes it with cosine annealing and two phases.

    The rate rises from ``max_lr / div_factor`` to ``max_lr`` over the first ``pct_start`` of the
    run, then falls to ``max_lr / div_factor / final_div_factor`` at step ``total_steps - 1``.
    Momentum is not cycled.
    """

    max_lr: float
    total_steps: int
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4

    def __call__(self, step: int) -> float:
        initial = self.max_lr / self.div_factor
        final = initial / self.final_div_factor
        peak = self.pct_start * self.total_steps - 1
        last = self.total_steps - 1
        step = min(max(step, 0), last)
        if step <= peak:
            return _cosine_between(initial, self.max_lr, step / peak if peak > 0 else 1.0)
        return _cosine_between(self.max_lr, final, (step - peak) / (last - peak))


@dataclass(frozen=True)
class Extended:
    """A run's schedule after ``--resume RUN --steps N`` made it longer: each segment
    ``(first step, schedule)`` gives the rate from its first step on (see :func:`extend_plan`)."""

    segments: tuple[tuple[int, StepDecay | Cosine | OneCycle], ...]

    def __call__(self, step: int) -> float:
        for start, schedule in reversed(self.segments):
            if step >= start:
                return schedule(step)
        return self.segments[0][1](step)

    @property
    def last(self) -> StepDecay | Cosine | OneCycle:
        return self.segments[-1][1]


def _linear_warmup(
    base_lr: float, step: int, warmup_steps: int, factor: float | None = None
) -> float:
    """``factor`` None: ``base_lr * (step + 1) / warmup_steps`` (reaches ``base_lr`` on the last
    warm-up step); a number: torchvision's ``LinearLR(start_factor=factor)``, per step:
    ``base_lr * (factor + (1 - factor) * step / warmup_steps)``."""
    if factor is None:
        return base_lr * (step + 1) / warmup_steps
    return base_lr * (factor + (1.0 - factor) * step / warmup_steps)


def _cosine_between(start: float, end: float, progress: float) -> float:
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def step_decay(
    base_lr: float,
    milestones: Sequence[int],
    gamma: float = 0.1,
    warmup_steps: int = 0,
    warmup_lr: float | None = None,
    warmup_factor: float | None = None,
) -> StepDecay:
    """Piecewise-constant decay; see :class:`StepDecay`."""
    ordered = tuple(sorted(int(m) for m in milestones))
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    return StepDecay(base_lr, ordered, gamma, warmup_steps, warmup_lr, warmup_factor)


def cosine(
    base_lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    final_lr: float = 0.0,
    warmup_factor: float | None = None,
) -> Cosine:
    """Cosine decay with linear warm-up; see :class:`Cosine`."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    return Cosine(base_lr, total_steps, warmup_steps, final_lr, warmup_factor)


def one_cycle(
    max_lr: float,
    total_steps: int,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> OneCycle:
    """One-cycle policy; see :class:`OneCycle`."""
    if total_steps < 2:
        raise ValueError(f"one_cycle needs at least 2 steps, got {total_steps}")
    if not 0.0 < pct_start < 1.0:
        raise ValueError(f"pct_start must be in (0, 1), got {pct_start}")
    return OneCycle(max_lr, total_steps, pct_start, div_factor, final_div_factor)


# --------------------------------------------------------------------------------------------
# Recipes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """A named set of optimization hyper-parameters. The optimizer is SGD with momentum.

    ``length``, ``milestones`` and ``warmup`` are in ``unit`` (steps or epochs).
    ``warmup_by_default`` says whether the warm-up applies when the caller does not decide;
    ``warmup_deep`` makes that the paper's rule (nets of :data:`PAPER_WARMUP_DEPTH` layers or
    more warm up). Recipes are written as YAML files (:mod:`rescompile.harness.recipes`).

    ``augmentation`` is how training images of a streamed source (image folders, shards) are
    cropped, one of :data:`TRAIN_AUGMENTATIONS` (in-memory data keeps its own augmentation:
    CIFAR's pad-crop-flip).

    ``norm_weight_decay`` (normalisation layers' scale and shift) and ``bias_weight_decay``
    (every parameter called ``bias``, normalisation shifts included, taking precedence) replace
    ``weight_decay`` for those parameters when set, as torchvision's ``--norm-weight-decay`` and
    ``--bias-weight-decay``. ``clip_grad_norm`` rescales the gradients (before weight decay)
    whose global L2 norm exceeds it, as ``torch.nn.utils.clip_grad_norm_``.
    """

    name: str
    description: str
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    schedule: ScheduleKind
    length: int
    unit: Unit
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup: int = 0
    warmup_lr: float | None = None
    warmup_by_default: bool = True
    nesterov: bool = False
    label_smoothing: float = 0.0
    warmup_deep: bool = False
    warmup_factor: float | None = None
    final_lr: float = 0.0
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    norm_weight_decay: float | None = None
    bias_weight_decay: float | None = None
    clip_grad_norm: float | None = None
    ema_decay: float | None = None  # an average of the weights (rescompile.harness.ema)
    ema_every: int = 1
    augmentation: str = "random_resized_crop"  # one of TRAIN_AUGMENTATIONS

    def __post_init__(self) -> None:
        if self.augmentation not in TRAIN_AUGMENTATIONS:
            raise ValueError(
                f"augmentation is one of {', '.join(TRAIN_AUGMENTATIONS)}, "
                f"not {self.augmentation!r}"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """The inverse of ``dataclasses.asdict`` (a recipe recorded in a run's config.json)."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["milestones"] = tuple(values.get("milestones", ()))
        return cls(**values)


def __getattr__(name: str) -> Any:
    """``RECIPES``: the library's recipes by name (read from their YAML files on first use)."""
    if name == "RECIPES":
        from rescompile.harness.recipes import library_names, load_recipe

        return {n: load_recipe(n) for n in library_names()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name`` (a library recipe) or in the YAML file ``name``; a
    :class:`RecipeError` lists the choices otherwise (see :mod:`rescompile.harness.recipes`)."""
    from rescompile.harness.recipes import load_recipe

    return load_recipe(name)


@dataclass(frozen=True)
class TrainPlan:
    """A recipe resolved to steps for one dataset: everything the training loop needs."""

    recipe: Recipe
    steps_per_epoch: int
    total_steps: int
    milestones: tuple[int, ...]
    warmup_steps: int
    lr: StepDecay | Cosine | OneCycle | Extended = field(repr=False)

    @property
    def epochs(self) -> float:
        """The run's length in epochs (possibly fractional)."""
        return self.total_steps / self.steps_per_epoch

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary, e.g. for a checkpoint sidecar or a run header."""
        return {
            "recipe": asdict(self.recipe),
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "milestones": list(self.milestones),
            "warmup_steps": self.warmup_steps,
            "schedule": {"kind": type(self.lr).__name__, **asdict(self.lr)},
        }


def rescale_milestones(
    milestones: Sequence[int], old_total: int, new_total: int
) -> tuple[int, ...]:
    """Scale step milestones from a run of ``old_total`` steps to one of ``new_total`` steps.

    Each milestone keeps its fraction of the run, rounded to the nearest step:
    ``(32000, 48000)`` of 64000 becomes ``(500, 750)`` of 1000.
    """
    if old_total <= 0 or new_total <= 0:
        raise ValueError(f"run lengths must be positive, got {old_total} and {new_total}")
    return tuple(round(m * new_total / old_total) for m in milestones)


def plan_training(
    recipe: Recipe,
    steps_per_epoch: int,
    *,
    steps: int | None = None,
    epochs: float | None = None,
    warmup: bool | None = None,
) -> TrainPlan:
    """Resolve ``recipe`` to steps and build its learning-rate schedule.

    Args:
        recipe: the recipe.
        steps_per_epoch: batches per epoch of the training set (see ``data.steps_per_epoch``).
        steps, epochs: an optional run length chosen by the user (at most one of the two);
            milestones and warm-up are scaled proportionally to it.
        warmup: whether to warm up; ``None`` uses ``recipe.warmup_by_default``. For
            ``paper-cifar`` pass ``depth >= PAPER_WARMUP_DEPTH``.
    """
    if steps_per_epoch <= 0:
        raise RecipeError(
            f"the training set yields no batch of {recipe.batch_size}; use a smaller batch size"
        )
    if steps is not None and epochs is not None:
        raise RecipeError("give the run length as steps or as epochs, not both")
    per_unit = 1 if recipe.unit == "steps" else steps_per_epoch
    native_total = recipe.length * per_unit
    if steps is not None:
        total = int(steps)
    elif epochs is not None:
        total = round(epochs * steps_per_epoch)
    else:
        total = native_total
    if total <= 0:
        raise RecipeError(f"a run needs at least one step, got {total}")

    milestones = rescale_milestones([m * per_unit for m in recipe.milestones], native_total, total)
    use_warmup = recipe.warmup_by_default if warmup is None else warmup
    warmup_steps = 0
    if use_warmup and recipe.warmup > 0:
        warmup_steps = max(1, round(recipe.warmup * per_unit * total / native_total))

    schedule: StepDecay | Cosine | OneCycle
    if recipe.schedule == "step":
        schedule = step_decay(
            recipe.lr,
            milestones,
            recipe.gamma,
            warmup_steps,
            recipe.warmup_lr,
            recipe.warmup_factor,
        )
    elif recipe.schedule == "cosine":
        schedule = cosine(recipe.lr, total, warmup_steps, recipe.final_lr, recipe.warmup_factor)
    else:
        schedule = one_cycle(
            recipe.lr,
            max(total, 2),
            recipe.pct_start,
            recipe.div_factor,
            recipe.final_div_factor,
        )
    return TrainPlan(recipe, steps_per_epoch, total, milestones, warmup_steps, schedule)


def extend_plan(
    plan: TrainPlan, total: int, *, from_step: int, reschedule: bool, warmup: bool | None = None
) -> TrainPlan:
    """``plan`` made ``total`` steps long, for a run resumed at ``from_step`` with ``--steps``.

    What torchvision and timm users expect of "train this run for longer":

    - step decay keeps its milestones where they were (in steps), as ``MultiStepLR`` restored
      from a checkpoint does: the steps already planned keep their rates and the added ones run
      at the last rate. The extended run is the run it was, continued.
    - cosine and one-cycle have annealed to (nearly) zero at the old end, so continuing them
      trains at that rate: refused unless ``reschedule``.
    - ``reschedule`` plans the recipe afresh over ``total`` steps (milestones and warm-up scaled
      as for a new run of that length, as timm does when a run resumes with more epochs) and
      applies it from ``from_step``: the steps already taken keep the rates they had, so the
      rate may jump there.

    Raises:
        RecipeError: ``total`` shorter than the plan, or a cosine/one-cycle without reschedule.
    """
    if total < plan.total_steps:
        raise RecipeError(
            f"--steps {total} is shorter than the run's {plan.total_steps} steps; a run can be "
            "extended, not shortened"
        )
    if total == plan.total_steps and not reschedule:
        return plan
    base = plan.lr.last if isinstance(plan.lr, Extended) else plan.lr
    segments = plan.lr.segments if isinstance(plan.lr, Extended) else ((0, plan.lr),)
    if reschedule:
        fresh = plan_training(plan.recipe, plan.steps_per_epoch, steps=total, warmup=warmup)
        return replace(
            fresh,
            lr=Extended((*segments, (from_step, fresh.lr))),
        )
    if not isinstance(base, StepDecay):
        kind = "cosine" if isinstance(base, Cosine) else "one-cycle"
        raise RecipeError(
            f"the run's {kind} schedule has annealed to its final rate at step "
            f"{plan.total_steps}; to train for {total} steps add --reschedule (the {kind} is "
            f"planned afresh over {total} steps and applies from step {from_step}), or start a "
            "new run with --init-from"
        )
    return replace(plan, total_steps=total)
