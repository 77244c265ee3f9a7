"""The training driver: one loop for every backend.

:func:`train` turns a :class:`TrainConfig` into a run directory::

    runs/NAME/
      config.json        the full configuration, the resolved plan, the device and versions
      spec.json          the resolved spec (a resumed run is rebuilt from it, not from the YAML)
      model.py           the emitted source the run trained
      metrics.jsonl      one record per logged step and per evaluation (rescompile.harness.metrics)
      ckpt-NNNNNN.*      portable checkpoints (rescompile.harness.checkpoint), the last `keep`
      latest             the name of the newest committed checkpoint
      summary.json       final and best errors, images/s, times, steps, device
      curves.png         training (dashed) and test (solid) error, in the style of Figure 6

The driver owns the data, the batch order and augmentation draws (pure functions of
``(seed, epoch, batch index)``), the learning-rate schedule (a pure function of the step), the
cadence of logging, evaluation and checkpoints, progress display and the summary. The backend
only supplies a :class:`~rescompile.harness.runtime.Runtime`. Because nothing the loop does depends
on anything but the step and the checkpointed tensors, a run killed at any moment and resumed from
its last checkpoint (``resume=RUN_DIR``) continues exactly where that checkpoint left it; on a CPU
it ends with bitwise the same weights as a run that was never interrupted.

Per-step losses stay on the device until the next logging point, where they are fetched together
and checked: a non-finite loss stops the run (:class:`TrainingDiverged`) before anything computed
from it is checkpointed, so the last checkpoint on disk is always a good one.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import sys
import time
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from rescompile.backends import load_backend
from rescompile.errors import UserError
from rescompile.harness import distributed
from rescompile.harness.interrupt import DeferredInterrupt
from rescompile.harness.runtime import Runtime, RuntimeOptions
from rescompile.ir.features import require_backend_support

__all__ = [
    "CONFIG_FILE",
    "SPEC_FILE",
    "SUMMARY_FILE",
    "TrainConfig",
    "TrainingDiverged",
    "evaluate_checkpoint",
    "plot_runs",
    "run_from_cli",
    "train",
    "weighted_layers",
]

CONFIG_FILE = "config.json"
SPEC_FILE = "spec.json"
SUMMARY_FILE = "summary.json"
MODEL_FILE = "model.py"
CURVES_FILE = "curves.png"
PROGRESS_POINTS = 200  # training-curve points logged per run, by default
EVAL_POINTS = 50  # evaluations per run, by default
MIN_EVAL_EVERY = 10  # by default a short run evaluates and checkpoints every 10 steps, not each


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


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


# --------------------------------------------------------------------------------------------
# Set-up
# --------------------------------------------------------------------------------------------


def _check_fit(graph: Any, dataset: Any, data_name: str) -> None:
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


def _auto_run_dir(name: str, backend: str) -> Path:
    base = Path("runs") / f"{name}-{backend}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


@dataclass
class _Plan:
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


def _make_plan(
    config: TrainConfig, graph: Any, dataset: Any, world_size: int, recorded: Any = None
) -> _Plan:
    """The run's plan; ``recorded`` is the recipe a resumed run recorded in its config.json (a
    recipe file edited since, or a library recipe changed by an upgrade, does not change it)."""
    from rescompile.harness.data import steps_per_epoch
    from rescompile.harness.schedules import PAPER_WARMUP_DEPTH, get_recipe, plan_training

    name = config.recipe or (
        "paper-cifar" if max(graph.input_shape[1:]) <= 64 else "paper-imagenet"
    )
    recipe = get_recipe(name) if recorded is None else _recorded_recipe(recorded)
    recipe = _with_flags(recipe, config)
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
    if config.epochs is not None and config.epochs <= 0:
        raise UserError(f"--epochs must be positive, got {config.epochs}")
    plan = plan_training(
        recipe, steps_per_epoch(n, bs), steps=config.steps, epochs=config.epochs, warmup=warmup
    )
    total = plan.total_steps  # the cadence stays that of the run as first planned
    for ext in config.extensions:
        plan = _replay_extension(plan, ext, warmup)
    for what in ("eval_every", "ckpt_every", "log_every"):
        value = getattr(config, what)
        if value is not None and value <= 0:
            raise UserError(f"--{what.replace('_', '-')} must be positive, got {value}")
    eval_every = config.eval_every or max(MIN_EVAL_EVERY, total // EVAL_POINTS)
    ckpt_every = config.ckpt_every or eval_every
    log_every = config.log_every or max(1, min(eval_every, total // PROGRESS_POINTS))
    augment = dataset.augment != "none" if config.augment is None else config.augment
    return _Plan(
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


def _recorded_recipe(data: dict[str, Any]) -> Any:
    """The recipe a run recorded in its config.json, checked like the rest of that file."""
    from rescompile.harness.schedules import Recipe

    hints = typing.get_type_hints(Recipe)
    for key, value in data.items():
        if key == "milestones":
            ok = isinstance(value, list) and all(_conforms(m, int) for m in value)
        elif key in ("schedule", "unit"):
            ok = value in typing.get_args(hints[key])
        else:
            ok = key not in hints or _conforms(value, hints[key])
        if not ok:
            raise UserError(f"config.json: plan.recipe.{key} is unreadable: {_short(value)}")
    try:
        return Recipe.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise UserError(f"config.json: plan.recipe is unreadable: {_short(str(exc))}") from None


_FLAGS = {  # TrainConfig field -> (what it must be, its check)
    "momentum": ("in [0, 1)", lambda v: 0 <= v < 1),
    "weight_decay": ("at least 0", lambda v: v >= 0),
    "norm_weight_decay": ("at least 0", lambda v: v >= 0),
    "label_smoothing": ("in [0, 1)", lambda v: 0 <= v < 1),
    "clip_grad_norm": ("positive", lambda v: v > 0),
}


def _with_flags(recipe: Any, config: TrainConfig) -> Any:
    """The recipe with the optimiser values given on the command line."""
    values: dict[str, Any] = {}
    for name, (what, ok) in _FLAGS.items():
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


def _replay_extension(plan: Any, ext: Any, warmup: bool | None) -> Any:
    """A run's plan with one of the extensions recorded in its config.json applied again."""
    from rescompile.harness.schedules import extend_plan

    if (
        not isinstance(ext, dict)
        or not all(_conforms(ext.get(k), int) for k in ("from_step", "steps"))
        or not isinstance(ext.get("reschedule"), bool)
    ):
        raise UserError(f"config.extensions holds a malformed entry: {_short(ext)}")
    return extend_plan(
        plan, ext["steps"], from_step=ext["from_step"], reschedule=ext["reschedule"], warmup=warmup
    )


