"""data.load("image-folder"): class folders of image files, split at random, decoded lazily."""

from __future__ import annotations

import os
import pickle
import re
import sys
import types
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from torch.utils.data import Dataset

from ravine import data
from ravine.data import image_folder

# Created in this order on purpose: labels must follow the sorted names, not creation order.
CLASSES = ("zebra", "apple", "moth")
PER_CLASS = 12
HEIGHT, WIDTH = 10, 12


def write_image_folder(
    root: Path, per_class: int = PER_CLASS, seed: int = 0
) -> dict[str, np.ndarray]:
    """Small RGB PNGs under ``root/<class>/``: class k is bright in channel k, dim elsewhere, so the
    class is learnable from the mean colour. Returns the written pixels by file path."""
    rng = np.random.default_rng(seed)
    written = {}
    for channel, name in enumerate(sorted(CLASSES)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 80, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
            pixels[..., channel] += 150
            path = root / name / f"{i:02d}.png"
            PIL.Image.fromarray(pixels).save(path)
            written[str(path)] = pixels
    return written


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "shapes"
    return root, write_image_folder(root)


def raises_exactly(message: str):
    return pytest.raises(ValueError, match="^" + re.escape(message) + "$")


def items(dataset: Dataset) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [dataset[i] for i in range(len(dataset))]


# --------------------------------------------------------------------------- contents


def test_labels_shapes_and_pixels_follow_the_files(folder) -> None:
    root, written = folder
    splits = data.load("image-folder", root=root, size=[HEIGHT, WIDTH], seed=0)
    assert (splits.task, splits.num_classes, splits.num_features) == (
        "classification",
        len(CLASSES),
        (3, HEIGHT, WIDTH),
    )
    assert splits.info["classes"] == sorted(CLASSES)
    assert splits.num_outputs == len(CLASSES) and splits.name == root.name
    assert splits.info["backend"] == "PIL"  # torchvision cannot be installed beside this torch
    paths = splits.train.dataset.samples
    for part in ("train", "val", "test"):
        subset = getattr(splits, part)
        assert subset.indices == splits.info["split_indices"][part].tolist()
        for i, (x, y) in zip(subset.indices, items(subset), strict=True):
            path, _ = paths[i]
            assert x.dtype == torch.float32 and x.shape == (3, HEIGHT, WIDTH)
            assert y.dtype == torch.long and y.ndim == 0
            assert int(y) == sorted(CLASSES).index(Path(path).parent.name)
            # At the original size nothing is resampled: exactly the written pixels / 255.
            expected = torch.from_numpy(written[path]).permute(2, 0, 1).float() / 255
            assert torch.equal(x, expected)
    assert sorted(p for p, _ in paths) == sorted(written)


def test_resized_and_grayscale_images(folder) -> None:
    root, written = folder
    size = (7, 5)
    colour = data.load("image-folder", root=root, size=size, seed=1)
    grey = data.load("image-folder", root=root, size=list(size), grayscale=True, seed=1)
    assert grey.num_features == (1, *size)
    path, _ = colour.train.dataset.samples[colour.train.indices[0]]
    image = PIL.Image.fromarray(written[path])
    for splits, mode in ((colour, "RGB"), (grey, "L")):
        x, _ = splits.train[0]
        pixels = np.asarray(image.convert(mode).resize(size[::-1], PIL.Image.BILINEAR))
        pixels = pixels.reshape(*size, -1).transpose(2, 0, 1)
        assert torch.equal(x, torch.from_numpy(pixels / 255).float())
        assert float(x.min()) >= 0 and float(x.max()) <= 1


def test_split_is_seeded_random_and_covers_every_file_once(folder) -> None:
    root, written = folder
    load = lambda seed: data.load(  # noqa: E731
        "image-folder", root=root, size=[4, 4], seed=seed, val_fraction=0.2, test_fraction=0.25
    )
    first, again, other = load(3), load(3), load(4)
    total = len(written)
    n_test = round(0.25 * total)
    n_val = round(0.2 * (total - n_test))
    assert (len(first.train), len(first.val), len(first.test)) == (
        total - n_test - n_val,
        n_val,
        n_test,
    )
    everything = sorted(first.train.indices + first.val.indices + first.test.indices)
    assert everything == list(range(total))
    for part in ("train", "val", "test"):
        assert getattr(first, part).indices == getattr(again, part).indices
    assert first.test.indices != other.test.indices
    assert data.load("image-folder", root=root, size=[4, 4], val_fraction=0).val is None


def test_nothing_is_decoded_until_an_item_is_read(folder, monkeypatch) -> None:
    root, _ = folder
    opened = []
    real_open = PIL.Image.open
    monkeypatch.setattr(
        PIL.Image, "open", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k)
    )
    splits = data.load("image-folder", root=root, size=[HEIGHT, WIDTH], seed=0)
    assert opened == []
    held = splits.train.dataset
    assert all(isinstance(path, str) and isinstance(label, int) for path, label in held.samples)
    assert not any(isinstance(value, torch.Tensor) for value in vars(held).values())
    splits.test[2]
    assert opened == [held.samples[splits.test.indices[2]][0]]
    # Small to send to DataLoader workers: paths, not pixels.
    restored = pickle.loads(pickle.dumps(splits.train))
    assert torch.equal(restored[0][0], splits.train[0][0])


