"""After training: `rescompile eval`, `rescompile export` and `rescompile weights` on tiny runs
made here (digits ResNet-8, a few steps, both backends), as a user runs them.

Golden values are the run's own records (summary.json and metrics.jsonl, written by the
training loop's evaluation, not by the commands under test) and independent torch computations
on the run's own model.py (torch.topk, nn.Module.load_state_dict, torch forward passes).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.harness.common import DIGITS, ROOT, SMALL, TINY, cli, set_args

torch = pytest.importorskip("torch")

# 12 steps, evaluated and checkpointed at steps 6 and 12
RUN = [*SMALL, "--steps", "12", "--eval-every", "6", "--ckpt-every", "6"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, env) -> dict[str, Path]:
    """One tiny run per backend."""
    base = tmp_path_factory.mktemp("runs")
    out = {}
    for backend in ("torch", "flax"):
        run = base / backend
        p = cli("train", *RUN, "--backend", backend, "--out", str(run), env=env)
        assert p.returncode == 0, p.stderr
        out[backend] = run
    return out


def evaluation(*args: str, env: dict[str, str]) -> dict:
    p = cli("eval", *args, "--format", "json", env=env)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def torch_model(run: Path):
    """The PyTorch model of the run: its own model.py for a torch run; for a flax run, the
    PyTorch source emitted from the run's resolved spec (spec.json)."""
    from rescompile.backends.torch import emit
    from rescompile.backends.torch.tools import load_module

    from rescompile import compile_spec

    config = json.loads((run / "config.json").read_text())
    if config["backend"] == "torch":
        source = (run / "model.py").read_text()
    else:
        source = emit(compile_spec(run / "spec.json")[1])
    return load_module(source, config["class_name"])()


def trained_torch_model(run: Path, ckpt: str = "ckpt-000012"):
    """The run's PyTorch model with the checkpoint's model tensors, independently of
    rescompile's loaders (safetensors + nn.Module.load_state_dict)."""
    from safetensors.torch import load_file

    model = torch_model(run)
    tensors = load_file(run / f"{ckpt}.safetensors")
    model.load_state_dict(
        {k: v for k, v in tensors.items() if not k.startswith("optim/")}, strict=True
    )
    return model.eval()


# -- rescompile eval --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "flax"])
def test_eval_of_a_run_equals_its_own_final_evaluation(runs, env, backend):
    """Same backend, same data, same batches: the test error is the same count of mistakes
    and the loss the same up to float32 summation order (the loop sums per-batch float32
    losses, eval sums float64 ones): relative 1e-5."""
    run = runs[backend]
    summary = json.loads((run / "summary.json").read_text())
    e = evaluation(str(run), env=env)
    assert e["backend"] == backend and e["step"] == 12 and e["split"] == "test"
    assert e["checkpoint"].endswith("ckpt-000012.safetensors")
    assert e["top1_error"] == pytest.approx(summary["final_test_error"], abs=1e-12)
    assert e["loss"] == pytest.approx(summary["final_test_loss"], rel=1e-5)
    assert 0 <= e["top5_error"] <= e["top1_error"] <= 1
    assert e["images"] == 450 and e["images_per_s"] > 0


@pytest.mark.parametrize("backend", ["torch", "flax"])
def test_eval_of_an_older_checkpoint_equals_its_logged_evaluation(runs, env, backend):
    run = runs[backend]
    logged = next(
        r
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if r["kind"] == "eval" and r["step"] == 6
    )
    e = evaluation(str(run / "ckpt-000006.safetensors"), env=env)
    assert e["step"] == 6
    assert e["top1_error"] == pytest.approx(logged["test_error"], abs=1e-12)
    assert e["loss"] == pytest.approx(logged["test_loss"], rel=1e-5)


