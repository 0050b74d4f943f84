import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from keras_embdim.search.budget import budget_params, select_under_budget


def test_hand_example_score_ranking():
    # two fields: costs 10 and 100; D = 3
    scores = np.array([[0.9, 0.1, 0.5], [0.8, 0.7, 0.05]])
    costs = np.array([10, 100])
    keep = select_under_budget(scores, costs, 230, min_dim=1)
    # floor: (0,0) cost 10 and (1,0) cost 100 -> 110; then by score:
    # (1,1)=0.7 cost 100 -> 210; (0,2)=0.5 cost 10 -> 220; (0,1)=0.1 -> 230 exactly
    assert keep.tolist() == [[True, True, True], [True, True, False]]
    assert (keep.sum(1) * costs).sum() == 230


def test_cost_ranking_prefers_cheap_columns():
    scores = np.array([[0.3, 0.2], [0.9, 0.8]])
    costs = np.array([1, 100])
    keep_s = select_under_budget(scores, costs, 102, min_dim=0, ranking="score")
    keep_c = select_under_budget(scores, costs, 102, min_dim=0, ranking="cost")
    assert keep_s.tolist() == [[True, True], [True, False]]  # 0.9 first, then the cheap ones
    assert keep_c.tolist() == [[True, True], [True, False]]
    keep_c2 = select_under_budget(scores, costs, 100, min_dim=0, ranking="cost")
    assert keep_c2.tolist() == [[True, True], [False, False]]  # score/cost: 0.3, 0.2 beat 0.009


def test_min_dim_floor_too_large_is_a_clear_error():
    with pytest.raises(ValueError, match="min_dim"):
        select_under_budget(np.ones((2, 4)), np.array([10, 10]), 30, min_dim=2)


def test_invalid_cells_never_kept_and_nan_ranks_last():
    scores = np.array([[np.nan, 1.0, 0.5], [0.2, 0.3, 0.9]])
    valid = np.array([[True, True, True], [True, True, False]])
    keep = select_under_budget(scores, np.array([1, 1]), 5, min_dim=0, valid=valid)
    assert not keep[1, 2]
    assert keep.sum() == 5
    keep = select_under_budget(scores, np.array([1, 1]), 4, min_dim=0, valid=valid)
    assert not keep[0, 0]  # the NaN one is the one left out


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 8),
    st.floats(0.01, 1.0),
    st.integers(0, 2),
    st.sampled_from(["score", "cost"]),
    st.integers(0, 10_000),
)
def test_budget_is_met_within_one_field_dimension(G, D, frac, min_dim, ranking, seed):
    rng = np.random.default_rng(seed)
    costs = rng.integers(1, 1000, size=G)
    scores = rng.random((G, D))
    target = budget_params(frac, int(costs.sum()) * D)
    floor = int(costs.sum()) * min(min_dim, D)
    if floor > target:
        with pytest.raises(ValueError):
            select_under_budget(scores, costs, target, min_dim=min_dim, ranking=ranking)
        return
    keep = select_under_budget(scores, costs, target, min_dim=min_dim, ranking=ranking)
    kept = int((keep.sum(1) * costs).sum())
    assert kept <= target
    assert (keep.sum(1) >= min(min_dim, D)).all()
    if not keep.all():
        cheapest_left = min(costs[g] for g in range(G) if not keep[g].all())
        assert target - kept < cheapest_left


def test_column_cap_by_hand():
    # two fields: costs 10 (a small field) and 1000; D = 3
    scores = np.array([[0.9, 0.8, 0.75], [0.7, 0.6, 0.5]])
    costs = np.array([10, 1000])
    # floor (0,0) + (1,0) = 1010 params, 2 columns; then by score: (0,1) 1020, (0,2) 1030, (1,1) 2030
    assert select_under_budget(scores, costs, 2030, min_dim=1).astype(int).tolist() == [[1, 1, 1], [1, 1, 0]]
    # at most 3 columns: the floor's two, then (0,1) only; 1020 of the 2030 parameters are used
    keep = select_under_budget(scores, costs, 2030, min_dim=1, max_columns=3)
    assert keep.astype(int).tolist() == [[1, 1, 0], [1, 0, 0]]
    # a cap the ranking never reaches changes nothing
    np.testing.assert_array_equal(select_under_budget(scores, costs, 2030, min_dim=1, max_columns=6),
                                  select_under_budget(scores, costs, 2030, min_dim=1))


def test_column_cap_below_the_min_dim_floor_is_a_clear_error():
    with pytest.raises(ValueError, match=r"cap of 3 columns .* min_dim=1 alone keeps \(4 columns\).*width_budget"):
        select_under_budget(np.ones((4, 2)), np.array([1, 1, 1, 1]), 8, min_dim=1, max_columns=3)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 8), st.floats(0.05, 1.0), st.integers(0, 2), st.integers(0, 48),
       st.integers(0, 10_000))
def test_column_cap_keeps_the_first_columns_the_uncapped_ranking_keeps(G, D, frac, min_dim, cap, seed):
    rng = np.random.default_rng(seed)
    costs = rng.integers(1, 1000, size=G)
    scores = rng.random((G, D))
    target = budget_params(frac, int(costs.sum()) * D)
    floor_params, floor_columns = int(costs.sum()) * min(min_dim, D), G * min(min_dim, D)
    if floor_params > target or floor_columns > cap:
        with pytest.raises(ValueError):
            select_under_budget(scores, costs, target, min_dim=min_dim, max_columns=cap)
        return
    free = select_under_budget(scores, costs, target, min_dim=min_dim)
    capped = select_under_budget(scores, costs, target, min_dim=min_dim, max_columns=cap)
    # the cap stops the same greedy ranking early: a subset of the uncapped choice, as many as fit
    assert not (capped & ~free).any()
    assert capped.sum() == min(cap, free.sum())
    assert (capped.sum(1) >= min(min_dim, D)).all()
    if capped.sum() < free.sum():  # the columns left out score no higher than any chosen beyond the floor
        floor = np.zeros_like(free)
        order = np.argsort(-scores, axis=1, kind="stable")
        for g in range(G):
            floor[g, order[g, :min(min_dim, D)]] = True
        chosen, left = scores[capped & ~floor], scores[free & ~capped]
        if chosen.size:
            assert left.max() <= chosen.min()


def test_frequency_value_dims_by_hand_and_budget():
    from baselines import frequency_value_dims  # a benchmark baseline, not a search

    # budget 4 of 4 values x 4 dims = 16 params at 0.25: weights (c+1)^0.3 = 3.99, 2.05, 1.23, 1
    np.testing.assert_array_equal(frequency_value_dims([100, 10, 1, 0], 4, 0.25), [2, 1, 1, 0])
    rng = np.random.default_rng(0)
    counts = rng.zipf(1.3, 3000).astype(float)
    for budget in (0.02, 0.03, 0.05, 0.5):
        d = frequency_value_dims(counts, 16, budget)
        assert d.sum() <= budget * 3000 * 16 and d.sum() >= budget * 3000 * 16 - 16
        # a more frequent value never gets fewer dims (equal counts may differ by the one leftover dim)
        levels = np.unique(counts)
        lo = np.array([d[counts == c].min() for c in levels])
        hi = np.array([d[counts == c].max() for c in levels])
        assert np.all(hi[:-1] <= lo[1:]) and np.all(hi - lo <= 1)
    np.testing.assert_array_equal(frequency_value_dims(counts, 16, 0.001, min_dim=1), np.ones(3000))
    with pytest.raises(ValueError, match="budget"):
        frequency_value_dims(counts, 16, 0)
