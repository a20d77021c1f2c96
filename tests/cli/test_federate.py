"""``svdlora federate``: the help, the shipped config, a 2-round run on Flower's simulation engine (per-round
TensorBoard metrics, adapters, report, each round equal to ``svdlora aggregate`` of its client adapters), and exit
code 2 with one ``svdlora: error:`` line for bad input, before anything starts."""

from __future__ import annotations

import json

import pytest
from helpers import ROOT, assert_options_documented, read_scalars

from svdlora_pl.cli.main import main
from svdlora_pl.federated.run import federate
from svdlora_pl.federated.settings import ClientSettings, EvalSettings, SplitSettings

SHIPPED = sorted((ROOT / "configs" / "federated").glob("*.yaml"))
TINY = ROOT / "configs" / "federated" / "tiny.yaml"
QUICK = [
    "--rounds", "2", "--client.local_steps", "2", "--client.batch_size", "4", "--evaluation.exact_match", "false",
    "--evaluation.limit_batches", "1",
]  # fmt: skip


def test_help_lists_every_option_with_its_doc(capsys):

    with pytest.raises(SystemExit) as info:
        main(["federate", "--help"])
    assert info.value.code == 0
    groups = {"client": ClientSettings, "split": SplitSettings, "evaluation": EvalSettings}
    assert_options_documented(capsys.readouterr().out, federate, groups)


@pytest.mark.parametrize("shipped", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_print_config_round_trips(shipped, tmp_path, capsys):
    assert shipped.read_text().startswith(f"# svdlora federate -c configs/federated/{shipped.name}")
    with pytest.raises(SystemExit) as info:
        main(["federate", "-c", str(shipped), "--output_dir", str(tmp_path / "out"), "--print_config"])
    assert info.value.code == 0
    printed = capsys.readouterr().out
    saved = tmp_path / "federate.yaml"
    saved.write_text(printed)
    with pytest.raises(SystemExit):
        main(["federate", "-c", str(saved), "--print_config"])
    assert capsys.readouterr().out == printed and "ranks:" in printed
    assert not (tmp_path / "out").exists()


def listening_addresses() -> set[str]:
    """The addresses this process and its descendants (Ray's GCS, raylet, workers) listen on."""
    import psutil

    me = psutil.Process()
    found = set()
    for process in [me, *me.children(recursive=True)]:
        try:
            found |= {c.laddr.ip for c in process.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_two_rounds_of_stack_on_the_simulation_engine(tmp_path, capsys, monkeypatch):
    pytest.importorskip("ray", reason="needs the flower extra: pip install -e '.[flower]'")
    from federated.inloop import assert_rounds_match_aggregate

    from svdlora_pl.federated.report import RunRecorder

    seen: set[str] = set()
    round_done = RunRecorder.round_done

    def spy(self, *args, **kwargs):  # while Ray runs: after each round's aggregation
        seen.update(listening_addresses())
        return round_done(self, *args, **kwargs)

    monkeypatch.setattr(RunRecorder, "round_done", spy)
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))  # Flower writes its state there, not in ~/.flwr
    out = tmp_path / "run"
    args = ["-c", str(TINY), "--output_dir", str(out), "--method", "stack", *QUICK, "--save_client_adapters", "true"]
    assert main(["federate", *args]) == 0
    assert seen and seen <= {"127.0.0.1", "::ffff:127.0.0.1"}, seen  # Ray's servers on loopback only
    printed = capsys.readouterr().out
    assert f"wrote {out}: 2 rounds of stack, val loss " in printed and "round 2/2: val loss" in printed
    report = assert_rounds_match_aggregate(out, tmp_path / "scratch")  # each round = `svdlora aggregate`, in the loop
    rows = report["rounds"]
    assert [c["rank"] for c in report["clients"]] == [4, 8, 16] and all(c["records"] > 0 for c in report["clients"])
    assert [row["global_ranks"] for row in rows] == [[28], [56]]  # stack grows the rank: Σ r_k per round
    assert all(row["relative_error_max"] < 1e-6 for row in rows)  # and is exact
    assert rows[0]["bytes_sent"] == 0 < rows[0]["bytes_received"] < rows[1]["bytes_sent"]
    assert report["initial"]["val_loss"] > rows[-1]["val_loss"]
    scalars = read_scalars(out / "tensorboard")
    assert [step for step, _ in scalars["val/loss"]] == [0, 1, 2]
    for key in ("aggregation/relative_error_max", "comm/bytes_sent", "comm/bytes_received", "global/rank_max"):
        assert [step for step, _ in scalars[key]] == [1, 2], key
    assert dict(scalars["global/rank_max"])[2] == 56
    config = json.loads((out / "round_002" / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 56 and config["lora_alpha"] == 56  # scaling folded in


def run_bad(args: list[str], capsys) -> str:
    assert main(["federate", *args]) == 2
    err = capsys.readouterr().err
    first, *rest = err.splitlines()
    assert first.startswith("svdlora: error: ") and "Traceback" not in err
    assert rest in ([], ["see 'svdlora federate --help'"])
    return first


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "mean"], "method"),
        (["--ranks", "[8]"], "ranks: the svd strategy needs at least 2 clients (one rank each), got 1"),
        (["--ranks", "[4, 8, 65]"], "ranks: client 2's rank 65 is more than model.layers.0.self_attn.k_proj can have"),
        (["--ranks", "[2, 2, 2, 2, 2, 2, 2, 2]"], "split: client 7's shard is empty after the topic split"),
        (["--split.topics", "[[dice], [poker], [cards]]"], "split.topics: client 1: topic 'poker' is not in"),
        (["--method", "stack", "--global_rank", "8"], "global_rank: only used by method svd"),
        (["--client.lr", "0"], "client.lr: must be a finite number > 0, got 0"),
    ],
)
def test_bad_input_exits_2_in_one_line_and_writes_nothing(args, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert message in run_bad(["-c", str(TINY), "--output_dir", str(out), *args], capsys)
    assert not out.exists()


def test_a_non_empty_output_dir_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert "output_dir: " in run_bad(["-c", str(TINY), "--output_dir", str(out)], capsys)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
