"""Write a synthetic dataset in the AffectNet layout, so the whole pipeline can run anywhere.

    images/<n>.jpg
    annotations/<n>_exp.npy   class 0-7 as a numpy string array, like the real files ('3', dtype <U1)
    annotations/<n>_val.npy   valence in [-1, 1], string array ('-0.176846', dtype <U9)
    annotations/<n>_aro.npy   arousal in [-1, 1], string array
    annotations/<n>_lnd.npy   68 (x, y) landmarks as 136 floats, in pixels

Faces are drawn procedurally. Each class has its own facial configuration (mouth curvature, mouth
opening and width, eye opening, brow height and slant, asymmetry), and valence/arousal are drawn
around per-class centres and then *drive* the features within the class (mouth curvature follows
valence, eye and mouth opening follow arousal), so a small network can learn both tasks.
"""
import argparse
import os
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

CLASS_NAMES = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]

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


def write_sample(root, name, img, label, v, a, landmarks):
    cv2.imwrite(str(root / "images" / f"{name}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
    ann = root / "annotations"
    # Scalars as string arrays, exactly like AffectNet's files.
    np.save(ann / f"{name}_exp.npy", np.array(str(label)))
    np.save(ann / f"{name}_val.npy", np.array(f"{v:.6f}"))
    np.save(ann / f"{name}_aro.npy", np.array(f"{a:.6f}"))
    np.save(ann / f"{name}_lnd.npy", landmarks.reshape(-1).astype(np.float64))


def make_dataset(out, n, size=64, seed=0, progress=True):
    """Write n samples, balanced over the 8 classes, deterministic for a seed."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    labels = np.random.default_rng(seed).permutation(np.arange(n) % len(CLASS_NAMES))
    for i in tqdm(range(n), desc="demo data", unit="img", disable=not progress):
        rng = np.random.default_rng([seed, i])  # per image: independent of n and of order
        img, v, a, lm = draw_face(rng, int(labels[i]), size)
        write_sample(out, str(i), img, int(labels[i]), v, a, lm)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/demo", help="output folder (gets images/ and annotations/)")
    p.add_argument("--n", type=int, default=4000, help="number of images, balanced over the 8 classes")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same files")
    args = p.parse_args()
    if args.n < 1 or args.size < 16:
        p.error("--n must be >= 1 and --size >= 16")
    t0 = time.time()
    make_dataset(args.out, args.n, args.size, args.seed)
    print(f"wrote {args.n} images ({args.size}px) to {os.path.abspath(args.out)} in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