def test_minibatches_through_iterate_and_epoch_batches(folder) -> None:
    root, _ = folder
    splits = data.load("image-folder", root=root, size=[6, 6], seed=0)
    sampler = data.EpochBatches(len(splits.train), 8, seed=0)
    batches = list(data.iterate(splits.train, sampler))
    assert len(batches) == len(sampler)
    x, y = batches[0]
    assert x.shape == (8, 3, 6, 6) and y.shape == (8,) and y.dtype == torch.long


# --------------------------------------------------------------------------- given test split


def test_train_and_test_folders_give_the_test_split(tmp_path: Path) -> None:
    train_written = write_image_folder(tmp_path / "train", per_class=10, seed=0)
    test_written = write_image_folder(tmp_path / "test", per_class=3, seed=1)
    splits = data.load("image-folder", root=tmp_path, size=[HEIGHT, WIDTH], seed=0)
    assert len(splits.test) == len(test_written)
    assert len(splits.train) + len(splits.val) == len(train_written)
    assert splits.val is not None and len(splits.val) == round(0.1 * len(train_written))
    assert splits.info["classes"] == sorted(CLASSES)
    assert sorted(p for p, _ in splits.test.samples) == sorted(test_written)
    x, y = splits.test[0]
    path, label = splits.test.samples[0]
    assert torch.equal(x, torch.from_numpy(test_written[path]).permute(2, 0, 1).float() / 255)
    assert int(y) == label == sorted(CLASSES).index(Path(path).parent.name)
    with raises_exactly(
        f"image-folder: test_fraction=0.3 does not apply: '{tmp_path / 'test'}' is the given "
        f"test split"
    ):
        data.load("image-folder", root=tmp_path, size=[4, 4], test_fraction=0.3)


def test_a_class_named_train_is_just_a_class(tmp_path: Path) -> None:
    for name in ("bus", "train"):
        (tmp_path / name).mkdir()
        PIL.Image.new("RGB", (3, 3)).save(tmp_path / name / "a.png")
        PIL.Image.new("RGB", (3, 3)).save(tmp_path / name / "b.png")
    splits = data.load("image-folder", root=tmp_path, size=[3, 3], test_fraction=0.25)
    assert splits.info["classes"] == ["bus", "train"]


def test_test_folder_with_other_classes(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "train", per_class=4)
    (tmp_path / "test" / "apple").mkdir(parents=True)
    PIL.Image.new("RGB", (3, 3)).save(tmp_path / "test" / "apple" / "a.png")
    with raises_exactly(
        f"image-folder: the class folders of '{tmp_path / 'test'}' (apple) differ from those of "
        f"'{tmp_path / 'train'}' ({', '.join(sorted(CLASSES))})"
    ):
        data.load("image-folder", root=tmp_path, size=[4, 4])


# --------------------------------------------------------------------------- errors


def test_missing_or_empty_folders(tmp_path: Path) -> None:
    absent = tmp_path / "absent"
    with raises_exactly("image-folder: root must be the path of a folder, got 3"):
        data.load("image-folder", root=3, size=[4, 4])
    with raises_exactly(f"image-folder: root '{absent}' does not exist"):
        data.load("image-folder", root=absent, size=[4, 4])
    file = tmp_path / "file.png"
    PIL.Image.new("RGB", (3, 3)).save(file)
    with raises_exactly(f"image-folder: root '{file}' is not a folder"):
        data.load("image-folder", root=file, size=[4, 4])
    empty = tmp_path / "empty"
    empty.mkdir()
    PIL.Image.new("RGB", (3, 3)).save(empty / "loose.png")  # an image, but in no class folder
    with raises_exactly(
        f"image-folder: no class folders in '{empty}' "
        f"(expected '{empty}/<class name>/<image files>')"
    ):
        data.load("image-folder", root=empty, size=[4, 4])
    (empty / "cat").mkdir()
    PIL.Image.new("RGB", (3, 3)).save(empty / "cat" / "c.PNG")  # extensions ignore case
    (empty / "dog").mkdir()
    (empty / "dog" / "notes.txt").write_text("no images here")
    with raises_exactly(
        f"image-folder: class folder '{empty / 'dog'}' holds no image files "
        f"({', '.join(image_folder.IMAGE_EXTENSIONS)})"
    ):
        data.load("image-folder", root=empty, size=[4, 4])