def _write_json(path: Path, data: Any) -> None:
    from rescompile.files import write_file
    from rescompile.harness.metrics import dumps

    write_file(path, dumps(data, indent=2) + "\n")  # strict JSON: a NaN is the string "NaN"


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------


class _Reporter:
    """A rich progress bar on a terminal; a line per evaluation otherwise; silence with quiet."""

    def __init__(self, total: int, start: int, quiet: bool, enabled: bool) -> None:
        self.quiet = quiet or not enabled
        self.bar = None
        if self.quiet:
            return
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self.task = self.bar.add_task("train", total=total, completed=start, info="")
            self.bar.start()

    def say(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.console.print(text, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def advance(self, step: int, info: str | None = None) -> None:
        if self.bar is not None:
            fields = {} if info is None else {"info": info}
            self.bar.update(self.task, completed=step, **fields)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


@dataclass
class _Clock:
    """Training time (excluding evaluation and checkpoints) and the first step of a session
    (which includes compilation) kept apart, accumulated over resumed sessions."""

    train_s: float = 0.0  # steady-state training time
    timed_images: int = 0  # images trained in train_s
    first_step_s: float | None = None  # the first session's first step (compilation)
    wall_s: float = 0.0

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _Clock:
        return cls(
            state.get("train_s", 0.0),
            state.get("timed_images", 0),
            state.get("first_step_s"),
            state.get("wall_s", 0.0),
        )


def train(
    config: TrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    quiet: bool | None = None,
    on_step: Callable[[int], None] | None = None,
    steps: int | None = None,
    epochs: float | None = None,
    reschedule: bool = False,
) -> dict[str, Any]:
    """Run (or resume) a training run and return its summary (empty on ranks other than 0).

    Args:
        config: a new run's configuration; ``None`` with ``resume``.
        resume: a run directory: continue from its latest checkpoint with its saved
            configuration and its saved resolved spec.
        quiet: overrides ``config.quiet`` (for a resumed run).
        steps, epochs: with ``resume``, a new length for the run (at least its current one);
            see :func:`rescompile.harness.schedules.extend_plan` for what happens to the
            schedule, and ``reschedule`` to plan it afresh over the new length.
        on_step: called with the step count after every step (tests, notebooks).

    Raises:
        UserError: bad data, a spec that does not fit the data, a bad run directory, ...
        TrainingDiverged: the loss became non-finite (a :class:`UserError`).
    """
    from rescompile.compiler import compile_spec

    session_start = time.perf_counter()
    rank0 = distributed.current().rank == 0  # torchrun, jax.distributed: rank 0 writes the run
    if resume is not None:
        run_dir = Path(resume)
        if not run_dir.is_dir():
            raise UserError(f"{run_dir} is not a run directory")
        with _lock(run_dir, rank0):
            config, saved, resolved, graph = _read_run(run_dir)
            extend = _Extension(steps, epochs, reschedule)
            return _train(
                config, saved, resolved, graph, run_dir, quiet, on_step, session_start, extend
            )
    if steps is not None or epochs is not None or reschedule:
        raise ValueError("steps, epochs and reschedule extend a resumed run; set them in config")
    if config is None:
        raise ValueError("give a config or a run directory to resume")
    resolved, graph = compile_spec(config.spec, config.overrides)
    if not rank0:  # rank 0 writes config.json only once every rank has joined: no race here
        run_dir = Path(config.out) if config.out else _auto_run_dir(graph.name, config.backend)
        _refuse_an_existing_run(run_dir)
        return _train(config, None, resolved, graph, run_dir, quiet, on_step, session_start)
    run_dir, created = _claim_run_dir(config.out, graph.name, config.backend)
    try:
        with _lock(run_dir, rank0):
            _refuse_an_existing_run(run_dir)
            return _train(config, None, resolved, graph, run_dir, quiet, on_step, session_start)
    except BaseException:
        if created:  # a run that failed before it began leaves no empty directory behind
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        raise


MAX_CONFIG_BYTES = 16 << 20  # a run's config.json is a few kB


def _refuse_an_existing_run(run_dir: Path) -> None:
    if (run_dir / CONFIG_FILE).exists():
        raise UserError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir} "
            "or choose another --out"
        )


def _lock(run_dir: Path, rank0: bool) -> Any:
    """Hold the run directory for this process's life: a second train or --resume is refused."""
    from rescompile.files import DirectoryLock

    if not rank0:
        return contextlib.nullcontext()
    return DirectoryLock(
        run_dir,
        f"{run_dir} is in use by another rescompile process (a train or --resume is running "
        "there); wait for it to end, or choose another --out",
    )


def _claim_run_dir(out: str | None, name: str, backend: str) -> tuple[Path, bool]:
    """The new run's directory, created if needed; and whether this call created it."""
    if not out:
        while True:  # a fresh runs/NAME-BACKEND[-k]: mkdir claims it atomically
            run_dir = _auto_run_dir(name, backend)
            try:
                run_dir.mkdir(parents=True)
                return run_dir, True
            except FileExistsError:
                continue
            except OSError as e:
                raise UserError(
                    f"cannot create the run directory {run_dir}: {e.strerror}"
                ) from None
    run_dir = Path(out)
    try:
        run_dir.mkdir(parents=True)
        return run_dir, True
    except FileExistsError:
        if not run_dir.is_dir():
            raise UserError(f"--out {out}: exists and is not a directory") from None
        return run_dir, False
    except OSError as e:  # a parent that is a file, no permission, ...
        raise UserError(f"cannot create the run directory {out}: {e.strerror}") from None


