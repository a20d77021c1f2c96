"""Tag layout at the 7B module count: a 28-layer model of tiny width (28 × 7 = 196 LoRA modules, as Qwen2.5-7B)
fitted with the monitors and the dashboard; tag and group counts, TensorBoard's card order, the custom-scalars
layout read back from the event file."""

from __future__ import annotations

import functools
import re
from collections import Counter

import lightning.pytorch as pl
import pytest
import torch
from helpers import make_trainer

from svdlora_pl.callbacks import DashboardLogger, LoRAIntruderMonitor, LoRASpectrumMonitor, TensorBoardDashboard
from svdlora_pl.callbacks.tags import (
    compare_tag_names,
    group,
    layer_regex,
    layer_tag,
    module_kind,
    summary_tag,
    time_series_groups,
)

LAYERS, KINDS = 28, 7


def test_tag_names():
    layer = "layers.12.mlp.down_proj"
    assert module_kind(layer) == "down_proj" and summary_tag("energy@1", "mean") == "weights/energy@1/mean"
    assert layer_tag("energy@1", layer) == "weights.energy@1.down_proj/layers.12.mlp.down_proj"
    assert group(layer_tag("energy@1", layer)) == "weights.energy@1.down_proj"
    assert re.search(layer_regex("energy@1", "down_proj"), layer_tag("energy@1", layer))
    assert not re.search(layer_regex("energy@1", "down_proj"), layer_tag("energy@12", layer))


def test_time_series_order_puts_the_losses_first():
    tags = ["weights/energy@1/mean", "train/loss", "val/loss", "weights.energy@1.q_proj/layers.10.self_attn.q_proj"]
    tags += ["weights.energy@1.q_proj/layers.9.self_attn.q_proj", "train/lr", "val/token_accuracy", "epoch"]
    assert time_series_groups(tags)[:2] == ["epoch", "train"]  # why DashboardLogger drops Lightning's epoch
    tags.remove("epoch")
    assert time_series_groups(tags) == ["train", "val", "weights", "weights.energy@1.q_proj"]
    layers = sorted(tags[3:5], key=functools.cmp_to_key(compare_tag_names))
    assert layers[0].endswith("layers.9.self_attn.q_proj")  # numbers compare by value


@pytest.mark.parametrize(
    "smaller, larger",
    [("a2b", "a10b"), ("a/a", "a+/a"), ("a_b", "ab"), ("1.5e3x", "2000x"), ("Z", "a"), ("val/loss", "val_x/a")],
)
def test_compare_tag_names_is_tensorboards(smaller, larger):
    # the examples of compareTagNames' documentation (tensorboard/webapp/metrics/utils.ts), and its ASCII fallback
    assert compare_tag_names(smaller, larger) == -1 and compare_tag_names(larger, smaller) == 1
    assert compare_tag_names(smaller, smaller) == 0


# ------------------------------------------------------------------ 196 modules
class RandomTokens(pl.LightningModule):
    """A 28-layer Qwen2 of the tiny model's width with LoRA r=4 on all 7 projections, fitted on random tokens."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import Qwen2Config, Qwen2ForCausalLM

        from svdlora_pl.embedded.tiny import MODEL_CONFIG
        from svdlora_pl.lora.initializers import RandomInit
        from svdlora_pl.lora.settings import LoRASettings, wrap_with_lora

        torch.manual_seed(0)
        config = Qwen2Config(**{**MODEL_CONFIG, "num_hidden_layers": LAYERS, "vocab_size": 64})
        self.model = wrap_with_lora(
            Qwen2ForCausalLM(config), LoRASettings(r=4, alpha=8, dropout=0.0), RandomInit(), "x"
        )

    def training_step(self, batch, batch_idx):
        (tokens,) = batch
        loss = self.model(input_ids=tokens, labels=tokens).loss
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-2)


@pytest.fixture(scope="module")
def run_196(tmp_path_factory):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = tmp_path_factory.mktemp("modules196")
    intruders = LoRAIntruderMonitor(every_n_steps=1, top_k=2, base_rank=4, oversample=2, base_niter=1, cache=False)
    callbacks = [LoRASpectrumMonitor(every_n_steps=1), intruders, TensorBoardDashboard()]
    trainer = make_trainer(root, max_steps=2, logger=DashboardLogger(str(root)), callbacks=callbacks)
    tokens = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(0))
    trainer.fit(RandomTokens(), torch.utils.data.DataLoader(torch.utils.data.TensorDataset(tokens), batch_size=2))
    events = EventAccumulator(str(trainer.log_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    events.Reload()
    return events


def test_tags_and_groups_of_196_modules(run_196):
    tags = run_196.Tags()
    scalars = tags["scalars"]
    per_layer_metrics = 2 * 2 + 4 + 2  # energy and recon_error at k = 1, 2 (r = 4); 4 shape metrics; 2 intruder metrics
    assert len([t for t in scalars if t.startswith("weights.")]) == LAYERS * KINDS * per_layer_metrics  # 1,960
    assert len([t for t in scalars if t.startswith("weights/")]) == 3 * per_layer_metrics + 1  # mean/min/max, total
    assert set(scalars) - {t for t in scalars if t.startswith("weights")} == {"train/loss"}  # no epoch, no hp_metric
    sizes = Counter(group(t) for t in scalars)
    per_layer_groups = {name: size for name, size in sizes.items() if name.startswith("weights.")}
    assert len(per_layer_groups) == per_layer_metrics * KINDS  # 70 groups (one per metric and module kind) ...
    assert set(per_layer_groups.values()) == {LAYERS}  # ... of 28 cards each
    histograms = Counter(group(t) for t in tags["histograms"])
    assert len(histograms) == KINDS and set(histograms.values()) == {LAYERS}
    assert time_series_groups(scalars + tags["histograms"])[:2] == ["train", "weights"]


def test_custom_scalars_layout_of_196_modules(run_196):
    from tensorboard.plugins.custom_scalar import layout_pb2

    (event,) = run_196.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    titles = [category.title for category in layout.category]
    assert titles[:2] == ["train and validation", f"LoRA updates (mean, min-max over {LAYERS * KINDS} layers)"]
    per_layer = layout.category[2:]
    assert len(per_layer) == 10 and all(category.closed for category in per_layer)
    scalars = run_196.Tags()["scalars"]
    for category in per_layer:
        assert len(category.chart) == KINDS
        for chart in category.chart:
            (pattern,) = chart.multiline.tag
            assert len([t for t in scalars if re.search(pattern, t)]) == LAYERS, chart.title  # 28 lines a chart
    margins = [chart.margin.series[0] for chart in layout.category[1].chart if chart.HasField("margin")]
    assert len(margins) == 10 and all(s.value in scalars and s.lower in scalars and s.upper in scalars for s in margins)


def test_the_heat_map_of_196_modules_is_28_by_7():
    monitor = LoRASpectrumMonitor()
    monitor.last_values = {
        f"layers.{i}.{block}.{kind}": {"energy@1": i / LAYERS, "effective_rank": 1.0}
        for i in range(LAYERS)
        for block, kind in [("self_attn", k) for k in ("q_proj", "k_proj", "v_proj", "o_proj")]
        + [("mlp", k) for k in ("gate_proj", "up_proj", "down_proj")]
    }
    monitor.ranks = [1]
    grid = monitor.figures(0)["weights/heatmap/energy@1"].axes[0].images[0].get_array()
    assert grid.shape == (LAYERS, KINDS) and grid[27, 6] == pytest.approx(27 / 28)
