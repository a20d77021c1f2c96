"""The factorize library: rank-r factors equal the dense float64 truncation, errors and energies equal the Eckart–Young
values, adapters carry their LoRA scaling, clamping is recorded, bad input raises one-line InputErrors leaving nothing,
and both QR paths of :func:`factorize_modules` agree. The command line is tested in tests/cli/test_factorize.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import make_adapter, one_torch_thread, orthonormal, pickled_delta, random_lora, svd_form  # noqa: F401 (autouse fixture)
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from svdlora_pl.errors import InputError
from svdlora_pl.teacher.delta_svd import SVDOptions
from svdlora_pl.teacher.factorize import factorize

# module -> (out, in, singular values): ΔW = U·diag(S)·Vᵀ with random orthonormal U, V
SPECTRA = {
    "model.layers.0.self_attn.q_proj": (40, 30, [5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.25, 0.1]),
    "model.layers.0.mlp.down_proj": (24, 30, [3.0, 2.5, 1.0, 0.3, 0.2, 0.1]),
    "model.layers.1.self_attn.v_proj": (12, 10, [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]),
}
NAMES = (
    "svd_factors_rank{r}.safetensors",
    "svd_analysis_rank{r}.json",
    "svd_report_rank{r}.txt",
    "svd_analysis_rank{r}.png",
)


@pytest.fixture(scope="module")
def delta(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """A synthesized-style U/S/V file and the dense float64 ΔW of each module."""
    gen = torch.Generator().manual_seed(0)
    tensors, dense = {}, {}
    for name, (out, inp, s) in SPECTRA.items():
        U, V, S = orthonormal(out, len(s), gen), orthonormal(inp, len(s), gen), torch.tensor(s, dtype=torch.float64)
        tensors.update({f"{name}.U": U, f"{name}.S": S, f"{name}.V": V})
        dense[name] = ((U * S) @ V.T).numpy()
    path = tmp_path_factory.mktemp("delta") / "synthesized_delta_rank8.safetensors"
    save_file(tensors, str(path), metadata={"method": "synthesized"})
    return path, dense


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    return make_adapter(tmp_path_factory.mktemp("adapter") / "lora", r=4, alpha=8, seed=3, targets=["q_proj"])


def truncation(W: np.ndarray, r: int) -> np.ndarray:
    U, S, Vt = np.linalg.svd(W, full_matrices=False)
    return (U[:, :r] * S[:r]) @ Vt[:r]


def products(path: Path) -> dict[str, np.ndarray]:
    tensors = load_file(str(path))
    modules = {key.rpartition(".")[0] for key in tensors}
    return {m: (tensors[f"{m}.lora_B"].double() @ tensors[f"{m}.lora_A"].double()).numpy() for m in modules}


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ---------------------------------------------------------------- success
@pytest.mark.parametrize("r", [1, 3, 5])
def test_delta_factors_equal_dense_truncation_and_eckart_young(delta, tmp_path, r):
    path, dense = delta
    out = tmp_path / "out"
    assert factorize(out, r, delta=path)["rank"] == r
    assert sorted(p.name for p in out.iterdir()) == sorted(n.format(r=r) for n in NAMES)
    got = products(out / f"svd_factors_rank{r}.safetensors")
    analysis = json.loads((out / f"svd_analysis_rank{r}.json").read_text())
    for name, (o, i, s) in SPECTRA.items():
        assert got[name].shape == (o, i)
        assert rel(got[name], truncation(dense[name], r)) < 1e-6
        total = math.fsum(x * x for x in s)
        module = analysis["modules"][name]
        assert module["shape"] == [o, i] and module["rank"] == r and module["clamped"] is False
        assert module["relative_error"] == pytest.approx(math.sqrt(math.fsum(x * x for x in s[r:]) / total), abs=1e-6)
        assert module["energy_ratio"] == pytest.approx(math.fsum(x * x for x in s[:r]) / total, abs=1e-6)
        assert module["singular_values"] == pytest.approx(s, abs=1e-9)
        # the factors reach the optimum: ‖ΔW − B·A‖/‖ΔW‖ is the Eckart–Young error
        assert rel(got[name], dense[name]) == pytest.approx(module["relative_error"], abs=1e-6)
    with safe_open(str(out / f"svd_factors_rank{r}.safetensors"), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["split"] == "sqrt" and meta["rank"] == str(r) and meta["source"] == str(path)
    assert meta["source_kind"].startswith("delta")


def test_summary_and_hypothesis(delta, tmp_path):
    path, _ = delta
    out = tmp_path / "out"
    factorize(out, 5, delta=path)
    analysis = json.loads((out / "svd_analysis_rank5.json").read_text())
    summary, modules = analysis["summary"], analysis["modules"]
    errors = [m["relative_error"] for m in modules.values()]
    energies = [m["energy_ratio"] for m in modules.values()]
    assert summary["relative_error"]["mean"] == pytest.approx(np.mean(errors))
    assert summary["relative_error"]["median"] == pytest.approx(np.median(errors))
    assert summary["energy_ratio"]["mean"] == pytest.approx(np.mean(energies))
    assert summary["energy_ratio"]["median"] == pytest.approx(np.median(energies))
    assert summary["worst_modules"][0]["module"] == "model.layers.1.self_attn.v_proj"
    hyp = summary["low_rank_hypothesis"]
    assert hyp["thresholds"] == {"mean_energy_ratio_above": 0.9, "mean_relative_error_below": 0.1}
    expected = np.mean(energies) > 0.9 and np.mean(errors) < 0.1
    assert hyp["holds"] is bool(expected)
    text = (out / "svd_report_rank5.txt").read_text()
    assert ("HOLDS" if expected else "DOES NOT HOLD") in text and "mean relative error" in text
    for name in SPECTRA:
        assert 1.0 <= modules[name]["effective_rank"] <= len(SPECTRA[name][2])
    # rank 1 on the flat v_proj spectrum: the hypothesis does not hold
    factorize(tmp_path / "r1", 1, delta=path)
    low = json.loads((tmp_path / "r1" / "svd_analysis_rank1.json").read_text())["summary"]["low_rank_hypothesis"]
    assert low["holds"] is False and "does not hold" in low["reason"]


def test_split_B_gives_orthonormal_rows_of_A(delta, tmp_path):
    path, dense = delta
    out = tmp_path / "out"
    factorize(out, 4, delta=path, split="B")
    tensors = load_file(str(out / "svd_factors_rank4.safetensors"))
    for name in SPECTRA:
        A = tensors[f"{name}.lora_A"].double()
        assert A.shape == (4, SPECTRA[name][1])
        assert torch.allclose(A @ A.T, torch.eye(4, dtype=torch.float64), atol=1e-10)
        B = tensors[f"{name}.lora_B"].double()
        assert rel((B @ A).numpy(), truncation(dense[name], 4)) < 1e-6


def test_rank_above_available_is_clamped(delta, tmp_path, caplog):
    path, dense = delta
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="svdlora_pl"):
        factorize(out, 7, delta=path)
    modules = json.loads((out / "svd_analysis_rank7.json").read_text())["modules"]
    down = modules["model.layers.0.mlp.down_proj"]  # source rank 6
    assert down["clamped"] is True and down["rank"] == 6 and down["relative_error"] == pytest.approx(0.0, abs=1e-12)
    assert modules["model.layers.0.self_attn.q_proj"]["clamped"] is False
    tensors = load_file(str(out / "svd_factors_rank7.safetensors"))
    assert tensors["model.layers.0.mlp.down_proj.lora_A"].shape == (6, 30)
    assert tensors["model.layers.0.self_attn.q_proj.lora_A"].shape == (7, 30)
    assert (
        rel(
            products(out / "svd_factors_rank7.safetensors")["model.layers.0.mlp.down_proj"],
            dense["model.layers.0.mlp.down_proj"],
        )
        < 1e-6
    )
    warnings = [r for r in caplog.records if "clamped" in r.getMessage()]
    assert len(warnings) == 1


def test_adapter_includes_lora_scaling(adapter, tmp_path):
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    out = tmp_path / "out"
    factorize(out, 4, adapter=adapter)
    got = products(out / "svd_factors_rank4.safetensors")
    prefix = "base_model.model."
    expected = {
        key.removeprefix(prefix).removesuffix(".lora_A.weight"): 2.0  # scaling = alpha / r = 8 / 4
        * (weights[key.replace("lora_A", "lora_B")].double() @ weights[key].double()).numpy()
        for key in weights
        if key.endswith("lora_A.weight")
    }
    assert set(got) == set(expected) and len(got) == 4  # q_proj of the 4 layers
    for name, dW in expected.items():
        assert rel(got[name], dW) < 1e-6
    # rank 2: the dense truncation of the scaled update
    factorize(tmp_path / "r2", 2, adapter=adapter)
    got2 = products(tmp_path / "r2" / "svd_factors_rank2.safetensors")
    analysis = json.loads((tmp_path / "r2" / "svd_analysis_rank2.json").read_text())
    assert analysis["source_kind"] == "adapter"
    for name, dW in expected.items():
        assert rel(got2[name], truncation(dW, 2)) < 1e-5
        s = np.linalg.svd(dW, compute_uv=False)[:4]
        assert analysis["modules"][name]["relative_error"] == pytest.approx(
            math.sqrt(np.sum(s[2:] ** 2) / np.sum(s**2)), abs=1e-6
        )


def test_progress_bar_for_many_modules(tmp_path, capsys):
    gen = torch.Generator().manual_seed(1)
    tensors = {}
    for i in range(60):
        tensors[f"model.layers.{i}.mlp.up_proj.lora_A"] = torch.randn(2, 5, generator=gen)
        tensors[f"model.layers.{i}.mlp.up_proj.lora_B"] = torch.randn(6, 2, generator=gen)
    path = tmp_path / "many.safetensors"
    save_file(tensors, str(path))
    factorize(tmp_path / "out", 1, delta=path)
    assert "factorize" in capsys.readouterr().err  # tqdm's bar, on stderr


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("missing file", "nope.safetensors: file not found"),
        ("pickle", "delta.pth: not a readable safetensors file"),
        ("rank 0", "^rank: must be >= 1, got 0$"),
        ("both sources", "^adapter: not with delta"),
        ("no source", "^delta, adapter or base: give one source$"),
        ("missing adapter", "no_adapter"),
    ],
)
def test_bad_input_raises_one_line_and_writes_nothing(delta, adapter, tmp_path, case, needle):
    path, _ = delta
    out = tmp_path / "out"
    options = {
        "missing file": {"delta": tmp_path / "nope.safetensors", "rank": 4},
        "pickle": {"delta": pickled_delta(tmp_path), "rank": 4},
        "rank 0": {"delta": path, "rank": 0},
        "both sources": {"delta": path, "adapter": adapter, "rank": 4},
        "no source": {"rank": 4},
        "missing adapter": {"adapter": tmp_path / "no_adapter", "rank": 4},
    }[case]
    with pytest.raises(InputError, match=needle) as info:
        factorize(output_dir=out, **options)
    assert "\n" not in str(info.value)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_non_empty_output_dir_needs_overwrite(delta, tmp_path):
    path, _ = delta
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="^output_dir: .*set overwrite"):
        factorize(out, 2, delta=path)
    assert (out / "keep.txt").exists()
    factorize(out, 2, delta=path, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(n.format(r=2) for n in NAMES)


def test_output_dir_containing_the_source_is_refused(delta, tmp_path):
    path, _ = delta
    with pytest.raises(InputError, match="^output_dir: .*would replace the input"):
        factorize(path.parent, 2, delta=path, overwrite=True)
    assert path.exists()


# ---------------------------------------------------------------- base/finetuned: a real full fine-tune
TINY = "svdlora:tiny-qwen2"
CHECKED = [f"model.layers.2.{kind}" for kind in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
           "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]  # fmt: skip
"""Modules compared with numpy, one of each kind and shape (numpy's threaded SVD is slow on a busy 2-core machine)."""


@pytest.fixture(scope="module")
def full_ft(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The tiny model plus a known rank-6 perturbation, saved; the true ΔW of each module (float64) and the
    singular values of the CHECKED ones (numpy)."""
    from builders import make_finetuned, true_deltas

    from svdlora_pl.embedded.tiny import tiny_model_dir

    model = make_finetuned(tmp_path_factory.mktemp("full") / "model", seed=1)
    dense = true_deltas(tiny_model_dir(), model)
    return model, dense, {name: np.linalg.svd(dense[name], compute_uv=False) for name in CHECKED}


def test_full_finetune_factors_equal_the_truncation_of_the_true_delta(full_ft, tmp_path):
    model, dense, spectra = full_ft
    out = tmp_path / "out"
    factorize(out, 3, base=TINY, finetuned=str(model))
    assert sorted(p.name for p in out.iterdir()) == sorted(n.format(r=3) for n in NAMES)
    got = products(out / "svd_factors_rank3.safetensors")
    analysis = json.loads((out / "svd_analysis_rank3.json").read_text())
    assert set(got) == set(dense) == set(analysis["modules"]) and len(dense) == 28
    for name in CHECKED:
        W, s = dense[name], spectra[name]
        assert rel(got[name], truncation(W, 3)) <= 1e-5
        module = analysis["modules"][name]
        eckart_young = math.sqrt(np.sum(s[3:] ** 2)) / np.linalg.norm(W)
        assert module["relative_error"] == pytest.approx(eckart_young, abs=1e-6)
        assert module["energy_ratio"] == pytest.approx(np.sum(s[:3] ** 2) / np.sum(W**2), abs=1e-6)
        assert module["singular_values"] == pytest.approx(s.tolist(), rel=1e-4, abs=1e-6)  # the whole spectrum
        assert module["spectrum_complete"] is True and module["available_rank"] == min(W.shape)
        assert module["total_energy"] == pytest.approx(np.sum(W**2), rel=1e-6)
    assert analysis["source"] == f"{TINY} -> {model}" and analysis["source_kind"] == "full_finetune (exact)"
    with safe_open(str(out / "svd_factors_rank3.safetensors"), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["source"] == f"{TINY} -> {model}" and meta["source_kind"] == "full_finetune (exact)"


def test_full_finetune_randomized_matches_exact_and_is_deterministic(full_ft, tmp_path):
    """Tolerance: the planted spectrum (1, .5, .25, .12, ...) sits far above a noise floor of ~3e-3, so at rank 3 with
    q = 13 and niter 4 the randomized factors equal the exact ones to float32 rounding (stated bound 1e-4)."""
    model, dense, spectra = full_ft
    paths = [tmp_path / name for name in ("a", "b")]
    for path in paths:
        factorize(path, 3, base=TINY, finetuned=str(model), svd=SVDOptions("randomized"))
    files = [path / "svd_factors_rank3.safetensors" for path in paths]
    assert files[0].read_bytes() == files[1].read_bytes()  # same seed, same bytes
    got = products(files[0])
    analysis = json.loads((paths[0] / "svd_analysis_rank3.json").read_text())
    assert analysis["source_kind"] == "full_finetune (randomized niter=4)"
    assert set(got) == set(dense)
    for name in CHECKED:
        W, s = dense[name], spectra[name]
        assert rel(got[name], truncation(W, 3)) < 1e-4
        module = analysis["modules"][name]
        assert module["spectrum_complete"] is False and len(module["singular_values"]) == 3
        # the total energy is the dense ‖ΔW‖², not the sum of the three known σ²
        assert module["total_energy"] == pytest.approx(np.sum(W**2), rel=1e-6)
        assert module["relative_error"] == pytest.approx(math.sqrt(np.sum(s[3:] ** 2) / np.sum(W**2)), abs=1e-4)
    assert "randomized SVD" in (paths[0] / "svd_report_rank3.txt").read_text()


def test_full_finetune_sharded_target_modules_and_progress_bar(full_ft, tmp_path, monkeypatch, capsys):
    from builders import make_finetuned

    import svdlora_pl.teacher.delta_svd as delta_svd

    _, dense, _ = full_ft
    sharded = make_finetuned(tmp_path / "sharded", seed=1, max_shard_size="300KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    monkeypatch.setattr(delta_svd, "PROGRESS_MIN_ELEMENTS", 0)
    capsys.readouterr()
    out = tmp_path / "out"
    factorize(out, 2, base=TINY, finetuned=str(sharded), target_modules=["q_proj", "up_proj"], split="B")
    assert "factorize" in capsys.readouterr().err  # tqdm's bar over the modules
    got = products(out / "svd_factors_rank2.safetensors")
    assert sorted(got) == sorted(n for n in dense if n.endswith(("q_proj", "up_proj"))) and len(got) == 8
    for name in ("model.layers.2.self_attn.q_proj", "model.layers.2.mlp.up_proj"):
        assert rel(got[name], truncation(dense[name], 2)) <= 1e-5


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("missing directory", "^finetuned: .*nope: no such model directory$"),
        ("architecture", "intermediate_size = 360 differs"),
        ("pickle only", "pickle"),
        ("nan", "model.layers.3.mlp.up_proj.weight: NaN or infinite"),
        ("delta and base", "^base: not with delta"),
        ("base without finetuned", "^base: needs finetuned"),
        ("finetuned alone", "^finetuned: only with base"),
        ("svd with delta", "^svd: only with base"),
        ("target modules with adapter", "^target_modules: only with base"),
        ("unknown target", "^target_modules: 'qproj' matches no"),
    ],
)
def test_full_finetune_bad_input_raises_one_line_and_writes_nothing(delta, adapter, full_ft, tmp_path, case, needle):
    import shutil

    model = full_ft[0]
    bad = tmp_path / "bad"
    if case in ("architecture", "nan"):
        shutil.copytree(model, bad)
    if case == "architecture":
        config = json.loads((bad / "config.json").read_text())
        (bad / "config.json").write_text(json.dumps({**config, "intermediate_size": 360}))
    if case == "nan":
        tensors = load_file(str(bad / "model.safetensors"))
        tensors["model.layers.3.mlp.up_proj.weight"][0, 0] = float("inf")
        save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
    if case == "pickle only":
        bad.mkdir()
        (bad / "config.json").write_bytes((model / "config.json").read_bytes())
        (bad / "pytorch_model.bin").write_bytes(b"\x80\x04not read")
    path, _ = delta
    options = {
        "missing directory": {"finetuned": str(tmp_path / "nope")},
        "architecture": {"finetuned": str(bad)},
        "pickle only": {"finetuned": str(bad)},
        "nan": {"finetuned": str(bad)},
        "delta and base": {"delta": path, "finetuned": str(model)},
        "base without finetuned": {},
        "finetuned alone": {"finetuned": str(model)},
        "svd with delta": {"delta": path, "svd": SVDOptions("randomized")},
        "target modules with adapter": {"adapter": adapter, "target_modules": ["q_proj"]},
        "unknown target": {"finetuned": str(model), "target_modules": ["qproj"]},
    }[case]
    base = {} if case in ("finetuned alone", "svd with delta", "target modules with adapter") else {"base": TINY}
    out = tmp_path / "out"
    with pytest.raises(InputError, match=needle) as info:
        factorize(out, 2, **base, **options)
    assert "\n" not in str(info.value)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


# ---------------------------------------------------------------- factorize_modules: Cholesky or Householder QR


def test_factorize_gives_the_same_factors_and_analysis_by_either_qr(monkeypatch):
    from svdlora_pl.teacher import factorize as factorize_lib

    modules = {
        "svd_form": (*svd_form(80, 60, [5.0, 3.0, 2.0, 1.0, 0.5, 0.1], seed=4), 1.0),
        "lora": (*random_lora(70, 50, 6, seed=5), 2.0),
        "float64": tuple(t.double() for t in random_lora(30, 20, 4, seed=6)) + (0.5,),
    }
    assert all(factorize_lib.gram_svd(B, A, s, 3) is not None for B, A, s in modules.values())
    fast, fast_analysis = factorize_lib.factorize_modules(modules, 3, "sqrt")
    monkeypatch.setattr(factorize_lib, "gram_svd", lambda *args: None)
    slow, slow_analysis = factorize_lib.factorize_modules(modules, 3, "sqrt")
    for name in modules:
        (Bf, Af), (Bs, As) = fast[name], slow[name]
        assert Bf.dtype == Bs.dtype == modules[name][0].dtype and Bf.shape == Bs.shape and Af.shape == As.shape
        np.testing.assert_allclose((Bf.double() @ Af.double()).numpy(), (Bs.double() @ As.double()).numpy(), atol=1e-6)
        for key in ("energy_ratio", "relative_error", "effective_rank"):
            assert fast_analysis[name][key] == pytest.approx(slow_analysis[name][key], rel=1e-12, abs=1e-14)
        assert fast_analysis[name]["singular_values"] == pytest.approx(
            slow_analysis[name]["singular_values"], rel=1e-12
        )
