"""A run's configuration, its option checks and its plan.

:class:`TrainConfig` is everything that defines a run, as the command line or the Python API gave
it (``None``: the recipe's, the data's or the device's value). :func:`check_config` checks the
options before anything slow happens; :func:`make_plan` resolves them against the recipe, the
network and the data into a :class:`RunPlan` (the schedule, the batch size, the cadence of
logging, evaluation and checkpoints), which ``config.json`` records. A resumed run is planned again
from its recorded recipe and the extensions (``--resume RUN --steps N``) recorded beside it, so an
edited recipe file or an upgraded library recipe never changes a run in flight.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from rescompile.errors import UserError

__all__ = [
    "Extension",
    "RunPlan",
    "TrainConfig",
    "check_config",
    "check_fit",
    "conforms",
    "make_plan",
    "recorded_recipe",
    "short",
    "weighted_layers",
]

PROGRESS_POINTS = 200  # training-curve points logged per run, by default
EVAL_POINTS = 50  # evaluations per run, by default
MIN_EVAL_EVERY = 10  # by default a short run evaluates and checkpoints every 10 steps, not each
PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainConfig:
    """Everything that defines a run. ``None`` fields take defaults from the recipe, the data or
    the device (and the resolved values are recorded in ``config.json``)."""

    spec: str
    backend: str = "torch"
    data: str = "digits"
    overrides: list[str] = field(default_factory=list)
    recipe: str | None = None  # a name or a YAML file; None: paper-cifar up to 64 px, else
    # paper-imagenet (rescompile.harness.recipes)
    steps: int | None = None
    epochs: float | None = None
    batch_size: int | None = None
    lr: float | None = None
    momentum: float | None = None  # these six replace the recipe's values
    nesterov: bool | None = None
    weight_decay: float | None = None
    norm_weight_decay: float | None = None
    label_smoothing: float | None = None
    clip_grad_norm: float | None = None
    sync_bn: bool | None = None  # None: synchronised BatchNorm when data-parallel
    seed: int = 0
    out: str | None = None
    eval_every: int | None = None
    ckpt_every: int | None = None
    log_every: int | None = None
    keep: int = 3
    precision: str | None = None
    compile: bool | None = None
    channels_last: bool | None = None
    device: str | None = None
    augment: bool | None = None  # None: the dataset's convention (CIFAR: pad-crop-flip)
    warmup: bool | None = None  # None: paper-cifar warms up nets of 110 layers or more
    quiet: bool = False
    tensorboard: bool = False  # also write TensorBoard event files (rescompile.harness.tensorboard)
    init_from: str | None = None  # start from these weights (rescompile.harness.init)
    # --resume RUN --steps N: {"from_step", "steps", "reschedule"} per extension, in order
    extensions: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def weighted_layers(graph: Any) -> int:
    """The paper's layer count: convolutions and fc layers, projection shortcuts not counted."""
    from rescompile.ir.graph import Op

    convs = [n for n in graph.nodes_of(Op.CONV2D) if ".downsample." not in n.name]
    return len(convs) + len(graph.nodes_of(Op.LINEAR))


def check_config(config: TrainConfig) -> None:
    """The checks a new run's options get before anything slow (data, compilation) happens.
    Those of numbers a resumed run's config.json holds too are in :func:`make_plan`."""
    if config.out == "":
        raise UserError("--out needs a directory name (omit it for runs/NAME-BACKEND)")
    if config.precision not in (None, *PRECISIONS):
        raise UserError(f"--precision is fp32 or bf16, not {config.precision!r}")
    if config.init_from is not None and not Path(config.init_from).exists():
        raise UserError(f"--init-from {config.init_from}: no such file or directory")
    if config.steps is not None and config.epochs is not None:
        raise UserError("give the run length as --steps or --epochs, not both")
    if config.recipe is not None:
        from rescompile.harness.schedules import get_recipe

        get_recipe(config.recipe)  # an unknown name lists the choices; a bad file its errors


