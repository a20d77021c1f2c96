"""The one-command random-init vs SVD-init experiment: five resumable steps into one output directory.

Usage::

    from svdlora_pl.experiment.config import ExperimentConfig
    from svdlora_pl.experiment.runner import run_experiment

    layout = run_experiment(ExperimentConfig(output_dir=Path("experiments/tiny")))  # Layout: where everything is

Steps (each skipped when its output is complete; a step that runs makes every later step run again):

1. ``fit_random``: ``svdlora fit`` with PEFT's random init -> ``training_results/final_model_random/``;
2. ``teacher``: :func:`~svdlora_pl.teacher.synthesize.synthesize` from that adapter -> ``synthesized_teacher/``, or
   a full fine-tune of the same base on the same data (``training_results/runs/full_finetune/``) and its dense ΔW
   kept at rank R -> ``full_teacher/`` (with ``teacher: gradient`` this step and the next are skipped: the SVD-init
   fit takes the loss gradient at its own first batches with ``GradientSVDInit``);
3. ``factorize``: :func:`~svdlora_pl.teacher.factorize.factorize` of the teacher at the LoRA rank ->
   ``svd_results/``;
4. ``fit_svd``: ``svdlora fit`` with ``SVDTeacherInit`` from those factors, same seed and data order ->
   ``training_results/final_model_svd/``;
5. ``compare``: :func:`~svdlora_pl.experiment.compare.compare` of both runs -> ``training_results/comparison_*`` and
   ``training_log_*.csv``.

Every fit is an ordinary ``svdlora fit`` process (own Lightning log dir under ``training_results/runs/<name>/``, its
``config.yaml``; the command is printed) with ``LoRASpectrumMonitor``, and the SVD-init fit also with
``TeacherAlignmentMonitor``. The other steps run in this process (their equivalent ``svdlora`` command is printed).
Outputs are written atomically, so an interrupted step leaves no output and runs again.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from svdlora_pl.errors import InputError
from svdlora_pl.experiment.comparison_report import FIGURE_NAME, JSON_NAME, REPORT_NAME, csv_name
from svdlora_pl.experiment.config import ExperimentConfig
from svdlora_pl.io import atomic_directory, check_writable

SPECTRUM = "svdlora_pl.callbacks.LoRASpectrumMonitor"
ALIGNMENT = "svdlora_pl.callbacks.TeacherAlignmentMonitor"
GRADIENT = "svdlora_pl.initializers.GradientSVDInit"
LABELS = ("random", "svd")
"""Labels of the two LoRA fits in the comparison (reference first)."""


class StepFailed(RuntimeError):
    """A step's subprocess exited with a non-zero code (its own output says why)."""

    def __init__(self, step: str, code: int) -> None:
        super().__init__(f"step {step} failed (exit code {code})")
        self.code = code


