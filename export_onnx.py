"""Export a checkpoint to ONNX and check it against PyTorch in onnxruntime.

    python export_onnx.py --checkpoint FER_resnet50.pth --out FER_resnet50.onnx

Input `image`: N x 3 x S x S float32, RGB, ImageNet-normalised (any N). Outputs `logits` (N x classes) and
`valence_arousal` (N x 2, unclipped). Class names, image size, normalisation, input format and
which heads were trained (`heads_trained`: a model trained without valence/arousal labels still has
the output, but it means nothing) are in the model's metadata. After export the model runs in
onnxruntime on random input; the script fails if the largest difference from PyTorch exceeds --tolerance.
"""
from fer.cli import run_main
from fer.cli.export import get_args


def main(argv=None):
    args = get_args(argv, __doc__)
    from fer.inference.export import export_checkpoint  # the heavy imports, once the flags and paths are checked

    export_checkpoint(args)


if __name__ == "__main__":
    run_main(main)