def check_fit(graph: Any, dataset: Any, data_name: str) -> None:
    c, h, w = graph.input_shape
    dh, dw, dc = dataset.input_shape
    if (h, w, c) != (dh, dw, dc):
        size = f"{dh}" if dh == dw else f"[{dh}, {dw}]"
        hint = f"--set input.channels={dc} --set input.size={size}"
        if dataset.name == "digits":
            hint += " (or start from specs/variants/digits-resnet20.yaml)"
        raise UserError(
            f"{data_name} images are {dh}x{dw}x{dc} (HxWxC) but the spec {graph.name} takes "
            f"{h}x{w}x{c} inputs; adapt the spec with {hint}"
        )
    if graph.num_classes != dataset.num_classes:
        raise UserError(
            f"{data_name} has {dataset.num_classes} classes but the spec {graph.name} has "
            f"{graph.num_classes} outputs; use --set num_classes={dataset.num_classes}"
        )


@dataclass
class RunPlan:
    """A run's configuration resolved: the recipe (flags applied), the schedule (a
    :class:`~rescompile.harness.schedules.TrainPlan`), the global batch size and the cadence."""

    recipe: Any
    plan: Any
    warmup: bool | None
    batch_size: int
    eval_every: int
    ckpt_every: int
    log_every: int
    eval_batch: int
    depth: int
    augment: bool


