"""Builders of on-disk test inputs shared across test modules: PEFT adapters of the tiny model, a full fine-tune of
it with a known ΔW, TensorBoard runs with given curves and their ``config.yaml``, QA record files; and a one-thread
fixture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from svdlora_pl.embedded.tiny import TINY_MODEL
from svdlora_pl.lora.settings import QWEN_LINEAR_MODULES
from svdlora_pl.training.datamodule import QADataModule

# ------------------------------------------------------------------------------------------------ adapters
ADAPTER_TARGETS = ["q_proj", "k_proj", "down_proj"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run the module on one intra-op thread: these tensors are tiny, and on a busy 2-core machine OpenMP barriers
    made two-thread runs up to 50x slower (measured). Autouse in every test module that imports it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_base():
    """The embedded tiny Qwen2 (4 layers, width 128), loaded as a user would load it."""
    from transformers import AutoModelForCausalLM

    from svdlora_pl.embedded.tiny import TINY_MODEL, resolve_model_path

    return AutoModelForCausalLM.from_pretrained(resolve_model_path(TINY_MODEL))


def make_adapter(path: Path, r: int, alpha: float, seed: int, targets=ADAPTER_TARGETS, **config) -> Path:
    """Save a PEFT LoRA adapter of the tiny model with random, non-zero B (so its update is not zero)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(tiny_base(), LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), **config))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    model.save_pretrained(path)
    return path


def logits(model, seed: int = 0) -> torch.Tensor:
    tokens = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(tokens).logits


# ------------------------------------------------------------------------------------------ full fine-tune
SPECTRUM = [1.0, 0.5, 0.25, 0.12, 0.06, 0.03]
"""Singular values of the rank-6 perturbation added to every target weight (plus noise of std NOISE per entry)."""
NOISE = 1e-4
LAYERS = 4
MODULE_COUNT = LAYERS * len(QWEN_LINEAR_MODULES)


