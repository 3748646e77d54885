"""Every constant more than one part of the kit needs, in one place. Imports nothing.

Class order, image sizes, normalisation, face-crop geometry and the detector defaults: change one
here and indexing, training, evaluation, prediction and the export all follow.
"""
# The canonical class order of every index, head and report (AffectNet's codes 0-7).
CLASS_NAMES = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]
NUM_CLASSES = len(CLASS_NAMES)

# Inputs: side in pixels (every backbone's ImageNet size), the allowed range, and ImageNet normalisation.
IMG_SIZE = 224
IMG_SIZE_RANGE = (32, 4096)  # the backbones downsample 32x; larger inputs do not fit a GPU
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

VA_RANGE = (-1.0, 1.0)  # valence/arousal labels lie in [-1, 1]; predictions are clipped to it

# Face crops (AffectNet's CSV release, the detector's box in prediction): the box widened by this share
# of its larger side on every edge, since detector and annotation boxes are tight and AffectNet's own
# crops include forehead and chin.
FACE_MARGIN = 0.2

# The five landmarks of the crop template, left/right as seen in the picture, and their columns.
POINTS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
POINT_COLUMNS = [f"{p}_{c}" for p in POINTS for c in "xy"]

# Face detection (predict.py --detect_faces, eval --recrop detect, metadata_parallel.py --detect_landmarks).
DETECTORS = ("mtcnn", "haar")
ALIGNS = ("template", "box")
MIN_FACE = 40  # px: the smallest face looked for in a picture (--min_face)
FACE_THRESHOLD = 0.9  # MTCNN's last-stage face probability a detection needs (--face_threshold)

# Training loss: cross-entropy label smoothing (--label_smoothing; the kit's recipe has always used 0.1).
LABEL_SMOOTHING = 0.1

# --balanced_sampling --sampling_weights KIND: an image of a class of n_c images is drawn with weight n_c^-power,
# so the class comes up in proportion to n_c^(1 - power). inverse: every class equally often; sqrt: in proportion
# to the square root of its size (between the data's own frequencies and uniform).
SAMPLING_POWERS = {"inverse": 1.0, "sqrt": 0.5}

# A collapsed model: one class takes more than this share of the predictions (the console, the run record, the
# metrics and the report say so). A real classifier on a set of several classes stays far below it.
COLLAPSE_SHARE = 0.9

# Progress outside a terminal (a log file under nohup, SLURM, cron, a notebook): one plain line per step at most
# this often, with the rate and the time left (fer.trust.progress).
PROGRESS_LOG_SECONDS = 30
# Leakage guard at indexing (fer.data.leakage): two images are near duplicates when their 64-bit perceptual
# hashes (imagehash.phash) are at most NEAR_DUPLICATE_BITS apart (the candidates, found by multi-index
# hashing) AND their 256-bit pHashes (hash_size 16) at most NEAR_DUPLICATE_CONFIRM_BITS apart (the
# confirmation: different synthetic or aligned faces share a 64-bit pHash far more often than photos do).
# Measured on scikit-image's pictures and the demo faces (BENCHMARKS.md): JPEG re-encodings (quality 30-95)
# and resizes (0.5-2x) <= 6 / 30 bits (95th percentile); different demo faces: 64-bit down to 0, 256-bit >= 36.
NEAR_DUPLICATE_BITS = 8
NEAR_DUPLICATE_CONFIRM_BITS = 32
