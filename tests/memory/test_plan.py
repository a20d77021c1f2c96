"""Memory plan formulas: exact parameter counts (real tiny model, PEFT, the published 7B count), activation and
logits bytes against hand computations, and against what one real training step of the tiny model saves and
allocates on CPU (saved-tensor hooks, and a dispatch mode that follows every storage's lifetime)."""

from __future__ import annotations

import dataclasses
import weakref

import pytest
import torch
from builders import one_torch_thread  # noqa: F401 (autouse fixture)
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from svdlora_pl.embedded.tiny import TINY_MODEL, resolve_model_path
from svdlora_pl.memory.plan import (
    DECODER_PROJECTIONS,
    PRESETS,
    Architecture,
    LoRASpec,
    ParameterCounts,
    TrainingSetup,
    count_parameters,
    largest_fitting,
    layer_activations,
    logits_bytes,
    logits_peak_bytes,
    plan_memory,
)

ALL = DECODER_PROJECTIONS
QWEN25_7B_PARAMS = 7_615_616_512  # published parameter count of Qwen2.5-7B (7.62 B)
# a hand-sized shape: h 8, I 16, 2 layers, 2 heads of 4, 1 KV head, vocab 32
SMALL = Architecture(hidden=8, intermediate=16, layers=2, heads=2, kv_heads=1, head_dim=4, vocab=32, max_positions=64)


def small_counts(lora: int) -> ParameterCounts:
    return ParameterCounts(
        total=1000, linear=800, per_layer=300, layer_linear=280, lm_head=256, lora=lora, buffer_bytes=0
    )


def tiny_config():
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_model_path(TINY_MODEL))


def preset_config(name: str):
    from transformers import AutoConfig

    fields = dict(PRESETS[name])
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


# ----------------------------------------------------------------------------------------------- parameter counts
def test_tiny_counts_equal_the_real_model():
    from svdlora_pl.memory.estimate import tiny_config as recipe_config
    from svdlora_pl.training.loading import load_causal_lm

    real = load_causal_lm(TINY_MODEL)
    assert count_parameters(recipe_config(), None) == count_parameters(tiny_config(), None)  # recipe = built model
    _, counts = count_parameters(tiny_config(), None)
    assert counts.total == sum(p.numel() for p in real.parameters())  # tied embeddings counted once
    assert counts.per_layer == sum(p.numel() for p in real.model.layers[0].parameters())
    assert counts.buffer_bytes == sum(b.numel() * b.element_size() for b in real.buffers())
    assert counts.lora == 0


@pytest.mark.parametrize(("r", "targets"), [(8, ALL), (4, ("q_proj", "v_proj")), (3, ("down_proj",))])
def test_lora_count_equals_peft_on_the_real_tiny_model(r, targets):
    from svdlora_pl.lora.initializers import RandomInit
    from svdlora_pl.lora.settings import LoRASettings, wrap_with_lora
    from svdlora_pl.training.loading import load_causal_lm

    model = wrap_with_lora(
        load_causal_lm(TINY_MODEL), LoRASettings(r=r, target_modules=list(targets)), RandomInit(), TINY_MODEL
    )
    _, counts = count_parameters(tiny_config(), LoRASpec(r=r, dropout=0.0, targets=targets))
    assert counts.lora == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_unknown_target_module_is_an_input_error():
    from svdlora_pl.errors import InputError

    with pytest.raises(InputError, match="model.lora.target_modules: 'qkv'"):
        count_parameters(tiny_config(), LoRASpec(r=2, dropout=0.0, targets=("qkv",)))


def test_qwen25_7b_preset_has_the_published_count_and_peft_agrees():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = preset_config("qwen2.5-7b")
    arch, counts = count_parameters(config, LoRASpec(r=16, dropout=0.05, targets=ALL))
    assert counts.total == QWEN25_7B_PARAMS
    # r·(in + out) per projection, by hand: q 3584→3584, k/v 3584→512, o 3584→3584, gate/up 3584→18944, down back
    per_layer = 16 * ((3584 + 3584) + 2 * (3584 + 512) + (3584 + 3584) + 3 * (3584 + 18944))
    assert counts.lora == 28 * per_layer == 40_370_176
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    peft = get_peft_model(meta, LoraConfig(r=16, target_modules=list(ALL), task_type="CAUSAL_LM"))
    assert counts.lora == sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert (arch.hidden, arch.kv_dim, arch.vocab) == (3584, 512, 152064)
    math = count_parameters(preset_config("qwen2.5-math-7b"), None)
    assert math[1].total == QWEN25_7B_PARAMS and math[0].max_positions == 4096


# ------------------------------------------------------------------------------------ formulas by hand, tiny shape
def fp32_setup(**overrides) -> TrainingSetup:
    setup = TrainingSetup(
        micro_batch=1,
        seq_len=3,
        base_dtype="float32",
        trainable_dtype="float32",
        autocast_dtype=None,
        lora=LoRASpec(r=2, dropout=0.0, targets=ALL),
        gradient_checkpointing=False,
    )
    return dataclasses.replace(setup, **overrides)


