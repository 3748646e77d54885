"""fer/training/record.py: the run record, TensorBoard events, and the data fingerprints a resume checks."""
import json

import pytest
import torch
from builders import TRAIN, run_here, tiny_args, unfinished_copy

from fer.data.dataset import FERDataset, data_record
from fer.model.checkpoint import weights_fingerprint
from fer.training.record import RunRecord
from fer.trust import FERError


# --- five tiny runs: two that differ in --lr, three that differ only in --seed -------------------------
@pytest.mark.slow
def test_run_record(runs, demo):
    record = json.loads((runs / "lr_a" / "m_run.json").read_text())
    last = torch.load(runs / "lr_a" / "m_last.pth", weights_only=True)
    best = torch.load(runs / "lr_a" / "m.pth", weights_only=True)
    assert last["run"] == record == best["run"]  # one epoch: the best checkpoint holds the final record
    assert record["command"].startswith("train_vggface2_resnet50.py --train_meta") and "--lr 0.001" in record["command"]
    assert record["args"]["lr"] == 1e-3 and record["epochs"] == 1 and record["best_epoch"] == 1
    assert record["best"]["val_acc"] == best["metrics"]["val_acc"]
    assert {"val_f1_macro", "val_ccc_valence", "val_ccc_arousal"} <= set(record["best"])
    assert record["wall_time_s"] > 0 and record["img_per_s"] > 0 and record["started"] <= record["ended"]
    assert record["git"] == "not a git checkout" or len(record["git"]["commit"]) == 40
    assert set(record["versions"]) == {"python", "torch", "torchvision", "albumentations", "numpy"}
    assert record["device"]["type"] == "cpu" and record["world_size"] == 1 and record["precision"] == "float32"
    (train,) = record["data"]["train"]
    ds = FERDataset(demo["train"], size=32, verbose=False)
    assert train["rows"] == len(ds) == sum(train["rows_per_class"].values())
    assert train["fingerprint"] == data_record(ds)[0]["fingerprint"]
    assert record["checkpoint_fingerprint"] == weights_fingerprint(best["model"])
    assert record["outputs"]["history"] == "m_history.csv" and record["outputs"]["tensorboard"] == "m_tensorboard"


