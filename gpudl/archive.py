"""Files gpudl writes and reads: model files and checkpoints are .npz archives
written atomically (a temporary file beside the target, fsync, rename) with
the mode open() would give, and read whole, with an error that says what a
file is when it is not what was asked for."""
from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile

import numpy as np


def _umask() -> int:
    try:  # Linux says it without changing it (setting it races with other threads)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_beside(path, owner):
    """(fd, name) of a new temporary file in path's folder; an error naming
    path (not the temporary file) when path is a directory or its folder
    cannot be made or written to."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{owner}: {path!r} is a directory; give a file path, such as "
                                f"{os.path.join(path, 'model.npz')!r}")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        return tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=folder)
    except OSError as e:
        why = e.strerror or str(e)
        above = folder
        while above and not os.path.exists(above):
            above = os.path.dirname(above)
        if above and not os.path.isdir(above):
            why = f"{above!r} is a file, not a folder"
        raise OSError(f"{owner}: cannot write {path!r}: {why}") from e


def check_writable(path, owner) -> None:
    """Fail now where atomic_write(path) would fail later (a callback's first save)."""
    fd, probe = _temp_beside(os.fspath(path), owner)
    os.close(fd)
    os.unlink(probe)


def atomic_write(path, write, owner="save") -> None:
    """Write through a temporary file in the same folder, then rename over path,
    so an interrupted write never leaves a half-written file at path. The file
    gets the mode open() would give (0o666 less the umask), not mkstemp's 0o600."""
    path = os.fspath(path)
    fd, tmp = _temp_beside(path, owner)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


#: what each kind of gpudl archive is, by the entry that holds its metadata
ARCHIVES = {"__config__": "a gpudl model file (Sequential.save; read it with gpudl.load)",
            "__meta__": "a gpudl checkpoint (ModelCheckpoint; go on from it with "
                        "Trainer.fit(resume_from=...))"}


def read_archive(path, meta_key, fmt, version, what, error):
    """(metadata, arrays) of an .npz written by gpudl (a model file or a
    checkpoint), read whole first; anything missing, truncated, corrupt, of
    another format or of a newer version raises ``error`` saying which."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise error(f"no {what} at {path!r}")
    try:
        with open(path, "rb") as f:
            data = f.read()
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as e:
        raise error(f"{path!r} is not a readable gpudl {what} (truncated or corrupt?): {e}") from e
    if meta_key not in arrays:
        other = next((k for k in ARCHIVES if k in arrays), None)
        if other is not None:
            raise error(f"{path!r} is {ARCHIVES[other]}, not a {what}")
        raise error(f"{path!r} is an .npz archive but not a gpudl {what} (it has no {meta_key})")
    try:
        meta = json.loads(arrays.pop(meta_key).tobytes().decode())
    except (ValueError, UnicodeDecodeError) as e:
        raise error(f"{path!r} is not a readable gpudl {what} (truncated or corrupt?): {e}") from e
    if meta.get("format") != fmt:
        raise error(f"{path!r} is not a gpudl {what} (format {meta.get('format')!r})")
    if meta.get("version", 0) > version:
        raise error(f"{path!r} has {what} format version {meta['version']}; "
                    f"this gpudl reads up to {version}")
    return meta, arrays
