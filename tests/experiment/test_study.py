"""A study's report recomputed independently from its runs' event files.

A fake finished study (three arms x two learning rates x three seeds; no fit is run) is written as the runner leaves
it: per fit a Lightning log dir with a TensorBoard event file, ``config.yaml`` and the saved adapter. The runner's
``write_report`` builds the report; this module recomputes every number from the raw events with TensorBoard's
event file loader and numpy alone (nothing from the package's statistics, study, comparison or run_log modules): the
selected learning rate per arm, mean and std over seeds of each metric there, the target loss, the paired
differences from the reference arm with their Student-t 95 % intervals and the verdicts; then a study with one fit
missing.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from helpers import ROOT
from safetensors.torch import save_file

from svdlora_pl.experiment.config import ArmConfig, ExperimentConfig
from svdlora_pl.experiment.plan import Fit, Layout, arm_fits
from svdlora_pl.experiment.runner import write_report

ARMS = [
    ArmConfig("random"),
    ArmConfig("pissa", "svdlora_pl.initializers.PiSSAInit"),
    ArmConfig("grad", {"class_path": "svdlora_pl.initializers.GradientSVDInit", "init_args": {"num_batches": 2}}),
]
REFERENCE = "random"
SEEDS = [0, 1, 2]
LR_GRID = [0.001, 0.01]
TRAIN_STEPS = 40  # train/loss at steps 0..39
VAL_STEPS = [0, 10, 20, 30, TRAIN_STEPS - 1]
# per arm: the initial loss, the loss floor at its better learning rate, and that learning rate
SHAPES = {"random": (3.0, 1.20, 0.01), "pissa": (2.5, 0.90, 0.01), "grad": (2.9, 1.18, 0.001)}
INIT_PASSES = {"random": 0.0, "pissa": 0.0, "grad": 2.0}
# t(0.975, df), exact to double precision (df 1: tan(0.475 pi), df 2: 0.95 / sqrt(2 * 0.975 * 0.025))
T975 = {1: 12.706204736174705, 2: 4.302652729749464}
METRICS = (
    "initial_train_loss",
    "initial_val_loss",
    "steps_to_target",
    "final_train_loss",
    "final_train_loss_tail_mean",
    "final_val_loss",
    "train_loss_auc",
)
APPROX = {"rel": 1e-9, "abs": 1e-12}  # abs: a paired difference of steps can be exactly 0
EVENT_DIR = "lightning_logs/version_0"


# ------------------------------------------------------------------------------------------------ the fake study
def study_config(tmp_path: Path) -> ExperimentConfig:
    return ExperimentConfig(
        output_dir=tmp_path / "out", fit_config=ROOT / "configs/tiny.yaml", arms=ARMS, seeds=len(SEEDS),
        lr_grid=LR_GRID,
    )  # fmt: skip


def curves(arm: str, lr: float, seed: int) -> dict[str, list[tuple[int, float]]]:
    """Seeded, distinct per arm, lr and seed: an exponential decay to a floor, the better lr lower and faster; a
    seed effect shared by the arms (as the data order is) so paired differences are tighter than the spread."""
    arm_index = [a.name for a in ARMS].index(arm)
    start, floor, best = SHAPES[arm]
    rng = np.random.default_rng([arm_index, LR_GRID.index(lr), seed])
    shared = np.random.default_rng([99, seed]).normal(0.0, 0.08)
    if lr != best:
        floor += 0.5
    rate = 0.15 if lr == best else 0.06
    level = floor + shared + rng.normal(0.0, 0.02)

    def loss(step: int) -> float:
        return level + (start - level) * math.exp(-rate * step)

    train = [(k, loss(k) + rng.normal(0.0, 0.03)) for k in range(TRAIN_STEPS)]
    val = [(k, loss(k) + 0.05 + rng.normal(0.0, 0.01)) for k in VAL_STEPS]
    init = {
        "weights/init/seconds": [(0, float(rng.uniform(0.1, 2.0)))],
        "weights/init/forward_backward_passes": [(0, INIT_PASSES[arm])],
    }
    return {"train/loss": train, "val/loss": val, **init}


def write_fit(fit: Fit, arm: ArmConfig) -> None:
    """A finished fit as ``svdlora fit`` leaves it: event file, config.yaml, adapter."""
    from torch.utils.tensorboard import SummaryWriter

    run = fit.root / EVENT_DIR
    writer = SummaryWriter(log_dir=str(run))
    for tag, points in curves(fit.arm, fit.lr, fit.seed).items():
        for step, value in points:
            writer.add_scalar(tag, value, step, walltime=1000.0 + step)
    writer.close()
    initializer = {"class_path": arm.class_path, "init_args": arm.init_args}
    config = {"seed_everything": fit.seed, "model": {"initializer": initializer},
              "trainer": {"accumulate_grad_batches": 1}}  # fmt: skip
    (run / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    (run / "adapter").mkdir()
    save_file({"lora_A": torch.zeros(2, 2)}, str(run / "adapter/adapter_model.safetensors"))


def fake_study(tmp_path: Path) -> Layout:
    layout = Layout(study_config(tmp_path))
    fits = arm_fits(layout)
    assert len(fits) == len(ARMS) * len(LR_GRID) * len(SEEDS)
    for fit in fits:
        write_fit(fit, layout.config.arm(fit.arm))
        assert fit.complete()
    return layout


def report(layout: Layout, outcome: dict[str, str]) -> tuple[dict[str, Any], str]:
    write_report(layout, outcome)
    results = layout.config.output_dir / "training_results"
    study = json.loads((results / "comparison.json").read_text(encoding="utf-8"))
    return study, (results / "comparison_report.txt").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------------ the recomputation
def read_events(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the raw events in ``log_dir``: tag -> [(step, value)] by step (one point per step here)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    series: dict[str, list[tuple[int, float]]] = {}
    files = sorted(log_dir.glob("events.out.tfevents.*"))
    assert len(files) == 1
    for event in EventFileLoader(str(files[0])).Load():
        for value in event.summary.value:
            kind = value.WhichOneof("value")
            if kind == "simple_value":
                number = value.simple_value
            elif kind == "tensor" and value.metadata.plugin_data.plugin_name == "scalars":
                number = tensor_util.make_ndarray(value.tensor).item()
            else:  # histograms, images, text, the custom-scalars layout of a real fit
                continue
            series.setdefault(value.tag, []).append((int(event.step), float(number)))
    for points in series.values():
        assert len({step for step, _ in points}) == len(points)
    return {tag: sorted(points) for tag, points in series.items()}


def trapezoid(values: np.ndarray, steps: np.ndarray) -> float:
    integrate = getattr(np, "trapezoid", None) or np.trapz  # noqa: NPY201 (np.trapz: numpy < 2)
    return float(integrate(values, steps))


def fit_metrics(scalars: dict[str, list[tuple[int, float]]], target: float) -> dict[str, float]:
    steps = np.array([s for s, _ in scalars["train/loss"]], dtype=np.float64)
    train = np.array([v for _, v in scalars["train/loss"]], dtype=np.float64)
    val = scalars["val/loss"]
    reached = np.flatnonzero(train <= target)
    assert reached.size  # the target is above every selected fit's final loss
    return {
        "initial_train_loss": train[0],
        "initial_val_loss": dict(val)[0],
        "steps_to_target": int(steps[reached[0]]),
        "final_train_loss": train[-1],
        "final_train_loss_tail_mean": float(np.mean(train[-math.ceil(0.1 * len(train)) :])),
        "final_val_loss": val[-1][1],
        "train_loss_auc": trapezoid(train, steps),
    }


def interval_verdict(low: float, high: float) -> str:
    """Lower is better for every metric here."""
    if low <= 0 <= high:
        return "no detectable difference"
    return "helps" if high < 0 else "hurts"


def recompute(layout: Layout, missing: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The study from the event files of every fit but ``missing``: selection, summaries, paired differences."""
    logs = {
        (fit.arm, fit.lr, fit.seed): read_events(fit.root / EVENT_DIR) for fit in arm_fits(layout)
        if fit.key not in missing
    }  # fmt: skip
    sweep, selected = {}, {}
    for arm in ARMS:
        sweep[arm.name] = {
            lr: float(np.mean([logs[arm.name, lr, s]["val/loss"][-1][1] for s in SEEDS if (arm.name, lr, s) in logs]))
            for lr in LR_GRID
        }
        selected[arm.name] = min(LR_GRID, key=sweep[arm.name].__getitem__)
    chosen = {arm.name: [s for s in SEEDS if (arm.name, selected[arm.name], s) in logs] for arm in ARMS}
    target = max(logs[a, selected[a], s]["train/loss"][-1][1] for a, seeds in chosen.items() for s in seeds) * 1.05
    per_seed = {
        a: {s: fit_metrics(logs[a, selected[a], s], target) for s in seeds} for a, seeds in chosen.items()
    }  # fmt: skip
    init = {
        a: {tag: [logs[a, selected[a], s][f"weights/init/{tag}"][0][1] for s in seeds]
            for tag in ("seconds", "forward_backward_passes")}
        for a, seeds in chosen.items()
    }  # fmt: skip
    arms = {}
    for a, seeds in chosen.items():
        metrics = {}
        for name in METRICS:
            values = np.array([per_seed[a][s][name] for s in seeds], dtype=np.float64)
            metrics[name] = {"n": len(values), "mean": float(values.mean()), "std": float(values.std(ddof=1)),
                             "values": values.tolist()}  # fmt: skip
        differences = {}
        if a != REFERENCE:
            paired = [s for s in seeds if s in per_seed[REFERENCE]]
            for name in METRICS:
                d = np.array([per_seed[a][s][name] - per_seed[REFERENCE][s][name] for s in paired])
                mean, std = float(d.mean()), float(d.std(ddof=1))
                half = T975[len(d) - 1] * std / math.sqrt(len(d))
                reference_mean = float(np.mean([per_seed[REFERENCE][s][name] for s in paired]))
                differences[name] = {
                    "n": len(d), "seeds": paired, "mean": mean, "std": std, "ci95": [mean - half, mean + half],
                    "relative_pct": 100.0 * mean / reference_mean, "differences": d.tolist(),
                    "verdict": interval_verdict(mean - half, mean + half),
                }  # fmt: skip
        arms[a] = {"selected_lr": selected[a], "seeds": seeds, "sweep": sweep[a], "metrics": metrics,
                   "vs_reference": differences, "init": init[a]}  # fmt: skip
    return {"target": target, "arms": arms}


