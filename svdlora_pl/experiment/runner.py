"""The one-command random-init vs SVD-init experiment: five resumable steps into one output directory.

Steps (each skipped when its output is complete; a step that runs makes every later step run again):

1. ``fit_random``: ``svdlora fit`` with PEFT's random init -> ``training_results/final_model_random/``;
2. ``teacher``: ``svdlora synthesize`` from that adapter -> ``synthesized_teacher/``, or a full fine-tune of the
   same base on the same data (``training_results/runs/full_finetune/``) and its dense ΔW kept at rank R ->
   ``full_teacher/``;
3. ``factorize``: ``svdlora factorize`` of the teacher at the LoRA rank -> ``svd_results/``;
4. ``fit_svd``: ``svdlora fit`` with ``SVDTeacherInit`` from those factors, same seed and data order ->
   ``training_results/final_model_svd/``;
5. ``compare``: ``svdlora compare`` of both runs -> ``training_results/comparison_*`` and ``training_log_*.csv``.

Every fit is an ordinary ``svdlora fit`` process (own Lightning log dir under ``training_results/runs/<name>/``, its
``config.yaml``; the command is printed) with ``LoRASpectrumMonitor``, and the SVD-init fit also with
``TeacherAlignmentMonitor``. Outputs are written atomically, so an interrupted step leaves no output and runs again.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from svdlora_pl.errors import InputError
from svdlora_pl.experiment.config import ExperimentConfig
from svdlora_pl.io import atomic_directory

SPECTRUM = "svdlora_pl.callbacks.LoRASpectrumMonitor"
ALIGNMENT = "svdlora_pl.callbacks.TeacherAlignmentMonitor"
COMPARISON_FILES = (
    "comparison.json",
    "comparison_random_vs_svd.png",
    "training_log_random.csv",
    "training_log_svd.csv",
)
REPORT = "comparison_report.txt"


class StepFailed(RuntimeError):
    """A step's subprocess exited with a non-zero code (its own output says why)."""

    def __init__(self, step: str, code: int) -> None:
        super().__init__(f"step {step} failed (exit code {code})")
        self.code = code


@dataclass
class Layout:
    """Where every deliverable of an experiment lives."""

    root: Path
    config: ExperimentConfig

    @property
    def results(self) -> Path:
        return self.root / "training_results"

    def run_root(self, name: str) -> Path:
        return self.results / "runs" / name

    def final_model(self, name: str) -> Path:
        return self.results / f"final_model_{name}"

    @property
    def teacher_dir(self) -> Path:
        return self.root / ("synthesized_teacher" if self.config.teacher == "synthesized" else "full_teacher")

    @property
    def teacher_file(self) -> Path:
        prefix = "synthesized" if self.config.teacher == "synthesized" else "full"
        return self.teacher_dir / f"{prefix}_delta_rank{self.config.teacher_rank()}.safetensors"

    @property
    def svd_dir(self) -> Path:
        return self.root / "svd_results"

    @property
    def factors(self) -> Path:
        return self.svd_dir / f"svd_factors_rank{self.config.lora.r}.safetensors"

    @property
    def report(self) -> Path:
        return self.results / REPORT


def log_dir(run_root: Path) -> Path:
    """The single Lightning log dir (``lightning_logs/version_N``) of a fit's root directory."""
    found = sorted(run_root.glob("lightning_logs/version_*"))
    if len(found) != 1:
        raise InputError(f"{run_root}: expected one Lightning run, found {len(found)}")
    return found[0]


def fit_command(config: ExperimentConfig, run_root: Path, extra: list[str]) -> list[str]:
    """The ``svdlora fit`` command line of one fit (run as ``python -m svdlora_pl.cli`` in a subprocess)."""
    return [
        sys.executable, "-m", "svdlora_pl.cli", "fit", "-c", config.fit_config,
        f"--trainer.default_root_dir={run_root}",
        *extra, *config.fit_args,
    ]  # fmt: skip


def lora_args(config: ExperimentConfig) -> list[str]:
    return [
        f"--model.lora.r={config.lora.r}",
        f"--model.lora.alpha={config.lora.alpha}",
        f"--model.optimizer.init_args.lr={config.lr}",
        f"--trainer.max_epochs={config.epochs}",
        f"--trainer.callbacks+={SPECTRUM}",
        f"--trainer.callbacks.every_n_steps={config.monitor_every_n_steps}",
    ]


def run_fit(name: str, command: list[str], run_root: Path) -> Path:
    """Run one fit from scratch (a leftover of an interrupted attempt is removed first); returns its log dir."""
    shutil.rmtree(run_root, ignore_errors=True)
    print(f"[experiment] {name}: {' '.join(command[2:])}", flush=True)
    code = subprocess.run(command, check=False).returncode
    if code != 0:
        raise StepFailed(name, code)
    return log_dir(run_root)


