"""Compute reference face mesh landmarks with MediaPipe's own FaceMesh.

This is a standalone tool, not part of the ``deepfake_mlops`` package. Its output,
``tests/fixtures/mediapipe_landmarks.json``, is what the project's PyTorch conversion of
``face_landmark.tflite`` is tested against.

It must run in its own virtual environment: mediapipe 0.10.21 needs numpy<2 and
protobuf<5, which clash with the project. mediapipe's declared dependencies jax, jaxlib,
sentencepiece and sounddevice are not needed by ``mp.solutions.face_mesh``, so mediapipe
is installed with ``--no-deps`` plus the minimal set it imports. From the project root::

    python3 -m venv /tmp/mpref
    /tmp/mpref/bin/pip install "numpy<2" "protobuf>=4.25.3,<5" absl-py "attrs>=19.1.0" \\
        "flatbuffers>=2.0" "opencv-contrib-python<4.12" "matplotlib<3.10" "av==13.1.0"
    /tmp/mpref/bin/pip install --no-deps mediapipe==0.10.21
    /tmp/mpref/bin/python tools/mediapipe_landmarks_reference.py \\
        --data ../shared/datasets --out tests/fixtures/mediapipe_landmarks.json

(``pip check`` will then complain about the missing jax/jaxlib/sentencepiece/sounddevice;
that is expected.) The PyAV version does not matter: h264 decoding is bit-exact.

The videos are the same as in ``tools/mediapipe_reference.py``. For every video one frame
is taken, the middle one, at index ``round((n - 1) / 2)`` where n is the number of frames
a full PyAV decode yields. The RGB frame (no rotation applied) goes through a fresh
``FaceMesh`` (so that frames are processed independently) with ``static_image_mode=True``,
``max_num_faces=1``, ``refine_landmarks=False`` and ``min_detection_confidence=0.5``.
For the face found, the 468 landmarks are recorded as MediaPipe reports them, normalized
to the full frame: ``landmarks`` = [[x, y], ...] rounded to 5 decimals, and ``z`` (same
scale as x) as a separate list rounded to 4 decimals. Both lists are empty when no face
is found.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import av
import mediapipe as mp
import numpy as np

MEDIAPIPE_VERSION = "0.10.21"
MODEL_PATH = "modules/face_landmark/face_landmark.tflite"  # inside the mediapipe package
MODEL_SHA256 = "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814"
N_LANDMARKS = 468
XY_DECIMALS = 5
Z_DECIMALS = 4

SETTINGS = {
    "static_image_mode": True,
    "max_num_faces": 1,
    "refine_landmarks": False,
    "min_detection_confidence": 0.5,
}

# Paths relative to the datasets folder; the same list as tools/mediapipe_reference.py.
# Chosen to cover every FF++ source (youtube, actors, all six manipulation methods), every
# resolution from 640x480 to 1920x1080, and DFDC 1080p in both landscape and portrait
# (1080x1920) orientation.
VIDEOS = [
    "ffpp/original_sequences/youtube/c23/videos/519.mp4",  # 640x480
    "ffpp/original_sequences/youtube/c23/videos/183.mp4",  # 1280x720
    "ffpp/original_sequences/actors/c23/videos/09__walking_down_street_outside_angry.mp4",  # 1920x1080
    "ffpp/manipulated_sequences/Deepfakes/c23/videos/469_481.mp4",  # 854x480
    "ffpp/manipulated_sequences/Face2Face/c23/videos/750_743.mp4",  # 1920x1080
    "ffpp/manipulated_sequences/FaceShifter/c23/videos/878_866.mp4",  # 1280x720
    "ffpp/manipulated_sequences/FaceSwap/c23/videos/720_672.mp4",  # 656x480
    "ffpp/manipulated_sequences/NeuralTextures/c23/videos/004_982.mp4",  # 1280x720
    "ffpp/manipulated_sequences/DeepFakeDetection/c23/videos/01_11__talking_against_wall__9229VVZ3.mp4",  # 1920x1080
    "dfdc/dfdc_sample_real/lynaeydofd.mp4",  # 1920x1080
    "dfdc/dfdc_train_part_10/widuwuoiur.mp4",  # 1920x1080
    "dfdc/dfdc_train_part_0/brtujopkby.mp4",  # 1080x1920 (portrait)
]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_environment() -> None:
    """Fail loudly unless the installed mediapipe is the expected version with the expected model."""
    if mp.__version__ != MEDIAPIPE_VERSION:
        raise SystemExit(f"mediapipe {MEDIAPIPE_VERSION} required, found {mp.__version__}")
    actual = sha256_of(Path(mp.__file__).parent / MODEL_PATH)
    if actual != MODEL_SHA256:
        raise SystemExit(f"model {MODEL_PATH}: sha256 {actual} != expected {MODEL_SHA256}")


def count_frames(path: Path) -> int:
    """Number of frames a full decode yields (stream.frames is only checked against it)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        declared = stream.frames
        decoded = sum(1 for _ in container.decode(stream))
    if declared != decoded:
        log(f"  note: {path.name}: stream.frames={declared} but {decoded} frames decoded")
    return decoded


