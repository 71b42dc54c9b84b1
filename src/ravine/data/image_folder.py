"""Image files in class folders, the layout of torchvision's ``ImageFolder``, loaded lazily.

``load("image-folder", root=PATH, size=[H, W])`` reads a folder laid out as::

    root/<class name>/**/<image file>    (.jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp)

Classes are the sub-folders of ``root`` sorted by name, labelled ``0..K-1`` (the names are
``splits.info["classes"]``); a class folder's images are found recursively, in sorted order. The
examples are split at random as every other source is (:func:`ravine.data.splits.split_indices`).
If ``root`` holds only ``train/`` and ``test/`` folders of classes, ``test/`` is the given test
split (its classes must be those of ``train/``) and the validation split is carved from
``train/``; without ``test/``, the examples of ``train/`` are split at random like a flat folder's.

Nothing is decoded when loading: ``splits.train``, ``val`` and ``test`` are map-style torch
datasets that hold file paths and decode one image per ``__getitem__`` — converted to RGB (or
to one grey channel with ``grayscale=True``), resized to ``size`` with bilinear filtering, and
returned as a float tensor (C, H, W) in [0, 1] with its label as a 0-dim ``torch.long`` tensor.
The training and validation splits are :class:`torch.utils.data.Subset` s of the folder (of
``train/``) and a given test split is the ``test/`` folder itself. The folder is torchvision's
``ImageFolder`` when torchvision can be imported (the optional extra ``ravine[vision]``), else
:class:`ImageFiles`, which finds the same files in the same order; ``splits.info["backend"]``
says which. A file that cannot be decoded raises a ``ValueError`` naming it when it is read.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Subset

from ravine.data.splits import (
    Splits,
    as_dtype,
    check_batch_size,
    check_bool,
    check_fraction,
    split_indices,
)

__all__ = ["IMAGE_EXTENSIONS", "DecodeImage", "ImageFiles", "load_image_folder"]

# torchvision's IMG_EXTENSIONS, matched case-insensitively against the end of the file name.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

_WHERE = "image-folder"


class DecodeImage:
    """``path -> (C, H, W)`` float tensor in [0, 1]: RGB (or grey), resized to ``(height, width)``.

    The same steps as torchvision's ``pil_loader`` then ``Resize`` (bilinear) and ``ToTensor``. A
    plain class rather than a closure, so that DataLoader worker processes can receive it.
    """

    def __init__(self, size: tuple[int, int], grayscale: bool, dtype: torch.dtype) -> None:
        self.size = size
        self.grayscale = grayscale
        self.dtype = dtype

    def __call__(self, path: str) -> Tensor:
        height, width = self.size
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
                if self.grayscale:
                    image = image.convert("L")
                pixels = np.array(image.resize((width, height), Image.BILINEAR))
        except Image.UnidentifiedImageError:
            raise ValueError(
                f"{path}: cannot read image (not an image file Pillow can decode)"
            ) from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise ValueError(f"{path}: cannot read image ({error})") from None
        tensor = torch.from_numpy(pixels).to(self.dtype).div(255)
        return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def _as_label(class_index: int) -> Tensor:
    return torch.tensor(class_index, dtype=torch.long)


class ImageFiles(Dataset):
    """Labelled image files decoded one at a time: item i is ``(decode(path_i), label_i)``.

    Attributes:
        samples: ``(path, class index)`` pairs, as in torchvision's ``DatasetFolder.samples``.
        classes: the class names, index i naming label i.
    """

    def __init__(
        self, samples: list[tuple[str, int]], classes: list[str], decode: DecodeImage
    ) -> None:
        self.samples = samples
        self.classes = classes
        self.decode = decode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        path, class_index = self.samples[index]
        return self.decode(path), _as_label(class_index)

    def __repr__(self) -> str:
        return f"ImageFiles(n={len(self)}, classes={len(self.classes)})"


def _find_classes(directory: Path) -> list[str]:
    classes = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
    if not classes:
        raise ValueError(
            f"{_WHERE}: no class folders in '{directory}' (expected "
            f"'{directory}/<class name>/<image files>')"
        )
    return classes


def _find_images(directory: Path, classes: list[str]) -> list[tuple[str, int]]:
    """Every image file below each class folder, in torchvision's order (classes, then walk)."""
    samples = []
    for class_index, name in enumerate(classes):
        found = [
            (os.path.join(folder, file), class_index)
            for folder, _, files in sorted(os.walk(directory / name, followlinks=True))
            for file in sorted(files)
            if file.lower().endswith(IMAGE_EXTENSIONS)
        ]
        if not found:
            raise ValueError(
                f"{_WHERE}: class folder '{directory / name}' holds no image files "
                f"({', '.join(IMAGE_EXTENSIONS)})"
            )
        samples += found
    return samples


