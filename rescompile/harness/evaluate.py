"""``rescompile eval``: a checkpoint's loss, top-1 and top-5 error and speed on a dataset.

A checkpoint is portable (:mod:`rescompile.harness.checkpoint`): either backend evaluates the
checkpoint of either backend. The model is rebuilt from the resolved spec stored in the
checkpoint's sidecar. Given a run directory, the defaults are the run's: its latest checkpoint,
its data, its backend, its precision and the batch size of its own evaluations, so that
``rescompile eval RUN`` reproduces the run's final test figures.

The runtime returns float32 logits (:meth:`Runtime.predict`); the loss (mean cross-entropy,
without label smoothing) and the top-k errors are computed here in float64 numpy. Images are
normalised with the per-channel statistics of the run's training data (as in training), or of
the evaluated data set's training split when the run's data cannot be loaded or no run is known.
Images/s counts the batches after the first (whose time includes any compilation).

Nothing here imports a framework.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from rescompile.errors import UserError

__all__ = ["Evaluation", "evaluate", "find_checkpoint", "scores"]

DEFAULT_BATCH = 256


@dataclass
class Evaluation:
    """What ``rescompile eval`` reports (errors are fractions in [0, 1])."""

    checkpoint: str
    step: int | None
    spec: str
    backend: str
    device: str
    precision: str | None
    data: str
    split: str
    images: int
    loss: float
    top1_error: float
    top5_error: float
    images_per_s: float | None
    seconds: float
    normalised_with: str
    ema: bool = False  # the checkpoint's weight average rather than its weights

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scores(batches: Iterable[np.ndarray], labels: np.ndarray, k: int = 5) -> tuple[float, int, int]:
    """``(summed cross-entropy, top-1 correct, top-k correct)`` of logits batches (in order)
    against ``labels``, in float64. With fewer than ``k`` classes, top-k counts every example."""
    loss, top1, topk, seen = 0.0, 0, 0, 0
    for logits in batches:
        z = np.asarray(logits, np.float64)
        y = np.asarray(labels[seen : seen + len(z)], np.int64)
        seen += len(z)
        zmax = z.max(axis=1, keepdims=True)
        logsumexp = zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1))
        loss += float(np.sum(logsumexp - z[np.arange(len(z)), y]))
        top1 += int(np.sum(z.argmax(axis=1) == y))
        kk = min(k, z.shape[1])
        best = np.argpartition(-z, kk - 1, axis=1)[:, :kk]
        topk += int(np.sum((best == y[:, None]).any(axis=1)))
    if seen != len(labels):
        raise ValueError(f"{seen} predictions for {len(labels)} labels")
    return loss, top1, topk


class _Clock:
    """Times a stream of logits batches: images/s after the first batch (which includes any
    compilation), or over the one batch there is."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, int]] = []

    def timed(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        start = time.perf_counter()
        seen = 0
        self.marks = [(start, 0)]
        for logits in batches:
            seen += len(logits)
            self.marks.append((time.perf_counter(), seen))
            yield logits

    def images_per_s(self) -> float | None:
        if len(self.marks) < 2:
            return None
        (t0, n0), (t1, n1) = self.marks[1 if len(self.marks) > 2 else 0], self.marks[-1]
        return round((n1 - n0) / (t1 - t0), 1) if t1 > t0 else None


def find_checkpoint(target: str | Path) -> tuple[Path, Path | None]:
    """``(checkpoint .safetensors file, run directory or None)`` that ``target`` names: a run
    directory (its latest checkpoint), or a checkpoint file (its sidecar, or their stem)."""
    from rescompile.harness.checkpoint import CheckpointError, latest_checkpoint
    from rescompile.harness.records import CONFIG_FILE

    path = Path(target)
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise UserError(f"{path} is not a run directory (it has no {CONFIG_FILE})")
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"{path} has no complete checkpoint to evaluate")
        return found, path
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    elif path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    if not path.with_suffix(".json").is_file():
        raise UserError(
            f"{target} is neither a run directory nor a rescompile checkpoint "
            "(a ckpt-NNNNNN.safetensors file with its .json sidecar)"
        )
    run_dir = path.parent if (path.parent / CONFIG_FILE).is_file() else None
    return path, run_dir


def _run_record(run_dir: Path | None) -> dict[str, Any]:
    from rescompile.harness.records import CONFIG_FILE, MAX_CONFIG_BYTES

    if run_dir is None:
        return {}
    config_file = run_dir / CONFIG_FILE
    try:
        if config_file.stat().st_size > MAX_CONFIG_BYTES:
            raise ValueError("too large")
        record = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        raise UserError(f"{config_file} is unreadable") from None
    return record if isinstance(record, dict) else {}


def rebuild(meta: dict[str, Any], source: str) -> tuple[Any, Any]:
    """``(resolved spec, graph)`` of a checkpoint sidecar's stored spec, hash checked."""
    from rescompile.compiler import analyse
    from rescompile.harness.checkpoint import CheckpointError
    from rescompile.spec.load import load_spec_text

    spec = meta.get("spec")
    if not isinstance(spec, dict):
        raise CheckpointError(f"{source} holds no resolved spec")
    resolved = load_spec_text(json.dumps(spec), source)
    if resolved.hash != meta.get("spec_hash"):
        raise CheckpointError(
            f"{source}: its spec hashes to {resolved.hash}, but it records {meta.get('spec_hash')}"
        )
    return resolved, analyse(resolved)


