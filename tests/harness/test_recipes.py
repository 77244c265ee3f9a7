"""Recipes as YAML files: the library's, a user's, their errors, and every optimiser option
implemented identically by both backends.

Expected values are the published recipes as their authors wrote them (He et al. 2016 secs. 3.4
and 4.2; torchvision's references/classification README for ResNet-50) and torch's own
``LinearLR``, ``clip_grad_norm_`` and ``SGD``; the flax side is compared with torch.
"""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest

from rescompile.errors import SpecError
from rescompile.harness.recipes import library_names, load_recipe, recipe_from_file
from rescompile.harness.schedules import RecipeError, plan_training
from tests.clirun import run_cli
from tests.harness.common import DIGITS, ROOT, TINY

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")


# -- the library -------------------------------------------------------------------------------


def test_the_library_holds_the_papers_fast_and_torchvisions_resnet50_recipes():
    assert set(library_names()) >= {"paper-cifar", "paper-imagenet", "fast", "torchvision-resnet50"}
    cifar = load_recipe("paper-cifar")  # He et al. 2016, sec. 4.2
    assert (cifar.batch_size, cifar.lr, cifar.momentum, cifar.weight_decay) == (128, 0.1, 0.9, 1e-4)
    assert (cifar.length, cifar.unit, cifar.milestones) == (64_000, "steps", (32_000, 48_000))
    assert (cifar.warmup, cifar.warmup_lr, cifar.warmup_deep) == (400, 0.01, True)
    imagenet = load_recipe("paper-imagenet")  # sec. 3.4, every 30 epochs as torchvision's StepLR
    assert (imagenet.batch_size, imagenet.lr, imagenet.length, imagenet.unit) == (
        256,
        0.1,
        90,
        "epochs",
    )
    assert imagenet.milestones == (30, 60)
    # torchvision: 8 x --batch-size 128 --lr 0.5 --lr-scheduler cosineannealinglr
    # --lr-warmup-epochs 5 --lr-warmup-method linear (--lr-warmup-decay 0.01) --epochs 600
    # --weight-decay 0.00002 --norm-weight-decay 0.0 --label-smoothing 0.1
    tv = load_recipe("torchvision-resnet50")
    assert (tv.batch_size, tv.lr, tv.momentum, tv.schedule) == (1024, 0.5, 0.9, "cosine")
    assert (tv.length, tv.unit, tv.warmup, tv.warmup_factor) == (600, "epochs", 5, 0.01)
    assert (tv.weight_decay, tv.norm_weight_decay, tv.label_smoothing) == (2e-5, 0.0, 0.1)
    # --model-ema: decay 0.99998 every 32 steps, adjusted by train.py for 8 x 128 and 600 epochs
    assert tv.ema_every == 32
    assert tv.ema_decay == pytest.approx(1 - 2e-5 * (8 * 128 * 32 / 600), abs=1e-8)


def test_a_users_file_is_read_like_the_library_one(tmp_path):
    mine = tmp_path / "my-fast.yaml"
    shutil.copy(ROOT / "rescompile" / "recipes" / "fast.yaml", mine)
    assert load_recipe(str(mine)) == replace(load_recipe("fast"), name="my-fast")
    with pytest.raises(RecipeError, match="torchvision-resnet50"):
        load_recipe("no-such-recipe")


