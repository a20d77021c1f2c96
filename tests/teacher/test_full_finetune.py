"""Full fine-tune deltas ΔW = W_finetuned − W_base: resolution of tiny / local / sharded / Hub-cache models, the module
plan, one-module-at-a-time streaming, one-line errors naming file and key, and the dense SVD (exact and randomized)
against numpy float64.

The builders :func:`make_finetuned` (the tiny model plus a known perturbation, saved with save_pretrained) and
:func:`true_deltas` (the dense ΔW of two saved models, float64) are in tests/builders.py.
"""

from __future__ import annotations

import gc
import inspect
import json
import shutil
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import LAYERS, MODULE_COUNT, SPECTRUM, make_finetuned, one_torch_thread, true_deltas  # noqa: F401 (autouse fixture)
from safetensors.torch import load_file, save_file

from svdlora_pl.embedded.tiny import TINY_MODEL, tiny_model_dir
from svdlora_pl.errors import InputError
from svdlora_pl.teacher.delta_svd import SVDOptions, delta_svd
from svdlora_pl.teacher.full_finetune import open_pair, resolve_checkpoint


def truncation(W: np.ndarray, r: int) -> np.ndarray:
    U, S, Vt = np.linalg.svd(W, full_matrices=False)
    return (U[:, :r] * S[:r]) @ Vt[:r]


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory) -> Path:
    return make_finetuned(tmp_path_factory.mktemp("ft") / "model")


@pytest.fixture(scope="module")
def expected(finetuned) -> dict[str, np.ndarray]:
    return true_deltas(tiny_model_dir(), finetuned)


def copy_model(source: Path, target: Path, **config_changes) -> Path:
    shutil.copytree(source, target)
    if config_changes:
        config = json.loads((target / "config.json").read_text())
        config.update(config_changes)
        (target / "config.json").write_text(json.dumps(config))
    return target


# ---------------------------------------------------------------- resolution and streaming
def test_deltas_of_single_and_sharded_checkpoints_equal_the_file_difference(finetuned, expected, tmp_path):
    sharded = make_finetuned(tmp_path / "sharded", max_shard_size="300KB")
    assert (sharded / "model.safetensors.index.json").is_file() and len(list(sharded.glob("*.safetensors"))) > 2
    for model in (finetuned, sharded):
        pair = open_pair(TINY_MODEL, str(model))
        assert len(pair.shapes) == MODULE_COUNT and set(pair.shapes) == set(expected)
        assert list(pair.shapes)[:2] == ["model.layers.0.mlp.down_proj", "model.layers.0.mlp.gate_proj"]
        assert list(pair.shapes)[-1] == f"model.layers.{LAYERS - 1}.self_attn.v_proj"
        assert pair.source == f"{TINY_MODEL} -> {model}"
        for name, delta in pair.deltas():
            assert delta.dtype == torch.float32 and tuple(delta.shape) == pair.shapes[name]
            assert rel(delta.double().numpy(), expected[name]) < 1e-6
    # the perturbation dominates: the true ΔW has the planted spectrum on top of a small noise floor
    s = np.linalg.svd(expected["model.layers.1.self_attn.q_proj"], compute_uv=False)
    assert s[:6] == pytest.approx(SPECTRUM, rel=0.02) and s[6] < 0.01


def test_target_modules_select_by_last_name(finetuned):
    pair = open_pair(TINY_MODEL, str(finetuned), ["q_proj", "down_proj"])
    assert sorted(pair.shapes) == sorted(
        f"model.layers.{i}.{kind}" for i in range(LAYERS) for kind in ("self_attn.q_proj", "mlp.down_proj")
    )
    assert pair.shapes["model.layers.0.mlp.down_proj"] == (128, 352)
    assert pair.elements == LAYERS * (128 * 128 + 128 * 352)
    with pytest.raises(InputError, match="'lm_head' matches no 2-D weight.*embed_tokens"):
        open_pair(TINY_MODEL, str(finetuned), ["q_proj", "lm_head"])


def test_reader_is_a_generator_holding_one_module_at_a_time(finetuned, monkeypatch):
    """Streaming: each step reads exactly two tensors (finetuned and base of one key), and the previous ΔW is freed."""
    import safetensors

    reads: list[str] = []
    real_open = safetensors.safe_open

    class Spy:
        def __init__(self, *args, **kwargs):
            self.handle = real_open(*args, **kwargs)

        def __enter__(self):
            self.inner = self.handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def get_tensor(self, key):
            reads.append(key)
            return self.inner.get_tensor(key)

    pair = open_pair(TINY_MODEL, str(finetuned))
    monkeypatch.setattr(safetensors, "safe_open", Spy)
    stream = pair.deltas()
    assert inspect.isgenerator(stream) and reads == []  # nothing read before the first module is asked for
    first, delta = next(stream)
    assert reads == [f"{first}.weight"] * 2
    alive = weakref.ref(delta)
    del delta
    second, _ = next(stream)
    gc.collect()
    assert alive() is None  # the generator kept no reference to the previous module's ΔW
    assert reads == [f"{first}.weight"] * 2 + [f"{second}.weight"] * 2


