"""Image folders (TFX ExampleGen's image input, Keras' `image_dataset_from_directory` layout): one folder per
class under the source, PNG or JPEG files in it (at any depth below the class folder).

Each image is decoded by Pillow, converted to grey (1 channel) or RGB (3) and resized (bilinear) to
`data.image`'s height and width, and becomes one row: `image`, its pixels as height x width x channels
bytes (an Arrow fixed-size binary value), and `label`, its class folder's name. The model serves it as a
float32 [height, width, channels] input of pixel values 0-255 (tasks.features). Clients send the same:
the pixels of an image at that size.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import fsspec
import pyarrow as pa

from tasks.data.readers import PROGRESS_SECONDS, BadRows, Batch, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_COLUMN, LABEL_COLUMN = "image", "label"
COLUMNS = [IMAGE_COLUMN, LABEL_COLUMN]
BATCH_IMAGES = 1024
Shape = tuple[int, int, int]  # height, width, channels

log = logging.getLogger(__name__)


def is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_SUFFIXES)


def labelled_files(root: str, files: list[str]) -> list[tuple[str, str]]:
    """(file, class) of every image under `root`: the class is the first folder below it. An image directly in
    `root` has no class: an error naming it. Other files (a README, a labels file) are left out, and counted."""
    prefix = root.rstrip("/") + "/"
    labelled, others = [], []
    for file in files:
        if not is_image(file):
            others.append(file)
            continue
        relative = file[len(prefix):] if file.startswith(prefix) else file.rsplit("/", 1)[-1]
        if "/" not in relative:
            raise DataError(f"{file}: an image outside a class folder (an image folder holds one folder per class)")
        labelled.append((file, relative.split("/", 1)[0]))
    if others:
        log.warning("%s: %d files that are not PNG or JPEG images left out (e.g. %s)", root, len(others), others[0])
    if not labelled:
        raise DataError(f"{root}: no PNG or JPEG images in class folders")
    return labelled


def decode(data: bytes, shape: Shape, where: str) -> bytes:
    """The image's pixels at `shape` (height, width, channels), row by row; a file that does not decode as a
    PNG or JPEG image is a DataError naming it."""
    from PIL import Image

    height, width, channels = shape
    try:
        with Image.open(io.BytesIO(data), formats=["PNG", "JPEG"]) as image:
            image.load()  # a truncated file fails here, not when the pixels are read
            converted = image.convert("L" if channels == 1 else "RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{where}: not a PNG or JPEG image that decodes ({reason})") from None
    if converted.size != (width, height):
        converted = converted.resize((width, height), Image.Resampling.BILINEAR)
    return converted.tobytes()


def image_type(shape: Shape) -> pa.DataType:
    height, width, channels = shape
    return pa.binary(height * width * channels)


@dataclass
class Fingerprint:
    """What a pass read of an image folder: its bytes, and the `sha256sum` listing of its files named relative to
    the folder, so the folder's digest depends neither on where it lies nor on how it was cut into partitions."""

    root: str
    listing: list[str] = field(default_factory=list)
    bytes: int = 0

    def add(self, file: str, data: bytes) -> None:
        self.bytes += len(data)
        self.listing.append(f"{hashlib.sha256(data).hexdigest()}  {file.removeprefix(self.root.rstrip('/') + '/')}\n")


def listing_sha256(listing: list[str]) -> str:
    return hashlib.sha256("".join(listing).encode()).hexdigest()


def batches(files: tuple[tuple[str, str], ...], shape: Shape, bad_rows: BadRows, fingerprint: Fingerprint | None = None,
            step: str = "read") -> Iterator[Batch]:
    """The images as batches of BATCH_IMAGES rows (image, label), with progress in the log every PROGRESS_SECONDS.
    An image that does not decode is skipped and counted in `bad_rows` up to its limit (data.max_bad_rows), else
    the error."""
    kind = image_type(shape)
    pixels: list[bytes] = []
    labels: list[str] = []
    row = 1
    started = reported = time.monotonic()
    for done, (file, label) in enumerate(files, start=1):
        with fsspec.open(file, "rb") as handle:
            data = handle.read()
        if fingerprint is not None:
            fingerprint.add(file, data)
        if time.monotonic() - reported >= PROGRESS_SECONDS:
            reported = time.monotonic()
            log.info("%s: %s of %s images, %.0f images/s", step, f"{done:,}", f"{len(files):,}",
                     done / (reported - started))
        try:
            pixels.append(decode(data, shape, file))
        except DataError as exc:
            bad_rows.count += 1
            if len(bad_rows.examples) < bad_rows.SHOWN:
                bad_rows.examples.append(str(exc))
            if bad_rows.count > bad_rows.limit:
                raise DataError(f"{exc}{bad_rows.over_limit()}") from None
            continue
        labels.append(label)
        if len(pixels) == BATCH_IMAGES:
            yield Batch({IMAGE_COLUMN: pa.array(pixels, kind), LABEL_COLUMN: pa.array(labels, pa.string())}, row)
            row += len(pixels)
            pixels, labels = [], []
    if pixels:
        yield Batch({IMAGE_COLUMN: pa.array(pixels, kind), LABEL_COLUMN: pa.array(labels, pa.string())}, row)
