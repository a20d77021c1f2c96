"""Provenance of a run's initialization from a fake ``config.yaml`` and factor files: a synthesized (circular)
teacher, a full fine-tune teacher, an adapter factorized directly, and every best-effort unknown."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from builders import LOSS_A, LOSS_B, make_run, svd_init, write_config
from safetensors.torch import save_file

from svdlora_pl.experiment.comparison import build_comparison
from svdlora_pl.experiment.comparison_report import format_report
from svdlora_pl.experiment.run_log import load_runs


def factor_file(path: Path, metadata: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"m.lora_A": torch.zeros(1, 2), "m.lora_B": torch.zeros(2, 1)}, str(path), metadata=metadata)
    return path


@pytest.fixture
def two_runs(tmp_path) -> tuple[Path, Path]:
    random = make_run(tmp_path / "random" / "lightning_logs" / "version_0", LOSS_A)
    svd = make_run(tmp_path / "svd" / "lightning_logs" / "version_0", LOSS_B)
    write_config(random, "    class_path: svdlora_pl.initializers.RandomInit\n")
    return random, svd


def provenance(paths: list[Path], labels: list[str]) -> list[dict]:
    return [r["provenance"] for r in build_comparison(load_runs(paths, labels))["runs"]]


def test_provenance_synthesized_teacher_is_circular(tmp_path, two_runs):
    random, svd = two_runs
    teacher = factor_file(
        tmp_path / "teacher" / "synthesized_delta_rank8.safetensors",
        {"source_adapter": str(random / "adapter"), "format": "svdlora-synthesized-usv"},
    )
    factors = factor_file(
        tmp_path / "svd_results" / "svd_factors_rank4.safetensors", {"source": str(teacher), "source_kind": "delta"}
    )
    write_config(svd, svd_init(factors))
    first, second = provenance([random, svd], ["random", "svd"])
    assert first["initializer"] == "svdlora_pl.initializers.RandomInit" and first["teacher_kind"] is None
    assert first["summary"] == "svdlora_pl.initializers.RandomInit (no teacher)"
    assert second["initializer"] == "svdlora_pl.initializers.SVDTeacherInit"
    assert second["factors_file"] == str(factors)
    assert second["factors_metadata"] == {"source": str(teacher), "source_kind": "delta"}
    assert second["teacher_file"] == str(teacher) and second["teacher_metadata"]["source_adapter"] == str(
        random / "adapter"
    )
    assert (second["teacher_kind"], second["circular_with"]) == ("synthesized", "random")
    assert "teacher synthesized from the adapter of run 'random'" in second["summary"]
    assert "circular: the SVD run starts where that run ended" in second["summary"]
    write_config(svd, svd_init(teacher))  # the synthesized teacher used as factors directly
    direct = provenance([random, svd], ["random", "svd"])[1]
    assert (direct["teacher_kind"], direct["circular_with"], direct["teacher_file"]) == (
        "synthesized",
        "random",
        str(teacher),
    )


def test_provenance_full_finetune_relative_paths_and_direct_adapter(tmp_path, two_runs, monkeypatch):
    random, svd = two_runs
    monkeypatch.chdir(tmp_path)
    factor_file(tmp_path / "ft" / "delta.safetensors", {"method": "full fine-tune diff", "finetuned": "ft/model"})
    factor_file(tmp_path / "svd_results" / "f.safetensors", {"source": "ft/delta.safetensors", "source_kind": "delta"})
    write_config(svd, svd_init("svd_results/f.safetensors"))  # relative to the working directory
    info = provenance([random, svd], ["random", "svd"])[1]
    assert (info["teacher_kind"], info["circular_with"]) == ("full_finetune", None)
    assert info["teacher"] == "ft/delta.safetensors"
    assert info["teacher_file"] == str(tmp_path / "ft" / "delta.safetensors")
    assert "teacher from a full fine-tune" in info["summary"] and "not circular" in info["summary"]
    report = format_report(build_comparison(load_runs([random, svd], ["random", "svd"])))
    assert "Note: svd's teacher is a full fine-tune whose own training steps are not on this step axis" in report
    assert "expected by construction" not in report

    factor_file(
        tmp_path / "svd_results" / "g.safetensors", {"source": str(random / "adapter"), "source_kind": "adapter"}
    )
    write_config(svd, svd_init("svd_results/g.safetensors"))
    info = provenance([random, svd], ["random", "svd"])[1]
    assert (info["teacher_kind"], info["circular_with"]) == ("adapter", "random")
    assert "= SVD of the adapter of run 'random'" in info["summary"]


def test_provenance_best_effort_unknowns(tmp_path, two_runs):
    random, svd = two_runs
    assert provenance([svd], ["svd"])[0]["summary"].startswith("unknown (no config.yaml")
    write_config(svd, svd_init(tmp_path / "nowhere.safetensors"))
    info = provenance([svd], ["svd"])[0]
    assert info["factors_file"] is None and "file not found: teacher unknown" in info["summary"]
    (svd / "config.yaml").write_text("model: [unclosed", encoding="utf-8")
    assert provenance([svd], ["svd"])[0]["initializer"] == "unknown (config.yaml unreadable)"
    (svd / "config.yaml").write_text("trainer: {}\n", encoding="utf-8")
    assert provenance([svd], ["svd"])[0]["initializer"].startswith("unknown (no model.initializer")
    not_safetensors = tmp_path / "pickle.pt"
    not_safetensors.write_bytes(b"\x80\x04not a safetensors file")
    write_config(svd, svd_init(not_safetensors))
    info = provenance([svd], ["svd"])[0]
    assert info["factors_metadata"] is None and "no readable safetensors metadata" in info["summary"]
    teacher_gone = factor_file(tmp_path / "f.safetensors", {"source": str(tmp_path / "gone"), "source_kind": "delta"})
    write_config(svd, svd_init(teacher_gone))
    info = provenance([svd], ["svd"])[0]
    assert (info["teacher"], info["teacher_file"], info["teacher_kind"]) == (str(tmp_path / "gone"), None, "unknown")
    assert "(file not found: origin unknown)" in info["summary"]
    anonymous = factor_file(tmp_path / "t.safetensors", {"rank": "4"})
    write_config(
        svd, svd_init(factor_file(tmp_path / "g.safetensors", {"source": str(anonymous), "source_kind": "delta"}))
    )
    info = provenance([svd], ["svd"])[0]
    assert info["teacher_file"] == str(anonymous) and "of unknown origin (no source_adapter)" in info["summary"]


@pytest.mark.parametrize(
    ("sketched", "estimate"),
    [(196.0, "a 2-pass sketch, oversample 40"),
     (140.0, "a 2-pass sketch, oversample 40 (56 of 196 layers small enough to be held whole: exact)"),
     (0.0, "dense gradients (196 of 196 layers small enough to be held whole: exact)")],
)  # fmt: skip
def test_provenance_gradient_teacher_states_its_batches_estimator_and_cost(tmp_path, sketched, estimate):
    from builders import write_events

    random = make_run(tmp_path / "random" / "lightning_logs" / "version_0", LOSS_A)
    gradient = write_events(
        tmp_path / "gradient" / "lightning_logs" / "version_0",
        {"train/loss": list(enumerate(LOSS_B)), "weights/init/forward_backward_passes": [(0, 16.0)], "weights/init/seconds": [(0, 2.5)],
         "weights/init/layers_sketched": [(0, sketched)], "weights/init/layers": [(0, 196.0)]},
    )  # fmt: skip
    write_config(random, "    class_path: svdlora_pl.initializers.RandomInit\n")
    write_config(
        gradient,
        "    class_path: svdlora_pl.initializers.GradientSVDInit\n"
        "    init_args: {scheme: lora_ga, num_batches: 8, estimator: sketch, oversample: 40, passes: 2}\n",
    )
    info = provenance([random, gradient], ["random", "gradient"])[1]
    assert info["teacher_kind"] == "gradient"
    assert info["summary"] == (
        f"GradientSVDInit (lora_ga): the loss gradient of 8 training batches at the base weights, from {estimate}; "
        "cost 16 forward+backward passes, 2.5 s; not circular"
    )
