"""fer/training/start.py: what a run starts from (pretrained weights, --weights, --init_from, the crop
template) and what a resume must be (the same run, into its own files).

The hostile cases (from the trust passes) each failed on the code before their fix: they check the exit
code, the one line that names the file or flag (no traceback), and that earlier outputs are unchanged.
"""
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from builders import TRAIN, one_error_line, run_here, snapshot, tiny_args, unfinished_copy

import fer.cli.train as TF
import fer.training.loop as TL
import fer.training.start as TI
import train_vggface2_resnet50 as T
from fer.data.dataset import crop_template


def test_training_records_the_template_and_refuses_align_without_landmarks(trained, demo, tmp_path):
    ckpt = torch.load(trained, weights_only=True)
    np.testing.assert_allclose(ckpt["crop_template"], crop_template(demo["train"])[0])
    df = pd.read_parquet(demo["train"]).assign(landmarks=None)
    df.attrs = pd.read_parquet(demo["train"]).attrs
    df.to_parquet(tmp_path / "bare.parquet")
    r = run_here("train_vggface2_resnet50.py", "--train_meta", tmp_path / "bare.parquet", "--val_meta", demo["val"],
                 "--align", "template", "--no_pretrained", "--arch", "resnet18", "--save_path", tmp_path / "m.pth")
    assert r.returncode == 1 and "--align template: no landmarks in" in r.stderr and "--detect_landmarks" in r.stderr
    assert not (tmp_path / "m.pth").exists()


# --- pretrained weights -------------------------------------------------------------------------
def test_missing_pretrained_file_names_it(demo, tmp_path, monkeypatch):
    def offline(*a, **k):
        raise OSError("no network")  # and nothing is downloaded
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    args = [a for a in tiny_args(demo, tmp_path, "--arch", "efficientnet_b0") if a != "--no_pretrained"]
    r = run_here("train_vggface2_resnet50.py", *args)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "put efficientnet_b0_rwightman-7f5810bc.pth (from https://" in r.stderr
    assert f"in {tmp_path / 'torch' / 'hub' / 'checkpoints'}/" in r.stderr


@pytest.mark.slow
def test_weights_flag_loads_any_family(tmp_path, capsys):
    import torchvision
    state = torchvision.models.get_model("efficientnet_b0").state_dict()  # with its 1000-way classifier
    torch.save(state, tmp_path / "eff.pth")
    model = TI.build_model(TF.get_args(["--arch", "efficientnet_b0", "--weights", str(tmp_path / "eff.pth")]), TL.Say(True))
    out = capsys.readouterr().out
    n = sum(1 for k in state if not k.startswith("classifier") and not k.endswith("num_batches_tracked"))
    assert f"loaded {n}/{n} backbone tensors (100.0%); 0 missing, 2 unexpected (ignored)" in out
    assert torch.equal(model.backbone.features[3][1].block[0][0].weight, state["features.3.1.block.0.0.weight"])
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "resnet.pth")
    with pytest.raises(TF.TrainError, match="none of its tensors fits a efficientnet_b0 backbone"):
        TI.build_model(TF.get_args(["--arch", "efficientnet_b0", "--weights", str(tmp_path / "resnet.pth")]), TL.Say(False))


# --- classes by name: 7- and 8-class heads, joint training, face boxes ----------------------------
@pytest.mark.slow
def test_init_from_another_dataset_reinitialises_the_head(trained, seven, demo, tmp_path):
    args = tiny_args(demo, tmp_path, "--epochs", 1, "--lr", 1e-30, "--weight_decay", 0, "--train_meta", seven["train"],
                     "--val_meta", seven["val"], "--init_from", trained)
    r = run_here("train_vggface2_resnet50.py", *args)  # TINY has --no_pretrained: two sources of weights
    assert r.returncode == 2 and "--init_from gives the starting weights" in r.stderr
    r = run_here("train_vggface2_resnet50.py", *[a for a in args if a != "--no_pretrained"])
    assert r.returncode == 0, r.stderr
    assert "expression head re-initialised" in r.stdout and "Contempt" in r.stdout
    before, after = (torch.load(p, weights_only=True)["model"] for p in (trained, tmp_path / "m_last.pth"))
    assert after["fc_cls.weight"].shape == (7, 512)
    for k in ("backbone.conv1.weight", "backbone.layer4.1.conv2.weight", "fc_reg.weight"):
        assert torch.equal(before[k], after[k]), k  # lr 1e-30 (0 is refused): the copied weights are still the checkpoint's


