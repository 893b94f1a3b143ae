"""One table reader: a file reads the same whole or in chunks of any size; one text check everywhere."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sentilora.data import _text_problem as data_text_problem
from sentilora.errors import DataError
from sentilora.scoring import prediction_columns
from sentilora.tables import iter_table, read_table, text_problem, write_table

FRAME = pd.DataFrame({"id": range(23), "text": [f"review number {i}, NA or null stays text" for i in range(23)],
                      "label": ["pos", "neg"] * 11 + ["pos"]})


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
@pytest.mark.parametrize("rows", [1, 7, 23, 100])
def test_whole_and_chunked_reads_agree(tmp_path, ext, rows):
    path = tmp_path / f"t{ext}"
    write_table(FRAME, path)
    whole = read_table(path)
    chunks = list(iter_table(path, rows))
    assert [len(c) for c in chunks] == [min(rows, 23 - i) for i in range(0, 23, rows)]
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), whole)
    assert whole["text"].tolist() == FRAME["text"].tolist()


def test_txt_lines_and_byte_order_mark(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"\xef\xbb\xbffirst\r\nsecond\n\nfourth")
    assert read_table(path)["text"].tolist() == ["first", "second", "", "fourth"]
    assert [c["text"].tolist() for c in iter_table(path, 3)] == [["first", "second", ""], ["fourth"]]


@pytest.mark.parametrize("rows", [None, 2])
def test_the_same_error_whole_or_chunked(tmp_path, rows):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c", \n')
    with pytest.raises(DataError, match=r"bad.jsonl line 3: not valid JSON"):
        list(iter_table(path, rows))
    path = tmp_path / "bad.csv"
    path.write_bytes(b"text\nok\n\xff\n")
    with pytest.raises(DataError, match=r"bad.csv: not valid UTF-8 \(byte 0xff at offset 8, line 3\)"):
        list(iter_table(path, rows))


@pytest.mark.parametrize("value", [None, float("nan"), pd.NA, np.nan, "", "   "])
def test_one_text_check_for_missing_values(value):
    # before, scoring called pd.NA "not text (NAType)" while training data called it empty
    assert text_problem(value) == "empty text"
    assert data_text_problem(value).startswith("empty text")


def test_non_text_is_named_with_its_value():
    assert text_problem(5) == "not text (int 5)"
    assert "--data.text_column" in data_text_problem(5)


def test_scoring_marks_pd_na_as_empty():
    class Stub:
        label_names = ["neg", "pos"]

        def predict_proba(self, texts, **kw):
            return np.full((len(texts), 2), 0.5)

        def decide(self, p):
            return ["pos"] * len(p)

    cols, bad = prediction_columns(Stub(), ["good", pd.NA, None], batch_size=8, long_texts="truncate")
    assert bad == 2 and cols["error"] == ["", "empty text", "empty text"]
