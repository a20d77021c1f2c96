"""The plan of one training step: static memory under full fine-tuning, DDP and FSDP, autocast copies, the largest
sizes that fit, and the plan against what one real training step of the tiny model saves and allocates on CPU
(saved-tensor hooks, and a dispatch mode that follows every storage's lifetime)."""

from __future__ import annotations

import dataclasses
import weakref

import pytest
import torch
from builders import one_torch_thread  # noqa: F401 (autouse fixture)
from memory.shapes import ALL, SMALL, fp32_setup, small_counts, tiny_config
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from svdlora_pl.memory.activations import TrainingSetup
from svdlora_pl.memory.architecture import LoRASpec, count_parameters
from svdlora_pl.memory.plan import device_total, largest_fitting, plan_memory


def test_full_finetuning_and_sharding():
    full = fp32_setup(lora=None)
    plan = plan_memory(SMALL, small_counts(lora=0), full)
    assert plan.base_weights == {} and plan.trainable == 4000  # nothing frozen
    assert plan.gradients == 4000 and plan.optimizer_states == 8000
    fsdp = plan_memory(SMALL, small_counts(lora=0), dataclasses.replace(full, strategy="fsdp", world_size=4))
    assert (fsdp.trainable, fsdp.gradients, fsdp.optimizer_states) == (1000, 1000, 2000)
    assert fsdp.fsdp_gather == 2 * 300 * 4
    ddp = plan_memory(SMALL, small_counts(lora=0), dataclasses.replace(full, strategy="ddp", world_size=2))
    assert ddp.trainable == 4000 and ddp.ddp_buckets == 4000  # a full replica plus the gradient buckets


def test_fp32_weights_under_bf16_autocast_keep_cast_copies_of_frozen_linears():
    setup = fp32_setup(autocast_dtype="bfloat16")
    counts = small_counts(lora=512)
    plan = plan_memory(SMALL, counts, setup)
    assert plan.autocast_copies == (512 + 800) * 2  # LoRA factors + every frozen Linear (saved per use)
    ckpt = plan_memory(SMALL, counts, dataclasses.replace(setup, gradient_checkpointing=True))
    assert ckpt.autocast_copies == (512 + 256) * 2  # LoRA factors + lm_head; one layer's come back in recompute


def test_device_total_adds_the_cuda_context_and_slack_on_gpu_only():
    assert device_total(10**9, "cpu") == 10**9
    assert device_total(10**9, "gpu") == 10**9 + (1 << 30) + 10**8


def test_plan_refuses_an_empty_batch():
    from svdlora_pl.errors import InputError

    with pytest.raises(InputError, match="micro-batch 0 x length 3: both must be >= 1"):
        plan_memory(SMALL, small_counts(lora=512), fp32_setup(micro_batch=0))


def test_largest_fitting_is_the_boundary():
    setup = fp32_setup(accelerator="gpu")
    counts = small_counts(lora=512)
    budget = plan_memory(SMALL, counts, dataclasses.replace(setup, micro_batch=37)).total
    assert largest_fitting(SMALL, counts, setup, budget, "micro_batch", 1000) == 37
    budget = plan_memory(SMALL, counts, dataclasses.replace(setup, seq_len=50)).total
    assert largest_fitting(SMALL, counts, setup, budget, "seq_len", SMALL.max_positions) == 50
    assert largest_fitting(SMALL, counts, setup, 1e12, "seq_len", SMALL.max_positions) == SMALL.max_positions
    assert largest_fitting(SMALL, counts, setup, 1.0, "micro_batch", 1000) == 0


# ------------------------------------------------------------------- measured: one real training step on the CPU
class LiveBytes(TorchDispatchMode):
    """Bytes of every storage that an op creates, alive until its storage is freed; ``peak`` is the maximum."""

    def __init__(self, ignore: set[int]) -> None:
        super().__init__()
        self.ignore, self.live, self.current, self.peak = ignore, {}, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if storage.nbytes() and key not in self.live and key not in self.ignore:
                    self.live[key] = storage.nbytes()
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, key)
        return out

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key)


