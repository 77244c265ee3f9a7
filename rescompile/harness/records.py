"""A run directory's records: its files, who may write there, and what they hold.

::

    runs/NAME/
      config.json        the full configuration, the resolved plan, the device and versions
      spec.json          the resolved spec (a resumed run is rebuilt from it, not from the YAML)
      model.py           the emitted source the run trained
      classes.txt        an image folder's class names, one a line (line k is label k)
      metrics.jsonl      one record per logged step and per evaluation (rescompile.harness.metrics)
      ckpt-NNNNNN.*      portable checkpoints (rescompile.harness.checkpoint), the last `keep`
      latest             the name of the newest committed checkpoint
      summary.json       final and best errors, images/s, times, steps, device
      curves.png         training (dashed) and test (solid) error, in the style of Figure 6

Everything read back from a run directory (config.json, a checkpoint's training state) is
checked like user input: a damaged file is one clear error, never a traceback. config.json and
summary.json are strict JSON (a NaN is the string ``"NaN"``).
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rescompile.errors import UserError
from rescompile.harness.config import RunPlan, TrainConfig, conforms, short

if typing.TYPE_CHECKING:
    from rescompile.harness.runtime import Runtime

__all__ = [
    "CONFIG_FILE",
    "Clock",
    "CURVES_FILE",
    "MAX_CONFIG_BYTES",
    "MODEL_FILE",
    "SPEC_FILE",
    "SUMMARY_FILE",
    "auto_run_dir",
    "checked_state",
    "claim_run_dir",
    "config_record",
    "lock_run_dir",
    "read_run",
    "refuse_an_existing_run",
    "run_summary",
    "summary_text",
    "write_json",
]

CONFIG_FILE = "config.json"
SPEC_FILE = "spec.json"
SUMMARY_FILE = "summary.json"
MODEL_FILE = "model.py"
CURVES_FILE = "curves.png"


def write_json(path: Path, data: Any) -> None:
    from rescompile.files import write_file
    from rescompile.harness.metrics import dumps

    write_file(path, dumps(data, indent=2) + "\n")  # strict JSON: a NaN is the string "NaN"


def auto_run_dir(name: str, backend: str) -> Path:
    base = Path("runs") / f"{name}-{backend}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


MAX_CONFIG_BYTES = 16 << 20  # a run's config.json is a few kB


def refuse_an_existing_run(run_dir: Path) -> None:
    if (run_dir / CONFIG_FILE).exists():
        raise UserError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir} "
            "or choose another --out"
        )


def lock_run_dir(run_dir: Path, rank0: bool) -> Any:
    """Hold the run directory for this process's life: a second train or --resume is refused."""
    from rescompile.files import DirectoryLock

    if not rank0:
        return contextlib.nullcontext()
    return DirectoryLock(
        run_dir,
        f"{run_dir} is in use by another rescompile process (a train or --resume is running "
        "there); wait for it to end, or choose another --out",
    )


def claim_run_dir(out: str | None, name: str, backend: str) -> tuple[Path, bool]:
    """The new run's directory, created if needed; and whether this call created it."""
    if not out:
        while True:  # a fresh runs/NAME-BACKEND[-k]: mkdir claims it atomically
            run_dir = auto_run_dir(name, backend)
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


def read_run(run_dir: Path) -> tuple[TrainConfig, dict[str, Any], Any, Any]:
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
            if key in hints and not conforms(value, hints[key]):
                raise ValueError(f"config.{key} is not {hints[key]}: {short(value)}")
        config = TrainConfig.from_dict(saved["config"])
    except RecursionError:
        raise UserError(f"{config_file} is unreadable: nested too deeply") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{config_file} is unreadable: {short(str(exc))}") from None
    resolved, graph = compile_spec(run_dir / SPEC_FILE)
    if resolved.hash != saved.get("spec_hash"):
        raise UserError(
            f"{run_dir / SPEC_FILE} hashes to {resolved.hash}, but the run was started "
            f"with spec hash {short(str(saved.get('spec_hash')))}"
        )
    return config, saved, resolved, graph