def assert_study_matches(study: dict[str, Any], expected: dict[str, Any]) -> None:
    """Every number of comparison.json against the recomputation."""
    assert study["reference_arm"] == REFERENCE
    assert study["seeds"] == SEEDS
    assert study["target_loss"]["value"] == pytest.approx(expected["target"], **APPROX)
    assert [arm["name"] for arm in study["arms"]] == [arm.name for arm in ARMS]
    for arm in study["arms"]:
        mine = expected["arms"][arm["name"]]
        where = arm["name"]
        assert arm["selected_lr"] == mine["selected_lr"], where
        assert arm["seeds"] == mine["seeds"], where
        assert arm["fits"] == [f"{where}/lr{mine['selected_lr']:g}-seed{s}" for s in mine["seeds"]]
        rows = {row["lr"]: row for row in arm["lr_sweep"]["rows"]}
        assert sorted(rows) == LR_GRID
        for lr, mean in mine["sweep"].items():
            assert rows[lr]["mean"] == pytest.approx(mean, **APPROX), (where, lr)
        # no val/exact_match logged (no eval_generate): a metric without values and no paired difference
        assert arm["metrics"]["final_exact_match"] == {"n": 0, "mean": None, "std": None,
                                                       "values": [None] * len(mine["seeds"])}  # fmt: skip
        if where != REFERENCE:
            exact = arm["vs_reference"]["final_exact_match"]
            assert (exact["n"], exact["ci95"]) == (0, None)
            assert exact["verdict"] == "n/a (fewer than 2 paired seeds)"
        for name in METRICS:
            got, want = arm["metrics"][name], mine["metrics"][name]
            assert got["n"] == want["n"], (where, name)
            assert got["mean"] == pytest.approx(want["mean"], **APPROX), (where, name)
            assert got["std"] == pytest.approx(want["std"], **APPROX), (where, name)
            assert got["values"] == pytest.approx(want["values"], **APPROX), (where, name)
            assert arm["by_seed"][name] == pytest.approx(
                {str(s): v for s, v in zip(mine["seeds"], want["values"], strict=True)}, **APPROX
            )  # fmt: skip
        assert set(arm["vs_reference"]) == (set() if where == REFERENCE else set(arm["metrics"]))
        for name, want in mine["vs_reference"].items():
            got = arm["vs_reference"][name]
            assert (got["n"], got["seeds"], got["verdict"]) == (want["n"], want["seeds"], want["verdict"]), (
                where,
                name,
            )
            for key in ("mean", "std", "ci95", "relative_pct", "differences"):
                assert got[key] == pytest.approx(want[key], **APPROX), (where, name, key)
        budget = arm["budget"]
        assert budget["init_seconds"]["mean"] == pytest.approx(float(np.mean(mine["init"]["seconds"])), **APPROX)
        assert budget["init_forward_backward_passes"]["mean"] == INIT_PASSES[where]
        assert budget["train_steps"]["mean"] == TRAIN_STEPS
        assert budget["teacher"] is None


