"""Flags of make_demo_data.py (the synthetic datasets)."""
from fer.cli import ArgumentParser, add_quiet_argument, int_at_least
from fer.cli.index import FORMATS
from fer.trust import FERError, check_output


def get_args(argv=None, description=None):
    p = ArgumentParser(description=description)
    p.add_argument("--format", choices=list(FORMATS), default="affectnet", help="dataset layout (default affectnet)")
    p.add_argument("--out", default="data/demo", help="output folder (default data/demo)")
    p.add_argument("--n", type=int_at_least(1, 1_000_000), default=4000,
                   help="number of faces, 1-1000000, balanced over the format's classes (default 4000; "
                        "affectnet_csv adds n/20 rows coded 8-10; in ferplus 1 row in 5 has no majority, a tie, an "
                        "unknown majority or no image name)")
    p.add_argument("--size", type=int_at_least(16, 1024),
                   help="face side in pixels, 16-1024 (default 64; rafdb 100; fer2013 and ferplus are always 48)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="random seed; the same seed writes the same files")
    add_quiet_argument(p)
    args = p.parse_args(argv)
    if args.format in ("fer2013", "ferplus") and args.size not in (None, 48):  # as make_dataset says
        raise FERError(f"--size {args.size}: {args.format} images are 48x48")
    check_output(args.out, "--out", folder=True)  # the rest (a folder this script wrote?) in make_dataset
    return args
