"""The prompt-dependence table (issue 18): paired effusion-minus-normal classifier scores over the same noise, pixel
differences of the pairs, and the samples grid that shows the pairs side by side. No models: hand-made scores/sets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrgen.errors import InputError
from cxrgen.metrics.prompt_dependence import (
    COLUMNS,
    LOWERS,
    NO_CHANGE,
    RAISES,
    pixel_differences,
    prompt_dependence_table,
)


def _scores(method, normal, effusion, index=None):
    index = list(range(len(normal))) if index is None else index
    return pd.DataFrame({"method": method, "prompt_name": ["normal"] * len(normal) + ["effusion"] * len(effusion),
                         "index": index + index, "score": list(normal) + list(effusion)})


def test_scores_paired_by_noise_index_give_difference_ci_and_verdict():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.0, 0.6, 30)
    scores = pd.concat([
        _scores("follows", base, base + 0.3 + rng.normal(0, 0.02, 30)),  # the prompt adds 0.3 on every noise
        _scores("ignores", base, base),  # identical pairs
        _scores("reversed", base + 0.2, base),
    ], ignore_index=True)
    t = prompt_dependence_table(scores, n_boot=200, seed=0).set_index("method")
    assert list(t.reset_index().columns) == COLUMNS
    f = t.loc["follows"]
    assert f["score_difference"] == pytest.approx(0.3, abs=0.01) and 0.28 < f["ci_low"] < 0.3 < f["ci_high"] < 0.32
    assert f["verdict"] == RAISES and f["share_positive_higher"] == 1.0 and f["n_pairs"] == 30
    i = t.loc["ignores"]
    assert i["score_difference"] == 0.0 and i["ci_low"] == 0.0 == i["ci_high"] and i["verdict"] == NO_CHANGE
    assert t.loc["reversed", "verdict"] == LOWERS and t.loc["reversed", "ci_high"] < 0
    # unpaired differences of the same scores would not be this tight: pairing is by noise index, not row order
    shuffled = _scores("follows", base, (base + 0.3)[::-1], index=list(range(30)))
    s = prompt_dependence_table(shuffled, n_boot=200, seed=0).iloc[0]
    assert s["ci_high"] - s["ci_low"] > 5 * (f["ci_high"] - f["ci_low"])


def test_noise_index_not_row_order_pairs_the_scores():
    a = _scores("m", [0.1, 0.5], [0.2, 0.6], index=[0, 1])
    b = a.iloc[[1, 0, 3, 2]]  # rows in another order: the same pairs
    assert prompt_dependence_table(a, n_boot=10).iloc[0]["share_positive_higher"] == 1.0
    assert prompt_dependence_table(b, n_boot=10).iloc[0]["share_positive_higher"] == 1.0


def test_pixel_differences_are_zero_for_identical_pairs_and_measure_a_change():
    normal = np.full((3, 4, 4), 100, np.uint8)
    effusion = normal.copy()
    effusion[1] += 8  # noise index 1 differs by 8 everywhere
    manifest = pd.DataFrame({"prompt_name": ["normal"] * 3 + ["effusion"] * 3, "index": [0, 1, 2, 2, 1, 0]})
    images = np.concatenate([normal, effusion[[2, 1, 0]]])  # effusion rows stored in reverse index order
    d = pixel_differences(images, manifest, "effusion", "normal")
    assert d.to_dict() == {0: 0.0, 1: 8.0, 2: 0.0}
    scores = _scores("m", [0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    t = prompt_dependence_table(scores, pixel_diffs={"m": d}, n_boot=10).iloc[0]
    assert t["pixel_difference"] == pytest.approx(8 / 3)


def test_bad_scores_raise():
    with pytest.raises(InputError, match="lack columns"):
        prompt_dependence_table(pd.DataFrame({"method": ["m"], "score": [0.1]}))
    with pytest.raises(InputError, match="expected both 'effusion' and 'normal'"):
        prompt_dependence_table(_scores("m", [0.1], [0.2]).replace({"prompt_name": {"effusion": "style"}}))
    with pytest.raises(InputError, match="repeat"):
        prompt_dependence_table(pd.concat([_scores("m", [0.1], [0.2])] * 2))
    with pytest.raises(InputError, match="n_boot"):
        prompt_dependence_table(_scores("m", [0.1], [0.2]), n_boot=0)


def test_samples_figure_puts_both_prompts_of_one_noise_index_side_by_side(monkeypatch):
    import cxrgen.studies.synthesis as synthesis
    from cxrgen.studies.synthesis import samples_figure

    seen = {}
    monkeypatch.setattr(synthesis, "image_grid", lambda grid, rows, cols, stem, title=None: seen.update(grid=grid, cols=cols))
    n = 3
    # image value = 10 * noise index + prompt code, rows of the effusion prompt stored in reverse index order
    manifest = pd.DataFrame({"prompt_name": ["normal"] * n + ["effusion"] * n, "index": [0, 1, 2, 2, 1, 0]})
    images = np.stack([np.full((4, 4), 10 * i + (p == "effusion"), np.uint8)
                       for p, i in zip(manifest["prompt_name"], manifest["index"])])
    samples_figure({"m": (images, manifest)}, "unused", n_show=2)
    assert seen["cols"] == ["normal\nnoise 0", "effusion\nnoise 0", "normal\nnoise 1", "effusion\nnoise 1"]
    assert [int(img[0, 0]) for img in seen["grid"][0]] == [0, 1, 10, 11]