def table_line(text: str, title: str, occurrence: int) -> str:
    """The ``occurrence``-th line of the report starting with ``title`` (0: means table, 1: differences table)."""
    return [line for line in text.splitlines() if line.startswith(title)][occurrence]


def assert_report_matches(text: str, expected: dict[str, Any]) -> None:
    final_val = "Final val loss (last point)"
    means, differences = table_line(text, final_val, 0), table_line(text, final_val, 1)
    for arm in ARMS:
        mine = expected["arms"][arm.name]
        stats = mine["metrics"]["final_val_loss"]
        assert f"{stats['mean']:.4f} ± {stats['std']:.4f}" in means, arm.name
        assert f"{arm.name} (lr {mine['selected_lr']:g})" in text
        assert f"{mine['sweep'][mine['selected_lr']]:.4f}*" in text  # the selected cell of the sweep
        if arm.name != REFERENCE:
            diff = mine["vs_reference"]["final_val_loss"]
            low, high = diff["ci95"]
            assert f"{diff['mean']:+.4f} [{low:+.4f}, {high:+.4f}] {diff['verdict']}" in differences, arm.name


# ------------------------------------------------------------------------------------------------ tests
def test_study_statistics_recomputed_from_the_event_files(tmp_path: Path) -> None:
    layout = fake_study(tmp_path)
    expected = recompute(layout)
    # the fake data is what the checks need: a per-arm selection that differs between arms, a clear verdict
    assert {a: expected["arms"][a]["selected_lr"] for a in SHAPES} == {a: shape[2] for a, shape in SHAPES.items()}
    assert expected["arms"]["pissa"]["vs_reference"]["final_val_loss"]["verdict"] == "helps"
    verdicts = {d["verdict"] for a in expected["arms"].values() for d in a["vs_reference"].values()}
    assert verdicts - {"no detectable difference"}

    study, text = report(layout, {fit.key: "done" for fit in arm_fits(layout)})

    assert_study_matches(study, expected)
    assert_report_matches(text, expected)
    assert "n = 3 paired seeds" in text
    assert "Fits not in the report" not in text
    assert all(f["complete"] and f["outcome"] == "done" for f in study["fits"])
    results = layout.results
    for arm in ARMS:
        for seed in SEEDS:
            assert (results / f"training_log_{arm.name}_seed{seed}.csv").is_file()
        assert (results / f"final_model_{arm.name}/adapter_model.safetensors").is_file()
    assert (results / "comparison_random_vs_svd.png").stat().st_size > 0


