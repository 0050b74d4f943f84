"""Generated CTR data with power-law cardinalities and planted structure."""

from __future__ import annotations

import numpy as np

from keras_embdim.data.encoding import CTRData, split_indices


def _zipf_columns(rng: np.random.Generator, vocab, num_rows: int, exponent: float) -> np.ndarray:
    """`[num_rows, F]` int32 ids, field f's values Zipf-distributed over `vocab[f]` ids.

    Value ids are shuffled so that id order says nothing about frequency.
    """
    x = np.empty((num_rows, len(vocab)), dtype=np.int32)
    for f, n in enumerate(vocab):
        p = 1.0 / np.arange(1, n + 1) ** exponent
        p /= p.sum()
        x[:, f] = rng.permutation(n)[rng.choice(n, size=num_rows, p=p)]
    return x


def make_synthetic_ctr(
    num_rows: int = 100_000,
    num_fields: int = 10,
    *,
    num_informative: int | None = None,
    min_vocab: int = 10,
    max_vocab: int = 5_000,
    zipf_exponent: float = 1.1,
    latent_dim: int = 4,
    interaction_scale: float = 1.0,
    main_effect_scale: float = 0.7,
    seed: int = 0,
    fractions=(0.8, 0.1, 0.1),
    vocab_sizes=None,
) -> CTRData:
    """A click-through dataset whose label depends on some fields only.

    - Field cardinalities are spread geometrically (a power law) between
      `min_vocab` and `max_vocab`, in random order over the fields.
    - Values of a field follow a Zipf law (`p(i) ~ (i + 1)^-zipf_exponent`), so
      a few values are frequent and most are rare, as in real logs.
    - The label is Bernoulli(sigmoid(logit)) with
      `logit = b + sum_f w_f[v_f] + sum_{f<g} <u_f[v_f], u_g[v_g]>` over the
      informative fields only; `u` has `latent_dim` dimensions, so informative
      fields need several embedding dimensions and noise fields need none.

    Args:
        num_rows: rows in all (split 80/10/10 by `seed` unless `fractions`).
        num_fields: F.
        num_informative: fields the label depends on (default F // 2).
        min_vocab, max_vocab: smallest and largest cardinality.
        zipf_exponent: skew of the value frequencies.
        latent_dim: rank of the planted pairwise interactions.
        interaction_scale, main_effect_scale: scale of the two kinds of signal.
        seed: everything is reproducible from it.
        fractions: train/valid/test split.
        vocab_sizes: the cardinality of each field, instead of the spread
            between `min_vocab` and `max_vocab` (e.g. a few very large tables,
            as in the scaling benchmark); `num_fields` is then its length.

    Returns:
        `CTRData`, with `informative_fields` set.
    """
    if vocab_sizes is not None:
        vocab_sizes = [int(n) for n in vocab_sizes]
        if not vocab_sizes or min(vocab_sizes) < 1:
            raise ValueError(f"`vocab_sizes` must be positive cardinalities; received {vocab_sizes!r}.")
        num_fields = len(vocab_sizes)
    if num_fields < 1 or num_rows < 10:
        raise ValueError("need num_fields >= 1 and num_rows >= 10.")
    rng = np.random.default_rng(seed)
    k = num_fields // 2 if num_informative is None else int(num_informative)
    if not 0 <= k <= num_fields:
        raise ValueError(f"`num_informative` must be in [0, {num_fields}]; received {num_informative}.")
    if vocab_sizes is not None:
        vocab = np.asarray(vocab_sizes)
    else:
        vocab = np.round(np.geomspace(min_vocab, max_vocab, num_fields)).astype(int)
        vocab = rng.permutation(vocab)
    informative = sorted(rng.choice(num_fields, size=k, replace=False).tolist())
    x = _zipf_columns(rng, vocab, num_rows, zipf_exponent)
    logit = np.zeros(num_rows)
    latents = {}
    for f in informative:
        logit += main_effect_scale * rng.standard_normal(vocab[f])[x[:, f]]
        latents[f] = rng.standard_normal((vocab[f], latent_dim)) / np.sqrt(latent_dim)
    pairs = [(f, g) for i, f in enumerate(informative) for g in informative[i + 1 :]]
    if pairs:
        inter = sum(np.sum(latents[f][x[:, f]] * latents[g][x[:, g]], axis=1) for f, g in pairs)
        logit += interaction_scale * inter / np.sqrt(len(pairs)) * 2.0
    logit -= np.median(logit) + 1.0  # about a 30% positive rate
    y = (rng.random(num_rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    parts = split_indices(num_rows, seed, fractions)
    names = [f"f{f:02d}_{'inf' if f in informative else 'noise'}" for f in range(num_fields)]
    return CTRData(
        name="synthetic",
        field_names=names,
        vocab_sizes=[int(n) for n in vocab],
        train=(x[parts[0]], y[parts[0]]),
        valid=(x[parts[1]], y[parts[1]]),
        test=(x[parts[2]], y[parts[2]]),
        informative_fields=informative,
    )


def make_planted_ctr(
    num_rows: int,
    ranks,
    *,
    vocab_sizes=None,
    groups=None,
    min_vocab: int = 100,
    max_vocab: int = 20_000,
    zipf_exponent: float = 1.1,
    interaction_scale: float = 1.0,
    bias_scale: float = 0.5,
    seed: int = 0,
    fractions=(0.8, 0.1, 0.1),
) -> CTRData:
    """Generated CTR data in which each field needs a known number of dims: its planted rank.

    Field `f` of rank `r_f`:

    - `r_f = 0`: a noise field; the label does not depend on it.
    - `r_f >= 1`: a per-value bias `w_f[v]` (one dim), and, for `r_f >= 2`, a
      latent vector `u_f[v]` of `r_f - 1` dims. The fields of a group (by
      default: the fields of equal rank >= 2) interact through the inner
      products `<u_f[v_f], u_g[v_g]>` of every pair in the group, so a field
      carries its part of the label only with about `r_f` embedding dims (one for
      the bias, `r_f - 1` for a rank `r_f - 1` interaction). Rank-1 fields carry
      a bias only.

    `logit = sum_f bias_scale * w_f[v_f] + interaction_scale * sum_groups
    mean_pairs <u_f, u_g> * sqrt(d)`, centred to about a 30 % positive rate.
    Values follow a Zipf law within each field; cardinalities are spread
    geometrically between `min_vocab` and `max_vocab` (random order) unless given.

    Args:
        num_rows: rows in all (split by `fractions`).
        ranks: the planted rank of every field (F = len(ranks)), integers >= 0.
        vocab_sizes: cardinalities, one per field (default: the geometric spread).
        groups: lists of field indices that interact; the fields of a group must
            share one rank >= 2 (default: one group per distinct rank >= 2).
        min_vocab, max_vocab: the spread of cardinalities.
        zipf_exponent: skew of the value frequencies.
        interaction_scale, bias_scale: the two kinds of signal.
        seed: everything is reproducible from it.
        fractions: train/valid/test split.

    Returns:
        `CTRData` with `planted_ranks` (the rank oracle's allocation) and
        `informative_fields` (the fields of rank >= 1).

    Example:

    >>> d = make_planted_ctr(2_000, [4, 4, 2, 2, 1, 0], seed=0)
    >>> d.planted_ranks, d.informative_fields
    ([4, 4, 2, 2, 1, 0], [0, 1, 2, 3, 4])
    """
    ranks = [int(r) for r in ranks]
    if not ranks or min(ranks) < 0:
        raise ValueError(f"`ranks` must be one integer >= 0 per field; received {ranks!r}.")
    if num_rows < 10:
        raise ValueError(f"`num_rows` must be >= 10; received {num_rows!r}.")
    num_fields = len(ranks)
    rng = np.random.default_rng(seed)
    if vocab_sizes is not None:
        vocab = np.asarray([int(n) for n in vocab_sizes])
        if vocab.shape != (num_fields,) or vocab.min() < 1:
            raise ValueError(f"`vocab_sizes` must hold {num_fields} positive cardinalities; received {vocab_sizes!r}.")
    else:
        vocab = rng.permutation(np.round(np.geomspace(min_vocab, max_vocab, num_fields)).astype(int))
    if groups is None:
        groups = [[f for f in range(num_fields) if ranks[f] == r] for r in sorted(set(ranks)) if r >= 2]
    groups = [list(g) for g in groups]
    for g in groups:
        if len(g) < 2 or len({ranks[f] for f in g}) != 1 or ranks[g[0]] < 2:
            raise ValueError(f"each group must hold >= 2 fields of one rank >= 2 (they interact through a "
                             f"rank - 1 inner product); received group {g} with ranks {[ranks[f] for f in g]}.")
    x = _zipf_columns(rng, vocab, num_rows, zipf_exponent)
    logit = np.zeros(num_rows)
    for f in range(num_fields):
        if ranks[f] >= 1:
            logit += bias_scale * rng.standard_normal(vocab[f])[x[:, f]]
    for g in groups:
        d = ranks[g[0]] - 1
        latent = {f: rng.standard_normal((vocab[f], d)) / np.sqrt(d) for f in g}
        pairs = [(a, b) for i, a in enumerate(g) for b in g[i + 1:]]
        inter = sum(np.sum(latent[a][x[:, a]] * latent[b][x[:, b]], axis=1) for a, b in pairs)
        logit += interaction_scale * inter / len(pairs) * np.sqrt(d)
    logit -= np.median(logit) + 1.0
    y = (rng.random(num_rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    parts = split_indices(num_rows, seed, fractions)
    names = [f"f{f:02d}_r{r}" for f, r in enumerate(ranks)]
    return CTRData(
        name="planted",
        field_names=names,
        vocab_sizes=[int(n) for n in vocab],
        train=(x[parts[0]], y[parts[0]]),
        valid=(x[parts[1]], y[parts[1]]),
        test=(x[parts[2]], y[parts[2]]),
        informative_fields=[f for f in range(num_fields) if ranks[f] >= 1],
        planted_ranks=ranks,
    )