def test_fp32_lora_activations_by_hand():
    setup = fp32_setup()
    N = 3
    norm = N * 8 * 4 + N * 4  # float32 input + rsqrt
    per_layer = (
        norm
        + N * 8 * 4  # input_layernorm output, shared LoRA input of q/k/v
        + 7 * N * 2 * 4  # x·Aᵀ of the 7 projections
        + N * 8 * 4 + 2 * N * 4 * 4 + N * 8 * 4 + N * 2 * 4  # q, k, v (1 KV head), output (= o_proj input), lse
        + norm
        + N * 8 * 4  # post_attention_layernorm output, shared by gate/up
        + 3 * N * 16 * 4  # gate output, up output, SiLU output
        + N * 16 * 4  # down_proj input
    )  # fmt: skip
    saved, requires_grad = layer_activations(SMALL, setup, True)
    assert sum(saved.values()) == per_layer and requires_grad
    layer0, _ = layer_activations(SMALL, setup, False)
    assert sum(layer0.values()) == per_layer - norm  # the embedding output does not require grad
    outside = 2 * 3 * 4 * 4 + N * 8 + norm  # RoPE cos/sin, labels, final norm
    plan = plan_memory(SMALL, small_counts(lora=512), setup)
    assert plan.activations_full == 2 * per_layer - norm + outside
    assert plan.activations_checkpointed == 2 * N * 8 * 4 + outside
    assert plan.layer_recompute == per_layer
    assert plan.activations_checkpointed < plan.activations_full


def test_bf16_mixed_lora_with_dropout_by_hand():
    setup = fp32_setup(
        base_dtype="bfloat16",
        autocast_dtype="bfloat16",
        lora=LoRASpec(r=2, dropout=0.1, targets=ALL),
    )
    N = 3
    norm = N * 8 * 4 + N * 4
    # each LoRA module: its own bf16 copy of the input, a bool dropout mask (CUDA), x·Aᵀ in bf16
    lora_qkv = 3 * (N * 8 * 2 + N * 8 * 1 + N * 2 * 2)
    attention = N * 8 * 2 + 2 * N * 4 * 2 + N * 8 * 2 + N * 2 * 4
    lora_o = N * 8 * 2 + N * 8 + N * 2 * 2
    lora_gate_up = 2 * (N * 8 * 2 + N * 8 + N * 2 * 2)
    mlp = 3 * N * 16 * 2
    lora_down = N * 16 * 2 + N * 16 + N * 2 * 2
    per_layer = norm + lora_qkv + attention + lora_o + norm + lora_gate_up + mlp + lora_down
    saved, _ = layer_activations(SMALL, setup, True)
    assert sum(saved.values()) == per_layer == 1332
    layer0, _ = layer_activations(SMALL, setup, False)
    assert sum(layer0.values()) == per_layer - norm - 3 * N * 8  # no norm, no q/k/v dropout masks saved
    outside = 2 * 3 * 4 * 2 + N * 8 + norm
    copies = 512 * 2  # bf16 autocast copies of the 512 float32 LoRA parameters
    plan = plan_memory(SMALL, small_counts(lora=512), setup)
    assert plan.autocast_copies == copies
    assert plan.activations_full == per_layer + sum(layer0.values()) + outside + copies
    assert plan.backward_workspace == N * (2 * 16 * 4 + 2 * 8 * 4)  # the LoRA cast makes MLP gradients float32
    # static: bf16 weights, float32 LoRA factors, their gradients, AdamW's two float32 states
    assert plan.static == 1000 * 2 + 512 * 4 * 4


def test_padded_micro_batch_repeats_kv_and_saves_the_mask():
    one, _ = layer_activations(SMALL, fp32_setup(micro_batch=1), True)
    two, _ = layer_activations(SMALL, fp32_setup(micro_batch=2), True)
    assert one["attention k, v"] == 2 * 3 * 4 * 4  # grouped-query: one KV head
    assert two["attention k, v"] == 2 * 6 * 8 * 4  # repeated to both heads
    assert "attention mask bias" not in one and two["attention mask bias"] == 2 * 3 * 3 * 4


def test_logits_bytes_and_peak():
    assert logits_bytes(2, 3, 32, "bfloat16") == 2 * 3 * 32 * 2
    assert logits_bytes(2, 3, 32, "float32") == 2 * 3 * 32 * 4
    assert logits_bytes(2, 3, 32, "bfloat16", chunk=4) == 4 * 32 * 2  # one chunk of the chunked loss
    assert logits_bytes(2, 3, 32, "bfloat16", chunk=100) == 2 * 3 * 32 * 2
    assert logits_peak_bytes(2, 3, 32, "bfloat16") == 12 * 2 * 3 * 32  # backward: 3 float32 tensors of B·T·V
    assert logits_peak_bytes(2, 3, 32, "float32") == 12 * 2 * 3 * 32
    assert logits_peak_bytes(2, 3, 32, "bfloat16", chunk=4) == 12 * 4 * 32  # one chunk of the chunked loss
    assert logits_peak_bytes(2, 3, 32, "bfloat16", chunk=100) == 12 * 2 * 3 * 32  # capped at B·T rows


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
