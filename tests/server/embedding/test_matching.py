"""embedding/matching.py's ``SightingsTable``: the strangers' sightings kept in place match as
the same sightings rebuilt from scratch do, whatever the order of sightings, forgotten strangers
and expired ones; and a new sighting writes one row instead of copying every vector."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference_server.embedding.embedder import EmbeddingSource
from inference_server.embedding.matching import Sightings, SightingsTable, match_stranger

PER_STRANGER = 3
DIM = {"face": 8, "body": 12}

add = st.tuples(st.just("add"), st.integers(1, 6), st.sampled_from(["face", "body"]), st.integers(0, 2**31))
forget = st.tuples(st.just("forget"), st.integers(1, 6))
expire = st.tuples(st.just("expire"), st.integers(0, 60))


def _unit(seed: int | list[int], size: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(size).astype(np.float32)
    return v / np.linalg.norm(v)


def _in_use(sightings: Sightings) -> list[tuple[int, str, float, tuple[float, ...]]]:
    return sorted(
        (int(owner), source, float(at), tuple(vector.tolist()))
        for source, vectors in sightings.vectors.items()
        for owner, at, vector in zip(sightings.owners[source], sightings.times[source], vectors, strict=True)
        if owner >= 0
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(add, add, forget, expire), min_size=10, max_size=120), st.integers(0, 2**31), st.booleans())
def test_the_table_kept_in_place_matches_as_the_sightings_rebuilt(
    ops: list[tuple], probe_seed: int, compact: bool
) -> None:
    table = SightingsTable(PER_STRANGER)
    if compact:
        table.compact_above = 0  # compacted whenever half its rows are free: the moves tested too
    # The model: each stranger's latest sightings per source, as StrangerCache kept them before.
    kept: dict[tuple[int, EmbeddingSource], deque[tuple[float, np.ndarray]]] = {}
    for clock, op in enumerate(ops):
        if op[0] == "add":
            _, stranger, source, seed = op
            vector = _unit([seed, clock], DIM[source])  # never two alike: no tie to break either way
            table.add(stranger, source, vector, float(clock))
            kept.setdefault((stranger, source), deque(maxlen=PER_STRANGER)).append((float(clock), vector))
        elif op[0] == "forget":
            table.forget(op[1])
            kept = {k: v for k, v in kept.items() if k[0] != op[1]}
        else:
            horizon = float(clock - op[1])
            table.forget_seen_before(horizon)
            kept = {k: v for k, v in kept.items() if v[-1][0] >= horizon}
        rebuilt = Sightings.build([(s, src, v, at) for (s, src), rows in kept.items() for at, v in rows])
        assert _in_use(table.sightings()) == _in_use(rebuilt)
        assert len(table) == sum(len(rows) for rows in kept.values())
        face, body = _unit(probe_seed + clock, DIM["face"]), _unit(probe_seed + 1000 + clock, DIM["body"])
        for exclude in ((), (1, 2)):
            for between in (None, (clock - 20.0, float(clock))):
                # Thresholds of -1: the best row always answers, so the two must agree on it.
                loose = {"face": -1.0, "body": -1.0}
                ours = match_stranger(table.sightings(), face, body, loose, exclude=exclude, seen_between=between)
                theirs = match_stranger(rebuilt, face, body, loose, exclude=exclude, seen_between=between)
                assert ours == theirs


def test_a_new_sighting_writes_one_row_in_place() -> None:
    table = SightingsTable(PER_STRANGER)
    for stranger in range(1, 11):
        table.add(stranger, "face", _unit(stranger, 8), float(stranger))
    before = table.sightings().vectors["face"]
    table.add(11, "face", _unit(11, 8), 11.0)  # a new stranger: a fresh row of the same matrix
    table.add(3, "face", _unit(30, 8), 12.0)  # its second sighting: another row
    after = table.sightings().vectors["face"]
    assert np.shares_memory(before, after) and len(after) == 12
    table.forget(5)  # its row is free: the next sighting takes it
    table.add(12, "face", _unit(12, 8), 13.0)
    assert len(table.sightings().vectors["face"]) == 12 and len(table) == 12
    for _ in range(PER_STRANGER):  # past its latest PER_STRANGER, a stranger's oldest row is reused
        table.add(3, "face", _unit(31, 8), 14.0)
    assert len(table.sightings().vectors["face"]) == 13 and len(table) == 13


def test_a_free_row_never_matches() -> None:
    table = SightingsTable(PER_STRANGER)
    table.add(1, "face", _unit(1, 8), 1.0)
    table.add(2, "face", _unit(2, 8), 2.0)
    table.forget(1)
    # Its vector is left in the free row; the probe is that very vector.
    found = match_stranger(table.sightings(), _unit(1, 8), None, {"face": -1.0, "body": -1.0})
    assert found is not None and found.stranger == 2


def test_a_vector_of_another_size_is_refused_and_changes_nothing() -> None:
    table = SightingsTable(PER_STRANGER)
    table.add(1, "body", _unit(1, 12), 1.0)
    for refused in ([(2, "body", _unit(2, 8), 2.0)], [(2, "face", _unit(2, 8), 2.0), (3, "body", _unit(3, 8), 2.0)]):
        with pytest.raises(ValueError, match="shape"):
            table.add_many(refused)  # type: ignore[arg-type]
    assert len(table) == 1 and _in_use(table.sightings())[0][0] == 1 and "face" not in table.sightings().vectors
    table.forget_seen_before(5.0)
    assert len(table) == 0


def test_sightings_added_together_are_those_added_one_by_one() -> None:
    rows = [(1 + n % 7, "face" if n % 3 else "body", _unit([n], 8 if n % 3 else 12), float(n)) for n in range(60)]
    one_by_one, together = SightingsTable(PER_STRANGER), SightingsTable(PER_STRANGER)
    for row in rows[:5]:
        one_by_one.add(*row)
        together.add(*row)
    for row in rows[5:]:
        one_by_one.add(*row)
    together.add_many(rows[5:])
    assert _in_use(together.sightings()) == _in_use(one_by_one.sightings())


def test_a_crowd_gone_from_the_window_gives_its_memory_back() -> None:
    table = SightingsTable(PER_STRANGER)
    for stranger in range(1, 501):  # a street's evening: 500 strangers, 3 faces each
        table.add_many([(stranger, "face", _unit([stranger, n], 8), float(stranger)) for n in range(3)])
    assert table.capacity("face") >= 1500
    table.forget_seen_before(498.0)  # all but the last three gone
    assert len(table) == 9 and table.capacity("face") == 16
    kept = table.sightings()
    assert sorted(set(kept.owners["face"].tolist())) == [498, 499, 500]
    # The moved rows still match as themselves.
    found = match_stranger(kept, _unit([499, 1], 8), None)
    assert found is not None and found.stranger == 499 and found.similarity == 1.0
    table.add(501, "face", _unit([501, 0], 8), 501.0)
    assert len(table.sightings().vectors["face"]) == 10
