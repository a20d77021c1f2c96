"""Benchmark: teacher synthesis (LoRA rank 16 → teacher rank 64) and factor export (64 → 16) of a Qwen2.5-7B-shaped
adapter, factored end to end (no dense ΔW is ever formed), against the dense cost measured in the same run.

Run (from the repository root, with the package installed)::

    python benchmarks/teacher.py                  # 28 layers × 7 modules = 196, Qwen2.5-7B shapes, 2 threads
    python benchmarks/teacher.py --layers 2       # a quick run on 2 layers
    python benchmarks/teacher.py --check          # exit code 1 if a target is missed
    python benchmarks/teacher.py --cli            # phases through the tools' functions synthesize() / factorize()
    python benchmarks/teacher.py --dense-all      # also time one dense SVD per distinct shape (minutes)

Setup (not measured): a random rank-16 float32 adapter with the real shapes (out×in: q_proj and o_proj
3584×3584, k_proj and v_proj 512×3584, gate_proj and up_proj 18944×3584, down_proj 3584×18944) is written with
:func:`svdlora_pl.lora.adapters.write_adapter` to ``--workdir`` (a temporary directory by default).

Measured, each phase in a fresh Python process (``sys.executable`` running this file with ``--phase``), steps timed
inside it:

* **synthesize**: :func:`~svdlora_pl.lora.adapters.read_adapter`, :func:`~svdlora_pl.teacher.synthesis.synthesize_adapter` (rank
  64, noise 0.1, decay 0.1: the ``svdlora synthesize`` defaults), :func:`~svdlora_pl.teacher.synthesis.save_synthesized`;
* **factorize**: :func:`~svdlora_pl.lora.factor_files.load_factors` of the teacher,
  :func:`~svdlora_pl.teacher.factorize.factorize_modules` (rank 16, split sqrt),
  :func:`~svdlora_pl.lora.factor_files.save_factors`.

With ``--cli`` each phase is one step instead: the function behind ``svdlora synthesize`` / ``svdlora factorize``
(:func:`~svdlora_pl.teacher.synthesize.synthesize`, :func:`~svdlora_pl.teacher.factorize.factorize`), reports and
figures included.

Peak RSS is the high-water mark of the phase's own process after each step (``VmHWM`` of /proc/self/status;
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` where /proc is missing): interpreter, torch and the package included.
``baseline`` is that mark after the phase's imports (torch and the svdlora_pl modules it calls), before the first
step; what those modules import lazily (peft in ``read_adapter``, matplotlib in ``factorize``) counts in the step.
The total is the sum of the phases' step times and the larger of their peaks (the phases run one after the other);
process start-up and the top-level imports are printed per phase but not counted in the total.

The dense comparison, measured in the same run on ``--threads`` threads: ``torch.linalg.svd`` (float32, thin) of the
formed ΔW of one hidden×hidden module (layer 0 q_proj of the teacher), against the factored cost of that module
(synthesize_module + factorize_modules, best of 5). The dense time of all modules is **extrapolated** from it by the flop
count of a thin SVD with both bases (Golub & Van Loan: min(14mn² + 8n³, 6mn² + 20n³) for m ≥ n); ``--dense-all``
also measures one module of each distinct shape and extrapolates by the layer count instead. The flop ratio fits
the square and tall shapes, but torch's SVD of the wide 3584×18944 down_proj took about 3× its flop share here, so
the flop extrapolation is a lower bound. The dense memory is 4 bytes × Σ out·in over all modules: the float32 ΔW
that a dense approach holds.

Targets (``--target-seconds``, ``--target-gib``): total ≤ 10 s, peak RSS ≤ 2 GiB; and the factorized rank-16
factors have the teacher's top-16 singular values (max relative difference ≤ 1e-5, float32 files).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BASE_MODEL = "Qwen/Qwen2.5-7B-Instruct"
ALPHA = 32.0
LORA_DECAY = 0.75  # column j of B is scaled by 0.75**j: a decaying LoRA spectrum (as in benchmarks/spectral.py)
TARGET_REL = 1e-5
MIB = 2**20


def module_shapes(hidden: int, intermediate: int, kv: int) -> dict[str, tuple[int, int]]:
    """(out, in) of the seven adapted Linear layers of one Qwen2 decoder layer."""
    return {
        "self_attn.q_proj": (hidden, hidden),
        "self_attn.k_proj": (kv, hidden),
        "self_attn.v_proj": (kv, hidden),
        "self_attn.o_proj": (hidden, hidden),
        "mlp.gate_proj": (intermediate, hidden),
        "mlp.up_proj": (intermediate, hidden),
        "mlp.down_proj": (hidden, intermediate),
    }


def all_shapes(args: argparse.Namespace) -> dict[str, tuple[int, int]]:
    """{base module path: (out, in)} of every adapted module."""
    shapes = module_shapes(args.hidden, args.intermediate, args.kv)
    return {f"model.layers.{i}.{name}": shape for i in range(args.layers) for name, shape in shapes.items()}


def make_adapter(shapes: dict[str, tuple[int, int]], rank: int, seed: int) -> dict[str, tuple[torch.Tensor, ...]]:
    """Random float32 LoRA factors {module: (B, A, scale)}: B = G_B·diag(0.75^j), A = G_A/√in, scale alpha/rank."""
    g = torch.Generator().manual_seed(seed)
    decay = LORA_DECAY ** torch.arange(rank, dtype=torch.float32)
    return {
        name: (torch.randn(m, rank, generator=g) * decay, torch.randn(rank, n, generator=g) / n**0.5, ALPHA / rank)
        for name, (m, n) in shapes.items()
    }


def paths(workdir: Path, args: argparse.Namespace) -> dict[str, Path]:
    return {
        "adapter": workdir / "adapter",
        "teacher_dir": workdir / "teacher",
        "teacher": workdir / "teacher" / f"synthesized_delta_rank{args.teacher_rank}.safetensors",
        "factors_dir": workdir / "factors",
        "factors": workdir / "factors" / f"svd_factors_rank{args.rank}.safetensors",
    }


def maxrss_bytes() -> int:
    """This process's peak resident set size so far, in bytes.

    ``VmHWM`` of /proc/self/status where it exists: the high-water mark of this process's own address space.
    ``ru_maxrss`` (the fallback, KiB on Linux) also keeps the peak of the parent at fork time across ``exec``, so a
    child started by a large parent would report the parent's size.
    """
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------- the phases (run in a fresh process each)
def _synthesize_steps(args: argparse.Namespace, p: dict[str, Path]) -> list[tuple[str, Callable[[Any], Any]]]:
    from svdlora_pl.lora.adapters import read_adapter
    from svdlora_pl.teacher.synthesis import save_synthesized, synthesize_adapter

    if args.cli:
        from svdlora_pl.teacher.synthesize import synthesize as synthesize_tool

        options = {"adapter": p["adapter"], "target_rank": args.teacher_rank, "noise_scale": args.noise_scale}
        return [("synthesize()", lambda _: synthesize_tool(p["teacher_dir"], overwrite=True, **options))]

    def synthesize(adapter: Any) -> Any:
        factors = {m: (f.B, f.A, f.scaling) for m, f in adapter.modules.items()}
        return synthesize_adapter(factors, args.teacher_rank, args.noise_scale)[0]

    return [
        ("read_adapter", lambda _: read_adapter(p["adapter"])),
        (f"synthesize_adapter (rank {args.teacher_rank})", synthesize),
        ("save_synthesized", lambda svds: save_synthesized(p["teacher"], svds, {"source": str(p["adapter"])})),
    ]


def _factorize_steps(args: argparse.Namespace, p: dict[str, Path]) -> list[tuple[str, Callable[[Any], Any]]]:
    from svdlora_pl.lora.factor_files import load_factors, save_factors
    from svdlora_pl.teacher.factorize import factorize, factorize_modules

    if args.cli:
        return [("factorize()", lambda _: factorize(p["factors_dir"], args.rank, delta=p["teacher"], overwrite=True))]

    def load(_: Any) -> Any:
        return {m: (B, A, 1.0) for m, (B, A) in load_factors(p["teacher"])[0].items()}

    def save(result: Any) -> Any:
        p["factors_dir"].mkdir(parents=True, exist_ok=True)
        return save_factors(p["factors"], result[0], {"split": "sqrt", "rank": str(args.rank)})

    return [
        ("load_factors (teacher)", load),
        (f"factorize (rank {args.rank})", lambda modules: factorize_modules(modules, args.rank, "sqrt")),
        ("save_factors", save),
    ]


def run_phase(args: argparse.Namespace) -> None:
    """Child process: run one phase's steps, write {baseline, steps: [[name, seconds, maxrss]]} to ``--result``."""
    torch.set_num_threads(args.threads)
    p = paths(args.workdir, args)
    steps = (_synthesize_steps if args.phase == "synthesize" else _factorize_steps)(args, p)
    record: dict[str, Any] = {"baseline": maxrss_bytes(), "steps": []}
    value: Any = None
    for name, step in steps:
        start = time.perf_counter()
        value = step(value)
        record["steps"].append([name, time.perf_counter() - start, maxrss_bytes()])
    del value
    args.result.write_text(json.dumps(record), encoding="utf-8")


