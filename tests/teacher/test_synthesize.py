"""The synthesize library on a tiny-model adapter and a full fine-tune: the four outputs, the teacher's rank-r truncation
equal to the LoRA update with no noise, energy fractions, seed determinism, and one-line InputErrors that leave
nothing behind. The command line is tested in tests/cli/test_synthesize.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from builders import make_adapter, one_torch_thread  # noqa: F401 (autouse fixture)

from svdlora_pl.errors import InputError
from svdlora_pl.lora.adapters import read_adapter
from svdlora_pl.lora.factor_files import load_factors
from svdlora_pl.teacher.delta_svd import SVDOptions
from svdlora_pl.teacher.factorize import factorize
from svdlora_pl.teacher.synthesize import synthesize

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
    synthesize(out, R, adapter=adapter, noise_scale=0)
    return out


def lora_updates(path: Path) -> dict[str, np.ndarray]:
    return {m: f.scaling * (f.B.double() @ f.A.double()).numpy() for m, f in read_adapter(path).modules.items()}


def truncate(W: np.ndarray, k: int) -> np.ndarray:
    U, S, Vt = np.linalg.svd(W, full_matrices=False)
    return (U[:, :k] * S[:k]) @ Vt[:k]


def test_writes_all_outputs(adapter, tmp_path):
    out = tmp_path / "teacher"
    report = synthesize(out, R, adapter=adapter)
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert report == json.loads((out / "synthesis_report.json").read_text())
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
    synthesize(out, R, adapter=adapter, noise_scale=0.2)
    for e in json.loads((out / "synthesis_report.json").read_text())["modules"].values():
        assert e["noise_energy"] == pytest.approx(0.04 * e["kept_energy"], rel=1e-9)


def test_same_seed_same_bytes_other_seed_differs(adapter, tmp_path):
    paths = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        paths[name] = tmp_path / name
        synthesize(paths[name], R, adapter=adapter, seed=seed)
    data = {name: (path / FILES[0]).read_bytes() for name, path in paths.items()}
    assert data["a"] == data["b"] != data["c"]


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"target_rank": 2}, "target_rank 2 must be between 4"),
        ({"target_rank": 65}, r"min\(out, in\) = 64"),
        ({"target_rank": 0}, "^target_rank: must be >= 1, got 0$"),
        ({"target_rank": 8, "noise_scale": -0.1}, "^noise_scale: must be a finite number >= 0"),
        ({"target_rank": 8, "decay": -1}, "^decay: must be a finite number >= 0"),
        ({"target_rank": 8, "decay": float("nan")}, "^decay: must be a finite number >= 0"),
    ],
)
def test_bad_values_raise_one_line_and_write_nothing(adapter, tmp_path, options, needle):
    with pytest.raises(InputError, match=needle) as info:
        synthesize(tmp_path / "out", adapter=adapter, **options)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_missing_adapter_raises(tmp_path):
    with pytest.raises(InputError, match="nope.*no such adapter directory") as info:
        synthesize(tmp_path / "out", R, adapter=tmp_path / "nope")
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_refuses_non_empty_output_without_overwrite(adapter, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="^output_dir: .*set overwrite"):
        synthesize(out, R, adapter=adapter)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    synthesize(out, R, adapter=adapter, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)


def test_refuses_output_over_the_adapter(adapter):
    with pytest.raises(InputError, match="would replace the input"):
        synthesize(adapter, R, adapter=adapter, overwrite=True)


# ---------------------------------------------------------------- base/finetuned: the teacher of a real full fine-tune
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


def test_full_finetune_teacher_is_the_rank_R_truncation_with_its_energy(full_ft, tmp_path):
    model, dense = full_ft
    out = tmp_path / "teacher"
    synthesize(out, 4, base=TINY, finetuned=str(model))
    files = [name.format(R=4) for name in FULL_FILES]
    assert sorted(p.name for p in out.iterdir()) == sorted(files)
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
    # factorize reads the teacher as a delta; rank 2 of the rank-4 truncation is rank 2 of ΔW
    factorize(tmp_path / "f", 2, delta=out / files[0])
    refactored, _ = load_factors(tmp_path / "f" / "svd_factors_rank2.safetensors")
    for module in CHECKED:
        B, A = refactored[module]
        W = dense[module]
        assert np.linalg.norm((B.double() @ A.double()).numpy() - truncate(W, 2)) <= 1e-5 * np.linalg.norm(W)


def test_full_finetune_rank_above_min_keeps_the_whole_delta(full_ft, tmp_path):
    model, dense = full_ft
    out = tmp_path / "teacher"
    synthesize(out, 100, base=TINY, finetuned=str(model), target_modules=["k_proj"], svd=SVDOptions("randomized"))
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
    ("options", "needle"),
    [
        ({"base": TINY, "finetuned": "FT", "noise_scale": 0.1}, "^noise_scale: not with base"),
        ({"base": TINY, "finetuned": "FT", "decay": 0}, "^decay: not with base"),
        ({"base": TINY, "finetuned": "FT", "seed": 3}, "^seed: not with base"),
        ({"base": TINY}, "^base: needs finetuned"),
        ({"base": TINY, "adapter": "ADAPTER", "finetuned": "FT"}, "^base: not with adapter"),
        ({"finetuned": "FT"}, "^finetuned: only with base"),
        ({}, "^adapter or base: give one source$"),
        ({"adapter": "ADAPTER", "svd": SVDOptions("randomized")}, "^svd: only with base"),
        ({"base": TINY, "finetuned": "MISSING"}, "no such model directory"),
    ],
)
def test_full_finetune_bad_options_raise_one_line_and_write_nothing(adapter, full_ft, tmp_path, options, needle):
    swap = {"FT": str(full_ft[0]), "ADAPTER": adapter, "MISSING": str(tmp_path / "missing")}
    out = tmp_path / "out"
    with pytest.raises(InputError, match=needle) as info:
        synthesize(out, 4, **{key: swap.get(value, value) for key, value in options.items()})
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []
