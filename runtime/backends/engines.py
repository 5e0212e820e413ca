"""Which built engine of a bundle to run, and whether this machine can run it (no GPU needed)."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import PurePosixPath

from pdsn.kernels.tensorrt_modules import INSTALL_HINTS
from pdsn.model.manifest import Engine, Manifest
from pdsn.runtime.backends.base import BackendUnavailableError

# Compute capabilities a "portable" (ahead-of-time, no target given) TensorRT-RTX engine runs on.
RTX_PORTABLE = ("8.0", "8.6", "8.9", "12.0")
_OLDEST = datetime.min.replace(tzinfo=timezone.utc)


class EngineMismatchError(BackendUnavailableError):
    """The engine was built for another TensorRT flavour, version or GPU than the one here."""


def check_engine(entry: Engine, installed_version: str | None, compute_capability: str | None) -> None:
    """Refuse an engine this machine cannot run, saying which mismatch and how to rebuild."""
    flavour, rebuild = (
        entry.flavour,
        (f"rebuild it here with `pdsn build --bundle BUNDLE --precision {entry.precision} --flavour {entry.flavour}`"),
    )
    if installed_version is None:
        raise BackendUnavailableError(
            f"engine {entry.file} needs {flavour} {entry.version}, which is not installed: {INSTALL_HINTS[flavour]}"
        )
    if installed_version != entry.version and not entry.version_compatible:
        raise EngineMismatchError(
            f"engine {entry.file} was built with {flavour} {entry.version}, but {installed_version} "
            f"is installed; engines only run on the version that built them: {rebuild}"
        )
    if compute_capability is None:
        return
    target = entry.compute_capability
    if target == "ampere-plus":
        if _major(compute_capability) < 8:
            raise EngineMismatchError(
                f"engine {entry.file} is hardware-compatible with Ampere or newer GPUs, but this GPU "
                f"is {compute_capability}: {rebuild}"
            )
        return
    allowed = (
        RTX_PORTABLE if target == "portable" else tuple(f"{m[:-1]}.{m[-1]}" for m in re.findall(r"sm(\d+)", target))
    )
    if allowed and compute_capability not in allowed and not _same_family(compute_capability, allowed):
        raise EngineMismatchError(
            f"engine {entry.file} was built for compute capability {', '.join(allowed)} ({target}), "
            f"but this GPU is {compute_capability}: {rebuild}"
        )


def find_engine(manifest: Manifest, flavour: str, precision: str, name: str | None = None) -> Engine:
    """The bundle's engine entry to run for ``flavour`` and ``precision``.

    ``name`` picks one (see :func:`named_engine`). Otherwise the newest by its recorded ``built``
    time; entries from bundles older than that field count as oldest, and among equal times the
    last file name in sorted order wins, so the choice never depends on the manifest's order.
    """
    if name is not None:
        entry = named_engine(manifest, name)
        if (entry.flavour, entry.precision) != (flavour, precision):
            raise ValueError(
                f"engine {name!r} is a {entry.flavour} {entry.precision} engine, but a {flavour} "
                f"{precision} one was asked for; open it with backend={entry.flavour!r}, "
                f"precision={entry.precision!r}"
            )
        return entry
    engines = [e for e in manifest.engines.values() if e.flavour == flavour and e.precision == precision]
    if not engines:
        have = sorted(f"{e.flavour}/{e.precision}" for e in manifest.engines.values())
        raise ValueError(
            f"the bundle has no {flavour} engine for {precision} (it has {', '.join(have) or 'no engines'}); "
            f"build one with `pdsn build --bundle BUNDLE --precision {precision} --flavour {flavour}`"
        )
    return max(engines, key=lambda e: (_built_at(e), e.file))


def named_engine(manifest: Manifest, name: str) -> Engine:
    """The engine entry ``name`` names: its manifest key, its file (``engines/….engine``) or that file's name."""
    engines = manifest.engines
    for key, entry in sorted(engines.items()):
        if name in (key, entry.file, PurePosixPath(entry.file).name):
            return entry
    raise ValueError(
        f"the bundle has no engine {name!r}; it has {', '.join(sorted(engines)) or 'none'} "
        f"(pass one of these manifest keys, or its file name)"
    )


def _built_at(entry: Engine) -> datetime:
    """When the engine was built (UTC); an entry without the time counts as the oldest."""
    if entry.built is None:
        return _OLDEST
    try:
        built = datetime.fromisoformat(entry.built)
    except (TypeError, ValueError):
        raise ValueError(
            f"engine {entry.file} records built={entry.built!r}, not an ISO 8601 time; rebuild it with "
            f"`pdsn build` or pick an engine by name"
        ) from None
    return built if built.tzinfo else built.replace(tzinfo=timezone.utc)


def _major(capability: str) -> int:
    return int(capability.split(".")[0])


def _same_family(capability: str, allowed: tuple[str, ...]) -> bool:
    """RTX's 12.x target covers every 12.x GPU."""
    return _major(capability) == 12 and any(_major(a) == 12 for a in allowed)
