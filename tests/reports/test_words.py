from __future__ import annotations

import pytest

from helpers.localization import TOKENIZER_TEXTS, keyword_parser, tiny_tokenizer

from medsign_forensics.reports.findings import FindingKind
from medsign_forensics.reports.words import WordRole, medical_words, sentence_spans, word_tokens


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """A BPE trained as mini-cxr's is (the tiny localization model's)."""
    from medsign_forensics.diffusion.tokenizer import train_tokenizer

    return train_tokenizer(TOKENIZER_TEXTS, vocab_size=700, min_frequency=1)


def test_sentences_split_at_stops_but_not_in_decimals():
    report = "Nodule of 1.5 cm; clear lungs.\nNo effusion"
    sentences = [report[a:b].strip() for a, b in sentence_spans(report)]
    assert sentences == ["Nodule of 1.5 cm", "clear lungs", "No effusion"]


def test_only_present_findings_and_their_locations_are_selected():
    report = "No pleural effusion. Small LEFT lower lobe nodule, right lung clear."
    words = medical_words(report, parse=keyword_parser)
    nodule = frozenset({FindingKind.NODULE})
    assert [(w.text, w.role, w.kinds) for w in words] == [
        ("left", WordRole.LOCATION, nodule),
        ("lower", WordRole.LOCATION, nodule),
        ("nodule", WordRole.FINDING, nodule),
    ]
    assert [report[w.start : w.end] for w in words] == ["LEFT", "lower", "nodule"]
    assert [w.text for w in medical_words(report, parse=keyword_parser, locations=False)] == ["nodule"]


def test_normal_report_has_no_medical_words():
    assert medical_words("No effusion or pneumothorax. Heart size normal.", parse=keyword_parser) == []


def test_multi_token_words_map_to_all_their_tokens(tokenizer):
    report = "Small left effusion."
    words = medical_words(report, parse=keyword_parser)
    found, dropped = word_tokens(tokenizer, report, words)
    assert dropped == []
    ids = tokenizer(report, padding="max_length", max_length=tokenizer.model_max_length, truncation=True)["input_ids"]
    # <start> small left e f f u s i o n . <end>: "small" and "left" are one token each, "effusion" eight
    assert [(t.word.text, t.positions) for t in found] == [("left", (2,)), ("effusion", tuple(range(3, 11)))]
    assert tokenizer.convert_ids_to_tokens(ids[3:11]) == ["e", "f", "f", "u", "s", "i", "o", "n</w>"]
    special = set(tokenizer.all_special_ids)
    assert all(ids[p] not in special for t in found for p in t.positions)


def test_words_after_truncation_are_dropped():
    short = tiny_tokenizer(max_length=12)
    report = "Left effusion. Right nodule."
    found, dropped = word_tokens(short, report, medical_words(report, parse=keyword_parser))
    # 12 positions = start + 10 tokens + end: "left" (1) + "effusion" (8) + "." fill them; the rest is cut
    assert [t.word.text for t in found] == ["left", "effusion"]
    assert [w.text for w in dropped] == ["right", "nodule"]


def test_with_the_real_parser_hedged_and_negated_mentions_are_left_out():
    report = "No pneumothorax. Opacity in the left base, which may represent atelectasis versus pneumonia."
    assert [(w.text, w.role) for w in medical_words(report)] == [
        ("opacity", WordRole.FINDING),
        ("left", WordRole.LOCATION),
        ("base", WordRole.LOCATION),
    ]


def test_repeated_identical_mentions_still_get_their_finding_words():
    report = "Left effusion, left effusion."
    words = medical_words(report)
    assert [w.text for w in words] == ["effusion", "effusion"]
    assert all(w.kinds == {FindingKind.EFFUSION} for w in words)


def test_a_shared_location_word_serves_every_finding_it_locates():
    words = medical_words("Bibasilar atelectasis and effusions.")
    assert [(w.text, w.role) for w in words] == [
        ("bibasilar", WordRole.LOCATION),
        ("atelectasis", WordRole.FINDING),
        ("effusions", WordRole.FINDING),
    ]
    assert words[0].kinds == {FindingKind.ATELECTASIS, FindingKind.EFFUSION}


def test_positions_agree_with_the_diffusion_tokenizer_spans(bpe_tokenizer):
    from medsign_forensics.diffusion import word_token_spans

    report = "Bibasilar atelectasis and small effusions. Calcified granuloma in the right upper lobe."
    found, dropped = word_tokens(bpe_tokenizer, report, medical_words(report))
    assert not dropped
    spans = word_token_spans(bpe_tokenizer, report)
    for item in found:
        assert (item.word.text, list(item.positions)) in spans
    assert any(len(item.positions) > 1 for item in found)  # the mini-cxr BPE splits medical words