@pytest.mark.parametrize("arm, seed", [("pissa", 1), (REFERENCE, 0)])
def test_study_with_one_fit_missing(tmp_path: Path, arm: str, seed: int) -> None:
    layout = fake_study(tmp_path)
    lr = SHAPES[arm][2]  # the arm's selected learning rate, also without that fit
    missing = next(f for f in arm_fits(layout) if (f.arm, f.lr, f.seed) == (arm, lr, seed))
    shutil.rmtree(missing.root)
    outcome = {fit.key: "done" for fit in arm_fits(layout)}
    outcome[missing.key] = "failed: exit code 1"
    expected = recompute(layout, frozenset({missing.key}))
    assert expected["arms"][arm]["selected_lr"] == lr

    study, text = report(layout, outcome)

    assert_study_matches(study, expected)
    assert_report_matches(text, expected)
    mine = next(a for a in study["arms"] if a["name"] == arm)
    assert mine["seeds"] == [s for s in SEEDS if s != seed]
    assert all(mine["metrics"][name]["n"] == 2 for name in METRICS)
    paired = [a for a in study["arms"] if a["name"] != REFERENCE]
    for other in paired:
        two = arm == REFERENCE or other["name"] == arm  # pairs lost: the missing seed of either side
        differences = [other["vs_reference"][name] for name in METRICS]
        assert {d["n"] for d in differences} == {2 if two else 3}, other["name"]
        assert all((seed not in d["seeds"]) == two for d in differences)
    assert ("n = 2 paired seeds" if arm == REFERENCE else "n = 2, 3 paired seeds") in text
    row = next(row for row in mine["lr_sweep"]["rows"] if row["lr"] == lr)
    assert row["finished"] == 2 and row["by_seed"][str(seed)] is None
    record = next(f for f in study["fits"] if f["key"] == missing.key)
    assert (record["complete"], record["outcome"], record["metrics"]) == (False, "failed: exit code 1", None)
    lines = text.splitlines()
    listed = lines[lines.index("Fits not in the report (1):") + 1]
    assert listed == f"- {missing.key}: failed: exit code 1"
    results = layout.results
    assert not (results / f"training_log_{arm}_seed{seed}.csv").exists()
    assert (results / f"final_model_{arm}/adapter_model.safetensors").is_file()  # from the first seed that finished