# --- a resume must be the same run ----------------------------------------------------------------
@pytest.fixture(scope="module")
def last_state(demo, tmp_path_factory):
    """A run of 2 epochs stopped by Ctrl-C after the first, to resume."""
    out = tmp_path_factory.mktemp("resume")
    real, calls = TL.train_one_epoch, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)
    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit) as e:
        mp.setattr(TL, "train_one_epoch", interrupted)
        T.main(tiny_args(demo, out, "--epochs", 2, "--steps_per_epoch", 1))
    assert e.value.code == 130
    return out


# --- 6. one line everywhere ---------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("case", ["no_scheduler", "no_train_state", "other_arch", "changed_flags", "best_not_last"])
def test_resume_must_be_the_same_run(demo, last_state, tmp_path, case):
    last = last_state / "m_last.pth"
    extra = []
    if case in ("no_scheduler", "no_train_state"):
        ckpt = torch.load(last, weights_only=True)
        del ckpt[{"no_scheduler": "scheduler", "no_train_state": "train_state"}[case]]
        last = tmp_path / "m_last.pth"
        torch.save(ckpt, last)
        extra = ["--save_path", tmp_path / "m.pth"]  # the copy's own run (another run's files: refused first)
    elif case == "other_arch":
        extra = ["--arch", "resnet34"]
    elif case == "changed_flags":
        extra = ["--lr", 0.5, "--epochs", 1]  # fewer epochs change the run; more extend it (test_loop.py)
    else:
        last = last_state / "m.pth"
    before = snapshot(last_state)
    r = run_here(TRAIN, *tiny_args(demo, last_state, "--epochs", 2, "--steps_per_epoch", 1, *extra,
                                     "--resume", last))
    needles = {"no_scheduler": ["field scheduler missing"], "no_train_state": ["field train_state missing"],
               "other_arch": ["field arch = resnet18", "--arch resnet34"],
               "changed_flags": ["--lr 0.0001 -> 0.5", "--epochs 2 -> 1"], "best_not_last": ["m.pth", "field"]}[case]
    one_error_line(r, *needles)
    assert snapshot(last_state) == before


@pytest.mark.slow
def test_resume_may_change_speed_flags(demo, last_state, tmp_path):
    run = shutil.copytree(last_state, tmp_path / "run")
    r = run_here(TRAIN, *tiny_args(demo, run, "--epochs", 2, "--steps_per_epoch", 1,
                                     "--num_workers", 1, "--prefetch_factor", 2, "--device", "cpu",
                                     "--resume", run / "m_last.pth"))
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout and "epoch 2/2" in r.stdout


# --- data loss ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_resume_never_continues_into_another_runs_files(demo, trained, tmp_path):
    other = tmp_path / "other.pth"  # a different finished run at --save_path
    shutil.copy(trained, other)
    (tmp_path / "other_history.csv").write_text("epoch,val_acc\n1,0.93\n")
    before = snapshot(tmp_path)
    last = trained.with_name("FER_resnet18_last.pth")
    args = tiny_args(demo, tmp_path, "--epochs", 1, "--resume", last, "--save_path", other)
    one_error_line(run_here(TRAIN, *args), "other.pth", "another run", "--overwrite")
    assert snapshot(tmp_path) == before
    r = run_here(TRAIN, *args, "--overwrite")  # the user said so
    assert r.returncode == 0 and "that run is complete" in r.stdout, r.stderr
    r = run_here(TRAIN, *tiny_args(demo, tmp_path, "--epochs", 1, "--resume", last, "--save_path", tmp_path / "new.pth"))
    assert r.returncode == 0, r.stderr  # an empty --save_path: nothing to replace


# --- found by the hostile pass over training ------------------------------------------------------
@pytest.mark.slow
def test_resume_into_another_save_path_keeps_the_best_checkpoint(demo, trained, tmp_path):
    """A resume into a new --save_path whose later epochs did not beat the earlier best ended with
    exit 0 naming a best checkpoint that was never written there."""
    last = unfinished_copy(trained, tmp_path / "src")
    new = tmp_path / "new" / "m.pth"
    r = run_here(TRAIN, *tiny_args(demo, tmp_path, "--epochs", 2, "--resume", last, "--save_path", new))
    assert r.returncode == 0, r.stderr
    assert new.read_bytes() == (tmp_path / "src" / trained.name).read_bytes()
    (tmp_path / "src" / trained.name).unlink()  # the best checkpoint is not beside the state: refused
    other = tmp_path / "other" / "m.pth"
    r = run_here(TRAIN, *tiny_args(demo, tmp_path, "--epochs", 2, "--resume", last, "--save_path", other))
    one_error_line(r, "--resume", trained.name, "not found")
    assert not other.parent.exists()