def keep_adapter(source: Path, target: Path) -> None:
    """Copy a fit's adapter directory to its deliverable place, atomically."""
    with atomic_directory(target) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True)


def step_fit_random(layout: Layout) -> None:
    root = layout.run_root("random")
    run = run_fit("fit_random", fit_command(layout.config, root, lora_args(layout.config)), root)
    keep_adapter(run / "adapter", layout.final_model("random"))


def step_teacher(layout: Layout) -> None:
    from svdlora_pl.teacher import synthesize as synthesize_cli

    config = layout.config
    if config.teacher == "synthesized":
        synthesis = config.synthesis
        args = [
            "--adapter", str(log_dir(layout.run_root("random")) / "adapter"),  # provenance names the run
            "--target-rank", str(synthesis.target_rank),
            "--noise-scale", str(synthesis.noise_scale), "--seed", str(synthesis.seed),
        ]  # fmt: skip
        if synthesis.decay is not None:
            args += ["--decay", str(synthesis.decay)]
    else:
        full = config.full_finetune
        root = layout.run_root("full_finetune")
        extra = [
            "--model.lora=null",
            f"--model.optimizer.init_args.lr={full.lr}",
            f"--trainer.max_epochs={full.epochs}",
        ]
        run = run_fit("teacher (full fine-tune)", fit_command(config, root, extra + full.fit_args), root)
        base = _base_model(run)
        args = ["--base", base, "--finetuned", str(run / "model"), "--target-rank", str(full.target_rank)]
        args += ["--svd", full.svd]
    print(f"[experiment] teacher: svdlora synthesize {' '.join(args)}", flush=True)
    synthesize_cli.main([*args, "--output-dir", str(layout.teacher_dir), "--overwrite"])


def _base_model(run: Path) -> str:
    """``model.model_name_or_path`` of a finished fit, from the config.yaml LightningCLI saved in its log dir."""
    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    return str(config["model"]["model_name_or_path"])


def step_factorize(layout: Layout) -> None:
    from svdlora_pl.teacher import factorize as factorize_cli

    config = layout.config
    args = ["--delta", str(layout.teacher_file), "--rank", str(config.lora.r), "--split", config.svd_init.split]
    print(f"[experiment] factorize: svdlora factorize {' '.join(args)}", flush=True)
    factorize_cli.main([*args, "--output-dir", str(layout.svd_dir), "--overwrite"])


def step_fit_svd(layout: Layout) -> None:
    config = layout.config
    root = layout.run_root("svd")
    extra = lora_args(config) + [
        "--model.initializer=svdlora_pl.initializers.SVDTeacherInit",
        f"--model.initializer.factors={layout.factors}",
        f"--model.initializer.mode={config.svd_init.mode}",
        f"--trainer.callbacks+={ALIGNMENT}",
        f"--trainer.callbacks.factors={layout.factors}",
        f"--trainer.callbacks.every_n_steps={config.monitor_every_n_steps}",
    ]
    run = run_fit("fit_svd", fit_command(config, root, extra), root)
    keep_adapter(run / "adapter", layout.final_model("svd"))


def step_compare(layout: Layout) -> None:
    """Compare both runs; the files land in ``training_results/`` (the report last: it marks completion)."""
    from svdlora_pl.experiment import compare as compare_cli

    staging = layout.results / ".comparison-staging"
    shutil.rmtree(staging, ignore_errors=True)
    runs = [str(log_dir(layout.run_root("random"))), str(log_dir(layout.run_root("svd")))]
    args = compare_cli.build_parser().parse_args([*runs, "--labels", "random", "svd", "--output-dir", str(staging)])
    comparison = compare_cli.run(args)
    for name in (*COMPARISON_FILES, REPORT):
        (staging / name).replace(layout.results / name)
    shutil.rmtree(staging, ignore_errors=True)
    compare_cli.print_summary(comparison, layout.results)


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


def run_experiment(config: ExperimentConfig, output_dir: Path, force: bool = False) -> Layout:
    """Run (or resume) every step into ``output_dir``; ``force`` redoes all of them."""
    layout = Layout(output_dir, config)
    output_dir.mkdir(parents=True, exist_ok=True)
    stale = force
    for step in STEPS:
        if not stale and step.done(layout).is_file():
            print(f"[experiment] {step.name}: done already ({step.done(layout)})", flush=True)
            continue
        step.run(layout)
        stale = True  # later steps depend on this one's output
    return layout