def test_torchvision_warmup_and_step_schedules_per_step():
    tv = load_recipe("torchvision-resnet50")
    plan = plan_training(tv, steps_per_epoch=10)  # 6000 steps, 50 of them warm-up
    assert plan.warmup_steps == 50
    # torch's LinearLR(start_factor=0.01, total_iters=50), stepped once per step
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=50)
    for step in range(50):
        assert plan.lr(step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()
    assert plan.lr(50) == pytest.approx(0.5)
    assert plan.lr(5999) < 1e-6


BAD = """\
batch_size: 0
epochs: 5
lr: 0.1
schedual: {kind: cosine}
schedule:
  kind: multistep
  milestones: [2, 7]
warmup: {length: 1, lr: 0.01, start_factor: 0.1}
"""


def test_a_bad_recipe_file_gets_every_problem_at_its_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    with pytest.raises(SpecError) as info:
        recipe_from_file(bad)
    lines = [str(d) for d in info.value.diagnostics]
    assert lines == [
        f"{bad}:1:13: batch_size: Input should be greater than 0, got 0",
        f"{bad}:4:1: schedual: unknown field 'schedual'; did you mean 'schedule'?",
        f"{bad}:8:9: warmup: a warm-up is linear (start_factor) or constant (lr), not both",
    ]
    bad.write_text(BAD.replace("batch_size: 0", "batch_size: 8").replace("schedual", "# "))
    bad.write_text(bad.read_text().replace(", lr: 0.01", ""))
    with pytest.raises(SpecError, match=r"bad.yaml:1:1: milestone 7 is not within the run's 5"):
        recipe_from_file(bad)
    r = run_cli("train", str(DIGITS), "--data", "digits", "--recipe", str(bad))
    assert r.code == 1 and "milestone 7" in r.stderr and "Traceback" not in r.stderr


def test_the_training_crop_is_a_recipe_setting(tmp_path):
    """paper-imagenet crops image folders as the paper does (sec. 3.4, scale augmentation); the
    other library recipes keep torchvision's RandomResizedCrop; a file may choose either, and
    nothing else."""
    assert load_recipe("paper-imagenet").augmentation == "scale_jitter"
    for name in set(library_names()) - {"paper-imagenet"}:
        assert load_recipe(name).augmentation == "random_resized_crop", name
    mine = tmp_path / "mine.yaml"
    text = (ROOT / "rescompile" / "recipes" / "fast.yaml").read_text()
    mine.write_text(text + "augmentation: scale_jitter\n")
    assert load_recipe(str(mine)).augmentation == "scale_jitter"
    mine.write_text(text + "augmentation: zoom\n")
    line = len(text.splitlines()) + 1
    with pytest.raises(SpecError) as info:
        recipe_from_file(mine)
    assert [str(d) for d in info.value.diagnostics] == [
        f"{mine}:{line}:15: augmentation: Input should be 'random_resized_crop' or "
        "'scale_jitter', got 'zoom'"
    ]


# -- the options, identical in both backends ---------------------------------------------------

OPTIONS = {
    "weight decay": dict(weight_decay=0.05),
    "no decay on norms": dict(weight_decay=0.05, norm_weight_decay=0.0),
    "bias decay": dict(weight_decay=0.05, bias_weight_decay=0.5),
    "nesterov": dict(nesterov=True, momentum=0.9),
    "label smoothing": dict(label_smoothing=0.3),
    "gradient clipping": dict(clip_grad_norm=0.05),
}


@pytest.mark.parametrize("option", OPTIONS)
def test_each_optimiser_option_is_the_same_update_in_both_backends_in_float64(option):
    """torch.optim.SGD with per-group weight decay and clip_grad_norm_ against the flax
    runtime's transformation (clip, decay, optax.trace), on a parameter tree named like a
    model's (conv, BatchNorm scale and shift, fc weight and bias), float64, five steps."""
    import jax.numpy as jnp
    import optax
    from rescompile.backends.flax.training import _clip_and_decay
    from rescompile.backends.torch.training import _decay_groups

    from rescompile.harness.runtime import RuntimeOptions

    opts = RuntimeOptions(**{"momentum": 0.9, "weight_decay": 0.0, **OPTIONS[option]})
    rng = np.random.default_rng(0)
    shapes = {"conv1.weight": (4, 3, 3, 3), "bn1.weight": (4,), "bn1.bias": (4,)}
    shapes |= {"fc.weight": (2, 4), "fc.bias": (2,)}
    init = {k: rng.normal(size=s) for k, s in shapes.items()}
    grads = [{k: rng.normal(size=s) for k, s in shapes.items()} for _ in range(5)]
    decay = {}  # what runtime.weight_decay_of gives for these names (bn1 a norm layer)
    for key in shapes:
        module, _, name = key.rpartition(".")
        if name == "bias" and opts.bias_weight_decay is not None:
            decay[key] = opts.bias_weight_decay
        elif module == "bn1" and opts.norm_weight_decay is not None:
            decay[key] = opts.norm_weight_decay
        else:
            decay[key] = opts.weight_decay

    params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in init.items()}
    sgd = torch.optim.SGD(
        _decay_groups(params, decay), lr=0.1, momentum=opts.momentum, nesterov=opts.nesterov
    )
    for g in grads:
        for k, p in params.items():
            p.grad = torch.tensor(g[k])
        if opts.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(list(params.values()), opts.clip_grad_norm)
        sgd.step()

    with jax.enable_x64(True):
        tx = optax.chain(
            _clip_and_decay(decay, opts.clip_grad_norm),
            optax.trace(decay=opts.momentum, nesterov=opts.nesterov),
        )
        theta = {k: jnp.asarray(v) for k, v in init.items()}
        state = tx.init(theta)
        for g in grads:
            updates, state = tx.update({k: jnp.asarray(v) for k, v in g.items()}, state, theta)
            theta = jax.tree.map(lambda p, u: p - 0.1 * u, theta, updates)
        for k, p in params.items():
            got, want = np.asarray(theta[k]), p.detach().numpy()
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14, err_msg=k)