def test_top5_error_matches_torch_topk_on_the_runs_model(runs, env):
    """An independent computation: the run's model.py with the checkpoint's weights, the digits
    test split normalised with the training split's statistics, torch.topk."""
    from rescompile.harness.data import load_dataset, normalize

    run = runs["torch"]
    model = trained_torch_model(run)
    d = load_dataset("digits")
    x = torch.from_numpy(normalize(d.x_test, d.mean, d.std)).permute(0, 3, 1, 2)
    with torch.no_grad():
        logits = model(x)
    y = torch.from_numpy(d.y_test).long()
    top5 = (logits.topk(5, dim=1).indices == y[:, None]).any(dim=1).float().mean().item()
    top1 = (logits.argmax(1) == y).float().mean().item()
    loss = torch.nn.functional.cross_entropy(logits.double(), y).item()
    e = evaluation(str(run), env=env)
    assert e["top5_error"] == pytest.approx(1 - top5, abs=1e-6)
    assert e["top1_error"] == pytest.approx(1 - top1, abs=1e-6)
    assert e["loss"] == pytest.approx(loss, rel=1e-5)


def test_either_backend_evaluates_the_others_checkpoint(runs, env):
    """Cross-backend: different kernels, float32: the loss within 1e-4 relative, at most one
    of 450 near-tie predictions may flip."""
    for trained, other in (("torch", "flax"), ("flax", "torch")):
        own = evaluation(str(runs[trained]), env=env)
        cross = evaluation(str(runs[trained]), "--backend", other, env=env)
        assert cross["backend"] == other
        assert cross["loss"] == pytest.approx(own["loss"], rel=1e-4)
        assert abs(cross["top1_error"] - own["top1_error"]) <= 1 / 450 + 1e-12


def test_eval_table_and_a_checkpoint_outside_its_run(runs, env, tmp_path):
    run = runs["torch"]
    p = cli("eval", str(run), env=env)
    assert p.returncode == 0, p.stderr
    for word in ("top-1 error", "top-5 error", "images/s", "ckpt-000012"):
        assert word in p.stdout
    for suffix in (".safetensors", ".json"):
        shutil.copy(run / f"ckpt-000012{suffix}", tmp_path / f"ckpt-000012{suffix}")
    alone = str(tmp_path / "ckpt-000012.safetensors")
    p = cli("eval", alone, env=env)
    assert p.returncode == 1 and "--data" in p.stderr and "Traceback" not in p.stderr
    e = evaluation(alone, "--data", "digits", "--batch-size", "256", env=env)
    summary = json.loads((run / "summary.json").read_text())
    assert e["top1_error"] == pytest.approx(summary["final_test_error"], abs=1e-12)
    e = evaluation(alone, "--data", "digits", "--split", "train", env=env)
    assert e["split"] == "train" and e["top1_error"] == pytest.approx(
        summary["final_train_error"], abs=1e-12
    )


def test_eval_bad_input_is_one_line(tmp_path, env):
    for args in ([str(tmp_path)], [str(tmp_path / "nothing.safetensors")]):
        p = cli("eval", *args, env=env)
        assert p.returncode == 1 and "Traceback" not in p.stderr
        assert p.stderr.strip().count("\n") == 0, p.stderr


# -- rescompile export ------------------------------------------------------------------------


