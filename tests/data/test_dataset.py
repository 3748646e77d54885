"""fer/data/dataset.py: FERDataset's samples, the rows it keeps and drops (and says so), --root for a
moved dataset, face boxes, the crop template, row fingerprints, rows counted twice.

The hostile cases (from the trust passes) each failed on the code before their fix: they check the exit
code, the one line that names the file or flag (no traceback), and that earlier outputs are unchanged.
"""
import os
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from builders import TRAIN, one_error_line, run_here, tiny_args

from fer.constants import FACE_MARGIN
from fer.data import demo as make_demo_data
from fer.data import index
from fer.data import index as mp
from fer.data.dataset import FERDataError, FERDataset, crop_template, data_record, images_dir_of, integer_labels, load_image
from fer.data.faces import five_from_68, warp
from fer.data.transforms import build_transforms
from fer.trust import FERError


# --- dataset and transforms ---------------------------------------------------------------------
def test_dataset_sample(demo):
    ds = FERDataset(demo["train"], train=True, size=32, verbose=False)
    s = ds[0]
    assert s["image"].shape == (3, 32, 32) and s["image"].dtype == torch.float32
    assert s["y_cls"].dtype == torch.int64 and 0 <= int(s["y_cls"]) <= 7
    assert s["y_reg"].dtype == torch.float32 and s["y_reg"].shape == (2,)
    # Seeded augmentation is reproducible, and differs between seeds.
    assert torch.equal(ds[(0, 11)]["image"], ds[(0, 11)]["image"])
    assert not torch.equal(ds[(0, 11)]["image"], ds[(0, 12)]["image"])


def test_dataset_filters_and_reports(tmp_path, demo, capsys):
    df = pd.read_parquet(demo["all"])
    df.loc[0, "valence"] = -2.0
    df.loc[1, "arousal"] = np.nan
    df.loc[2, "expression"] = 10
    path = tmp_path / "m.parquet"
    mp.write_parquet(df, path)
    ds = FERDataset(path, train=False, size=32)  # rows without valence/arousal stay: no regression target
    assert len(ds) == 63 and np.isnan(ds.va[ds.filenames.index(df.loc[0, "filename"])][0])
    name = df.loc[2, "filename"]
    assert f"kept 63/64 rows; dropped 1 labels outside 0-7, e.g. {name} (10)" in capsys.readouterr().out
    ds = FERDataset(path, train=False, size=32, require_va=True)
    assert len(ds) == 61
    assert f"kept 61/64 rows; dropped 1 labels outside 0-7, e.g. {name} (10); dropped 2 rows without " \
           f"valence/arousal, e.g. {df.loc[0, 'filename']}" in capsys.readouterr().out


def test_dataset_from_any_working_directory(demo, tmp_path, monkeypatch):
    moved = tmp_path / "elsewhere" / "val.parquet"
    moved.parent.mkdir()
    shutil.copy(demo["val"], moved)
    monkeypatch.chdir(tmp_path)
    ds = FERDataset(moved, train=False, size=32, verbose=False)
    assert ds[0]["image"].shape == (3, 32, 32)


