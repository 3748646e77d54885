"""Hostile pass over prediction (predict.py, bench.py --only faces): each test is a case that failed before
its fix. They reuse the session fixtures (`trained`) and run scripts in-process where stderr is Python's
(`run_here`), as a subprocess where a C library could write to it (`run_script`)."""
import shutil

import pandas as pd
import pytest
from conftest import run_here, run_script
from PIL import Image
from skimage import data
from test_trust import one_error_line
from test_trust_predict import mount_tmpfs  # noqa: F401 -- a fixture
from test_video import face_video

from fer.inference.track import assign_tracks


@pytest.fixture(scope="module")
def astronaut_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("astronaut") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


# --- bench_faces.py -------------------------------------------------------------------------------
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


# --- reruns into the same folders -----------------------------------------------------------------
def test_rerun_with_out_beside_the_videos(trained, tmp_path):
    """--out inside the searched folder: the second run read the first one's timeline PNG as an image,
    then refused to overwrite it, naming '--annotate None'."""
    folder = tmp_path / "clips"
    folder.mkdir()
    face_video(folder / "clip.mp4", n=4)
    for _ in range(2):
        r = run_here("predict.py", "--checkpoint", trained, folder, "--out", folder / "p.csv")
        assert r.returncode == 0, r.stderr
    assert len(pd.read_csv(folder / "p.csv")) == 4  # the four frames, no row for the timeline


def test_rerun_with_annotate_inside_the_input_folder(trained, tmp_path, astronaut_png):
    """--annotate inside the searched folder: the second run read the annotated copies as inputs (and
    refused to overwrite them)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(astronaut_png, folder)
    for _ in range(2):
        r = run_here("predict.py", "--checkpoint", trained, folder, "--out", tmp_path / "p.csv",
                     "--annotate", folder / "ann")
        assert r.returncode == 0, r.stderr
    assert list(pd.read_csv(tmp_path / "p.csv")["filename"]) == [str(folder / "astronaut.png")]


def test_a_timeline_given_as_input_names_out_not_annotate(trained, tmp_path, astronaut_png):
    clip = face_video(tmp_path / "clip.mp4", n=2)
    timeline = tmp_path / "p_clip_timeline.png"
    shutil.copy(astronaut_png, timeline)
    r = run_here("predict.py", "--checkpoint", trained, clip, timeline, "--out", tmp_path / "p.csv")
    line = one_error_line(r, f"--out {tmp_path / 'p.csv'}", "would overwrite the input", str(timeline))
    assert "--annotate" not in line


# --- flags that did nothing -----------------------------------------------------------------------
@pytest.mark.parametrize("flags", [["--detector", "haar"], ["--min_face", "20"], ["--face_threshold", "0.5"],
                                   ["--align", "box"]])
def test_detection_flags_without_detect_faces_are_refused(trained, tmp_path, astronaut_png, flags):
    """They were ignored: the whole picture was predicted, exit 0, as if a face had been detected."""
    r = run_here("predict.py", "--checkpoint", trained, astronaut_png, *flags, "--out", tmp_path / "p.csv")
    assert r.returncode == 2
    one_error_line(r, flags[0], "--detect_faces")
    assert not (tmp_path / "p.csv").exists()


# --- a full disk ----------------------------------------------------------------------------------
def test_full_disk_on_an_annotated_image_is_one_line(trained, astronaut_png, mount_tmpfs):  # noqa: F811
    """libpng printed 'libpng error: Write Error' above the error line."""
    disk = mount_tmpfs("small", "size=100k")  # the CSV fits, the annotated PNG (~500 kB) does not
    r = run_script("predict.py", "--checkpoint", trained, astronaut_png, "--out", disk / "p.csv",
                   "--annotate", disk / "ann")
    one_error_line(r, "no space left on device writing", str(disk / "ann" / "astronaut.png"))
    assert not (disk / "p.csv").exists()


# --- empty things -------------------------------------------------------------------------------
def test_a_folder_without_images_is_named(trained, tmp_path):
    """The message was 'nothing to predict:' and nothing after it."""
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("no image here")
    r = run_here("predict.py", "--checkpoint", trained, folder, "--out", tmp_path / "p.csv")
    one_error_line(r, "nothing to predict: no image or video", str(folder))


def test_an_empty_annotate_path_is_refused(trained, tmp_path, astronaut_png):
    """--annotate "" (an unset shell variable) was taken as no --annotate: exit 0 without the copies."""
    r = run_here("predict.py", "--checkpoint", trained, astronaut_png, "--out", tmp_path / "p.csv", "--annotate", "")
    one_error_line(r, "--annotate", "empty path")
    assert not (tmp_path / "p.csv").exists()


# --- videos the annotation encoder cannot take as they are ------------------------------------------
def test_annotating_8192_wide_and_1_px_videos(trained, tmp_path):
    """mp4v opens neither 8192-px-wide nor 1x1 frames: the whole run failed at the end with 'the
    annotated video could not be written' (and OpenCV's lines). Now the copy is scaled to fit."""
    import cv2
    import numpy as np

    sizes = {"wide": (8192, 64), "dot": (1, 1)}
    for name, (w, h) in sizes.items():
        writer = cv2.VideoWriter(str(tmp_path / f"{name}.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
        for k in range(2):
            writer.write(np.full((h, w, 3), 60 * k, np.uint8))
        writer.release()
    r = run_here("predict.py", "--checkpoint", trained, *[tmp_path / f"{n}.avi" for n in sizes], "--out",
                 tmp_path / "p.csv", "--annotate", tmp_path / "ann")
    assert r.returncode == 0, r.stderr
    for name, size in (("wide", (7680, 60)), ("dot", (2, 2))):
        cap = cv2.VideoCapture(str(tmp_path / "ann" / f"{name}_annotated.mp4"))
        got = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        assert got == size and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 2, (name, got)
        cap.release()


def test_a_video_named_like_mathtext(trained, tmp_path):
    """The timeline's title is the file name: 'a$^$b.mp4' made matplotlib fail to parse it, a
    traceback after the whole run."""
    clip = face_video(tmp_path / "a$^$b.mp4", n=2)
    r = run_here("predict.py", "--checkpoint", trained, clip, "--out", tmp_path / "p.csv")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "p_a$^$b_timeline.png").stat().st_size > 0


# --- tracks ---------------------------------------------------------------------------------------
def test_frames_without_a_face_count_towards_the_track_gap():
    """Only frames with a face reached the tracker: a face gone for 4 analysed frames (no face at all
    in them) kept its id with --track_gap 2, as if it had never left."""
    pass

    rows = []
    for frame in range(10):
        gone = 3 <= frame < 7
        rows.append({"filename": "v.mp4", "frame": frame, "time_s": frame / 10, "face_x": None if gone else 10,
                     "face_y": None if gone else 10, "face_w": None if gone else 50, "face_h": None if gone else 50,
                     "expression": None if gone else "Happy"})
    df = assign_tracks(pd.DataFrame(rows), 0.3, max_gap=2)
    assert df["track_id"].tolist()[:3] == [0] * 3 and df["track_id"].tolist()[7:] == [1] * 3
    assert df["track_id"].iloc[3:7].isna().all()
    df = assign_tracks(pd.DataFrame(rows), 0.3, max_gap=4)  # up to 4 missed frames: the same track
    assert df["track_id"].dropna().tolist() == [0] * 6