@dataclass(frozen=True)
class Layout:
    """Where every deliverable of an experiment lives (under ``config.output_dir``)."""

    config: ExperimentConfig

    @property
    def root(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def results(self) -> Path:
        return self.root / "training_results"

    def run_root(self, name: str) -> Path:
        """Root directory (``trainer.default_root_dir``) of one fit."""
        return self.results / "runs" / name

    def final_model(self, name: str) -> Path:
        return self.results / f"final_model_{name}"

    @property
    def teacher_dir(self) -> Path:
        return self.root / ("synthesized_teacher" if self.config.teacher == "synthesized" else "full_teacher")

    @property
    def teacher_file(self) -> Path:
        from svdlora_pl.teacher.synthesize import delta_name, full_delta_name

        name = delta_name if self.config.teacher == "synthesized" else full_delta_name
        return self.teacher_dir / name(self.config.teacher_rank())

    @property
    def svd_dir(self) -> Path:
        return self.root / "svd_results"

    @property
    def factors(self) -> Path:
        from svdlora_pl.teacher.factorize import factors_name

        return self.svd_dir / factors_name(self.config.lora.r)

    @property
    def comparison(self) -> Path:
        return self.results / JSON_NAME

    @property
    def report(self) -> Path:
        return self.results / REPORT_NAME

    def deliverables(self) -> list[tuple[str, Path]]:
        """(what, where) of every deliverable, in step order."""
        teacher = [("teacher and its report", self.teacher_dir), ("SVD factors and analysis", self.svd_dir)]
        return [
            ("random-init adapter", self.final_model("random")),
            *(teacher if self.config.teacher != "gradient" else []),
            ("SVD-init adapter", self.final_model("svd")),
            ("comparison report", self.report),
            ("training logs (CSV, TensorBoard)", self.results),
        ]


def announce(step: str, tool: str, options: dict[str, Any]) -> None:
    """Print the ``svdlora TOOL`` command line equivalent to an in-process step."""
    words = []
    for key, value in options.items():
        if dataclasses.is_dataclass(value):
            words += [f"--{key}.{name} {item}" for name, item in dataclasses.asdict(value).items()]
        elif isinstance(value, list | tuple):
            words.append(f"--{key} '[{', '.join(map(str, value))}]'")
        elif value is not None:
            words.append(f"--{key} {value}")
    print(f"[experiment] {step}: svdlora {tool} {' '.join(words)}", flush=True)


def log_dir(run_root: Path) -> Path:
    """The single Lightning log dir (``lightning_logs/version_N``) of a fit's root directory."""
    found = sorted(run_root.glob("lightning_logs/version_*"))
    if len(found) != 1:
        raise InputError(f"{run_root}: expected one Lightning run, found {len(found)}")
    return found[0]


Fit = Literal["random", "svd", "full_finetune"]
"""The experiment's fits: random-init LoRA, SVD-init LoRA, and the full fine-tune teacher."""


def callback_args(class_path: str, **init_args: object) -> list[str]:
    """``svdlora fit`` arguments that append one callback to the fit config's ``trainer.callbacks``."""
    return [f"--trainer.callbacks+={class_path}", *(f"--trainer.callbacks.{k}={v}" for k, v in init_args.items())]


def fit_args(layout: Layout, fit: Fit) -> list[str]:
    """The experiment's ``svdlora fit`` arguments of one fit (after the fit config, before ``fit_args``)."""
    config = layout.config
    if fit == "full_finetune":  # no LoRA: every weight trains
        full = config.full_finetune
        return ["--model.lora=null", f"--model.optimizer.init_args.lr={full.lr}", f"--trainer.max_epochs={full.epochs}"]
    lora = [
        f"--model.lora.r={config.lora.r}",
        f"--model.lora.alpha={config.lora.alpha}",
        f"--model.optimizer.init_args.lr={config.lr}",
        f"--trainer.max_epochs={config.epochs}",
        *callback_args(SPECTRUM, every_n_steps=config.monitor_every_n_steps),
    ]
    if fit == "random":
        return lora
    if config.teacher == "gradient":  # the fit takes its own teacher: the gradient at its first batches
        init = dataclasses.asdict(config.gradient)
        return [*lora, f"--model.initializer={GRADIENT}", *(f"--model.initializer.{k}={v}" for k, v in init.items())]
    return [
        *lora,
        "--model.initializer=svdlora_pl.initializers.SVDTeacherInit",
        f"--model.initializer.factors={layout.factors}",
        f"--model.initializer.mode={config.svd_init.mode}",
        *callback_args(ALIGNMENT, factors=layout.factors, every_n_steps=config.monitor_every_n_steps),
    ]


def fit_command(layout: Layout, fit: Fit) -> list[str]:
    """The command line of one fit: ``svdlora fit`` (as ``python -m svdlora_pl.cli``) in its own root directory."""
    config = layout.config
    extra = [*config.full_finetune.fit_args, *config.fit_args] if fit == "full_finetune" else config.fit_args
    return [
        sys.executable, "-m", "svdlora_pl.cli", "fit", "-c", str(config.fit_config),
        f"--trainer.default_root_dir={layout.run_root(fit)}",
        *fit_args(layout, fit), *extra,
    ]  # fmt: skip


def run_fit(layout: Layout, fit: Fit, step: str) -> Path:
    """Run one fit from scratch (a leftover of an interrupted attempt is removed first); returns its log dir."""
    root = layout.run_root(fit)
    command = fit_command(layout, fit)
    shutil.rmtree(root, ignore_errors=True)
    print(f"[experiment] {step}: svdlora {' '.join(command[3:])}", flush=True)
    code = subprocess.run(command, check=False).returncode
    if code != 0:
        raise StepFailed(step, code)
    return log_dir(root)


def keep_adapter(source: Path, target: Path) -> None:
    """Copy a fit's adapter directory to its deliverable place, atomically."""
    with atomic_directory(target) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True)


def step_fit_random(layout: Layout) -> None:
    run = run_fit(layout, "random", "fit_random")
    keep_adapter(run / "adapter", layout.final_model("random"))


