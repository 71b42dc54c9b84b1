"""The gallery framework, the `ravine gallery` command and the gradient-noise entry."""

from __future__ import annotations

import json

import pytest

from ravine.commands import main
from ravine.gallery import Figure, caption, entries, run_gallery, write_index


def test_every_entry_has_a_name_a_claim_and_a_run_function():
    found = entries()
    assert "gradient-noise" in found
    for name, module in found.items():
        assert module.NAME == name
        assert isinstance(module.CLAIM, str) and module.CLAIM.endswith(".")
        assert callable(module.run)


def test_unknown_entry_is_a_one_line_error_with_the_closest_name(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'gradient-noise'") as info:
        run_gallery(tmp_path, only=["gradient-nosie"])
    assert "\n" not in str(info.value)
    assert main(["gallery", "--only", "nope", "--out", str(tmp_path)]) == 2


def test_index_states_disagreement_plainly(tmp_path):
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    figures = [
        Figure("a", "A holds.", "measured 1.", True, [image]),
        Figure("b", "B holds.", "measured 2.", False, []),
    ]
    text = write_index(tmp_path, figures).read_text()
    assert "![a](x.png)" in text and "**Agrees with the lecture:** **no**" in text
    assert "**Claim.** A holds." in caption(figures[0])
    saved = json.loads((tmp_path / "gallery.json").read_text())
    assert [f["agrees"] for f in saved] == [True, False]


def test_gradient_noise_quick_measures_the_square_root_law(tmp_path):
    assert main(["gallery", "--quick", "--only", "gradient-noise", "--out", str(tmp_path),
                 "--quiet"]) == 0
    saved = json.loads((tmp_path / "gallery.json").read_text())[0]
    assert saved["name"] == "gradient-noise"
    # the claim's number: the fitted log-log slope of the minibatch std is -1/2
    assert saved["numbers"]["slope_init"] == pytest.approx(-0.5, abs=0.05)
    assert saved["numbers"]["slope_trained"] == pytest.approx(-0.5, abs=0.05)
    assert (tmp_path / "gradient-noise.png").stat().st_size > 0
    assert "gradient-noise" in (tmp_path / "README.md").read_text()