def test_unreadable_images_are_named_when_read(folder) -> None:
    root, _ = folder
    not_an_image = root / "apple" / "03.png"
    not_an_image.write_bytes(b"these bytes are not a PNG")
    truncated = root / "moth" / "05.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    splits = data.load("image-folder", root=root, size=[HEIGHT, WIDTH], seed=0)  # no error yet
    whole = splits.train.dataset  # every file; the splits are subsets of it
    position = {path: i for i, (path, _) in enumerate(whole.samples)}
    with raises_exactly(f"{not_an_image}: cannot read image (not an image file Pillow can decode)"):
        whole[position[str(not_an_image)]]
    with pytest.raises(
        ValueError, match=f"^{re.escape(str(truncated))}: cannot read image \\(.+\\)$"
    ):
        whole[position[str(truncated)]]


@pytest.mark.parametrize("size", [[0, 5], [5], (2, 3, 4), "28", [2.5, 3], 28, [True, 3], None])
def test_bad_size(folder, size) -> None:
    root, _ = folder
    with raises_exactly(
        f"image-folder: size must be [height, width], two integers >= 1, got {size!r}"
    ):
        data.load("image-folder", root=root, size=size)


def test_missing_and_bad_options(folder) -> None:
    root, _ = folder
    with raises_exactly("image-folder: missing option 'root' (required: root, size)"):
        data.load("image-folder", size=[4, 4])
    with raises_exactly("image-folder: missing option 'size' (required: root, size)"):
        data.load("image-folder", root=root)
    with raises_exactly("grayscale must be True or False, got 'yes'"):
        data.load("image-folder", root=root, size=[4, 4], grayscale="yes")
    with raises_exactly("test_fraction must be a number in (0, 1), got 1.5"):
        data.load("image-folder", root=root, size=[4, 4], test_fraction=1.5)
    with pytest.raises(ValueError, match="^image-folder: unknown option 'grey'"):
        data.load("image-folder", root=root, size=[4, 4], grey=True)


# --------------------------------------------------------------------------- torchvision


def test_torchvision_image_folder_is_used_when_it_imports(folder, monkeypatch) -> None:
    """With torchvision importable, the folder is its ImageFolder, given ravine's decoder; a
    stand-in with ImageFolder's documented constructor and listing order checks the wiring."""

    class ImageFolder(Dataset):
        def __init__(self, root, transform=None, target_transform=None, loader=None):
            self.classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
            self.samples = [
                (os.path.join(d, f), k)
                for k, c in enumerate(self.classes)
                for d, _, files in sorted(os.walk(os.path.join(root, c), followlinks=True))
                for f in sorted(files)
            ]
            self.loader, self.transform, self.target_transform = loader, transform, target_transform

        def __len__(self):
            return len(self.samples)

        def __getitem__(self, i):
            path, target = self.samples[i]
            return self.loader(path), self.target_transform(target)

    torchvision = types.ModuleType("torchvision")
    torchvision.datasets = types.ModuleType("torchvision.datasets")
    torchvision.datasets.ImageFolder = ImageFolder
    monkeypatch.setitem(sys.modules, "torchvision", torchvision)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", torchvision.datasets)
    root, _ = folder
    image_folder._torchvision_image_folder.cache_clear()
    try:
        via_torchvision = data.load("image-folder", root=root, size=[5, 6], seed=2)
    finally:
        image_folder._torchvision_image_folder.cache_clear()
    via_pil = data.load("image-folder", root=root, size=[5, 6], seed=2)
    assert via_torchvision.info["backend"] == "torchvision"
    assert isinstance(via_torchvision.train.dataset, ImageFolder)
    assert via_torchvision.train.dataset.samples == via_pil.train.dataset.samples
    for part in ("train", "val", "test"):
        ours, theirs = items(getattr(via_pil, part)), items(getattr(via_torchvision, part))
        for (x, y), (x_tv, y_tv) in zip(ours, theirs, strict=True):
            assert torch.equal(x, x_tv) and torch.equal(y, y_tv) and y_tv.dtype == torch.long
