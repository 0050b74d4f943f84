"""Generated CTR data with power-law cardinalities and planted structure."""

from __future__ import annotations

import numpy as np

from keras_embdim.data.encoding import CTRData, split_indices


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
    x = np.empty((num_rows, num_fields), dtype=np.int32)
    for f, n in enumerate(vocab):
        p = 1.0 / np.arange(1, n + 1) ** zipf_exponent
        p /= p.sum()
        # value ids are shuffled so that id order says nothing about frequency
        x[:, f] = rng.permutation(n)[rng.choice(n, size=num_rows, p=p)]
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