def make_plan(
    config: TrainConfig, graph: Any, dataset: Any, world_size: int, recorded: Any = None
) -> RunPlan:
    """The run's plan; ``recorded`` is the recipe a resumed run recorded in its config.json (a
    recipe file edited since, or a library recipe changed by an upgrade, does not change it)."""
    from rescompile.harness.data import steps_per_epoch
    from rescompile.harness.schedules import PAPER_WARMUP_DEPTH, get_recipe, plan_training

    name = config.recipe or (
        "paper-cifar" if max(graph.input_shape[1:]) <= 64 else "paper-imagenet"
    )
    recipe = get_recipe(name) if recorded is None else recorded_recipe(recorded)
    recipe = with_flags(recipe, config)
    if config.batch_size is not None:
        if config.batch_size <= 0:
            raise UserError(f"--batch-size must be positive, got {config.batch_size}")
        recipe = replace(recipe, batch_size=config.batch_size)
    if config.lr is not None:
        if not (config.lr > 0 and math.isfinite(config.lr)):
            raise UserError(f"--lr must be a positive number, got {config.lr}")
        recipe = replace(recipe, lr=config.lr)
    bs = recipe.batch_size
    if bs % world_size:
        raise UserError(f"the batch size {bs} does not split evenly over {world_size} processes")
    n = dataset.n_train
    if bs > n:
        raise UserError(f"the batch size {bs} is larger than the training set ({n} images)")
    depth = weighted_layers(graph)
    warmup = config.warmup
    if warmup is None and recipe.warmup_deep:
        warmup = depth >= PAPER_WARMUP_DEPTH
    if config.steps is not None and config.steps <= 0:
        raise UserError(f"--steps must be positive, got {config.steps}")
    if config.epochs is not None and not (config.epochs > 0 and math.isfinite(config.epochs)):
        raise UserError(f"--epochs must be positive, got {config.epochs}")
    for what in ("eval_every", "ckpt_every", "log_every", "keep"):
        value = getattr(config, what)
        if value is not None and value <= 0:
            raise UserError(f"--{what.replace('_', '-')} must be positive, got {value}")
    # a source read front to back splits its shards over the processes: it knows its epoch
    spe = (
        dataset.steps_per_epoch(bs, world_size)
        if hasattr(dataset, "steps_per_epoch")
        else steps_per_epoch(n, bs)
    )
    if spe <= 0:
        raise UserError(
            f"over {world_size} processes, the smallest process's share of the shards holds "
            f"fewer than {bs // world_size} images (its share of a batch); use fewer processes, "
            "a smaller batch or smaller shards"
        )
    plan = plan_training(recipe, spe, steps=config.steps, epochs=config.epochs, warmup=warmup)
    total = plan.total_steps  # the cadence stays that of the run as first planned
    for ext in config.extensions:
        plan = replay_extension(plan, ext, warmup)
    eval_every = config.eval_every or max(MIN_EVAL_EVERY, total // EVAL_POINTS)
    ckpt_every = config.ckpt_every or eval_every
    log_every = config.log_every or max(1, min(eval_every, total // PROGRESS_POINTS))
    augment = dataset.augment != "none" if config.augment is None else config.augment
    return RunPlan(
        recipe,
        plan,
        warmup,
        bs,
        eval_every,
        ckpt_every,
        log_every,
        eval_batch=max(bs, 256),
        depth=depth,
        augment=augment,
    )


def recorded_recipe(data: dict[str, Any]) -> Any:
    """The recipe a run recorded in its config.json, checked like the rest of that file."""
    from rescompile.harness.schedules import Recipe

    hints = typing.get_type_hints(Recipe)
    for key, value in data.items():
        if key == "milestones":
            ok = isinstance(value, list) and all(conforms(m, int) for m in value)
        elif key in ("schedule", "unit"):
            ok = value in typing.get_args(hints[key])
        else:
            ok = key not in hints or conforms(value, hints[key])
        if not ok:
            raise UserError(f"config.json: plan.recipe.{key} is unreadable: {short(value)}")
    try:
        return Recipe.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise UserError(f"config.json: plan.recipe is unreadable: {short(str(exc))}") from None


FLAGS = {  # TrainConfig field -> (what it must be, its check)
    "momentum": ("in [0, 1)", lambda v: 0 <= v < 1),
    "weight_decay": ("at least 0", lambda v: v >= 0),
    "norm_weight_decay": ("at least 0", lambda v: v >= 0),
    "label_smoothing": ("in [0, 1)", lambda v: 0 <= v < 1),
    "clip_grad_norm": ("positive", lambda v: v > 0),
}


def with_flags(recipe: Any, config: TrainConfig) -> Any:
    """The recipe with the optimiser values given on the command line."""
    values: dict[str, Any] = {}
    for name, (what, ok) in FLAGS.items():
        value = getattr(config, name)
        if value is None:
            continue
        if not (math.isfinite(value) and ok(value)):
            raise UserError(f"--{name.replace('_', '-')} must be {what}, got {value}")
        values[name] = value
    if config.nesterov is not None:
        values["nesterov"] = config.nesterov
    recipe = replace(recipe, **values)
    if recipe.nesterov and recipe.momentum == 0:
        raise UserError("Nesterov momentum needs a momentum above 0 (--momentum)")
    return recipe


def replay_extension(plan: Any, ext: Any, warmup: bool | None) -> Any:
    """A run's plan with one of the extensions recorded in its config.json applied again."""
    from rescompile.harness.schedules import extend_plan

    if (
        not isinstance(ext, dict)
        or not all(conforms(ext.get(k), int) for k in ("from_step", "steps"))
        or not isinstance(ext.get("reschedule"), bool)
    ):
        raise UserError(f"config.extensions holds a malformed entry: {short(ext)}")
    return extend_plan(
        plan, ext["steps"], from_step=ext["from_step"], reschedule=ext["reschedule"], warmup=warmup
    )


@dataclass(frozen=True)
class Extension:
    """What ``--resume RUN`` was asked to change: the run's length and whether to re-plan."""

    steps: int | None = None
    epochs: float | None = None
    reschedule: bool = False

    def __bool__(self) -> bool:
        return self.steps is not None or self.epochs is not None or self.reschedule

    def check(self) -> None:
        if self.steps is not None and self.epochs is not None:
            raise UserError("give the new run length as --steps or --epochs, not both")
        if self.steps is not None and self.steps <= 0:
            raise UserError(f"--steps must be positive, got {self.steps}")
        if self.epochs is not None and not (self.epochs > 0 and math.isfinite(self.epochs)):
            raise UserError(f"--epochs must be positive, got {self.epochs}")

    def total_steps(self, current: int, steps_per_epoch: int) -> int:
        """The run's new length in steps (``current`` when only re-planning)."""
        if self.steps is not None:
            return self.steps
        if self.epochs is not None:
            return round(self.epochs * steps_per_epoch)
        return current


def conforms(value: Any, tp: Any) -> bool:
    """Whether JSON-loaded ``value`` has the (simple) type ``tp`` of a TrainConfig field."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(conforms(value, a) for a in args)
    if typing.get_origin(tp) is dict:
        return isinstance(value, dict)
    if typing.get_origin(tp) is list:
        return isinstance(value, list) and all(conforms(v, args[0]) for v in value)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def short(text: Any, limit: int = 80) -> str:
    text = text if isinstance(text, str) else repr(text)
    text = text.replace("\n", " ")
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
