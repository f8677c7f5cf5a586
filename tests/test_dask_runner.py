"""Chunked scoring, on Prefect's default runner and on Dask: decisions must not depend on either.

The Dask test starts a real LocalCluster (worker processes) through prefect-dask's
DaskTaskRunner, with chunks small enough that the sample batch is scored as several tasks.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.detectors import DEFAULT_DETECTORS, build_detectors, explain_rows, fit_all, score_all, score_in_chunks
from pipeline.io import ROW_NUMBER
from tests.conftest import SAMPLES


def _decisions(out) -> pd.DataFrame:
    scores = pd.read_parquet(out / "scores.parquet").sort_values(ROW_NUMBER, ignore_index=True)
    return scores.drop(columns=[c for c in scores.columns if c.endswith("_seconds")], errors="ignore")


def test_scores_in_chunks_equal_scores_of_the_whole_batch_and_reasons_asked_after_are_the_same():
    from pipeline.detectors import FeatureSpec
    from pipeline.validation import column_kinds, conform

    reference = pd.read_parquet(SAMPLES / "reference.parquet")
    batch = pd.read_csv(SAMPLES / "batch_02_label_flips.csv")
    kinds = column_kinds(reference)
    reference, _ = conform(reference.assign(**{ROW_NUMBER: range(len(reference))}), kinds)
    batch, _ = conform(batch.assign(**{ROW_NUMBER: range(len(batch))}), kinds)
    spec = FeatureSpec.from_kinds(kinds, "deny")
    detectors = fit_all(build_detectors(DEFAULT_DETECTORS), reference, spec)
    whole = score_all(detectors, batch)
    chunked = score_in_chunks(detectors, (batch.iloc[start : start + 97] for start in range(0, len(batch), 97)), batch.take)
    assert list(chunked) == list(whole)
    explain = explain_rows(detectors, chunked, batch.take)
    rows = np.arange(len(batch))
    for name in whole:
        pd.testing.assert_frame_equal(chunked[name].drop(columns="reason"), whole[name].drop(columns="reason"))
        assert explain(name, rows) == whole[name]["reason"].to_list()
        if detectors[name].chunkable:  # row-scoped detectors leave reasons to be asked for
            assert (chunked[name]["reason"] == "").all() and (whole[name]["reason"] != "").any()


def test_a_dask_local_cluster_decides_exactly_as_the_default_runner(scan_sample, monkeypatch):
    pytest.importorskip("prefect_dask")
    batch = SAMPLES / "batch_02_label_flips.csv"
    monkeypatch.setenv("POISONGUARD_CHUNK_ROWS", "25")
    default, default_out = scan_sample(batch, dataset="dask-default")
    assert default.exit_code == 0, default.stderr
    monkeypatch.setenv("POISONGUARD_DASK", "local")
    on_dask, dask_out = scan_sample(batch, dataset="dask-local")
    assert on_dask.exit_code == 0, on_dask.stderr
    expected, got = _decisions(default_out), _decisions(dask_out)
    assert len(got) > 100  # several chunks of 25 rows
    pd.testing.assert_frame_equal(got, expected)
    assert got["quarantined"].any()