def _conforms(value: Any, tp: Any) -> bool:
    """Whether JSON-loaded ``value`` has the (simple) type ``tp`` of a TrainConfig field."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if typing.get_origin(tp) is dict:
        return isinstance(value, dict)
    if typing.get_origin(tp) is list:
        return isinstance(value, list) and all(_conforms(v, args[0]) for v in value)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _read_run(run_dir: Path) -> tuple[TrainConfig, dict[str, Any], Any, Any]:
    """A run directory's saved configuration and resolved spec, checked like user input."""
    from rescompile.compiler import compile_spec

    config_file = run_dir / CONFIG_FILE
    if not config_file.is_file():
        raise UserError(f"{run_dir} is not a run directory (it has no {CONFIG_FILE})")
    try:
        if config_file.stat().st_size > MAX_CONFIG_BYTES:
            raise ValueError(f"larger than {MAX_CONFIG_BYTES} bytes")
        saved = json.loads(config_file.read_text(encoding="utf-8"))
        if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
            raise ValueError("no 'config' mapping")
        hints = typing.get_type_hints(TrainConfig)
        for key, value in saved["config"].items():
            if key in hints and not _conforms(value, hints[key]):
                raise ValueError(f"config.{key} is not {hints[key]}: {_short(value)}")
        config = TrainConfig.from_dict(saved["config"])
    except RecursionError:
        raise UserError(f"{config_file} is unreadable: nested too deeply") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{config_file} is unreadable: {_short(str(exc))}") from None
    resolved, graph = compile_spec(run_dir / SPEC_FILE)
    if resolved.hash != saved.get("spec_hash"):
        raise UserError(
            f"{run_dir / SPEC_FILE} hashes to {resolved.hash}, but the run was started "
            f"with spec hash {_short(str(saved.get('spec_hash')))}"
        )
    return config, saved, resolved, graph


def _short(text: Any, limit: int = 80) -> str:
    text = text if isinstance(text, str) else repr(text)
    text = text.replace("\n", " ")
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


@dataclass(frozen=True)
class _Extension:
    """What ``--resume RUN`` was asked to change: the run's length and whether to re-plan."""

    steps: int | None = None
    epochs: float | None = None
    reschedule: bool = False

    def __bool__(self) -> bool:
        return self.steps is not None or self.epochs is not None or self.reschedule


def _train(
    config: TrainConfig,
    saved: dict[str, Any] | None,
    resolved: Any,
    graph: Any,
    run_dir: Path,
    quiet: bool | None,
    on_step: Callable[[int], None] | None,
    session_start: float,
    extend: _Extension | None = None,
) -> dict[str, Any]:
    from rescompile.harness.data import load_dataset
    from rescompile.harness.runtime import load_training_module

    if quiet is not None:
        config.quiet = quiet

    dataset = load_dataset(config.data, image_size=graph.input_shape[1:])
    _check_fit(graph, dataset, config.data)
    training = load_training_module(config.backend)  # before anything slow: clear import errors
    if config.tensorboard:
        from rescompile.harness.tensorboard import require_tensorboard

        require_tensorboard()
    distributed.check_backend(config.backend)  # torchrun for torch, jax.distributed for flax
    world = distributed.current().world_size
    recorded = (saved or {}).get("plan", {}).get("recipe") if saved else None
    p = _make_plan(config, graph, dataset, world, recorded if isinstance(recorded, dict) else None)
    backend = load_backend(config.backend)
    require_backend_support(graph, backend, config.backend)
    source = backend.emit(graph)
    options = RuntimeOptions(
        seed=config.seed,
        momentum=p.recipe.momentum,
        weight_decay=p.recipe.weight_decay,
        nesterov=p.recipe.nesterov,
        label_smoothing=p.recipe.label_smoothing,
        norm_weight_decay=p.recipe.norm_weight_decay,
        bias_weight_decay=p.recipe.bias_weight_decay,
        clip_grad_norm=p.recipe.clip_grad_norm,
        sync_bn=config.sync_bn,
        precision=config.precision,  # type: ignore[arg-type]
        compile=config.compile,
        channels_last=config.channels_last,
        device=config.device,
    )
    rt: Runtime = training.make_runtime(graph, source, options)
    try:
        session = _Session(config, resolved, graph, dataset, p, rt, run_dir, source, on_step)
        summary = session.run(saved, session_start, extend)
    except BaseException:
        rt.close(aborted=True)
        raise
    rt.close()
    return summary


