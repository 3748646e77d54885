"""Flags of FER_transform.py (the augmentation preview)."""
from pathlib import Path

from fer.cli import ArgumentParser, add_outside_root_argument, add_quiet_argument, int_at_least, nonneg_int
from fer.constants import IMG_SIZE, IMG_SIZE_RANGE
from fer.trust import check_input, check_output, check_outputs

FORMATS = (".png", ".jpg", ".jpeg", ".pdf", ".svg")


def get_args(argv=None, description=None):
    p = ArgumentParser(description=description)
    p.add_argument("--meta", required=True, nargs="+", help="index parquet(s) (e.g. metadata_train.parquet)")
    p.add_argument("--root", help="dataset folder, if not the one recorded in the index")
    add_outside_root_argument(p)
    p.add_argument("--size", type=int_at_least(*IMG_SIZE_RANGE), default=IMG_SIZE,
                   help="image side after the transforms (32-4096, as training's --img_size)")
    p.add_argument("--n", type=int_at_least(1, 400), default=16, help="number of samples in the grid (1-400)")
    p.add_argument("--val", action="store_true", help="show the validation transform instead of augmentation")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the sample choice and the augmentation")
    p.add_argument("--out", default="augmented_samples.png", help="where to save the PNG grid")
    add_quiet_argument(p)
    args = p.parse_args(argv)
    if Path(args.out).suffix.lower() not in FORMATS:
        p.error(f"argument --out: {args.out} must end in .png, .jpg, .pdf or .svg (the picture's format)")
    check_output(args.out, "--out")
    check_outputs([("--out", args.out)], [("--meta", m) for m in args.meta], images=True)  # never into a dataset
    if args.root:
        check_input(args.root, "--root", folder=True)
    return args
