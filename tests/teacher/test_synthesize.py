"""``svdlora synthesize`` end to end on a tiny-model adapter: the four outputs, the teacher's rank-r truncation
equal to the LoRA update with no noise, energy fractions, seed determinism, and one-line exit-2 errors that leave
nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from builders import make_adapter, one_torch_thread  # noqa: F401 (autouse fixture)

from svdlora_pl.lora.adapters import read_adapter
from svdlora_pl.cli import main
from svdlora_pl.lora.factor_files import load_factors

R = 8
FILES = [
    f"synthesized_delta_rank{R}.safetensors",
    "synthesis_report.json",
    "synthesis_report.txt",
    "synthesis_plots.png",
]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    """Tiny Qwen2 adapter, r=4, alpha=8 (scaling 2) on q_proj and v_proj, random non-zero B."""
    return make_adapter(
        tmp_path_factory.mktemp("adapters") / "lora", r=4, alpha=8, seed=3, targets=["q_proj", "v_proj"]
    )


@pytest.fixture(scope="module")
def clean(adapter, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "clean"
    assert run("--adapter", adapter, "--target-rank", R, "--noise-scale", 0, "--output-dir", out) == 0
    return out


def run(*args) -> int:
    return main(["synthesize", *map(str, args)])


def lora_updates(path: Path) -> dict[str, np.ndarray]:
    return {m: f.scaling * (f.B.double() @ f.A.double()).numpy() for m, f in read_adapter(path).modules.items()}


def truncate(W: np.ndarray, k: int) -> np.ndarray:
    U, S, Vt = np.linalg.svd(W, full_matrices=False)
    return (U[:, :k] * S[:k]) @ Vt[:k]


def test_writes_all_outputs_and_prints_them(adapter, tmp_path, capsys):
    out = tmp_path / "teacher"
    assert run("--adapter", adapter, "--target-rank", R, "--output-dir", out) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    printed = capsys.readouterr().out
    for name in FILES:
        assert str(out / name) in printed
    assert (out / "synthesis_plots.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_rank_r_truncation_is_the_lora_update_without_noise(adapter, clean):
    factors, metadata = load_factors(clean / FILES[0])
    updates = lora_updates(adapter)
    assert set(factors) == set(updates) and len(updates) == 8  # 4 layers × (q, v)
    for module, (B, A) in factors.items():
        assert B.shape[1] == A.shape[0] == R
        teacher = (B.double() @ A.double()).numpy()
        assert np.linalg.matrix_rank(teacher) == R
        lora = updates[module]
        assert np.linalg.norm(truncate(teacher, 4) - lora) <= 1e-5 * np.linalg.norm(lora)
    assert metadata["target_rank"] == str(R) and metadata["noise_scale"] == "0.0" and metadata["seed"] == "0"
    assert metadata["lora_rank"] == "4" and metadata["source_adapter"] == str(adapter.resolve())
    assert metadata["base_model"] == read_adapter(adapter).base_model


def test_json_report_covers_every_module_with_fractions(adapter, clean):
    report = json.loads((clean / "synthesis_report.json").read_text())
    updates = lora_updates(adapter)
    assert set(report["modules"]) == set(updates)
    for module, e in report["modules"].items():
        assert e["shape"] == list(updates[module].shape)
        assert e["lora_rank"] == 4 and e["target_rank"] == R and e["noise_energy"] == 0.0
        assert e["kept_energy"] == pytest.approx(np.linalg.norm(updates[module]) ** 2, rel=1e-9)
        assert e["kept_fraction"] + e["added_fraction"] + e["noise_fraction"] == pytest.approx(1.0, abs=1e-9)
        assert 0.5 < e["kept_fraction"] < 1
    s = report["summary"]
    assert s["modules"] == 8 and s["lora_ranks"] == [4]
    assert s["total_total_energy"] == pytest.approx(sum(e["total_energy"] for e in report["modules"].values()))
    p = report["provenance"]
    assert (p["target_rank"], p["noise_scale"], p["decay"], p["seed"]) == (R, 0.0, 0.1, 0)
    assert "starts where that run ended" in p["note"]
    assert "starts where that run ended" in (clean / "synthesis_report.txt").read_text()


def test_noise_energy_is_calibrated(adapter, tmp_path):
    out = tmp_path / "noisy"
    assert run("--adapter", adapter, "--target-rank", R, "--noise-scale", 0.2, "--output-dir", out) == 0
    for e in json.loads((out / "synthesis_report.json").read_text())["modules"].values():
        assert e["noise_energy"] == pytest.approx(0.04 * e["kept_energy"], rel=1e-9)


def test_same_seed_same_bytes_other_seed_differs(adapter, tmp_path):
    paths = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        paths[name] = tmp_path / name
        assert run("--adapter", adapter, "--target-rank", R, "--seed", seed, "--output-dir", paths[name]) == 0
    data = {name: (path / FILES[0]).read_bytes() for name, path in paths.items()}
    assert data["a"] == data["b"] != data["c"]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--target-rank", "2"], "target_rank 2 must be between 4"),
        (["--target-rank", "65"], "min(out, in) = 64"),
        (["--target-rank", "8", "--noise-scale", "-0.1"], "--noise-scale"),
        (["--target-rank", "8", "--decay", "-1"], "--decay"),
        (["--target-rank", "x"], "--target-rank"),
    ],
)
def test_bad_values_exit_2_with_one_line_and_no_output(adapter, tmp_path, capsys, extra, needle):
    out = tmp_path / "out"
    assert run("--adapter", adapter, *extra, "--output-dir", out) == 2
    err = capsys.readouterr().err
    assert err.startswith("svdlora: error: ") and err.count("\n") == 1 and needle in err
    assert list(tmp_path.iterdir()) == []


def test_missing_adapter_exits_2(tmp_path, capsys):
    assert run("--adapter", tmp_path / "nope", "--target-rank", R, "--output-dir", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err and "no such adapter directory" in err
    assert list(tmp_path.iterdir()) == []


def test_refuses_non_empty_output_without_overwrite(adapter, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert run("--adapter", adapter, "--target-rank", R, "--output-dir", out) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert run("--adapter", adapter, "--target-rank", R, "--output-dir", out, "--overwrite") == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)


def test_refuses_output_over_the_adapter(adapter, capsys):
    assert run("--adapter", adapter, "--target-rank", R, "--output-dir", adapter, "--overwrite") == 2
    assert "would replace the input" in capsys.readouterr().err


# ---------------------------------------------------------------- --base/--finetuned: the teacher of a real full fine-tune
TINY = "svdlora:tiny-qwen2"
FULL_FILES = ["full_delta_rank{R}.safetensors", "synthesis_report.json", "synthesis_report.txt", "synthesis_plots.png"]
CHECKED = ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj", "model.layers.1.mlp.down_proj"]


@pytest.fixture(scope="module")
def full_ft(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """The tiny model plus a known rank-6 perturbation (tests/test_weight_deltas.py), saved; and its true ΔW."""
    from builders import make_finetuned, true_deltas

    from svdlora_pl.embedded.tiny import tiny_model_dir

    model = make_finetuned(tmp_path_factory.mktemp("full") / "model", seed=2)
    return model, true_deltas(tiny_model_dir(), model)


def test_full_finetune_teacher_is_the_rank_R_truncation_with_its_energy(full_ft, tmp_path, capsys):
    model, dense = full_ft
    out = tmp_path / "teacher"
    assert run("--base", TINY, "--finetuned", model, "--target-rank", 4, "--output-dir", out) == 0
    files = [name.format(R=4) for name in FULL_FILES]
    assert sorted(p.name for p in out.iterdir()) == sorted(files)
    printed = capsys.readouterr().out
    assert all(str(out / name) in printed for name in files)
    factors, metadata = load_factors(out / files[0])
    assert set(factors) == set(dense) and len(factors) == 28
    assert metadata["base"] == TINY and metadata["finetuned"] == str(model)
    assert metadata["rank"] == "4" and metadata["method"] == "full_finetune (exact)"
    report = json.loads((out / "synthesis_report.json").read_text())
    for module in CHECKED:
        W = dense[module]
        B, A = factors[module]
        assert B.shape[1] == A.shape[0] == 4
        assert np.linalg.norm((B.double() @ A.double()).numpy() - truncate(W, 4)) <= 1e-5 * np.linalg.norm(W)
        s = np.linalg.svd(W, compute_uv=False)
        e = report["modules"][module]
        assert e["total_energy"] == pytest.approx(np.sum(W**2), rel=1e-6)  # the true ‖ΔW‖², not Σ of 4 values
        assert e["kept_energy"] == pytest.approx(np.sum(s[:4] ** 2), rel=1e-6)
        assert e["kept_fraction"] == pytest.approx(np.sum(s[:4] ** 2) / np.sum(W**2), abs=1e-6)
        assert e["relative_error"] == pytest.approx(np.sqrt(np.sum(s[4:] ** 2) / np.sum(W**2)), abs=1e-6)
        assert e["rank"] == 4 and e["clamped"] is False
    s = report["summary"]
    assert s["modules"] == 28 and s["target_rank"] == 4 and s["clamped_modules"] == 0
    kept = sum(e["kept_energy"] for e in report["modules"].values())
    assert s["overall_kept_fraction"] == pytest.approx(
        kept / sum(e["total_energy"] for e in report["modules"].values())
    )
    assert "independent of any LoRA run" in report["provenance"]["note"]
    text = (out / "synthesis_report.txt").read_text()
    assert "real full fine-tune" in text and str(model) in text
    # svdlora factorize --delta reads the teacher; rank 2 of the rank-4 truncation is rank 2 of ΔW
    assert main(["factorize", "--delta", str(out / files[0]), "--rank", "2", "--output-dir", str(tmp_path / "f")]) == 0
    refactored, _ = load_factors(tmp_path / "f" / "svd_factors_rank2.safetensors")
    for module in CHECKED:
        B, A = refactored[module]
        W = dense[module]
        assert np.linalg.norm((B.double() @ A.double()).numpy() - truncate(W, 2)) <= 1e-5 * np.linalg.norm(W)


def test_full_finetune_rank_above_min_keeps_the_whole_delta(full_ft, tmp_path):
    model, dense = full_ft
    out = tmp_path / "teacher"
    args = ("--base", TINY, "--finetuned", model, "--target-rank", 100, "--target-modules", "k_proj")
    assert run(*args, "--svd", "randomized", "--output-dir", out) == 0
    factors, metadata = load_factors(out / "full_delta_rank100.safetensors")
    assert metadata["method"] == "full_finetune (randomized niter=4)" and len(factors) == 4
    report = json.loads((out / "synthesis_report.json").read_text())
    for module, (B, A) in factors.items():
        assert B.shape == (64, 64) and A.shape == (64, 128)  # k_proj is 64×128: clamped to 64
        W = dense[module]
        assert np.linalg.norm((B.double() @ A.double()).numpy() - W) <= 1e-5 * np.linalg.norm(W)
        assert report["modules"][module]["clamped"] is True and report["modules"][module]["rank"] == 64
        assert report["modules"][module]["kept_fraction"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--base", TINY, "--finetuned", "FT", "--noise-scale", "0.1"], "--noise-scale: not with --base"),
        (["--base", TINY, "--finetuned", "FT", "--decay", "0"], "--decay: not with --base"),
        (["--base", TINY], "--base: needs --finetuned"),
        (["--base", TINY, "--adapter", "ADAPTER", "--finetuned", "FT"], "not allowed with argument"),
        (["--finetuned", "FT"], "one of the arguments --adapter --base is required"),
        (["--adapter", "ADAPTER", "--svd", "randomized"], "--svd: only with --base"),
        (["--base", TINY, "--finetuned", "MISSING"], "no such model directory"),
    ],
)
def test_full_finetune_bad_options_exit_2_with_one_line_and_no_output(
    adapter, full_ft, tmp_path, capsys, extra, needle
):
    swap = {"FT": str(full_ft[0]), "ADAPTER": str(adapter), "MISSING": str(tmp_path / "missing")}
    out = tmp_path / "out"
    assert run(*[swap.get(a, a) for a in extra], "--target-rank", 4, "--output-dir", out) == 2
    err = capsys.readouterr().err
    assert err.startswith("svdlora: error: ") and err.count("\n") == 1 and needle in err, err
    assert list(tmp_path.iterdir()) == []
