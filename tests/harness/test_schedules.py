"""Learning-rate schedules and recipes."""

from __future__ import annotations

import json
import math

import pytest

from rescompile.harness.schedules import (
    PAPER_WARMUP_DEPTH,
    RECIPES,
    RecipeError,
    cosine,
    get_recipe,
    one_cycle,
    plan_training,
    rescale_milestones,
    step_decay,
)


def test_step_decay_at_the_paper_milestones() -> None:
    lr = step_decay(0.1, [48_000, 32_000], gamma=0.1)
    values = {s: lr(s) for s in (0, 31_999, 32_000, 47_999, 48_000, 63_999)}
    assert values == pytest.approx(
        {0: 0.1, 31_999: 0.1, 32_000: 0.01, 47_999: 0.01, 48_000: 0.001, 63_999: 0.001}
    )


def test_step_decay_constant_warmup_like_resnet110() -> None:
    lr = step_decay(0.1, [32_000, 48_000], warmup_steps=400, warmup_lr=0.01)
    assert lr(0) == lr(399) == 0.01
    assert lr(400) == 0.1
    assert lr(32_000) == pytest.approx(0.01)


def test_step_decay_linear_warmup_without_warmup_lr() -> None:
    lr = step_decay(0.4, [], warmup_steps=4)
    assert [lr(s) for s in range(6)] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4])


def test_cosine() -> None:
    lr = cosine(1.0, total_steps=110, warmup_steps=10)
    assert lr(0) == pytest.approx(0.1)
    assert lr(9) == pytest.approx(1.0)
    assert lr(10) == pytest.approx(1.0)
    assert lr(60) == pytest.approx(0.5)
    assert lr(110) == pytest.approx(0.0) and lr(500) == pytest.approx(0.0)
    assert all(lr(s) >= lr(s + 1) for s in range(10, 110))


def test_one_cycle_matches_the_torch_definition() -> None:
    lr = one_cycle(1.0, total_steps=100, pct_start=0.3, div_factor=25, final_div_factor=1e4)
    assert lr(0) == pytest.approx(1.0 / 25)
    assert lr(29) == pytest.approx(1.0)  # peak at pct_start * total - 1
    assert lr(99) == pytest.approx(1.0 / 25 / 1e4)
    # halfway down the second phase: the cosine midpoint between peak and floor
    assert lr(64) == pytest.approx((1.0 + 4e-6) / 2)
    assert max(lr(s) for s in range(100)) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        one_cycle(1.0, 100, pct_start=1.5)


def test_paper_cifar_recipe() -> None:
    r = get_recipe("paper-cifar")
    assert (r.batch_size, r.lr, r.momentum, r.weight_decay) == (128, 0.1, 0.9, 1e-4)
    assert (r.length, r.unit, r.milestones) == (64_000, "steps", (32_000, 48_000))
    plain = plan_training(r, steps_per_epoch=390)
    assert plain.total_steps == 64_000 and plain.warmup_steps == 0
    assert plain.lr(0) == 0.1
    deep = plan_training(r, steps_per_epoch=390, warmup=110 >= PAPER_WARMUP_DEPTH)
    assert deep.warmup_steps == 400
    assert deep.lr(399) == 0.01 and deep.lr(400) == 0.1
    assert deep.lr(48_000) == pytest.approx(0.001)
    assert deep.epochs == pytest.approx(64_000 / 390)


def test_rescaling_to_user_steps_and_epochs() -> None:
    r = RECIPES["paper-cifar"]
    short = plan_training(r, steps_per_epoch=390, steps=1000, warmup=True)
    assert short.total_steps == 1000
    assert short.milestones == (500, 750)
    assert short.warmup_steps == round(400 * 1000 / 64_000)
    assert short.lr(499) == 0.1 and short.lr(500) == pytest.approx(0.01)
    by_epochs = plan_training(r, steps_per_epoch=100, epochs=2)
    assert (by_epochs.total_steps, by_epochs.milestones) == (200, (100, 150))
    assert rescale_milestones((30, 60), 90, 9) == (3, 6)


def test_epoch_recipes_convert_to_steps() -> None:
    imagenet = plan_training(get_recipe("paper-imagenet"), steps_per_epoch=10)
    assert (imagenet.total_steps, imagenet.milestones) == (900, (300, 600))
    assert imagenet.lr(299) == 0.1 and imagenet.lr(300) == pytest.approx(0.01)
    fast = plan_training(get_recipe("fast"), steps_per_epoch=10, epochs=5)
    assert fast.total_steps == 50
    assert fast.warmup_steps == round(10 * 50 / 300)  # 1 of 30 epochs, scaled
    assert fast.recipe.label_smoothing == 0.1
    assert fast.lr(49) < fast.lr(10)


def test_plan_errors() -> None:
    with pytest.raises(RecipeError, match="not both"):
        plan_training(RECIPES["fast"], 10, steps=5, epochs=1)
    with pytest.raises(RecipeError, match="smaller batch size"):
        plan_training(RECIPES["fast"], 0)
    with pytest.raises(RecipeError, match="unknown recipe 'adam'; choose one of: paper-cifar"):
        get_recipe("adam")


def test_plan_serializes_to_json() -> None:
    plan = plan_training(RECIPES["paper-cifar"], 390, steps=640, warmup=True)
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["schedule"]["kind"] == "StepDecay"
    assert data["milestones"] == [320, 480]
    assert data["recipe"]["name"] == "paper-cifar"
    assert math.isclose(data["schedule"]["warmup_lr"], 0.01)