def make_finetuned(path: Path, seed: int = 0, max_shard_size: str | None = None) -> Path:
    """The tiny model with W += U·diag(SPECTRUM)·Vᵀ + NOISE·G on every target Linear, saved with save_pretrained."""
    from svdlora_pl.training.loading import load_causal_lm

    model = load_causal_lm(TINY_MODEL, "float32", False)
    gen = torch.Generator().manual_seed(seed)
    S = torch.tensor(SPECTRUM)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name.rpartition(".")[2] in QWEN_LINEAR_MODULES:
                out, inp = module.weight.shape
                U = torch.linalg.qr(torch.randn(out, len(S), generator=gen)).Q
                V = torch.linalg.qr(torch.randn(inp, len(S), generator=gen)).Q
                module.weight += (U * S) @ V.T + NOISE * torch.randn(out, inp, generator=gen)
    model.save_pretrained(path, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    return path


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def true_deltas(base: Path, finetuned: Path) -> dict[str, np.ndarray]:
    """{module: W_finetuned − W_base} in float64 numpy, from the saved files of every target module."""
    W0, W1 = _tensors(base), _tensors(finetuned)
    return {
        key.removesuffix(".weight"): W1[key].double().numpy() - W0[key].double().numpy()
        for key in W0
        if key.endswith(".weight") and key.removesuffix(".weight").rpartition(".")[2] in QWEN_LINEAR_MODULES
    }


# ------------------------------------------------------------------------------------------ TensorBoard runs
STEPS = [1, 2, 3, 4, 5]
LOSS_A = [4.0, 3.0, 2.0, 1.5, 1.2]
LOSS_B = [3.0, 2.0, 1.4, 1.1, 1.0]


def f32(values: list[float]) -> list[float]:
    """Values as TensorBoard stores them (float32), back in float64."""
    return [float(np.float32(v)) for v in values]


def write_events(directory: Path, series: dict[str, list[tuple[int, float]]], wall0: float = 1000.0) -> Path:
    """One event file in ``directory`` holding ``series`` (tag -> [(step, value)]), wall times wall0 + step."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(directory))
    for tag, points in series.items():
        for step, value in points:
            writer.add_scalar(tag, value, step, walltime=wall0 + step)
    writer.close()
    return directory


def curve(losses: list[float], steps: list[int] = STEPS) -> list[tuple[int, float]]:
    return list(zip(steps, losses, strict=True))


def make_run(directory: Path, losses: list[float], val: list[tuple[int, float]] | None = None) -> Path:
    series = {"train/loss": curve(losses)}
    if val is not None:
        series["val/loss"] = val
    return write_events(directory, series)


# ------------------------------------------------------------------------------------------------ pure functions
def write_config(run: Path, initializer: str) -> None:
    (run / "config.yaml").write_text(f"seed_everything: 0\nmodel:\n  initializer:\n{initializer}", encoding="utf-8")


def svd_init(factors: Path | str) -> str:
    return f"    class_path: svdlora_pl.initializers.SVDTeacherInit\n    init_args:\n      factors: {factors}\n"


# ------------------------------------------------------------------------------------------------ QA records
QA = {"question": "What is P(heads) for a fair coin?", "answer": "It is 1/2.", "final_answer": "1/2"}
CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Roll a die. P(6)?"},
        {"role": "assistant", "content": "1/6."},
        {"role": "user", "content": "And P(even)?"},
        {"role": "assistant", "content": "1/2."},
    ],
    "id": 7,
}


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def setup_split(path: Path, split: str = "train", **kwargs) -> QADataModule:
    """A data module whose ``split`` is read from ``path``, set up for that split only."""
    key = {"train": "train_file", "val": "val_file", "test": "test_file", "predict": "predict_file"}[split]
    dm = QADataModule(**{key: str(path)}, **kwargs)
    dm.dataset(split)
    return dm


# ------------------------------------------------------------------------------------------ training batches
def training_batches(module, batch_size: int = 8, dtype: torch.dtype | None = None):
    """:class:`TrainingBatches` of a configured ``QwenLoRAModule`` over the bundled training set (epoch 0's order),
    outside a Trainer: the batches of one process, its loss, no reduction."""
    from svdlora_pl.lora.gradients import TrainingBatches

    data = QADataModule(batch_size=batch_size)
    data.setup("fit")
    loader = data.train_dataloader()

    def batches(count: int):
        for index, batch in enumerate(loader):
            if index == count:
                return
            yield batch

    return TrainingBatches(
        batches=batches, loss=module.loss, mean=lambda tensor: tensor,
        input_embeddings=module.hf_model().get_input_embeddings(),
    )  # fmt: skip


def zero_update_module(dtype: str = "float32", r: int = 8):
    """A configured tiny ``QwenLoRAModule`` (seeded) whose LoRA update is zero: gradients at the base weights."""
    from svdlora_pl.lora.layers import find_lora_layers
    from svdlora_pl.lora.settings import LoRASettings
    from svdlora_pl.training.module import QwenLoRAModule

    torch.manual_seed(0)
    built = QwenLoRAModule(dtype=dtype, lora=LoRASettings(r=r, alpha=2.0 * r, dropout=0.0))
    built.configure_model()
    with torch.no_grad():
        for ref in find_lora_layers(built.model):
            ref.B.zero_()
    return built


def sketch_rank(rank: int, world: int, store: str, out: str) -> None:
    """One process of a 2-process gloo run: half the batches each, sketches averaged, factors broadcast."""
    import torch.distributed as dist

    from svdlora_pl.lora.gradients import TrainingBatches, gradient_svds
    from svdlora_pl.training.initialization import broadcast_from_rank_zero

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        built = zero_update_module()
        every = training_batches(built)
        mine = TrainingBatches(
            batches=lambda n: (b for i, b in enumerate(every.batches(world * n)) if i % world == rank),
            loss=built.loss,
            mean=lambda t: (dist.all_reduce(t), t / world)[1],
            input_embeddings=every.input_embeddings,
            broadcast=broadcast_from_rank_zero,
        )
        estimate = gradient_svds(built.model, "default", mine, rank=4, num_batches=4 // world)
        torch.save({name: broadcast_from_rank_zero(svd.U) for name, svd in estimate.svds.items()}, f"{out}.{rank}")
        torch.save({name: svd.S for name, svd in estimate.svds.items()}, f"{out}.S.{rank}")
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------ matrices and files
def orthonormal(rows: int, cols: int, seed: int | torch.Generator) -> torch.Tensor:
    """A rows×cols float64 matrix with orthonormal columns (QR of a Gaussian draw from ``seed`` or a generator)."""
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64)).Q.contiguous()


def svd_form(m: int, n: int, s: list[float], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) = (U·diag(S), Vᵀ) in float32, as load_factors gives an SVD-form file (rounded U, V)."""
    gen = torch.Generator().manual_seed(seed)
    U, V = orthonormal(m, len(s), gen), orthonormal(n, len(s), gen)
    return (U * torch.tensor(s, dtype=torch.float64)).float(), V.T.contiguous().float()


def random_lora(m: int, n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian LoRA factors (B m×k, A k×n scaled by 1/√n), float32."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen) / n**0.5


def pickled_delta(tmp_path: Path) -> Path:
    """A ``delta.pth`` pickle holding LoRA-like tensors: what the tools refuse to read."""
    path = tmp_path / "delta.pth"
    torch.save({"m.lora_A": torch.ones(2, 3), "m.lora_B": torch.ones(4, 2)}, path)
    return path
