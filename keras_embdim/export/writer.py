"""Where an export goes and how it lands there: versions, permissions, atomic moves, bytes.

TF Serving's `--model_base_path` is a folder of numbered versions
(`models/ctr/1/`, `models/ctr/2/`, ...), and it loads the highest. An export
is written to a hidden temporary folder in the same parent (TF Serving ignores
non-numeric names), verified, given the permissions `model.export()` gives
(folders 0o777 and files 0o666 less the process umask: 0755 / 0644 with the
usual umask 022, so a server running as another user can read it), and only
then renamed into place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from keras_embdim.export import warmup

SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


@dataclass
class Target:
    """Where an export is written."""

    base: str  # the folder given (TF Serving's model base path when versioned)
    version: int | None  # None: `base` is the SavedModel itself
    overwrite: bool

    @property
    def path(self) -> str:
        return self.base if self.version is None else os.path.join(self.base, str(self.version))

    @property
    def parent(self) -> str:
        return os.path.dirname(self.base) if self.version is None else self.base


def is_saved_model(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, f)) for f in SAVED_MODEL_FILES)


def versions(base: str) -> list[int]:
    """The numbered versions in a model base path."""
    if not os.path.isdir(base):
        return []
    return sorted(int(n) for n in os.listdir(base) if n.isdigit() and os.path.isdir(os.path.join(base, n)))


def check_version(version) -> int | str | None:
    if version is None or version == "auto":
        return version
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 1:
        raise ValueError(
            f"`version` must be 'auto' (the next free version number), a positive integer, or None "
            f"(write the SavedModel into export_dir itself); received version={version!r}."
        )
    return int(version)


def resolve(export_dir, version, overwrite: bool, *, create: bool = True) -> Target:
    """The target of an export, or a clear error before anything is written.

    Args:
        export_dir: the model base path (versioned) or the SavedModel folder (`version=None`).
        version: `"auto"`, a positive int, or None.
        overwrite: replace an existing SavedModel at the target (after the new one verified).
        create: create the parent folders (False: only check, as a callback does at train begin).
    """
    base = os.path.abspath(os.fspath(export_dir))
    version = check_version(version)
    if version is not None and is_saved_model(base):
        raise FileExistsError(
            f"export_dir={base!r} is a SavedModel itself; with version={version!r} it must be a model base "
            "path that holds numbered versions (what TF Serving's --model_base_path loads). Choose another "
            "folder, or version=None to write a plain SavedModel folder."
        )
    if version == "auto":
        version = (versions(base)[-1] + 1) if versions(base) else 1
        overwrite = False
    target = Target(base, version, bool(overwrite))
    if os.path.exists(target.path) and not target.overwrite:
        raise FileExistsError(
            f"export_dir={target.path!r} already exists; pass overwrite=True to replace it "
            "(the old export is kept until the new one has verified)"
            + (", or version='auto' for the next version." if target.version is not None else ".")
        )
    if target.overwrite and os.path.exists(target.path):
        _check_replaceable(target.path)
    parent = target.parent
    probe = parent  # the nearest folder that exists must be writable: checked before creating any
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise NotADirectoryError(f"export_dir={target.path!r}: {probe!r} is a file, not a folder.")
    if not os.access(probe, os.W_OK):
        raise PermissionError(f"export_dir={target.path!r}: its folder {probe!r} is not writable.")
    if create:
        os.makedirs(parent, exist_ok=True)
    return target


def _check_replaceable(path: str) -> None:
    """`overwrite=True` replaces an earlier export (or an empty folder), never a file or a folder of
    other files: those would be deleted with it."""
    if not os.path.isdir(path):
        raise FileExistsError(f"export_dir={path!r} is a file; overwrite=True replaces only an earlier export "
                              "(a SavedModel folder): choose another path.")
    entries = sorted(os.listdir(path))
    if entries and not is_saved_model(path):
        raise FileExistsError(
            f"export_dir={path!r} holds files that are not a SavedModel ({', '.join(entries[:5])}"
            f"{', ...' if len(entries) > 5 else ''}); overwrite=True replaces only an earlier export, never "
            "other files: choose another folder."
        )


def temporary_folder(target: Target) -> str:
    name = os.path.basename(target.path)
    return tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=target.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_permissions(folder: str) -> None:
    """Folders 0o777 and files 0o666 less the umask, as `model.export()` leaves them
    (`tempfile.mkdtemp` makes the top folder 0700: unreadable by a server of another user)."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~mask)


def saved_variable_bytes(saved_dir: str) -> dict[str, int]:
    """Bytes of every variable stored in a SavedModel, by checkpoint key."""
    reader = tf.train.load_checkpoint(os.path.join(saved_dir, "variables", "variables"))
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    out = {}
    for key, shape in shapes.items():
        if not key.endswith(".ATTRIBUTES/VARIABLE_VALUE"):
            continue
        out[key] = int(np.prod(shape, dtype=np.int64)) * tf.as_dtype(dtypes[key]).size
    return out


def _folder_bytes(path: str) -> int:
    if not os.path.isdir(path):
        return 0
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def disk_bytes(saved_dir: str) -> dict[str, int]:
    """Bytes on disk by part: the graph (`saved_model.pb` and fingerprint), the variables
    files (values plus index), the assets (e.g. lookup vocabularies), the TF Serving warmup
    requests (`keras_embdim.export.warmup`) and the total."""
    graph = sum(os.path.getsize(os.path.join(saved_dir, f)) for f in os.listdir(saved_dir)
                if f.endswith(".pb") or f.endswith(".pbtxt"))
    variables = _folder_bytes(os.path.join(saved_dir, "variables"))
    requests = warmup.path_in(saved_dir)
    requests = os.path.getsize(requests) if os.path.exists(requests) else 0
    assets = (_folder_bytes(os.path.join(saved_dir, "assets"))
              + _folder_bytes(os.path.join(saved_dir, warmup.WARMUP_FOLDER)) - requests)
    return {"graph": graph, "variables_files": variables, "assets": assets, "warmup_requests": requests,
            "total": _folder_bytes(saved_dir)}


def move_into_place(tmp: str, target: Target) -> str:
    """Rename `tmp` to the target (replacing an old export only once `tmp` is complete)."""
    path = target.path
    if os.path.exists(path):
        if not target.overwrite:  # appeared meanwhile
            raise FileExistsError(f"export_dir={path!r} already exists.")
        _check_replaceable(path)  # again: it may have changed while the export ran
        backup = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=os.path.dirname(path))
        os.rmdir(backup)
        os.rename(path, backup)
        try:
            os.rename(tmp, path)
        except BaseException:
            os.rename(backup, path)
            raise
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.rename(tmp, path)
    return path
