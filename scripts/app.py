"""The app for photographers, in the browser:  python scripts/app.py [checkpoints=<dir>] [port=7860] [share=true]

Needs the app extra (pip install -e ".[app]"). See configs/app.yaml and hrstyle/app.py.
"""

import hydra
from omegaconf import DictConfig

from hrstyle.app import AppSettings, serve
from hrstyle.cli import prepare_argv, run_or_exit
from hrstyle.inference import Runtime


def settings(cfg: DictConfig) -> AppSettings:
    runtime = Runtime(device=cfg.device, precision=cfg.precision, backend=cfg.backend, memory_gb=cfg.memory_gb,
                      cache_dir=cfg.cache_dir)
    return AppSettings(checkpoints=cfg.checkpoints, host=cfg.host, port=cfg.port, share=cfg.share, runtime=runtime,
                       max_pixels=cfg.max_pixels, quality=cfg.quality, batch_size=cfg.batch_size,
                       workers=cfg.workers)


@hydra.main(config_path="../configs", config_name="app", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_or_exit(lambda: serve(settings(cfg)))


if __name__ == "__main__":
    prepare_argv()
    main()
