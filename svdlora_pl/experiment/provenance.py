"""Where a run's LoRA initialization came from, read from its ``config.yaml`` and the factor files it names.

Provenance (best effort, "unknown" when a file is missing): the initializer ``class_path`` from the run's
``config.yaml`` (written by LightningCLI); for ``GradientSVDInit`` its arguments and the cost it logged
(``weights/init/forward_backward_passes``, ``weights/init/seconds``); for ``SVDTeacherInit``, the factor file's safetensors metadata
(``source``, ``source_kind``) and, when that source is itself a teacher file, the teacher's metadata: a teacher
synthesized from an adapter (``source_adapter``) makes the comparison circular, since the SVD run starts where that
adapter's run ended; a teacher from a full fine-tune (recognized by a ``*finetuned*`` key, or "full" or "diff" in
its ``method``/``source_kind``/``format``) does not.

Everything here is best effort: a missing or unreadable file gives "unknown", never an exception.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from svdlora_pl.errors import InputError
from svdlora_pl.experiment.run_log import RunLog
from svdlora_pl.io import open_safetensors


def _locate(given: str, anchors: Sequence[Path]) -> Path | None:
    """``given`` as an existing file: absolute, or relative to the working directory or an anchor's ancestors."""
    path = Path(given).expanduser()
    if path.is_absolute():
        return path if path.is_file() else None
    for base in [Path.cwd()] + [a for anchor in anchors for a in Path(os.path.abspath(anchor)).parents]:
        if (base / path).is_file():
            return base / path
    return None


def _header_metadata(path: Path | None) -> dict[str, str] | None:
    """The string metadata of a safetensors file's header (no tensor is read); None if unreadable."""
    if path is None:
        return None
    try:
        with open_safetensors(path) as handle:
            return dict(handle.metadata() or {})
    except InputError:
        return None


def _initializer(run: RunLog) -> tuple[str | None, str, dict[str, Any]]:
    """(config.yaml path, initializer class path or an "unknown (...)" reason, its init_args)."""
    import yaml

    config = next((d / "config.yaml" for d in (run.event_dir, run.run_dir) if (d / "config.yaml").is_file()), None)
    if config is None:
        return None, f"unknown (no config.yaml in {run.event_dir})", {}
    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return str(config), "unknown (config.yaml unreadable)", {}
    init = (data.get("model") or {}).get("initializer") if isinstance(data, dict) else None
    if isinstance(init, str):
        return str(config), init, {}
    if not isinstance(init, dict) or not isinstance(init.get("class_path"), str):
        return str(config), "unknown (no model.initializer.class_path in config.yaml)", {}
    args = init.get("init_args")
    return str(config), init["class_path"], args if isinstance(args, dict) else {}


def _run_holding(path: str, runs: Sequence[RunLog]) -> str | None:
    """Label of the compared run whose directory holds ``path`` (e.g. its ``adapter/``), or None."""
    target = Path(os.path.abspath(path))
    for run in runs:
        for directory in {Path(os.path.abspath(run.event_dir)), Path(os.path.abspath(run.run_dir))}:
            if target == directory or directory in target.parents:
                return run.label
    return None


def _full_finetune(metadata: dict[str, str]) -> bool:
    """Whether a teacher's metadata describes a difference of full fine-tuned and base weights."""
    hints = " ".join(metadata.get(k, "") for k in ("method", "source_kind", "format", "kind")).lower()
    return any("finetuned" in k for k in metadata) or any(h in hints for h in ("full", "diff"))


def _teacher_summary(info: dict[str, Any]) -> str:
    """One line on where the teacher of an SVDTeacherInit run comes from, with the circularity stated."""
    factors = info["factors"]
    if info["factors_file"] is None:
        return f"SVDTeacherInit, factors {factors} (file not found: teacher unknown)"
    adapter = info["teacher_adapter"]
    if adapter is not None:
        circular = info["circular_with"]
        origin = f"run {circular!r} ({adapter})" if circular else adapter
        how = " = SVD of" if info["teacher_kind"] == "adapter" else "; teacher synthesized from"
        ended = "that run ended" if circular else "the adapter's run ended"
        return f"SVDTeacherInit, factors {factors}{how} the adapter of {origin} (circular: the SVD run starts where {ended})"
    if info["teacher_kind"] == "full_finetune":
        return f"SVDTeacherInit, factors {factors}; teacher from a full fine-tune ({info['teacher']}), not circular"
    if info["factors_metadata"] is None:
        return f"SVDTeacherInit, factors {factors} (no readable safetensors metadata: teacher unknown)"
    if info["teacher"] is None:
        return f"SVDTeacherInit, factors {factors} (no source in its metadata: teacher unknown)"
    if info["teacher_file"] is None:
        return f"SVDTeacherInit, factors {factors}; teacher {info['teacher']} (file not found: origin unknown)"
    return f"SVDTeacherInit, factors {factors}; teacher {info['teacher']} of unknown origin (no source_adapter)"


