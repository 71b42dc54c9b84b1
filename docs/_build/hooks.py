"""MkDocs hooks: the gallery pages and an offline MathJax.

* The gallery lives outside ``docs/``: ``ravine gallery`` (``make gallery``) writes
  ``gallery/README.md`` and ``gallery/*.png`` at the repository root. This hook serves that folder
  as the docs page ``gallery/index.md`` with its images beside it, so the site shows the figures
  with their captions as generated. Without the folder the page says how to generate it, and the
  build still passes. ``RAVINE_DOCS_GALLERY`` names another folder (tests use it).
* MathJax comes from the ``django-static-mathjax`` package (a copy of MathJax 3 with no Django
  dependency, in the ``docs`` extra) rather than a CDN, so the built site works offline.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

GALLERY_PAGE = "gallery/index.md"
MATHJAX = "javascripts/tex-svg-full.js"

MISSING_GALLERY = """# Gallery

The gallery has not been generated in this checkout. It reproduces every claim of the lecture as
a measured figure with a caption (the claim, the measured numbers, and whether they agree):

```bash
make gallery                     # all entries, about ten minutes on two CPU cores
ravine gallery --quick           # reduced versions, about a minute
ravine gallery --only gradient-noise
```

Both write `gallery/README.md` and `gallery/*.png` at the repository root; rebuild the docs
(`make docs`) and this page shows them.
"""

REGENERATE = """
---

*Regenerate these figures with `make gallery` (or `ravine gallery --quick` for the reduced
versions), then `make docs`.*
"""


def _gallery_dir(config: MkDocsConfig) -> Path:
    override = os.environ.get("RAVINE_DOCS_GALLERY")
    if override:
        return Path(override)
    return Path(config.config_file_path).resolve().parent / "gallery"


def _mathjax_script() -> Path:
    try:
        import mathjax  # django-static-mathjax: only static files, imported for its path
    except ImportError as error:
        raise PluginError(
            "MathJax not found: install the docs extra, pip install -e '.[docs]'"
        ) from error
    script = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5" / "tex-svg-full.js"
    if not script.is_file():
        raise PluginError(f"MathJax script missing from the mathjax package: {script}")
    return script


def on_files(files: Files, *, config: MkDocsConfig, **_: Any) -> Files:
    files.append(File.generated(config, MATHJAX, abs_src_path=str(_mathjax_script())))
    gallery = _gallery_dir(config)
    index = gallery / "README.md"
    if index.is_file():
        text = index.read_text(encoding="utf-8")
        files.append(File.generated(config, GALLERY_PAGE, content=text + REGENERATE))
        for image in sorted(gallery.glob("*.png")):
            files.append(File.generated(config, f"gallery/{image.name}", abs_src_path=str(image)))
    else:
        files.append(File.generated(config, GALLERY_PAGE, content=MISSING_GALLERY))
    return files