def checked_state(state: Any, total: int) -> dict[str, Any]:
    """A checkpoint's training state, with the fields a resume uses checked."""
    from rescompile.harness.checkpoint import CheckpointError

    numbers = {"train_s": float, "wall_s": float, "timed_images": int, "first_step_s": float}
    if not isinstance(state, dict) or not conforms(state.get("step"), int):
        raise CheckpointError("its sidecar has no integer state.step")
    if not 0 <= state["step"] <= total:
        raise CheckpointError(f"its step {state['step']} is outside this run's 0..{total}")
    for key, tp in numbers.items():
        if key in state and state[key] is not None and not conforms(state[key], tp):
            raise CheckpointError(f"its sidecar's state.{key} is not a number")
    if state.get("data") is not None and not isinstance(state["data"], dict):
        raise CheckpointError("its sidecar's state.data is not a mapping")
    return state


@dataclass
class Clock:
    """Training time (excluding evaluation and checkpoints) and the first step of a session
    (which includes compilation) kept apart, accumulated over resumed sessions (a checkpoint's
    training state carries them)."""

    train_s: float = 0.0  # steady-state training time
    timed_images: int = 0  # images trained in train_s
    first_step_s: float | None = None  # the first session's first step (compilation)
    wall_s: float = 0.0

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Clock:
        return cls(
            state.get("train_s", 0.0),
            state.get("timed_images", 0),
            state.get("first_step_s"),
            state.get("wall_s", 0.0),
        )


def config_record(
    config: TrainConfig, resolved: Any, graph: Any, dataset: Any, p: RunPlan, rt: Runtime
) -> dict[str, Any]:
    """What config.json holds for a new run."""
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


def run_summary(
    records: list[dict[str, Any]],
    *,
    config: TrainConfig,
    graph: Any,
    dataset: Any,
    p: RunPlan,
    rt: Runtime,
    clock: Clock,
    wall_s: float,
    train_loss: float,
    train_error: float,
) -> dict[str, Any]:
    """summary.json of a completed run: ``records`` are its metrics.jsonl records, ``wall_s`` its
    wall time over every session, ``train_loss`` and ``train_error`` the final evaluation of the
    training split."""
    total = p.plan.total_steps
    trains = [r for r in records if r.get("kind") == "train" and math.isfinite(r["loss"])]
    evals = [r for r in records if r.get("kind") == "eval"]
    tail = [r for r in trains if r["step"] > total - max(1, total // 20)] or trains[-1:]
    best = min(evals, key=lambda r: r["test_error"]) if evals else None
    ips = clock.timed_images / clock.train_s if clock.train_s > 0 else None
    return {
        "status": "completed",
        "spec": graph.name,
        "backend": config.backend,
        "data": config.data,
        "steps": total,
        "epochs": round(total / p.plan.steps_per_epoch, 3),
        "batch_size": p.batch_size,
        "final_train_error": train_error,
        "final_train_loss": train_loss,
        "final_train_error_running": (
            float(np.mean([r["train_error"] for r in tail])) if tail else None
        ),
        "final_test_error": evals[-1]["test_error"] if evals else None,
        "final_test_loss": evals[-1]["test_loss"] if evals else None,
        "final_ema_test_error": evals[-1].get("ema_test_error") if evals else None,
        "best_test_error": best["test_error"] if best else None,
        "best_test_step": best["step"] if best else None,
        "images_per_s": round(ips, 1) if ips else None,
        "skipped_images": getattr(dataset, "skipped", 0),  # unreadable files met
        "first_step_s": round(clock.first_step_s, 3) if clock.first_step_s else None,
        "train_time_s": round(clock.train_s, 3),
        "wall_time_s": round(wall_s, 3),
        "device": rt.device,
        "world_size": rt.world_size,
        "settings": rt.settings,
        "notes": {
            "final_train_error": f"eval mode, {dataset.train_eval}, no augmentation",
            "final_train_error_running": "mean mini-batch error (train mode) over the last 5% "
            "of steps: the dashed curve of curves.png",
            "images_per_s": "training images per second, excluding the first step of each "
            "session (compilation: first_step_s), evaluation and checkpoints",
        },
    }


def summary_text(s: dict[str, Any], run_dir: Path) -> str:
    """The summary as the run's last lines on the terminal."""

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
