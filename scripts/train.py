"""Train a style:  python scripts/train.py style=starry [key=value ...]

See configs/train.yaml for every option; outputs go to outputs/train/<style>/<time>/.
"""

import hydra
from omegaconf import DictConfig

from hrstyle.cli import prepare_argv, run_or_exit
from hrstyle.training.train import train


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    result = run_or_exit(lambda: train(cfg))
    metrics = result["metrics"]
    print(f"Trained {result['global_step']} steps.")
    if metrics:
        print("Final " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if k.startswith("train/")))
    print(f"Checkpoint:  {result['last_checkpoint']}")
    print(f"TensorBoard: tensorboard --logdir {result['log_dir']}")


if __name__ == "__main__":
    prepare_argv()
    main()
