"""The memory plan of a config as a text table (GB = 10⁹ bytes), and the one line that says why it does not fit."""

from __future__ import annotations

from typing import Any

from svdlora_pl.memory.plan import MemoryPlan, device_total

GB = 1e9


def _logits_shape(setup: dict[str, Any]) -> str:
    chunk = setup.get("loss_chunk_tokens")
    rows = "B·T" if chunk is None else f"min({chunk}, B·T)"
    return f"{rows}·V, inside the next row"


def _logits_detail(setup: dict[str, Any]) -> str:
    chunk = setup.get("loss_chunk_tokens")
    if chunk is None:
        return "12 bytes · B·T·V: float32 log-softmax and gradients"
    return f"12 bytes · min({chunk}, B·T)·V: one chunk of the chunked loss (model.loss_chunk_tokens)"


def format_table(report: dict[str, Any]) -> str:
    """The plan as a text table in GB (10⁹ bytes), then the largest sizes that fit and the notes.

    Args:
        report: What :func:`svdlora_pl.memory.estimate.estimate_memory` returns; its optional ``config`` (the
            config files, in order) titles the table.
    """
    plan = MemoryPlan(**report["plan"])
    setup, arch, counts = report["setup"], report["architecture"], report["parameters"]
    lora, ckpt, trained = setup["lora"], setup["gradient_checkpointing"], setup["trainable_dtype"]
    rows: list[tuple[str, int, str]] = []
    for dtype, size in plan.base_weights.items():
        frozen = ", frozen" if lora is not None else ""
        rows.append((f"base weights ({dtype}{frozen})", size, f"{counts['total']:,} params"))
    if lora is None:
        rows.append((f"all parameters, trained ({trained})", plan.trainable, f"{counts['total']:,} params"))
    else:
        rows.append((f"LoRA parameters ({trained})", plan.trainable, f"{counts['lora']:,} params, r={lora['r']}"))
    states = f"{setup['optimizer_states']} per trainable parameter"
    used = {True: " <- used", False: ""}
    rows += [
        (f"gradients ({trained})", plan.gradients, "one per trainable parameter"),
        (f"optimizer states ({setup['optimizer']})", plan.optimizer_states, states),
        ("buffers (RoPE tables)", plan.buffers, ""),
        ("master weights", 0, "none (see notes)"),
        ("DDP gradient buckets", plan.ddp_buckets, ""),
        ("FSDP gathered layers", plan.fsdp_gather, "two decoder layers unsharded"),
        ("activations, gradient checkpointing", plan.activations_checkpointed, f"layer inputs{used[ckpt]}"),
        ("activations, no checkpointing", plan.activations_full, f"every saved tensor{used[not ckpt]}"),
        ("  of which autocast weight copies", plan.autocast_copies, "counted in the activations"),
        (f"logits ({setup['autocast_dtype'] or setup['base_dtype']})", plan.logits, _logits_shape(setup)),
        ("logits + loss peak", plan.logits_peak, _logits_detail(setup)),
    ]
    if ckpt:
        rows.append(("one layer recomputed + workspace", plan.layer_recompute + plan.backward_workspace, "in backward"))
    else:
        rows.append(("backward workspace", plan.backward_workspace, "gradients of one layer"))
    budget = report["budget_bytes"]
    verdict = "fits" if plan.fits(budget) else "does NOT fit"
    other = device_total(plan.peak_full if ckpt else plan.peak_checkpointed, setup["accelerator"])
    rows += [
        ("allocated peak", plan.peak, "static + activations + max(logits peak, layer backward)"),
        ("CUDA context + allocator slack", plan.cuda_overhead, ""),
        ("total", plan.total, f"{verdict} in {budget / GB:.2f} GB ({(budget - plan.total) / GB:+.2f} GB)"),
        (f"total {'without' if ckpt else 'with'} checkpointing", other, "for comparison"),
    ]
    init = report.get("init_phase")
    if init is not None:
        verdict = "fits" if init["total"] <= budget else "does NOT fit"
        what = "dense float32 gradient per module" if init["estimator"] == "exact" else "sketches, k·(out+in) + s²"
        rows += [
            (f"init (GradientSVDInit, {init['estimator']}): accumulators", init["accumulators"], what),
            ("  test matrices, shared", init["test_matrices"], "one set per module shape"),
            ("  layer inputs held to backward", init["held_inputs"], "checkpointing drops them otherwise"),
            ("  init total", init["total"], f"weights + LoRA + activations + the above; {verdict}"),
        ]
    targets = f"LoRA r={lora['r']} on {', '.join(lora['targets'])}, dropout {lora['dropout']}" if lora else "full"
    lines = [
        f"svdlora estimate-memory: {' + '.join(report.get('config') or ['a resolved config'])}",
        f"model: {report['model']} (architecture: {report['architecture_source']})",
        f"  {arch['layers']} layers, hidden {arch['hidden']}, intermediate {arch['intermediate']}, "
        f"{arch['heads']} heads / {arch['kv_heads']} KV heads, vocab {arch['vocab']}, {counts['total']:,} parameters",
        f"setup: micro-batch {setup['micro_batch']} x {setup['seq_len']} tokens, accumulate "
        f"{setup['accumulate_grad_batches']}, {setup['precision']} (weights {setup['base_dtype']}, trainable "
        f"{trained}), {targets}, checkpointing {'on' if ckpt else 'off'}, {setup['strategy']} x{setup['world_size']}",
        "",
        f"{'component':<40} {'GB':>9}  detail",
        "-" * 100,
        *(
            f"{name:<40} {size / GB:>9.3f}  {detail}".rstrip()
            for name, size, detail in rows
            if size >= 5e5 or "master" in name
        ),
        "-" * 100,
    ]
    batch, longest = report["largest_micro_batch"], report["largest_max_length"]
    limit = " (the model's max_position_embeddings)" if longest == arch["max_positions"] else ""
    lines.append(f"largest micro-batch at max_length {setup['seq_len']}: {batch or 'none fits'}")
    lines.append(f"largest max_length at micro-batch {setup['micro_batch']}: {longest or 'none fits'}{limit}")
    return "\n".join([*lines, *(f"note: {n}" for n in report["notes"])])


