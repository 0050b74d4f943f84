"""What the benchmark grid runs: datasets, base models, methods, budgets (shared by its modules)."""

D = 16
DATASETS = ("frappe", "movielens", "criteo", "avazu")
MODELS = ("mlp", "deepfm")
METHODS = ("full", "uniform", "mde", "sseds", "ham", "amtl", "pme")
# the low-budget regime (issue 10): below 1/D every field at min_dim=1 is already over the
# budget, so the searches run with min_dim=0 (a field or a value may keep nothing)
LOW_METHODS = ("uniform1", "mde0", "freq", "drop", "sseds0", "ham0", "amtl0", "pme0")
ALL_METHODS = METHODS + LOW_METHODS
SEARCHED = ("sseds", "ham", "amtl", "pme")
SEARCHED_LOW = ("sseds0", "ham0", "amtl0", "pme0")
PER_VALUE = ("amtl", "pme", "amtl0", "pme0", "freq")
PER_FIELD_LOW = ("sseds0", "ham0")
BUDGETS = (0.1, 0.2, 0.5)
LOW_BUDGETS = (0.02, 0.03, 0.05)
UNIFORM1 = 1.0 / 16  # the budget uniform dimension 1 costs (recorded as its budget)
# the Kaggle samples hold 7-8k training rows: smaller batches give the searches steps to work with
BATCH = {"criteo": 256, "avazu": 256}


def run_key(r: dict) -> tuple:
    return (r["dataset"], r["model"], r["method"], r["budget"], r["seed"], r["epochs"])