def onnx_logits(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def digits_test_inputs(n: int = 64) -> np.ndarray:
    from rescompile.harness.data import load_dataset, normalize

    d = load_dataset("digits")
    return np.ascontiguousarray(normalize(d.x_test[:n], d.mean, d.std).transpose(0, 3, 1, 2))


@pytest.mark.parametrize("backend", ["torch", "flax"])
def test_export_of_a_run_carries_its_trained_weights(runs, env, tmp_path, backend):
    """onnxruntime on the exported file vs PyTorch on the run's model.py loaded (here, with
    safetensors + load_state_dict) with the latest checkpoint, on 64 digits test images.
    onnxruntime folds BatchNorm and reorders float32 sums: 1e-4 relative to the largest logit.
    A randomly initialised model is nowhere near (checked, so the comparison can fail)."""
    pytest.importorskip("onnxruntime")
    run, out = runs[backend], tmp_path / "model.onnx"
    p = cli("export", str(run), "-o", str(out), env=env)
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip().splitlines() == [p.stderr.strip()]  # one line: no exporter noise
    assert "ckpt-000012" in p.stderr and p.stdout == ""
    x = digits_test_inputs()
    with torch.no_grad():
        want = trained_torch_model(run)(torch.from_numpy(x)).numpy()
    got = onnx_logits(out, x)
    bound = 1e-4 * max(1.0, float(np.abs(want).max()))
    assert np.abs(got - want).max() <= bound
    random = tmp_path / "random.onnx"
    p = cli("export", str(run / "spec.json"), "-o", str(random), env=env)
    assert p.returncode == 0 and "randomly initialised" in p.stderr
    assert np.abs(onnx_logits(random, x) - want).max() > 100 * bound


def test_export_a_spec_with_a_checkpoint_and_refusals(runs, env, tmp_path):
    pytest.importorskip("onnxruntime")
    run, out = runs["torch"], tmp_path / "m.onnx"
    older = run / "ckpt-000006.safetensors"
    p = cli(
        "export",
        str(run / "spec.json"),
        "--checkpoint",
        str(older),
        "-o",
        str(out),
        "--opset",
        "17",
        env=env,
    )
    assert p.returncode == 0, p.stderr
    x = digits_test_inputs(16)
    with torch.no_grad():
        want = trained_torch_model(run, "ckpt-000006")(torch.from_numpy(x)).numpy()
    assert np.abs(onnx_logits(out, x) - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))
    # a checkpoint of another spec, --set on a run, a missing checkpoint: one line, exit 1
    for args in (
        [str(run / "spec.json"), "--set", "stages.0.width=8", "--checkpoint", str(older)],
        [str(run), "--set", "num_classes=3"],
        [str(run), "--checkpoint", str(tmp_path / "none.safetensors")],
    ):
        p = cli("export", *args, "-o", str(tmp_path / "bad.onnx"), env=env)
        assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
        assert p.stderr.strip().splitlines()[-1].startswith("error:")
        assert not (tmp_path / "bad.onnx").exists()


# -- rescompile weights -----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "flax"])
def test_weights_is_a_plain_state_dict_for_the_runs_model(runs, env, tmp_path, backend):
    from safetensors.numpy import load_file as load_numpy
    from safetensors.torch import load_file

    run, out = runs[backend], tmp_path / "model.safetensors"
    p = cli("weights", str(run), "-o", str(out), env=env)
    assert p.returncode == 0, p.stderr
    model = torch_model(run)  # a torch run's own model.py
    state = load_file(out)
    model.load_state_dict(state, strict=True)  # raises on a missing or an unexpected key
    ckpt = load_numpy(run / "ckpt-000012.safetensors")
    assert any(k.startswith("optim/") for k in ckpt)
    assert sorted(state) == sorted(k for k in ckpt if not k.startswith("optim/"))
    for key, value in state.items():
        assert np.array_equal(value.numpy(), ckpt[key]), key


# -- rescompile train --init-from --------------------------------------------------------------

FIXTURE = ROOT / "tests" / "fixtures" / "torchvision" / "state_dict_shapes.json"


