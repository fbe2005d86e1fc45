"""Safe file handling: atomic writes, sha256 hashes, JSON and safetensors without pickle."""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads only when tensors are saved or read
    import torch


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the same folder as ``path``; on success, fsync it, give it the
    usual permissions and rename it over ``path``. For writers that want a file name (e.g.
    ``gguf.GGUFWriter``). On an exception the temporary file is removed and any earlier file at
    ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temporary file in the same folder and rename it over ``path`` on success.

    A crash or an exception inside the block leaves any earlier file at ``path`` untouched.
    """
    with atomic_path(path) as tmp, \
            open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:  # type: ignore[call-overload]
        yield f


def _strict_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def read_jsonl(path: str | os.PathLike[str], *, error: type[Exception],
               strict: bool = False) -> list[tuple[str, Any]]:
    """Raw values of a JSON-lines file with their locations (``"<path>, line <n>"``).

    Blank lines are skipped; a missing file, a folder, bytes that are not UTF-8 (a BOM on the
    first line is allowed) or a line that is not one JSON value raise ``error`` (an
    ``EmolensError`` subclass) naming the file and line. ``strict`` also rejects duplicate keys
    and the non-standard constants NaN / Infinity.
    """
    path = Path(path)
    try:
        raw_lines = path.read_bytes().split(b"\n")
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, expected a .jsonl file") from None
    kwargs: dict[str, Any] = ({"object_pairs_hook": _strict_pairs,
                               "parse_constant": _reject_constant} if strict else {})
    out: list[tuple[str, Any]] = []
    for n, raw in enumerate(raw_lines, 1):
        where = f"{path}, line {n}"
        try:
            line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise error(f"{where}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
        if not line.strip():
            continue
        try:
            obj = json.loads(line, **kwargs)
        except json.JSONDecodeError as e:
            raise error(f"{where}: not valid JSON ({e.msg} at column {e.colno}); each "
                        "line must hold one JSON object") from None
        except (ValueError, RecursionError) as e:
            raise error(f"{where}: not valid JSON ({e})") from None
        out.append((where, obj))
    return out


def read_json(path: str | os.PathLike[str], *, error: type[Exception],
              duplicate_keys: bool = False) -> Any:
    """Parse one JSON file; every failure is ``error`` (an ``EmolensError`` subclass) naming the
    file: missing, a folder, unreadable, not UTF-8, not JSON, nested too deeply. Duplicate keys
    are refused unless ``duplicate_keys``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{str(path)!r}: file not found") from None
    except IsADirectoryError:
        raise error(f"{str(path)!r} is a folder, expected a JSON file") from None
    except OSError as e:
        raise error(f"cannot read {str(path)!r}: {e.strerror or e}") from None
    return parse_json(raw, where=str(path), error=error, duplicate_keys=duplicate_keys)


def parse_json(raw: bytes, *, where: str, error: type[Exception],
               duplicate_keys: bool = False) -> Any:
    """``json.loads`` of ``raw`` with every failure turned into ``error`` (see ``read_json``)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise error(f"{where!r} is not valid UTF-8 ({e.reason} at byte {e.start}); the file "
                    "was edited or is damaged") from None
    try:
        return json.loads(text, object_pairs_hook=None if duplicate_keys else _strict_pairs)
    except json.JSONDecodeError as e:
        raise error(f"{where!r} is not valid JSON ({e.msg} at line {e.lineno}, column "
                    f"{e.colno}); the file was edited or truncated") from None
    except RecursionError:
        raise error(f"{where!r} is nested too deeply to be a file emolens wrote; the file was "
                    "edited or is damaged") from None
    except ValueError as e:  # duplicate keys
        raise error(f"{where!r} is not valid JSON here ({e}); the file was edited") from None


@contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if needed) for the block.

    ``fcntl.flock`` on POSIX (between processes and between threads: each call opens its own
    file description), ``msvcrt.locking`` on Windows. The lock dies with its process, so a
    killed writer never leaves a stale lock behind; the lock file itself stays (it is empty).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        try:
            import fcntl
        except ImportError:  # Windows
            import msvcrt

            while True:
                try:
                    msvcrt.locking(f.fileno(), msvcrt.LK_LOCK, 1)  # type: ignore[attr-defined]
                    break
                except OSError:  # LK_LOCK gives up after 10 s; keep waiting
                    continue
            try:
                yield
            finally:
                f.seek(0)
                msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]
            return
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def check_output_file(path: str | os.PathLike[str], *, error: type[Exception],
                      what: str = "output file") -> Path:
    """Refuse, before any compute, an output path that cannot become a file: an existing
    folder, a path below a file, a folder that cannot be created or written. Creates the
    parent folder; returns the path."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{what} {str(path)!r} is a folder; give a file name inside it, e.g. "
                    f"{str(path / 'results.json')!r}")
    _check_folder(path.parent, error=error, what=f"the folder of {what} {str(path)!r}")
    return path


def check_output_folder(path: str | os.PathLike[str], *, error: type[Exception],
                        what: str = "output folder") -> Path:
    """Refuse, before any compute, an output folder that is a file, lies below a file, or
    cannot be created or written. Creates it; returns the path."""
    path = Path(path)
    _check_folder(path, error=error, what=f"{what} {str(path)!r}")
    return path


def _check_folder(folder: Path, *, error: type[Exception], what: str) -> None:
    for p in (folder, *folder.parents):
        if p.exists() and not p.is_dir():
            raise error(f"{what} cannot be created: {str(p)!r} is a file, not a folder; "
                        "choose another path")
        if p.exists():
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise error(f"{what} cannot be created ({e.strerror or e}); choose another path") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".emolens-write-check.", dir=folder)
    except OSError as e:
        raise error(f"{what} is not writable ({e.strerror or e}); choose another path or fix "
                    "its permissions") from None
    os.close(fd)
    os.unlink(probe)


def folder_content_key(path: str | os.PathLike[str], *, sample: int = 1 << 16) -> str:
    """A cheap content key of a model folder: sha256 over every file's relative path, size and
    mtime (ns) plus a hash of its first and last ``sample`` bytes. Any change of a weight file
    (rewritten, replaced, truncated) changes the key; reading is O(files), not O(bytes)."""
    root = Path(path)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        st = p.stat()
        h.update(f"{p.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        with open(p, "rb") as f:
            h.update(f.read(sample))
            if st.st_size > sample:
                f.seek(max(sample, st.st_size - sample))
                h.update(f.read(sample))
    return h.hexdigest()


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented UTF-8 JSON."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None and every mapping key made a
    string (nested dicts, lists and tuples; tuples become lists), so ``write_json`` writes
    strict JSON that any reader accepts."""
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def safe_filename(name: str) -> str:
    """``name`` usable as one file-name component: every character other than a letter, a
    digit, ``-``, ``_`` or ``.`` becomes ``_`` (e.g. a model name ``org/model`` ->
    ``org_model``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):  # torch tensors, numpy arrays and scalars
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_tensors(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> None:
    """Atomically write tensors as safetensors (contiguous CPU copies)."""
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    with atomic_open(path, "wb") as f:
        f.write(data)


def load_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a safetensors file (never executes code)."""
    from safetensors.torch import load_file

    return load_file(str(path))
