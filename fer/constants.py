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
