"""bench.py --only faces: faces in the wild, measured. Recall and false detections of each detector on
faces pasted into larger scenes at known places, and how often the model predicts on the detected,
cropped face what it predicts on the original crop (--align template and --align box).

Scenes are 640x480 pictures of scikit-image's face-free sample photographs (coffee, cat, rocket,
...), each with two faces at random places: a demo face drawn as make_demo_data.py draws them, at 128 px
(with its class and 68 landmarks), and scikit-image's astronaut, each 40-300 px wide and turned by up to
+-45 degrees. A true face is found when a detection's box holds its nose tip and is 1.2-5 times as
wide as its eyes are apart; every other detection is a false one. Agreement is over the demo faces
found (the model was trained on such faces): the class predicted on the face as drawn vs on the crop
predict.py makes from the scene. The numbers are in BENCHMARKS.md.
"""
import time

import cv2
import numpy as np
import torch

from fer.constants import DETECTORS
from fer.data.demo import draw_face
from fer.data.faces import Cropper, check_template, five_from_68, make_detector
from fer.data.transforms import build_transforms
from fer.evaluation.metrics import softmax
from fer.model.checkpoint import model_from_checkpoint
from fer.model.forward import infer

BACKGROUNDS = ("coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "coins", "page",
               "horse", "logo", "motorcycle_left", "rocket", "colorwheel")


def backgrounds():
    from skimage import data

    out = []
    for name in dict.fromkeys(BACKGROUNDS):
        try:
            img = getattr(data, name)()
        except Exception:  # a sample that needs a download (pooch) is left out
            continue
        img = np.asarray(img)
        img = img.astype(np.uint8) if img.dtype != bool else (img * 255).astype(np.uint8)
        img = np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]
        out.append(cv2.resize(img, (640, 480), interpolation=cv2.INTER_AREA))
    return out


def astronaut_head():
    from skimage import data

    head = data.astronaut()[20:230, 120:300]
    points = np.array([[205.4, 101.5], [246.9, 103.1], [225.1, 129.2], [201.2, 139.6], [245.1, 141.1]]) - (120, 20)
    return head, points


def paste(scene, face, points, side, angle, centre):
    """Paste face (turned, scaled to side px wide) centred at centre; its five points where they land."""
    h, w = face.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, side / w)
    m[:, 2] += np.asarray(centre) - (w / 2, h / 2)
    size = scene.shape[1], scene.shape[0]
    warped = cv2.warpAffine(face, m, size)
    inside = cv2.warpAffine(np.full((h, w), 255, np.uint8), m, size) > 127
    scene[inside] = warped[inside]
    return points @ m[:, :2].T + m[:, 2]


def make_scenes(n, seed=0):
    """(scene, [(kind, true five points, face as drawn or None)]) for n scenes."""
    rng = np.random.default_rng(seed)
    bgs, (head, head_points) = backgrounds(), astronaut_head()
    for k in range(n):
        scene = bgs[k % len(bgs)].copy()
        label = int(rng.integers(8))
        bgr, _, _, lm = draw_face(np.random.default_rng([seed, k]), label, 128)
        demo = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        faces, taken = [], []
        for kind, face, pts in (("demo", demo, five_from_68(lm)), ("astronaut", head, head_points)):
            for _ in range(100):  # a place that does not overlap the other face
                side = float(np.exp(rng.uniform(np.log(40), np.log(300))))
                half = side * max(face.shape[:2]) / face.shape[1] / 2 * 1.42
                centre = rng.uniform((half, half), (640 - half, 480 - half)) if half < 240 else np.array((320., 240.))
                if all(np.abs(centre - c).max() > half + r for c, r in taken):
                    break
            taken.append((centre, half))
            truth = paste(scene, face, pts, side, rng.uniform(-45, 45), centre)
            faces.append((kind, truth, face if kind == "demo" else None))
        yield scene, faces


def match(detections, faces):
    """{true face index: detection}, and the number of false detections."""
    found, used = {}, set()
    for i, (_, truth, _) in enumerate(faces):
        eyes = np.linalg.norm(truth[1] - truth[0])
        for j, d in enumerate(detections):
            x, y, w, h = d.box
            if j not in used and x <= truth[2, 0] <= x + w and y <= truth[2, 1] <= y + h and 1.2 <= w / eyes <= 5:
                found[i] = d
                used.add(j)
                break
    return found, len(detections) - len(used)


def bench_faces(args, rows):
    """One row per detector: recall of the demo faces, with the astronaut's, the false detections, the time
    per scene and the agreement of the predictions on the crops with those on the faces as drawn."""
    model, meta = model_from_checkpoint(args.checkpoint)
    template = check_template(meta.get("crop_template"))
    transform = build_transforms(False, meta["img_size"])

    def predicted(crops):
        logits, _ = infer(model, torch.stack([transform(image=c)["image"] for c in crops]), "cpu")
        return softmax(logits.numpy()).argmax(1)

    detectors = {name: make_detector(name) for name in DETECTORS}
    stats = {name: dict(found={"demo": 0, "astronaut": 0}, false=0, seconds=0.0, agree={"template": [], "box": []})
             for name in detectors}
    totals = {"demo": 0, "astronaut": 0}
    for scene, faces in make_scenes(args.scenes):
        for kind, _, _ in faces:
            totals[kind] += 1
        for name, detector in detectors.items():
            t = time.perf_counter()
            detections = detector(scene)
            stats[name]["seconds"] += time.perf_counter() - t
            found, false = match(detections, faces)
            stats[name]["false"] += false
            for i, d in found.items():
                kind, _, drawn = faces[i]
                stats[name]["found"][kind] += 1
                if drawn is None:
                    continue
                for align in ("template", "box"):
                    crop = Cropper(detector, template, align, meta["img_size"]).crop(scene, d)
                    same = predicted([drawn, crop])
                    stats[name]["agree"][align].append(bool(same[0] == same[1]))
    for name, s in stats.items():
        agree = {align: (float(np.mean(a)) if a else float("nan"), len(a)) for align, a in s["agree"].items()}
        rows.append(("faces", f"{name}: recall of demo faces", 100 * s["found"]["demo"] / totals["demo"], "%",
                     f"astronaut {100 * s['found']['astronaut'] / totals['astronaut']:.0f}%, {s['false']} false "
                     f"detections, {1000 * s['seconds'] / args.scenes:.0f} ms/scene over {args.scenes} scenes; "
                     f"same class on the crop: template {100 * agree['template'][0]:.0f}% "
                     f"(n {agree['template'][1]}), box {100 * agree['box'][0]:.0f}% (n {agree['box'][1]})"))