def over_budget_message(report: dict[str, Any]) -> str:
    """One line for a plan over its budget: what it needs, of what, and the largest sizes that fit."""
    plan, setup, init = MemoryPlan(**report["plan"]), report["setup"], report.get("init_phase")
    if plan.fits(report["budget_bytes"]) and init is not None:  # the training step fits, its initialization not
        return (
            f"budget_gb: the initialization (GradientSVDInit, estimator {init['estimator']}) needs "
            f"{init['total'] / GB:.2f} GB, over the {report['budget_bytes'] / GB:g} GB budget (accumulators "
            f"{init['accumulators'] / GB:.2f} GB); the training step itself needs {plan.total / GB:.2f} GB"
            + (
                "; model.initializer.init_args.estimator: sketch holds the gradient in O((out + in)·k)"
                if init["estimator"] == "exact"
                else ""
            )
        )
    return (
        f"budget_gb: the config needs {plan.total / GB:.2f} GB, over the {report['budget_bytes'] / GB:g} GB budget "
        f"(weights, gradients and optimizer states {plan.static / GB:.2f} GB, activations "
        f"{plan.activations / GB:.2f} GB, logits/backward peak {plan.transient / GB:.2f} GB, CUDA "
        f"{plan.cuda_overhead / GB:.2f} GB); largest micro-batch at max_length {setup['seq_len']}: "
        f"{report['largest_micro_batch']}, largest max_length at micro-batch {setup['micro_batch']}: "
        f"{report['largest_max_length']}"
    )
