"""Adapters of residual initializations, converted so they apply to the unmodified base model.

A residual scheme (PiSSA, MiLoRA, ``SVDTeacherInit(mode="residual")``, PEFT's pissa/olora) trains on the base
W_res = W − s·B₀·A₀, with B₀, A₀ the factors at step 0 and s the LoRA scaling. After training the model computes
W_res + s·B·A = W + s·(B·A − B₀·A₀) = W + s·[B | B₀]·[A; −A₀]: a rank-2r LoRA update of the *original* W. Saving
that update (with s folded into the factors) gives a standard PEFT adapter that loads with plain
``PeftModel.from_pretrained`` on the unmodified base model, the conversion PEFT applies to PiSSA adapters.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from svdlora_pl.lora.layers import find_lora_layers

InitialFactors = dict[str, tuple[torch.Tensor, torch.Tensor]]
NOTE_NAME = "svdlora_residual.json"


def snapshot_factors(model: torch.nn.Module, adapter: str) -> InitialFactors:
    """{module: (B₀, A₀)} of every LoRA layer, copied to CPU (the state that a residual base subtracted)."""
    return {
        ref.name: (ref.B.detach().cpu().clone(), ref.A.detach().cpu().clone())
        for ref in find_lora_layers(model, adapter)
    }


def base_relative_factors(
    model: torch.nn.Module, adapter: str, initial: InitialFactors, state_dict: Mapping[str, torch.Tensor] | None = None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module: (B', A')} with B'·A' = s·(B·A − B₀·A₀): rank 2r, scaling folded in, float32 on CPU.

    B and A are read from ``state_dict`` (keys of ``model``'s state dict) when given, e.g. the gathered full
    state of a sharded (FSDP) model, else from the layers themselves.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    factors = {}
    for ref in find_lora_layers(model, adapter):
        B0, A0 = initial[ref.name]
        B, A = ref.B, ref.A
        if state_dict is not None:
            B, A = state_dict[names[id(ref.B)]], state_dict[names[id(ref.A)]]
        root = ref.scaling**0.5
        B = torch.cat([B.detach().float().cpu(), B0.float()], dim=1) * root
        A = torch.cat([A.detach().float().cpu(), -A0.float()], dim=0) * root
        factors[ref.name] = (B, A)
    return factors


def save_base_relative_adapter(
    directory: Path,
    model: torch.nn.Module,
    adapter: str,
    initial: InitialFactors,
    base_model: str,
    initializer: str,
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Write the rank-2r adapter of a residual run into ``directory`` (a staging directory), with a note."""
    import json

    from svdlora_pl.lora.adapters import save_adapter_files

    save_adapter_files(directory, base_relative_factors(model, adapter, initial, state_dict), base_model)
    note = {
        "initializer": initializer,
        "conversion": "trained on W - s*B0*A0; saved as W + s*[B | B0]*[A; -A0] (rank 2r, scaling folded in), "
        "which applies to the unmodified base model",
    }
    (directory / NOTE_NAME).write_text(json.dumps(note, indent=2) + "\n", encoding="utf-8")