class _Session:
    """One process's part of a run, from its start (or resumption) to its end."""

    def __init__(
        self,
        config,
        resolved,
        graph,
        dataset,
        p: _Plan,
        rt: Runtime,
        run_dir: Path,
        source: str,
        on_step,
    ) -> None:
        self.config, self.resolved, self.graph, self.dataset = config, resolved, graph, dataset
        self.p, self.rt, self.run_dir, self.source, self.on_step = p, rt, run_dir, source, on_step
        self.plan = p.plan
        self.total = p.plan.total_steps
        self.spe = p.plan.steps_per_epoch
        self.bs = p.batch_size
        self.rank0 = rt.rank == 0
        self.spec_json = resolved.spec.model_dump(mode="json")
        self.clock = _Clock()
        self.logger: Any = None
        self.reporter: _Reporter | None = None
        # step results not yet fetched from the device, and fetched ones not yet logged
        self.pending: list[Any] = []
        self.pending_from = 0
        self.window_loss: list[float] = []
        self.window_correct: list[int] = []
        self.window_timed = 0  # steps of the window that count towards images/s
        self.last_train_error = float("nan")
        self.last_ips = 0.0
        self.init_note: str | None = None
        self.loop_start, self.loop_start_step = 0.0, 0
        self.timer = 0.0
        self.step = 0
        self.last_ckpt = -1
        self.ema = None
        if p.recipe.ema_decay is not None:
            from rescompile.harness.ema import WeightAverage

            self.ema = WeightAverage(p.recipe.ema_decay, p.recipe.ema_every)
        self.guard = DeferredInterrupt(
            "interrupt: finishing this step, then saving a checkpoint "
            "(Ctrl-C again stops at once and keeps the last checkpoint)"
            if self.rank0 and not config.quiet
            else None
        )

    # -- the phases ----------------------------------------------------------------------------

    def run(
        self, saved: dict[str, Any] | None, session_start: float, extend: _Extension | None = None
    ) -> dict[str, Any]:
        self.session_start = session_start
        self.rt.set_data(self.dataset.train_data(augment=self.p.augment))
        resumed_from = self._restore() if saved is not None else None
        self.extend_note: str | None = None
        if extend:
            self._extend(extend, saved)
        if self.config.init_from and self.step == 0:  # a new run (or one with no checkpoint)
            self.init_note = self._init_from(self.config.init_from)
        self.reporter = _Reporter(self.total, self.step, self.config.quiet, enabled=self.rank0)
        if self.rank0:
            self._open_run_dir(new=saved is None)
            self.reporter.say(self._header(saved is not None, resumed_from))
        try:
            with self.guard:
                self._loop()
            train_loss, train_correct, train_count = self.rt.evaluate("train", self.p.eval_batch)
        except KeyboardInterrupt:
            self._save_on_interrupt()
            self._close_log()
            raise
        except BaseException:
            self._close_log()
            raise
        finally:
            self.reporter.close()
            self.dataset.close()  # a streamed source's worker processes
        if not self.rank0:
            return {}
        return self._finish(train_loss / train_count, 1.0 - train_correct / train_count)

    def _close_log(self) -> None:
        if self.logger is not None:
            self.logger.close()

    def _restore(self) -> Path | None:
        """Load the newest checkpoint that is intact. A damaged one is skipped with a warning
        naming it and why; when every checkpoint is damaged the run is refused rather than
        started over (which would overwrite its history)."""
        from rescompile.harness.checkpoint import (
            CheckpointError,
            committed_checkpoints,
            load_checkpoint,
        )

        skipped: list[str] = []
        for ckpt in committed_checkpoints(self.run_dir):
            try:
                tensors, meta = load_checkpoint(ckpt)
                state = _checked_state(meta.get("state"), self.total)
            except CheckpointError as exc:
                skipped.append(f"{ckpt.stem} ({exc})")
                continue
            if meta.get("spec_hash") != self.resolved.hash:
                raise CheckpointError(
                    f"{ckpt} was written for spec hash {meta.get('spec_hash')}, "
                    f"but this run's spec hashes to {self.resolved.hash}"
                )
            break
        else:
            if skipped:
                raise UserError(
                    f"no usable checkpoint in {self.run_dir}: skipped {'; '.join(skipped)}. "
                    "Refusing to start the run over, which would overwrite its history: move "
                    "the damaged checkpoints away to do that, or start a new run with --out"
                )
            return None
        if self.rank0:
            for what in skipped:
                print(f"warning: skipped the damaged checkpoint {what}", file=sys.stderr)
        self.rt.load_state_dict(tensors)
        if self.ema is not None:
            self.ema.restore(tensors)
        self.step = self.last_ckpt = state["step"]
        self.clock = _Clock.from_state(state)
        return ckpt

    def _extend(self, extend: _Extension, saved: dict[str, Any] | None) -> None:
        """Make the resumed run longer (or re-plan it) from the restored step, and record that
        in config.json so that a later --resume replays it."""
        from rescompile.harness.schedules import extend_plan

        if extend.steps is not None and extend.epochs is not None:
            raise UserError("give the new run length as --steps or --epochs, not both")
        if extend.steps is not None and extend.steps <= 0:
            raise UserError(f"--steps must be positive, got {extend.steps}")
        if extend.epochs is not None and not (extend.epochs > 0 and math.isfinite(extend.epochs)):
            raise UserError(f"--epochs must be positive, got {extend.epochs}")
        old = self.total
        if extend.steps is not None:
            total = extend.steps
        elif extend.epochs is not None:
            total = round(extend.epochs * self.spe)
        else:
            total = old
        plan = extend_plan(
            self.plan,
            total,
            from_step=self.step,
            reschedule=extend.reschedule,
            warmup=self.p.warmup,
        )
        if plan is self.plan:
            return
        entry = {"from_step": self.step, "steps": total, "reschedule": extend.reschedule}
        self.config.extensions = [*self.config.extensions, entry]
        self.p = replace(self.p, plan=plan)
        self.plan, self.total = plan, plan.total_steps
        how = (
            f"the {self.p.recipe.schedule} schedule planned afresh over {total} steps from "
            f"step {self.step}"
            if extend.reschedule
            else f"the schedule continued past step {old} at its final rate"
        )
        self.extend_note = f"extended from {old} to {total} steps: {how}"
        if self.rank0 and saved is not None:
            record = dict(saved)
            record["config"] = self.config.to_dict()
            record["plan"] = plan.to_dict()
            _write_json(self.run_dir / CONFIG_FILE, record)

    def _init_from(self, path: str) -> str:
        """Load the starting weights of a fine-tuning run; the note says what was loaded."""
        from rescompile.harness.checkpoint import split_optimizer
        from rescompile.harness.init import classifier_keys, fit_weights, read_weights

        own = split_optimizer(self.rt.state_dict())[0]
        fitted, fresh = fit_weights(read_weights(path), own, classifier_keys(self.graph))
        self.rt.load_state_dict(fitted)
        note = f"initialised from {path}"
        if fresh:
            note += (
                f"; the classifier ({', '.join(fresh)}) re-initialised for "
                f"{self.graph.num_classes} classes: the file's has another shape (fine-tuning)"
            )
        return note

    def _open_run_dir(self, new: bool) -> None:
        from rescompile.files import write_file
        from rescompile.harness.metrics import MetricsLogger

        self.run_dir.mkdir(parents=True, exist_ok=True)
        if new:
            _write_json(self.run_dir / SPEC_FILE, self.spec_json)
            write_file(self.run_dir / MODEL_FILE, self.source)
            for name, text in self.dataset.run_files().items():  # e.g. the class list
                write_file(self.run_dir / name, text)
            record = _config_record(
                self.config, self.resolved, self.graph, self.dataset, self.p, self.rt
            )
            if self.init_note:
                record["init_note"] = self.init_note
            _write_json(self.run_dir / CONFIG_FILE, record)
        # a resumed run drops the records written after its checkpoint by the killed process
        self.logger = MetricsLogger(self.run_dir, resume_step=None if new else self.step)
        if self.config.tensorboard:
            from rescompile.harness.tensorboard import Tee, TensorBoardWriter

            writer = TensorBoardWriter(self.run_dir, resume_step=None if new else self.step)
            self.logger = Tee(self.logger, writer)

    def _header(self, resuming: bool, resumed_from: Path | None) -> str:
        g, p, plan, rt = self.graph, self.p, self.plan, self.rt
        warm = f", warm-up {plan.warmup_steps} steps" if plan.warmup_steps else ""
        if resumed_from is not None:
            where = f"; resumed from {resumed_from.name} (step {self.step})"
        else:
            where = "; no checkpoint yet, starting from step 0" if resuming else ""
        return (
            f"{g.name} ({g.totals.get('params', 0):,} parameters, {p.depth} layers) on "
            f"{self.dataset.summary()}\n"
            f"{self.config.backend} on {rt.device}, {rt.settings.get('precision')}, "
            f"world size {rt.world_size}; recipe {p.recipe.name}: {self.total} steps of "
            f"{self.bs} ({plan.epochs:.1f} epochs), lr {p.recipe.lr}, milestones "
            f"{list(plan.milestones)}{warm}\nrun directory {self.run_dir}{where}"
            + (f"\n{self.init_note}" if self.init_note else "")
            + (f"\n{self.extend_note}" if self.extend_note else "")
        )

    def _loop(self) -> None:
        p, rt, seed = self.p, self.rt, self.config.seed
        # this rank's batches from the current step on, a pure function of (seed, step)
        batches = self.dataset.train_batches(
            self.step, self.bs, seed=seed, augment=p.augment, rank=rt.rank, world_size=rt.world_size
        )
        self.pending_from = self.step
        first = True
        self.timer = time.perf_counter()
        self.loop_start, self.loop_start_step = self.timer, self.step
        while self.step < self.total:
            # a Ctrl-C is held until the step, its evaluation and checkpoint are done: the
            # state and the step always agree when it is raised (rescompile.harness.interrupt)
            with self.guard.critical():
                batch = next(batches)
                self.lr = self.plan.lr(self.step)
                self.pending.append(rt.train_step(batch, self.lr))
                self.step += 1
                step = self.step
                if first:  # the session's first step includes compilation: time it on its own
                    first = False
                    self._flush()
                    now = time.perf_counter()
                    if self.clock.first_step_s is None:
                        self.clock.first_step_s = now - self.timer
                    self.timer = now
                else:
                    self.window_timed += 1
                if step % p.log_every == 0 or step == self.total:
                    self._flush()
                    self._log_window()
                if self.ema is not None and step % self.ema.every == 0:
                    with self._untimed():
                        reset = step <= self.plan.warmup_steps
                        self.ema.update(self.rt.state_dict(), reset=reset)
                if step % p.eval_every == 0 or step == self.total:
                    self._flush()
                    with self._untimed():
                        self._evaluate()
                if step % p.ckpt_every == 0 or step == self.total:
                    self._flush()
                    with self._untimed():
                        self._save()
                if self.on_step is not None:
                    self.on_step(step)
                self.reporter.advance(step)

    def _finish(self, train_loss: float, train_err: float) -> dict[str, Any]:
        from rescompile.harness.metrics import read_metrics

        self.logger.close()
        records = read_metrics(self.run_dir)
        summary = _summary(self, records, train_loss, train_err)
        _write_json(self.run_dir / SUMMARY_FILE, summary)
        try:
            from rescompile.harness.plots import plot_curves

            plot_curves(
                records,
                self.run_dir / CURVES_FILE,
                labels=[self.graph.name],
                title=f"{self.graph.name} ({self.config.backend}, {self.dataset.name})",
            )
        except ImportError:  # pragma: no cover - matplotlib is an optional dependency
            pass
        self.reporter.say(_summary_text(summary, self.run_dir))
        return summary

    # -- the pieces ----------------------------------------------------------------------------

    class _Pause:
        def __init__(self, session: _Session) -> None:
            self.session = session

        def __enter__(self) -> None:
            self.t0 = time.perf_counter()

        def __exit__(self, *exc: object) -> None:
            self.session.timer += time.perf_counter() - self.t0

    def _untimed(self) -> _Session._Pause:
        """Exclude a block (evaluation, checkpoint) from the training time."""
        return _Session._Pause(self)

    def _flush(self) -> None:
        """Fetch the pending step results; stop the run at the first non-finite loss."""
        if not self.pending:
            return
        losses, correct = self.rt.collect(self.pending)
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
            k = int(bad[0])
            self._diverged(self.pending_from + k + 1, float(losses[k]))
        self.window_loss.extend(losses.tolist())
        self.window_correct.extend(correct.tolist())
        self.pending, self.pending_from = [], self.step

    def _diverged(self, at: int, loss: float, what: str = "training loss") -> None:
        from rescompile.harness.checkpoint import latest_checkpoint

        lr = self.plan.lr(at - 1)
        self.pending = []
        good = latest_checkpoint(self.run_dir) if self.rank0 else None
        if self.rank0:
            self.logger.log_train(
                at,
                epoch=round(at / self.spe, 4),
                loss=loss,
                train_error=float("nan"),
                lr=lr,
                images_per_s=0.0,
            )
            _write_json(
                self.run_dir / SUMMARY_FILE,
                {
                    "status": "diverged",
                    "step": at,
                    "what": what,
                    "value": loss,
                    "lr": lr,
                    "last_checkpoint": str(good) if good is not None else None,
                },
            )
        where = (
            f"the last good checkpoint is {good}"
            if good is not None
            else "no checkpoint had been written yet"
        )
        raise TrainingDiverged(
            f"the {what} became {loss} at step {at} (lr {lr:g}); the run stopped and "
            f"{where}. Lower the learning rate (--lr) or warm up (--warmup), and start again"
        )

    def _log_window(self) -> None:
        if not self.window_loss:
            return
        now = time.perf_counter()
        elapsed, self.timer = now - self.timer, now
        images = len(self.window_loss) * self.bs
        timed = self.window_timed * self.bs
        ips = timed / elapsed if elapsed > 0 and timed else 0.0
        self.last_ips = ips or self.last_ips
        self.clock.train_s += elapsed if timed else 0.0
        self.clock.timed_images += timed
        loss = float(np.mean(self.window_loss))
        err = 1.0 - float(np.sum(self.window_correct)) / images
        self.last_train_error = err
        if self.rank0:
            self.logger.log_train(
                self.step,
                epoch=round(self.step / self.spe, 4),
                loss=loss,
                train_error=err,
                lr=self.lr,
                images_per_s=round(ips, 1),
            )
        self.reporter.advance(
            self.step, f"loss {loss:.3f}  err {100 * err:5.1f}%  lr {self.lr:.3g}  {ips:,.0f} img/s"
        )
        self.window_loss, self.window_correct, self.window_timed = [], [], 0

    def _evaluate(self) -> None:
        loss_sum, correct, count = self.rt.evaluate("test", self.p.eval_batch)
        loss, err = loss_sum / count, 1.0 - correct / count
        if not math.isfinite(loss):  # the weights or BatchNorm statistics are no longer finite
            self._diverged(self.step, loss, "test loss")
        extra = self._evaluate_average()
        if self.rank0:
            self.logger.log_eval(self.step, test_loss=loss, test_error=err, **extra)
        if self.reporter is not None:  # above the progress bar on a terminal
            width = len(str(self.total))
            train_err = self.last_train_error
            shown = "  n/a " if math.isnan(train_err) else f"{100 * train_err:5.1f}%"
            self.reporter.say(
                f"step {self.step:>{width}}/{self.total}  train err {shown}  "
                f"test err {100 * err:5.1f}%  test loss {loss:.3f}  lr {self.lr:.3g}  "
                f"{self._pace()}"
            )

    def _evaluate_average(self) -> dict[str, float]:
        """The weight average's test loss and error (the runtime holds it for the evaluation,
        then the training state again, exactly)."""
        if self.ema is None or self.ema.tensors is None:
            return {}
        state = self.rt.state_dict()
        self.rt.load_state_dict(self.ema.tensors)
        try:
            loss_sum, correct, count = self.rt.evaluate("test", self.p.eval_batch)
        finally:
            self.rt.load_state_dict(state)
        return {"ema_test_loss": loss_sum / count, "ema_test_error": 1.0 - correct / count}

    def _pace(self) -> str:
        """Training images/s (of the last logged window), time elapsed in this session and the
        estimated time left (at this session's pace so far, evaluations and checkpoints
        included): what the progress bar shows on a terminal, for logs without one."""
        now = time.perf_counter()
        elapsed = now - self.session_start
        done = self.step - self.loop_start_step
        left = (self.total - self.step) * (now - self.loop_start) / done if done > 0 else 0.0
        return f"{self.last_ips:,.0f} img/s  elapsed {_hms(elapsed)}  ETA {_hms(left)}"

    def _save(self) -> None:
        from rescompile.harness.checkpoint import save_checkpoint

        step = self.step
        if self.rank0:
            state = {
                "step": step,
                "epoch": step / self.spe,
                "seed": self.config.seed,
                "backend": self.config.backend,
                "total_steps": self.total,
                "batch_size": self.bs,
                "world_size": self.rt.world_size,
                "lr": self.plan.lr(min(step, self.total - 1)),
                "train_s": self.clock.train_s,
                "timed_images": self.clock.timed_images,
                "first_step_s": self.clock.first_step_s,
                "wall_s": self.clock.wall_s + time.perf_counter() - self.session_start,
            }
            tensors = self.rt.state_dict()
            if self.ema is not None:
                tensors.update(self.ema.checkpoint_tensors())
            bad = next(
                (k for k, v in tensors.items() if v.dtype.kind == "f" and not np.isfinite(v).all()),
                None,
            )
            if bad is not None:  # a finite loss can still be followed by an overflowing update
                self._diverged(step, float("nan"), f"tensor {bad}")
            try:
                save_checkpoint(
                    self.run_dir,
                    tensors,
                    self.spec_json,
                    self.resolved.hash,
                    state,
                    keep=self.config.keep,
                )
            except OSError as e:  # a full disk, a file-size limit: the last checkpoint stands
                raise UserError(
                    f"cannot write the checkpoint of step {step} in {self.run_dir}: "
                    f"{e.strerror or e}; the run stopped (the checkpoints already written are kept)"
                ) from None
        self.last_ckpt = step

    def _save_on_interrupt(self) -> None:
        """On Ctrl-C, keep the work done: checkpoint the current step if its losses are finite
        (single process only: other ranks may not be at the same point)."""
        if self.rt.world_size > 1 or self.step <= self.last_ckpt or self.logger is None:
            return
        if self.guard.torn:  # a second Ctrl-C inside a step: its state is not one to keep
            if self.reporter is not None:
                self.reporter.close()
                self.reporter.say(
                    f"interrupted during step {self.step + 1}: nothing saved; the last "
                    f"checkpoint (step {max(self.last_ckpt, 0)}) stands: continue with "
                    f"--resume {self.run_dir}"
                )
            return
        try:
            self._flush()
            self._log_window()
            self._save()
        except (TrainingDiverged, KeyboardInterrupt):
            return
        if self.reporter is not None:
            self.reporter.close()
            self.reporter.say(
                f"interrupted: saved a checkpoint at step {self.step}; "
                f"continue with --resume {self.run_dir}"
            )


