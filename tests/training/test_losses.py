"""The chunked answer-token loss equals the model's own loss, with the same gradients, a chunk of logits at a time."""

from __future__ import annotations

import pytest
import torch

from svdlora_pl.errors import InputError
from svdlora_pl.lora.settings import LoRASettings
from svdlora_pl.training.datamodule import QADataModule
from svdlora_pl.training.losses import chunked_cross_entropy
from svdlora_pl.training.module import QwenLoRAModule


@pytest.fixture(scope="module")
def batch() -> dict:
    data = QADataModule(batch_size=4)
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def lora_grads(module: QwenLoRAModule) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("chunk", [1, 37, 100_000])
def test_chunked_loss_and_gradients_equal_the_model_loss(batch: dict, chunk: int) -> None:
    torch.manual_seed(0)
    module = QwenLoRAModule(lora=LoRASettings(r=4, dropout=0.0))
    module.configure_model()
    with torch.no_grad():  # a non-zero B so that gradients reach A as well
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    reference = module.loss(batch)
    reference.backward()
    expected = lora_grads(module)
    module.zero_grad()

    module.hparams.loss_chunk_tokens = chunk
    head = module.hf_model().get_output_embeddings()
    rows: list[int] = []
    hook = head.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    loss = module.loss(batch)
    loss.backward()
    hook.remove()
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=0)
    for name, grad in lora_grads(module).items():
        # summation order differs per chunk: float32 noise relative to each tensor's scale (measured <= 3e-6 with
        # chunk=1 on the pretrained tiny model), so atol follows the tensor's largest entry
        scale = expected[name].abs().max().item()
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=max(1e-7, 1e-5 * scale), msg=name)
    supervised = int((batch["labels"][:, 1:] != -100).sum())
    assert max(rows) == min(chunk, supervised)  # never more than one chunk of logits
    assert sum(rows) == 2 * supervised  # forward, then the recompute in backward


def test_eval_metrics_agree_with_and_without_chunking(batch: dict) -> None:
    module = QwenLoRAModule(lora=LoRASettings(r=4, dropout=0.0))
    module.configure_model()
    module.eval()
    values = []
    for chunk in (None, 16):
        module.hparams.loss_chunk_tokens = chunk
        with torch.no_grad():
            module._eval_step(module.val_metrics, batch)
        values.append(module.val_metrics.compute("val", with_exact_match=False))
        module.val_metrics.reset()
    for key, value in values[0].items():
        torch.testing.assert_close(values[1][key], value, rtol=1e-5, atol=0)


def test_nothing_supervised_gives_a_zero_with_a_graph() -> None:
    hidden = torch.randn(0, 8, requires_grad=True)
    loss = chunked_cross_entropy(hidden, torch.zeros(0, dtype=torch.long), torch.nn.Linear(8, 5), 4)
    assert loss.item() == 0.0 and loss.requires_grad


def test_bad_chunk_size_names_the_field() -> None:
    with pytest.raises(InputError, match="model.loss_chunk_tokens"):
        QwenLoRAModule(loss_chunk_tokens=0)
