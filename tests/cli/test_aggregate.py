"""``svdlora aggregate``'s command line: the options of :func:`~svdlora_pl.aggregation.merge.aggregate` (help, YAML
config round trip), the lines it prints, and exit code 2 with one ``svdlora: error:`` line for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from builders import make_adapter, one_torch_thread  # noqa: F401 (autouse fixture)
from helpers import assert_options_documented, squeezed
from safetensors.torch import load_file

from svdlora_pl.aggregation.merge import aggregate
from svdlora_pl.cli.main import main
from svdlora_pl.lora.adapters import WEIGHTS_NAME

SPECS = [(3, 6, {}), (5, 5, {"use_rslora": True})]  # (r, alpha, extra config)


@pytest.fixture(scope="module")
def clients(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("clients")
    return [make_adapter(root / f"c{i}", r, alpha, seed=20 + i, **extra) for i, (r, alpha, extra) in enumerate(SPECS)]


def yaml_list(paths: list[Path]) -> str:
    return "[" + ", ".join(map(str, paths)) + "]"


def run(*args: str | Path) -> int:
    return main(["aggregate", *map(str, args)])


def report(path: Path) -> dict:
    return json.loads((path / "aggregation_report.json").read_text(encoding="utf-8"))


def test_help_lists_every_option_with_its_doc(capsys):

    with pytest.raises(SystemExit) as info:
        run("--help")
    assert info.value.code == 0
    printed = capsys.readouterr().out
    assert_options_documented(printed, aggregate)
    assert "ΔW=Σ_kp_ks_kB_kA_k" in squeezed(printed)  # the description: target and methods


def test_stack_with_data_sizes_prints_what_it_wrote(clients, tmp_path, capsys):
    out = tmp_path / "stack"
    assert run("--adapters", yaml_list(clients), "--data_sizes", "[1200, 400]", "--method", "stack",
               "--output_dir", out) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "wrote" in printed and f"wrote {out} (stack, ranks [8], max relative error " in printed
    data = report(out)
    assert [c["weight"] for c in data["clients"]] == pytest.approx([0.75, 0.25])
    assert data["adapters"]["."]["summary"]["max_relative_error"] < 1e-6


def test_per_client_ranks_and_the_zeropad_warning(clients, tmp_path, capsys, caplog):
    out = tmp_path / "zp"
    assert run("--adapters", f"[{clients[0]}]", f"--adapters+={clients[1]}", "--method", "zeropad", "--norm_weights", "true",
               "--per_client_ranks", "true", "--output_dir", out) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"wrote {out} (zeropad, ranks [5], max relative error ")
    assert [line.split(" (")[0] for line in lines[1:]] == [f"wrote {out / 'rank_3'}", f"wrote {out / 'rank_5'}"]
    assert "zeropad is inexact" in caplog.text and str(out / "aggregation_report.txt") in caplog.text
    assert [c["output"] for c in report(out)["clients"]] == ["rank_3", "rank_5"]


def test_print_config_then_config_gives_the_same_result(clients, tmp_path, capsys):
    direct, configured = tmp_path / "direct", tmp_path / "configured"
    options = ["--adapters", yaml_list(clients), "--method", "svd", "--rank", "4", "--split", "B",
               "--per_client_ranks", "true", "--dtype", "bfloat16"]  # fmt: skip
    assert run(*options, "--output_dir", direct) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run(*options, "--output_dir", configured, "--print_config")
    assert info.value.code == 0
    config = tmp_path / "x.yaml"
    config.write_text(capsys.readouterr().out)
    assert "rank: 4" in config.read_text() and not configured.exists()
    assert run("-c", config) == 0
    first, second = report(direct), report(configured)
    assert first.pop("output_dir") == str(direct) and second.pop("output_dir") == str(configured)
    assert first == second
    for name in (".", "rank_3", "rank_5"):
        a, b = load_file(direct / name / WEIGHTS_NAME), load_file(configured / name / WEIGHTS_NAME)
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
        assert (direct / name / "adapter_config.json").read_text() == (
            configured / name / "adapter_config.json"
        ).read_text()


BAD = {
    "one adapter": (["--method", "svd"], 1, "adapters: needs at least 2 adapters to aggregate, got 1"),
    "both weightings": (
        ["--method", "stack", "--weights", "[1, 2]", "--data_sizes", "[1, 2]"],
        2,
        "weights: give weights or data_sizes, not both",
    ),
    "rank for stack": (["--method", "stack", "--rank", "4"], 2, "rank: only used by method svd"),
    "rank too large": (["--method", "svd", "--rank", "9"], 2, "Σ r_k=8) = 8; use rank 8 or less"),
    "bad method": (["--method", "mean"], 2, "method"),
    "no method": ([], 2, "method"),
    "bad boolean": (["--method", "svd", "--per_client_ranks", "maybe"], 2, "per_client_ranks"),
    "bad weight": (["--method", "stack", "--weights", "[1, x]"], 2, "weights"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_with_one_line_and_no_output(clients, tmp_path, capsys, case):
    extra, count, fragment = BAD[case]
    out = tmp_path / "out"
    assert run("--adapters", yaml_list(clients[:count]), *extra, "--output_dir", out) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("svdlora: error: ")]
    assert len(errors) == 1 and fragment in errors[0] and "Traceback" not in err, err
    assert len(err.strip().splitlines()) <= 2  # the error, and for a bad command line the --help hint
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_refuses_non_empty_output_and_overwriting_an_input(clients, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert run("--adapters", yaml_list(clients), "--method", "stack", "--output_dir", out) == 2
    assert "svdlora: error: output_dir: " in capsys.readouterr().err and (out / "keep.txt").exists()
    assert run("--adapters", yaml_list(clients), "--method", "stack", "--overwrite", "true",
               "--output_dir", clients[0]) == 2  # fmt: skip
    assert "would replace the input" in capsys.readouterr().err and (clients[0] / WEIGHTS_NAME).is_file()
    assert run("--adapters", yaml_list(clients), "--method", "stack", "--overwrite", "true", "--output_dir", out) == 0
    assert not (out / "keep.txt").exists() and (out / WEIGHTS_NAME).is_file()