def _gradient_summary(init_args: dict[str, Any], scalars: dict[str, Any]) -> str:
    """One line on a ``GradientSVDInit`` run: whose gradient, how it was estimated, and what it cost."""
    from svdlora_pl.lora.gradient_init import GradientSVDInit

    try:
        init = GradientSVDInit(**init_args)
    except (TypeError, InputError):
        return f"GradientSVDInit {init_args} (arguments not understood)"
    estimate = "a dense gradient per layer" if init.estimator == "exact" else (
        f"a one-pass sketch, oversample {init.oversample}" if init.passes == 1
        else f"a {init.passes}-pass sketch, oversample {init.oversample}"
    )  # fmt: skip
    sketched, layers = scalars.get("weights/init/layers_sketched"), scalars.get("weights/init/layers")
    if init.estimator == "sketch" and sketched and layers and sketched[0][1] < layers[0][1]:
        held = f"{layers[0][1] - sketched[0][1]:.0f} of {layers[0][1]:.0f} layers small enough to be held whole: exact"
        estimate = f"dense gradients ({held})" if sketched[0][1] == 0 else f"{estimate} ({held})"
    passes, seconds = scalars.get("weights/init/forward_backward_passes"), scalars.get("weights/init/seconds")
    cost = f"; cost {passes[0][1]:.0f} forward+backward passes, {seconds[0][1]:.1f} s" if passes and seconds else ""
    return (
        f"GradientSVDInit ({init.scheme}): the loss gradient of {init.num_batches} training batches at the base "
        f"weights, from {estimate}{cost}; not circular"
    )


def run_provenance(run: RunLog, runs: Sequence[RunLog]) -> dict[str, Any]:
    """Best-effort provenance of ``run`` from its ``config.yaml`` and the factor files it names; never raises."""
    config, initializer, init_args = _initializer(run)
    info: dict[str, Any] = {
        "config": config,
        "initializer": initializer,
        "factors": None,
        "factors_file": None,
        "factors_metadata": None,
        "teacher": None,
        "teacher_file": None,
        "teacher_metadata": None,
        "teacher_kind": None,
        "teacher_adapter": None,
        "circular_with": None,
    }
    if initializer.rpartition(".")[2] == "GradientSVDInit":
        info.update(teacher_kind="gradient", summary=_gradient_summary(init_args, run.scalars))
        return info
    if initializer.rpartition(".")[2] != "SVDTeacherInit":
        info["summary"] = initializer if initializer.startswith("unknown") else f"{initializer} (no teacher)"
        return info
    anchors = [run.event_dir, run.run_dir]
    factors = init_args.get("factors")
    info["factors"] = str(factors) if factors is not None else "unknown"
    located = _locate(str(factors), anchors) if factors is not None else None
    meta = _header_metadata(located)
    info.update(factors_file=str(located) if located else None, factors_metadata=meta)
    teacher_meta: dict[str, str] | None = None
    if meta is not None and "source_adapter" in meta:  # the factors are a synthesized teacher themselves
        info.update(teacher=str(factors), teacher_file=str(located))
        teacher_meta = meta
    elif meta is not None and meta.get("source_kind", "").startswith("full_finetune"):  # factorize --base/--finetuned
        info.update(teacher=meta.get("source"), teacher_kind="full_finetune")
    elif meta is not None and meta.get("source_kind") == "adapter":
        info.update(teacher_kind="adapter", teacher_adapter=meta.get("source"))
    elif meta is not None and meta.get("source_kind", "").startswith("delta") and meta.get("source"):
        teacher = _locate(meta["source"], anchors)
        info.update(teacher=meta["source"], teacher_file=str(teacher) if teacher else None)
        teacher_meta = _header_metadata(teacher)
    info["teacher_metadata"] = teacher_meta
    if teacher_meta is not None and teacher_meta.get("source_adapter"):
        info.update(teacher_kind="synthesized", teacher_adapter=teacher_meta["source_adapter"])
    elif teacher_meta is not None and _full_finetune(teacher_meta):
        info["teacher_kind"] = "full_finetune"
    elif info["teacher_kind"] is None and located is not None:
        info["teacher_kind"] = "unknown"
    if info["teacher_adapter"]:
        info["circular_with"] = _run_holding(info["teacher_adapter"], runs)
    info["summary"] = _teacher_summary(info)
    return info
