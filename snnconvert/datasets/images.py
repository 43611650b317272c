"""Image folders (one sub-folder per class) decoded with Pillow and preprocessed on the fly.

Pillow does the decoding and resizing; torchvision is not used because its wheels on the
package registries are CUDA builds that cannot be installed beside the CPU torch wheel (and
a converter should not pull a vision stack for a resize and a crop).
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ..errors import DataError, OptionError
from .sources import Source

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".webp", ".tif", ".tiff")
LAYOUTS = ("NCHW", "NHWC", "NC", "N")
MODES = ("RGB", "L")


def read_toml(path: Path, what: str = "data spec") -> dict:
    """A TOML file's table; a missing or malformed file is one DataError line."""
    if not path.exists():
        raise DataError(f"{what} not found: {path}")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid TOML ({exc})") from None


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a model input, in this order:

    mode    Pillow colour mode: RGB (3 channels) or L (grey, 1 channel)
    resize  shorter side to this many pixels (aspect kept), or [height, width]; none if empty
    crop    centre crop to this size (an int for a square, or [height, width]); none if empty
    scale   divide the 0..255 pixel values by this
    mean, std  per channel: (x - mean) / std (one value broadcasts to every channel)
    layout  NCHW (channels first), NHWC, NC (flattened CHW) or N (flattened HWC)
    """

    mode: str = "RGB"
    resize: tuple[int, ...] = ()
    crop: tuple[int, ...] = ()
    scale: float = 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise OptionError(f"preprocess: unknown colour mode '{self.mode}'", hint=f"Use {' or '.join(MODES)}.")
        if self.layout not in LAYOUTS:
            raise OptionError(f"preprocess: unknown layout '{self.layout}'", hint=f"Use one of {', '.join(LAYOUTS)}.")
        for name in ("resize", "crop"):
            v = getattr(self, name)
            if len(v) > 2 or any(int(s) < 1 for s in v):
                raise OptionError(f"preprocess: {name} must be one positive size or [height, width], got {list(v)}")
        channels = 3 if self.mode == "RGB" else 1
        for name in ("mean", "std"):
            v = getattr(self, name)
            if len(v) not in (1, channels):
                raise OptionError(f"preprocess: {name} needs 1 or {channels} values for mode {self.mode}, "
                                  f"got {len(v)}")
        if self.scale <= 0 or any(s <= 0 for s in self.std):
            raise OptionError("preprocess: scale and std must be positive")

    @classmethod
    def parse(cls, spec: str | os.PathLike | dict | None) -> "Preprocess":
        """From a .toml file (its ``[preprocess]`` table, or the top level), a dict, or inline
        ``key=value`` pairs separated by spaces or semicolons (lists comma-separated), e.g.
        ``"resize=36 crop=32 mean=0.49,0.48,0.45 std=0.25,0.24,0.26"``."""
        if spec is None:
            return cls()
        if isinstance(spec, dict):
            table = spec
        elif str(spec).endswith(".toml"):
            table = read_toml(Path(spec), "preprocessing spec")
            table = table.get("preprocess", table)
        else:
            table = {}
            for item in str(spec).replace(";", " ").split():
                key, sep, value = item.partition("=")
                if not sep:
                    raise OptionError(f"preprocess: '{item}' is not key=value",
                                      hint="Write e.g. resize=36 crop=32 scale=255 mean=0.5 std=0.5.")
                table[key.strip()] = value.split(",") if "," in value else value
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise OptionError(f"preprocess: unknown key(s) {', '.join(unknown)}",
                              hint=f"Known keys: {', '.join(sorted(known))}.")
        try:
            kwargs = {}
            for key, value in table.items():
                if key in ("mode", "layout"):
                    kwargs[key] = str(value)
                elif key == "scale":
                    kwargs[key] = float(value)
                else:
                    items = value if isinstance(value, (list, tuple)) else [value]
                    cast = int if key in ("resize", "crop") else float
                    kwargs[key] = tuple(cast(v) for v in items if str(v) != "")
        except ValueError as exc:
            raise OptionError(f"preprocess: bad value ({exc})") from None
        return cls(**kwargs)

    def output_shape(self, height: int, width: int) -> tuple[int, ...]:
        """Per-sample shape for a source image of ``height`` x ``width`` pixels."""
        h, w = self._resized(height, width)
        if self.crop:
            h, w = (self.crop * 2)[:2] if len(self.crop) == 1 else self.crop
        c = 3 if self.mode == "RGB" else 1
        return {"NCHW": (c, h, w), "NHWC": (h, w, c), "NC": (c * h * w,), "N": (h * w * c,)}[self.layout]

    def _resized(self, height: int, width: int) -> tuple[int, int]:
        if not self.resize:
            return height, width
        if len(self.resize) == 2:
            return self.resize[0], self.resize[1]
        short = self.resize[0]
        if height <= width:
            return short, max(1, round(width * short / height))
        return max(1, round(height * short / width)), short

    def __call__(self, image) -> np.ndarray:
        """A Pillow image -> float32 array in the model's per-sample layout."""
        from PIL import Image

        image = image.convert(self.mode)
        h, w = self._resized(image.height, image.width)
        if (h, w) != (image.height, image.width):
            image = image.resize((w, h), Image.BILINEAR)
        if self.crop:
            ch, cw = (self.crop * 2)[:2] if len(self.crop) == 1 else self.crop
            if ch > h or cw > w:
                raise DataError(f"preprocess: crop {ch}x{cw} is larger than the (resized) image {h}x{w}")
            top, left = (h - ch) // 2, (w - cw) // 2
            image = image.crop((left, top, left + cw, top + ch))
        x = np.asarray(image, np.float32) / np.float32(self.scale)
        if x.ndim == 2:
            x = x[..., None]
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout in ("NCHW", "NC"):
            x = x.transpose(2, 0, 1)
        if self.layout in ("NC", "N"):
            x = x.reshape(-1)
        return np.ascontiguousarray(x, np.float32)


