"""fer/inference/track.py: the tracker on hand-made boxes, and predict.py on videos with two real faces
(scikit-image's astronaut) that cross paths, one of them leaving for a few frames.
"""
import cv2
import numpy as np
import pandas as pd
import pytest
from builders import GAP, face_video, run_here

import predict
from fer.inference.predict import track_color
from fer.inference.track import IouTracker, assign_tracks, iou, smooth

CLASSES = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]
PROBS = [f"prob_{n}" for n in CLASSES]


def run_predict(*args):
    return predict.main([str(a) for a in args])


# --- the tracker alone ----------------------------------------------------------------------------
def test_iou():
    got = iou([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 10, 10], [20, 20, 5, 5], [0, 0, 0, 0]])
    np.testing.assert_allclose(got, [[1, 50 / 150, 0, 0]])


def test_tracker_keeps_ids_through_crossing_and_gaps():
    tracker = IouTracker(min_iou=0.3, max_gap=2)
    # Two faces moving towards each other with overlapping boxes: matched by total overlap, ids kept.
    a = [[0, 0, 40, 40], [10, 0, 40, 40], [20, 0, 40, 40], [30, 0, 40, 40]]
    b = [[60, 5, 40, 40], [50, 5, 40, 40], [40, 5, 40, 40], [30, 5, 40, 40]]
    assert tracker.update([a[0], b[0]]) == [0, 1]
    for k in range(1, 4):
        assert tracker.update([b[k], a[k]]) == [1, 0]
    assert tracker.update([[40, 0, 40, 40]]) == [0]   # b missed for one frame
    assert tracker.update([[50, 0, 40, 40]]) == [0]   # ... two frames (= max_gap)
    assert tracker.update([[60, 0, 40, 40], [30, 5, 40, 40]]) == [0, 1]  # b back where it was: same id
    assert tracker.update([[200, 200, 30, 30]]) == [2]  # a new face: a new id
    for _ in range(3):
        tracker.update([[200, 200, 30, 30]])
    assert tracker.update([[60, 0, 40, 40]]) == [3]  # a missed for 3 > max_gap frames: its id has ended
    assert tracker.update([[200, 100, 30, 30]]) == [4]  # no overlap with any track (IoU < min_iou): new id


def test_smooth_is_an_ema_per_track():
    rows = pd.DataFrame({"filename": "v.mp4", "frame": [0, 0, 1, 1, 2], "track_id": [0, 1, 0, 1, 0],
                         "valence": [0.0, 1.0, 1.0, 1.0, 1.0], "arousal": 0.0,
                         **{p: 1 / 8 for p in PROBS}})
    rows.loc[[0, 1], "prob_Happy"] = [0.9, 0.125]
    out = smooth(rows, 0.5, CLASSES)
    np.testing.assert_allclose(out["smooth_valence"], [0, 1, 0.5, 1, 0.75])  # track 0: 0, 1, 1 -> 0, .5, .75
    np.testing.assert_allclose(out.loc[[0, 2, 4], "smooth_prob_Happy"], [0.9, 0.5125, 0.31875])
    assert out.loc[0, "smooth_expression"] == "Happy" and out.loc[4, "smooth_expression"] == "Happy"
    np.testing.assert_allclose(out["valence"], rows["valence"])  # raw values untouched


# --- predict.py on videos ------------------------------------------------------------------------
# This file's own `runs` (predict.py on videos), not conftest's training runs.
@pytest.fixture(scope="module")
def runs(trained, tmp_path_factory):
    """The same inputs predicted with and without --smooth: a video with two faces, a video without a
    face, and a group photo (the video's first frame)."""
    tmp = tmp_path_factory.mktemp("video")
    video = face_video(tmp / "two.mp4")
    empty = face_video(tmp / "empty.mp4", n=6, faces=0)
    cap = cv2.VideoCapture(str(video))
    group = tmp / "group.png"
    cv2.imwrite(str(group), cap.read()[1])
    cap.release()
    common = ["--checkpoint", trained, video, empty, group, "--detect_faces", "--batch_size", 8]
    assert run_predict(*common, "--out", tmp / "smooth.csv", "--smooth", 0.3, "--annotate", tmp / "ann") == 0
    assert run_predict(*common, "--out", tmp / "raw.csv") == 0
    return {"tmp": tmp, "video": str(video), "empty": str(empty), "group": str(group),
            "smooth": pd.read_csv(tmp / "smooth.csv"), "raw": pd.read_csv(tmp / "raw.csv")}


@pytest.mark.slow
def test_two_stable_tracks_kept_through_the_gap(runs):
    df = runs["raw"]
    video = df[df["filename"] == runs["video"]]
    assert video["frame"].nunique() == 30 and len(video) == 2 * 30 - (GAP[1] - GAP[0])
    assert sorted(video["track_id"].unique()) == [0, 1]
    upper = video["face_y"] < 60
    assert video.groupby("frame")["face_y"].apply(lambda y: (y < 60).sum()).eq(1).all()
    # Each face keeps its id in every frame, the lower one also after its three missing frames.
    assert video.loc[upper, "track_id"].nunique() == 1 and video.loc[~upper, "track_id"].nunique() == 1
    lower = video[~upper]
    assert sorted(set(range(30)) - set(lower["frame"])) == list(range(*GAP))
    # They did cross: the upper face moves right, the lower one left.
    assert video.loc[upper, "face_x"].is_monotonic_increasing and lower["face_x"].is_monotonic_decreasing
    assert video.loc[upper, "face_x"].iloc[-1] > lower["face_x"].iloc[-1]


