"""Flags of metadata_parallel.py (the dataset indexer) and the checks made before any heavy import:
--root, --out_dir and --val_root, the format (given, or recognised from --root's files) and the flags
that only some formats take. Also what those need to know of the layouts without reading them: the
format names and the class and split folder names of --format folders (--class_map's class names)."""
import argparse
import os
from pathlib import Path

from fer.cli import (
    QUIET_HELP,
    ArgumentParser,
    add_face_arguments,
    add_outside_root_argument,
    check_face_arguments,
    float_in,
    int_at_least,
    nonneg_int,
)
from fer.constants import CLASS_NAMES, NEAR_DUPLICATE_BITS
from fer.trust import FERError, check_input, check_output, check_replaceable

FORMATS = ("affectnet", "affectnet_csv", "rafdb", "fer2013", "ferplus", "folders")  # fer.data.formats reads them
# --format folders: class folder names (and synonyms) -> canonical class; split folder names -> split.
SYNONYMS = {0: "neutral neutrality calm", 1: "happy happiness joy", 2: "sad sadness",
            3: "surprise surprised suprise surprize", 4: "fear fearful afraid scared",
            5: "disgust disgusted", 6: "anger angry", 7: "contempt contemptuous"}
CLASS_OF_NAME = {name: c for c, names in SYNONYMS.items() for name in names.split()}
SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}


def parse_class_map(text):
    """--class_map '0=anger,1=contempt,...' -> {folder name (case-folded): class}."""
    mapping = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        folder, _, name = item.partition("=")
        if not _ or not folder.strip() or name.strip().casefold() not in CLASS_OF_NAME:
            raise argparse.ArgumentTypeError(f"{item!r} is not FOLDER=CLASS with a class among "
                                             f"{', '.join(c.lower() for c in CLASS_NAMES)}")
        key = folder.strip().casefold()
        if key in mapping:  # the last one would silently win
            raise argparse.ArgumentTypeError(f"folder {folder.strip()!r} is given twice")
        mapping[key] = CLASS_OF_NAME[name.strip().casefold()]
    if not mapping:
        raise argparse.ArgumentTypeError("empty map")
    return mapping


def shown(name):
    """A folder name for a one-line message: quoted and escaped when it holds a line break or the like."""
    return name if name.isprintable() else repr(name)


def subfolders(folder):
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def detect_format(root):
    """The format whose files are in root; AffectNet's .npy layout when none is recognised."""
    if (root / "fer2013new.csv").exists():
        return "ferplus"
    checks = [("fer2013", ["fer2013.csv"]), ("rafdb", ["EmoLabel/list_patition_label.txt"]),
              ("affectnet_csv", ["training.csv", "Manually_Annotated_file_lists/training.csv"]),
              ("affectnet", ["annotations"])]
    for fmt, names in checks:
        if any((root / n).exists() for n in names):
            return fmt
    if any(n.casefold() in CLASS_OF_NAME or n.casefold() in SPLIT_FOLDERS for n in subfolders(root)):
        return "folders"
    return "affectnet"


def check_val_root(root, val_root, flag="--root"):
    """--val_root must be another folder: equal or nested folders would validate on training images."""
    a, b = Path(root).resolve(), val_root.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise FERError(f"--val_root {val_root} overlaps {flag} {root}: validation images would also be "
                       "training images")
    return val_root


def random_split_flags(args, official):
    """--val_fraction and --seed set the random split: with an official split they are not used, and say so."""
    given = [f"{flag} {value}" for flag, value in (("--val_fraction", args.val_fraction), ("--seed", args.seed))
             if value is not None]
    if official and given:
        print(f"note: {' and '.join(given)} not used: this dataset has an official split ({official})")