def torchvision_resnet18_state_dict() -> dict[str, np.ndarray]:
    """torchvision's ResNet-18 state_dict layout (names and shapes from the committed fixture,
    recorded from torchvision itself), random values."""
    shapes = json.loads(FIXTURE.read_text())["models"]["resnet18"]["state_dict"]
    rng = np.random.default_rng(0)
    out = {}
    for key, shape in shapes:
        if key.endswith("num_batches_tracked"):
            out[key] = np.array(7, np.int64)
        elif key.endswith("running_var"):
            out[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            out[key] = (0.05 * rng.standard_normal(shape)).astype(np.float32)
    return out


@pytest.mark.parametrize(("backend", "kind"), [("torch", ".pth"), ("flax", ".safetensors")])
def test_a_torchvision_state_dict_fine_tunes_into_either_backend(
    env, tmp_path, write_cifar, backend, kind
):
    """ResNet-18 for 10 classes from a 1000-class torchvision state_dict: every tensor but the
    classifier is loaded, the classifier is re-initialised and the note says so. With lr 1e-12
    two SGD steps move no parameter by more than ~1e-12 x its gradient: 1e-6 absolute."""
    tv = torchvision_resnet18_state_dict()
    weights = tmp_path / f"resnet18{kind}"
    if kind == ".pth":
        torch.save({k: torch.from_numpy(v) for k, v in tv.items()}, weights)
    else:
        from safetensors.numpy import save_file

        save_file(tv, weights)
    data = write_cifar(10, n=8)
    run = tmp_path / "run"
    spec = str(ROOT / "specs" / "torchvision" / "resnet18.yaml")
    p = cli(
        "train",
        spec,
        "--set",
        "input.size=32",
        "--data",
        f"cifar10:{data}",
        "--batch-size",
        "8",
        "--steps",
        "2",
        "--lr",
        "1e-12",
        "--backend",
        backend,
        "--init-from",
        str(weights),
        "--out",
        str(run),
        env=env,
    )
    assert p.returncode == 1 and "num_classes=10" in p.stderr  # the spec has 1000 outputs
    p = cli(
        "train",
        spec,
        "--set",
        "input.size=32",
        "--set",
        "num_classes=10",
        "--data",
        f"cifar10:{data}",
        "--batch-size",
        "8",
        "--steps",
        "2",
        "--lr",
        "1e-12",
        "--backend",
        backend,
        "--init-from",
        str(weights),
        "--out",
        str(run),
        env=env,
    )
    assert p.returncode == 0, p.stderr
    note = json.loads((run / "config.json").read_text())["init_note"]
    assert "fc.weight" in note and "re-initialised" in note and "10 classes" in note
    assert "re-initialised" in p.stderr
    from safetensors.numpy import load_file

    trained = load_file(run / "ckpt-000002.safetensors")
    assert trained["fc.weight"].shape == (10, 512)
    assert not np.allclose(trained["fc.weight"], tv["fc.weight"][:10], atol=1e-3)
    loaded = [
        k
        for k in tv
        if not k.startswith("fc.")
        and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    ]
    assert len(loaded) == 60  # 20 convolutions (3 of them projections), 20 BN scales and shifts
    for key in loaded:
        np.testing.assert_allclose(trained[key], tv[key], rtol=0, atol=1e-6, err_msg=key)


def test_init_from_a_run_of_the_other_backend_and_refusals(runs, env, tmp_path):
    """A torch run started from the flax run's checkpoint: its weights, bitwise at step 0
    (checked through the parameters after two steps at lr 1e-12: 1e-6 absolute)."""
    from safetensors.numpy import load_file

    run = tmp_path / "run"
    p = cli(
        "train",
        *SMALL,
        "--steps",
        "2",
        "--lr",
        "1e-12",
        "--init-from",
        str(runs["flax"]),
        "--out",
        str(run),
        env=env,
    )
    assert p.returncode == 0, p.stderr
    assert "re-initialised" not in json.loads((run / "config.json").read_text())["init_note"]
    source = load_file(runs["flax"] / "ckpt-000012.safetensors")
    trained = load_file(run / "ckpt-000002.safetensors")
    for key in ("conv1.weight", "layer3.0.conv2.weight", "fc.weight", "fc.bias", "bn1.weight"):
        np.testing.assert_allclose(trained[key], source[key], rtol=0, atol=1e-6, err_msg=key)
    resnet18 = tmp_path / "r18.safetensors"
    from safetensors.numpy import save_file

    save_file(torchvision_resnet18_state_dict(), resnet18)
    for weights, message in (
        (resnet18, "do not fit the model"),
        (tmp_path / "none.pth", "no such file"),
    ):
        p = cli(
            "train",
            DIGITS,
            *set_args(TINY),
            "--data",
            "digits",
            "--steps",
            "2",
            "--init-from",
            str(weights),
            "--out",
            str(tmp_path / "bad"),
            env=env,
        )
        assert p.returncode == 1 and message in p.stderr and "Traceback" not in p.stderr
        assert p.stderr.strip().count("\n") == 0, p.stderr