@pytest.fixture(scope="module")
def tiny():
    from rescompile.compiler import compile_spec

    return compile_spec(DIGITS, TINY)[1]


def _three_steps(backend: str, graph, **options) -> dict[str, np.ndarray]:
    from rescompile.backends import load_backend

    from rescompile.harness.runtime import Batch, RuntimeOptions, TrainData, make_runtime

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(64, 8, 8, 1), dtype=np.uint8)
    y = rng.integers(0, 10, size=64)
    data = TrainData(x, y, x, y, np.array([0.5], np.float32), np.array([0.29], np.float32))
    opts = RuntimeOptions(**{"seed": 0, "precision": "fp32", "compile": False, **options})
    rt = make_runtime(backend, graph, load_backend(backend).emit(graph), opts)
    rt.set_data(data)
    if backend == "flax":  # the same starting weights
        rt.load_state_dict(_three_steps.torch_start)  # type: ignore[attr-defined]
    else:
        _three_steps.torch_start = rt.state_dict()  # type: ignore[attr-defined]
    for step in range(3):
        rt.train_step(Batch(step, np.arange(16 * step, 16 * step + 16)), 0.1)
    return rt.state_dict()


@pytest.mark.parametrize(
    "option", ["no decay on norms", "bias decay", "label smoothing", "gradient clipping"]
)
def test_the_runtimes_apply_each_option_alike(tiny, option):
    """Three float32 steps of the whole model in each runtime (torch's start loaded into flax)
    agree to float32 accuracy; without the option the weights differ by far more, so the
    agreement is the option's, not an accident."""
    opts = {"weight_decay": 0.05, "momentum": 0.9, **OPTIONS[option]}
    torch_state = _three_steps("torch", tiny, **opts)
    flax_state = _three_steps("flax", tiny, **opts)
    plain = {"weight_decay": 0.05, "momentum": 0.9}
    baseline = _three_steps("torch", tiny, **plain)
    moved = 0.0
    for key, want in torch_state.items():
        if key.endswith("num_batches_tracked"):
            continue
        np.testing.assert_allclose(flax_state[key], want, rtol=1e-3, atol=1e-5, err_msg=key)
        moved = max(moved, float(np.max(np.abs(baseline[key] - want))))
    assert moved > 1e-3  # the option changed the weights 100x beyond the tolerance


def test_one_cycle_and_step_every_from_yaml(tmp_path):
    one = tmp_path / "one.yaml"
    one.write_text(
        "batch_size: 64\nsteps: 100\nlr: 0.4\n"
        "schedule: {kind: one_cycle, pct_start: 0.25, div_factor: 10, final_div_factor: 100}\n"
    )
    plan = plan_training(load_recipe(str(one)), steps_per_epoch=10)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=0.4,
        total_steps=100,
        pct_start=0.25,
        div_factor=10,
        final_div_factor=100,
        cycle_momentum=False,
    )
    for step in range(100):
        assert plan.lr(step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9), step
        opt.step()
        sched.step()

    every = tmp_path / "every.yaml"
    every.write_text(
        "batch_size: 8\nepochs: 10\nlr: 1.0\nschedule: {kind: step, every: 4, gamma: 0.5}\n"
    )
    plan = plan_training(load_recipe(str(every)), steps_per_epoch=3)
    # torch's StepLR(step_size=4 epochs, gamma=0.5), stepped per epoch of 3 steps
    assert [plan.lr(3 * e) for e in range(10)] == [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25]


def test_an_unknown_nested_key_is_matched_against_its_own_section(tmp_path):
    """A suggestion comes from the fields of the section the key is in, and is never the
    unknown key itself (``warmup: {steps: 10}`` once suggested 'steps', a top-level field)."""
    bad = tmp_path / "nested.yaml"
    bad.write_text(
        "batch_size: 8\nsteps: 20\nlr: 0.1\nschedule: {kind: cosine, final_rl: 0.0}\n"
        "warmup: {length: 2, steps: 10}\nema: {decy: 0.9}\n"
    )
    with pytest.raises(SpecError) as info:
        recipe_from_file(bad)
    lines = [str(d) for d in info.value.diagnostics]
    assert (
        f"{bad}:4:26: schedule.final_rl: unknown field 'final_rl'; did you mean 'final_lr'?"
        in lines
    )
    assert f"{bad}:5:21: warmup.steps: unknown field 'steps'" in lines
    assert f"{bad}:6:7: ema.decy: unknown field 'decy'; did you mean 'decay'?" in lines
