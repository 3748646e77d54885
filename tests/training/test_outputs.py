"""fer/training/outputs.py: the files of a run (curves, history), never silently replacing an earlier
run, and a full disk or an unusable --save_path in one line.

The hostile cases (from the trust passes) each failed on the code before their fix: they check the exit
code, the one line that names the file or flag (no traceback), and that earlier outputs are unchanged.
"""
import math

import pytest
from builders import TRAIN, fill_disk, one_error_line, run_here, snapshot, tiny_args

import fer.training.outputs as TO


# --- curves ----------------------------------------------------------------------------------------
def test_curves_classification_only_whole_epochs(tmp_path, saved_figures):
    from fer.trust import staged_outputs
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1 / e, "train_acc": e / 9, "val_acc": e / 10,
                "val_rmse": math.nan, "val_rmse_valence": math.nan, "val_rmse_arousal": math.nan} for e in (1, 2, 3)]
    paths = {"history": tmp_path / "h.csv", "curves": tmp_path / "c.png"}
    with staged_outputs() as stage:
        TO.write_history(history, paths, stage)
    fig = saved_figures[-1]
    assert fig["titles"] == ["loss", "accuracy"]  # no empty RMSE panel
    for ticks in fig["xticks"]:
        assert ticks and all(t.lstrip("−-").isdigit() for t in ticks), ticks  # whole epochs only
    for ax, legend in zip(fig["axes"], fig["legends"]):  # below the axes: it hides no point
        box, area = legend.get_window_extent(), ax.get_window_extent()
        assert box.y1 <= area.y0
        assert len(legend.get_texts()) == len(ax.get_lines())


# --- 1. nothing that exists is destroyed by a run that fails ------------------------------------
@pytest.mark.slow
def test_training_on_a_full_disk_is_one_line(demo, mount):
    disk = mount("1m", fill=lambda d: fill_disk(d, leave=64 * 1024))
    before = snapshot(disk)
    r = run_here(TRAIN, *tiny_args(demo, disk, "--epochs", 1))
    one_error_line(r, "no space left on device writing", disk)
    assert snapshot(disk) == before


# --- 2. a new training run never silently replaces an earlier run --------------------------------
def test_training_refuses_to_replace_an_earlier_run(demo, trained):
    folder = trained.parent
    before = snapshot(folder)
    r = run_here(TRAIN, *tiny_args(demo, folder, "--epochs", 1, "--save_path", trained))
    one_error_line(r, trained, "--resume", "FER_resnet18_last.pth", "--overwrite")
    assert snapshot(folder) == before


@pytest.mark.slow
def test_overwrite_replaces_an_earlier_run(demo, tmp_path):
    r = run_here(TRAIN, *tiny_args(demo, tmp_path, "--epochs", 1, "--steps_per_epoch", 1))
    assert r.returncode == 0, r.stderr
    (tmp_path / "m_history.csv").write_text("stale")
    r = run_here(TRAIN, *tiny_args(demo, tmp_path, "--epochs", 1, "--steps_per_epoch", 1, "--overwrite"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m_history.csv").read_text().startswith("epoch,")


# --- 5. bad paths and flags fail in the first second --------------------------------------------
@pytest.mark.parametrize("case", ["parent_is_file", "is_folder", "read_only"])
def test_unusable_save_path_fails_before_training(demo, tmp_path, mount, case):
    if case == "parent_is_file":
        (tmp_path / "file").write_text("x")
        save = tmp_path / "file" / "m.pth"
    elif case == "is_folder":
        save = tmp_path / "m.pth"
        save.mkdir()
    else:
        save = mount("64k", ro=True) / "m.pth"
    r = run_here(TRAIN, *tiny_args(demo, tmp_path, "--epochs", 1, "--save_path", save))
    one_error_line(r, "--save_path", {"parent_is_file": "is a file", "is_folder": "is a folder",
                                      "read_only": "not writable"}[case])
    assert "epoch" not in r.stdout