@functools.cache
def _torchvision_image_folder() -> Any:
    """torchvision's ``ImageFolder`` class, or ``None`` where torchvision cannot be imported."""
    try:
        # Imported on first use: torchvision is an optional extra and slow to import.
        from torchvision.datasets import ImageFolder
    except (ImportError, OSError, RuntimeError):  # absent, or built for another torch
        return None
    return ImageFolder


def _folder(directory: Path, decode: DecodeImage) -> tuple[Dataset, list[str]]:
    """The dataset of one class-folder tree and its class names (clear errors checked first)."""
    classes = _find_classes(directory)
    samples = _find_images(directory, classes)
    image_folder = _torchvision_image_folder()
    if image_folder is None:
        return ImageFiles(samples, classes, decode), classes
    return image_folder(str(directory), loader=decode, target_transform=_as_label), classes


def _check_size(size: Any) -> tuple[int, int]:
    ok = isinstance(size, (list, tuple)) and len(size) == 2
    ok = ok and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size)
    if not ok:
        raise ValueError(f"{_WHERE}: size must be [height, width], two integers >= 1, got {size!r}")
    return int(size[0]), int(size[1])


def _split_layout(root: Path) -> bool:
    """Whether ``root`` holds ``train/`` (and maybe ``test/``) folders of class folders."""
    folders = {entry.name for entry in os.scandir(root) if entry.is_dir()}
    train = root / "train"
    return (
        "train" in folders
        and folders <= {"train", "test"}
        and any(entry.is_dir() for entry in os.scandir(train))
    )


def load_image_folder(
    *,
    seed: int,
    val_fraction: float,
    root: str | os.PathLike[str],
    size: list[int] | tuple[int, int],
    grayscale: bool = False,
    test_fraction: float | None = None,
    batch_size: int | None = None,
    dtype: Any = torch.float32,
) -> Splits:
    """Image files in ``root/<class>/`` (or ``root/train/<class>/`` and ``root/test/<class>/``).

    ``test_fraction`` (default 0.2) applies only where there is no given ``test/`` split.
    """
    height, width = _check_size(size)
    check_bool("grayscale", grayscale)
    check_batch_size(batch_size)
    dtype = as_dtype(dtype)
    if not isinstance(root, (str, os.PathLike)):
        raise ValueError(f"{_WHERE}: root must be the path of a folder, got {root!r}")
    directory = Path(root).expanduser()
    if not directory.exists():
        raise ValueError(f"{_WHERE}: root '{root}' does not exist")
    if not directory.is_dir():
        raise ValueError(f"{_WHERE}: root '{root}' is not a folder")
    decode = DecodeImage((height, width), grayscale, dtype)
    train_folder = directory / "train" if _split_layout(directory) else directory
    given_test = train_folder != directory and (directory / "test").is_dir()
    if given_test and test_fraction is not None:
        raise ValueError(
            f"{_WHERE}: test_fraction={test_fraction!r} does not apply: '{directory / 'test'}' "
            f"is the given test split"
        )
    test_fraction = 0.2 if test_fraction is None else test_fraction
    check_fraction("test_fraction", test_fraction, allow_zero=False)
    folder, classes = _folder(train_folder, decode)
    idx = split_indices(
        len(folder),
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=0.0 if given_test else test_fraction,
        batch_size=batch_size,
        where=f"{_WHERE} '{root}'",
    )
    if given_test:
        test, test_classes = _folder(directory / "test", decode)
        if test_classes != classes:
            raise ValueError(
                f"{_WHERE}: the class folders of '{directory / 'test'}' "
                f"({', '.join(test_classes)}) differ from those of '{train_folder}' "
                f"({', '.join(classes)})"
            )
        idx["test"] = np.arange(len(test))
    else:
        test = Subset(folder, idx["test"].tolist())
    backend = "PIL" if isinstance(folder, ImageFiles) else "torchvision"
    return Splits(
        train=Subset(folder, idx["train"].tolist()),
        val=Subset(folder, idx["val"].tolist()) if len(idx["val"]) else None,
        test=test,
        num_features=(1 if grayscale else 3, height, width),
        num_classes=len(classes),
        task="classification",
        name=directory.name,
        info={"classes": classes, "root": str(directory), "backend": backend, "split_indices": idx},
    )
