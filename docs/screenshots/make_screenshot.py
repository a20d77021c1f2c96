"""Reproduce docs/screenshots/tensorboard.png: the real TensorBoard of a tiny fit, photographed by headless Chromium.

Run (from the repository root, with the package installed and Debian's ``chromium`` on PATH)::

    python docs/screenshots/make_screenshot.py                      # fit, serve, photograph (about 2 minutes on 2 cores)
    python docs/screenshots/make_screenshot.py --logdir DIR         # photograph existing runs instead of fitting

The fit is ``svdlora fit -c configs/tiny.yaml`` for 2 epochs with ``LoRASpectrumMonitor`` and ``LoRAIntruderMonitor``
every 10 steps (``svdlora fit`` adds ``DashboardLogger`` and ``TensorBoardDashboard`` itself). TensorBoard serves it on
127.0.0.1 only, on a free port, and is stopped by its process id when the pictures are taken. Two pages are
photographed and stacked into one PNG: the CUSTOM SCALARS tab (the layout the dashboard writes: losses first, then every
monitor metric as a mean with its min–max band) and the TIME SERIES tab filtered to ``loss|heatmap`` (TensorBoard's
``tagFilter``; ``forceSVG`` draws the charts without WebGL, which headless Chromium does not render reliably), where the
loss cards come first and the layer × module heat maps follow.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = Path(__file__).with_name("tensorboard.png")
PAGES = [("/#custom_scalars", 1150), ("/?forceSVG=true&tagFilter=loss%7Cheatmap#timeseries", 1300)]  # (URL, height)
WIDTH, OUTPUT_WIDTH = 1600, 1100


def fit(root: Path) -> Path:
    """The tiny fit with the monitors; returns the directory TensorBoard serves."""
    monitor = "svdlora_pl.callbacks."
    command = [
        sys.executable, "-m", "svdlora_pl.cli", "fit", "-c", "configs/tiny.yaml", "--trainer.max_epochs=2",
        f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false",
        f"--trainer.callbacks+={monitor}LoRASpectrumMonitor", "--trainer.callbacks.every_n_steps=10",
        f"--trainer.callbacks+={monitor}LoRAIntruderMonitor", "--trainer.callbacks.every_n_steps=10",
    ]  # fmt: skip
    subprocess.run(command, cwd=ROOT, check=True)
    return root / "lightning_logs"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve(logdir: Path, port: int) -> subprocess.Popen:
    """Start TensorBoard on 127.0.0.1:port and wait until it has loaded the runs' images (the last data it reads)."""
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/images/tags", timeout=5) as answer:
                if json.loads(answer.read()):  # {run: {tag: ...}}: the event files are loaded
                    return server
        except OSError:
            pass
        time.sleep(0.5)
    server.terminate()
    raise RuntimeError("TensorBoard did not answer within 120 s")


def rendered(path: Path) -> bool:
    """Whether the page drew its charts and images: saturated pixels (orange lines and bands, heat maps) cover at least
    0.5 % of the area below the header, left of the settings pane. A picture taken before TensorBoard's cards were
    filled shows empty white cards."""
    import numpy as np
    from PIL import Image

    hsv = np.asarray(Image.open(path).convert("HSV"))
    body = hsv[80:, : int(hsv.shape[1] * 0.8)]
    return bool(((body[..., 1] > 100) & (body[..., 2] > 60)).mean() > 0.005)


def photograph(url: str, height: int, path: Path, attempts: int = 6) -> None:
    """Headless Chromium's picture of ``url``; taken again (allowing more time) while the cards are still empty."""
    for attempt in range(attempts):
        command = [
            "chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--window-size={WIDTH},{height}", f"--virtual-time-budget={20000 * (attempt + 1)}",
            f"--screenshot={path}", url,
        ]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, timeout=300)
        if rendered(path):
            return
    raise RuntimeError(f"{url}: the page was still empty after {attempts} pictures")


def stack(paths: list[Path], output: Path) -> None:
    """The pictures one above the other, scaled to OUTPUT_WIDTH pixels and reduced to 256 colours (a small PNG)."""
    from PIL import Image

    images = [Image.open(path).convert("RGB") for path in paths]
    scaled = [im.resize((OUTPUT_WIDTH, round(im.height * OUTPUT_WIDTH / im.width)), Image.LANCZOS) for im in images]
    sheet = Image.new("RGB", (OUTPUT_WIDTH, sum(im.height for im in scaled) + 8 * (len(scaled) - 1)), "white")
    top = 0
    for im in scaled:
        sheet.paste(im, (0, top))
        top += im.height + 8
    sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(output, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", type=Path, help="runs to photograph (default: fit the tiny model first)")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"the PNG written (default: {OUTPUT})")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        logdir = args.logdir or fit(Path(tmp) / "run")
        port = free_port()
        server = serve(logdir, port)
        try:
            shots = []
            for index, (page, height) in enumerate(PAGES):
                shots.append(Path(tmp) / f"page{index}.png")
                photograph(f"http://127.0.0.1:{port}{page}", height, shots[-1])
        finally:
            server.terminate()  # the server this script started, by its process id
            server.wait(timeout=30)
        stack(shots, args.output)
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e3:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
