"""Fine-tune a multitask ResNet (8 expressions + valence/arousal) on an indexed FER dataset.

    python train_vggface2_resnet50.py --train_meta metadata_train.parquet --val_meta metadata_val.parquet
    torchrun --nproc_per_node=4 train_vggface2_resnet50.py ...        # several GPUs, same flags
    python train_vggface2_resnet50.py ... --resume FER_resnet50_last.pth  # continue a stopped run

Backbones (--arch): ResNet, EfficientNet, ConvNeXt, ViT, Swin, RegNet, MobileNetV3 (torchvision).
Staged fine-tuning, with epochs numbered from 1 as in the epoch lines: epochs 1..--freeze_epochs train
only the backbone's last stage (ResNet: layer4), later epochs the last two (layer3 and layer4; the rest
stays frozen, weights and BatchNorm statistics alike), and from epoch --unfreeze_all_at on, everything.
Heads always train. Loss = cross-entropy (label smoothing 0.1: --label_smoothing, inverse-frequency class
weights) + 0.5 * MSE(valence, arousal). Mixed precision on CUDA (and bfloat16 on CPUs that have it). Optional:
--ema, --mixup/--cutmix, --warmup_epochs, --layer_decay, --balanced_sampling, --sam/--asam, and presets:
--recipe NAME (recipes/NAME.yaml; --config and the command line override it). An on/off flag is turned off
by --no_<flag> (--no_pretrained by --pretrained), e.g. over a --config.

The flags: fer/cli/train.py; the loop: fer/training/loop.py (train(args), also from a notebook).

Outputs, named after --save_path (default FER_<arch>.pth, e.g. FER_resnet50.pth):
    FER_<arch>.pth          best epoch by validation accuracy of the --best_on weights (weights + everything to use them)
    FER_<arch>_last.pth     full training state after the latest epoch, for --resume (a larger --epochs extends)
    FER_<arch>_history.csv  per-epoch metrics (raw and EMA);  FER_<arch>_curves.png  their plots
    FER_<arch>_run.json     where the run came from (flags, code, data fingerprints, times; fer/training/record.py)
    FER_<arch>_config.yaml  the flags it was given: --config FER_<arch>_config.yaml --save_path NEW.pth repeats
                            the run, and with more flags is the original command plus those flags
    FER_<arch>_tensorboard/ TensorBoard events, with --tensorboard
"""
import sys

from fer.cli.train import get_args, lock_run, preflight, stopped_before_training
from fer.trust import FERError

HANDLES_ERRORS = True  # main() reports errors itself (rank-aware under torchrun, the Ctrl-C hint), not run_main


def main(argv=None):
    args = get_args(argv, __doc__)
    try:
        preflight(args)  # paths: a mistake fails now, not after the imports below (seconds)
        lock = lock_run(args)  # one run per --save_path, for the run's life
        lock.__enter__()
    except (FERError, KeyboardInterrupt) as e:
        sys.exit(stopped_before_training(e, args, argv, __file__))
    try:
        try:
            from fer.training.loop import run_command  # the heavy imports, once the flags and paths are checked
        except KeyboardInterrupt as e:
            sys.exit(stopped_before_training(e, args, argv, __file__))
        code = run_command(args, argv, __file__)
    finally:
        lock.__exit__(None, None, None)
    sys.exit(code)


if __name__ == "__main__":
    main()
