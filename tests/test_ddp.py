"""The scale-out path: Lightning DDP with 2 CPU processes (gloo), as `trainer=ddp` runs on GPUs."""

from __future__ import annotations

import glob
import json

import pytest
import torch
from helpers import FAST, ROOT, random_photo, run_script

from hrstyle.inference import Stylizer


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_trains_writes_once_and_resumes(tmp_path):
    photos = tmp_path / "photos"
    for i, size in enumerate([(64, 48), (40, 72), (56, 56), (80, 60), (48, 48)]):
        random_photo(photos / f"p{i}.png", size, seed=i)
    style = random_photo(tmp_path / "style.png", (64, 64), seed=9)
    common = [*FAST, "trainer=ddp_cpu", "style=custom", f"data.content={photos}", f"style.image={style}",
              "+callbacks.record._target_=crash_callbacks.RecordSteps", f"+callbacks.record.path={tmp_path}/steps.jsonl"]
    env = {"PYTHONPATH": str(ROOT / "tests")}
    proc = run_script("train.py", *common, f"hydra.run.dir={tmp_path}/run", env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]

    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert sorted({s["rank"] for s in steps}) == [0, 1] and max(s["step"] for s in steps) == 4
    for step in range(1, 5):  # every rank sees its own crops
        sums = [s["batch_sum"] for s in steps if s["step"] == step]
        assert len(sums) == 2 and sums[0] != sums[1]
    # Checkpoints and TensorBoard (previews included) are written once, by rank 0.
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["last.ckpt", "step000002.ckpt", "step000004.ckpt"]
    assert len(glob.glob(f"{tmp_path}/run/tensorboard/**/events.out.tfevents*", recursive=True)) == 1

    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    out = Stylizer(last, device="cpu", tile_size=0).stylize_tensor(torch.rand(1, 3, 40, 48))
    assert out.shape == (1, 3, 40, 48) and torch.isfinite(out).all()

    proc = run_script("train.py", *common, "trainer.max_steps=6", f"ckpt_path={last}",
                      f"hydra.run.dir={tmp_path}/resumed", env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert resumed["global_step"] == 6 and resumed["lr_schedulers"][0]["last_epoch"] == 6
