"""The documentation site builds with ``mkdocs build --strict``: a broken link, a reference to a
missing API object or a docstring griffe cannot parse fails here, as it fails ``make docs``.

The gallery page is served from ``gallery/`` outside ``docs/`` by a build hook; both of its cases
are built: no gallery (a page saying how to generate it) and a generated one (its README with the
captions, and the images beside it).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
pytest.importorskip("mkdocstrings")
pytest.importorskip("material")

ROOT = Path(__file__).resolve().parents[1]
# A 1x1 PNG, enough for the build to copy and link it.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


def build(config: Path, site: Path, gallery: Path | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT / "src")}
    env.pop("RAVINE_DOCS_GALLERY", None)
    if gallery is not None:
        env["RAVINE_DOCS_GALLERY"] = str(gallery)
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=config.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_site_builds_strict_without_gallery(tmp_path: Path) -> None:
    done = build(ROOT / "mkdocs.yml", tmp_path / "site", tmp_path / "no-gallery")
    assert done.returncode == 0, done.stderr[-4000:]
    site = tmp_path / "site"
    for page in ["guide/optimizers", "guide/diagnostics", "reference/optim", "gallery"]:
        assert (site / page / "index.html").is_file(), page
    reference = (site / "reference/optim/index.html").read_text(encoding="utf-8")
    # Every public optimizer has its entry, with the docstring's math handed to MathJax and no
    # Sphinx role left raw.
    for name in ["SGD", "Momentum", "Nesterov", "AdaGrad", "RMSProp", "Adam", "AdamW"]:
        assert f'id="ravine.optim.{name}"' in reference, name
    assert "arithmatex" in reference
    assert ":class:" not in reference and ":math:" not in reference
    assert (site / "javascripts/tex-svg-full.js").stat().st_size > 100_000
    assert "has not been generated" in (site / "gallery/index.html").read_text(encoding="utf-8")


@pytest.mark.slow
def test_site_shows_a_generated_gallery(tmp_path: Path) -> None:
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    (gallery / "gradient-noise.png").write_bytes(PNG)
    (gallery / "README.md").write_text(
        "# The lecture, measured\n\n## gradient-noise\n\n![gradient-noise](gradient-noise.png)\n\n"
        "**Claim.** noise falls as 1/√m  \n**Measured.** slope -0.51  \n"
        "**Agrees with the lecture:** yes\n",
        encoding="utf-8",
    )
    done = build(ROOT / "mkdocs.yml", tmp_path / "site", gallery)
    assert done.returncode == 0, done.stderr[-4000:]
    page = (tmp_path / "site/gallery/index.html").read_text(encoding="utf-8")
    assert 'src="gradient-noise.png"' in page and "slope -0.51" in page
    assert (tmp_path / "site/gallery/gradient-noise.png").read_bytes() == PNG


@pytest.mark.slow
def test_broken_link_fails_the_build(tmp_path: Path) -> None:
    # A copy of the site with one broken link: --strict must refuse it (so the check can fail).
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    (tmp_path / "src").symlink_to(ROOT / "src", target_is_directory=True)
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    (tmp_path / "mkdocs.yml").write_text(config, encoding="utf-8")
    page = tmp_path / "docs/guide/schedules.md"
    page.write_text(
        page.read_text(encoding="utf-8") + "\nSee [nowhere](no-such-page.md).\n", encoding="utf-8"
    )
    done = build(tmp_path / "mkdocs.yml", tmp_path / "site", tmp_path / "no-gallery")
    assert done.returncode != 0
    assert "no-such-page.md" in done.stderr


def load_converter():
    spec = importlib.util.spec_from_file_location(
        "rst_docstrings", ROOT / "docs" / "_build" / "rst_docstrings.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.rst_to_markdown


def test_sphinx_markup_becomes_markdown() -> None:
    convert = load_converter()
    text = "\n".join(
        [
            "Uses :class:`~ravine.optim.SGD` and :func:`fit` with :math:`\\epsilon_k`.",
            "",
            "=====  ========",
            "name   update",
            "=====  ========",
            "sgd    |g| step",
            "=====  ========",
            "",
            ".. math:: \\theta \\leftarrow \\theta - \\epsilon g",
            "",
            ".. warning:: careful",
            "   here.",
            "",
            "``term``",
            "    its :math:`x`",
            "    text.",
            "",
            "Example::",
            "",
            "    fit(net, data)",
            "",
            "Args:",
            "    a, b: shared text.",
            "    c: alone.",
        ]
    )
    lines = convert(text).splitlines()
    assert lines[0] == "Uses `SGD` and `fit` with \\(\\epsilon_k\\)."
    assert "| name | update |" in lines and "| sgd | \\|g\\| step |" in lines
    math = lines.index("$$")
    assert lines[math : math + 3] == ["$$", "\\theta \\leftarrow \\theta - \\epsilon g", "$$"]
    warning = lines.index("!!! warning")
    assert lines[warning + 2 : warning + 4] == ["    careful", "    here."]
    term = lines.index("``term``")
    assert lines[term + 1 : term + 3] == [":   its \\(x\\)", "    text."]
    example = lines.index("Examples:")
    assert lines[example + 1 : example + 4] == ["    ```", "    fit(net, data)", "    ```"]
    assert lines[-3:] == ["    a: shared text.", "    b: shared text.", "    c: alone."]
