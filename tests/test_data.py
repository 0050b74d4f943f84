import numpy as np
import pytest

import keras_embdim as ked
from keras_embdim.data.encoding import encode_columns


def test_synthetic_is_reproducible_and_planted():
    a = ked.data.make_synthetic_ctr(num_rows=5000, num_fields=6, seed=1)
    b = ked.data.make_synthetic_ctr(num_rows=5000, num_fields=6, seed=1)
    np.testing.assert_array_equal(a.train[0], b.train[0])
    assert a.informative_fields == b.informative_fields and len(a.informative_fields) == 3
    assert len(a.train[1]) + len(a.valid[1]) + len(a.test[1]) == 5000
    for f, n in enumerate(a.vocab_sizes):
        assert a.train[0][:, f].max() < n
    # power-law: the largest field is much larger than the smallest
    assert max(a.vocab_sizes) / min(a.vocab_sizes) > 50
    # Zipf values: the most frequent value of a big field is far above the mean
    f = int(np.argmax(a.vocab_sizes))
    counts = a.value_counts[f]
    assert counts.max() > 20 * counts.mean()


def test_encode_columns_oov_and_frequency_order():
    import pandas as pd

    train = pd.DataFrame({"c": ["a", "b", "b", None, "c", "b", "a"]})
    test = pd.DataFrame({"c": ["b", "z", None]})
    (xtr, xte), vocab = encode_columns([train, test], ["c"], min_count=2)
    assert vocab == [3]  # OOV + b + a ("c" seen once)
    assert xtr[:, 0].tolist() == [2, 1, 1, 0, 0, 1, 2]
    assert xte[:, 0].tolist() == [1, 0, 0]


