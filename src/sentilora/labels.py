"""Class names in their natural order: a sentiment scale or a rating scale where the names are on one;
and whether they are words that say what a class is (--train.class_name_texts, sentilora.recipe).

`sentilora.data` orders string labels with `natural_order` (alphabetical when they are on no known scale).
"""

from __future__ import annotations

import re


# Sentiment scales, weakest to strongest; names are matched case-insensitively, with '_' and '-' read as spaces.
_SENTIMENT = {
    **dict.fromkeys(("very negative", "strongly negative", "extremely negative", "very neg"), 0.0),
    **dict.fromkeys(("negative", "neg"), 1.0),
    **dict.fromkeys(("somewhat negative", "slightly negative", "mostly negative"), 1.5),
    **dict.fromkeys(("neutral", "neu", "mixed"), 2.0),
    **dict.fromkeys(("somewhat positive", "slightly positive", "mostly positive"), 2.5),
    **dict.fromkeys(("positive", "pos"), 3.0),
    **dict.fromkeys(("very positive", "strongly positive", "extremely positive", "very pos"), 4.0),
}
_ID = re.compile(r"(?:label|class|cat|category|c|l)?[\s_-]*\d+", re.IGNORECASE)  # "LABEL_3", "class 2", "c1"
_NUMBER = re.compile(r"([+-]?\d+(?:\.\d+)?)(?:\s*stars?)?", re.IGNORECASE)  # "3", "4.5", "1 star", "5 stars"


def natural_order(names: list[str]) -> list[str]:
    """Class names in their natural order where they have one, else alphabetical.

    Sentiment names ("very negative" .. "very positive", "neg"/"pos") go on that scale; numbers and
    star ratings ("1".."10", "1 star", "***") by value. Names not all on one scale, or two names for
    one point of it ("neg" and "negative"), keep alphabetical order.
    """
    alphabetical = sorted(names)
    keys = [_rank(n) for n in alphabetical]
    if any(k is None for k in keys) or len({k[0] for k in keys}) > 1 or len(set(keys)) < len(keys):
        return alphabetical
    return [n for _, n in sorted(zip(keys, alphabetical))]


def on_sentiment_scale(names: list[str]) -> bool:
    """Whether the classes are 3 or more distinct points of the sentiment scale ("very negative" ..
    "very positive"), in that order, so that neighbouring indices are neighbouring classes. Numbers are
    left out (they may be ids)."""
    keys = [_rank(n) for n in names]
    if len(names) < 3 or any(k is None or k[0] != "sentiment" for k in keys):
        return False
    return all(a[1] < b[1] for a, b in zip(keys, keys[1:]))


def are_words(names: list[str]) -> bool:
    """Whether every class name is a word or phrase that says what the class is ("neutral", "billing"), not
    an id ("0", "LABEL_3", "class 2") or a rating ("4 stars", "***"): text made from it can teach something."""
    return bool(names) and all(re.search(r"[^\W\d_]{2}", n) and not _ID.fullmatch(n.strip())
                               and (_rank(n) or ("",))[0] not in ("number", "stars") for n in names)


def _rank(name: str) -> tuple[str, float] | None:
    """(scale, position on it) for a class name on a known scale, else None."""
    n = name.strip().lower()
    if m := _NUMBER.fullmatch(n):
        return "number", float(m.group(1))
    if n and set(n) in ({"*"}, {"★"}):
        return "stars", float(len(n))
    words = " ".join(n.replace("_", " ").replace("-", " ").split())
    return ("sentiment", _SENTIMENT[words]) if words in _SENTIMENT else None
