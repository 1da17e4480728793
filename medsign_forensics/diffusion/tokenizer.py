"""A small byte-level BPE tokenizer trained on report text, saved in the CLIP tokenizer's file format.

Why small: MedSign's class-aware selection (CAS) chooses among the tokens of one word, so medical words must
often split into several tokens, as they do with CLIP's 49k vocabulary on radiology text. A 2-4k vocabulary
trained on radiology reports would otherwise learn whole words; ``max_token_length`` caps the length of a
learnt token so long words always split.

The files (vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json) are what
``transformers.CLIPTokenizer.from_pretrained`` and ``StableDiffusionPipeline.from_pretrained`` read: the
normaliser, pre-tokeniser and ``</w>`` end-of-word convention are CLIP's own, so nothing custom is needed
at load time.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import CLIPTokenizer

from medsign_forensics.errors import InputError, ModelError
from medsign_forensics.fileio import write_text

START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
MAX_LENGTH = 77
# CLIP's pre-tokenisation pattern: letters, single digits, runs of punctuation.
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_WORDLIKE = re.compile(r"\w")


def _backend() -> Tokenizer:
    """A tokenizers pipeline identical to the one CLIPTokenizer builds, so training and use agree."""
    tokenizer = Tokenizer(BPE(unk_token=END_TOKEN, end_of_word_suffix=END_OF_WORD, continuing_subword_prefix=""))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    return tokenizer


def train_tokenizer(
    texts: Iterable[str], *, vocab_size: int = 3072, min_frequency: int = 2, max_token_length: int = 6
) -> CLIPTokenizer:
    """Learn BPE merges from ``texts`` and return a CLIPTokenizer (max length 77) that uses them.

    All 256 byte symbols, with and without the end-of-word suffix, are in the vocabulary, so any text
    tokenises without unknown tokens.
    """
    if vocab_size < 600:
        raise InputError(f"vocab_size {vocab_size} is too small; it must hold the 512 byte symbols and some merges")
    backend = _backend()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[START_TOKEN, END_TOKEN],
        initial_alphabet=alphabet,
        end_of_word_suffix=END_OF_WORD,
        max_token_length=max_token_length,
        show_progress=False,
    )
    backend.train_from_iterator((t for t in texts if t.strip()), trainer)
    with tempfile.TemporaryDirectory() as tmp:
        backend.model.save(tmp)
        vocab: dict[str, int] = json.loads(Path(tmp, "vocab.json").read_text(encoding="utf-8"))
        merges = _read_merges(Path(tmp, "merges.txt"))
    if not merges:
        raise InputError("the report texts gave no BPE merges; train the tokenizer on more text")
    for symbol in sorted(alphabet) + sorted(a + END_OF_WORD for a in alphabet):
        vocab.setdefault(symbol, len(vocab))
    return _clip_tokenizer(vocab, merges)


def _clip_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]) -> CLIPTokenizer:
    # transformers annotates merges as list[str]; its BPE backend takes the (a, b) pairs given here
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH)  # type: ignore[arg-type]


def _read_merges(path: Path) -> list[tuple[str, str]]:
    merges = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#version"):
            continue
        left, _, right = line.partition(" ")
        merges.append((left, right))
    return merges


def save_tokenizer(tokenizer: CLIPTokenizer, directory: str | Path) -> None:
    """Write vocab.json, merges.txt and the CLIPTokenizer config files into ``directory``.

    Only the CLIP file pair is written (no tokenizer.json), as in the SD-1.x folders; each file is written to
    a temporary name and renamed.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = state["model"]["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
    special = {"bos_token": START_TOKEN, "eos_token": END_TOKEN, "unk_token": END_TOKEN, "pad_token": END_TOKEN}
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH, "do_lower_case": True, **special}
    write_text(directory / "vocab.json", json.dumps(vocab, ensure_ascii=False, indent=0))
    write_text(directory / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    write_text(directory / "special_tokens_map.json", json.dumps(special, indent=2))
    write_text(directory / "tokenizer_config.json", json.dumps(config, indent=2))


def load_tokenizer(directory: str | Path) -> CLIPTokenizer:
    """Read a tokenizer folder written by :func:`save_tokenizer` (or any CLIP tokenizer folder)."""
    directory = Path(directory)
    if not (directory / "vocab.json").is_file() and not (directory / "tokenizer.json").is_file():
        raise ModelError("the tokenizer folder has neither vocab.json nor tokenizer.json", path=directory)
    return CLIPTokenizer.from_pretrained(str(directory), local_files_only=True)


def word_token_spans(tokenizer: CLIPTokenizer, prompt: str) -> list[tuple[str, list[int]]]:
    """Each word of ``prompt`` with the positions of its tokens in the encoded prompt.

    Positions index ``tokenizer(prompt).input_ids`` as the text encoder sees it: position 0 is the start
    token, so a prompt's first word starts at 1. Words are CLIP's pre-tokens that contain a letter or digit
    (punctuation is left out), lower-cased as the tokenizer sees them. Tokens cut off by the 77-token limit
    are dropped, and a word with no token left is omitted.
    """
    encoding = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length)
    word_ids = encoding.word_ids()
    offsets = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length, return_offsets_mapping=True)[
        "offset_mapping"
    ]
    spans: dict[int, list[int]] = {}
    bounds: dict[int, tuple[int, int]] = {}
    for position, word in enumerate(word_ids):
        if word is None:
            continue
        spans.setdefault(word, []).append(position)
        start, end = offsets[position]
        low, high = bounds.get(word, (start, end))
        bounds[word] = (min(low, start), max(high, end))
    result = []
    for word in sorted(spans):
        start, end = bounds[word]
        text = prompt[start:end].lower()
        if _WORDLIKE.search(text):
            result.append((text, spans[word]))
    return result