def evaluate(
    target: str | Path,
    *,
    data: str | None = None,
    backend: str | None = None,
    split: str = "test",
    batch_size: int | None = None,
    device: str | None = None,
    precision: str | None = None,
    ema: bool = False,
) -> Evaluation:
    """Evaluate a checkpoint (or a run directory's latest) on ``split`` of ``data``; with
    ``ema``, the weight average the checkpoint keeps (a recipe's ``ema``)."""
    from rescompile.backends import load_backend
    from rescompile.harness.checkpoint import load_checkpoint
    from rescompile.harness.config import check_fit
    from rescompile.harness.data import load_dataset
    from rescompile.harness.runtime import RuntimeOptions, load_training_module
    from rescompile.ir.features import require_backend_support

    if split not in ("train", "test"):
        raise UserError(f"--split is train or test, not {split!r}")
    if batch_size is not None and batch_size <= 0:
        raise UserError(f"--batch-size must be positive, got {batch_size}")
    ckpt, run_dir = find_checkpoint(target)
    run = _run_record(run_dir)
    config = run.get("config") if isinstance(run.get("config"), dict) else {}
    settings = run.get("settings") if isinstance(run.get("settings"), dict) else {}
    data = data or config.get("data")
    if not data:
        raise UserError(f"{ckpt} is not in a run directory: give the data to evaluate on (--data)")
    backend = backend or config.get("backend") or "torch"
    if precision not in (None, "fp32", "bf16"):
        raise UserError(f"--precision is fp32 or bf16, not {precision!r}")
    precision = precision or settings.get("precision")
    if batch_size is None:
        run_batch = run.get("batch_size")
        batch_size = max(run_batch, DEFAULT_BATCH) if isinstance(run_batch, int) else DEFAULT_BATCH

    tensors, meta = load_checkpoint(ckpt)
    if ema:
        from rescompile.harness.ema import averaged_weights

        tensors = averaged_weights(tensors, str(ckpt))
    resolved, graph = rebuild(meta, str(ckpt.with_suffix(".json")))
    dataset = load_dataset(data, image_size=graph.input_shape[1:])
    check_fit(graph, dataset, data)
    stats = getattr(dataset, "stats_from", "training split")  # image folders: ImageNet's
    mean, std, normalised_with = dataset.mean, dataset.std, f"{data} ({stats})"
    run_data = config.get("data")
    if isinstance(run_data, str) and run_data != data:
        try:
            trained_on = load_dataset(run_data, image_size=graph.input_shape[1:])
            trained_on.close()
            mean, std, normalised_with = trained_on.mean, trained_on.std, run_data
        except UserError:  # the run's data is not here: the evaluated set's own statistics
            pass
    training = load_training_module(backend)
    module = load_backend(backend)
    require_backend_support(graph, module, backend)
    source = module.emit(graph)
    options = RuntimeOptions(precision=precision, compile=False, device=device)  # type: ignore[arg-type]
    rt = training.make_runtime(graph, source, options)
    try:
        if not hasattr(rt, "predict"):
            raise UserError(f"the {backend} backend cannot evaluate (its runtime has no predict)")
        rt_data = replace(dataset.train_data(whole_train=True), mean=mean, std=std)
        rt.set_data(rt_data)
        rt.load_state_dict(tensors)
        labels = rt_data.split(split)[1]
        clock = _Clock()
        start = time.perf_counter()
        loss_sum, top1, top5 = scores(clock.timed(rt.predict(split, batch_size)), labels)
        seconds = time.perf_counter() - start
        used = rt.settings.get("precision")
        where = rt.device
    finally:
        rt.close(aborted=True)
        dataset.close()
    n = len(labels)
    state = meta.get("state") if isinstance(meta.get("state"), dict) else {}
    step = state.get("step")
    return Evaluation(
        checkpoint=str(ckpt),
        step=step if isinstance(step, int) else None,
        spec=graph.name,
        backend=backend,
        device=where,
        precision=used,
        data=data,
        split=split,
        images=n,
        loss=loss_sum / n,
        top1_error=1.0 - top1 / n,
        top5_error=1.0 - top5 / n,
        images_per_s=clock.images_per_s(),
        seconds=round(seconds, 3),
        normalised_with=normalised_with,
        ema=ema,
    )


def render_table(e: Evaluation) -> str:
    """The evaluation as aligned lines for a person."""
    rows = [
        ("checkpoint", f"{e.checkpoint} (step {e.step}{', weight average' if e.ema else ''})"),
        ("model", f"{e.spec} on {e.backend}, {e.device}, {e.precision}"),
        ("data", f"{e.data}, {e.split} split, {e.images:,} images"),
        ("loss", f"{e.loss:.4f}"),
        ("top-1 error", f"{100 * e.top1_error:.2f}%"),
        ("top-5 error", f"{100 * e.top5_error:.2f}%"),
        ("speed", f"{e.images_per_s or 0:,.0f} images/s ({e.seconds:.2f} s)"),
    ]
    return "\n".join(f"{k:12s} {v}" for k, v in rows)
