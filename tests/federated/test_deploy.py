"""Flower's deployment engine: a SuperLink and 3 SuperNodes as separate processes on 127.0.0.1 (insecure, local),
``flwr run`` of the package's Flower app against them for 2 rounds; every process is stopped by its id afterwards."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="needs the flower extra: pip install -e '.[flower]'")

import psutil  # noqa: E402  (a peft dependency)
from federated.inloop import assert_rounds_match_aggregate  # noqa: E402

from svdlora_pl.federated.deploy import options_from_run_config  # noqa: E402

APP_DIR = Path(__file__).resolve().parents[2] / "svdlora_pl" / "federated" / "flower_app"
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
CLIENTS = 3
MARK = "SVDLORA_TEST_PROCESS_MARK"
CONFIG = """\
# svdlora federate -c federated.yaml (the deployment test's run)
output_dir: {output_dir}
method: zeropad
ranks: [2, 4, 3]
rounds: 2
client: {{local_steps: 2, batch_size: 4}}
evaluation: {{exact_match: false, limit_batches: 1}}
save_client_adapters: true
"""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:port (fail if ``process`` exits first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{process.args[0]} exited with {process.returncode}"
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {HOST}:{port} after {timeout} s")


def marked(mark: str) -> list[psutil.Process]:
    """The live processes whose environment carries this test's mark (what it started, and their children)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARK) == mark:
                found.append(process)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def stop(started: list[subprocess.Popen], mark: str) -> None:
    """SIGTERM what was started (SuperNodes first), then kill, by process id, whatever carries the mark."""
    for process in reversed(started):
        if process.poll() is None:
            process.terminate()
    for process in reversed(started):
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    _, alive = psutil.wait_procs(marked(mark), timeout=20)  # the SuperExecs stop when their parent has gone
    for process in alive:
        process.kill()
    psutil.wait_procs(alive, timeout=10)


@contextmanager
def processes(mark: str) -> Iterator[list[subprocess.Popen]]:
    """A list to put started processes in; all of them (and their children) are stopped at exit, also on failure."""
    started: list[subprocess.Popen] = []
    try:
        yield started
    finally:
        stop(started, mark)


def environment(flwr_home: Path, mark: str) -> dict[str, str]:
    return {
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "OMP_NUM_THREADS": "1",  # three clients share the cores
        MARK: mark,
    }


def test_run_config_reads_the_yaml_and_overrides(tmp_path):
    config = tmp_path / "federated.yaml"
    config.write_text(CONFIG.format(output_dir=tmp_path / "a"))
    options, overwrite = options_from_run_config({"config": str(config), "output-dir": str(tmp_path / "b")})
    assert options["method"] == "zeropad" and tuple(options["ranks"]) == (2, 4, 3) and not overwrite
    assert str(options["output_dir"]) == str(tmp_path / "b") and options["client"].local_steps == 2


def test_superlink_and_three_supernodes_run_two_rounds(tmp_path):
    from svdlora_pl.embedded.tiny import tiny_model_dir

    tiny_model_dir()  # built once here, not by three clients at a time
    output_dir, flwr_home, logs = tmp_path / "out", tmp_path / "flwr", tmp_path / "logs"
    flwr_home.mkdir()
    logs.mkdir()
    config = tmp_path / "federated.yaml"
    config.write_text(CONFIG.format(output_dir=output_dir))
    link = free_port()
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "{HOST}:{link}"\ninsecure = true\n'
    )
    mark = uuid.uuid4().hex
    env = environment(flwr_home, mark)

    def start(name: str, *args: str) -> subprocess.Popen:
        log = (logs / f"{name}.log").open("wb")
        return subprocess.Popen([str(BIN / args[0]), *args[1:]], env=env, cwd=tmp_path, stdout=log, stderr=log)

    with processes(mark) as started:
        started.append(
            start(
                "superlink", "flower-superlink", "--insecure", "--host", HOST, "--port", str(link),
                "--disable-runtime-dependency-installation",
            )
        )  # fmt: skip
        wait_listening(link, started[0])
        for k in range(CLIENTS):
            node = f"partition-id={k} num-partitions={CLIENTS}"
            started.append(
                start(
                    f"supernode{k}", "flower-supernode", "--insecure", "--superlink", f"{HOST}:{link}", "--host", HOST,
                    "--port", str(free_port()), "--node-config", node,
                )
            )  # fmt: skip
        run = subprocess.run(
            [str(BIN / "flwr"), "run", str(APP_DIR), "test", "--stream", "--run-config", f'config="{config}"'],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=420,
        )  # fmt: skip
        assert all(p.poll() is None for p in started), "a SuperLink or SuperNode died during the run"
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert (output_dir / "report.json").is_file(), run.stdout[-3000:] + run.stderr[-3000:]
    assert not marked(mark)
    report = assert_rounds_match_aggregate(output_dir, tmp_path / "scratch")
    assert [row["round"] for row in report["rounds"]] == [1, 2]
    assert report["method"] == "zeropad" and [c["rank"] for c in report["clients"]] == [2, 4, 3]
    assert report["rounds"][1]["bytes_sent"] > 0 and report["rounds"][0]["bytes_sent"] == 0
    assert json.loads((output_dir / "round_002" / "adapter" / "adapter_config.json").read_text())["r"] in (2, 3, 4)