def test_hub_name_resolves_from_the_local_cache_offline(finetuned, expected, tmp_path, monkeypatch):
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--svdlora-test--tiny-ft"
    commit = "0" * 40
    shutil.copytree(finetuned, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    pair = open_pair(TINY_MODEL, "svdlora-test/tiny-ft", ["v_proj"])
    assert pair.finetuned.directory == repo / "snapshots" / commit
    for name, delta in pair.deltas():
        assert rel(delta.double().numpy(), expected[name]) < 1e-6
    with pytest.raises(InputError, match=r"^finetuned: svdlora-test/nope: not a local directory.*Hugging Face"):
        open_pair(TINY_MODEL, "svdlora-test/nope")


# ---------------------------------------------------------------- bad input: one line naming the file and field
def test_missing_directory_and_pickle_only_and_adapter(finetuned, tmp_path):
    with pytest.raises(InputError, match=r"^finetuned: \./nope: no such model directory$"):
        open_pair(TINY_MODEL, "./nope")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(finetuned / "config.json", pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(InputError, match=r"only a pickle checkpoint \(pytorch_model\.bin\), which is refused"):
        resolve_checkpoint(str(pickled), "finetuned")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(InputError, match="a PEFT adapter, not a full model"):
        resolve_checkpoint(str(adapter))


def test_architecture_mismatch_names_the_field(finetuned, tmp_path):
    other = copy_model(finetuned, tmp_path / "other", num_key_value_heads=4)
    with pytest.raises(InputError) as info:
        open_pair(TINY_MODEL, str(other))
    message = str(info.value)
    assert "num_key_value_heads = 4 differs from base's 2" in message and str(other / "config.json") in message
    assert "\n" not in message


@pytest.mark.parametrize("case", ["missing key", "shape", "nan"])
def test_bad_weights_name_the_file_and_key(finetuned, tmp_path, case):
    bad = copy_model(finetuned, tmp_path / "bad")
    file = bad / "model.safetensors"
    tensors = load_file(str(file))
    key = "model.layers.2.self_attn.o_proj.weight"
    if case == "missing key":
        del tensors[key]
    elif case == "shape":
        tensors[key] = tensors[key][:100].clone()
    else:
        tensors[key][3, 5] = float("nan")
    save_file(tensors, str(file), metadata={"format": "pt"})
    if case == "nan":
        pair = open_pair(TINY_MODEL, str(bad))  # headers are fine: the NaN shows when the module is read
        with pytest.raises(InputError, match=rf"^{file}: {key}: NaN or infinite values$"):
            for _ in pair.deltas():
                pass
        return
    needle = {"missing key": rf"^{file}: {key}: missing", "shape": rf"^{file}: {key}: shape \[100, 128\] differs"}
    with pytest.raises(InputError, match=needle[case]):
        open_pair(TINY_MODEL, str(bad))


def test_sharded_index_with_a_missing_shard(tmp_path):
    sharded = make_finetuned(tmp_path / "sharded", max_shard_size="300KB")
    next(sharded.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(InputError, match=r"model\.safetensors\.index\.json: weight_map: shard model-00002-of-\d+"):
        resolve_checkpoint(str(sharded))


# ---------------------------------------------------------------- the dense SVD
def decaying(m: int, n: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """An m×n float32 matrix with σᵢ = 0.7^i plus a noise floor, and its float64 numpy copy."""
    rng = np.random.default_rng(seed)
    k = min(m, n)
    U, _ = np.linalg.qr(rng.standard_normal((m, k)))
    V, _ = np.linalg.qr(rng.standard_normal((n, k)))
    W = (U * 0.7 ** np.arange(k)) @ V.T + 1e-5 * rng.standard_normal((m, n))
    W32 = torch.from_numpy(W).float()
    return W32, W32.double().numpy()


def test_exact_svd_is_the_numpy_truncation_with_its_eckart_young_energies():
    W, W64 = decaying(90, 60)
    result = delta_svd(W, 5, SVDOptions("exact"))
    assert result.complete and result.spectrum.shape == (60,)
    s = np.linalg.svd(W64, compute_uv=False)
    assert np.allclose(result.spectrum.double().numpy(), s, rtol=1e-5, atol=1e-6)
    assert rel(result.svd.dense().double().numpy(), truncation(W64, 5)) < 1e-5
    kept, discarded = result.energies()
    assert kept == pytest.approx(np.sum(s[:5] ** 2), rel=1e-6)
    assert discarded == pytest.approx(np.sum(s[5:] ** 2), rel=1e-4)
    assert result.total_energy == pytest.approx(np.sum(W64**2), rel=1e-12)  # float64 sum of the float32 entries


def test_randomized_svd_agrees_with_exact_on_a_decaying_spectrum_and_is_deterministic():
    """Tolerance: with σ decaying 0.7 per index, rank 5, q = 15, niter 4 the error factor (σ₁₆/σ₅)^9 is ~1e-15, so
    randomized equals exact to float32 rounding: σ within 1e-5 relative, B·A within 1e-4 of the exact truncation."""
    W, W64 = decaying(90, 60)
    options = SVDOptions("randomized", niter=4, oversample=10, seed=7)
    state = torch.random.get_rng_state()
    first, again = delta_svd(W, 5, options), delta_svd(W, 5, options)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    assert torch.equal(first.svd.U, again.svd.U) and torch.equal(first.svd.S, again.svd.S)
    exact = delta_svd(W, 5, SVDOptions("exact"))
    assert not first.complete and first.spectrum.shape == (5,)
    assert torch.allclose(first.svd.S, exact.svd.S, rtol=1e-5)
    assert rel(first.svd.dense().double().numpy(), exact.svd.dense().double().numpy()) < 1e-4
    kept, discarded = first.energies()
    s = np.linalg.svd(W64, compute_uv=False)
    assert first.total_energy == pytest.approx(np.sum(s**2), rel=1e-9)
    assert discarded == pytest.approx(first.total_energy - kept, abs=0) and discarded == pytest.approx(
        np.sum(s[5:] ** 2), rel=1e-3
    )
    other = delta_svd(W, 5, SVDOptions("randomized", seed=8))
    assert not torch.equal(other.svd.U, first.svd.U)
    assert rel(other.svd.dense().double().numpy(), exact.svd.dense().double().numpy()) < 1e-4


@pytest.mark.parametrize("method", ["exact", "randomized"])
def test_zero_delta_and_clamped_rank(method):
    result = delta_svd(torch.zeros(12, 8), 3, SVDOptions(method))
    assert result.total_energy == 0 and result.energies() == (0.0, 0.0)
    assert torch.equal(result.svd.S, torch.zeros(3)) and bool(torch.isfinite(result.svd.U).all())
    W, W64 = decaying(12, 8)
    clamped = delta_svd(W, 20, SVDOptions(method))
    assert clamped.svd.S.shape == (8,)
    assert rel(clamped.svd.dense().double().numpy(), W64) < 1e-5


def test_svd_options_validate_and_name_themselves():
    assert SVDOptions().kind == "full_finetune (exact)"
    assert SVDOptions("randomized", niter=2).kind == "full_finetune (randomized niter=2)"
    for kwargs, field in (
        ({"niter": -1}, "svd.niter"),
        ({"oversample": -2}, "svd.oversample"),
        ({"method": "x"}, "svd.method"),
    ):
        with pytest.raises(InputError, match=f"^{field}: "):
            SVDOptions(**kwargs)  # type: ignore[arg-type]


def test_delta_svds_streams_every_module_and_warns_once_about_unchanged_ones(caplog):
    from svdlora_pl.teacher.delta_svd import delta_svds

    pair = open_pair(TINY_MODEL, str(tiny_model_dir()), ["k_proj"])  # the model against itself: every ΔW = 0
    with caplog.at_level("WARNING", logger="svdlora_pl"):
        results = list(delta_svds(pair, 2, SVDOptions(), "test"))
    assert [name for name, _ in results] == list(pair.shapes) and len(results) == LAYERS
    assert all(result.total_energy == 0 and result.svd.S.shape == (2,) for _, result in results)
    warnings = [r.getMessage() for r in caplog.records if "ΔW = 0" in r.getMessage()]
    assert warnings == [f"{LAYERS} of {LAYERS} modules have ΔW = 0 (unchanged by the fine-tune), e.g. {results[0][0]}"]


def test_local_model_dir_tells_paths_from_hub_names(tmp_path, monkeypatch):
    from svdlora_pl.training.loading import local_model_dir

    monkeypatch.chdir(tmp_path)
    assert local_model_dir("Qwen/Qwen2.5-0.5B") is None
    assert local_model_dir(TINY_MODEL) == tiny_model_dir()
    assert local_model_dir("./nope") == Path("./nope")  # a path, even a missing one
    assert local_model_dir("~/x") == Path("~/x").expanduser()
    (tmp_path / "org" / "model").mkdir(parents=True)
    assert local_model_dir("org/model") == Path("org/model")  # exists: local, though it looks like a Hub name
