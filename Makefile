# `make demo` and `make test` set everything up on a fresh machine: a virtual environment in .venv
# with the pinned requirements, then the job itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := runs/demo

.PHONY: demo sweep-demo test test-all bench clean-demo

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

# Synthetic AffectNet-style data -> index -> look at the augmentation -> train -> evaluate -> a second run
# compared with the first -> predict (whole images, then faces found by MTCNN and aligned onto the
# checkpoint's crop template), export.
# The demo trains the small resnet18 from random weights so that it finishes in a few CPU minutes;
# drop --arch/--no_pretrained and the small sizes for the real ResNet50 recipe (see README).
demo: $(STAMP)
	$(PY) make_demo_data.py --out data/demo --n 4000 --size 64
	$(PY) metadata_parallel.py --root data/demo --out_dir $(DEMO)
	$(PY) FER_transform.py --meta $(DEMO)/metadata_train.parquet --size 64 --out $(DEMO)/augmented_samples.png
	$(PY) train_vggface2_resnet50.py --train_meta $(DEMO)/metadata_train.parquet \
		--val_meta $(DEMO)/metadata_val.parquet --arch resnet18 --no_pretrained --img_size 64 \
		--batch_size 32 --epochs 6 --unfreeze_all_at 1 --lr 3e-3 --num_workers 1 \
		--save_path $(DEMO)/FER_resnet18.pth --overwrite --tensorboard
	$(PY) eval_resnet50.py --checkpoint $(DEMO)/FER_resnet18.pth --meta $(DEMO)/metadata_val.parquet \
		--out_dir $(DEMO) --save_predictions $(DEMO)/predictions_val.csv --overwrite --calibrate --audit_labels
	# A second, shorter run from the first one's config with a lower learning rate, and the two compared:
	# the run table (differing flags: epochs, lr) and the paired test on the same validation images.
	$(PY) train_vggface2_resnet50.py --config $(DEMO)/FER_resnet18_config.yaml --lr 1e-3 --epochs 2 \
		--save_path $(DEMO)/lr1e-3/FER_resnet18.pth --overwrite
	$(PY) compare_runs.py $(DEMO) --out $(DEMO)/runs_table.md
	$(PY) eval_resnet50.py --checkpoint $(DEMO)/lr1e-3/FER_resnet18.pth $(DEMO)/FER_resnet18.pth \
		--meta $(DEMO)/metadata_val.parquet --out_dir $(DEMO)/lr1e-3 --overwrite
	$(PY) predict.py --checkpoint $(DEMO)/FER_resnet18.pth data/demo/images/0.jpg data/demo/images/1.jpg \
		--out $(DEMO)/predictions_demo.csv --annotate $(DEMO)/annotated
	$(PY) predict.py --checkpoint $(DEMO)/FER_resnet18.pth data/demo/images/0.jpg data/demo/images/3.jpg \
		--detect_faces --min_face 24 --out $(DEMO)/predictions_demo_faces.csv --annotate $(DEMO)/annotated_faces
	$(PY) export_onnx.py --checkpoint $(DEMO)/FER_resnet18.pth --out $(DEMO)/FER_resnet18.onnx

# A 12-trial Optuna search (sweeps/demo_space.yaml) around a 3-epoch from-scratch run (sweeps/demo_base.yaml)
# on small demo data of its own (made once): a few CPU minutes; the median pruner stops some trials after an
# epoch or two. Every trial is a run folder in runs/sweep_demo/trial_NNNN/; the study is runs/sweep_demo/study.db,
# so a second `make sweep-demo` continues it (`make sweep-demo SWEEP_TRIALS=24` adds 12 trials).
SWEEP := runs/sweep_demo
SWEEP_TRIALS ?= 12
$(SWEEP)/index/metadata_train.parquet: | $(STAMP)
	$(PY) make_demo_data.py --out data/sweep_demo --n 400 --size 64
	$(PY) metadata_parallel.py --root data/sweep_demo --out_dir $(SWEEP)/index --quiet

sweep-demo: $(STAMP) $(SWEEP)/index/metadata_train.parquet
	$(PY) sweep.py --config sweeps/demo_base.yaml --space sweeps/demo_space.yaml --out $(SWEEP) --trials $(SWEEP_TRIALS)

# pytest exits 5 when it collects nothing: a suite that vanished is a failure, and is named as one.
# `make test`: the fast tests, under 3 minutes on 2 cores, every module of fer/ among them: all but those
# marked slow (real training, video, ONNX export, a script's whole run in a fresh interpreter: tests/conftest.py);
# `make test-all`: every test, the slow end-to-end ones too (what CI runs).
PYTEST = $(PY) -m pytest -q -n auto --dist loadfile
test: $(STAMP)
	$(PYTEST) -m "not slow" tests || { rc=$$?; [ $$rc -eq 5 ] && echo "error: pytest collected no tests"; exit $$rc; }

test-all: $(STAMP)
	$(PYTEST) tests || { rc=$$?; [ $$rc -eq 5 ] && echo "error: pytest collected no tests"; exit $$rc; }

bench: $(STAMP)
	$(PY) bench.py

clean-demo:
	rm -rf data/demo $(DEMO) data/sweep_demo $(SWEEP)
