"""A recipe's exponential moving average of the weights (``ema: {decay, every}``).

References: torch's own ``AveragedModel`` with ``get_ema_multi_avg_fn`` (what torchvision's
``ExponentialMovingAverage`` is), and the average recomputed here from the run's per-step
checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rescompile.harness.checkpoint import list_checkpoints, load_checkpoint
from rescompile.harness.ema import WeightAverage
from rescompile.harness.loop import TrainConfig, train
from rescompile.harness.metrics import read_metrics
from tests.harness.common import DIGITS, tiny_config

torch = pytest.importorskip("torch")


def test_the_average_is_torchs_averaged_model_with_buffers():
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    reference = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    ours = WeightAverage(0.9)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(5):
        net(torch.randn(8, 3, 6, 6)).square().mean().backward()  # moves the BN statistics too
        opt.step()
        opt.zero_grad()
        reference.update_parameters(net)
        ours.update({k: v.detach().numpy().copy() for k, v in net.state_dict().items()})
    want = {k.removeprefix("module."): v for k, v in reference.state_dict().items()}
    for key, value in ours.tensors.items():
        if key.endswith("num_batches_tracked"):
            continue
        np.testing.assert_allclose(value, want[key].numpy(), rtol=1e-6, atol=1e-7, err_msg=key)


def _recipe(tmp_path: Path, decay: float) -> str:
    path = tmp_path / "ema.yaml"
    path.write_text(
        f"batch_size: 32\nsteps: 8\nlr: 0.1\nweight_decay: 1.0e-4\n"
        f"schedule: {{kind: cosine}}\nema: {{decay: {decay}, every: 2}}\n"
    )
    return str(path)


@pytest.mark.parametrize("backend", ["torch", "flax"])
def test_a_run_keeps_evaluates_and_checkpoints_the_average(tmp_path, backend):
    run = tmp_path / "run"
    config = tiny_config(
        run,
        backend=backend,
        recipe=_recipe(tmp_path, 0.7),
        eval_every=4,
        ckpt_every=1,
        keep=20,
    )
    summary = train(config)
    # recomputed from the per-step checkpoints: every 2 steps, first a copy, then a lerp
    average: dict[str, np.ndarray] = {}
    for ckpt in list_checkpoints(run):
        tensors, meta = load_checkpoint(ckpt)
        step = meta["state"]["step"]
        if step == 0 or step % 2:
            continue
        model = {k: v for k, v in tensors.items() if not k.startswith("optim/")}
        if not average:
            average = {k: v.astype(np.float64) for k, v in model.items()}
        else:
            average = {k: a + 0.3 * (model[k] - a) for k, a in average.items()}
    final, _ = load_checkpoint(run)
    for key, value in average.items():
        if key.endswith("num_batches_tracked"):
            continue
        np.testing.assert_allclose(final[f"optim/{key}.ema"], value, rtol=1e-5, atol=1e-6)
    assert not np.allclose(final["fc.weight"], final["optim/fc.weight.ema"])  # not a copy
    evals = [r for r in read_metrics(run) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [4, 8]
    assert all(0 <= r["ema_test_error"] <= 1 and r["ema_test_loss"] > 0 for r in evals)
    assert summary["final_ema_test_error"] == evals[-1]["ema_test_error"]

    # rescompile eval / weights --ema use the same average: eval equals the run's own
    # evaluation of it, weights writes it as the model's state_dict
    from safetensors.numpy import load_file

    from rescompile.harness.evaluate import evaluate
    from tests.clirun import run_cli

    e = evaluate(run, ema=True)
    assert e.ema and e.top1_error == pytest.approx(evals[-1]["ema_test_error"], abs=1e-12)
    assert e.loss == pytest.approx(evals[-1]["ema_test_loss"], rel=1e-5)
    plain = evaluate(run)
    assert plain.top1_error == pytest.approx(evals[-1]["test_error"], abs=1e-12)
    assert plain.loss != pytest.approx(e.loss, rel=1e-6)  # another set of weights
    out = tmp_path / "ema.safetensors"
    r = run_cli("weights", str(run), "-o", str(out), "--ema")
    assert r.code == 0 and "the weight average" in r.stderr
    written = load_file(out)
    assert sorted(written) == sorted(k for k in final if not k.startswith("optim/"))
    for key, value in written.items():
        np.testing.assert_array_equal(value, final[f"optim/{key}.ema"], err_msg=key)


class _Stop(KeyboardInterrupt):
    pass


def test_the_average_resumes_bitwise(tmp_path):
    def config(out: Path) -> TrainConfig:
        return tiny_config(out, recipe=_recipe(tmp_path, 0.9), eval_every=4)

    train(config(tmp_path / "a"))

    def stop(step: int) -> None:
        if step == 5:
            raise _Stop

    with pytest.raises(_Stop):
        train(config(tmp_path / "b"), on_step=stop)
    train(resume=tmp_path / "b")
    a, _ = load_checkpoint(tmp_path / "a")
    b, _ = load_checkpoint(tmp_path / "b")
    assert any(k.endswith(".ema") for k in a) and sorted(a) == sorted(b)
    assert [k for k in a if not np.array_equal(a[k], b[k])] == []
    assert (
        read_metrics(tmp_path / "a")[-1]["ema_test_error"]
        == (read_metrics(tmp_path / "b")[-1]["ema_test_error"])
    )


def test_ema_of_a_run_without_an_average_is_one_clear_line(tmp_path):
    from tests.clirun import run_cli

    run = tmp_path / "run"
    train(tiny_config(run, recipe="fast", steps=2, batch_size=16))
    for command in (
        ["eval", str(run), "--ema"],
        ["weights", str(run), "-o", str(tmp_path / "w"), "--ema"],
    ):
        r = run_cli(*command)
        assert r.code == 1 and "holds no weight average" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli("export", DIGITS, "--ema", "-o", str(tmp_path / "m.onnx"))
    assert r.code == 1 and "--ema exports a run's weight average" in r.stderr