@pytest.mark.slow
def test_tensorboard_events(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(runs / "lr_a" / "m_tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"step/train_loss", "step/lr", "loss/train", "loss/val", "accuracy/val", "rmse/val", "ccc/val_valence",
            "speed/img_per_s", "speed/data_wait_share"} <= tags
    assert [e.value for e in events.Scalars("step/lr")] == pytest.approx([1e-3])
    assert events.Scalars("accuracy/val")[0].value == pytest.approx(
        json.loads((runs / "lr_a" / "m_run.json").read_text())["best"]["val_acc"])
    assert not (runs / "lr_b" / "m_tensorboard").exists()


@pytest.mark.slow
def test_tensorboard_folder_of_an_earlier_run_is_not_mixed_in(demo, runs, tmp_path):
    (tmp_path / "tb").mkdir()
    for f in (runs / "lr_a" / "m_tensorboard").glob("events.out.tfevents.*"):
        (tmp_path / "tb" / f.name).write_bytes(f.read_bytes())
    r = run_here("train_vggface2_resnet50.py", *tiny_args(demo, tmp_path, "--tensorboard", tmp_path / "tb"))
    assert r.returncode == 1 and "events.out.tfevents" in r.stderr and "--overwrite" in r.stderr
    assert not (tmp_path / "m.pth").exists()


# --- a resume sees the same data ------------------------------------------------------------------
@pytest.mark.slow
def test_resume_refuses_changed_data(runs):
    record = json.loads((runs / "lr_a" / "m_run.json").read_text())
    data = json.loads(json.dumps(record["data"]))
    data["train"][0]["fingerprint"] = "f" * 64
    args = type("Args", (), {})()
    with pytest.raises(FERError, match="rows changed since the run started"):
        RunRecord(args, "x", torch.device("cpu"), 1, "float32", data, {}, previous=record)


# --- found by the hostile pass over training ------------------------------------------------------
@pytest.mark.slow
def test_resume_into_another_save_path_records_its_own_file_names(demo, trained, tmp_path):
    """The run record of a resume into another --save_path kept the first session's file names, so
    compare_runs.py --plot read (or missed) the history of whatever run had those names there."""
    import json

    last = unfinished_copy(trained, tmp_path / "src", best_acc=-1.0)
    new = tmp_path / "new" / "x.pth"
    r = run_here(TRAIN, *tiny_args(demo, tmp_path, "--epochs", 2, "--resume", last, "--save_path", new))
    assert r.returncode == 0, r.stderr
    outputs = json.loads((tmp_path / "new" / "x_run.json").read_text())["outputs"]
    assert outputs["history"] == "x_history.csv" and outputs["best"] == "x.pth", outputs


# --- the record on its own, without a training run ------------------------------------------------
def test_a_record_is_strict_json_and_a_resume_continues_it(tmp_path):
    """The run record without a training run: NaN metrics are null in the file, a resume keeps the run's
    start and adds a session under its own file names, and refuses rows that changed."""
    import argparse

    from fer.training.record import RunRecord, TensorBoardLog, run_record_path, write_json

    args = argparse.Namespace(lr=1e-3, epochs=2, seed=0)
    data = {"train": [{"path": "t.parquet", "fingerprint": "a" * 64}], "val": [{"path": "v.parquet", "fingerprint": "b" * 64}]}
    row = {"epoch": 1, "val_acc": 0.5, "val_ccc_valence": float("nan"), "img_per_s": 100.0, "train_loss": 1.0}
    first = RunRecord(args, "train_vggface2_resnet50.py --lr 0.001", torch.device("cpu"), 1, "float32", data,
                      {"best": "m.pth"})
    record = first.update({"epoch": 1, "history": [row]})
    assert record["epochs"] == record["best_epoch"] == 1 and record["img_per_s"] == 100.0
    assert sorted(record["best"]) == ["val_acc", "val_ccc_valence"] and record["device"]["type"] == "cpu"
    path = run_record_path(tmp_path / "m.pth")
    assert path == tmp_path / "m_run.json"
    write_json(record, path)
    saved = json.loads(path.read_text())  # strict JSON: NaN is null
    assert saved["best"] == {"val_acc": 0.5, "val_ccc_valence": None} and saved["args"]["lr"] == 1e-3
    resumed = RunRecord(args, "train_vggface2_resnet50.py --resume m_last.pth", torch.device("cpu"), 1, "float32", data,
                        {"best": "x.pth"}, previous=json.loads(path.read_text()))
    assert resumed.record["started"] == saved["started"] and len(resumed.record["sessions"]) == 2
    assert resumed.record["sessions"][1]["command"].endswith("--resume m_last.pth")
    assert resumed.record["outputs"] == {"best": "x.pth"}
    changed = json.loads(json.dumps(data))
    changed["val"][0]["fingerprint"] = "c" * 64
    with pytest.raises(FERError, match="val v.parquet: its rows changed since the run started"):
        RunRecord(args, "x", torch.device("cpu"), 1, "float32", changed, {}, previous=json.loads(path.read_text()))
    TensorBoardLog(None).epoch(row, [1.0], 0)  # without --tensorboard: nothing is written, no folder is made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m_run.json"]


def test_the_best_epoch_is_the_best_on_weights_and_a_collapse_is_named():
    """Issue 26: with --best_on ema the record's best epoch and `best` are the EMA weights' (they were the raw
    weights' val_acc); a best epoch whose predictions are (almost) one class is recorded as a collapse."""
    import argparse

    from fer.constants import COLLAPSE_SHARE

    data = {"train": [], "val": []}
    rows = [{"epoch": 1, "val_acc": 0.9, "ema_val_acc": 0.5, "val_top_class": "Happy", "val_top_share": 0.3,
             "ema_val_top_class": "Happy", "ema_val_top_share": 0.95, "img_per_s": 1.0},
            {"epoch": 2, "val_acc": 0.6, "ema_val_acc": 0.7, "val_top_class": "Sad", "val_top_share": 0.4,
             "ema_val_top_class": "Sad", "ema_val_top_share": 0.97, "img_per_s": 1.0}]
    ema = RunRecord(argparse.Namespace(best_on="ema"), "x", torch.device("cpu"), 1, "float32", data, {})
    record = ema.update({"epoch": 2, "history": rows})
    assert record["best_on"] == "ema" and record["best_epoch"] == 2 and record["best"]["val_acc"] == 0.7
    assert record["best_raw"]["val_acc"] == 0.6 and record["best_ema"]["val_acc"] == 0.7
    assert record["collapse"] == {"class": "Sad", "share": 0.97, "threshold": COLLAPSE_SHARE, "epoch": 2}
    raw = RunRecord(argparse.Namespace(best_on="raw"), "x", torch.device("cpu"), 1, "float32", data, {})
    record = raw.update({"epoch": 2, "history": rows})
    assert record["best_epoch"] == 1 and record["best"]["val_acc"] == 0.9 and record["collapse"] is None
