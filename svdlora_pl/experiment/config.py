"""The configuration of ``svdlora experiment``: a small YAML file, read into dataclasses with checked fields.

Example (``configs/experiment/tiny.yaml``)::

    output_dir: experiments/tiny
    fit_config: configs/tiny.yaml        # LightningCLI config shared by every fit
    lora: {r: 8, alpha: 16.0}            # LoRA of both the random-init and the SVD-init fit
    lr: 0.003
    epochs: 4
    teacher: synthesized                 # or full_finetune
    synthesis: {target_rank: 32, noise_scale: 0.1}
    full_finetune: {lr: 0.0003, epochs: 4, target_rank: 32, svd: exact}
    svd_init: {mode: warm_start}
    monitor_every_n_steps: 10

Relative paths are relative to the working directory, as for ``svdlora fit -c``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from svdlora_pl.errors import InputError


@dataclass
class LoRAConfig:
    """LoRA of both fits.

    Args:
        r: LoRA rank; also the rank of the exported SVD factors.
        alpha: Scaling numerator (scaling = alpha / r).
    """

    r: int = 8
    alpha: float = 16.0


@dataclass
class SynthesisConfig:
    """``svdlora synthesize`` options for a teacher synthesized from the random-init adapter.

    Args:
        target_rank: Rank R of the synthesized teacher (>= LoRA r).
        noise_scale: Noise energy = noise_scale² × LoRA update energy.
        decay: Decay rate of the appended singular values (null: the tool's default).
        seed: Seed of the completed bases and the noise.
    """

    target_rank: int = 32
    noise_scale: float = 0.1
    decay: float | None = None
    seed: int = 0


@dataclass
class FullFinetuneConfig:
    """A real full fine-tune of the same base on the same data, used as the teacher.

    Args:
        lr: Learning rate of the full fine-tune (all weights trained; much smaller than LoRA's).
        epochs: Epochs of the full fine-tune.
        target_rank: Rank R at which the dense ΔW = W_ft − W_base is kept (its top R singular triplets).
        svd: ``exact`` (torch.linalg.svd) or ``randomized`` (torch.svd_lowrank) for the dense ΔW.
        fit_args: Extra ``svdlora fit`` arguments of the full fine-tune only.
    """

    lr: float = 3e-4
    epochs: int = 4
    target_rank: int = 32
    svd: Literal["exact", "randomized"] = "exact"
    fit_args: list[str] = field(default_factory=list)


@dataclass
class SVDInitConfig:
    """The SVD-init fit.

    Args:
        mode: ``warm_start`` (start at base + the teacher's rank-r update) or ``residual`` (same factors, the update
            subtracted from the base so the output is unchanged at step 0).
        split: How √Σ is split in the exported factors (``sqrt``; ``B`` puts Σ in B).
    """

    mode: Literal["warm_start", "residual"] = "warm_start"
    split: Literal["sqrt", "B"] = "sqrt"


@dataclass
class ExperimentConfig:
    """Everything ``svdlora experiment`` runs.

    Args:
        output_dir: Directory of every deliverable (``--output-dir`` overrides it).
        fit_config: LightningCLI config (``svdlora fit -c``) shared by all fits: model, data, trainer, seed.
        fit_args: Extra ``svdlora fit`` arguments of every fit (e.g. ``--trainer.max_steps=20``).
        lora: LoRA rank and alpha of both LoRA fits.
        lr: Learning rate of both LoRA fits.
        epochs: Epochs of both LoRA fits.
        teacher: ``synthesized`` (from the random-init run's adapter: circular by construction) or ``full_finetune``.
        synthesis: Options of a synthesized teacher.
        full_finetune: Options of a full fine-tune teacher.
        svd_init: Options of the SVD-init fit.
        monitor_every_n_steps: Optimizer steps between spectrum / teacher-alignment measurements.
    """

    output_dir: str = "experiments/default"
    fit_config: str = "configs/tiny.yaml"
    fit_args: list[str] = field(default_factory=list)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    lr: float = 3e-3
    epochs: int = 4
    teacher: Literal["synthesized", "full_finetune"] = "synthesized"
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    full_finetune: FullFinetuneConfig = field(default_factory=FullFinetuneConfig)
    svd_init: SVDInitConfig = field(default_factory=SVDInitConfig)
    monitor_every_n_steps: int = 10

    def teacher_rank(self) -> int:
        """Rank R of the teacher of the configured kind."""
        return self.synthesis.target_rank if self.teacher == "synthesized" else self.full_finetune.target_rank


CHOICES = {
    "teacher": ("synthesized", "full_finetune"),
    "svd": ("exact", "randomized"),
    "mode": ("warm_start", "residual"),
    "split": ("sqrt", "B"),
}


def _convert(path: Path, where: str, value: Any, default: Any) -> Any:
    """``value`` checked against the type of the field's default (bool/int/float/str/list of str)."""
    if isinstance(default, list):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InputError(f"{path}: {where}: expected a list of strings, got {value!r}")
        return value
    if isinstance(default, float) or default is None:
        if isinstance(value, bool) or not isinstance(value, int | float) and value is not None:
            raise InputError(f"{path}: {where}: expected a number, got {value!r}")
        return None if value is None else float(value)
    if isinstance(default, int) and (isinstance(value, bool) or not isinstance(value, int)):
        raise InputError(f"{path}: {where}: expected an integer, got {value!r}")
    if isinstance(default, str) and not isinstance(value, str):
        raise InputError(f"{path}: {where}: expected a string, got {value!r}")
    choices = CHOICES.get(where.rpartition(".")[2])
    if choices and value not in choices:
        raise InputError(f"{path}: {where}: must be one of {', '.join(choices)}, got {value!r}")
    return value


def _build(cls: type, path: Path, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise InputError(f"{path}: {prefix or 'top level'}: expected a mapping, got {type(data).__name__}")
    instance = cls()
    fields = {f.name for f in dataclasses.fields(cls)}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in fields:
            raise InputError(f"{path}: {where}: unknown field (expected one of {', '.join(sorted(fields))})")
        default = getattr(instance, key)
        if dataclasses.is_dataclass(default):
            setattr(instance, key, _build(type(default), path, value, f"{where}."))
        else:
            setattr(instance, key, _convert(path, where, value, default))
    return instance


def _check(path: Path, config: ExperimentConfig) -> None:
    positive = {
        "lora.r": config.lora.r, "lora.alpha": config.lora.alpha, "lr": config.lr, "epochs": config.epochs,
        "synthesis.target_rank": config.synthesis.target_rank, "full_finetune.lr": config.full_finetune.lr,
        "full_finetune.epochs": config.full_finetune.epochs, "full_finetune.target_rank": config.full_finetune.target_rank,
        "monitor_every_n_steps": config.monitor_every_n_steps,
    }  # fmt: skip
    for where, value in positive.items():
        if value <= 0:
            raise InputError(f"{path}: {where}: must be positive, got {value}")
    if config.teacher_rank() < config.lora.r:
        raise InputError(f"{path}: teacher rank {config.teacher_rank()} is below lora.r = {config.lora.r}")
    if not Path(config.fit_config).is_file():
        raise InputError(f"{path}: fit_config: {config.fit_config} not found")


def load_experiment_config(path: str | Path) -> ExperimentConfig:
    """Read and check an experiment YAML; every problem is an InputError naming the file and the field."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise InputError(f"{file}: file not found")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise InputError(f"{file}: not valid YAML: {str(error).splitlines()[0]}") from None
    config = _build(ExperimentConfig, file, data if data is not None else {}, "")
    _check(file, config)
    return config
