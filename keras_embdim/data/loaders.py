"""Loaders for the real CTR datasets (Frappe, MovieLens 100K/1M, Criteo, Avazu).

Each reads the files as distributed, maps every categorical field to
contiguous ids with an OOV bucket learned on the training part
(`encode_columns`), and returns a `CTRData`. The folder comes from `path` or
`$KERAS_EMBDIM_DATA`; nothing is downloaded.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from keras_embdim.data.encoding import CTRData, encode_columns, resolve_path, split_indices

FRAPPE_FIELDS = ["user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city"]
ML_FIELDS = ["user_id", "item_id", "age", "gender", "occupation", "zip", "genre"]
ML_AGE_BUCKETS = [1, 18, 25, 35, 45, 50, 56]  # MovieLens-1M's own age codes
CRITEO_INT = [f"I{i}" for i in range(1, 14)]
CRITEO_CAT = [f"C{i}" for i in range(1, 27)]
AVAZU_COLUMNS = [
    "id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id",
    "app_domain", "app_category", "device_id", "device_ip", "device_model", "device_type",
    "device_conn_type", "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21",
]


def _build(name, frames, labels, fields, min_count=1) -> CTRData:
    xs, vocab = encode_columns(frames, fields, min_count=min_count)
    parts = [(x, np.asarray(y, dtype=np.float32)) for x, y in zip(xs, labels)]
    return CTRData(name, list(fields), vocab, parts[0], parts[1], parts[2])


def _split_frame(df: pd.DataFrame, label: np.ndarray, seed: int, fractions):
    idx = split_indices(len(df), seed, fractions)
    return [df.iloc[i].reset_index(drop=True) for i in idx], [label[i] for i in idx]


def load_frappe(path=None, *, seed: int = 0, fractions=(0.8, 0.1, 0.1), min_count: int = 1) -> CTRData:
    """Frappe (libfm format, both shipped parts pooled and split by `seed`)."""
    folder = resolve_path("frappe", path, "frappe.validation.libfm")
    frames = []
    for fname in ("frappe.validation.libfm", "frappe.test.libfm"):
        fp = os.path.join(folder, fname)
        if os.path.exists(fp):
            frames.append(pd.read_csv(fp, sep=" ", header=None, dtype=str, engine="c"))
    raw = pd.concat(frames, ignore_index=True)
    if raw.shape[1] != 11:
        raise ValueError(f"frappe: expected a label and 10 indices per line, got {raw.shape[1]} columns.")
    label = (raw[0].astype(int) > 0).astype(np.float32).to_numpy()
    cols = pd.DataFrame({f: raw[i + 1].str.split(":").str[0] for i, f in enumerate(FRAPPE_FIELDS)})
    parts, labels = _split_frame(cols, label, seed, fractions)
    data = _build("frappe", parts, labels, FRAPPE_FIELDS, min_count)
    return data


def _age_bucket(age: pd.Series) -> pd.Series:
    a = pd.to_numeric(age, errors="coerce")
    idx = np.searchsorted(ML_AGE_BUCKETS, a.fillna(0).to_numpy(), side="right") - 1
    return pd.Series(np.array(ML_AGE_BUCKETS)[np.clip(idx, 0, None)], index=age.index).where(a.notna())


def load_movielens(
    path=None, *, seed: int = 0, fractions=(0.8, 0.1, 0.1), threshold: int = 4, min_count: int = 1
) -> CTRData:
    """MovieLens as CTR: rating >= `threshold` is a click.

    Reads the 100K layout (`u.data`, `u.user`, `u.item`) or the 1M layout
    (`ratings.dat`, `users.dat`, `movies.dat`, `::`-separated), whichever the
    folder holds. Fields: user_id, item_id, age bucket, gender, occupation, zip
    prefix (first 3 characters), first genre.
    """
    for name, marker in (("movielens-1m", "ratings.dat"), ("movielens-100k", "u.data"), ("movielens", "u.data"), ("movielens", "ratings.dat")):
        try:
            folder = resolve_path(name, path, marker)
            break
        except FileNotFoundError:
            folder = None
    if folder is None:
        raise FileNotFoundError(
            "movielens: no u.data (100K) or ratings.dat (1M) under the given path / $KERAS_EMBDIM_DATA."
        )
    if os.path.exists(os.path.join(folder, "ratings.dat")):
        df, name = _read_ml1m(folder), "movielens-1m"
    else:
        df, name = _read_ml100k(folder), "movielens-100k"
    label = (df["rating"].to_numpy() >= threshold).astype(np.float32)
    parts, labels = _split_frame(df[ML_FIELDS], label, seed, fractions)
    return _build(name, parts, labels, ML_FIELDS, min_count)


def _read_ml100k(folder):
    ratings = pd.read_csv(os.path.join(folder, "u.data"), sep="\t", header=None,
                          names=["user_id", "item_id", "rating", "ts"], dtype=str)
    users = pd.read_csv(os.path.join(folder, "u.user"), sep="|", header=None,
                        names=["user_id", "age", "gender", "occupation", "zip"], dtype=str, encoding="latin-1")
    items = pd.read_csv(os.path.join(folder, "u.item"), sep="|", header=None, dtype=str, encoding="latin-1")
    genre_names = None
    gpath = os.path.join(folder, "u.genre")
    if os.path.exists(gpath):
        g = pd.read_csv(gpath, sep="|", header=None, dtype=str, encoding="latin-1").dropna()
        genre_names = dict(zip(g[1].astype(int), g[0]))
    flags = items.iloc[:, 5:].fillna("0").astype(int).to_numpy()
    first = np.where(flags.any(1), flags.argmax(1), -1)
    genre = [None if i < 0 else (genre_names or {}).get(int(i), str(int(i))) for i in first]
    items = pd.DataFrame({"item_id": items[0], "genre": genre})
    users = users.drop_duplicates("user_id")
    df = ratings.merge(users, on="user_id", how="left").merge(items, on="item_id", how="left")
    df["age"] = _age_bucket(df["age"])
    df["zip"] = df["zip"].str[:3]
    df["rating"] = df["rating"].astype(int)
    return df


def _read_ml1m(folder):
    def read(fname, names):
        with open(os.path.join(folder, fname), encoding="latin-1") as fh:
            rows = [line.rstrip("\n").split("::") for line in fh if line.strip()]
        return pd.DataFrame(rows, columns=names)

    ratings = read("ratings.dat", ["user_id", "item_id", "rating", "ts"])
    users = read("users.dat", ["user_id", "gender", "age", "occupation", "zip"])
    movies = read("movies.dat", ["item_id", "title", "genres"])
    movies["genre"] = movies["genres"].str.split("|").str[0]
    df = ratings.merge(users, on="user_id", how="left").merge(movies[["item_id", "genre"]], on="item_id", how="left")
    df["age"] = _age_bucket(df["age"])
    df["zip"] = df["zip"].str[:3]
    df["rating"] = df["rating"].astype(int)
    return df


def _criteo_bucket(col: pd.Series) -> pd.Series:
    """The usual Criteo integer bucketing: floor(log(x)^2) for x > 2, else x."""
    v = pd.to_numeric(col, errors="coerce")
    big = v > 2
    out = v.copy()
    out[big] = np.floor(np.log(v[big]) ** 2)
    return out.map(lambda a: None if pd.isna(a) else str(int(a)))


def load_criteo(path=None, *, min_count: int = 1) -> CTRData:
    """Criteo (tab-separated `label, I1..I13, C1..C26`), using the shipped train/dev/test split."""
    folder = resolve_path("criteo-sample", path, "train.csv")
    names = ["label", *CRITEO_INT, *CRITEO_CAT]
    frames = [
        pd.read_csv(os.path.join(folder, f), sep="\t", header=None, names=names, dtype=str, keep_default_na=False, na_values=[""])
        for f in ("train.csv", "dev.csv", "test.csv")
    ]
    for df in frames:
        for c in CRITEO_INT:
            df[c] = _criteo_bucket(df[c])
    labels = [df["label"].astype(int).to_numpy() for df in frames]
    data = _build("criteo", frames, labels, CRITEO_INT + CRITEO_CAT, min_count)
    return data


def load_avazu(path=None, *, min_count: int = 1) -> CTRData:
    """Avazu (comma-separated; train.csv has the header), shipped split.

    `hour` (YYMMDDHH) becomes hour of day; `id` is dropped.
    """
    folder = resolve_path("avazu-sample", path, "train.csv")
    frames = []
    for f in ("train.csv", "dev.csv", "test.csv"):
        fp = os.path.join(folder, f)
        with open(fp) as fh:
            has_header = fh.readline().startswith("id,")
        frames.append(pd.read_csv(fp, header=0 if has_header else None, names=AVAZU_COLUMNS, dtype=str))
    fields = [c for c in AVAZU_COLUMNS if c not in ("id", "click")]
    for df in frames:
        df["hour"] = df["hour"].str[-2:]
    labels = [df["click"].astype(int).to_numpy() for df in frames]
    return _build("avazu", frames, labels, fields, min_count)


LOADERS = {
    "frappe": load_frappe,
    "movielens": load_movielens,
    "criteo": load_criteo,
    "avazu": load_avazu,
}


def load_dataset(name: str, path=None, **kwargs) -> CTRData:
    """Load a dataset by name: one of frappe, movielens, criteo, avazu, synthetic."""
    if name == "synthetic":
        from keras_embdim.data.synthetic import make_synthetic_ctr

        return make_synthetic_ctr(**kwargs)
    if name not in LOADERS:
        raise ValueError(f"dataset must be one of {sorted(LOADERS) + ['synthetic']}; received {name!r}.")
    return LOADERS[name](path, **kwargs)
