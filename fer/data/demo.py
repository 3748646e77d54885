"""Synthetic datasets in the layouts of the real ones (make_demo_data.py), so the whole pipeline can run
anywhere: procedurally drawn faces (draw_face) written by one writer per format (WRITERS, the formats
of fer.data.formats, whose label maps they invert), and make_dataset, which writes a complete dataset
into a temporary folder beside --out and swaps it in only when complete (replaced_folder), and only
over a folder this module wrote (its MARKER file, with a manifest of the files it wrote).

Each class (fer.constants.CLASS_NAMES order) has its own facial configuration (CLASS_STYLE: mouth
curvature, mouth opening and width, eye opening, brow height and slant, asymmetry), and valence/arousal
are drawn around per-class centres and then *drive* the features within the class (mouth curvature
follows valence, eye and mouth opening follow arousal), so a small network can learn both tasks.
"""
import errno
import glob
import hashlib
import io
import os
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from fer.data.formats import FER2013_LABELS, FERPLUS_LABELS, FERPLUS_VOTES, RAFDB_LABELS
from fer.trust import FERError, check_output, process_gone, signals_held
from fer.trust import progress as progress_of

# Per class: valence/arousal centre, then mouth curvature (corners up > 0), mouth opening,
# mouth width, eye opening, brow raise, brow slant (inner end up > 0), mouth asymmetry.
CLASS_STYLE = {
    0: dict(va=(0.00, 0.00), curv=0.00, open=0.00, width=1.00, eye=1.00, raise_=0.00, slant=0.00, asym=0.0),
    1: dict(va=(0.65, 0.30), curv=0.90, open=0.30, width=1.20, eye=0.80, raise_=0.02, slant=0.00, asym=0.0),
    2: dict(va=(-0.60, -0.25), curv=-0.75, open=0.00, width=0.90, eye=0.70, raise_=0.05, slant=0.12, asym=0.0),
    3: dict(va=(0.20, 0.65), curv=0.00, open=1.00, width=0.60, eye=1.70, raise_=0.16, slant=0.00, asym=0.0),
    4: dict(va=(-0.55, 0.65), curv=-0.20, open=0.55, width=1.15, eye=1.60, raise_=0.10, slant=0.14, asym=0.0),
    5: dict(va=(-0.60, 0.35), curv=-0.50, open=0.15, width=0.95, eye=0.55, raise_=-0.06, slant=-0.04, asym=0.3),
    6: dict(va=(-0.50, 0.60), curv=-0.15, open=0.00, width=0.80, eye=0.65, raise_=-0.08, slant=-0.16, asym=0.0),
    7: dict(va=(-0.35, 0.20), curv=0.10, open=0.00, width=1.00, eye=0.90, raise_=0.00, slant=0.00, asym=0.7),
}


def face_geometry(f):
    """Canonical-frame geometry (head half-width 1, y down) of a face with features f.

    Returns the 68 iBUG landmarks as an (68, 2) array plus the polygons needed for drawing.
    """
    lm = []
    # Jaw 0-16: lower part of the head ellipse, from the right temple round the chin to the left.
    t = np.linspace(-0.1, np.pi + 0.1, 17)
    lm += list(zip(-np.cos(t) * 0.98, np.sin(t) * 1.25 + 0.05))
    # Brows 17-21 (image-left) and 22-26 (image-right), inner end tilted by the slant.
    for side in (-1, 1):
        xs = np.linspace(0.58, 0.16, 5) if side < 0 else np.linspace(0.16, 0.58, 5)
        for x in xs:
            inner = (0.58 - x) / 0.42  # 1 at the inner end
            y = -0.45 - f["raise_"] - f["slant"] * inner - 0.04 * np.sin(np.pi * (x - 0.16) / 0.42)
            lm.append((side * x, y))
    # Nose 27-35.
    lm += [(0.0, y) for y in np.linspace(-0.25, 0.15, 4)]
    lm += [(x, 0.25 + 0.03 * (1 - abs(x) / 0.12)) for x in np.linspace(-0.12, 0.12, 5)]
    # Eyes 36-41 and 42-47: corners and two points on each lid.
    eye_h = 0.075 * f["eye"]
    for cx in (-0.38, 0.38):
        lm += [(cx - 0.17, -0.15), (cx - 0.06, -0.15 - eye_h), (cx + 0.06, -0.15 - eye_h),
               (cx + 0.17, -0.15), (cx + 0.06, -0.15 + eye_h), (cx - 0.06, -0.15 + eye_h)]
    # Mouth: corners raised by the curvature (one more than the other with asymmetry).
    w = 0.33 * f["width"]
    lift_l = 0.14 * f["curv"]
    lift_r = 0.14 * f["curv"] + 0.12 * f["asym"]
    gap = 0.24 * f["open"]

    def lip(x, lower):
        u = x / w
        y = 0.62 - (lift_l * (1 - u) / 2 + lift_r * (1 + u) / 2) * abs(u) ** 1.5
        return y + (gap * (1 - u * u) if lower else 0.0)

    outer_top = [(x, lip(x, False) - 0.05 * (1 - (x / w) ** 2)) for x in np.linspace(-w, w, 7)]
    outer_bot = [(x, lip(x, True) + 0.06 * (1 - (x / w) ** 2)) for x in np.linspace(w, -w, 7)[1:-1]]
    lm += outer_top + outer_bot  # 48-59
    inner_top = [(x, lip(x, False)) for x in np.linspace(-0.8 * w, 0.8 * w, 5)]
    inner_bot = [(x, lip(x, True)) for x in np.linspace(0.5 * w, -0.5 * w, 3)]
    lm += inner_top + inner_bot  # 60-67
    lm = np.asarray(lm, dtype=np.float64)
    assert lm.shape == (68, 2)
    return lm


