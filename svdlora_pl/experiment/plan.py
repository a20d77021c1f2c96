"""What a study runs and where it goes: the :class:`Layout` of its output directory, every fit's ``svdlora fit``
command (:class:`Fit`), and the in-process steps that build a teacher's factors.

Usage::

    from svdlora_pl.experiment.plan import Layout, arm_fits, teacher_fits

    layout = Layout(config)
    for fit in arm_fits(layout):  # every arm x learning rate x seed
        print(fit.key, fit.command())

Run directories: ``training_results/runs/<arm>/lr<lr>-seed<seed>/`` for the arms' fits,
``training_results/runs/teacher_lora/`` for the random-init fit a synthesized teacher is made from (unless an arm
already has that very fit, which is then used) and ``training_results/runs/teacher_full_finetune/``. Each is an
ordinary Lightning root directory (``lightning_logs/version_0/`` with the event files, ``config.yaml`` and
``adapter/``); a fit is complete when its adapter is saved.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from svdlora_pl.errors import InputError
from svdlora_pl.experiment.comparison_report import JSON_NAME, REPORT_NAME
from svdlora_pl.experiment.config import RANDOM_INIT, ArmConfig, ExperimentConfig

SPECTRUM = "svdlora_pl.callbacks.LoRASpectrumMonitor"
ALIGNMENT = "svdlora_pl.callbacks.TeacherAlignmentMonitor"


@dataclass(frozen=True)
class Fit:
    """One ``svdlora fit`` of the study.

    Args:
        key: Its name, also its run directory under ``training_results/runs/`` (``random/lr0.003-seed0``).
        root: Its ``trainer.default_root_dir``.
        args: Its ``svdlora fit`` arguments.
        arm: The arm it belongs to (None: a teacher's fit).
        lr: Its learning rate.
        seed: Its ``seed_everything``.
        teacher: The teacher whose factors it starts from (None: no teacher).
        saves: What it saves in its log dir when it completes (``adapter``; ``model`` for a full fine-tune), atomically.
    """

    key: str
    root: Path
    args: tuple[str, ...]
    arm: str | None = None
    lr: float | None = None
    seed: int | None = None
    teacher: str | None = None
    saves: str = "adapter"

    def command(self) -> list[str]:
        """The command line: ``svdlora fit`` as ``python -m svdlora_pl.cli fit``."""
        return [sys.executable, "-m", "svdlora_pl.cli", "fit", *self.args]

    def log_dir(self) -> Path:
        """Its Lightning log dir (``lightning_logs/version_N``); refused unless there is exactly one."""
        return log_dir(self.root)

    def complete(self) -> bool:
        """Whether it ran to the end: its one log dir holds what it saves (written atomically at the end)."""
        runs = list(self.root.glob("lightning_logs/version_*"))
        return len(runs) == 1 and (runs[0] / self.saves).is_dir()


def log_dir(run_root: Path) -> Path:
    """The single Lightning log dir (``lightning_logs/version_N``) of a fit's root directory."""
    found = sorted(run_root.glob("lightning_logs/version_*"))
    if len(found) != 1:
        raise InputError(f"{run_root}: expected one Lightning run, found {len(found)}")
    return found[0]


@dataclass(frozen=True)
class Layout:
    """Where every deliverable of a study lives (under ``config.output_dir``)."""

    config: ExperimentConfig

    @property
    def root(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def results(self) -> Path:
        return self.root / "training_results"

    def run_root(self, key: str) -> Path:
        """Root directory (``trainer.default_root_dir``) of the fit called ``key``."""
        return self.results / "runs" / key

    def final_model(self, arm: str) -> Path:
        """The adapter kept for ``arm``: its fit at the selected learning rate and the first seed."""
        return self.results / f"final_model_{arm}"

    def teacher_dir(self, kind: str) -> Path:
        return self.root / ("synthesized_teacher" if kind == "synthesized" else "full_teacher")

    def teacher_file(self, kind: str) -> Path:
        from svdlora_pl.teacher.synthesize import delta_name, full_delta_name

        name = delta_name if kind == "synthesized" else full_delta_name
        return self.teacher_dir(kind) / name(self.config.teacher_rank(kind))

    def svd_dir(self, kind: str) -> Path:
        """``svd_results/`` (``svd_results/<kind>/`` when the study has two teachers)."""
        return self.root / "svd_results" / (kind if len(self.config.teacher_kinds()) > 1 else "")

    def factors(self, kind: str) -> Path:
        from svdlora_pl.teacher.factorize import factors_name

        return self.svd_dir(kind) / factors_name(self.config.lora.r)

    @property
    def comparison(self) -> Path:
        return self.results / JSON_NAME

    @property
    def report(self) -> Path:
        return self.results / REPORT_NAME

    def deliverables(self) -> list[tuple[str, Path]]:
        """(what, where) of every deliverable."""
        teachers = [
            item
            for kind in self.config.teacher_kinds()
            for item in ((f"{kind} teacher", self.teacher_dir(kind)), (f"{kind} SVD factors", self.svd_dir(kind)))
        ]
        arms = [(f"{arm.name} adapter", self.final_model(arm.name)) for arm in self.config.study_arms()]
        return [*teachers, *arms, ("study report", self.report), ("training logs (CSV, TensorBoard)", self.results)]


def callback_args(class_path: str, **init_args: object) -> list[str]:
    """``svdlora fit`` arguments that append one callback to the fit config's ``trainer.callbacks``."""
    return [f"--trainer.callbacks+={class_path}", *(f"--trainer.callbacks.{k}={v}" for k, v in init_args.items())]


def option_value(value: Any) -> str:
    """A value as a command-line option reads it back (YAML: JSON for everything but plain strings)."""
    return value if isinstance(value, str) else json.dumps(value)


def lora_fit_args(layout: Layout, arm: ArmConfig, lr: float, seed: int) -> list[str]:
    """``svdlora fit`` arguments of one LoRA fit of ``arm`` (after the fit config)."""
    config = layout.config
    epochs = config.epochs
    if arm.budget_of is not None:
        epochs += config.teacher_epochs(config.arm(arm.budget_of).teacher)
    init_args = dict(arm.init_args)
    if arm.teacher != "none":
        init_args["factors"] = str(layout.factors(arm.teacher))
    args = [
        f"--seed_everything={seed}",
        f"--data.seed={seed}",
        f"--model.lora.r={config.lora.r}",
        f"--model.lora.alpha={config.lora.alpha}",
        f"--model.optimizer.init_args.lr={lr}",
        f"--trainer.max_epochs={epochs}",
        f"--model.initializer={arm.class_path}",
        *(f"--model.initializer.{key}={option_value(value)}" for key, value in init_args.items()),
        *callback_args(SPECTRUM, every_n_steps=config.monitor_every_n_steps),
    ]
    if arm.teacher != "none":
        args += callback_args(
            ALIGNMENT, factors=layout.factors(arm.teacher), every_n_steps=config.monitor_every_n_steps
        )
    return [*args, *config.fit_args]


def fit_key(arm: str, lr: float, seed: int) -> str:
    """The name (and run directory) of one arm fit."""
    return f"{arm}/lr{lr:g}-seed{seed}"


def make_fit(layout: Layout, key: str, args: list[str], **fields: Any) -> Fit:
    root = layout.run_root(key)
    return Fit(key, root, ("-c", str(layout.config.fit_config), f"--trainer.default_root_dir={root}", *args), **fields)


def arm_fits(layout: Layout) -> list[Fit]:
    """Every fit of every arm: each learning rate of its grid at each seed."""
    config = layout.config
    return [
        make_fit(
            layout,
            fit_key(arm.name, lr, seed),
            lora_fit_args(layout, arm, lr, seed),
            arm=arm.name,
            lr=lr,
            seed=seed,
            teacher=None if arm.teacher == "none" else arm.teacher,
        )  # fmt: skip
        for arm in config.study_arms()
        for lr in config.arm_grid(arm)
        for seed in config.seed_list()
    ]


def teacher_fits(layout: Layout) -> dict[str, Fit]:
    """The fit each teacher is made from, by teacher kind: a random-init LoRA fit at ``lr`` and the first seed (an
    arm's identical fit when there is one) for the synthesized teacher, a full fine-tune for the other."""
    config = layout.config
    seed = config.seed_list()[0]
    fits: dict[str, Fit] = {}
    if "synthesized" in config.teacher_kinds():
        args = lora_fit_args(layout, ArmConfig("teacher", RANDOM_INIT), config.lr, seed)
        same = [fit for fit in arm_fits(layout) if list(fit.args[3:]) == args]
        fits["synthesized"] = same[0] if same else make_fit(layout, "teacher_lora", args, lr=config.lr, seed=seed)
    if "full_finetune" in config.teacher_kinds():
        full = config.full_finetune
        args = [
            f"--seed_everything={seed}",
            f"--data.seed={seed}",
            "--model.lora=null",  # no LoRA: every weight trains
            f"--model.optimizer.init_args.lr={full.lr}",
            f"--trainer.max_epochs={full.epochs}",
            *full.fit_args,
            *config.fit_args,
        ]
        fits["full_finetune"] = make_fit(layout, "teacher_full_finetune", args, lr=full.lr, seed=seed, saves="model")
    return fits


def teacher_steps(layout: Layout, kind: str, source: Fit) -> list[tuple[str, dict[str, Any]]]:
    """The two in-process steps that turn a teacher's fit into rank-r factors, as (tool, options): ``synthesize``
    (from the adapter, or the dense ΔW of the full fine-tune kept at rank R), then ``factorize``."""
    from svdlora_pl.teacher.delta_svd import SVDOptions

    config = layout.config
    run = source.log_dir() if source.root.exists() else source.root / "lightning_logs/version_0"
    if kind == "synthesized":
        synthesis = config.synthesis
        options: dict[str, Any] = {
            "adapter": run / "adapter",  # provenance names the run
            "target_rank": synthesis.target_rank,
            "noise_scale": synthesis.noise_scale,
            "decay": synthesis.decay,
            "seed": synthesis.seed,
        }
    else:
        options = {
            "base": base_model(run, Path(config.fit_config)),
            "finetuned": str(run / "model"),
            "target_rank": config.full_finetune.target_rank,
            "svd": SVDOptions(method=config.full_finetune.svd),
        }
    factorize = {"delta": layout.teacher_file(kind), "rank": config.lora.r, "split": config.svd_init.split}
    return [
        ("synthesize", {**options, "output_dir": layout.teacher_dir(kind), "overwrite": True}),
        ("factorize", {**factorize, "output_dir": layout.svd_dir(kind), "overwrite": True}),
    ]


def base_model(run: Path, fit_config: Path) -> str:
    """``model.model_name_or_path`` of a fit, from the config.yaml LightningCLI saved in its log dir (before the fit
    has run: from the fit config)."""
    import yaml

    saved = run / "config.yaml"
    config = yaml.safe_load((saved if saved.is_file() else fit_config).read_text(encoding="utf-8"))
    return str(((config or {}).get("model") or {}).get("model_name_or_path", "svdlora:tiny-qwen2"))
