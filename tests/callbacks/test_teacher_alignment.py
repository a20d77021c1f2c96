"""TeacherAlignmentMonitor: exact values against dense float64 algebra, and its errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_trainer, read_scalars

from svdlora_pl.callbacks import TeacherAlignmentMonitor
from svdlora_pl.errors import InputError
from svdlora_pl.lora.factor_files import save_factors
from svdlora_pl.lora.layers import find_lora_layers
from svdlora_pl.lora.settings import LoRASettings
from svdlora_pl.training.datamodule import QADataModule
from svdlora_pl.training.module import QwenLoRAModule


@pytest.fixture
def module() -> QwenLoRAModule:
    torch.manual_seed(0)
    module = QwenLoRAModule(lora=LoRASettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "down_proj"]))
    module.configure_model()
    for ref in find_lora_layers(module):
        torch.nn.init.normal_(ref.B, std=0.05)  # a non-zero update
    return module


def own_update_factors(module: QwenLoRAModule, perturb: float = 0.0) -> dict:
    generator = torch.Generator().manual_seed(1)
    factors = {}
    for ref in find_lora_layers(module):
        B = ref.scaling * ref.B.detach().clone()
        factors[ref.name] = (B + perturb * torch.randn(B.shape, generator=generator), ref.A.detach().clone())
    return factors


def test_teacher_equal_to_the_lora_update_gives_zero_error_and_full_alignment(module, tmp_path):
    save_factors(tmp_path / "teacher.safetensors", own_update_factors(module))
    monitor = TeacherAlignmentMonitor(str(tmp_path / "teacher.safetensors"))
    monitor.on_fit_start(make_trainer(tmp_path), module)
    for values in monitor.layer_metrics().values():
        assert values["relative_error"] == pytest.approx(0.0, abs=1e-6)
        assert values["left_alignment"] == pytest.approx(1.0, abs=1e-6)
        assert values["right_alignment"] == pytest.approx(1.0, abs=1e-6)


def test_values_match_dense_float64(module, tmp_path):
    teacher = own_update_factors(module, perturb=0.05)
    save_factors(tmp_path / "teacher.safetensors", teacher)
    monitor = TeacherAlignmentMonitor(str(tmp_path / "teacher.safetensors"))
    monitor.on_fit_start(make_trainer(tmp_path), module)
    metrics = monitor.layer_metrics()
    for ref in find_lora_layers(module):
        B_t, A_t = teacher[ref.name]
        lora = ref.scaling * ref.B.detach().double().numpy() @ ref.A.detach().double().numpy()
        U, S, Vt = np.linalg.svd(B_t.double().numpy() @ A_t.double().numpy())
        target = (U[:, :4] * S[:4]) @ Vt[:4]  # the teacher truncated to the LoRA rank
        error = np.linalg.norm(lora - target) / np.linalg.norm(target)
        U_l, _, Vt_l = np.linalg.svd(lora)
        left = np.linalg.svd(U_l[:, :4].T @ U[:, :4], compute_uv=False).mean()
        right = np.linalg.svd(Vt_l[:4] @ Vt[:4].T, compute_uv=False).mean()
        got = metrics[ref.name.removeprefix("model.")]
        assert got["relative_error"] == pytest.approx(error, rel=1e-6)
        assert got["left_alignment"] == pytest.approx(left, rel=1e-6)
        assert got["right_alignment"] == pytest.approx(right, rel=1e-6)


def test_zero_lora_update_is_documented(module, tmp_path):
    save_factors(tmp_path / "teacher.safetensors", own_update_factors(module))
    for ref in find_lora_layers(module):
        torch.nn.init.zeros_(ref.B)
    monitor = TeacherAlignmentMonitor(str(tmp_path / "teacher.safetensors"))
    monitor.on_fit_start(make_trainer(tmp_path), module)
    for values in monitor.layer_metrics().values():
        assert values["relative_error"] == pytest.approx(1.0, abs=1e-12)
        assert values["left_alignment"] == values["right_alignment"] == 0.0


def test_logs_during_fit(module, tmp_path):
    save_factors(tmp_path / "teacher.safetensors", own_update_factors(module))
    monitor = TeacherAlignmentMonitor(str(tmp_path / "teacher.safetensors"), every_n_steps=2)
    trainer = make_trainer(tmp_path, max_steps=4, limit_val_batches=0, callbacks=[monitor])
    trainer.fit(module, QADataModule(batch_size=2))
    scalars = read_scalars(Path(trainer.log_dir))
    assert [s for s, _ in scalars["weights/teacher_relative_error/mean"]] == [0, 2, 4]
    assert scalars["weights/teacher_relative_error/mean"][0][1] == pytest.approx(0.0, abs=1e-6)
    assert "weights.teacher_left_alignment.down_proj/layers.3.mlp.down_proj" in scalars
    per_layer = {key for key in scalars if key.startswith("weights.")}
    assert len(per_layer) == 3 * 4 * 2  # 3 metrics × 4 layers × (q_proj, down_proj)
    assert monitor.figures(4)["weights/heatmap/teacher_relative_error"].axes[0].images[0].get_array().shape == (4, 2)


def test_missing_modules_are_named(module, tmp_path):
    factors = own_update_factors(module)
    factors.pop("model.layers.2.self_attn.q_proj")
    save_factors(tmp_path / "teacher.safetensors", factors)
    monitor = TeacherAlignmentMonitor(str(tmp_path / "teacher.safetensors"))
    with pytest.raises(InputError, match=r"missing: \['model.layers.2.self_attn.q_proj'\]"):
        monitor.on_fit_start(make_trainer(tmp_path), module)


def test_shape_mismatch_is_named(module, tmp_path):
    factors = own_update_factors(module)
    B, A = factors["model.layers.0.mlp.down_proj"]
    factors["model.layers.0.mlp.down_proj"] = (B[:-1], A)
    save_factors(tmp_path / "teacher.safetensors", factors)
    monitor = TeacherAlignmentMonitor(str(tmp_path / "teacher.safetensors"))
    with pytest.raises(InputError, match=r"model.layers.0.mlp.down_proj: teacher update is \(127, 352\)"):
        monitor.on_fit_start(make_trainer(tmp_path), module)


def test_missing_file():
    with pytest.raises(InputError, match="file not found"):
        TeacherAlignmentMonitor("no/such/file.safetensors")
