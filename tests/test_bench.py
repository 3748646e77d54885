"""fer/bench (bench.py): the quick run produces every row, --arch, and the faces section's flags."""
import json
import math
import shutil

import numpy as np
import pytest
from builders import one_error_line, run_here, run_script


@pytest.mark.slow
def test_bench_quick_produces_every_row(tmp_path):
    r = run_script("bench.py", "--quick", "--json", tmp_path / "bench.json", timeout=600)
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    got = {(row["section"], row["what"].split(",")[0]) for row in rows}
    expected = {("index", "metadata_parallel.build_index"), ("index", "baseline: threads + exists + np.load(mmap)"),
                ("index", "speed-up over baseline"), ("transforms", "decode (cv2.imread)"),
                ("transforms", "train augmentation"), ("transforms", "ISONoise (albumentations)"),
                ("transforms", "FastISONoise (ours"), ("transforms", "DataLoader"), ("train_step", "float32"),
                ("train_step", "channels_last"), ("train_step", "bf16 autocast + channels_last"),
                ("recipes", "plain step (label smoothing 0.1"), ("recipes", "--sam 0.05"),
                ("recipes", "--sam 0.5 --asam"), ("recipes", "--tta flip (evaluation"),
                ("recipes", "--balanced_sampling (an epoch's draw)"),
                ("end_to_end", "training with the loader (1 workers)"),
                ("eval", "predict_batches over the validation loader"),
                ("video", "predict.py on a 640x480 video with two faces"), ("video", "decode + face detection alone"),
                ("report", "HTML report (FER_report.render)"),
                ("experiments", "bootstrap: every metric"), ("experiments", "compare_runs.py on 10 runs (table)"),
                ("experiments", "compare_runs.py on 10 runs with --plot")}
    assert expected <= got, expected - got
    assert sum(row["what"].startswith("DataLoader") for row in rows) == 2  # --quick tries 0 and 1 workers
    for row in rows:
        assert math.isfinite(row["value"]) and row["value"] > 0, row
        assert row["what"] in r.stdout  # the printed table has the same rows
    assert "% of the time waiting for data" in next(row["notes"] for row in rows if row["section"] == "end_to_end")


# --- --arch ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_bench_arch(tmp_path):
    r = run_here("bench.py", "--quick", "--only", "train_step", "--arch", "mobilenet_v3_large",
                 "--json", tmp_path / "b.json")
    assert r.returncode == 0, r.stderr
    assert "mobilenet_v3_large 32px" in r.stdout and "peak RSS" in r.stdout


# --- bench.py --only faces (was bench_faces.py) ---------------------------------------------------
def test_bench_faces_refuses_zero_scenes_in_one_line(trained):
    """--scenes 0 ran the model, then divided by zero (a traceback)."""
    r = run_script("bench.py", "--only", "faces", "--checkpoint", trained, "--scenes", "0")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    one_error_line(r, "--scenes", "0")


def test_bench_faces_missing_checkpoint_one_line(tmp_path):
    r = run_script("bench.py", "--only", "faces", "--checkpoint", tmp_path / "none.pth", "--scenes", "1")
    one_error_line(r, "--checkpoint", "none.pth", "file not found")


def test_bench_faces_json_onto_its_checkpoint_is_refused(trained, tmp_path):
    """--json onto --checkpoint overwrote the model with the table after the benchmark."""
    ckpt = tmp_path / "m.pth"
    shutil.copy(trained, ckpt)
    before = ckpt.read_bytes()
    r = run_script("bench.py", "--only", "faces", "--checkpoint", ckpt, "--scenes", "1", "--json", ckpt)
    one_error_line(r, "--json", "--checkpoint")
    assert ckpt.read_bytes() == before


# --- the sections' parts on their own (quick: no timing, no model) ---------------------------------
def test_the_baseline_indexer_reads_what_build_index_reads(tmp_path):
    """The index section times build_index against the straightforward indexer it replaced, on a tree in
    the real AffectNet layout: both read the same labels and valence/arousal from it."""
    from fer.bench.pipeline import baseline_index, write_index_tree
    from fer.data.index import build_index

    write_index_tree(tmp_path, 24)
    df, _ = build_index(tmp_path / "images", tmp_path / "annotations", workers=1, progress=False)
    base = {row["filename"]: row for row in baseline_index(tmp_path / "images", tmp_path / "annotations", workers=2)}
    assert len(df) == len(base) == 24
    for _, row in df.iterrows():
        b = base[row["filename"]]
        assert b["expression"] == row["expression"] == int(row["filename"][:-4]) % 8
        assert (b["val"], b["aro"]) == pytest.approx((row["valence"], row["arousal"]), abs=1e-6)
        assert len(b["lnd"]) == len(row["landmarks"]) == 136


def test_scenes_hold_two_faces_and_match_counts_what_a_detector_found(tmp_path):
    """The faces section pastes a demo face and the astronaut into each scene; a detection finds a face
    when its box holds the nose tip and is 1.2-5 eye distances wide, every other one is a false one."""
    from fer.bench.faces import make_scenes, match
    from fer.data.faces import Face

    (scene, faces), = make_scenes(1, seed=3)
    assert scene.shape == (480, 640, 3) and scene.dtype == np.uint8
    assert [kind for kind, _, _ in faces] == ["demo", "astronaut"] and faces[0][2].shape == (128, 128, 3)
    boxes = []
    for _, truth, _ in faces:
        assert truth.shape == (5, 2) and (truth >= 0).all() and (truth <= (640, 480)).all()
        eyes = np.linalg.norm(truth[1] - truth[0])
        x, y = truth[2] - 1.25 * eyes
        boxes.append(Face((x, y, 2.5 * eyes, 2.5 * eyes)))
    found, false = match(boxes[::-1] + [Face((0, 0, 5, 5))], faces)
    assert found == {0: boxes[0], 1: boxes[1]} and false == 1
    x, y = faces[0][1][2] - 50 * np.linalg.norm(faces[0][1][1] - faces[0][1][0])  # holds the nose, far too wide
    found, false = match([Face((x, y, 1e5, 1e5))], faces)
    assert found == {} and false == 1


def test_bench_json_is_never_written_onto_a_file_of_the_kit(tmp_path):
    """Hostile pass 2026-12-03: bench.py --json m.pth replaced a checkpoint with the results table."""
    for name, kind in (("m.pth", "checkpoint"), ("x_run.json", "run record")):
        target = tmp_path / name
        target.write_bytes(b"precious")
        one_error_line(run_here("bench.py", "--quick", "--only", "index", "--json", target), "--json", kind)
        assert target.read_bytes() == b"precious"
