"""Export a trained generator to TorchScript and ONNX:  python scripts/export.py checkpoint=... [key=value ...]

See configs/export.yaml for the options; files go to outputs/export/ unless output_dir=... is given.
The files hold the network alone: to stylize camera-sized photos as scripts/infer.py does, run it at a
working resolution and apply the lift (hrstyle/inference/onnx/export.py says how, in a few lines).
"""

import hydra
from omegaconf import DictConfig

from hrstyle.cli import prepare_argv, run_or_exit
from hrstyle.inference.onnx.export import export_checkpoint, verify_exports


@hydra.main(config_path="../configs", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    output_dir = cfg.output_dir or "outputs/export"
    model, files = run_or_exit(lambda: export_checkpoint(cfg.checkpoint, output_dir, cfg.formats, cfg.opset, cfg.name))
    for path in files.values():
        print(f"Wrote {path} ({path.stat().st_size / 1e3:.1f} kB)")
    if cfg.verify:
        print("Max |exported - PyTorch| on a random 61x47 image:")
        for fmt, diff in verify_exports(model, files, size=(61, 47)).items():
            print(f"  {fmt}: {diff:.2e}" if isinstance(diff, float) else f"  {fmt}: {diff}")


if __name__ == "__main__":
    prepare_argv()
    main()
