"""Train a style:  python scripts/train.py style=starry [key=value ...]

See configs/train.yaml for every option; outputs go to outputs/train/<style>/<time>/.
On SIGTERM or SIGUSR1 (preemption) the run saves last.ckpt, prints the resume command and exits with
status 75 (hrstyle.training.preemption.EXIT_INTERRUPTED).
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from hrstyle.cli import prepare_argv, run_or_exit
from hrstyle.training.preemption import EXIT_INTERRUPTED, Interrupted, resume_command
from hrstyle.training.train import train


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        result = run_or_exit(lambda: train(cfg))
    except Interrupted as stop:
        saved = f"saved {stop.checkpoint}" if stop.checkpoint else "no checkpoint callback: nothing saved"
        run_dir = Path(stop.checkpoint).parent.parent if stop.checkpoint else cfg.paths.output_dir
        print(f"Interrupted at step {stop.step} ({saved}); resume with: {resume_command(run_dir)}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    metrics = result["metrics"]
    print(f"Trained {result['global_step']} steps.")
    if metrics:
        print("Final " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if k.startswith("train/")))
    print(f"Checkpoint:  {result['last_checkpoint']}")
    print(f"TensorBoard: tensorboard --logdir {result['log_dir']}")


if __name__ == "__main__":
    prepare_argv()
    main()
