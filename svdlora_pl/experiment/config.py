"""The configuration of ``svdlora experiment``: frozen dataclasses, parsed from YAML and the command line by
jsonargparse (``svdlora experiment --help`` lists every field).

Example (after ``configs/experiment/tiny_study.yaml``)::

    output_dir: experiments/tiny_study
    fit_config: configs/tiny.yaml        # LightningCLI config shared by every fit
    lora: {r: 8, alpha: 16.0}            # LoRA of every arm
    epochs: 4
    seeds: 3
    lr_grid: [0.001, 0.003, 0.01]
    arms:                                # the first arm is the reference of the paired differences
      - name: random
      - name: pissa
        initializer: svdlora_pl.initializers.PiSSAInit
      - name: svd_full_finetune
        initializer: svdlora_pl.initializers.SVDTeacherInit
        teacher: full_finetune
      - name: random_budget              # random init given the full fine-tune's epochs too
        budget_of: svd_full_finetune
    full_finetune: {lr: 0.0003, epochs: 4, target_rank: 32, svd: exact}

Without ``arms`` (``configs/experiment/tiny.yaml``) the study is random-init vs SVD-init from ``teacher``, one seed,
one learning rate (``lr``). Relative paths are relative to the working directory, as for ``svdlora fit -c``. In
Python, build an :class:`ExperimentConfig` directly, or read a YAML file with :func:`load_experiment_config`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from svdlora_pl.errors import InputError


@dataclass(frozen=True)
class LoRAConfig:
    """LoRA of both LoRA fits.

    Args:
        r: LoRA rank of both fits; also the rank of the exported SVD factors.
        alpha: Scaling numerator of both fits (scaling = alpha / r).
    """

    r: int = 8
    alpha: float = 16.0


@dataclass(frozen=True)
class SynthesisConfig:
    """Teacher synthesized from the random-init adapter (``svdlora synthesize``; teacher: synthesized).

    Args:
        target_rank: Rank R of the synthesized teacher (>= lora.r): the adapter's r directions and R - r decaying
            ones.
        noise_scale: Noise energy = noise_scale² × the LoRA update's energy.
        decay: Decay rate of the appended singular values (null: synthesize's default).
        seed: Seed of the completed bases and the noise.
    """

    target_rank: int = 32
    noise_scale: float = 0.1
    decay: float | None = None
    seed: int = 0


@dataclass(frozen=True)
class FullFinetuneConfig:
    """Teacher from a real full fine-tune of the same base on the same data (teacher: full_finetune).

    Args:
        lr: Learning rate of the full fine-tune (all weights train: much smaller than LoRA's).
        epochs: Epochs of the full fine-tune.
        target_rank: Rank R at which each dense ΔW = W_ft − W_base is kept (its top R singular triplets; >= lora.r).
        svd: SVD of each dense ΔW: exact (torch.linalg.svd) or randomized (torch.svd_lowrank, for big models).
        fit_args: Extra ``svdlora fit`` arguments of the full fine-tune only.
    """

    lr: float = 3e-4
    epochs: int = 4
    target_rank: int = 32
    svd: Literal["exact", "randomized"] = "exact"
    fit_args: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GradientConfig:
    """The loss gradient at the base weights as the teacher (teacher: gradient): the SVD-init fit uses
    ``GradientSVDInit`` with these arguments, and no teacher is built or factorized beforehand.

    Args:
        scheme: lora_one (LoRA-One: one normalized gradient step, the base unchanged) or lora_ga (LoRA-GA as PEFT
            does it: residual base).
        num_batches: Training batches the gradient is averaged over.
        estimator: sketch (one-pass sketch in hooks) or exact (a dense gradient per layer).
        oversample: Sketch size k = rank + oversample.
        passes: Passes of the sketch over the batches.
        stable_gamma: γ of the schemes' stable scale (larger: a smaller starting update).
    """

    scheme: Literal["lora_one", "lora_ga"] = "lora_one"
    num_batches: int = 8
    estimator: Literal["sketch", "exact"] = "sketch"
    oversample: int = 40
    passes: int = 1
    stable_gamma: float = 16.0


@dataclass(frozen=True)
class SVDInitConfig:
    """The SVD-init fit (``SVDTeacherInit`` from the teacher's rank-r factors).

    Args:
        mode: warm_start (start at base + the teacher's rank-r update) or residual (same factors, the update
            subtracted from the base so the output is unchanged at step 0).
        split: How Σ is split in the exported factors: sqrt (√Σ to each factor) or B (Σ in B).
    """

    mode: Literal["warm_start", "residual"] = "warm_start"
    split: Literal["sqrt", "B"] = "sqrt"


RUN_OPTIONS = {
    "force": (bool, False, "Redo every task, even those whose output is complete."),
    "jobs": (int, 1, "Fits run at once (the CPU threads divided between them; one GPU each on a machine with GPUs)."),
    "dry_run": (bool, False, "Print every task's command line, stage by stage (for a cluster scheduler); run nothing."),
    "report_only": (bool, False, "Run nothing: write the report from the fits that finished."),
}
"""``svdlora experiment``'s options besides the config fields: (type, default, help)."""

TeacherKind = Literal["none", "synthesized", "full_finetune"]
SVD_TEACHER_INIT = "svdlora_pl.initializers.SVDTeacherInit"
GRADIENT_INIT = "svdlora_pl.initializers.GradientSVDInit"
RANDOM_INIT = "svdlora_pl.initializers.RandomInit"


@dataclass(frozen=True)
class ArmConfig:
    """One arm of the study: a LoRA initializer, fitted at every seed and every learning rate of its grid.

    Args:
        name: The arm's label in reports, run directories and file names (letters, digits, ``.``, ``_``, ``-``).
        initializer: Its LoRA initializer, as in a fit config: a ``class_path`` (``svdlora_pl.initializers.RandomInit``,
            ``PiSSAInit``, ``MiLoRAInit``, ``SVDTeacherInit``, ``GradientSVDInit``, or a class of your own) or
            ``{class_path: ..., init_args: {...}}`` (``SVDTeacherInit``'s ``factors`` is set by the study from
            ``teacher``).
        teacher: The teacher whose rank-r SVD factors ``SVDTeacherInit`` starts from: synthesized (from a random-init
            LoRA fit at ``lr``) or full_finetune; built once per study, its cost counted in the arm's budget; none for
            every other initializer.
        lr_grid: This arm's learning rates (null: the study's ``lr_grid``).
        budget_of: The name of an arm with a teacher: this arm's fits also get that teacher's training epochs (the
            budget-matched control of a teacher that costs training steps; null: the study's ``epochs``).
    """

    name: str
    initializer: str | dict[str, Any] = RANDOM_INIT
    teacher: TeacherKind = "none"
    lr_grid: list[float] | None = None
    budget_of: str | None = None

    @property
    def class_path(self) -> str:
        """The initializer's class path."""
        return self.initializer if isinstance(self.initializer, str) else str(self.initializer.get("class_path"))

    @property
    def init_args(self) -> dict[str, Any]:
        """The initializer's arguments."""
        return {} if isinstance(self.initializer, str) else dict(self.initializer.get("init_args") or {})


@dataclass(frozen=True)
class ExperimentConfig:
    """A study of LoRA initializers in one command: arms, seeds and a learning-rate sweep per arm.

    Every arm is fitted at every seed and every learning rate of its grid; teachers (a synthesized one from a
    random-init fit, a full fine-tune) are built once and factorized at the LoRA rank. Per arm, the learning rate with
    the lowest mean final validation loss over the seeds is selected, and the arm is reported there: mean ± std over
    seeds of each metric, its initialization cost, and its paired difference from the first arm (the reference) with
    a 95 % confidence interval. Without ``arms``, the study is the two-run experiment: random-init vs SVD-init from
    ``teacher``, one seed, one learning rate.

    Each fit is skipped when its adapter is complete, so rerunning resumes an interrupted study. Every fit is an
    ordinary ``svdlora fit`` run with its own log dir and config.yaml under <output_dir>/training_results/runs/.

    Args:
        output_dir: Directory of every deliverable; rerunning into it resumes.
        fit_config: LightningCLI config (``svdlora fit -c``) shared by every fit: model, data, trainer, seed.
        fit_args: Extra ``svdlora fit`` arguments of every fit (e.g. ``[--trainer.max_steps=20]``).
        lora: LoRA rank and alpha of both LoRA fits.
        lr: Learning rate of the LoRA fits when no grid is given, and of the random-init fit a synthesized teacher is
            made from.
        epochs: Epochs of every LoRA fit (a budget-matched arm adds its teacher's).
        arms: The study's arms, the first being the reference of every paired difference (null: random and svd, the
            latter from ``teacher``).
        seeds: Seeds of every arm: a count n (seeds 0..n-1) or a list (null: 3 seeds with ``arms``, the fit config's
            seed without). A fit's seed is its ``seed_everything`` (LoRA's random factors, dropout) and its
            ``data.seed`` (the training order; with ``data.val_fraction`` also the held-out split).
        lr_grid: Learning rates every arm is fitted at, unless it has its own grid (null: ``[lr]``).
        teacher: Without ``arms``, where the svd arm starts: synthesized (from a random-init fit's adapter: circular
            by construction), full_finetune (a real full fine-tune of the same base on the same data: not circular)
            or gradient (``GradientSVDInit``: the loss gradient at the base weights, taken by the fit itself).
        synthesis: The synthesized teacher (teacher: synthesized).
        full_finetune: The full fine-tune teacher (teacher: full_finetune).
        gradient: The gradient teacher (teacher: gradient).
        svd_init: The SVD-init fit.
        monitor_every_n_steps: Optimizer steps between spectrum / teacher-alignment measurements.

    Raises:
        InputError: A value that is not positive, a teacher rank below ``lora.r``, or a missing ``fit_config``,
            naming the field.
    """

    output_dir: Path = Path("experiments/default")
    fit_config: Path = Path("configs/tiny.yaml")
    fit_args: list[str] = field(default_factory=list)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    lr: float = 3e-3
    epochs: int = 4
    arms: list[ArmConfig] | None = None
    seeds: int | list[int] | None = None
    lr_grid: list[float] | None = None
    teacher: Literal["synthesized", "full_finetune", "gradient"] = "synthesized"
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    full_finetune: FullFinetuneConfig = field(default_factory=FullFinetuneConfig)
    gradient: GradientConfig = field(default_factory=GradientConfig)
    svd_init: SVDInitConfig = field(default_factory=SVDInitConfig)
    monitor_every_n_steps: int = 10

    def __post_init__(self) -> None:
        positive = {
            "lora.r": self.lora.r, "lora.alpha": self.lora.alpha, "lr": self.lr, "epochs": self.epochs,
            "synthesis.target_rank": self.synthesis.target_rank, "full_finetune.lr": self.full_finetune.lr,
            "full_finetune.epochs": self.full_finetune.epochs,
            "full_finetune.target_rank": self.full_finetune.target_rank,
            "monitor_every_n_steps": self.monitor_every_n_steps, "gradient.num_batches": self.gradient.num_batches,
            "gradient.passes": self.gradient.passes, "gradient.stable_gamma": self.gradient.stable_gamma,
        }  # fmt: skip
        for where, value in positive.items():
            if not (value > 0 and math.isfinite(value)):
                raise InputError(f"{where}: must be positive, got {value}")
        for kind in self.teacher_kinds():
            if self.teacher_rank(kind) < self.lora.r:
                where = "synthesis.target_rank" if kind == "synthesized" else "full_finetune.target_rank"
                raise InputError(f"{where}: teacher rank {self.teacher_rank(kind)} is below lora.r = {self.lora.r}")
        if not Path(self.fit_config).is_file():
            raise InputError(f"fit_config: {self.fit_config} not found")
        self._check_study()

    def _check_study(self) -> None:
        """Refuse arms, seeds and learning rates that cannot make a study, naming the field."""
        if self.arms is not None and not self.arms:
            raise InputError("arms: needs at least one arm")
        names = [arm.name for arm in self.study_arms()]
        for index, arm in enumerate(self.study_arms()):
            where = f"arms[{index}]"
            if not re.fullmatch(r"[A-Za-z0-9._-]+", arm.name):
                raise InputError(f"{where}.name: {arm.name!r} must be letters, digits, '.', '_' or '-'")
            if arm.name in names[:index]:
                raise InputError(f"{where}.name: duplicate arm name {arm.name!r}")
            if isinstance(arm.initializer, dict) and (
                not isinstance(arm.initializer.get("class_path"), str)
                or not isinstance(arm.initializer.get("init_args") or {}, dict)
                or set(arm.initializer) - {"class_path", "init_args"}
            ):
                raise InputError(f"{where}.initializer: needs class_path and optional init_args, got {arm.initializer}")
            if (arm.teacher != "none") != (arm.class_path.rpartition(".")[2] == "SVDTeacherInit"):
                raise InputError(
                    f"{where}.teacher: {arm.teacher} with {arm.class_path}: SVDTeacherInit needs a "
                    "teacher (synthesized or full_finetune), every other initializer none"
                )
            if arm.budget_of is not None and self.arm(arm.budget_of).teacher == "none":
                raise InputError(f"{where}.budget_of: arm {arm.budget_of!r} has no teacher whose steps to match")
            grid = self.arm_grid(arm)
            if not grid or not all(value > 0 and math.isfinite(value) for value in grid):
                raise InputError(f"{where}.lr_grid: needs positive learning rates, got {grid}")
        seeds = self.seeds
        if (
            isinstance(seeds, int)
            and seeds < 1
            or isinstance(seeds, list)
            and (not seeds or len(set(seeds)) < len(seeds) or min(seeds) < 0)
        ):
            raise InputError(f"seeds: needs a count >= 1 or distinct seeds >= 0, got {seeds}")

    def study_arms(self) -> list[ArmConfig]:
        """The arms: ``arms``, or random and svd from ``teacher`` (the two-run experiment)."""
        if self.arms is not None:
            return list(self.arms)
        if self.teacher == "gradient":
            svd = ArmConfig("svd", {"class_path": GRADIENT_INIT, "init_args": dataclasses.asdict(self.gradient)})
        else:
            init = {"class_path": SVD_TEACHER_INIT, "init_args": {"mode": self.svd_init.mode}}
            svd = ArmConfig("svd", init, teacher=self.teacher)
        return [ArmConfig("random"), svd]

    def arm(self, name: str) -> ArmConfig:
        """The arm called ``name``."""
        found = [arm for arm in self.study_arms() if arm.name == name]
        if not found:
            raise InputError(f"arms: no arm named {name!r} (arms: {', '.join(a.name for a in self.study_arms())})")
        return found[0]

    def arm_grid(self, arm: ArmConfig) -> list[float]:
        """The learning rates ``arm`` is fitted at."""
        return list(arm.lr_grid if arm.lr_grid is not None else self.lr_grid or [self.lr])

    def seed_list(self) -> list[int]:
        """The seeds of every arm (see ``seeds``)."""
        if isinstance(self.seeds, list):
            return list(self.seeds)
        if self.seeds is None and self.arms is None:
            return [fit_config_seed(Path(self.fit_config))]
        return list(range(3 if self.seeds is None else self.seeds))

    def teacher_kinds(self) -> list[str]:
        """The teachers the arms start from, in first-use order (none for the gradient)."""
        kinds = [arm.teacher for arm in self.study_arms() if arm.teacher != "none"]
        return list(dict.fromkeys(kinds))

    def teacher_rank(self, kind: str | None = None) -> int:
        """Rank R of the teacher of kind ``kind`` (default: ``teacher``; the LoRA rank for the gradient)."""
        ranks = {"synthesized": self.synthesis.target_rank, "full_finetune": self.full_finetune.target_rank}
        return ranks.get(kind or self.teacher, self.lora.r)

    def teacher_epochs(self, kind: str) -> int:
        """Training epochs a teacher costs: the random-init LoRA fit it is synthesized from, or the full fine-tune."""
        return self.full_finetune.epochs if kind == "full_finetune" else self.epochs


def fit_config_seed(path: Path) -> int:
    """``seed_everything`` of a fit config when it is an integer, else 0."""
    import yaml

    try:
        seed = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("seed_everything")
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError):
        return 0
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else 0


def load_experiment_config(path: str | os.PathLike[str], *overrides: str) -> ExperimentConfig:
    """Read an experiment YAML exactly as ``svdlora experiment -c PATH [OVERRIDES]`` does (same parser).

    Args:
        path: The experiment YAML.
        overrides: Command-line options after it, e.g. ``"--output_dir=experiments/run2"``.

    Raises:
        InputError: The file is missing or not valid, or a field is unknown, mistyped or out of range.
    """
    from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser

    if not Path(path).is_file():
        raise InputError(f"{path}: file not found")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("-c", "--config", action=ActionConfigFile)
    for name, (kind, default, help_) in RUN_OPTIONS.items():  # a config printed by ``svdlora experiment`` has them
        parser.add_argument(f"--{name}", type=kind, default=default, help=help_)
    parser.add_class_arguments(ExperimentConfig, fail_untyped=True, sub_configs=True)
    try:
        parsed = parser.parse_args(["-c", str(path), *overrides])
    except ArgumentError as error:
        raise InputError(f"{path}: {' '.join(str(error).split())}") from None
    values = parser.instantiate_classes(parsed)
    return ExperimentConfig(**{field.name: values[field.name] for field in dataclasses.fields(ExperimentConfig)})
