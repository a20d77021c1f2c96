"""GradientSVDInit: LoRA-GA agrees with PEFT's ``lora_ga`` on the same batches, LoRA-One's factors follow the
paper's formula, residual starts leave the output unchanged, and a fit initializes once, logs the cost and
resumes onto the same residual base."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from builders import training_batches
from helpers import make_trainer, read_scalars

from svdlora_pl.embedded.tiny import TINY_MODEL
from svdlora_pl.errors import InputError
from svdlora_pl.initializers import GradientSVDInit
from svdlora_pl.lora.gradients import dense_gradients
from svdlora_pl.lora.layers import find_lora_layers
from svdlora_pl.lora.settings import QWEN_LINEAR_MODULES, LoRASettings
from svdlora_pl.training.datamodule import QADataModule
from svdlora_pl.training.loading import load_causal_lm
from svdlora_pl.training.module import QwenLoRAModule

R, BATCHES = 4, 3
IDS = torch.arange(3, 40).reshape(1, -1)


def built(**init_args) -> QwenLoRAModule:
    torch.manual_seed(0)
    module = QwenLoRAModule(lora=LoRASettings(r=R, alpha=8.0, dropout=0.0), initializer=GradientSVDInit(**init_args))
    module.configure_model()
    return module


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def peft_lora_ga(batches, seed: int):
    """PEFT's own LoRA-GA on the same batches (its randomized SVD seeded by ``seed``)."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraGAConfig, preprocess_loraga

    base = load_causal_lm(TINY_MODEL)
    config = LoraConfig(
        r=R, lora_alpha=8.0, lora_dropout=0.0, target_modules=list(QWEN_LINEAR_MODULES),
        init_lora_weights="lora_ga", lora_ga_config=LoraGAConfig(),
    )  # fmt: skip

    def train_step():
        for b in batches:
            base(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss.backward()

    preprocess_loraga(base, config, train_step)
    torch.manual_seed(seed)
    return get_peft_model(base, config)


def sign_aligned_gap(ours, theirs) -> float:
    """Largest relative Frobenius gap of A (rows) and B (columns) after aligning each singular vector's sign."""
    signs_a = torch.sign((ours.A * theirs.A).sum(1))[:, None]
    signs_b = torch.sign((ours.B * theirs.B).sum(0))[None, :]
    gap_a = (ours.A - signs_a * theirs.A).norm() / theirs.A.norm()
    return max(float(gap_a), float((ours.B - signs_b * theirs.B).norm() / theirs.B.norm()))


def test_lora_ga_matches_peft_lora_ga_on_the_same_batches():
    module = built(scheme="lora_ga", estimator="exact", num_batches=BATCHES)
    data = training_batches(module)
    batches = list(data.batches(BATCHES))
    module.initializer.initialize_with_data(module.model, "default", data)
    first, second = peft_lora_ga(batches, seed=1), peft_lora_ga(batches, seed=2)
    ours = {ref.name: ref for ref in find_lora_layers(module.model)}
    theirs, again = ({ref.name: ref for ref in find_lora_layers(m)} for m in (first, second))
    assert ours.keys() == theirs.keys()
    spread = max(sign_aligned_gap(theirs[n], again[n]) for n in theirs)
    for name, ref in ours.items():
        other = theirs[name]
        assert ref.A.shape == other.A.shape and ref.B.shape == other.B.shape and ref.scaling == other.scaling
        # PEFT takes its SVD with torch.svd_lowrank (q = 4r, niter = 4, unseeded); ours is exact. Two PEFT runs differ
        # by `spread` (3.9e-3 relative here, from the random test matrix alone): ours must lie within that scale.
        assert sign_aligned_gap(ref, other) <= max(3 * spread, 1e-4), name
        # residual base: W_res + s·B·A is the original W for both (the signs of B·A may differ, the sum may not)
        for layer in (ref, other):
            restored = layer.layer.get_base_layer().weight + layer.scaling * layer.B @ layer.A
            torch.testing.assert_close(restored, load_weight(name), rtol=0, atol=2e-6)
    base = load_causal_lm(TINY_MODEL)
    torch.testing.assert_close(logits(module.model), logits(base), rtol=0, atol=2e-5)  # unchanged at step 0
    torch.testing.assert_close(logits(first), logits(base), rtol=0, atol=2e-5)


def load_weight(name: str) -> torch.Tensor:
    base = load_causal_lm(TINY_MODEL)
    return base.get_submodule(name).weight


def test_lora_one_is_a_normalized_step_against_the_gradient():
    gamma = 16.0
    module = built(scheme="lora_one", estimator="exact", num_batches=2, stable_gamma=gamma)
    data = training_batches(module)
    dense = dense_gradients(module.model, "default", data, 2)
    before = {ref.name: ref.layer.get_base_layer().weight.clone() for ref in find_lora_layers(module.model)}
    module.initializer.initialize_with_data(module.model, "default", data)
    for ref in find_lora_layers(module.model):
        G = dense[ref.name].double()
        U, S, Vh = torch.linalg.svd(-G)
        expected = (U[:, :R] * S[:R]) @ Vh[:R] * (G.shape[0] ** 0.5 / (gamma * float(S[0])))
        torch.testing.assert_close((ref.B @ ref.A).double(), expected, rtol=1e-4, atol=1e-7)
        assert torch.equal(ref.layer.get_base_layer().weight, before[ref.name])  # W untouched
    assert not module.initializer.modifies_base and module.initializer.needs_data


def test_fit_initializes_once_logs_the_cost_and_resumes_onto_the_same_residual_base(tmp_path):
    def fit(root: Path, steps: int, ckpt_path: str | None = None):
        torch.manual_seed(0)
        module = QwenLoRAModule(
            lora=LoRASettings(r=R, alpha=8.0, dropout=0.0), initializer=GradientSVDInit(scheme="lora_ga", num_batches=2)
        )
        trainer = make_trainer(root, max_steps=steps, limit_val_batches=1)
        trainer.fit(module, QADataModule(batch_size=4), ckpt_path=ckpt_path)
        return module, trainer

    full, trainer = fit(tmp_path / "full", 4)
    scalars = read_scalars(Path(trainer.log_dir))
    assert scalars["weights/init/forward_backward_passes"] == [(0, 2.0)] and scalars["weights/init/seconds"][0][1] > 0
    assert full.initial_factors is not None  # the residual start, kept for the rank-2r adapter and checkpoints
    (checkpoint,) = Path(trainer.log_dir, "checkpoints").glob("*.ckpt")
    restored = QwenLoRAModule.load_from_checkpoint(checkpoint).eval()
    torch.testing.assert_close(logits(restored.model), logits(full.eval().model), rtol=0, atol=1e-5)
    resumed, _ = fit(tmp_path / "resumed", 6, str(checkpoint))  # no second data pass: the checkpoint holds the start
    for name, (B0, A0) in full.initial_factors.items():
        assert torch.equal(resumed.initial_factors[name][0], B0) and torch.equal(resumed.initial_factors[name][1], A0)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"scheme": "pissa"}, "scheme"), ({"num_batches": 0}, "num_batches"), ({"estimator": "dense"}, "estimator"),
     ({"passes": 0}, "passes"), ({"oversample": -1}, "oversample"), ({"stable_gamma": 0.0}, "stable_gamma")],
)  # fmt: skip
def test_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(InputError, match=f"model.initializer.init_args.{field}:"):
        GradientSVDInit(**kwargs)
