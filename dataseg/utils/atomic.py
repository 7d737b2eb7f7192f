"""Writing files so that a crash never leaves a half-written file in place of a good one.

Every file the project writes that a later run reads (checkpoints, the text-embedding cache,
prepared datasets, evaluation summaries) goes through ``atomic_write``: the content is written
to a temporary file in the same directory, flushed to disk, then renamed onto the target.
"""
import os
import tempfile
from pathlib import Path
from typing import Callable, Union

__all__ = ["atomic_write", "atomic_write_bytes"]


def atomic_write(path: Union[str, Path], write: Callable[[str], object], *,
                 fsync: bool = True) -> None:
    """Calls ``write(tmp_path)`` (any writer that takes a filename: ``torch.save``, PIL,
    ``shutil.copyfile``, ...) and renames the result onto ``path``. On any error the temporary
    file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
