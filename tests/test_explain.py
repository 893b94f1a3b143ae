"""Word-level explanations: `Classifier.explain` and `sentilora explain`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sentilora.cli import app
from sentilora.errors import ConfigError
from sentilora.heads import head_inputs
from sentilora.predict import Classifier
from sentilora.tokens import chunk_windows

TEXT = "The acting was wonderful, but the plot was a boring mess."
LONG = " ".join(["great acting and a lovely score"] + ["the film goes on"] * 20 + ["awful dull ending"])


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_integrated_gradients_add_up_to_the_logit_change(trained_run, arch):
    clf = Classifier.load(trained_run(arch), precision="fp32")
    target = clf.label_names[0]
    # A tiny model trained for one epoch barely moves its logits, and by how much depends on the
    # machine's rounding. Point the target's row of the head along what separates the text from the
    # baseline, so the logit changes by 5 (the axiom holds for any head, so this changes nothing about it).
    with head_inputs(clf.model) as seen:
        clf.explain(TEXT, target=target, steps=1)
    text_state, base_state = next(s for s in seen if len(s) == 2).detach()  # the text and its baseline, one batch
    apart = text_state - base_state
    assert apart.norm() > 1e-4 * text_state.norm()  # far above fp32 rounding: the encoder tells them apart
    clf.model.classifier.weight.data[0] = 5 * apart / apart.norm() ** 2
    (e,) = clf.explain(TEXT, target=target, steps=64)
    change = e.logit - e.baseline_logit
    assert change == pytest.approx(5, rel=1e-3)
    assert abs(e.gap) <= 0.05 * abs(change), (e.gap, change)  # the completeness axiom, within 5%
    rough = clf.explain(TEXT, target=target, method="grad_x_input")[0]
    assert rough.method == "grad_x_input" and rough.steps == 1 and rough.logit == pytest.approx(e.logit)


def test_words_are_spans_of_the_text_in_order(trained_run):
    clf = Classifier.load(trained_run("bert"), precision="fp32")
    (e,) = clf.explain(TEXT, steps=8)
    assert [w.word for w in e.words] == ["The", "acting", "was", "wonderful", ",", "but", "the", "plot", "was", "a",
                                         "boring", "mess", "."]
    assert all(TEXT[w.start : w.end] == w.word and w.score is not None for w in e.words)
    assert e.predicted == clf.predict(TEXT) and e.target == e.predicted
    up, down = e.top(3)
    assert all(w.score > 0 for w in up) and all(w.score < 0 for w in down)
    assert up == sorted(up, key=lambda w: -w.score)


def test_the_words_truncation_cut_have_no_score(trained_run):
    clf = Classifier.load(trained_run("bert"), precision="fp32", max_length=16)  # head+tail: 3 head tokens, 11 tail
    (e,) = clf.explain(LONG, steps=4)
    pattern = "".join("r" if w.score is not None else "-" for w in e.words)
    # The opening and the ending were read, one stretch of the middle never was.
    assert pattern.startswith("r") and pattern.endswith("rrr") and pattern.strip("r").strip("-") == "", pattern
    assert pattern.count("-") > len(e.words) // 2


def test_chunked_windows_explain_every_word_and_add_up_to_the_averaged_logit(trained_run):
    clf = Classifier.load(trained_run("bert"), precision="fp32", max_length=16)  # LONG takes several windows
    target = clf.label_names[0]
    with head_inputs(clf.model) as seen:
        clf.explain(LONG, target=target, steps=1, long_texts="chunk")
    states = [s for s in seen if len(s) > 1][-1].detach()  # text and baseline of every window, alternating
    apart = (states[0::2] - states[1::2]).mean(0)  # the averaged logit moves along this
    clf.model.classifier.weight.data[0] = 5 * apart / apart.norm() ** 2
    (e,) = clf.explain(LONG, target=target, steps=32, long_texts="chunk")
    assert e.windows == len(chunk_windows(clf.tokenizer(LONG, add_special_tokens=False)["input_ids"], [0], [0], 16)) > 2
    assert all(w.score is not None for w in e.words)  # every word was read by some window
    assert e.logit == pytest.approx(float(clf.logits([LONG], long_texts="chunk")[0, 0]), abs=1e-4)  # what predict reads
    assert e.logit - e.baseline_logit == pytest.approx(5, rel=1e-3)
    assert abs(e.gap) <= 0.05 * 5  # completeness holds for the mean of the windows
    (cut,) = clf.explain(LONG, target=target, steps=4)
    assert cut.windows == 1 and any(w.score is None for w in cut.words)


def test_a_target_is_explained_and_a_wrong_one_is_refused(trained_run):
    clf = Classifier.load(trained_run("bert"), precision="fp32")
    other = next(n for n in clf.label_names if n != clf.predict(TEXT))
    (e,) = clf.explain(TEXT, target=other, steps=8)
    assert e.target == other and e.predicted != other
    with pytest.raises(ConfigError, match="not one of this model's labels"):
        clf.explain(TEXT, target="meh")


def test_bf16_weights_explain_too(trained_run):
    clf = Classifier.load(trained_run("distilbert"), precision="bf16")
    (e,) = clf.explain(TEXT, steps=4)
    assert all(w.score is not None for w in e.words)


def test_cli_shades_words_and_prints_json(trained_run):
    run = str(trained_run("bert"))
    result = CliRunner().invoke(app, ["explain", run, TEXT, "--precision", "fp32", "--steps", "8"])
    assert result.exit_code == 0, result.output
    assert "for:" in result.output and "against:" in result.output and "integrated gradients" in result.output
    result = CliRunner().invoke(app, ["explain", run, TEXT, "Fine.", "--json", "--precision", "fp32", "--steps", "8"])
    assert result.exit_code == 0, result.output
    e, fine = map(json.loads, result.stdout.splitlines())  # JSON Lines: one object per text, per line
    assert fine["text"] == "Fine."
    assert e["text"] == TEXT and e["method"] == "integrated_gradients" and len(e["words"]) == 13
    assert {"start", "end", "word", "score"} <= set(e["words"][0])
    result = CliRunner().invoke(app, ["explain", run, LONG, "--long-texts", "chunk", "--max-length", "16", "--steps", "2"])
    assert result.exit_code == 0 and "windows" in result.output and "not read" not in result.output, result.output
    result = CliRunner().invoke(app, ["explain", run, TEXT, "--long-texts", "windows"])
    assert result.exit_code == 2 and "--long-texts must be truncate or chunk" in result.output
    result = CliRunner().invoke(app, ["explain", run, TEXT, "--target", "meh"])
    assert result.exit_code == 2 and "not one of this model's labels" in result.output
