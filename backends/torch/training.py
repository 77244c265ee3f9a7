"""The PyTorch training runtime for :mod:`rescompile.harness.loop` (imports torch).

One object, :class:`TorchRuntime`, holds the emitted ``nn.Module``, a ``torch.optim.SGD`` and
the data. The driver asks it for steps, evaluations and state; see
:mod:`rescompile.harness.runtime` for the contract.

- **CPU**: float32, no compilation; batches are assembled on the host with numpy
  (:func:`rescompile.harness.runtime.host_batch`). With a fixed seed every step is deterministic,
  so a run resumed from a checkpoint ends bitwise where an uninterrupted one does.
- **CUDA**: the whole dataset is copied to the GPU once and each batch is gathered, cropped,
  flipped and normalised there (the host only draws the indices and offsets), the model runs in
  ``channels_last`` under bf16 autocast and is compiled with ``torch.compile``; each of these
  is switchable through :class:`~rescompile.harness.runtime.RuntimeOptions`.
- **Data parallel**: under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in
  ``DistributedDataParallel`` on the ``nccl`` (GPU) or ``gloo`` (CPU) process group; each rank
  trains on its share of every global batch. BatchNorm is synchronised by default
  (``sync_bn``; :mod:`.syncbn`): its statistics are those of the global batch, as in flax's
  sharded runs and as a single process would compute them; with ``sync_bn=False`` they are per
  rank, and rank 0's buffers are broadcast at each forward (DDP's default).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rescompile.errors import UserError
from rescompile.harness.checkpoint import check_compatible
from rescompile.harness.runtime import (
    Batch,
    RuntimeOptions,
    TrainData,
    host_batch,
    split_state,
    weight_decay_of,
)
from rescompile.ir.graph import Graph, Op

from .tools import expected_state_dict, load_module

__all__ = ["TorchRuntime", "make_runtime"]


def make_runtime(graph: Graph, source: str, options: RuntimeOptions) -> TorchRuntime:
    """Build the runtime (the harness calls this through the backend's ``training`` module)."""
    return TorchRuntime(graph, source, options)


def _dist_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


class TorchRuntime:
    backend = "torch"

    def __init__(self, graph: Graph, source: str, options: RuntimeOptions) -> None:
        self.options = options
        self.rank, self.world_size, local_rank = _dist_env()
        want = options.device
        if want not in (None, "cpu", "cuda", "gpu"):
            raise UserError(f"the torch backend runs on --device cpu or cuda, not {want!r}")
        use_cuda = torch.cuda.is_available() if want is None else want in ("cuda", "gpu")
        if use_cuda and not torch.cuda.is_available():
            raise UserError("--device cuda was asked for, but torch sees no CUDA device")
        if use_cuda:
            self.dev = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.dev)
            self.device = f"{self.dev} ({torch.cuda.get_device_name(self.dev)})"
        else:
            self.dev = torch.device("cpu")
            n = torch.get_num_threads()
            self.device = f"cpu ({n} thread{'s' if n > 1 else ''})"

        gpu = self.dev.type == "cuda"
        pick = lambda value, default: default if value is None else value  # noqa: E731
        self.bf16 = pick(options.precision, "bf16" if gpu else "fp32") == "bf16"
        self.channels_last = pick(options.channels_last, gpu)
        self.compiled = pick(options.compile, gpu)
        self.data_on_device = pick(options.data_on_device, gpu)
        self.settings = {
            "precision": "bf16" if self.bf16 else "fp32",
            "channels_last": self.channels_last,
            "compile": self.compiled,
            "data_on_device": self.data_on_device,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }
        if gpu:
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        if self.world_size > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("nccl" if gpu else "gloo")
            self.settings["process_group"] = dist.get_backend()

        self.dropout = any(n.op is Op.DROPOUT and n.attrs.get("p", 0) > 0 for n in graph)
        self.expected = {
            k: v for k, v in expected_state_dict(graph).items() if not k.endswith("tracked")
        }
        torch.manual_seed(options.seed)
        model = load_module(source, graph.class_name)().to(self.dev)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.sync_bn = self.world_size > 1 and options.sync_bn is not False
        self.settings["sync_bn"] = self.sync_bn
        if self.sync_bn:
            from .syncbn import synchronise_batchnorm

            model = synchronise_batchnorm(model, self.dev)
        self.model = model
        self.params = dict(model.named_parameters())
        self.optimizer = torch.optim.SGD(
            _decay_groups(self.params, weight_decay_of(graph, options)),
            lr=0.1,
            momentum=options.momentum,
            weight_decay=options.weight_decay,
            nesterov=options.nesterov,
            **({"fused": True} if gpu else {}),
        )
        net: nn.Module = model
        if self.world_size > 1:
            import warnings

            from torch.nn.parallel import DistributedDataParallel

            # A weight with a dimension of size 1 (the conv of a 1-channel input) can get a
            # gradient whose stride on that dimension differs from DDP's bucket view; harmless.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")

            net = DistributedDataParallel(
                model, device_ids=[self.dev.index] if gpu else None, gradient_as_bucket_view=True
            )
        self.net = torch.compile(net) if self.compiled else net
        self.eval_net = torch.compile(model) if self.compiled else model
        self.data: TrainData | None = None

    # -- data ----------------------------------------------------------------------------------

    def set_data(self, data: TrainData) -> None:
        self.data = data
        if data.streamed:  # image folders, shards: decoded batch by batch on the host
            self.data_on_device = self.settings["data_on_device"] = False
        self.mean = torch.as_tensor(data.mean, dtype=torch.float32, device=self.dev)
        self.std = torch.as_tensor(data.std, dtype=torch.float32, device=self.dev)
        if self.data_on_device:
            self.splits = {
                name: (torch.from_numpy(x).to(self.dev), torch.from_numpy(y).to(self.dev))
                for name, (x, y) in (("train", data.split("train")), ("test", data.split("test")))
            }

    def _to_device(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a))
        if self.dev.type == "cuda":
            return t.pin_memory().to(self.dev, non_blocking=True)
        return t

    def _inputs(self, batch: Batch, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """NCHW float32 images (channels_last strides when asked) and labels on the device."""
        assert self.data is not None, "set_data() first"
        if batch.images is not None:  # a streamed uint8 batch, normalised on the device
            x = self._to_device(batch.images).float() / 255.0
            x = ((x - self.mean) / self.std).permute(0, 3, 1, 2)
            if not self.channels_last:
                x = x.contiguous()
            return x, self._to_device(batch.labels)
        if not self.data_on_device:
            x_np, y_np = host_batch(self.data, batch, split)
            x = torch.from_numpy(x_np).permute(0, 3, 1, 2)
            y = torch.from_numpy(y_np)
            x = x.contiguous(
                memory_format=torch.channels_last if self.channels_last else torch.contiguous_format
            )
            return x.to(self.dev, non_blocking=True), y.to(self.dev, non_blocking=True)
        x_all, y_all = self.splits[split]
        index = self._to_device(batch.index)
        x = x_all[index]  # NHWC
        if batch.top is not None:
            x = self._crop_flip(x, batch)
        x = x.float()
        if x_all.dtype == torch.uint8:
            x = x / 255.0
        x = ((x - self.mean) / self.std).permute(0, 3, 1, 2)  # an NHWC tensor seen as NCHW
        if not self.channels_last:
            x = x.contiguous()
        return x, y_all[index]

    def _crop_flip(self, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        """:func:`rescompile.harness.runtime.crop_flip` on the device (NHWC)."""
        pad = self.data.pad
        n, h, w, _ = x.shape
        padded = F.pad(x, (0, 0, pad, pad, pad, pad))
        top, left = self._to_device(batch.top), self._to_device(batch.left)
        flip = self._to_device(batch.flip)
        rows = top[:, None] + torch.arange(h, device=self.dev)
        cols = left[:, None] + torch.arange(w, device=self.dev)
        cols = torch.where(flip[:, None], cols.flip(1), cols)
        n_idx = torch.arange(n, device=self.dev)[:, None, None]
        return padded[n_idx, rows[:, :, None], cols[:, None, :]]

    # -- steps ---------------------------------------------------------------------------------

    def train_step(self, batch: Batch, lr: float) -> torch.Tensor:
        x, y = self._inputs(batch, "train")
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.dropout:  # per-step randomness from (seed, step): a resumed run draws the same
            torch.manual_seed(hash((self.options.seed, batch.step)) & 0x7FFF_FFFF_FFFF_FFFF)
        if not self.model.training:  # evaluate() leaves the model in eval mode
            self.net.train()
        with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.net(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.options.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.options.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.options.clip_grad_norm)
        self.optimizer.step()
        correct = (logits.detach().argmax(1) == y).sum()
        return torch.stack([loss.detach().float(), correct.float()])

    def collect(self, handles: Sequence[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        if not handles:
            return np.zeros(0), np.zeros(0, np.int64)
        stats = torch.stack(list(handles)).double()
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(stats)
            stats[:, 0] /= self.world_size
        out = stats.cpu().numpy()
        return out[:, 0], np.rint(out[:, 1]).astype(np.int64)

    @torch.no_grad()
    def evaluate(self, split: str, batch_size: int) -> tuple[float, int, int]:
        """Batches of one size: a compiled model gets its last batch padded (with copies of an
        example, not counted), so that no split recompiles it for a new shape."""
        assert self.data is not None, "set_data() first"
        n = len(self.data.split(split)[1])
        mine = np.arange(self.rank, n, self.world_size)
        size = max(1, min(batch_size, len(mine)))
        self.model.eval()
        totals = torch.zeros(3, dtype=torch.float64, device=self.dev)
        for start in range(0, len(mine), size):
            index = mine[start : start + size]
            count = len(index)
            if self.compiled and count < size:
                index = np.concatenate([index, np.full(size - count, index[0])])
            x, y = self._inputs(Batch(-1, index), split)
            with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.bf16):
                logits = self.eval_net(x).float()[:count]
            y = y[:count]
            totals[0] += F.cross_entropy(logits, y, reduction="sum").double()
            totals[1] += (logits.argmax(1) == y).sum()
            totals[2] += count
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(totals)
        loss, correct, count = totals.tolist()
        return loss, int(correct), int(count)

    @torch.no_grad()
    def predict(self, split: str, batch_size: int) -> Iterator[np.ndarray]:
        """The float32 logits of a whole split, batch by batch in the split's order, in
        evaluation mode (a compiled model gets its last batch padded, the padding dropped)."""
        assert self.data is not None, "set_data() first"
        n = len(self.data.split(split)[1])
        size = max(1, min(batch_size, n))
        self.model.eval()
        for start in range(0, n, size):
            index = np.arange(start, min(start + size, n))
            count = len(index)
            if self.compiled and count < size:
                index = np.concatenate([index, np.full(size - count, index[0])])
            x, _ = self._inputs(Batch(-1, index), split)
            with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.bf16):
                logits = self.eval_net(x).float()[:count]
            yield logits.cpu().numpy()

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        out = {k: _numpy(v) for k, v in self.model.state_dict().items()}
        for name, p in self.params.items():
            buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                out[f"optim/{name}.momentum"] = _numpy(buf)
        return out

    def load_state_dict(self, tensors: Mapping[str, np.ndarray]) -> None:
        model, momentum = split_state(tensors)
        counters = {k for k in model if k.endswith(".num_batches_tracked")}
        check_compatible(
            {k: v for k, v in model.items() if k not in counters}, self.expected, ignore_prefix=None
        )
        own = self.model.state_dict()
        with torch.no_grad():
            for key, value in own.items():
                if key in model:
                    array = np.array(model[key]).reshape(value.shape)  # a writable copy
                    value.copy_(torch.from_numpy(array).to(value.dtype))
        for name, array in momentum.items():
            if name not in self.params:
                raise ValueError(f"momentum buffer for unknown parameter {name!r}")
            p = self.params[name]
            buf = torch.from_numpy(np.array(array, dtype=np.float32)).to(self.dev)
            if buf.shape != p.shape:
                raise ValueError(
                    f"momentum buffer {name} has shape {tuple(buf.shape)}, "
                    f"the parameter {tuple(p.shape)}"
                )
            buf = (
                buf.to(memory_format=torch.channels_last)
                if (self.channels_last and p.dim() == 4)
                else buf
            )
            self.optimizer.state[p]["momentum_buffer"] = buf

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` in rank order (the runtime's contract): a collective."""
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def close(self, *, aborted: bool = False) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                if not aborted:  # rank 0 may still be writing the summary and the plot
                    dist.barrier()
                dist.destroy_process_group()


def _decay_groups(
    params: Mapping[str, nn.Parameter], decay: Mapping[str, float]
) -> list[dict[str, object]]:
    """SGD parameter groups, one per weight decay value, in the model's parameter order."""
    groups: dict[float, list[nn.Parameter]] = {}
    for name, p in params.items():
        groups.setdefault(decay[name], []).append(p)
    return [{"params": ps, "weight_decay": wd} for wd, ps in groups.items()]


def _numpy(t: torch.Tensor) -> np.ndarray:
    """A C-contiguous numpy copy in the logical (NCHW) layout, whatever the memory format."""
    return np.array(t.detach().to("cpu").contiguous().numpy(), order="C")  # keeps 0-d as 0-d
