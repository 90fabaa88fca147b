"""Pre-split words to sub-word tokens, the way transformers' run_ner aligns them: the first
sub-token of a word carries the word's tag, the others -100 (or, with `label_all_tokens`, the tag
with B- turned into I-). Sentences longer than `max_length` are cut into overlapping windows of
whole words, so no word is ever dropped; each word is *owned* by exactly one window (the one where
it has the most context), which scores it and predicts it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORED = -100  # the label id cross-entropy and the metrics skip


def with_prefix_space(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Byte-level BPE tokenizers (GPT-2, RoBERTa, Llama-3/SmolLM2) mark a word start by a leading
    space. Tokenised one word at a time, the first word of a sentence and every word after it must
    get that space too, or words are split into pieces the model never saw mid-sentence; run_ner
    asks for `add_prefix_space=True`. The backend's ByteLevel pre-tokenizer is switched on in place
    (and so saved with the tokenizer); other tokenizers are returned unchanged."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return tokenizer
    state = json.loads(backend.to_str())
    if not _set_prefix_space(state.get("pre_tokenizer")):
        return tokenizer
    from tokenizers import Tokenizer

    rebuilt = Tokenizer.from_str(json.dumps(state))
    backend.pre_tokenizer = rebuilt.pre_tokenizer
    if hasattr(tokenizer, "add_prefix_space"):
        tokenizer.add_prefix_space = True
    return tokenizer


def _set_prefix_space(node: Any) -> bool:
    if not isinstance(node, dict):
        return False
    if node.get("type") == "ByteLevel":
        node["add_prefix_space"] = True
        return True
    found = False
    for child in node.get("pretokenizers", []) or []:
        found = _set_prefix_space(child) or found
    return found


@dataclass(frozen=True)
class Window:
    start: int  # first word
    end: int  # one past the last word
    owned_start: int  # the words this window scores and predicts
    owned_end: int


def plan_windows(word_lengths: list[int], budget: int, overlap: int) -> list[Window]:
    """Windows of whole words with at most `budget` sub-tokens each, consecutive windows sharing
    about `overlap` sub-tokens of context. A single word longer than the budget gets a window of
    its own (the tokenizer then truncates it: its first sub-token, which carries its tag, stays)."""
    overlap = min(overlap, budget // 2)  # at least half of each window is new words
    spans: list[tuple[int, int]] = []
    start, count = 0, len(word_lengths)
    while start < count:
        end, used = start, 0
        while end < count and (used + word_lengths[end] <= budget or end == start):
            used += word_lengths[end]
            end += 1
        spans.append((start, end))
        if end >= count:
            break
        # Step back over up to `overlap` tokens of context, always moving forward by a word.
        next_start, shared = end, 0
        while next_start - 1 > start and shared + word_lengths[next_start - 1] <= overlap:
            next_start -= 1
            shared += word_lengths[next_start]
        start = next_start
    windows = []
    for index, (start, end) in enumerate(spans):
        owned_start = 0 if index == 0 else (spans[index - 1][1] + start) // 2
        owned_end = count if index == len(spans) - 1 else (end + spans[index + 1][0]) // 2
        windows.append(Window(start, end, max(owned_start, start), min(owned_end, end)))
    return windows


def encode_sentences(
    tokenizer: PreTrainedTokenizerBase,
    sentences: list[list[str]],
    tag_ids: list[list[int]] | None,
    max_length: int,
    overlap: int,
    label_all_tokens: bool,
    inside_of: dict[int, int],
    score_owned_only: bool,
) -> dict[str, list[Any]]:
    """Model inputs, one row per window: `labels` (when `tag_ids` is given), and `sentence` and
    `word_ids` (the sentence's word index of each token whose prediction stands for that word in
    this window, -1 elsewhere) for stitching predictions back per word.

    Training labels every word of every window (`score_owned_only` False): the overlap is more
    context, not double counting. Evaluation scores each word once, in the window that owns it."""
    budget = max_length - tokenizer.num_special_tokens_to_add()
    lengths = _word_lengths(tokenizer, sentences)
    rows: dict[str, list[Any]] = {"sentence": [], "word_ids": [], "windows": []}
    pieces: list[list[str]] = []
    for index, (words, word_lengths) in enumerate(zip(sentences, lengths, strict=True)):
        fits = sum(word_lengths) <= budget
        windows = (
            [Window(0, len(words), 0, len(words))] if fits else plan_windows(word_lengths, budget, overlap)
        )
        for window in windows:
            rows["sentence"].append(index)
            rows["windows"].append(window)
            pieces.append(words[window.start : window.end])
    encoded = tokenizer(pieces, is_split_into_words=True, truncation=True, max_length=max_length)
    labels: list[list[int]] = []
    for row, window in enumerate(rows["windows"]):
        sentence = rows["sentence"][row]
        word_ids, row_labels, previous = [], [], None
        for word in encoded.word_ids(row):
            first = word is not None and word != previous
            absolute = window.start + word if word is not None else -1
            owned = word is not None and window.owned_start <= absolute < window.owned_end
            word_ids.append(absolute if first and owned else -1)
            if tag_ids is not None:
                if word is None or (score_owned_only and not owned):
                    row_labels.append(IGNORED)
                elif first:
                    row_labels.append(tag_ids[sentence][absolute])
                elif label_all_tokens:
                    tag = tag_ids[sentence][absolute]
                    row_labels.append(inside_of.get(tag, tag) if tag != IGNORED else IGNORED)
                else:
                    row_labels.append(IGNORED)
            previous = word
        rows["word_ids"].append(word_ids)
        labels.append(row_labels)
    del rows["windows"]
    result: dict[str, list[Any]] = {key: list(values) for key, values in encoded.items()}
    result.update(rows)
    if tag_ids is not None:
        result["labels"] = labels
    return result


def _word_lengths(tokenizer: PreTrainedTokenizerBase, sentences: list[list[str]]) -> list[list[int]]:
    """Sub-tokens per word, as the tokenizer splits each word inside a sentence."""
    if not sentences:
        return []
    encoded = tokenizer(sentences, is_split_into_words=True, add_special_tokens=False)
    lengths = []
    for row, words in enumerate(sentences):
        counts = [0] * len(words)
        for word in encoded.word_ids(row):
            if word is not None:
                counts[word] += 1
        # A word the tokenizer drops entirely (e.g. a lone control character) still needs a slot.
        lengths.append([max(count, 1) for count in counts])
    return lengths