@pytest.mark.slow
def test_group_photo_gives_every_face(runs, trained, tmp_path):
    group = runs["raw"][runs["raw"]["filename"] == runs["group"]]
    assert group["face_index"].tolist() == [0, 1] and group["track_id"].isna().all()
    assert group["expression"].notna().all() and group["face_y"].nunique() == 2
    assert run_predict("--checkpoint", trained, runs["group"], "--largest_face", "--out", tmp_path / "l.csv") == 0
    largest = pd.read_csv(tmp_path / "l.csv")
    assert len(largest) == 1 and largest.loc[0, "face_w"] == group["face_w"].max()


@pytest.mark.slow
def test_smoothing_keeps_raw_values_and_steadies_the_probabilities(runs):
    raw, smooth = runs["raw"], runs["smooth"]
    assert "smooth_prob_Happy" not in raw.columns  # default off: rows are what evaluation computes
    np.testing.assert_allclose(smooth[PROBS + ["valence", "arousal"]].to_numpy(float),
                               raw[PROBS + ["valence", "arousal"]].to_numpy(float), atol=1e-6)
    video = smooth[smooth["filename"] == runs["video"]]
    for _, track in video.groupby("track_id"):
        jumps = np.abs(np.diff(track[PROBS].to_numpy(), axis=0)).sum(axis=1).mean()
        smooth_jumps = np.abs(np.diff(track[["smooth_" + p for p in PROBS]].to_numpy(), axis=0)).sum(axis=1).mean()
        assert smooth_jumps < 0.6 * jumps, (smooth_jumps, jumps)
        np.testing.assert_allclose(track[["smooth_" + p for p in PROBS]].iloc[0], track[PROBS].iloc[0])
    top = np.array(CLASSES)[video[["smooth_" + p for p in PROBS]].to_numpy().argmax(axis=1)]
    assert (video["smooth_expression"] == top).all()
    assert smooth.loc[smooth["filename"] == runs["group"], "smooth_expression"].isna().all()  # images: no track


@pytest.mark.slow
def test_track_summary_and_timeline(runs):
    tmp, video = runs["tmp"], runs["raw"][runs["raw"]["filename"] == runs["video"]]
    summary = pd.read_csv(tmp / "raw_two_tracks.csv")
    # One face is seen in every frame, the other leaves for a gap (which id each gets is the detector's order).
    assert summary["track_id"].tolist() == [0, 1] and sorted(summary["frames"].tolist()) == [27, 30]
    np.testing.assert_allclose(summary[["first_s", "last_s"]].to_numpy(), [[0, 2.9], [0, 2.9]])
    for _, s in summary.iterrows():
        track = video[video["track_id"] == s["track_id"]]
        counts = track["expression"].value_counts()
        # Both CSVs hold values rounded to 4 decimals (0.5e-4 each): the summary's from the exact values.
        assert s["dominant_expression"] == counts.index[0]
        assert s["dominant_share"] == pytest.approx(counts.iloc[0] / s["frames"], abs=0.5e-4)
        assert s["valence_mean"] == pytest.approx(track["valence"].mean(), abs=1e-4)
        assert s["arousal_std"] == pytest.approx(track["arousal"].std(ddof=0), abs=1e-4)
        np.testing.assert_allclose(s[[f"mean_{p}" for p in PROBS]].astype(float), track[PROBS].mean(), atol=1e-4)
    for run in ("raw", "smooth"):
        png = cv2.imread(str(tmp / f"{run}_two_timeline.png"))
        assert png is not None and png.shape[0] > 400 and png.shape[1] > 600  # two tracks, two panels each
    # A video without a face: its rows (no predictions), an empty summary, a timeline saying so.
    empty = runs["raw"][runs["raw"]["filename"] == runs["empty"]]
    assert empty["frame"].tolist() == list(range(6)) and empty["expression"].isna().all()
    assert pd.read_csv(tmp / "raw_empty_tracks.csv").empty and cv2.imread(str(tmp / "raw_empty_timeline.png")) is not None


@pytest.mark.slow
def test_annotated_video_has_every_frame_and_both_tracks(runs):
    frames = []
    for path in (runs["tmp"] / "ann" / "two_annotated.mp4", runs["video"]):
        cap = cv2.VideoCapture(str(path))
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 30
        frames.append(cap.read()[1].astype(int))
        cap.release()
    video = runs["smooth"][runs["smooth"]["filename"] == runs["video"]]
    for _, face in video[video["frame"] == 0].iterrows():  # the left edge of each box, in its track's colour
        color = np.array(track_color(face["track_id"]))
        x, y, h = (int(face[c]) for c in ("face_x", "face_y", "face_h"))
        drawn, source = (f[y + h // 4:y + 3 * h // 4, x] for f in frames)
        assert (drawn.argmax(axis=1) == color.argmax()).mean() > 0.9  # mp4 blurs a thin line: its hue stays
        assert np.abs(drawn - source).mean() > 30
    assert cv2.imread(str(runs["tmp"] / "ann" / "group.png")).shape == (240, 320, 3)


# --- tracebacks and unclear errors --------------------------------------------------------------
def test_smooth_on_a_video_without_faces(trained, tmp_path):
    writer = cv2.VideoWriter(str(tmp_path / "wall.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 64))
    for _ in range(4):
        writer.write(np.full((64, 64, 3), 128, np.uint8))
    writer.release()
    r = run_here("predict.py", "--checkpoint", trained, tmp_path / "wall.mp4", "--detect_faces", "--smooth", 0.3,
                 "--out", tmp_path / "p.csv")
    assert r.returncode == 0 and "faces in 0 of 4" in r.stdout, r.stderr
    assert "smooth_expression" in pd.read_csv(tmp_path / "p.csv").columns


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
