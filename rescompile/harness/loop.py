"""The training driver: one loop for every backend.

:func:`train` turns a :class:`~rescompile.harness.config.TrainConfig` into a run directory (its
files: :mod:`rescompile.harness.records`). The driver owns the data, the batch order and
augmentation draws (pure functions of ``(seed, step)``), the learning-rate schedule (a pure
function of the step), the cadence of logging, evaluation and checkpoints, and the summary; the
backend only supplies a :class:`~rescompile.harness.runtime.Runtime`. Because nothing the loop does
depends on anything but the step and the checkpointed tensors, a run killed at any moment and
resumed from its last checkpoint (``resume=RUN_DIR``) continues exactly where that checkpoint left
it; on a CPU it ends with bitwise the same weights as a run that was never interrupted. A Ctrl-C
is held until the step in flight, its evaluation and checkpoint are done
(:mod:`rescompile.harness.interrupt`), then the state is checkpointed under its own step.

Per-step losses stay on the device until the next logging point, where they are fetched together
and checked: a non-finite loss stops the run (:class:`TrainingDiverged`) before anything computed
from it is checkpointed, so the last checkpoint on disk is always a good one.

The pieces around the loop are modules of their own: the configuration, its checks and the plan
(:mod:`rescompile.harness.config`), what is shown while it runs (:mod:`rescompile.harness.reporter`)
and the run directory's records (:mod:`rescompile.harness.records`).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from rescompile.backends import load_backend
from rescompile.errors import UserError
from rescompile.harness import distributed
from rescompile.harness.config import (
    Extension,
    RunPlan,
    TrainConfig,
    check_config,
    check_fit,
    make_plan,
    weighted_layers,
)
from rescompile.harness.interrupt import DeferredInterrupt
from rescompile.harness.records import (
    CONFIG_FILE,
    CURVES_FILE,
    MODEL_FILE,
    SPEC_FILE,
    SUMMARY_FILE,
    Clock,
    auto_run_dir,
    checked_state,
    claim_run_dir,
    config_record,
    lock_run_dir,
    read_run,
    refuse_an_existing_run,
    run_summary,
    summary_text,
    write_json,
)
from rescompile.harness.reporter import Reporter
from rescompile.harness.runtime import Runtime, RuntimeOptions
from rescompile.ir.features import require_backend_support

__all__ = ["TrainConfig", "TrainingDiverged", "train", "weighted_layers"]


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


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
        with lock_run_dir(run_dir, rank0):
            config, saved, resolved, graph = read_run(run_dir)
            extend = Extension(steps, epochs, reschedule)
            extend.check()
            return _train(
                config, saved, resolved, graph, run_dir, quiet, on_step, session_start, extend
            )
    if steps is not None or epochs is not None or reschedule:
        raise ValueError("steps, epochs and reschedule extend a resumed run; set them in config")
    if config is None:
        raise ValueError("give a config or a run directory to resume")
    check_config(config)
    resolved, graph = compile_spec(config.spec, config.overrides)
    if not rank0:  # rank 0 writes config.json only once every rank has joined: no race here
        run_dir = Path(config.out) if config.out else auto_run_dir(graph.name, config.backend)
        refuse_an_existing_run(run_dir)
        return _train(config, None, resolved, graph, run_dir, quiet, on_step, session_start)
    run_dir, created = claim_run_dir(config.out, graph.name, config.backend)
    try:
        with lock_run_dir(run_dir, rank0):
            refuse_an_existing_run(run_dir)
            return _train(config, None, resolved, graph, run_dir, quiet, on_step, session_start)
    except BaseException:
        if created:  # a run that failed before it began leaves no empty directory behind
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        raise


def _train(
    config: TrainConfig,
    saved: dict[str, Any] | None,
    resolved: Any,
    graph: Any,
    run_dir: Path,
    quiet: bool | None,
    on_step: Callable[[int], None] | None,
    session_start: float,
    extend: Extension | None = None,
) -> dict[str, Any]:
    from rescompile.harness.data import load_dataset
    from rescompile.harness.runtime import load_training_module

    if quiet is not None:
        config.quiet = quiet

    dataset = load_dataset(config.data, image_size=graph.input_shape[1:])
    check_fit(graph, dataset, config.data)
    training = load_training_module(config.backend)  # before anything slow: clear import errors
    if config.tensorboard:
        from rescompile.harness.tensorboard import require_tensorboard

        require_tensorboard()
    distributed.check_backend(config.backend)  # torchrun for torch, jax.distributed for flax
    world = distributed.current().world_size
    recorded = (saved or {}).get("plan", {}).get("recipe") if saved else None
    p = make_plan(config, graph, dataset, world, recorded if isinstance(recorded, dict) else None)
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
        config: TrainConfig,
        resolved: Any,
        graph: Any,
        dataset: Any,
        p: RunPlan,
        rt: Runtime,
        run_dir: Path,
        source: str,
        on_step: Callable[[int], None] | None,
    ) -> None:
        self.config, self.resolved, self.graph, self.dataset = config, resolved, graph, dataset
        self.p, self.rt, self.run_dir, self.source, self.on_step = p, rt, run_dir, source, on_step
        self.plan = p.plan
        self.total = p.plan.total_steps
        self.spe = p.plan.steps_per_epoch
        self.bs = p.batch_size
        self.rank0 = rt.rank == 0
        self.spec_json = resolved.spec.model_dump(mode="json")
        self.clock = Clock()
        self.logger: Any = None
        self.reporter: Reporter | None = None
        # step results not yet fetched from the device, and fetched ones not yet logged
        self.pending: list[Any] = []
        self.pending_from = 0
        self.window_loss: list[float] = []
        self.window_correct: list[int] = []
        self.window_timed = 0  # steps of the window that count towards images/s
        self.last_train_error = float("nan")
        self.init_note: str | None = None
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
        self, saved: dict[str, Any] | None, session_start: float, extend: Extension | None = None
    ) -> dict[str, Any]:
        self.session_start = session_start
        self.rt.set_data(self.dataset.train_data(augment=self.p.augment))
        resumed_from = self._restore() if saved is not None else None
        self.extend_note: str | None = None
        if extend:
            self._extend(extend, saved)
        if self.config.init_from and self.step == 0:  # a new run (or one with no checkpoint)
            self.init_note = self._init_from(self.config.init_from)
        self.reporter = Reporter(
            self.total,
            self.step,
            quiet=self.config.quiet,
            enabled=self.rank0,
            session_start=session_start,
        )
        if self.rank0:
            self._open_run_dir(new=saved is None)
            self.reporter.say(self._header(saved is not None, resumed_from))
        try:
            with self.guard:
                self._loop()
            train_loss, train_correct, train_count = self.rt.evaluate("train", self.p.eval_batch)
            self._gather_data_state()  # the summary's skipped_images: every rank's files
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
                state = checked_state(meta.get("state"), self.total)
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
        self.clock = Clock.from_state(state)
        self.dataset.restore(state.get("data") or {})
        return ckpt

    def _extend(self, extend: Extension, saved: dict[str, Any] | None) -> None:
        """Make the resumed run longer (or re-plan it) from the restored step, and record that
        in config.json so that a later --resume replays it."""
        from rescompile.harness.schedules import extend_plan

        old = self.total
        total = extend.total_steps(old, self.spe)
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
            write_json(self.run_dir / CONFIG_FILE, record)

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
            write_json(self.run_dir / SPEC_FILE, self.spec_json)
            write_file(self.run_dir / MODEL_FILE, self.source)
            for name, text in self.dataset.run_files().items():  # e.g. the class list
                write_file(self.run_dir / name, text)
            record = config_record(
                self.config, self.resolved, self.graph, self.dataset, self.p, self.rt
            )
            if self.init_note:
                record["init_note"] = self.init_note
            write_json(self.run_dir / CONFIG_FILE, record)
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
            self.step,
            self.bs,
            seed=seed,
            augment=p.augment,
            rank=rt.rank,
            world_size=rt.world_size,
            augmentation=p.recipe.augmentation,
        )
        self.pending_from = self.step
        first = True
        self.timer = time.perf_counter()
        self.reporter.start_loop(self.step)
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
        summary = run_summary(
            records,
            config=self.config,
            graph=self.graph,
            dataset=self.dataset,
            p=self.p,
            rt=self.rt,
            clock=self.clock,
            wall_s=self.clock.wall_s + time.perf_counter() - self.session_start,
            train_loss=train_loss,
            train_error=train_err,
        )
        write_json(self.run_dir / SUMMARY_FILE, summary)
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
        self.reporter.say(summary_text(summary, self.run_dir))
        return summary

    # -- the pieces ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _untimed(self) -> Iterator[None]:
        """Exclude a block (evaluation, checkpoint) from the training time."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timer += time.perf_counter() - t0

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
            write_json(
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
        self.reporter.window(self.step, loss=loss, error=err, lr=self.lr, ips=ips)
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
            self.reporter.evaluation(
                self.step,
                train_error=self.last_train_error,
                test_error=err,
                test_loss=loss,
                lr=self.lr,
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

    def _gather_data_state(self) -> None:
        """Give every rank the data source's state of all ranks (a collective: every rank calls
        it at the same point): each rank decodes only its share of every batch, so the
        unreadable files one rank met are unknown to the others until then. Each rank's state is
        restored into the source, which merges (:meth:`DataSource.restore`)."""
        gather = getattr(self.rt, "all_gather", None)
        if self.rt.world_size == 1 or gather is None:
            return
        for state in gather(self.dataset.state()):
            self.dataset.restore(state)

    def _save(self) -> None:
        from rescompile.harness.checkpoint import save_checkpoint

        step = self.step
        self._gather_data_state()  # before rank 0 writes it: the files every rank met
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
                "data": self.dataset.state(),
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
