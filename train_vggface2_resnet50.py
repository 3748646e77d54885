"""Fine-tune a multitask ResNet (8 expressions + valence/arousal) on an indexed FER dataset.

    python train_vggface2_resnet50.py --train_meta metadata_train.parquet --val_meta metadata_val.parquet
    torchrun --nproc_per_node=4 train_vggface2_resnet50.py ...        # several GPUs, same flags
    python train_vggface2_resnet50.py ... --resume FER_resnet50_last.pth  # continue a stopped run

Backbones (--arch): ResNet, EfficientNet, ConvNeXt, ViT, Swin, RegNet, MobileNetV3 (torchvision).
Staged fine-tuning, with epochs numbered from 1 as in the epoch lines: epochs 1..--freeze_epochs train
only the backbone's last stage (ResNet: layer4), later epochs the last two (layer3 and layer4; the rest
stays frozen, weights and BatchNorm statistics alike), and from epoch --unfreeze_all_at on, everything.
Heads always train. Loss = cross-entropy (label smoothing 0.1, inverse-frequency class weights) + 0.5 *
MSE(valence, arousal). Mixed precision on CUDA (and bfloat16 on CPUs that have it). Optional: --ema,
--mixup/--cutmix, --warmup_epochs, --layer_decay. An on/off flag is turned off by --no_<flag> (--no_pretrained
by --pretrained), e.g. over a --config.

The flags: fer/cli/train.py; the loop: fer/training/loop.py (train(args), also from a notebook).

Outputs, named after --save_path (default FER_resnet50.pth):
    FER_resnet50.pth          best epoch by validation accuracy (weights + everything to use them)
    FER_resnet50_last.pth     full training state after the latest epoch, for --resume
    FER_resnet50_history.csv  per-epoch metrics;  FER_resnet50_curves.png  their plots
    FER_resnet50_run.json     where the run came from (flags, code, data fingerprints, times; fer/training/record.py)
    FER_resnet50_config.yaml  the flags it was given: --config FER_resnet50_config.yaml repeats the run,
                              and with more flags is the original command plus those flags
    FER_resnet50_tensorboard/ TensorBoard events, with --tensorboard
"""
import sys

from fer.cli.train import get_args, preflight, stopped_before_training
from fer.trust import FERError

HANDLES_ERRORS = True  # main() reports errors itself (rank-aware under torchrun, the Ctrl-C hint), not run_main


def main(argv=None):
    args = get_args(argv, __doc__)
    try:
        preflight(args)  # paths: a mistake fails now, not after the imports below (seconds)
        from fer.training.loop import run_command  # the heavy imports, once the flags and paths are checked
    except (FERError, KeyboardInterrupt) as e:
        sys.exit(stopped_before_training(e, args, argv, __file__))
    sys.exit(run_command(args, argv, __file__))


if __name__ == "__main__":
    main()
