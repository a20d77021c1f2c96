"""LoRAIntruderMonitor on the tiny model: counts against dense float64 numpy, the zero start, the base cache, a
residual base, the heat map and its errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from svdlora_pl.callbacks import LoRAIntruderMonitor
from svdlora_pl.lora.layers import find_lora_layers, short_name
from svdlora_pl.lora.settings import LoRASettings
from svdlora_pl.training.module import QwenLoRAModule

TOP_K, BASE_RANK, THRESHOLD = 6, 10, 0.6


@pytest.fixture(scope="module")
def module() -> QwenLoRAModule:
    torch.manual_seed(0)
    module = QwenLoRAModule(
        lora=LoRASettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    module.configure_model()
    return module


def exact_monitor(tmp_path: Path, **kwargs) -> LoRAIntruderMonitor:
    """q reaches min(out, in) of every tiny shape: the randomized SVDs are exact."""
    options = dict(top_k=TOP_K, base_rank=BASE_RANK, threshold=THRESHOLD, oversample=400, cache_dir=str(tmp_path))
    return LoRAIntruderMonitor(**{**options, **kwargs})


def numpy_intruders(W: np.ndarray, delta: np.ndarray) -> tuple[int, float]:
    U_merged = np.linalg.svd(W + delta)[0][:, :TOP_K]
    U_base = np.linalg.svd(W)[0][:, :BASE_RANK]
    cosines = np.abs(U_merged.T @ U_base).max(axis=1)
    return int((cosines < THRESHOLD).sum()), float(cosines.min())


def test_zero_update_has_no_intruders(module, tmp_path):
    monitor = exact_monitor(tmp_path)
    monitor.on_fit_start(make_trainer(tmp_path), module)
    for values in monitor.measure_layers(None, module).values():  # PEFT's start: B = 0, W + ΔW = W
        assert values["intruders"] == 0.0 and values["base_similarity"] == pytest.approx(1.0, abs=1e-5)


def test_counts_match_dense_float64(module, tmp_path):
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for ref in find_lora_layers(module):
            ref.B.copy_(torch.randn(ref.B.shape, generator=generator) * 0.6)  # large enough to rotate top directions
    monitor, trainer = exact_monitor(tmp_path), make_trainer(tmp_path)
    monitor.on_fit_start(trainer, module)
    logged = monitor.measure(trainer, module)
    measured = monitor.last_values
    counts = []
    for ref in monitor.layers:
        W = ref.layer.get_base_layer().weight.detach().double().numpy()
        delta = ref.scaling * ref.B.detach().double().numpy() @ ref.A.detach().double().numpy()
        count, similarity = numpy_intruders(W, delta)
        got = measured[short_name(ref.name)]
        assert got["intruders"] == count, ref.name
        assert got["base_similarity"] == pytest.approx(similarity, abs=1e-4)
        counts.append(count)
    assert 0 < sum(counts) < TOP_K * len(counts)  # the case has intruders and layers without
    assert logged["weights/intruders/total"] == sum(counts)
    assert logged["weights/intruders/max"] == max(counts)
    grid = monitor.figures(0)["weights/heatmap/intruders"].axes[0].images[0]
    assert grid.get_clim() == (0.0, float(TOP_K)) and grid.get_array().shape == (4, 3)
    with torch.no_grad():
        for ref in find_lora_layers(module):
            ref.B.zero_()


def test_bases_are_cached_per_model_and_module(module, tmp_path):
    first = exact_monitor(tmp_path)
    first.on_fit_start(make_trainer(tmp_path), module)
    assert first.cached_bases == 0 and len(list(tmp_path.glob("*.safetensors"))) == 12
    second = exact_monitor(tmp_path)
    second.on_fit_start(make_trainer(tmp_path), module)
    assert second.cached_bases == 12
    for name, U in first.bases.items():
        assert torch.equal(U, second.bases[name])
    other = exact_monitor(tmp_path, base_rank=BASE_RANK + 1)  # other settings: another entry
    other.on_fit_start(make_trainer(tmp_path), module)
    assert other.cached_bases == 0 and len(list(tmp_path.glob("*.safetensors"))) == 24
    ref = find_lora_layers(module)[0]
    weight = ref.layer.get_base_layer().weight
    with torch.no_grad():
        weight[0, 0] += 1.0  # another base model: its modules miss the cache
        third = exact_monitor(tmp_path)
        third.on_fit_start(make_trainer(tmp_path), module)
        weight[0, 0] -= 1.0
    assert third.cached_bases == 11


def test_a_residual_base_is_compared_as_the_original_weight(module, tmp_path):
    ref = find_lora_layers(module)[0]
    weight = ref.layer.get_base_layer().weight
    original = weight.detach().clone()
    generator = torch.Generator().manual_seed(4)
    B0, A0 = torch.randn(ref.B.shape, generator=generator), torch.randn(ref.A.shape, generator=generator)
    expected = np.linalg.svd(original.double().numpy())[0][:, :BASE_RANK]
    try:
        with torch.no_grad():
            weight.sub_(ref.scaling * B0 @ A0)  # PiSSA-style: W_res = W − s·B₀·A₀
        module.initial_factors = {ref.name: (B0, A0)}
        monitor = exact_monitor(tmp_path, cache=False)
        monitor.on_fit_start(make_trainer(tmp_path), module)
        U = monitor.bases[ref.name].double().numpy()
        assert np.linalg.svd(U.T @ expected, compute_uv=False).min() == pytest.approx(1.0, abs=1e-5)  # same subspace
    finally:
        module.initial_factors = None
        with torch.no_grad():
            weight.copy_(original)


@pytest.mark.parametrize(
    "kwargs",
    [{"top_k": 0}, {"base_rank": 0}, {"threshold": 0.0}, {"threshold": 1.5}, {"niter": -1}, {"every_n_steps": 0}],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(MisconfigurationException):
        LoRAIntruderMonitor(**kwargs)
