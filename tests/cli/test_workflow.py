"""README's workflow, steps 1-4, on the tiny default: fit, resume, evaluate with generation, predict; the options given
on the command line win over the checkpoint's saved ones."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import read_scalars

from svdlora_pl.cli.main import main

QUICK = ["-c", "configs/tiny.yaml", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false"]


def runs(root: Path) -> list[Path]:
    return sorted((root / "lightning_logs").iterdir(), key=lambda p: int(p.name.rpartition("_")[2]))


def test_fit_resume_validate_predict(tmp_path, capsys):
    root = tmp_path / "logs"
    assert main(["fit", *QUICK, "--trainer.max_steps=4", f"--trainer.default_root_dir={root}"]) == 0
    (checkpoint,) = runs(root)[0].glob("checkpoints/*.ckpt")

    # 2. resume: the run continues from step 4
    assert main(["fit", *QUICK, "--trainer.max_steps=6", f"--trainer.default_root_dir={root}",
                 f"--ckpt_path={checkpoint}"]) == 0  # fmt: skip
    assert [step for step, _ in read_scalars(runs(root)[1])["train/loss"]] == [4, 5]

    # 3. evaluate: --model.eval_generate from the command line is used although the checkpoint saved false
    assert main(["validate", *QUICK, f"--trainer.default_root_dir={root}", f"--ckpt_path={checkpoint}",
                 "--model.eval_generate=true", "--model.max_new_tokens=8"]) == 0  # fmt: skip
    assert {"val/loss", "val/exact_match"} <= set(read_scalars(runs(root)[2]))

    # 4. predict: into the run's log dir by default, or where --model.predictions_file says
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"question": "A fair coin is tossed. P(heads)?", "answer": "1/2"}) + "\n")
    predict = ["predict", *QUICK, f"--trainer.default_root_dir={root}", f"--ckpt_path={checkpoint}",
               f"--data.predict_file={questions}", "--model.max_new_tokens=8"]  # fmt: skip
    assert main(predict) == 0
    (row,) = [json.loads(line) for line in (runs(root)[3] / "predictions.jsonl").read_text().splitlines()]
    assert {"prediction", "predicted_answer", "correct"} <= set(row)
    elsewhere = tmp_path / "elsewhere" / "predictions.jsonl"
    assert main([*predict, f"--model.predictions_file={elsewhere}"]) == 0
    assert len(elsewhere.read_text().splitlines()) == 1
    assert "svdlora: error" not in capsys.readouterr().err
