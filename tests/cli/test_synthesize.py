"""``svdlora synthesize`` on the command line: every option in ``--help`` with its doc, ``--print_config`` read back by
``-c`` to the same bytes, the printed summary and file list (adapter and full fine-tune), and bad input exiting 2
with one ``svdlora: error:`` line and nothing written. The library is tested in tests/teacher/test_synthesize.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from builders import make_adapter, one_torch_thread  # noqa: F401 (autouse fixture)
from helpers import assert_options_documented

from svdlora_pl.cli.main import main
from svdlora_pl.embedded.tiny import TINY_MODEL, tiny_model_dir
from svdlora_pl.lora.factor_files import load_factors
from svdlora_pl.teacher.delta_svd import SVDOptions
from svdlora_pl.teacher.synthesize import delta_name, synthesize

R = 8
FILES = [delta_name(R), "synthesis_report.json", "synthesis_report.txt", "synthesis_plots.png"]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    """Tiny Qwen2 adapter, r=4, alpha=8 (scaling 2) on q_proj and v_proj, random non-zero B."""
    return make_adapter(
        tmp_path_factory.mktemp("adapters") / "lora", r=4, alpha=8, seed=3, targets=["q_proj", "v_proj"]
    )


def run(*args: str | Path) -> int:
    return main(["synthesize", *map(str, args)])


def test_help_lists_every_option_with_its_doc(capsys):
    with pytest.raises(SystemExit) as info:
        run("--help")
    assert info.value.code == 0
    assert_options_documented(capsys.readouterr().out, synthesize, {"svd": SVDOptions})


def test_print_config_is_read_back_by_c_to_the_same_files(adapter, tmp_path, capsys):
    direct, via = tmp_path / "direct", tmp_path / "via"
    options = ("--adapter", adapter, "--target_rank", R, "--noise_scale", 0.2, "--decay", 0.05, "--seed", 3)
    assert run(*options, "--output_dir", direct) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run(*options, "--output_dir", via, "--print_config")
    assert info.value.code == 0 and not via.exists()
    printed = capsys.readouterr().out
    assert "noise_scale: 0.2" in printed and "seed: 3" in printed
    config = tmp_path / "synthesize.yaml"
    config.write_text(printed)
    assert run("-c", config) == 0
    assert (via / FILES[0]).read_bytes() == (direct / FILES[0]).read_bytes()
    assert (via / "synthesis_report.json").read_bytes() == (direct / "synthesis_report.json").read_bytes()


def test_writes_all_outputs_and_prints_them(adapter, tmp_path, capsys):
    out = tmp_path / "teacher"
    assert run("--adapter", adapter, "--target_rank", R, "--noise_scale", 0, "--output_dir", out) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    printed = capsys.readouterr().out
    assert printed.startswith(f"synthesized rank-{R} teacher for 8 modules (LoRA ranks [4]; energy kept ")
    for name in FILES:
        assert str(out / name) in printed
    assert load_factors(out / FILES[0])[1]["noise_scale"] == "0.0"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_full_finetune_prints_its_files(tmp_path, capsys):
    """The tiny model against itself (every ΔW = 0), on k_proj only: nested and list options reach the library."""
    out = tmp_path / "teacher"
    args = ["--base", TINY_MODEL, "--finetuned", tiny_model_dir(), "--target_modules", "[k_proj]"]
    assert run(*args, "--svd.method", "randomized", "--target_rank", 4, "--output_dir", out) == 0
    files = ["full_delta_rank4.safetensors", *FILES[1:]]
    assert sorted(p.name for p in out.iterdir()) == sorted(files)
    printed = capsys.readouterr().out
    assert printed.startswith("kept the rank-4 truncation of the full fine-tune's ΔW for 4 modules")
    assert all(str(out / name) in printed for name in files)
    factors, metadata = load_factors(out / files[0])
    assert metadata["method"] == "full_finetune (randomized niter=4)" and len(factors) == 4


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--target_rank", "2"], "target_rank 2 must be between 4"),
        (["--target_rank", "65"], "min(out, in) = 64"),
        (["--target_rank", "8", "--noise_scale", "-0.1"], "noise_scale: must be a finite number >= 0"),
        (["--target_rank", "8", "--decay", "-1"], "decay: must be a finite number >= 0"),
        (["--target_rank", "x"], '"target_rank"'),
        (["--target_rank", "8", "--noise-scale", "0.1"], "--noise-scale"),  # the old spelling
    ],
)
def test_bad_values_exit_2_with_one_line_and_no_output(adapter, tmp_path, capsys, extra, needle):
    out = tmp_path / "out"
    assert run("--adapter", adapter, *extra, "--output_dir", out) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("svdlora: error: ")]
    assert len(errors) == 1 and needle in errors[0], err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2  # the error, and a --help hint for parsing
    assert list(tmp_path.iterdir()) == []


def test_missing_adapter_exits_2(tmp_path, capsys):
    assert run("--adapter", tmp_path / "nope", "--target_rank", R, "--output_dir", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err and "no such adapter directory" in err
    assert list(tmp_path.iterdir()) == []


def test_refuses_non_empty_output_without_overwrite(adapter, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert run("--adapter", adapter, "--target_rank", R, "--output_dir", out) == 2
    assert "overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert run("--adapter", adapter, "--target_rank", R, "--output_dir", out, "--overwrite", "true") == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)


def test_refuses_output_over_the_adapter(adapter, capsys):
    assert run("--adapter", adapter, "--target_rank", R, "--output_dir", adapter, "--overwrite", "true") == 2
    assert "would replace the input" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--base", TINY_MODEL, "--finetuned", "FT", "--noise_scale", "0.1"], "noise_scale: not with base"),
        (["--base", TINY_MODEL, "--finetuned", "FT", "--decay", "0"], "decay: not with base"),
        (["--base", TINY_MODEL, "--finetuned", "FT", "--seed", "1"], "seed: not with base"),
        (["--base", TINY_MODEL], "base: needs finetuned"),
        (["--base", TINY_MODEL, "--adapter", "ADAPTER", "--finetuned", "FT"], "base: not with adapter"),
        (["--finetuned", "FT"], "finetuned: only with base"),
        ([], "adapter or base: give one source"),
        (["--adapter", "ADAPTER", "--svd.method", "randomized"], "svd: only with base"),
        (["--base", TINY_MODEL, "--finetuned", "MISSING"], "no such model directory"),
        (["--base", TINY_MODEL, "--finetuned", "FT", "--svd.oversample", "-1"], "svd.oversample: must be >= 0"),
    ],
)
def test_full_finetune_bad_options_exit_2_with_one_line_and_no_output(adapter, tmp_path, capsys, extra, needle):
    swap = {"FT": str(tiny_model_dir()), "ADAPTER": str(adapter), "MISSING": str(tmp_path / "missing")}
    out = tmp_path / "out"
    assert run(*[swap.get(a, a) for a in extra], "--target_rank", 4, "--output_dir", out) == 2
    err = capsys.readouterr().err
    assert err.startswith("svdlora: error: ") and err.count("\n") == 1 and needle in err, err
    assert list(tmp_path.iterdir()) == []