def test_dataset_explicit_root(demo, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(demo["root"], copy)
    ds = FERDataset(demo["val"], train=False, size=32, root=copy, verbose=False)
    assert str(ds.path(0)).startswith(str(copy / "images"))
    assert ds[0]["image"].shape == (3, 32, 32)


@pytest.mark.parametrize("content,why", [(None, "file not found"), (b"", "empty file"),
                                         (b"abc", "cannot be decoded")])
def test_bad_image_names_file(tmp_path, content, why):
    path = tmp_path / "face.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(FERDataError, match=why) as e:
        load_image(path)
    assert "face.jpg" in str(e.value)


def test_missing_metadata_columns(tmp_path):
    path = tmp_path / "bad.parquet"
    pd.DataFrame({"filename": ["a.jpg"]}).to_parquet(path)
    with pytest.raises(FERDataError, match="missing column.*expression"):
        FERDataset(path)


# --- faces in the wild: landmarks, the crop template ----------------------------------------------
def test_template_of_an_affectnet_index_is_the_mean_of_its_landmarks(tmp_path):
    """Both AffectNet layouts: the .npy crops (landmarks in the crop's pixels) and the CSV release
    (landmarks in the full photo, the crop is the face box with FACE_MARGIN)."""
    npy = make_demo_data.make_dataset(tmp_path / "npy", n=24, size=48, seed=3, progress=False)
    df, _ = index.build_index(npy / "images", npy / "annotations", workers=1, progress=False)
    index.write_parquet(df, tmp_path / "npy.parquet")
    expected = []
    for name in df["filename"]:
        lm = np.load(npy / "annotations" / name.replace(".jpg", "_lnd.npy")).astype(float).reshape(68, 2)
        five = [lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]]
        expected.append((np.array(five) + 0.5) / 48)
    template, n = crop_template(tmp_path / "npy.parquet")
    assert n == 24
    np.testing.assert_allclose(template, np.mean(expected, 0), atol=1e-6)

    csv = make_demo_data.make_dataset(tmp_path / "csv", n=24, size=48, seed=3, fmt="affectnet_csv", progress=False)
    assert run_here("metadata_parallel.py", "--root", csv, "--out_dir", tmp_path / "csv_index", "--quiet").returncode == 0
    table = pd.read_csv(csv / "training.csv")
    table = table[table["expression"] <= 7]
    expected = []
    for _, r in table.iterrows():
        lm = np.array(r["facial_landmarks"].split(";"), float).reshape(68, 2)
        h, w = cv2.imread(str(csv / "Manually_Annotated_Images" / r["subDirectory_filePath"])).shape[:2]
        m = FACE_MARGIN * max(r["face_width"], r["face_height"])
        x0, y0 = max(0, round(r["face_x"] - m)), max(0, round(r["face_y"] - m))
        x1, y1 = min(w, round(r["face_x"] + r["face_width"] + m)), min(h, round(r["face_y"] + r["face_height"] + m))
        five = np.array([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])
        expected.append((five - (x0, y0) + 0.5) / (x1 - x0, y1 - y0))
    template, n = crop_template(tmp_path / "csv_index" / "metadata_train.parquet")
    assert n == len(table)
    np.testing.assert_allclose(template, np.mean(expected, 0), atol=1e-6)
    # The training crop of the demo faces puts them where the template says: the same framing in both layouts.
    np.testing.assert_allclose(template, crop_template(tmp_path / "npy.parquet")[0], atol=0.08)


def test_dataset_warps_onto_the_template(demo):
    """Training's --align template: FERDataset warps each image by its landmarks before the transforms."""
    template = np.array(crop_template(demo["train"])[0])
    ds = FERDataset(demo["train"], train=False, size=48, template=template, verbose=False)
    plain = FERDataset(demo["train"], train=False, size=48, verbose=False)
    assert ds.unaligned == 0
    rgb = cv2.cvtColor(cv2.imread(ds.paths[0]), cv2.COLOR_BGR2RGB)
    lm = np.stack(pd.read_parquet(demo["train"])["landmarks"])[0]
    expected = build_transforms(False, 48)(image=warp(rgb, five_from_68(lm), template, 48))["image"]
    torch.testing.assert_close(ds[0]["image"], expected)
    assert not torch.equal(ds[0]["image"], plain[0]["image"])


# --- fingerprints of the rows used ----------------------------------------------------------------
def test_fingerprint_follows_rows_not_bytes(demo, tmp_path):
    df = pd.read_parquet(demo["val"])
    same = tmp_path / "same.parquet"
    df[df.columns[::-1]].assign(unused=1).to_parquet(same)  # other bytes, the same rows
    changed = tmp_path / "changed.parquet"
    df.assign(valence=df["valence"].where(df.index != df.index[0], 0.123)).to_parquet(changed)
    fp = [data_record(FERDataset(p, train=False, size=32, verbose=False))[0]["fingerprint"]
          for p in (demo["val"], same, changed)]
    assert fp[0] == fp[1] != fp[2]
    two = data_record(FERDataset([demo["train"], demo["val"]], size=32, verbose=False))
    assert [d["fingerprint"] for d in two] == [data_record(FERDataset(p, size=32, verbose=False))[0]["fingerprint"]
                                               for p in (demo["train"], demo["val"])]