def step_teacher(layout: Layout) -> None:
    from svdlora_pl.teacher.delta_svd import SVDOptions
    from svdlora_pl.teacher.synthesize import synthesize

    config = layout.config
    if config.teacher == "synthesized":
        synthesis = config.synthesis
        options: dict[str, Any] = {
            "adapter": log_dir(layout.run_root("random")) / "adapter",  # provenance names the run
            "target_rank": synthesis.target_rank,
            "noise_scale": synthesis.noise_scale,
            "decay": synthesis.decay,
            "seed": synthesis.seed,
        }
    else:
        full = config.full_finetune
        run = run_fit(layout, "full_finetune", "teacher (full fine-tune)")
        options = {
            "base": _base_model(run),
            "finetuned": str(run / "model"),
            "target_rank": full.target_rank,
            "svd": SVDOptions(method=full.svd),
        }
    announce("teacher", "synthesize", options)
    synthesize(output_dir=layout.teacher_dir, overwrite=True, **options)


def _base_model(run: Path) -> str:
    """``model.model_name_or_path`` of a finished fit, from the config.yaml LightningCLI saved in its log dir."""
    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    return str(config["model"]["model_name_or_path"])


def step_factorize(layout: Layout) -> None:
    from svdlora_pl.teacher.factorize import factorize

    options: dict[str, Any] = {
        "delta": layout.teacher_file,
        "rank": layout.config.lora.r,
        "split": layout.config.svd_init.split,
    }
    announce("factorize", "factorize", options)
    factorize(output_dir=layout.svd_dir, overwrite=True, **options)


def step_fit_svd(layout: Layout) -> None:
    run = run_fit(layout, "svd", "fit_svd")
    keep_adapter(run / "adapter", layout.final_model("svd"))


def step_compare(layout: Layout) -> None:
    """Compare both runs; the files land in ``training_results/`` (the report last: it marks completion)."""
    from svdlora_pl.experiment.compare import compare, print_summary

    staging = layout.results / ".comparison-staging"
    shutil.rmtree(staging, ignore_errors=True)
    options: dict[str, Any] = {
        "run_dirs": [log_dir(layout.run_root("random")), log_dir(layout.run_root("svd"))],
        "labels": list(LABELS),
    }
    announce("compare", "compare", {**options, "output_dir": layout.results})
    comparison = compare(output_dir=staging, **options)
    for name in (JSON_NAME, FIGURE_NAME, *map(csv_name, LABELS), REPORT_NAME):
        (staging / name).replace(layout.results / name)
    shutil.rmtree(staging, ignore_errors=True)
    print_summary(comparison, layout.results)


@dataclass(frozen=True)
class Step:
    """One step: its name, the file whose presence means it is complete, and what runs it."""

    name: str
    done: Callable[[Layout], Path]
    run: Callable[[Layout], None]


STEPS = (
    Step("fit_random", lambda lay: lay.final_model("random") / "adapter_model.safetensors", step_fit_random),
    Step("teacher", lambda lay: lay.teacher_file, step_teacher),
    Step("factorize", lambda lay: lay.factors, step_factorize),
    Step("fit_svd", lambda lay: lay.final_model("svd") / "adapter_model.safetensors", step_fit_svd),
    Step("compare", lambda lay: lay.report, step_compare),
)
TEACHER_STEPS = ("teacher", "factorize")
"""Steps that build the teacher's factors beforehand (none for the gradient, which the SVD-init fit takes itself)."""


def run_experiment(config: ExperimentConfig, force: bool = False) -> Layout:
    """Run (or resume) every step of the experiment into ``config.output_dir``.

    Args:
        config: The experiment (checked when built).
        force: Redo every step, even those whose output is complete.

    Returns:
        Where every deliverable is.

    Raises:
        StepFailed: A fit exited with a non-zero code (rerun to resume).
        InputError: A step refused its input.
    """
    layout = Layout(config)
    if layout.root.exists() and not layout.root.is_dir():
        raise InputError(f"output_dir: {layout.root} exists and is not a directory")
    check_writable(layout.root, "output_dir")
    layout.root.mkdir(parents=True, exist_ok=True)
    stale = force
    for step in STEPS:
        if config.teacher == "gradient" and step.name in TEACHER_STEPS:
            continue
        if not stale and step.done(layout).is_file():
            print(f"[experiment] {step.name}: done already ({step.done(layout)})", flush=True)
            continue
        step.run(layout)
        stale = True  # later steps depend on this one's output
    return layout
