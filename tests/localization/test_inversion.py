from __future__ import annotations

import numpy as np
import pytest

from helpers.localization import keyword_parser

from medsign_forensics.errors import InputError
from medsign_forensics.localization.inversion import capture_image, localize_image, working_size
from medsign_forensics.localization.maps import MapOptions


def _image(shape=(12, 20)) -> np.ndarray:
    return np.random.default_rng(0).random(shape).astype(np.float32)


def test_working_size_keeps_aspect_at_native_resolution(pipe):
    # native = sample_size 8 x vae factor 2 = 16 on the longer side, multiples of 2
    assert working_size(pipe, (12, 20)) == (10, 16)
    assert working_size(pipe, (300, 300)) == (16, 16)


def test_map_for_an_existing_image_has_its_size_and_is_seeded(pipe):
    report = "Small left effusion."
    first = localize_image(pipe, _image(), report, timesteps=(100, 500), seed=3, parse=keyword_parser)
    again = localize_image(pipe, _image(), report, timesteps=(100, 500), seed=3, parse=keyword_parser)
    assert first.a_loc.shape == (12, 20) and first.a_loc.dtype == np.float32
    assert [w.tokens.word.text for w in first.words] == ["left", "effusion"]
    assert np.array_equal(first.a_loc, again.a_loc)
    assert first.words[1].chosen in range(8)
    assert 1 / (1 + np.e) - 1e-6 <= first.a_loc.min() and first.a_loc.max() <= 1 / (1 + np.exp(-1)) + 1e-6
    ablated = localize_image(pipe, _image(), report, timesteps=(100, 500), seed=3, parse=keyword_parser,
                             options=MapOptions(cas=False, aas=False))
    assert ablated.a_loc.max() == pytest.approx(1.0)


def test_normal_report_skips_the_unet(pipe, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the U-Net must not run for a normal report")

    monkeypatch.setattr(pipe.unet, "forward", fail)
    result = localize_image(pipe, _image(), "No effusion. Lungs clear.", parse=keyword_parser)
    assert result.normal and not result.a_loc.any() and result.a_loc.shape == (12, 20)


def test_bad_inputs_are_input_errors(pipe):
    with pytest.raises(InputError, match="greyscale"):
        localize_image(pipe, np.zeros((4, 4, 3), dtype=np.float32), "left effusion", parse=keyword_parser)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        localize_image(pipe, np.full((4, 4), 2.0, dtype=np.float32), "left effusion", parse=keyword_parser)
    with pytest.raises(InputError, match="timesteps"):
        localize_image(pipe, _image(), "left effusion", timesteps=(1000,), parse=keyword_parser)
    with pytest.raises(InputError, match="empty"):
        localize_image(pipe, _image(), "  ", parse=keyword_parser)


def test_capture_is_removed_after_inversion(pipe):
    before = dict(pipe.unet.attn_processors)
    localize_image(pipe, _image(), "Right nodule.", timesteps=(10,), parse=keyword_parser)
    assert all(pipe.unet.attn_processors[k] is v for k, v in before.items())


def test_one_capture_serves_every_variant_and_word_subset(pipe):
    attention = capture_image(pipe, _image(), "Small left effusion.", timesteps=(300,), parse=keyword_parser)
    full = attention.localize()
    direct = localize_image(pipe, _image(), "Small left effusion.", timesteps=(300,), parse=keyword_parser)
    assert np.array_equal(full.a_loc, direct.a_loc)
    only_effusion = attention.localize(words=[w for w in attention.words if w.word.text == "effusion"])
    assert [w.tokens.word.text for w in only_effusion.words] == ["effusion"]
    assert np.array_equal(only_effusion.a_loc, full.words[1].a_loc)
    assert not attention.localize(words=[]).a_loc.any()


def test_inversion_on_a_greyscale_mini_cxr_model(model):
    image = _image((64, 48))
    result = localize_image(model.pipeline, image, "Right upper lobe nodule.", timesteps=(250, 500))
    assert model.vae.config.in_channels == 1
    assert result.a_loc.shape == (64, 48)
    assert {w.tokens.word.text for w in result.words} == {"right", "upper", "nodule"}