@pytest.fixture(scope="module")
def padded_batch():
    from svdlora_pl.training.datamodule import QADataModule

    data = QADataModule(batch_size=2, max_length=128)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert not batch["attention_mask"].all()  # two lengths: padded, as the plan assumes for B > 1
    return batch


@pytest.fixture(scope="module")
def tiny_arch():
    return tiny_config()


# (model dtype, autocast, dropout, micro-batch, gradient checkpointing)
MEASURED = [
    ("float32", False, 0.0, 1, False),
    ("float32", False, 0.1, 2, False),
    ("bfloat16", True, 0.05, 2, False),
    ("float32", False, 0.0, 2, True),
    ("bfloat16", True, 0.05, 2, True),
]


@pytest.mark.parametrize(("dtype", "autocast", "dropout", "batch_size", "checkpointing"), MEASURED)
def test_plan_matches_a_measured_training_step(
    padded_batch, tiny_arch, dtype, autocast, dropout, batch_size, checkpointing
):
    """Second micro-batch of an accumulation (gradients allocated) of QwenLoRAModule.training_step on CPU."""
    from svdlora_pl.lora.settings import LoRASettings
    from svdlora_pl.training.module import QwenLoRAModule

    torch.manual_seed(0)
    module = QwenLoRAModule(dtype=dtype, lora=LoRASettings(r=8, dropout=dropout), gradient_checkpointing=checkpointing)
    module.configure_model()  # loads the weights (Lightning calls it in fit)
    rows = slice(None) if batch_size == 2 else padded_batch["attention_mask"].all(dim=1)  # B = 1: the unpadded row
    batch = {k: padded_batch[k][rows] for k in ("input_ids", "attention_mask", "labels")}
    assert batch["input_ids"].shape[0] == batch_size
    B, T = batch["input_ids"].shape
    context = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)
    with context:
        module.training_step(batch, 0).backward()  # first micro-batch: the gradients now exist
    owned = {t.untyped_storage().data_ptr() for t in [*module.parameters(), *module.buffers()]}
    owned |= {p.grad.untyped_storage().data_ptr() for p in module.parameters() if p.grad is not None}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in owned:
            saved.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    tracker = LiveBytes(owned)
    with tracker:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), context:
            loss = module.training_step(batch, 1)
        after_forward = tracker.current
        loss.backward()

    lora = LoRASpec(r=8, dropout=dropout, targets=ALL)
    arch, counts = count_parameters(tiny_arch, lora)
    setup = TrainingSetup(
        micro_batch=B,
        seq_len=T,
        base_dtype=dtype,
        trainable_dtype="float32",
        autocast_dtype="bfloat16" if autocast else None,
        lora=lora,
        gradient_checkpointing=checkpointing,
        accelerator="cpu",
    )
    plan = plan_memory(arch, counts, setup)
    log_softmax = 4 * B * T * arch.vocab
    measured_peak = tracker.peak + plan.gradients  # gradients were allocated before the tracker started
    estimated_peak = plan.peak - plan.static + plan.gradients  # without weights and optimizer states
    if not checkpointing:
        assert sum(saved.values()) == pytest.approx(plan.activations_full + log_softmax, rel=0.005)
        assert estimated_peak == pytest.approx(measured_peak, rel=0.01)
    else:
        # kept: layer inputs, final norm, RoPE tables, labels (the LoRA factors' cast copies are freed after forward)
        kept = plan.activations_checkpointed - plan.autocast_copies + log_softmax
        assert after_forward == pytest.approx(kept, rel=0.005)
        assert measured_peak <= estimated_peak <= 1.2 * measured_peak
    assert plan.logits == B * T * arch.vocab * (2 if autocast else 4)