def spawn_phase(args: argparse.Namespace, phase: str, workdir: Path) -> dict[str, Any]:
    """Run ``phase`` in a fresh interpreter; returns its record plus ``process_s`` (wall time of the whole process)."""
    result = workdir / f"{phase}.json"
    argv = [sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--result", str(result)]
    argv += ["--workdir", str(workdir), "--threads", str(args.threads), "--noise-scale", str(args.noise_scale)]
    argv += ["--rank", str(args.rank), "--teacher-rank", str(args.teacher_rank)] + (["--cli"] if args.cli else [])
    env = {**os.environ, "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"phase {phase} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return {**json.loads(result.read_text(encoding="utf-8")), "process_s": seconds}


# ---------------------------------------------------------------- verification and the dense comparison
def verify(p: dict[str, Path], expected_modules: int, teacher_rank: int, rank: int) -> float:
    """Max over modules of max_{i≤rank} |σᵢ(B·A) − Sᵢ| / Sᵢ: exported factors vs the teacher file's S (factored)."""
    from safetensors.torch import load_file

    from svdlora_pl.lora.factor_files import load_factors
    from svdlora_pl.spectral import cpu_threads, factored_svdvals

    teacher = load_file(str(p["teacher"]))
    factors, _ = load_factors(p["factors"])
    if len(factors) != expected_modules or len(teacher) != 3 * expected_modules:
        raise RuntimeError(f"expected {expected_modules} modules, got {len(factors)} exported, {len(teacher) // 3}")
    worst = 0.0
    with cpu_threads(1):
        for name, (B, A) in factors.items():
            S = teacher[f"{name}.S"].double()
            if S.shape != (teacher_rank,) or B.shape[1] != rank:
                raise RuntimeError(f"{name}: teacher rank {S.shape[0]}, exported rank {B.shape[1]}")
            sigma = factored_svdvals(B, A)
            worst = max(worst, float(((sigma - S[:rank]).abs() / S[:rank]).max()))
    return worst


def dense_memory_bytes(shapes: dict[str, tuple[int, int]]) -> int:
    """Bytes of every module's ΔW (out×in) in float32: what a dense approach holds."""
    return 4 * sum(m * n for m, n in shapes.values())


def svd_flops(m: int, n: int) -> float:
    """Flops of a thin SVD with both bases (Golub & Van Loan, Golub-Reinsch or R-SVD, whichever is fewer)."""
    m, n = max(m, n), min(m, n)
    return min(14 * m * n * n + 8 * n**3, 6 * m * n * n + 20 * n**3)


def dense_svd_seconds(W: torch.Tensor) -> float:
    start = time.perf_counter()
    torch.linalg.svd(W, full_matrices=False)
    return time.perf_counter() - start


def factored_module_seconds(B: torch.Tensor, A: torch.Tensor, scale: float, args: argparse.Namespace) -> float:
    """Best of 5: synthesize_module (rank R) and factorize_modules (rank r) of one module, the factored per-module
    cost."""
    from svdlora_pl.teacher.factorize import factorize_modules
    from svdlora_pl.teacher.synthesis import synthesize_module

    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(0)
        svd = synthesize_module(B, A, scale, args.teacher_rank, noise_scale=args.noise_scale, generator=generator).svd
        factorize_modules({"m": ((svd.U * svd.S).float(), svd.V.mT.float(), 1.0)}, args.rank, "sqrt")
        best = min(best, time.perf_counter() - start)
    return best


def dense_comparison(args: argparse.Namespace, p: dict[str, Path], adapter: dict, shapes: dict) -> dict[str, float]:
    """Dense SVD of one hidden×hidden teacher ΔW vs the factored cost of that module; extrapolated dense totals."""
    from safetensors import safe_open

    name = "model.layers.0.self_attn.q_proj"
    with safe_open(str(p["teacher"]), framework="pt") as handle:
        U, S, V = (handle.get_tensor(f"{name}.{k}") for k in "USV")
    t_dense = dense_svd_seconds((U * S) @ V.T)  # float32 hidden×hidden ΔW, formed only here
    t_factored = factored_module_seconds(*adapter[name], args)
    unit = svd_flops(args.hidden, args.hidden)
    flop_total = t_dense * sum(svd_flops(m, n) for m, n in shapes.values()) / unit
    out = {"t_dense": t_dense, "t_factored": t_factored, "flop_total": flop_total}
    if args.dense_all:  # one teacher module of layer 0 per distinct shape, in its own orientation
        firsts = {shape: module for module, shape in reversed(list(shapes.items()))}
        per_shape = {}
        with safe_open(str(p["teacher"]), framework="pt") as handle:
            for shape, module in sorted(firsts.items()):
                U, S, V = (handle.get_tensor(f"{module}.{k}") for k in "USV")
                per_shape[shape] = dense_svd_seconds((U * S) @ V.T)
                model = t_dense * svd_flops(*shape) / unit
                print(
                    f"  dense svd {shape[0]}×{shape[1]}: {per_shape[shape]:.2f} s measured, {model:.2f} s by flop ratio"
                )
        out["measured_total"] = sum(per_shape[shape] for shape in shapes.values())
    return out


# ---------------------------------------------------------------- the report
def print_phase(phase: str, record: dict[str, Any]) -> tuple[float, int]:
    steps = record["steps"]
    total = math.fsum(s for _, s, _ in steps)
    print(f"{phase:<11} {'baseline (after imports)':<34} {'':>8} {record['baseline'] / MIB:>10.0f}")
    for name, seconds, rss in steps:
        print(f"{'':<11} {name:<34} {seconds:>8.2f} {rss / MIB:>10.0f}")
    peak = max(rss for _, _, rss in steps)
    start_up = record["process_s"] - total
    print(f"{'':<11} {'phase total':<34} {total:>8.2f} {peak / MIB:>10.0f}   (+{start_up:.1f} s process start-up)")
    return total, peak


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=28, help="decoder layers (default 28, Qwen2.5-7B)")
    parser.add_argument("--hidden", type=int, default=3584, help="hidden size (default 3584)")
    parser.add_argument("--intermediate", type=int, default=18944, help="MLP intermediate size (default 18944)")
    parser.add_argument("--kv", type=int, default=512, help="k_proj/v_proj outputs (default 512 = 4 heads × 128)")
    parser.add_argument("--lora-rank", type=int, default=16, help="rank of the random LoRA adapter (default 16)")
    parser.add_argument("--teacher-rank", type=int, default=64, help="rank R of the synthesized teacher (default 64)")
    parser.add_argument("--rank", type=int, default=16, help="rank r of the exported factors (default 16)")
    parser.add_argument("--noise-scale", type=float, default=0.1, help="teacher noise (default 0.1, as the CLI)")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch intra-op threads everywhere (default 2: the cores)"
    )
    parser.add_argument("--cli", action="store_true", help="phases through synthesize()/factorize() (reports, figures)")
    parser.add_argument("--dense-all", action="store_true", help="also time a dense SVD of every distinct shape")
    parser.add_argument("--workdir", type=Path, help="keep the files here (default: a temporary directory)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random adapter (default 0)")
    parser.add_argument("--check", action="store_true", help="exit code 1 if a target is missed")
    parser.add_argument("--target-seconds", type=float, default=10.0, help="total wall-time target (default 10)")
    parser.add_argument("--target-gib", type=float, default=2.0, help="peak RSS target in GiB (default 2)")
    parser.add_argument("--phase", choices=["synthesize", "factorize"], help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser


def bench(args: argparse.Namespace, workdir: Path) -> bool:
    """Set up, run both phases, verify, compare with dense; prints the report, returns whether all targets pass."""
    from svdlora_pl.lora.adapters import write_adapter

    torch.set_num_threads(args.threads)  # for the dense comparison; each phase sets its own
    shapes = all_shapes(args)
    p = paths(workdir, args)
    adapter = make_adapter(shapes, args.lora_rank, args.seed)
    write_adapter(p["adapter"], {m: (B * s, A) for m, (B, A, s) in adapter.items()}, BASE_MODEL)
    dims = f"hidden {args.hidden}, intermediate {args.intermediate}, k/v {args.kv}"
    print(
        f"teacher synthesis + factor export: {args.layers} layers × {len(MODULES)} = {len(shapes)} modules ({dims}), "
        f"LoRA rank {args.lora_rank} → teacher rank {args.teacher_rank} → factors rank {args.rank}, noise "
        f"{args.noise_scale:g}; torch {torch.__version__}, {args.threads} thread(s); {'tool functions' if args.cli else 'library calls'}"
    )
    print(f"load average at start (other processes share the cores): {os.getloadavg()[0]:.2f}")
    print(f"{'phase':<11} {'step':<34} {'wall s':>8} {'peak MiB':>10}")
    totals = [print_phase(phase, spawn_phase(args, phase, workdir)) for phase in ("synthesize", "factorize")]
    seconds, peak = sum(t for t, _ in totals), max(rss for _, rss in totals)
    print(f"{'total':<11} {'both phases (Σ wall, max peak)':<34} {seconds:>8.2f} {peak / MIB:>10.0f}")
    print(
        "peak MiB: high-water RSS (VmHWM) of the phase's own fresh process after the step, interpreter + torch included"
    )
    rel = verify(p, len(shapes), args.teacher_rank, args.rank)
    print(f"check: exported rank-{args.rank} σ vs the teacher's top-{args.rank} S, max relative difference {rel:.1e}")

    dense = dense_comparison(args, p, adapter, shapes)
    dense_bytes = dense_memory_bytes(shapes)
    h = args.hidden
    print(
        f"dense, measured: torch.linalg.svd of one {h}×{h} float32 ΔW {dense['t_dense']:.2f} s vs factored "
        f"synthesize_module + factorize of that module {dense['t_factored'] * 1e3:.1f} ms: ratio {dense['t_dense'] / dense['t_factored']:.3g}×"
    )
    print(
        f"dense, EXTRAPOLATED by SVD flop ratios from the {h}×{h} time: {len(shapes)} dense SVDs {dense['flop_total']:.0f} s "
        f"({dense['flop_total'] / 60:.1f} min; one SVD per module per phase: {2 * dense['flop_total'] / 60:.1f} min), "
        f"{dense['flop_total'] / seconds:.3g}× the factored total"
    )
    if "measured_total" in dense:
        total = dense["measured_total"]
        print(f"dense, extrapolated from one measured SVD per distinct shape: {total:.0f} s ({total / 60:.1f} min)")
    print(f"dense memory: all {len(shapes)} ΔW in float32 = {dense_bytes:,} bytes ({dense_bytes / 2**30:.2f} GiB)")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")

    targets = [
        (f"total ≤ {args.target_seconds:g} s", f"{seconds:.2f} s", seconds <= args.target_seconds),
        (f"peak RSS ≤ {args.target_gib:g} GiB", f"{peak / 2**30:.2f} GiB", peak <= args.target_gib * 2**30),
        (f"exported σ = teacher's top-{args.rank} (≤ {TARGET_REL:g})", f"{rel:.1e}", rel <= TARGET_REL),
    ]
    print("targets:")
    for name, measured, passed in targets:
        print(f"  {'PASS' if passed else 'FAIL'}  {name}: {measured}")
    return all(passed for _, _, passed in targets)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.phase is not None:
        run_phase(args)
        return 0
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        passed = bench(args, args.workdir.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="teacher-bench-") as tmp:
            passed = bench(args, Path(tmp))
    return 1 if args.check and not passed else 0


if __name__ == "__main__":
    raise SystemExit(main())
