"""Duplicate floods: many exact or near-identical copies of a row in one batch.

Poisoners repeat a row (often with a flipped label) so that one point weighs like dozens; the
concentrated attack of Koh et al. (2018) uses a few tight clusters of near-copies, which
defeats kNN label checks because each copy's nearest neighbours are its own clones.

For each batch row, ``c`` = other batch rows with its label within a radius and ``r`` = trusted
rows with that label within the same radius. If the batch is drawn like the reference, ``c`` is
about (n_batch − 1)·(r + ½)/n_ref, with the rate itself uncertain (negative binomial, see
``triggers.upper_tail_pvalue``); ``c`` far above that is a flood. Dense regions (spam7 has exact
duplicates in 39 % of trusted rows) raise ``r`` and so are not mistaken for floods. The test is
run twice: for exact copies (radius 0), then, on the rows left, for near-identical ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Callable, ClassVar

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from sklearn.neighbors import NearestNeighbors

from pipeline.detectors.base import Detector, FeatureSpec, Interval, RowFetch, Summary, class_codes
from pipeline.detectors.features import encode, feature_frame, make_encoder
from pipeline.detectors.triggers import upper_tail_pvalue

_SMALLEST_P = 1e-300
# Links per flagged row when grouping copies into clusters: enough to join a blob of
# near-copies without building the full radius graph (40,000 near-copies would be 1.6e9 pairs).
_LINKS = 15


class DuplicateFlood(Detector):
    """Higher score = more batch rows crowd around this row than the reference explains.

    ``score`` is -log10 of the row's p-value, ``calibrated`` 1 - the p-value after Holm's
    correction over the batch's rows (and Bonferroni over the two tests below), ``flagged`` that
    corrected p-value <= ``alpha``.

    A copy repeats the label too, so a labelled row is compared with batch and trusted rows of
    its own label: copies with a flipped label stand out against a neighbourhood with few
    trusted rows of that label, and the clean rows they were copied from (other label) are not
    swept in with them. Rows whose label is missing or untrusted are compared with every row.

    >>> DuplicateFlood(alpha=0.01).fit(reference, spec).score(batch)  # doctest: +SKIP
    """

    name: ClassVar[str] = "duplicates"
    detects: ClassVar[str] = "duplicate_flood"
    pvalue_scope: ClassVar[str] = "batch"
    pvalue_weight: ClassVar[float] = 0.01
    chunkable: ClassVar[bool] = False
    _parameter_constraints: ClassVar[dict[str, Any]] = {
        "alpha": Interval(Real, 0.0, 0.5, closed="right"),
        "radius_fraction": Interval(Real, 0.0, 1.0, closed="right"),
        "min_radius": Interval(Real, 0.0, None, closed="neither"),
        "n_neighbors": Interval(Integral, 1, 100),
    }

    def __init__(self, *, alpha: float = 0.01, radius_fraction: float = 0.1, min_radius: float = 0.05,
                 n_neighbors: int = 10) -> None:
        self.alpha = alpha
        self.radius_fraction = radius_fraction
        self.min_radius = min_radius
        self.n_neighbors = n_neighbors

    def _fit(self, reference: pd.DataFrame, spec: FeatureSpec, holdout: pd.DataFrame | None) -> None:
        features = feature_frame(reference, spec)
        self.encoder_ = make_encoder(spec).fit(features)
        encoded = self.encoder_.transform(features)
        self.radius_ = self._radius(encoded, len(spec.numeric))
        self.axes_ = _principal_axes(encoded)
        labels = reference[spec.label]
        self.labels_ = np.array([None if pd.isna(v) else str(v) for v in labels.astype(object)], dtype=object)
        self.trusted_ = {label: CloseCounter(encoded if label is None else encoded[self.labels_ == label], self.axes_)
                         for label in [None, *sorted({v for v in self.labels_ if v is not None})]}
        self.neighbors_ = NearestNeighbors(n_neighbors=min(self.n_neighbors, len(encoded))).fit(encoded)

    def _radius(self, encoded: np.ndarray, n_numeric: int) -> float:
        """"Near-identical" = closer than ``radius_fraction`` of the median distance from a trusted
        row to its nearest trusted neighbour, and at least ``min_radius`` per numeric feature (in
        units of the encoder's robust scale).

        A fraction of the median rather than a low quantile: in 25+ noisy dimensions every
        distance is about the same (1 % quantile 2.6, median 3.3 on a synthetic 30-feature set),
        so a low quantile is not "near" at all, and radius queries that large took 10 minutes on
        100,000 rows. The floor keeps the radius above the spread of copies jittered by ~1 % of a
        standard deviation (0.1-0.2 on HMDA and spam7) where trusted rows are dense or exactly
        duplicated (spam7: 39 % of trusted rows have an exact twin, median distance 0.03).
        """
        floor = self.min_radius * np.sqrt(max(1, n_numeric))
        if len(encoded) < 2:
            return float(floor)
        distances, _ = NearestNeighbors(n_neighbors=2).fit(encoded).kneighbors(encoded)
        return float(max(self.radius_fraction * np.median(distances[:, 1]), floor))

    def _summarise(self, chunk: pd.DataFrame) -> Summary:
        """Each row's label group, a hash of its encoding (copies share it) and the encoding's
        projection on the trusted principal axes: 90 bytes a row, a quarter of the encoding.
        Distances are measured in full only between rows whose projections are that close,
        which ``_Rows`` fetches back (in a clean 10^6-row batch, one row in 3,000)."""
        encoded = encode(self.encoder_, chunk, self.spec_)
        return {"group": self._group_codes(chunk), "key": _row_keys(encoded), "projected": encoded @ self.axes_}

    def _group_codes(self, chunk: pd.DataFrame) -> np.ndarray:
        """Index of the row's label among the trusted classes; -1 if missing (even were "" a
        class: a missing label is compared with every row) or untrusted."""
        codes = class_codes(chunk, self.spec_.label, self._classes())
        if self.spec_.label in chunk.columns:
            codes[chunk[self.spec_.label].isna().to_numpy()] = -1
        return codes.astype(np.int16)

    def _classes(self) -> list[str]:
        return [label for label in self.trusted_ if label is not None]

    def _score_summary(self, summary: Summary, fetch: RowFetch) -> pd.DataFrame:
        n = len(summary["key"])
        # a copy repeats the label too: rows are compared with rows of their own label, and rows
        # whose label is missing or untrusted with every row
        groups: dict[str | None, np.ndarray] = {label: summary["group"] == code
                                                for code, label in enumerate(self._classes())}
        groups[None] = summary["group"] < 0
        rows = _Rows(summary["key"], summary["projected"], np.arange(n),
                     lambda positions: encode(self.encoder_, fetch(positions), self.spec_))
        # Exact copies first: rows merely near a flood of exact copies would otherwise count the
        # copies and be flagged with them (spam7: 10 clean rows beside a 73-copy flood). Rows
        # flagged as copies are set aside before the near-identical test. Each test gets half of
        # alpha, so together they keep the chance of any false flag in a clean batch at alpha.
        everyone = np.ones(n, dtype=bool)
        same, same_trusted = self._close(rows, groups, everyone, 0.0)
        exact = upper_tail_pvalue(same, same_trusted, max(n - 1, 1), len(self.labels_))
        exact_adjusted = np.minimum(1.0, 2.0 * _holm(exact))
        copies = exact_adjusted <= self.alpha
        rest = ~copies
        close, close_trusted = self._close(rows, groups, rest, self.radius_)
        near = np.ones(n)
        near[rest] = upper_tail_pvalue(close[rest], close_trusted[rest], max(n - 1, 1), len(self.labels_))
        near_adjusted = np.ones(n)
        near_adjusted[rest] = np.minimum(1.0, 2.0 * _holm(near[rest]))
        adjusted = np.where(copies, exact_adjusted, near_adjusted)
        pvalue = np.where(copies, exact, np.minimum(exact, near))
        flagged = adjusted <= self.alpha
        reasons = np.full(n, "", dtype=object)
        steps = ((copies, 0.0, same, same_trusted), (rest & flagged, self.radius_, close, close_trusted))
        for label, members in groups.items():
            for found, radius, batch_count, trusted_count in steps:
                chosen = np.flatnonzero(members & found)
                if len(chosen):
                    reasons[chosen] = self._reasons(rows.points(chosen), label, radius, batch_count[chosen],
                                                    trusted_count[chosen])
        return pd.DataFrame({"score": -np.log10(np.maximum(pvalue, _SMALLEST_P)), "calibrated": 1.0 - adjusted,
                             "flagged": flagged, "reason": reasons})

    def _close(self, rows: "_Rows", groups: dict[str | None, np.ndarray], include: np.ndarray,
               radius: float) -> tuple[np.ndarray, np.ndarray]:
        """For each included row: other included batch rows of its label group within ``radius``,
        and trusted rows of that label within ``radius`` (0 for rows not included)."""
        batch_close, trusted_close = np.zeros(len(include), "int64"), np.zeros(len(include), "int64")
        for label, members in groups.items():
            selected = np.flatnonzero(members & include)
            if len(selected):
                queries = rows.subset(selected)
                batch_close[selected] = queries.count_among(radius)
                trusted_close[selected] = self.trusted_[label].count(queries, radius)
        return batch_close, trusted_close

    def _reasons(self, points: np.ndarray, label: str | None, radius: float, batch_close: np.ndarray,
                 trusted_close: np.ndarray) -> list[str]:
        """Flagged rows of one label: their cluster, the trusted rows as close, and whether most
        of the nearest trusted rows carry another label."""
        sizes = _cluster_sizes(points, radius)
        _, neighbours = self.neighbors_.kneighbors(points)
        k = neighbours.shape[1]
        classes = np.array([c for c in self.trusted_ if c is not None], dtype=object)
        said = self.labels_[neighbours]
        votes = np.stack([(said == c).sum(axis=1) for c in classes], axis=1)
        majority = votes.argmax(axis=1)
        kind = "rows" if label is None else "rows with this label"
        texts = []
        for j in range(len(points)):
            if radius == 0.0:
                text = (f"one of {sizes[j]:,} identical {kind} in this batch; the reference has "
                        f"{_rows(trusted_close[j])} identical to it")
            else:
                text = (f"one of {sizes[j]:,} near-identical {kind} in this batch ({batch_close[j]:,} within "
                        f"{radius:.2g} of this one); the reference has {_rows(trusted_close[j])} this close")
            other, agree = classes[majority[j]], votes[j, majority[j]]
            if label is not None and other != label and agree > k / 2:
                text += f"; labelled {label!r} while {agree}/{k} nearest trusted rows say {other!r}"
            texts.append(text)
        return texts


@dataclass(frozen=True)
class _Rows:
    """Batch rows as their summary describes them: hashes and projections of their encodings.
    The encodings themselves are fetched (``load``: batch positions -> encodings) only for the
    rows whose projections have a neighbour, and for the rows flagged."""

    keys: np.ndarray
    projected: np.ndarray
    positions: np.ndarray
    load: Callable[[np.ndarray], np.ndarray]

    def subset(self, selected: np.ndarray) -> "_Rows":
        return _Rows(self.keys[selected], self.projected[selected], self.positions[selected], self.load)

    def points(self, which: np.ndarray) -> np.ndarray:
        return self.load(self.positions[which])

    def count_among(self, radius: float) -> np.ndarray:
        """Other rows of this set within ``radius`` of each, exactly.

        A projection onto a few axes never lengthens a distance: a row with no other row within
        ``radius`` in projection has none at all, and only the rest are measured in full. Those
        rows' neighbours are among them (a row within ``radius`` of one has it within ``radius``
        in projection too), so they are measured against each other alone."""
        if radius == 0.0:
            return pd.Series(self.keys).value_counts().reindex(self.keys).to_numpy("int64") - 1
        counts = cKDTree(self.projected).query_ball_point(self.projected, _screen(radius), return_length=True,
                                                          workers=-1).astype("int64")
        unsure = np.flatnonzero(counts > 1)
        if len(unsure):
            points = self.points(unsure)
            first, inverse = _distinct(self.keys[unsure])
            counts[unsure] = _within(cKDTree(points), points[first], radius)[inverse]
        return counts - 1


class CloseCounter:
    """Counts trusted points within a radius of batch rows, exactly, cheaply in many dimensions.

    Radius 0 (exact copies) is a hash lookup: rows are equal when their 64-bit hashes are
    (a collision among 10^6 rows has probability ~3e-8). Otherwise: a k-d tree radius query in
    30+ dimensions visits most of the tree; in a handful it is fast. So queries are screened in
    projection first (see ``_Rows.count_among``), and only those with a trusted point that close
    are counted in full. SciPy's tree, on every core: sklearn's single-threaded KDTree took 114 s
    to count a 10^6-row batch (28 µs a query), SciPy's about a fifth of that.
    """

    def __init__(self, points: np.ndarray, axes: np.ndarray) -> None:
        self.points = points
        self.axes = axes
        self._projected: cKDTree | None = None
        self._copies: pd.Series | None = None

    def count(self, queries: _Rows, radius: float) -> np.ndarray:
        """Trusted points within ``radius`` of each query."""
        if radius == 0.0:
            if self._copies is None:
                self._copies = pd.Series(_row_keys(self.points)).value_counts()
            return self._copies.reindex(queries.keys, fill_value=0).to_numpy("int64")
        if self._projected is None:
            self._projected = cKDTree(self.points @ self.axes)
        counts = self._projected.query_ball_point(queries.projected, _screen(radius), return_length=True,
                                                  workers=-1).astype("int64")
        unsure = np.flatnonzero(counts > 0)
        if len(unsure):
            first, inverse = _distinct(queries.keys[unsure])
            counts[unsure] = _within(cKDTree(self.points), queries.points(unsure[first]), radius)[inverse]
        return counts

    def __getstate__(self) -> dict:
        # the tree and counts are rebuilt on first use: cheaper than storing them in the fit cache
        return {**self.__dict__, "_projected": None, "_copies": None}


def _screen(radius: float) -> float:
    """The projected radius that screens for ``radius``, with slack so that a point at exactly
    ``radius`` stays inside despite rounding."""
    return radius * (1.0 + 1e-9) + 1e-12


def _distinct(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the first of each distinct row (by its hash), and each row's distinct one: a
    flood is thousands of one row, measured once."""
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return first, inverse.ravel()