def get_args(argv=None, description=None):
    """The checked flags: args.format is the format (given or recognised), --ext and --ferplus_label have
    their defaults, and --root, --out_dir and --val_root are checked; a flag error exits 2, a bad path
    or a flag the format does not take raises FERError."""
    p = ArgumentParser(description=description)
    p.add_argument("--format", choices=FORMATS, help="dataset layout (default: recognised from --root's files, "
                                                     "else affectnet)")
    p.add_argument("--root", default=".", help="dataset folder (default: .)")
    p.add_argument("--out_dir", default=".", help="where the parquet files (and PNGs of CSV pixels) go (default: .)")
    p.add_argument("--val_fraction", type=float_in(0, 1, True, True),
                   help="validation share of the random split, for datasets without an official one (default 0.2; "
                        "not used with an official split, and a note says so)")
    p.add_argument("--seed", type=int_at_least(0, 2**32 - 1),
                   help="random_state of the random split (default 42; not used with an official split)")
    p.add_argument("--workers", type=nonneg_int, default=0, help="worker processes (default 0: one per CPU core)")
    p.add_argument("--verify_images", action="store_true",
                   help="decode every image completely (Pillow) and skip, and name, unreadable or truncated ones "
                        "and formats OpenCV cannot read (slower)")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    add_outside_root_argument(p)
    g = p.add_argument_group("leakage guard (always on; protocol_card.json and .md beside the parquet files)")
    g.add_argument("--dedupe", action="store_true",
                   help="drop the later copy of an exact or near duplicate across splits (train before val before "
                        "test: the validation or test image goes); default: report and keep")
    g.add_argument("--exclude", metavar="FILE.csv",
                   help="a reviewed list of rows to leave out of the splits (eval_resnet50.py --audit_labels writes "
                        "one): a CSV with a filename column; with an exclude column only its rows marked yes/y/1/true/x "
                        "are excluded. Recorded in the protocol card")
    g.add_argument("--near_duplicate_bits", type=int_at_least(0, 16), default=NEAR_DUPLICATE_BITS, metavar="BITS",
                   help=f"near duplicates: 64-bit pHashes at most this many bits apart (default {NEAR_DUPLICATE_BITS}: "
                        f"re-encodings, resizes and crops of about 2%% per side; see README)")
    p.add_argument("--detect_landmarks", action="store_true",
                   help="add a landmarks5 column: five landmarks (eye centres, nose tip, mouth corners) per image "
                        "by the MTCNN face detector, for datasets without landmarks; training takes its crop "
                        "template from them. Images without a face are named")
    add_face_arguments(p.add_argument_group("with --detect_landmarks (MTCNN)"), min_face=20, detector=False,
                       align=False)
    g = p.add_argument_group("affectnet (.npy layout) only")
    g.add_argument("--images_dir", help="images folder, if not <root>/images (--val_root's is always its images/)")
    g.add_argument("--annotations_dir", help="annotations folder, if not <root>/annotations (--val_root's is always "
                                             "its annotations/)")
    g.add_argument("--ext", help="image file extension (default: jpg)")
    g.add_argument("--val_root", help="use this separately annotated folder (e.g. AffectNet's val_set, with images/ "
                                      "and annotations/) as the validation split instead of a random split; it "
                                      "must not be --root or inside it (an error)")
    g = p.add_argument_group("other formats")
    g.add_argument("--ferplus_label", choices=("majority", "plurality"),
                   help="ferplus: the authors' majority rule (votes of 1 dropped, top emotion needs more than half "
                        "of the rest) or the emotion with the most votes (ties dropped); default majority")
    g.add_argument("--class_map", type=parse_class_map,
                   help="folders: FOLDER=CLASS pairs, e.g. 0=anger,1=contempt,2=disgust,3=fear,4=happy,5=neutral,"
                        "6=sad,7=surprise for numeric folders; class names: neutral, happy, sad, surprise, fear, "
                        "disgust, anger, contempt or a synonym (happiness, angry, surprised, fearful, disgusted...)")
    args = p.parse_args(argv)
    check_face_arguments(p, args, args.detect_landmarks, "--detect_landmarks")

    root = check_input(args.root, "--root", folder=True)
    out = check_output(args.out_dir, "--out_dir", folder=True)
    for name in ("all", "train", "val", "test"):  # a folder there would fail only after the whole run
        check_replaceable(out / f"metadata_{name}.parquet", "--out_dir")
    for name in ("protocol_card.json", "protocol_card.md"):
        check_replaceable(out / name, "--out_dir")
    if args.exclude:
        check_input(args.exclude, "--exclude")
    fmt = args.format or detect_format(root)
    if not args.format and fmt != "affectnet":
        print(f"format: {fmt} (recognised from {root}; --format overrides)")
    only = {"--images_dir": args.images_dir, "--annotations_dir": args.annotations_dir, "--val_root": args.val_root,
            "--ext": args.ext}
    for flag, value in only.items():
        if value and fmt != "affectnet":
            raise FERError(f"{flag} is for --format affectnet, not {fmt}")
    if args.ferplus_label and fmt != "ferplus":
        raise FERError(f"--ferplus_label is for --format ferplus, not {fmt}")
    official = "--val_root" if args.val_root else f"--format {fmt}" if fmt not in ("affectnet", "folders") else None
    random_split_flags(args, official)  # folders: checked once its split folders are known
    args.ext, args.ferplus_label = args.ext or "jpg", args.ferplus_label or "majority"
    if args.class_map and fmt != "folders":
        raise FERError(f"--class_map is for --format folders, not {fmt}")
    if args.val_root:
        val_root = check_input(args.val_root, "--val_root", folder=True)
        for flag, folder in (("--root", root), ("--images_dir", args.images_dir),
                             ("--annotations_dir", args.annotations_dir)):
            if folder:
                check_val_root(folder, val_root, flag)
    args.format = fmt
    return args