class ImageFolder(Source):
    """``root/<class>/<image>`` files; classes are the sorted sub-folder names (label = index),
    unless ``classes`` fixes the order. Images are decoded one by one as batches are read."""

    def __init__(self, root: str | os.PathLike, preprocess: Preprocess | None = None,
                 classes: list[str] | None = None) -> None:
        root = Path(root)
        self.path, self.preprocess = str(root), preprocess or Preprocess()
        found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        self.classes = list(classes) if classes is not None else found
        missing = [c for c in self.classes if not (root / c).is_dir()]
        if missing:
            raise DataError(f"{root}: class folder(s) {', '.join(missing)} not found")
        files, labels = [], []
        for label, name in enumerate(self.classes):
            for p in sorted((root / name).iterdir()):
                if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                    files.append(str(p))
                    labels.append(label)
        if not files:
            raise DataError(f"{root} holds no images in class sub-folders",
                            hint="Lay images out as ROOT/<class name>/<image>.jpg.")
        self.files, self._labels = files, np.asarray(labels, np.int64)
        self.has_labels, self.default_workers = True, 2
        self.sample_shape = tuple(self._load(0).shape)

    def _load(self, i: int) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.files[i]) as image:
                return self.preprocess(image)
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"cannot read image {self.files[i]} ({type(exc).__name__})") from None

    def __len__(self) -> int:
        return len(self.files)

    def read(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), *self.sample_shape), np.float32)
        for k, i in enumerate(indices):
            x = self._load(int(i))
            if x.shape != self.sample_shape:
                raise DataError(f"image {self.files[i]} preprocesses to shape {list(x.shape)}, the first "
                                f"image to {list(self.sample_shape)}",
                                hint="Give a crop (or resize=[height,width]) so every image has one size.")
            out[k] = x
        return out

    def labels(self) -> np.ndarray:
        return self._labels