def test_loader_without_path_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("KERAS_EMBDIM_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="KERAS_EMBDIM_DATA"):
        ked.data.load_frappe()


def test_frappe(data_root):
    d = ked.data.load_frappe(data_root, seed=0)
    n = [len(s[1]) for s in (d.train, d.valid, d.test)]
    assert sum(n) == 86_582 and n[0] == round(0.8 * 86_582)
    y = np.concatenate([d.train[1], d.valid[1], d.test[1]])
    assert int(y.sum()) == 28_599
    assert d.field_names[:2] == ["user", "item"] and d.num_fields == 10
    assert d.vocab_sizes[4] == 3  # isweekend: 2 values + OOV
    assert sum(d.vocab_sizes) <= 5_382 + 10
    again = ked.data.load_frappe(data_root, seed=0)
    np.testing.assert_array_equal(again.test[0], d.test[0])


def test_movielens_100k(data_root):
    d = ked.data.load_movielens(data_root, seed=0)
    assert d.name == "movielens-100k"
    y = np.concatenate([d.train[1], d.valid[1], d.test[1]])
    assert len(y) == 100_000 and int(y.sum()) == 55_375
    assert d.field_names == ["user_id", "item_id", "age", "gender", "occupation", "zip", "genre"]
    assert d.vocab_sizes[1] <= 1_683 and d.vocab_sizes[3] <= 4


def test_movielens_1m_layout_on_hand_made_lines(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::10::5::978300760\n1::20::3::978302109\n2::10::4::978301968\n2::30::1::978300275\n")
    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    (tmp_path / "movies.dat").write_text(
        "10::GoldenEye (1995)::Action|Adventure|Thriller\n20::Heat (1995)::Crime|Thriller\n30::Nixon (1995)::Drama\n",
        encoding="latin-1",
    )
    d = ked.data.load_movielens(str(tmp_path), seed=0, fractions=(0.5, 0.25, 0.25))
    assert d.name == "movielens-1m"
    x = np.concatenate([d.train[0], d.valid[0], d.test[0]])
    y = np.concatenate([d.train[1], d.valid[1], d.test[1]])
    assert len(y) == 4 and int(y.sum()) == 2  # ratings 5 and 4
    assert d.num_fields == 7 and x.shape == (4, 7)


def test_criteo_sample(data_root):
    d = ked.data.load_criteo(data_root)
    n = [len(s[1]) for s in (d.train, d.valid, d.test)]
    assert n == [7200, 409, 391]
    assert int(sum(s[1].sum() for s in (d.train, d.valid, d.test))) == 1728
    assert d.num_fields == 39
    # integer bucketing: floor(log(x)^2) keeps I-fields small
    assert max(d.vocab_sizes[:13]) < 200


def test_avazu_sample(data_root):
    d = ked.data.load_avazu(data_root)
    n = [len(s[1]) for s in (d.train, d.valid, d.test)]
    assert n == [8087, 480, 432]
    assert int(sum(s[1].sum() for s in (d.train, d.valid, d.test))) == 1563
    assert d.num_fields == 22 and "id" not in d.field_names


def test_dataset_batches_feed_the_zoo(small_data):
    ds = small_data.dataset("valid", batch_size=128)
    x, y = next(iter(ds))
    assert sorted(x) == sorted(small_data.field_names) and y.shape[0] == 128


def test_synthetic_with_given_vocab_sizes():
    sizes = [5, 300, 300, 40]
    d = ked.data.make_synthetic_ctr(num_rows=5000, vocab_sizes=sizes, seed=1)
    assert d.vocab_sizes == sizes and d.num_fields == 4
    x = np.concatenate([d.train[0], d.valid[0], d.test[0]])
    assert (x.max(0) < np.array(sizes)).all() and (x.min(0) >= 0).all()
    # Zipf: the most frequent value of a 300-value field covers far more than 1/300 of the rows
    assert np.bincount(x[:, 1]).max() / len(x) > 10 / 300
    with pytest.raises(ValueError, match="vocab_sizes"):
        ked.data.make_synthetic_ctr(num_rows=100, vocab_sizes=[3, 0])


# ---------------------------------------------------------------- planted ranks
def _excess_value_variance(x, y, min_count=200):
    """Variance of per-value positive rates among frequent values, over its binomial expectation."""
    vals, counts = np.unique(x, return_counts=True)
    rates = np.array([y[x == v].mean() for v in vals[counts >= min_count]])
    n = counts[counts >= min_count]
    p = y.mean()
    return rates.var() / np.mean(p * (1 - p) / n)


def test_planted_ctr_returns_the_rank_allocation_and_noise_fields_carry_no_signal():
    d = ked.data.make_planted_ctr(60_000, [6, 6, 1, 1, 0, 0], vocab_sizes=[50] * 6, seed=2)
    assert d.planted_ranks == [6, 6, 1, 1, 0, 0]
    assert d.informative_fields == [0, 1, 2, 3]
    assert d.field_names == ["f00_r6", "f01_r6", "f02_r1", "f03_r1", "f04_r0", "f05_r0"]
    x, y = d.train
    excess = [_excess_value_variance(x[:, f], y) for f in range(6)]
    # a field's value moves the click rate (bias) only if its rank is >= 1; noise is binomial (ratio ~1)
    assert min(excess[:4]) > 3 and max(excess[4:]) < 2, excess
    again = ked.data.make_planted_ctr(60_000, [6, 6, 1, 1, 0, 0], vocab_sizes=[50] * 6, seed=2)
    np.testing.assert_array_equal(again.train[0], x)


def test_planted_interactions_have_the_planted_rank():
    # two rank-4 fields: bias (1 dim) + a 3-dim latent inner product. The pair's log-odds, with the
    # per-value effects removed (double centring), is a rank-3 matrix: 3 singular values stand out
    d = ked.data.make_planted_ctr(400_000, [4, 4], vocab_sizes=[8, 8], zipf_exponent=0.0, seed=0,
                                  fractions=(1.0, 0.0, 0.0))
    x, y = d.train
    pos = np.zeros((8, 8))
    cnt = np.zeros((8, 8))
    np.add.at(pos, (x[:, 0], x[:, 1]), y)
    np.add.at(cnt, (x[:, 0], x[:, 1]), 1)
    p = (pos + 0.5) / (cnt + 1)
    logit = np.log(p / (1 - p))
    centred = logit - logit.mean(0) - logit.mean(1)[:, None] + logit.mean()
    sv = np.linalg.svd(centred, compute_uv=False)
    assert sv[2] > 4 * sv[3], sv


@pytest.mark.parametrize("ranks,groups,match", [
    ([-1, 2], None, "ranks"),
    ([4, 2], [[0, 1]], "one rank"),
    ([4, 4, 4], [[0]], ">= 2 fields"),
])
def test_planted_ctr_rejects_bad_ranks_and_groups(ranks, groups, match):
    with pytest.raises(ValueError, match=match):
        ked.data.make_planted_ctr(1_000, ranks, groups=groups)
