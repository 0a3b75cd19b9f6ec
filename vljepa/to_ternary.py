"""``python -m vljepa.to_ternary SRC DST``: post-training quantisation (BitNet b1.58) of a saved
full-precision model directory or Lightning ``.ckpt`` into a packed ternary model directory.

For a short quantisation-aware fine-tune instead, use
``python train.py experiment=ternary init_from=SRC trainer.max_epochs=1``.
"""
from __future__ import annotations

import argparse

from .factory import load
from .ternary import quantize


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m vljepa.to_ternary", description=__doc__)
    ap.add_argument("src", help="full-precision model directory or .ckpt")
    ap.add_argument("dst", help="output directory (config.json + packed model.safetensors)")
    args = ap.parse_args(argv)
    quantize(load(args.src)).save_pretrained(args.dst)
    print(f"wrote {args.dst}")


if __name__ == "__main__":
    main()
