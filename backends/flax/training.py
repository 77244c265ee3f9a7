"""The Flax (flax.nnx + optax) training runtime for :mod:`rescompile.harness.loop`.

One object, :class:`FlaxRuntime`, holds the emitted nnx model split into pure state (parameters,
BatchNorm statistics, RNG streams), the optax state and the data. The driver asks it for steps,
evaluations and state; see :mod:`rescompile.harness.runtime` for the contract.

- A training step is one ``jax.jit`` function with its state buffers donated: it gathers the
  batch from the dataset (kept on the device), crops, flips and normalises it, runs the model
  forward and backward, and applies SGD (``optax.add_decayed_weights`` then ``optax.trace``,
  scaled by the step's learning rate, which is an argument, so a schedule never recompiles).
- **Data parallel over all local devices** with ``jax.sharding``: a one-axis ``Mesh`` named
  ``"data"``; parameters, statistics, optimiser state and the dataset are replicated, each
  batch's indices are sharded along the mesh, and XLA partitions the step. BatchNorm statistics
  are therefore those of the *global* batch (synchronised BatchNorm), unlike PyTorch's DDP.
- **Several hosts** (``jax.distributed``, joined by :mod:`rescompile.harness.distributed`
  before the runtime is built): the mesh spans every process's devices, in process order.
  Each process is a rank: the driver hands it its contiguous share of each global batch (a pure
  function of seed and step), which becomes its local devices' part of the global batch
  (``jax.make_array_from_process_local_data``); an in-memory dataset is replicated on every
  process's devices. Each evaluation batch is split the same way and summed over all devices,
  so every process gets the global figures; process 0 alone writes files.
- bf16 (``precision="bf16"``, the default on a GPU) sets the computation dtype of every
  convolution, BatchNorm and fc layer to bfloat16; parameters, BatchNorm statistics (reduced in
  float32 by flax), the loss and the optimiser stay float32.
- XLA programs are cached on disk (``jax_compilation_cache_dir``; by default
  ``$XDG_CACHE_HOME/rescompile/jax``, set ``RESCOMPILE_JAX_CACHE=off`` to disable or to a path to
  move it), so a resumed or repeated run does not pay for compilation again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from rescompile.errors import UserError
from rescompile.harness.runtime import (
    Batch,
    RuntimeOptions,
    TrainData,
    host_batch,
    split_state,
    weight_decay_of,
)
from rescompile.ir.graph import Graph, Op

__all__ = ["FlaxRuntime", "enable_compilation_cache", "make_runtime"]


def make_runtime(graph: Graph, source: str, options: RuntimeOptions) -> FlaxRuntime:
    """Build the runtime (the harness calls this through the backend's ``training`` module)."""
    return FlaxRuntime(graph, source, options)


def enable_compilation_cache() -> str | None:
    """Turn on jax's persistent compilation cache unless the user configured or disabled it."""
    import jax

    setting = os.environ.get("RESCOMPILE_JAX_CACHE", "")
    if setting.lower() in ("off", "0", "false", "no"):
        return None
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    if setting:
        path = Path(setting).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path = Path(base) / "rescompile" / "jax"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    return str(path)


def _clip_and_decay(decay: Any, max_norm: float | None) -> Any:
    """An optax transformation: clip the gradients' global L2 norm to ``max_norm`` (when given),
    as ``torch.nn.utils.clip_grad_norm_`` does, then add each parameter's weight decay times the
    parameter, as ``torch.optim.SGD`` does (``decay`` mirrors the parameter tree)."""
    import jax
    import jax.numpy as jnp
    import optax

    def update(grads: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        if max_norm is not None:
            norm = optax.tree.norm(grads) if hasattr(optax, "tree") else optax.global_norm(grads)
            coef = jnp.minimum(max_norm / (norm + 1e-6), 1.0)
            grads = jax.tree.map(lambda g: g * coef.astype(g.dtype), grads)
        grads = jax.tree.map(lambda g, p, wd: g + wd * p if wd else g, grads, params, decay)
        return grads, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _devices(want: str | None) -> list[Any]:
    """The devices of the mesh: this process's, or every process's (in process order) in a
    multi-host run."""
    import jax

    platform = None
    if want is not None:
        platform = {"cuda": "gpu", "gpu": "gpu", "cpu": "cpu", "tpu": "tpu"}.get(want)
        if platform is None:
            raise UserError(f"the flax backend runs on --device cpu, gpu or tpu, not {want!r}")
    try:
        local = jax.local_devices(backend=platform)
        if jax.process_count() == 1:
            return local
        devices = sorted(jax.devices(platform), key=lambda d: (d.process_index, d.id))
    except RuntimeError as exc:
        raise UserError(
            f"--device {want} was asked for, but jax has no {platform}: {exc}"
        ) from None
    if len(devices) != len(local) * jax.process_count():
        raise UserError(
            f"the hosts of this run have different numbers of {devices[0].platform} devices "
            f"({len(devices)} in all, {len(local)} here): each process must use as many"
        )
    return devices


class FlaxRuntime:
    backend = "flax"
    rank = 0  # jax.process_index(): a multi-host run has one rank per process (host)
    world_size = 1  # jax.process_count(); each process uses all its local devices

    def __init__(self, graph: Graph, source: str, options: RuntimeOptions) -> None:
        import jax
        import jax.numpy as jnp
        import optax
        from flax import nnx
        from jax.sharding import Mesh, NamedSharding
        from jax.sharding import PartitionSpec as P

        from . import convert
        from .tools import linear_tracing, load_module

        self.options = options
        if options.sync_bn is False:
            raise UserError(
                "--no-sync-bn: the flax backend normalises over the global batch (jax.sharding); "
                "per-device BatchNorm statistics are not available"
            )
        cache = enable_compilation_cache()
        devices = _devices(options.device)
        self.rank, self.world_size = _launch(jax.process_index(), jax.process_count())
        self.num_devices = len(devices)
        self.local_devices = self.num_devices // self.world_size
        self.mesh = Mesh(np.array(devices), ("data",))
        self.replicated = NamedSharding(self.mesh, P())
        self.sharded = NamedSharding(self.mesh, P("data"))
        gpu = devices[0].platform == "gpu"
        kind = devices[0].device_kind
        self.device = f"{devices[0].platform} x{self.num_devices} ({kind})"
        if self.world_size > 1:
            self.device += f" over {self.world_size} processes"

        bf16 = (options.precision or ("bf16" if gpu else "fp32")) == "bf16"
        self.data_on_device = options.data_on_device is not False
        self.settings = {
            "precision": "bf16" if bf16 else "fp32",
            "compile": True,  # jax.jit always (options.compile does not apply)
            "channels_last": True,  # flax is NHWC throughout
            "data_on_device": self.data_on_device,
            "devices": self.num_devices,
            "processes": self.world_size,
            "sync_bn": True,  # sharded BatchNorm: statistics of the global batch
            "jax": jax.__version__,
            "compilation_cache": cache,
        }

        cls = load_module(source, graph.class_name)
        abstract = nnx.eval_shape(lambda: cls(rngs=nnx.Rngs(0)))
        if bf16:
            for _, module in nnx.iter_modules(abstract):
                if isinstance(module, nnx.Conv | nnx.Linear | nnx.BatchNorm):
                    module.dtype = jnp.bfloat16
        graphdef, _ = nnx.split(abstract)

        @partial(jax.jit, out_shardings=self.replicated)  # the same state on every device
        def init(key):
            model = cls(rngs=nnx.Rngs(key))
            return nnx.split(model, nnx.Param, nnx.BatchStat, ...)[1:]

        with linear_tracing():  # tracing deep nets is otherwise quadratic in depth (jax <= 0.10)
            params, stats, other = init(jax.random.key(options.seed))
        model = nnx.merge(graphdef, params, stats, other)
        model.train()
        self.gd_train = nnx.graphdef(model)
        model.eval()
        self.gd_eval = nnx.graphdef(model)
        self.rng_tags = sorted({v.tag for _, v in nnx.to_flat_state(nnx.state(model, nnx.RngKey))})
        self.dropout = any(n.op is Op.DROPOUT and n.attrs.get("p", 0) > 0 for n in graph)

        self.params, self.stats, self.other = jax.device_put(
            (params, stats, other), self.replicated
        )
        self.tx = optax.chain(
            _clip_and_decay(self._decay_tree(graph, model), options.clip_grad_norm),
            optax.trace(decay=options.momentum, nesterov=options.nesterov),
        )
        self.opt_state = jax.device_put(self.tx.init(self.params), self.replicated)
        self.torch_shapes = convert.torch_shapes(model)
        self.param_keys = [
            k for k in self.torch_shapes if not k.endswith((".running_mean", ".running_var"))
        ]
        self._build_steps()
        self.data: TrainData | None = None

    def _decay_tree(self, graph: Graph, model: Any) -> Any:
        """The parameters' tree with each leaf replaced by its weight decay (a Python float),
        mapped from PyTorch's parameter names through the portable layout."""
        import jax
        from flax import nnx

        from .convert import torch_shapes, torch_state_dict_to_nnx

        decay = weight_decay_of(graph, self.options)
        values = {
            k: np.full(shape, decay.get(k, 0.0), np.float32)
            for k, shape in torch_shapes(model).items()
        }
        tree = nnx.split(torch_state_dict_to_nnx(self._model(), values), nnx.Param, ...)[1]
        return jax.tree.map(lambda a: float(np.asarray(a).reshape(-1)[0]), tree)

    # -- the jitted functions --------------------------------------------------------------------

    def _build_steps(self) -> None:
        import jax
        import jax.numpy as jnp
        import optax
        from flax import nnx

        gd_train, gd_eval, tx = self.gd_train, self.gd_eval, self.tx
        smoothing = float(self.options.label_smoothing)
        base_key = jax.random.key(self.options.seed)
        tags, dropout, sharded = self.rng_tags, self.dropout, self.sharded
        pad = 4

        def normalize(x, mean, std):
            scale = 255.0 if x.dtype == jnp.uint8 else 1.0
            x = (x.astype(jnp.float32) / scale - mean) / std
            return jax.lax.with_sharding_constraint(x, sharded)

        def inputs(x_all, y_all, mean, std, index, crop):
            x = x_all[index]
            if crop is not None:
                top, left, flip = crop
                n, h, w, _ = x.shape
                padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
                rows = top[:, None] + jnp.arange(h)
                cols = left[:, None] + jnp.arange(w)
                cols = jnp.where(flip[:, None], cols[:, ::-1], cols)
                x = padded[jnp.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
            return normalize(x, mean, std), y_all[index]

        def cross_entropy(logits, y):
            if smoothing:
                labels = optax.smooth_labels(jax.nn.one_hot(y, logits.shape[-1]), smoothing)
                return optax.softmax_cross_entropy(logits, labels)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y)

        def train_step(params, stats, other, opt_state, data, index, crop, lr, step):
            x, y = inputs(*data, index, crop)
            model = nnx.merge(gd_train, params, stats, other)
            if dropout:
                key = jax.random.fold_in(base_key, step)
                nnx.reseed(model, **dict.fromkeys(tags, key))

            def loss_fn(model):
                logits = model(x).astype(jnp.float32)
                return cross_entropy(logits, y).mean(), logits

            (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
            _, _, stats, other = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
            correct = (logits.argmax(-1) == y).sum()
            return params, stats, other, opt_state, jnp.stack([loss, correct.astype(jnp.float32)])

        def eval_step(params, stats, other, x, y, mean, std, mask):
            x = normalize(x, mean, std)
            model = nnx.merge(gd_eval, params, stats, other)
            logits = model(x).astype(jnp.float32)
            loss = (cross_entropy(logits, y) * mask).sum()
            correct = ((logits.argmax(-1) == y) * mask).sum()
            return jnp.stack([loss, correct.astype(jnp.float32)])

        def logits_step(params, stats, other, x, mean, std):
            model = nnx.merge(gd_eval, params, stats, other)
            return model(normalize(x, mean, std)).astype(jnp.float32)

        rep = self.replicated
        # several processes: the logits come back whole to every one (each holds only its part)
        self._logits = jax.jit(logits_step, out_shardings=rep if self.world_size > 1 else None)
        self._train = jax.jit(
            train_step,
            donate_argnums=(0, 1, 2, 3),
            out_shardings=(rep, rep, rep, rep, rep),
        )
        self._eval = jax.jit(eval_step, out_shardings=rep)

    # -- data ----------------------------------------------------------------------------------

    def set_data(self, data: TrainData) -> None:

        if data.pad != 4:
            raise ValueError("the flax runtime crops with a padding of 4 pixels")
        self.data = data
        stats = (np.asarray(data.mean, np.float32), np.asarray(data.std, np.float32))
        self.mean_std = self._replicate(stats)
        if data.streamed:  # image folders, shards: decoded batch by batch on the host
            self.data_on_device = self.settings["data_on_device"] = False
        if self.data_on_device:
            self.splits = {
                name: self._replicate((*data.split(name), *stats)) for name in ("train", "test")
            }

    def _replicate(self, tree: Any) -> Any:
        """``tree`` whole on every device of the mesh. Several processes: each places its own
        copy (the same everywhere by construction: same seed, same files, same checkpoint),
        without the check jax.device_put makes of a host value then (an all-gather of the whole
        value: a synchronisation of all processes, every step for the learning rate)."""
        import jax

        if self.world_size == 1:
            return jax.device_put(tree, self.replicated)

        def place(leaf: Any) -> Any:
            if isinstance(leaf, jax.Array) and (
                leaf.sharding == self.replicated
                or jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
            ):
                return jax.device_put(leaf, self.replicated)
            a = np.asarray(leaf)
            return jax.make_array_from_callback(a.shape, self.replicated, lambda index: a[index])

        return jax.tree.map(place, tree)

    def _put(self, a: np.ndarray) -> Any:
        """This process's part of a global array sharded along the batch (all of it when the
        run has one process)."""
        import jax

        if self.world_size == 1:
            return jax.device_put(a, self.sharded)
        return jax.make_array_from_process_local_data(self.sharded, a)

    def _mine(self, a: np.ndarray) -> np.ndarray:
        """This process's contiguous share of a global batch (the devices are in process
        order)."""
        per = len(a) // self.world_size
        return a[self.rank * per : (self.rank + 1) * per]

    def _batch_args(self, batch: Batch, split: str) -> tuple[Any, Any, Any]:
        """``(data, index, crop)`` arguments of the jitted functions for ``batch`` (this
        process's share of the global batch)."""
        n = len(batch.index)
        if n % self.local_devices:
            raise ValueError(f"a batch of {n} does not split over {self.local_devices} devices")
        if batch.images is not None:  # a streamed uint8 batch, normalised on the device
            data = (self._put(batch.images), self._put(batch.labels), *self.mean_std)
            return data, self._put(self._positions(n)), None
        if self.data_on_device:
            crop = None
            if batch.top is not None:
                crop = tuple(self._put(a) for a in (batch.top, batch.left, batch.flip))
            return self.splits[split], self._put(batch.index), crop
        x, y = host_batch(self.data, batch, split)
        c = x.shape[-1]
        data = (self._put(x), self._put(y), *self._unit_stats(c))
        return data, self._put(self._positions(n)), None

    def _positions(self, n: int) -> np.ndarray:
        """Where this process's ``n`` examples sit in a global batch built from every
        process's share: the index into it of each of them."""
        return np.arange(self.rank * n, (self.rank + 1) * n)

    def _unit_stats(self, channels: int) -> tuple[Any, Any]:
        """A mean of 0 and a standard deviation of 1 (for batches normalised on the host)."""

        if not hasattr(self, "_unit"):
            stats = (np.zeros(channels, np.float32), np.ones(channels, np.float32))
            self._unit = self._replicate(stats)
        return self._unit

    # -- steps ---------------------------------------------------------------------------------

    def train_step(self, batch: Batch, lr: float) -> Any:

        data, index, crop = self._batch_args(batch, "train")
        scalars = (np.float32(lr), np.int32(batch.step))
        if self.world_size > 1:  # every argument on the global mesh
            scalars = self._replicate(scalars)
        (self.params, self.stats, self.other, self.opt_state, stats) = self._train(
            self.params,
            self.stats,
            self.other,
            self.opt_state,
            data,
            index,
            crop,
            *scalars,
        )
        return stats

    def collect(self, handles: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        import jax

        if not handles:
            return np.zeros(0), np.zeros(0, np.int64)
        out = np.stack([np.asarray(h, np.float64) for h in jax.device_get(list(handles))])
        return out[:, 0], np.rint(out[:, 1]).astype(np.int64)

    def evaluate(self, split: str, batch_size: int) -> tuple[float, int, int]:
        """Batches of one fixed size (the last one padded and masked), gathered on the host: one
        compiled program serves every split. Several processes: each gathers (or decodes) only
        its share of every batch; the sums are over all devices."""
        import jax

        assert self.data is not None, "set_data() first"
        x_all, y_all = self.data.split(split)
        n = len(y_all)
        size = -(-min(batch_size, n) // self.num_devices) * self.num_devices
        totals = []
        for start in range(0, n, size):
            index = np.arange(start, min(start + size, n))
            mask = np.ones(size, np.float32)
            mask[len(index) :] = 0
            index = self._mine(np.pad(index, (0, size - len(index))))
            totals.append(
                self._eval(
                    self.params,
                    self.stats,
                    self.other,
                    self._put(x_all[index]),
                    self._put(y_all[index]),
                    *self.mean_std,
                    self._put(self._mine(mask)),
                )
            )
        loss, correct = np.sum(np.asarray(jax.device_get(totals), np.float64), axis=0)
        return float(loss), int(round(correct)), n

    def predict(self, split: str, batch_size: int) -> Iterator[np.ndarray]:
        """The float32 logits of a whole split, batch by batch in the split's order, in
        evaluation mode (batches of one fixed size: the last one padded, the padding dropped)."""
        import jax

        assert self.data is not None, "set_data() first"
        x_all, y_all = self.data.split(split)
        n = len(y_all)
        size = -(-min(batch_size, n) // self.num_devices) * self.num_devices
        for start in range(0, n, size):
            index = np.arange(start, min(start + size, n))
            count = len(index)
            index = self._mine(np.pad(index, (0, size - count)))
            logits = self._logits(
                self.params, self.stats, self.other, self._put(x_all[index]), *self.mean_std
            )
            yield np.asarray(jax.device_get(logits))[:count]

    # -- state ---------------------------------------------------------------------------------

    def _model(self, params: Any = None) -> Any:
        """A model over (fresh Variables holding) the current state, or ``params`` instead of
        the parameters. Fresh: nnx.merge would otherwise share the Variable objects."""
        import jax
        from flax import nnx

        state = (self.params if params is None else params, self.stats, self.other)
        return nnx.merge(self.gd_eval, *jax.tree.map(lambda a: a, state))

    def state_dict(self) -> dict[str, np.ndarray]:
        from .convert import nnx_to_torch_state_dict

        out = nnx_to_torch_state_dict(self._model())
        trace = self.opt_state[1].trace
        momentum = nnx_to_torch_state_dict(self._model(trace))
        for key in self.param_keys:
            out[f"optim/{key}.momentum"] = momentum[key]
        return out

    def load_state_dict(self, tensors: Mapping[str, np.ndarray]) -> None:
        from flax import nnx

        from .convert import torch_state_dict_to_nnx

        weights, momentum = split_state(tensors)
        model = torch_state_dict_to_nnx(self._model(), weights)
        _, params, stats, other = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
        opt_state = self.tx.init(params)
        if momentum:
            missing = [k for k in self.param_keys if k not in momentum]
            if missing:
                raise ValueError(f"the checkpoint has no momentum buffer for {missing[0]}")
            full = {k: momentum.get(k, weights.get(k)) for k in self.torch_shapes}
            trace_model = torch_state_dict_to_nnx(self._model(), full)
            trace = nnx.split(trace_model, nnx.Param, ...)[1]
            opt_state = (opt_state[0], opt_state[1]._replace(trace=trace))
        self.params, self.stats, self.other, self.opt_state = self._replicate(
            (params, stats, other, opt_state)
        )

    def all_gather(self, value: Any) -> list[Any]:
        """Every process's ``value`` (JSON) in process order (the runtime's contract): a
        collective."""
        if self.world_size == 1:
            return [value]
        from .multihost import all_gather_json

        return all_gather_json(value)

    def close(self, *, aborted: bool = False) -> None:
        """At the normal end of a multi-host run, wait for every process: process 0 may still
        be writing the summary and the plot (and it serves the coordinator)."""
        if self.world_size > 1 and not aborted:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("rescompile: end of the run")


def _launch(rank: int, world: int) -> tuple[int, int]:
    """jax's process index and count, which must be the launch the driver planned for (it
    chose which process writes the run directory before the runtime existed)."""
    from rescompile.harness.distributed import current

    launch = current()
    if (launch.rank, launch.world_size) != (rank, world):
        raise UserError(
            f"jax runs as process {rank} of {world}, but the run was planned as process "
            f"{launch.rank} of {launch.world_size}: join a multi-host run with "
            "rescompile.harness.distributed.initialize() (the CLI's --coordinator), not "
            "jax.distributed.initialize() alone"
        )
    return rank, world
