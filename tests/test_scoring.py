"""Significance tests of stage 6 against their definitions on fixed numbers."""

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ser_modules.ser.metrics import paired_tests, summarize

# UA of a model and of the reference on 7 (fold, run) pairs; the differences have no ties and no zeros.
MODEL = [0.61, 0.58, 0.70, 0.66, 0.52, 0.75, 0.64]
REFERENCE = [0.55, 0.60, 0.62, 0.57, 0.53, 0.61, 0.66]


def frame(values):
    return pd.DataFrame({"fold": [f"f{i}" for i in range(len(values))], "run": 0, "UA": values})


def test_paired_t_test_and_wilcoxon_against_their_definitions_and_scipy():
    d = np.array(MODEL) - np.array(REFERENCE)
    n = len(d)
    # Paired t-test: t = mean(d) / (sd(d) / sqrt(n)) with n - 1 degrees of freedom, two-sided.
    t = d.mean() / (d.std(ddof=1) / np.sqrt(n))
    p_t = 2 * stats.t.sf(abs(t), n - 1)
    # Exact Wilcoxon signed-rank: W+ (sum of the ranks of |d| with positive d) against all 2^n sign patterns.
    ranks = stats.rankdata(np.abs(d))
    w_plus = ranks[d > 0].sum()
    sums = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product([0, 1], repeat=n)]
    mean = ranks.sum() / 2
    p_w = np.mean([abs(s - mean) >= abs(w_plus - mean) - 1e-12 for s in sums])
    got = paired_tests(frame(MODEL), frame(REFERENCE))
    assert got["pairs"] == n
    assert got["p_ttest"] == pytest.approx(p_t, rel=1e-10)
    assert got["p_ttest"] == pytest.approx(stats.ttest_rel(MODEL, REFERENCE).pvalue, rel=1e-10)
    assert got["p_wilcoxon"] == pytest.approx(p_w, rel=1e-10)
    assert got["p_wilcoxon"] == pytest.approx(stats.wilcoxon(MODEL, REFERENCE).pvalue, rel=1e-10)
    assert round(t, 4) == 1.9135 and p_w == 26 / 128  # 26 of the 128 sign patterns are as extreme


def test_paired_tests_pair_by_fold_and_run_and_summaries_use_the_sample_std():
    shuffled = frame(REFERENCE).iloc[::-1].reset_index(drop=True)  # pairs are matched by (fold, run), not order
    assert paired_tests(frame(MODEL), shuffled)["p_ttest"] == pytest.approx(stats.ttest_rel(MODEL, REFERENCE).pvalue)
    partial = paired_tests(frame(MODEL), frame(REFERENCE).head(4))
    assert partial["pairs"] == 4
    assert partial["p_ttest"] == pytest.approx(stats.ttest_rel(MODEL[:4], REFERENCE[:4]).pvalue)
    s = summarize(frame(MODEL).assign(WA=0.5, F1=0.5))
    assert s["UA_mean"] == pytest.approx(np.mean(MODEL)) and s["UA_std"] == pytest.approx(np.std(MODEL, ddof=1))
    assert (s["folds"], s["runs"]) == (7, 1)