def _within(tree: cKDTree, points: np.ndarray, radius: float) -> np.ndarray:
    """The tree's points within ``radius`` of each of ``points``, on every core."""
    return np.asarray(tree.query_ball_point(points, radius, return_length=True, workers=-1), dtype="int64")


def _row_keys(points: np.ndarray, slice_rows: int = 65_536) -> np.ndarray:
    """One 64-bit hash per row, equal for equal rows (-0.0 and 0.0 alike); a slice at a time,
    since hashing copies its input."""
    return np.concatenate([
        pd.util.hash_pandas_object(pd.DataFrame(points[start:start + slice_rows] + 0.0), index=False).to_numpy()
        for start in range(0, len(points), slice_rows)] or [np.zeros(0, dtype=np.uint64)])


def _principal_axes(encoded: np.ndarray, n_axes: int = 8) -> np.ndarray:
    """The directions along which trusted rows spread most: projected on them, rows stay apart."""
    centred = encoded - encoded.mean(axis=0)
    _, _, rows = np.linalg.svd(centred, full_matrices=False)
    return rows[: min(n_axes, rows.shape[0])].T


def _rows(count: int) -> str:
    return f"{count:,} row" if count == 1 else f"{count:,} rows"


def _holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment: controls the chance of any false flag in a clean batch at
    alpha, like Bonferroni, without its cost when several rows are real copies."""
    n = len(pvalues)
    order = np.argsort(pvalues, kind="stable")
    stepped = np.maximum.accumulate(pvalues[order] * (n - np.arange(n)))
    adjusted = np.empty(n)
    adjusted[order] = np.minimum(1.0, stepped)
    return adjusted


def _cluster_sizes(points: np.ndarray, radius: float) -> np.ndarray:
    """Rows in each point's connected cluster (links shorter than ``radius``). Exact copies are
    merged first, then each distinct point links to its nearest few within the radius."""
    distinct, inverse, multiplicity = np.unique(points, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    k = min(_LINKS + 1, len(distinct))
    distances, index = NearestNeighbors(n_neighbors=k).fit(distinct).kneighbors(distinct)
    close = distances <= radius
    source = np.repeat(np.arange(len(distinct)), k)[close.ravel()]
    graph = coo_matrix((np.ones(close.sum()), (source, index.ravel()[close.ravel()])),
                       shape=(len(distinct), len(distinct)))
    _, component = connected_components(graph, directed=False)
    sizes = np.bincount(component, weights=multiplicity).astype("int64")
    return sizes[component[inverse]]