# --- classes by name: 7- and 8-class heads, joint training, face boxes ----------------------------
def test_face_box_is_cropped_with_the_margin(demo, tmp_path):
    df = pd.read_parquet(demo["val"]).iloc[:2].copy()
    photo = np.zeros((120, 160, 3), np.uint8)
    face = load_image(demo["root"] / "images" / df["filename"].iloc[0])
    photo[40:72, 70:102] = face  # a 32 px face inside a larger picture
    cv2.imwrite(str(tmp_path / "photo.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    df["filename"] = ["photo.png", "photo.png"]
    df["face_x"], df["face_y"], df["face_w"], df["face_h"] = [70.0, np.nan], [40.0, np.nan], [32.0, 32], [32.0, 32]
    df.to_parquet(tmp_path / "m.parquet")
    ds = FERDataset(tmp_path / "m.parquet", train=False, size=32, root=tmp_path, verbose=False)
    m = round(FACE_MARGIN * 32)
    expected = build_transforms(False, 32)(image=photo[40 - m:72 + m, 70 - m:102 + m])["image"]
    assert torch.equal(ds[0]["image"], expected)
    whole = build_transforms(False, 32)(image=photo)["image"]
    assert torch.equal(ds[1]["image"], whole)  # no box: the whole image


# --- moving data --------------------------------------------------------------------------------
def test_a_moved_dataset_says_so_and_root_finds_it(demo, moved):
    with pytest.raises(FERDataError, match=r"records the images folder .*old_place.*no longer exists.*--root"):
        FERDataset(moved["val"], train=False, size=32, verbose=False)
    ds = FERDataset(moved["val"], train=False, size=32, root=demo["root"], verbose=False)  # <root>/images
    assert len(ds) == 16 and all(map(lambda p: __import__("os").path.isfile(p), ds.paths))


def test_root_finds_an_images_folder_below_the_dataset_folder(tmp_path):
    """RAF-DB keeps its images in Image/aligned/: --root is the dataset folder, found by the recorded path."""
    (tmp_path / "new" / "basic" / "Image" / "aligned").mkdir(parents=True)
    (tmp_path / "new" / "basic" / "Image" / "aligned" / "train_0001_aligned.jpg").write_bytes(b"x")
    df = pd.DataFrame({"filename": ["train_0001_aligned.jpg"]})
    df.attrs["images_dir"] = "/old/RAF-DB/basic/Image/aligned"
    basic = tmp_path / "new" / "basic"
    assert images_dir_of(df, "m.parquet", basic) == basic / "Image" / "aligned"


# --- 3. no non-finite or out-of-range value reaches a model -------------------------------------
def test_dataset_rejects_bad_labels_and_va(demo, tmp_path, capsys):
    df = pd.read_parquet(demo["val"])
    df["expression"] = df["expression"].astype(float)
    df.loc[0, "expression"] = 3.5
    df.loc[1, "expression"] = np.nan
    df.loc[3, "valence"] = np.inf
    df.loc[4, "arousal"] = 1.7
    df.loc[5, "valence"] = -2.0  # AffectNet's "none": kept, without a regression target
    df.loc[6, "valence"] = np.nan
    bad = df.iloc[[0, 1, 3, 4]]["filename"].tolist()
    df.to_parquet(tmp_path / "m.parquet")
    ds = FERDataset(tmp_path / "m.parquet", train=False, size=32, root=demo["root"])
    out = capsys.readouterr().out
    assert len(ds) == len(df) - 4 and not set(bad) & set(ds.filenames)
    assert ds.dropped == {"labels that are not whole numbers": 2, "valence/arousal not a finite number in [-1, 1]": 2}
    assert bad[0] in out and "3.5" in out and bad[2] in out and "inf" in out
    kept = {f: va for f, va in zip(ds.filenames, ds.va)}
    assert np.isnan(kept[df.loc[5, "filename"]][0]) and np.isnan(kept[df.loc[6, "filename"]][0])
    assert np.isfinite(ds.va[~np.isnan(ds.va)]).all()


def test_string_and_complex_labels_are_not_labels(demo, tmp_path):
    df = pd.read_parquet(demo["val"])
    df["expression"] = df["expression"].astype(str)  # "3": a parquet written by another tool
    df.to_parquet(tmp_path / "m.parquet")
    ds = FERDataset(tmp_path / "m.parquet", train=False, size=32, verbose=False)
    assert len(ds) == 0 and ds.dropped == {"labels that are not whole numbers": len(df)}
    labels, ok = integer_labels(pd.Series([1 + 1j, 2.0, True, "4", 5], dtype=object))
    assert ok.tolist() == [False, True, False, False, True] and labels[[1, 4]].tolist() == [2, 5]
    r = run_here(TRAIN, "--train_meta", tmp_path / "m.parquet", "--val_meta", demo["val"],
                   *tiny_args(demo, tmp_path / "t")[4:])
    one_error_line(r, "m.parquet", "no label in the expression column is a whole number", "'")


# --- silent wrong results -----------------------------------------------------------------------
def test_rows_are_never_counted_twice(trained, demo, tmp_path):
    one_error_line(run_here("eval_resnet50.py", "--checkpoint", trained, "--meta", demo["val"], demo["val"],
                            "--out_dir", tmp_path, "--num_workers", 0), "given twice")
    one_error_line(run_here("eval_resnet50.py", "--checkpoint", trained, "--meta", demo["all"], demo["val"],
                            "--out_dir", tmp_path, "--num_workers", 0), "listed more than once")
    for val in (demo["train"], demo["all"]):  # the same file, or overlapping rows
        r = run_here(TRAIN, *tiny_args(demo, tmp_path, "--epochs", 1, "--val_meta", val))
        one_error_line(r, "in both training (--train_meta) and validation (--val_meta)")
    assert not list(tmp_path.glob("m*"))


# --- found by the hostile pass over indexing and datasets -----------------------------------------
def test_a_missing_label_in_a_nullable_int_column_is_a_dropped_row(demo, tmp_path):
    """An index written by pandas with a nullable Int64 expression column holding <NA> ended in a
    ValueError traceback (to_numpy(int64) of a missing value) in training, evaluation and the grid."""
    from fer.data.dataset import FERDataset

    df = pd.read_parquet(demo["val"])
    attrs = dict(df.attrs)
    df["expression"] = df["expression"].astype("Int64")
    df.loc[0, "expression"] = pd.NA
    df.attrs = attrs
    df.to_parquet(tmp_path / "m.parquet")
    ds = FERDataset(tmp_path / "m.parquet", train=False, size=32, verbose=False)
    assert len(ds) == len(df) - 1 and ds.dropped == {"labels that are not whole numbers": 1}
    assert df["filename"].iloc[0] not in ds.filenames


# --- trust rule 1 (issue 25) at loading: training, evaluation, FER_transform read inside the root only ----
def _index_with_row(demo, tmp_path, name):
    df = pd.read_parquet(demo["val"])
    df.loc[0, "filename"] = name
    out = tmp_path / "metadata_val.parquet"
    index.write_parquet(df, out)
    return out


@pytest.mark.parametrize("how", ["absolute", "climbs", "link"])
def test_rule1_rows_outside_the_root_are_refused_at_loading(demo, tmp_path, how):
    secret = tmp_path / "private.jpg"
    shutil.copyfile(next((demo["root"] / "images").iterdir()), secret)
    name = {"absolute": str(secret), "climbs": os.path.relpath(secret, demo["root"] / "images"),
            "link": "link_out.jpg"}[how]
    if how == "link":
        (demo["root"] / "images" / "link_out.jpg").symlink_to(secret)
    try:
        meta = _index_with_row(demo, tmp_path, name)
        with pytest.raises(FERError, match=r"row 0 .*outside the dataset root"):
            FERDataset(meta, train=False, size=32, verbose=False)
        ds = FERDataset(meta, train=False, size=32, verbose=False, allow_outside_root=True)
        assert ds.paths[0] == str(secret)
        r = run_here("FER_transform.py", "--meta", meta, "--out", tmp_path / "g.png", "--n", 2)
        one_error_line(r, "outside the dataset root", "--allow_outside_root")
        assert not (tmp_path / "g.png").exists()
    finally:
        (demo["root"] / "images" / "link_out.jpg").unlink(missing_ok=True)


@pytest.mark.slow
def test_rule1_training_and_evaluation_refuse_an_index_reaching_outside(demo, trained, tmp_path):
    secret = tmp_path / "private.jpg"
    shutil.copyfile(next((demo["root"] / "images").iterdir()), secret)
    meta = _index_with_row(demo, tmp_path, str(secret))
    r = run_here("eval_resnet50.py", "--checkpoint", trained, "--meta", meta, "--out_dir", tmp_path / "ev")
    one_error_line(r, "row 0", "outside the dataset root")
    r = run_here("train_vggface2_resnet50.py", *tiny_args(demo, tmp_path / "t", "--val_meta", meta,
                                                          "--save_path", tmp_path / "t" / "m.pth"))
    one_error_line(r, "row 0", "outside the dataset root")
    assert not (tmp_path / "t" / "m.pth").exists()
