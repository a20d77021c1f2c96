"""``svdlora factorize`` on the command line: every option in ``--help`` with its doc, ``--print_config`` read back by
``-c`` to the same bytes, the printed summary, nested (``--svd.method``) and list (``--target_modules``) options, and
bad input exiting 2 with one ``svdlora: error:`` line and nothing written. The library is tested in
tests/teacher/test_factorize.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from builders import one_torch_thread, pickled_delta  # noqa: F401 (autouse fixture)
from helpers import assert_options_documented
from safetensors.torch import save_file

from svdlora_pl.cli.main import main
from svdlora_pl.embedded.tiny import TINY_MODEL, tiny_model_dir
from svdlora_pl.teacher.delta_svd import SVDOptions
from svdlora_pl.teacher.factorize import factorize, factors_name

NAMES = ("svd_factors_rank{r}.safetensors", "svd_analysis_rank{r}.json", "svd_report_rank{r}.txt",
         "svd_analysis_rank{r}.png")  # fmt: skip


@pytest.fixture(scope="module")
def delta(tmp_path_factory) -> Path:
    """A U/S/V factor file of two modules."""
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for name, (out, inp, k) in {
        "model.layers.0.self_attn.q_proj": (20, 16, 6),
        "model.layers.0.mlp.up_proj": (24, 16, 5),
    }.items():
        tensors[f"{name}.U"] = torch.linalg.qr(torch.randn(out, k, generator=gen, dtype=torch.float64)).Q.contiguous()
        tensors[f"{name}.S"] = torch.linspace(3.0, 0.5, k, dtype=torch.float64)
        tensors[f"{name}.V"] = torch.linalg.qr(torch.randn(inp, k, generator=gen, dtype=torch.float64)).Q.contiguous()
    path = tmp_path_factory.mktemp("delta") / "synthesized_delta_rank6.safetensors"
    save_file(tensors, str(path))
    return path


def run(*args: str | Path) -> int:
    return main(["factorize", *map(str, args)])


def test_help_lists_every_option_with_its_doc(capsys):
    with pytest.raises(SystemExit) as info:
        run("--help")
    assert info.value.code == 0
    assert_options_documented(capsys.readouterr().out, factorize, {"svd": SVDOptions})


def test_print_config_is_read_back_by_c_to_the_same_files(delta, tmp_path, capsys):
    direct, via = tmp_path / "direct", tmp_path / "via"
    options = ("--delta", delta, "--rank", 3, "--split", "B")
    assert run(*options, "--output_dir", direct) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run(*options, "--output_dir", via, "--print_config")
    assert info.value.code == 0 and not via.exists()
    printed = capsys.readouterr().out
    assert "split: B" in printed and "svd:" in printed and "method: exact" in printed
    config = tmp_path / "factorize.yaml"
    config.write_text(printed)
    assert run("-c", config) == 0
    assert (via / factors_name(3)).read_bytes() == (direct / factors_name(3)).read_bytes()
    assert (via / "svd_analysis_rank3.json").read_bytes() == (direct / "svd_analysis_rank3.json").read_bytes()


def test_prints_where_it_wrote_and_the_verdict(delta, tmp_path, capsys):
    out = tmp_path / "out"
    assert run("--delta", delta, "--rank", 2, "--output_dir", out) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(n.format(r=2) for n in NAMES)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"wrote {out} (rank 2, 2 modules, mean energy ")
    assert lines[1].startswith("the low-rank hypothesis ") and "at rank 2" in lines[1]


def test_full_finetune_with_nested_and_list_options(tmp_path):
    """The tiny model against itself (every ΔW = 0): options reach the library as given."""
    out = tmp_path / "out"
    args = ["--base", TINY_MODEL, "--finetuned", tiny_model_dir(), "--target_modules", "[k_proj]"]
    args += ["--target_modules+=v_proj", "--svd.method", "randomized", "--svd.niter", "2", "--rank", "2"]
    assert run(*args, "--output_dir", out) == 0
    analysis = json.loads((out / "svd_analysis_rank2.json").read_text())
    assert analysis["source_kind"] == "full_finetune (randomized niter=2)"
    assert {name.rpartition(".")[2] for name in analysis["modules"]} == {"k_proj", "v_proj"}
    assert len(analysis["modules"]) == 8


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("missing file", "nope.safetensors: file not found"),
        ("pickle", "not a readable safetensors file"),
        ("rank 0", "rank: must be >= 1, got 0"),
        ("rank x", '"rank"'),
        ("both sources", "adapter: not with delta"),
        ("no source", "delta, adapter or base: give one source"),
        ("missing adapter", "no_adapter"),
        ("svd with delta", "svd: only with base"),
        ("finetuned alone", "finetuned: only with base"),
        ("base without finetuned", "base: needs finetuned"),
        ("bad svd method", "svd.method"),
        ("negative niter", "svd.niter: must be >= 0, got -1"),
        ("old spelling", "--output-dir"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_output(delta, tmp_path, capsys, case, needle):
    out = tmp_path / "out"
    args = {
        "missing file": ["--delta", tmp_path / "nope.safetensors", "--rank", 4],
        "pickle": ["--delta", pickled_delta(tmp_path), "--rank", 4],
        "rank 0": ["--delta", delta, "--rank", 0],
        "rank x": ["--delta", delta, "--rank", "x"],
        "both sources": ["--delta", delta, "--adapter", delta.parent, "--rank", 4],
        "no source": ["--rank", 4],
        "missing adapter": ["--adapter", tmp_path / "no_adapter", "--rank", 4],
        "svd with delta": ["--delta", delta, "--svd.method", "randomized", "--rank", 4],
        "finetuned alone": ["--finetuned", delta.parent, "--rank", 4],
        "base without finetuned": ["--base", TINY_MODEL, "--rank", 4],
        "bad svd method": ["--base", TINY_MODEL, "--finetuned", delta.parent, "--svd.method", "fast", "--rank", 4],
        "negative niter": ["--base", TINY_MODEL, "--finetuned", delta.parent, "--svd.niter", -1, "--rank", 4],
        "old spelling": ["--delta", delta, "--rank", 4, "--output-dir", out],
    }[case]
    capsys.readouterr()
    assert run(*args, "--output_dir", out) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("svdlora: error:")]
    assert len(errors) == 1 and needle in errors[0], err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2  # the error, and a --help hint for parsing
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_non_empty_output_dir_needs_overwrite(delta, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert run("--delta", delta, "--rank", 2, "--output_dir", out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "output_dir:" in err and "overwrite" in err
    assert (out / "keep.txt").exists()
    assert run("--delta", delta, "--rank", 2, "--output_dir", out, "--overwrite", "true") == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(n.format(r=2) for n in NAMES)


def test_output_dir_containing_the_source_is_refused(delta, capsys):
    assert run("--delta", delta, "--rank", 2, "--output_dir", delta.parent, "--overwrite", "true") == 2
    assert "would replace the input" in capsys.readouterr().err
    assert delta.exists()