def draw_face(rng, label, size):
    """Draw one face of class `label`; returns (BGR image, valence, arousal, landmarks (68, 2))."""
    style = CLASS_STYLE[label]
    cv, ca = style["va"]
    v = float(np.clip(cv + rng.normal(0, 0.12), -1, 1))
    a = float(np.clip(ca + rng.normal(0, 0.12), -1, 1))
    f = dict(style)
    # Within a class, valence bends the mouth and arousal opens eyes and mouth.
    f["curv"] = style["curv"] + 0.9 * (v - cv) + rng.normal(0, 0.05)
    f["eye"] = max(0.25, style["eye"] * (1 + 0.9 * (a - ca)) + rng.normal(0, 0.05))
    f["open"] = max(0.0, style["open"] + 0.5 * (a - ca) + rng.normal(0, 0.03))
    f["raise_"] = style["raise_"] + rng.normal(0, 0.015)
    f["asym"] = style["asym"] * rng.choice([-1, 1])  # contempt/disgust on either side
    lm = face_geometry(f)

    # Random similarity transform: canonical units -> pixels.
    scale = size * rng.uniform(0.30, 0.38)
    angle = np.deg2rad(rng.uniform(-12, 12))
    centre = size / 2 + rng.uniform(-0.06, 0.06, 2) * size
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) * scale

    def px(points):
        return np.asarray(points, dtype=np.float64).reshape(-1, 2) @ rot.T + centre

    # Background: a random gradient plus noise.
    base = rng.uniform(40, 200, 3)
    grad = np.linspace(-1, 1, size)[None, :, None] * rng.uniform(-40, 40, 3)
    img = np.clip(base + grad + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)

    sub = 4  # sub-pixel precision bits for cv2 drawing
    def ipts(points):
        return np.round(px(points) * (1 << sub)).astype(np.int32)

    skin = np.array([150.0, 180.0, 230.0]) * rng.uniform(0.4, 1.05) + rng.normal(0, 8, 3)  # BGR skin tones
    head = [(np.cos(t) * 1.0, np.sin(t) * 1.3 - 0.05) for t in np.linspace(0, 2 * np.pi, 48)]
    cv2.fillPoly(img, [ipts(head)], skin.tolist(), cv2.LINE_AA, sub)
    dark = (skin * 0.35).tolist()
    thick = max(1, int(round(scale * 0.06)))
    # Brows.
    cv2.polylines(img, [ipts(lm[17:22]), ipts(lm[22:27])], False, dark, thick, cv2.LINE_AA, sub)
    # Eyes: white of the eye, then the iris.
    for eye in (lm[36:42], lm[42:48]):
        cv2.fillPoly(img, [ipts(eye)], (235, 235, 235), cv2.LINE_AA, sub)
        c = px(eye.mean(0, keepdims=True))[0]
        r = max(1.0, min(0.06 * scale, (eye[:, 1].max() - eye[:, 1].min()) * scale * 0.5))
        cv2.circle(img, tuple(np.round(c * (1 << sub)).astype(int)), int(r * (1 << sub)), (40, 30, 20), -1,
                   cv2.LINE_AA, sub)
    # Nose.
    cv2.polylines(img, [ipts(lm[27:31]), ipts(lm[31:36])], False, (skin * 0.6).tolist(), max(1, thick // 2),
                  cv2.LINE_AA, sub)
    # Mouth: lips, and a dark opening when open.
    lips = (skin * np.array([0.55, 0.5, 0.9])).tolist()
    cv2.fillPoly(img, [ipts(lm[48:60])], lips, cv2.LINE_AA, sub)
    if f["open"] > 0.08:
        cv2.fillPoly(img, [ipts(lm[60:68])], (30, 20, 40), cv2.LINE_AA, sub)
    else:
        cv2.polylines(img, [ipts(lm[60:65])], False, (skin * 0.3).tolist(), max(1, thick // 2), cv2.LINE_AA, sub)

    # Global lighting: a random gain on one side of the face.
    light = 1 + np.linspace(-1, 1, size)[None, :, None] * rng.uniform(-0.2, 0.2)
    img = np.clip(img * light, 0, 255).astype(np.uint8)
    return img, v, a, px(lm)


def jpeg(img):
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()


def npy(arr):
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def write(path, data):
    """Write bytes (parents created); a full disk raises OSError, where cv2.imwrite would return False."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def faces(n, size, seed, classes=8, progress=True):
    """(i, canonical class, BGR image, valence, arousal, landmarks) for n faces balanced over classes,
    deterministic for a seed (per image: independent of n and of order)."""
    labels = np.random.default_rng(seed).permutation(np.arange(n) % classes)
    for i in progress_of(range(n), desc="demo data", unit="img", disable=not progress):
        rng = np.random.default_rng([seed, i])
        yield (i, int(labels[i]), *draw_face(rng, int(labels[i]), size))


def inverse(mapping):
    return {canonical: code for code, canonical in mapping.items()}


def write_affectnet(out, n, size, seed, progress):
    for i, label, img, v, a, lm in faces(n, size, seed, progress=progress):
        write(out / "images" / f"{i}.jpg", jpeg(img))
        # Scalars as string arrays, exactly like AffectNet's files.
        write(out / "annotations" / f"{i}_exp.npy", npy(np.array(str(label))))
        write(out / "annotations" / f"{i}_val.npy", npy(np.array(f"{v:.6f}")))
        write(out / "annotations" / f"{i}_aro.npy", npy(np.array(f"{a:.6f}")))
        write(out / "annotations" / f"{i}_lnd.npy", npy(lm.reshape(-1).astype(np.float64)))


def write_affectnet_csv(out, n, size, seed, progress):
    """Full photos with the face somewhere inside, and the two CSV files of the original release.
    Beyond the n faces of classes 0-7, n // 20 (at least 3) rows carry the codes 8, 9, 10."""
    extra = max(3, n // 20)
    rows = {"training.csv": [], "validation.csv": []}
    for i, label, img, v, a, lm in faces(n + extra, size, seed, progress=progress):
        rng = np.random.default_rng([seed, i, 1])
        code = label if i < n else 8 + (i - n) % 3
        if code in (9, 10):
            v = a = -2.0  # AffectNet has no valence/arousal for Uncertain and Non-Face
        h, w = (rng.uniform(1.3, 2.2, 2) * size).astype(int)
        x, y = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
        photo = np.clip(rng.uniform(40, 200, 3) + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        photo[y:y + size, x:x + size] = img
        name = f"{i % 7 + 1}/{hashlib.sha1(f'{seed}-{i}'.encode()).hexdigest()}.jpg"
        write(out / "Manually_Annotated_Images" / name, jpeg(photo))
        rows["validation.csv" if i % 5 == 0 else "training.csv"].append({
            "subDirectory_filePath": name, "face_x": x, "face_y": y, "face_width": size, "face_height": size,
            "facial_landmarks": ";".join(f"{c:.2f}" for c in (lm + (x, y)).reshape(-1)),
            "expression": code, "valence": f"{v:.6f}", "arousal": f"{a:.6f}"})
    for fname, table in rows.items():
        write(out / fname, pd.DataFrame(table).to_csv(index=False).encode())


def write_rafdb(out, n, size, seed, progress):
    """RAF-DB basic: aligned faces and the label list, 7 classes (no contempt), 80 % train_, 20 % test_."""
    code_of = inverse(RAFDB_LABELS)
    lines, counts = {"train": [], "test": []}, {"train": 0, "test": 0}
    for i, label, img, v, a, lm in faces(n, size, seed, classes=7, progress=progress):
        split = "test" if i % 5 == 0 else "train"
        counts[split] += 1
        stem = f"train_{counts[split]:05d}" if split == "train" else f"test_{counts[split]:04d}"
        write(out / "Image" / "aligned" / f"{stem}_aligned.jpg", jpeg(img))
        lines[split].append(f"{stem}.jpg {code_of[label]}\n")
    write(out / "EmoLabel" / "list_patition_label.txt", "".join(lines["train"] + lines["test"]).encode())


def fer_rows(n, seed, classes, progress):
    """fer2013.csv rows: (canonical class, emotion code, pixels as text, Usage); 80/10/10 % Usage."""
    code_of = inverse(FER2013_LABELS)
    for i, label, img, v, a, lm in faces(n, 48, seed, classes=classes, progress=progress):
        grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        usage = {8: "PublicTest", 9: "PrivateTest"}.get(i % 10, "Training")
        yield label, code_of.get(label, 6), " ".join(map(str, grey.reshape(-1))), usage  # contempt: "Neutral"


def write_fer2013(out, n, size, seed, progress):
    table = pd.DataFrame([row[1:] for row in fer_rows(n, seed, 7, progress)], columns=["emotion", "pixels", "Usage"])
    write(out / "fer2013.csv", table.to_csv(index=False).encode())


def ferplus_votes(rng, label, kind):
    """Ten votes over FERPlus's columns for a face of the canonical class label."""
    col = FERPLUS_LABELS.index(label)
    others = [c for c in range(8) if c != col]
    votes = np.zeros(10, int)
    if kind == "no majority":  # 4 / 3 / 3: the majority rule drops it, plurality keeps the 4
        votes[[col, others[0], others[1]]] = 4, 3, 3
    elif kind == "tie":  # 4 / 4 / 2: both rules drop it
        votes[[col, others[2], others[3]]] = 4, 4, 2
    elif kind == "unknown":
        votes[[8, col]] = 6, 4
    elif kind == "not a face":
        votes[9] = 10
    else:  # a clear majority, the rest scattered (votes of 1 are the outliers the rule removes)
        votes[col] = rng.integers(6, 11)
        np.add.at(votes, rng.choice(others, 10 - votes[col]), 1)
    return votes


FERPLUS_KINDS = {7: "no majority", 11: "tie", 13: "unknown", 17: "not a face"}  # by i % 20; else majority


def write_ferplus(out, n, size, seed, progress):
    """fer2013.csv plus fer2013new.csv, same rows in the same order; not-a-face rows have no image name."""
    fer, plus = [], []
    for i, (label, code, pixels, usage) in enumerate(fer_rows(n, seed, 8, progress)):
        kind = FERPLUS_KINDS.get(i % 20, "majority")
        votes = ferplus_votes(np.random.default_rng([seed, i, 2]), label, kind)
        fer.append((code, pixels, usage))
        plus.append([usage, "" if kind == "not a face" else f"fer{i:07d}.png", *votes])
    write(out / "fer2013.csv", pd.DataFrame(fer, columns=["emotion", "pixels", "Usage"]).to_csv(index=False).encode())
    table = pd.DataFrame(plus, columns=["Usage", "Image name"] + FERPLUS_VOTES)
    write(out / "fer2013new.csv", table.to_csv(index=False).encode())


FOLDER_NAMES = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "angry", "contempt"]


def write_folders(out, n, size, seed, progress):
    for i, label, img, v, a, lm in faces(n, size, seed, progress=progress):
        write(out / ("val" if i % 5 == 0 else "train") / FOLDER_NAMES[label] / f"{i}.jpg", jpeg(img))


WRITERS = {"affectnet": write_affectnet, "affectnet_csv": write_affectnet_csv, "rafdb": write_rafdb,
           "fer2013": write_fer2013, "ferplus": write_ferplus, "folders": write_folders}
DEFAULT_SIZE = {"rafdb": 100, "fer2013": 48, "ferplus": 48}  # others: 64
MARKER = ".make_demo_data"
TMP_MARKER = ".make_demo_data.unfinished"  # in the folder being written


def written_by_us(out):
    """True for a folder this script wrote: its marker. Names alone prove nothing: the real AffectNet's
    train_set/ is images/0.jpg and annotations/0_exp.npy too."""
    return (out / MARKER).is_file()


def manifest(folder):
    """{relative path: SHA-1} of every file below folder except the marker: what this script wrote."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in (MARKER, TMP_MARKER)}


def not_ours(out):
    """Files in a folder this script wrote that it did not write as they are now (added or changed by
    the user since), from the manifest in its marker; markers without a manifest list nothing."""
    lines = (out / MARKER).read_text().splitlines()[1:] if (out / MARKER).is_file() else []
    if not lines:
        return []
    wrote = dict(line.split("  ", 1)[::-1] for line in lines)
    others = [p for p in sorted(out.rglob("*")) if not p.is_dir() and p.name != MARKER]
    return [p for p in others if p.is_symlink() or not p.is_file() or
            wrote.get(str(p.relative_to(out))) != hashlib.sha1(p.read_bytes()).hexdigest()]


@contextmanager
def replaced_folder(out):
    """Yield a temporary folder beside out; it replaces out only when the block succeeds."""
    out = check_output(out, "--out", folder=True).resolve()  # a link to a folder: swap the folder, not the link
    if out.exists() and any(out.iterdir()) and not written_by_us(out):
        raise FERError(f"--out {out}: folder is not empty and was not written by make_demo_data.py "
                       "(choose a new folder, or remove it)")
    theirs = not_ours(out) if out.exists() else []
    if theirs:
        raise FERError(f"--out {out}: {len(theirs)} file(s) in it were not written by make_demo_data.py (added or "
                       f"changed since), e.g. {', '.join(str(p.relative_to(out)) for p in theirs[:3])}; move them "
                       f"away or choose another --out")
    for stale in out.parent.glob(f".{glob.escape(out.name)}.*"):  # of a run that was killed (SIGKILL, power loss)
        m = re.fullmatch(rf"\.{re.escape(out.name)}\.(\d+)\.(tmp|old)", stale.name)
        # only a folder this script made (its marker) and as it left it: a name alone proves nothing
        ours = m and stale.is_dir() and not stale.is_symlink() and process_gone(int(m[1])) and (
            (stale / TMP_MARKER).is_file() or (written_by_us(stale) and not not_ours(stale)))
        if ours:
            shutil.rmtree(stale, ignore_errors=True)
            print(f"removed {stale} (left by an interrupted run)")
    tmp, old = (out.with_name(f".{out.name}.{os.getpid()}.{what}") for what in ("tmp", "old"))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / TMP_MARKER).write_text("")
    try:
        yield tmp
        (tmp / TMP_MARKER).unlink()
        with signals_held():  # a Ctrl-C between the two renames would leave no --out at all
            check_still_ours(out)  # files added while this run generated (trust rule 2): nothing replaced
            if out.exists():
                os.replace(out, old)
            os.replace(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise FERError(f"no space left on device writing {out}") from None
        raise
    if old.exists() and not_ours(old):  # added in the instant of the swap: kept, and said
        print(f"note: files added to {out} while it was replaced are kept in {old}")
    else:
        shutil.rmtree(old, ignore_errors=True)


def check_still_ours(out):
    """Before the swap: the folder about to be replaced holds only what this script wrote."""
    if not out.exists():
        return
    theirs = not_ours(out) if written_by_us(out) else [p for p in out.iterdir()]
    if theirs:
        raise FERError(f"--out {out}: {len(theirs)} file(s) were added or changed while the data was generated, e.g. "
                       f"{', '.join(str(p.relative_to(out)) for p in theirs[:3])}; nothing was replaced: move them "
                       f"away or choose another --out")


def make_dataset(out, n, size=None, seed=0, progress=True, fmt="affectnet"):
    """Write n samples (balanced over the format's classes), deterministic for a seed; returns out."""
    out = Path(out)
    size = size or DEFAULT_SIZE.get(fmt, 64)
    if fmt in ("fer2013", "ferplus") and size != 48:
        raise FERError(f"--size {size}: {fmt} images are 48x48")
    with replaced_folder(out) as tmp:
        WRITERS[fmt](tmp, n, size, seed, progress)
        files = "".join(f"{digest}  {name}\n" for name, digest in manifest(tmp).items())
        (tmp / MARKER).write_text(f"format={fmt} n={n} size={size} seed={seed}\n{files}")
    return out


def make_demo(args):
    """make_demo_data.py: make_dataset with the flags of fer.cli.demo, and one line saying what was written."""
    t0 = time.time()
    out = make_dataset(args.out, args.n, args.size, args.seed, fmt=args.format)
    print(f"wrote {args.n} {args.format} faces to {out.resolve()} in {time.time() - t0:.1f}s")
