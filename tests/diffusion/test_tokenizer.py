from __future__ import annotations

from pathlib import Path

import pytest

from helpers.diffusion import REPORT_TEXTS

from medsign_forensics.diffusion.tokenizer import (
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
    word_token_spans,
)
from medsign_forensics.errors import InputError


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("tok")
    save_tokenizer(train_tokenizer(REPORT_TEXTS, vocab_size=700, min_frequency=1), folder)
    return load_tokenizer(folder)


def test_saved_as_clip_files(tmp_path: Path) -> None:
    save_tokenizer(train_tokenizer(REPORT_TEXTS, vocab_size=700, min_frequency=1), tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
    assert (tmp_path / "merges.txt").read_text().startswith("#version")


@pytest.mark.parametrize("word", ["cardiomegaly", "atelectasis", "pneumothorax"])
def test_medical_words_split_and_round_trip(tokenizer, word: str) -> None:
    ids = tokenizer(word).input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert len(ids) - 2 >= 2  # a frequent medical word still spans several tokens
    assert tokenizer.decode(ids, skip_special_tokens=True) == word


def test_unseen_characters_do_not_become_unknown(tokenizer) -> None:
    text = "zygomatic é 42%"
    ids = tokenizer(text).input_ids[1:-1]
    assert tokenizer.eos_token_id not in ids  # the unknown token is the end token in CLIP tokenizers
    assert tokenizer.decode(ids) == "zygomatic é 4 2 %"


def test_max_length_and_padding(tokenizer) -> None:
    assert tokenizer.model_max_length == 77
    ids = tokenizer("effusion " * 200, padding="max_length", truncation=True, max_length=77).input_ids
    assert len(ids) == 77 and ids[-1] == tokenizer.eos_token_id


def test_word_token_spans(tokenizer) -> None:
    prompt = "Mild cardiomegaly, LEFT basilar atelectasis."
    spans = word_token_spans(tokenizer, prompt)
    assert [w for w, _ in spans] == ["mild", "cardiomegaly", "left", "basilar", "atelectasis"]
    ids = tokenizer(prompt).input_ids
    assert spans[0][1][0] == 1  # position 0 is the start token
    for word, positions in spans:
        assert positions == list(range(positions[0], positions[-1] + 1))
        assert tokenizer.decode([ids[p] for p in positions]) == word
    assert len(dict(spans)["cardiomegaly"]) >= 2


def test_word_token_spans_drop_truncated_words(tokenizer) -> None:
    prompt = " ".join(["effusion"] * 60) + " cardiomegaly"
    spans = word_token_spans(tokenizer, prompt)
    assert all(p < 76 for _, positions in spans for p in positions)
    assert "cardiomegaly" not in [w for w, _ in spans]


def test_vocab_too_small_is_refused() -> None:
    with pytest.raises(InputError):
        train_tokenizer(REPORT_TEXTS, vocab_size=100)
