"""``svdlora compare`` on the command line: the help documents every option, ``--print_config`` round-trips, the
summary printed, and bad input exiting 2 with one line and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from builders import LOSS_A, LOSS_B, make_run, write_events
from helpers import assert_options_documented

from svdlora_pl.cli import main
from svdlora_pl.experiment.compare import compare


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    random = make_run(root / "random" / "lightning_logs" / "version_0", LOSS_A, val=[(0, 4.5), (5, 1.4)])
    svd = make_run(root / "svd" / "lightning_logs" / "version_0", LOSS_B, val=[(5, 1.3)])
    return random, svd


def flat(text: str) -> str:
    return " ".join(text.split())


def test_help_lists_every_option_with_its_doc(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert_options_documented(text, compare)
    assert "first step whose raw (unsmoothed) train/loss is <= the target" in flat(text)


def test_direct_command_prints_where_and_gains(runs, tmp_path, capsys):
    random, svd = runs
    out = tmp_path / "out"
    assert main(["compare", "--run_dirs", f"[{random.parents[1]}, {svd.parents[1]}]", "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (
        f"wrote {out}" in printed
        and "svd vs random, improvement (negative: worse): initial loss +25.0%, steps to target +20.0%" in printed
    )
    result = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    assert [r["label"] for r in result["runs"]] == ["random", "svd"]  # default labels: the directories' names


def test_print_config_round_trip(runs, tmp_path, capsys):
    random, svd = runs
    options = [
        "--run_dirs",
        f"[{random}]",
        "--run_dirs+",
        str(svd),
        "--labels",
        "[random, svd]",
        "--target_loss",
        "1.3",
    ]
    with pytest.raises(SystemExit) as exit_:
        main(["compare", *options, "--output_dir", str(tmp_path / "from_config"), "--print_config"])
    assert exit_.value.code == 0
    saved = tmp_path / "compare.yaml"
    saved.write_text(capsys.readouterr().out, encoding="utf-8")
    assert main(["compare", "-c", str(saved)]) == 0
    assert main(["compare", *options, "--output_dir", str(tmp_path / "direct")]) == 0
    from_config, direct = (
        json.loads((tmp_path / name / "comparison.json").read_text(encoding="utf-8"))
        for name in ("from_config", "direct")
    )
    assert from_config == direct and direct["target_loss"]["value"] == 1.3
    assert [r["label"] for r in direct["runs"]] == ["random", "svd"]


def bad_cases(runs: tuple[Path, Path], tmp: Path) -> dict[str, tuple[list[str], str]]:
    random, svd = runs
    (tmp / "empty").mkdir()
    no_loss = write_events(tmp / "no_loss", {"val/loss": [(0, 1.0)]})
    full = tmp / "full"
    full.mkdir()
    (full / "keep.txt").write_text("keep")
    both = f"[{random}, {svd}]"
    return {
        "no events": (["--run_dirs", f"[{random}, {tmp / 'empty'}]"], "empty: no TensorBoard event files"),
        "no train/loss": (["--run_dirs", f"[{random}, {no_loss}]"], "no_loss: no train/loss scalar"),
        "label count": (["--run_dirs", both, "--labels", "[a]"], "labels: 1 labels for 2 run directories"),
        "duplicate labels": (["--run_dirs", both, "--labels", "[a, a]"], "labels: duplicate label 'a'"),
        "non-empty output": (
            ["--run_dirs", both, "--output_dir", str(full)],
            "exists and is not empty (set overwrite to replace it)",
        ),
        "missing dir": (["--run_dirs", f"[{tmp / 'nope'}]"], "nope: not a directory"),
        "no run dirs": ([], "run_dirs"),
        "empty run dirs": (["--run_dirs", "[]"], "run_dirs: at least one run directory is needed"),
        "target not a number": (["--run_dirs", both, "--target_loss", "low"], "target_loss"),
        "old spelling": (["--run_dirs", both, "--target-loss", "1.0"], "unrecognized arguments: --target-loss"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "no events",
        "no train/loss",
        "label count",
        "duplicate labels",
        "non-empty output",
        "missing dir",
        "no run dirs",
        "empty run dirs",
        "target not a number",
        "old spelling",
    ],
)
def test_bad_input_exits_2_one_line_nothing_written(runs, tmp_path, capsys, case):
    args, message = bad_cases(runs, tmp_path)[case]
    out = tmp_path / "out"
    if "--output_dir" not in args:
        args = [*args, "--output_dir", str(out)]
    assert main(["compare", *args]) == 2
    err = capsys.readouterr().err
    first, *rest = err.splitlines()
    assert first.startswith("svdlora: error: ") and message in first and "Traceback" not in err
    assert rest in ([], ["see 'svdlora compare --help'"])  # a command-line error adds where to look
    assert not out.exists()
    assert (tmp_path / "full" / "keep.txt").read_text() == "keep"
    assert not list(tmp_path.glob(".out.*"))  # no staging directory left behind