def middle_index(n_frames: int) -> int:
    return round((n_frames - 1) / 2)


def read_frame(path: Path, wanted: int) -> np.ndarray:
    """Decode frames in presentation order up to the wanted one, as HxWx3 uint8 RGB."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            if index == wanted:
                return frame.to_ndarray(format="rgb24")
    raise SystemExit(f"{path}: frame {wanted} not decoded")


def landmarks_of(rgb: np.ndarray) -> tuple[list[list[float]], list[float]]:
    """Run MediaPipe FaceMesh on one frame; a fresh graph keeps frames independent."""
    with mp.solutions.face_mesh.FaceMesh(**SETTINGS) as face_mesh:
        result = face_mesh.process(rgb)
    faces = result.multi_face_landmarks or []
    if not faces:
        return [], []
    points = faces[0].landmark
    if len(points) != N_LANDMARKS:
        raise SystemExit(f"expected {N_LANDMARKS} landmarks, got {len(points)}")
    xy = [[round(float(p.x), XY_DECIMALS), round(float(p.y), XY_DECIMALS)] for p in points]
    z = [round(float(p.z), Z_DECIMALS) for p in points]
    return xy, z


def process_video(data_dir: Path, relative: str) -> dict:
    path = data_dir / relative
    if not path.is_file():
        raise SystemExit(f"missing video: {path}")
    n_frames = count_frames(path)
    index = middle_index(n_frames)
    rgb = read_frame(path, index)
    height, width = rgb.shape[:2]
    xy, z = landmarks_of(rgb)
    log(f"  frame {index:4d}/{n_frames} {width}x{height}: {'face' if xy else 'no face'}")
    return {
        "video": relative,
        "frame_index": index,
        "n_frames": n_frames,
        "width": width,
        "height": height,
        "landmarks": xy,
        "z": z,
    }


ARRAYS = ("landmarks", "z")


def to_json(result: dict) -> str:
    """Pretty but compact: one line per frame header and one line per landmark array."""

    def flat(obj) -> str:
        return json.dumps(obj, separators=(",", ":"))

    def spaced(obj) -> str:
        return json.dumps(obj, separators=(", ", ": "))

    header = {k: v for k, v in result.items() if k != "frames"}
    lines = ["{"] + [f"  {spaced(k)}: {spaced(v)}," for k, v in header.items()]
    lines.append('  "frames": [')
    for f_index, frame in enumerate(result["frames"]):
        meta = {k: v for k, v in frame.items() if k not in ARRAYS}
        lines.append("    " + spaced(meta)[:-1] + ",")
        for a_index, name in enumerate(ARRAYS):
            closing = "}" if a_index == len(ARRAYS) - 1 else ","
            lines.append(f"     {spaced(name)}: {flat(frame[name])}{closing}")
        if f_index < len(result["frames"]) - 1:
            lines[-1] += ","
    lines += ["  ]", "}"]
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == result, "JSON formatting bug"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets"),
                        help="datasets folder (default: ../shared/datasets)")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/mediapipe_landmarks.json"),
                        help="output JSON (default: tests/fixtures/mediapipe_landmarks.json)")
    args = parser.parse_args()

    check_environment()
    frames = []
    for relative in VIDEOS:
        log(relative)
        frames.append(process_video(args.data, relative))

    result = {
        "mediapipe_version": MEDIAPIPE_VERSION,
        "model": {"path": MODEL_PATH, "tflite_sha256": MODEL_SHA256},
        "settings": SETTINGS,
        "n_landmarks": N_LANDMARKS,
        "decimals": {"xy": XY_DECIMALS, "z": Z_DECIMALS},
        "frames": frames,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(to_json(result))
    n_faces = sum(1 for frame in frames if frame["landmarks"])
    log(f"wrote {len(frames)} frames ({n_faces} with a face) to {args.out}")


if __name__ == "__main__":
    main()
