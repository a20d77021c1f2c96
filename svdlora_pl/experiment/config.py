"""The configuration of ``svdlora experiment``: frozen dataclasses, parsed from YAML and the command line by
jsonargparse (``svdlora experiment --help`` lists every field).

Example (``configs/experiment/tiny.yaml``)::

    output_dir: experiments/tiny
    fit_config: configs/tiny.yaml        # LightningCLI config shared by every fit
    lora: {r: 8, alpha: 16.0}            # LoRA of both the random-init and the SVD-init fit
    lr: 0.003
    epochs: 4
    teacher: synthesized                 # or full_finetune, or gradient
    synthesis: {target_rank: 32, noise_scale: 0.1}
    full_finetune: {lr: 0.0003, epochs: 4, target_rank: 32, svd: exact}
    svd_init: {mode: warm_start}
    monitor_every_n_steps: 10

Relative paths are relative to the working directory, as for ``svdlora fit -c``. In Python, build an
:class:`ExperimentConfig` directly, or read a YAML file with :func:`load_experiment_config`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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


@dataclass(frozen=True)
class ExperimentConfig:
    """Random-init vs SVD-init LoRA in one command.

    Fit with random init, build a teacher (synthesized from that adapter, or a full fine-tune), factorize it at the
    LoRA rank, fit with SVDTeacherInit, compare both fits.

    Each step is skipped when its output is complete, so rerunning resumes an interrupted experiment; a step that
    runs makes the later steps run again. Every fit is an ordinary ``svdlora fit`` run with its own log dir and
    config.yaml under <output_dir>/training_results/runs/.

    Args:
        output_dir: Directory of every deliverable; rerunning into it resumes.
        fit_config: LightningCLI config (``svdlora fit -c``) shared by every fit: model, data, trainer, seed.
        fit_args: Extra ``svdlora fit`` arguments of every fit (e.g. ``[--trainer.max_steps=20]``).
        lora: LoRA rank and alpha of both LoRA fits.
        lr: Learning rate of both LoRA fits.
        epochs: Epochs of both LoRA fits.
        teacher: synthesized (from the random-init run's adapter: circular by construction), full_finetune (a
            real full fine-tune of the same base on the same data: not circular) or gradient (the loss gradient at the
            base weights, taken by the SVD-init fit itself: not circular, no teacher run).
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
        if self.teacher_rank() < self.lora.r:
            where = "synthesis.target_rank" if self.teacher == "synthesized" else "full_finetune.target_rank"
            raise InputError(f"{where}: teacher rank {self.teacher_rank()} is below lora.r = {self.lora.r}")
        if not Path(self.fit_config).is_file():
            raise InputError(f"fit_config: {self.fit_config} not found")

    def teacher_rank(self) -> int:
        """Rank R of the teacher of the configured kind (the LoRA rank for the gradient)."""
        ranks = {"synthesized": self.synthesis.target_rank, "full_finetune": self.full_finetune.target_rank}
        return ranks.get(self.teacher, self.lora.r)


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
    parser.add_argument("--force", type=bool, default=False)  # a config printed by ``svdlora experiment`` has it
    parser.add_class_arguments(ExperimentConfig, fail_untyped=True, sub_configs=True)
    try:
        parsed = parser.parse_args(["-c", str(path), *overrides])
    except ArgumentError as error:
        raise InputError(f"{path}: {' '.join(str(error).split())}") from None
    values = parser.instantiate_classes(parsed)
    return ExperimentConfig(**{field.name: values[field.name] for field in dataclasses.fields(ExperimentConfig)})