def _hms(seconds: float) -> str:
    """``1:02:03`` or ``2:03``."""
    m, sec = divmod(int(round(max(seconds, 0.0))), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _checked_state(state: Any, total: int) -> dict[str, Any]:
    """A checkpoint's training state, with the fields a resume uses checked."""
    from rescompile.harness.checkpoint import CheckpointError

    numbers = {"train_s": float, "wall_s": float, "timed_images": int, "first_step_s": float}
    if not isinstance(state, dict) or not _conforms(state.get("step"), int):
        raise CheckpointError("its sidecar has no integer state.step")
    if not 0 <= state["step"] <= total:
        raise CheckpointError(f"its step {state['step']} is outside this run's 0..{total}")
    for key, tp in numbers.items():
        if key in state and state[key] is not None and not _conforms(state[key], tp):
            raise CheckpointError(f"its sidecar's state.{key} is not a number")
    return state


def _config_record(config, resolved, graph, dataset, p: _Plan, rt: Runtime) -> dict[str, Any]:
    import rescompile

    return {
        "config": config.to_dict(),
        "spec_name": graph.name,
        "spec_hash": resolved.hash,
        "spec": resolved.spec.model_dump(mode="json"),  # also in spec.json, which resumes use
        "class_name": graph.class_name,
        "params": graph.totals.get("params"),
        "layers": p.depth,
        "dataset": dataset.summary(),
        "plan": p.plan.to_dict(),
        "batch_size": p.batch_size,
        "eval_every": p.eval_every,
        "ckpt_every": p.ckpt_every,
        "log_every": p.log_every,
        "augment": p.augment,
        "weight_decay_note": "L2 weight decay added to the gradient, as in He et al. (2016); "
        "on every parameter (weights, biases, BatchNorm scale and shift) unless the recipe's "
        "norm_weight_decay or bias_weight_decay says otherwise",
        "backend": config.backend,
        "device": rt.device,
        "world_size": rt.world_size,
        "settings": rt.settings,
        "versions": {
            "rescompile": getattr(rescompile, "__version__", None),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "host": platform.node(),
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _summary(
    session: _Session, records: list[dict[str, Any]], train_eval_loss: float, train_eval_err: float
) -> dict[str, Any]:
    total, clock, rt = session.total, session.clock, session.rt
    trains = [r for r in records if r.get("kind") == "train" and math.isfinite(r["loss"])]
    evals = [r for r in records if r.get("kind") == "eval"]
    tail = [r for r in trains if r["step"] > total - max(1, total // 20)] or trains[-1:]
    best = min(evals, key=lambda r: r["test_error"]) if evals else None
    ips = clock.timed_images / clock.train_s if clock.train_s > 0 else None
    wall = clock.wall_s + time.perf_counter() - session.session_start
    return {
        "status": "completed",
        "spec": session.graph.name,
        "backend": session.config.backend,
        "data": session.config.data,
        "steps": total,
        "epochs": round(total / session.spe, 3),
        "batch_size": session.bs,
        "final_train_error": train_eval_err,
        "final_train_loss": train_eval_loss,
        "final_train_error_running": (
            float(np.mean([r["train_error"] for r in tail])) if tail else None
        ),
        "final_test_error": evals[-1]["test_error"] if evals else None,
        "final_test_loss": evals[-1]["test_loss"] if evals else None,
        "final_ema_test_error": evals[-1].get("ema_test_error") if evals else None,
        "best_test_error": best["test_error"] if best else None,
        "best_test_step": best["step"] if best else None,
        "images_per_s": round(ips, 1) if ips else None,
        "skipped_images": getattr(session.dataset, "skipped", 0),  # unreadable files met
        "first_step_s": round(clock.first_step_s, 3) if clock.first_step_s else None,
        "train_time_s": round(clock.train_s, 3),
        "wall_time_s": round(wall, 3),
        "device": rt.device,
        "world_size": rt.world_size,
        "settings": rt.settings,
        "notes": {
            "final_train_error": "eval mode, the whole training set, no augmentation",
            "final_train_error_running": "mean mini-batch error (train mode) over the last 5% "
            "of steps: the dashed curve of curves.png",
            "images_per_s": "training images per second, excluding the first step of each "
            "session (compilation: first_step_s), evaluation and checkpoints",
        },
    }


def _summary_text(s: dict[str, Any], run_dir: Path) -> str:
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.2f}%"

    ips = f"{s['images_per_s']:,.0f} images/s" if s["images_per_s"] else "n/a"
    return (
        f"done: {s['steps']} steps ({s['epochs']} epochs) in {s['wall_time_s']:.1f} s, {ips} "
        f"(first step {s['first_step_s']} s)\n"
        f"  train error {pct(s['final_train_error'])} (eval mode; running "
        f"{pct(s['final_train_error_running'])})  test error {pct(s['final_test_error'])}  "
        f"best {pct(s['best_test_error'])} at step {s['best_test_step']}\n"
        f"  {run_dir / SUMMARY_FILE}, {run_dir / CURVES_FILE}"
    )


# --------------------------------------------------------------------------------------------
# Evaluating a checkpoint with any backend
# --------------------------------------------------------------------------------------------


def evaluate_checkpoint(
    checkpoint: str | Path,
    backend: str,
    data: str,
    *,
    split: str = "test",
    batch_size: int = 256,
    device: str | None = None,
) -> tuple[float, float]:
    """``(mean loss, error)`` of a portable checkpoint (written by either backend) on a split.

    The model is rebuilt from the resolved spec stored in the checkpoint's sidecar.
    """
    import tempfile

    from rescompile.compiler import compile_spec
    from rescompile.harness.checkpoint import load_checkpoint
    from rescompile.harness.data import load_dataset
    from rescompile.harness.runtime import load_training_module

    tensors, meta = load_checkpoint(checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        spec_file = Path(tmp) / SPEC_FILE
        spec_file.write_text(json.dumps(meta["spec"]))
        resolved, graph = compile_spec(spec_file)
    dataset = load_dataset(data, image_size=graph.input_shape[1:])
    _check_fit(graph, dataset, data)
    training = load_training_module(backend)
    module = load_backend(backend)
    require_backend_support(graph, module, backend)
    source = module.emit(graph)
    options = RuntimeOptions(precision="fp32", compile=False, device=device)
    rt = training.make_runtime(graph, source, options)
    try:
        rt.set_data(dataset.train_data())
        rt.load_state_dict(tensors)
        loss_sum, correct, count = rt.evaluate(split, batch_size)
    finally:
        rt.close(aborted=True)
        dataset.close()
    return loss_sum / count, 1.0 - correct / count


# --------------------------------------------------------------------------------------------
# Command-line glue (rescompile train / rescompile plot)
# --------------------------------------------------------------------------------------------

_RUN_OPTIONS = {  # CLI name -> TrainConfig field
    "backend": "backend",
    "data": "data",
    "recipe": "recipe",
    "epochs": "epochs",
    "steps": "steps",
    "batch_size": "batch_size",
    "lr": "lr",
    "momentum": "momentum",
    "nesterov": "nesterov",
    "weight_decay": "weight_decay",
    "norm_weight_decay": "norm_weight_decay",
    "label_smoothing": "label_smoothing",
    "clip_grad_norm": "clip_grad_norm",
    "sync_bn": "sync_bn",
    "seed": "seed",
    "out": "out",
    "eval_every": "eval_every",
    "ckpt_every": "ckpt_every",
    "log_every": "log_every",
    "keep": "keep",
    "precision": "precision",
    "compile_": "compile",
    "channels_last": "channels_last",
    "device": "device",
    "augment": "augment",
    "warmup": "warmup",
    "init_from": "init_from",
    "tensorboard": "tensorboard",
}


def run_from_cli(args: dict[str, Any]) -> dict[str, Any]:
    """``rescompile train``: build the config from the command's arguments and train."""
    quiet = bool(args.get("quiet"))
    if args.get("resume"):
        extending = ("steps", "epochs")  # --resume RUN --steps N makes the run longer
        given = [
            name
            for name in ("spec", "set_", *_RUN_OPTIONS)
            if args.get(name) is not None and name not in extending
        ]
        if given:
            flags = ", ".join(
                "SPEC" if g == "spec" else "--" + g.rstrip("_").replace("_", "-") for g in given
            )
            raise UserError(
                f"--resume continues a run with its saved configuration; drop {flags} "
                f"(see {Path(args['resume']) / CONFIG_FILE})"
            )
        return train(
            resume=args["resume"],
            quiet=quiet,
            steps=args.get("steps"),
            epochs=args.get("epochs"),
            reschedule=bool(args.get("reschedule")),
        )
    if args.get("reschedule"):
        raise UserError("--reschedule re-plans a resumed run: use it with --resume RUN --steps N")
    if not args.get("spec"):
        raise UserError("give a SPEC to train, or --resume RUN_DIR")
    if args.get("out") == "":
        raise UserError("--out needs a directory name (omit it for runs/NAME-BACKEND)")
    if not args.get("data"):
        raise UserError(
            "give the data to train on: --data digits | synthetic[:HxWxC[:CLASSES]] "
            "| cifar10:PATH | cifar100:PATH | imagefolder:PATH | webdataset:PATTERN"
        )
    if args.get("precision") not in (None, "fp32", "bf16"):
        raise UserError(f"--precision is fp32 or bf16, not {args['precision']!r}")
    if args.get("init_from") is not None and not Path(args["init_from"]).exists():
        raise UserError(f"--init-from {args['init_from']}: no such file or directory")
    if args.get("steps") is not None and args.get("epochs") is not None:
        raise UserError("give the run length as --steps or --epochs, not both")
    if args.get("recipe") is not None:
        from rescompile.harness.schedules import get_recipe

        get_recipe(args["recipe"])  # an unknown name lists the choices
    values = {
        field_: args[name] for name, field_ in _RUN_OPTIONS.items() if args.get(name) is not None
    }
    config = TrainConfig(
        spec=args["spec"], overrides=list(args.get("set_") or []), quiet=quiet, **values
    )
    return train(config)


def plot_runs(
    runs: list[str], output: str, labels: list[str] | None = None, title: str | None = None
) -> Path:
    """``rescompile plot``: overlay the runs' training and test error in one figure."""
    from rescompile.files import check_target
    from rescompile.harness.metrics import metrics_path
    from rescompile.harness.plots import image_format, plot_curves

    if output == "-":
        raise UserError("a plot is an image file: give -o FILE.png, FILE.svg or FILE.pdf")
    check_target(output)
    try:
        image_format(output)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    for run in runs:
        if not metrics_path(run).is_file():
            raise UserError(f"{run} is not a run directory (no {metrics_path(run).name})")
    if labels and len(labels) != len(runs):
        raise UserError(f"{len(labels)} --label for {len(runs)} runs; give one per run")
    try:
        return plot_curves(list(runs), output, labels=labels or None, title=title)
    except ValueError as exc:
        raise UserError(f"cannot plot: {exc}") from None
