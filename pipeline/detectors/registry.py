"""The one registry of detectors, by the name a scan's settings use.

poisonguard's own detectors register with ``@register_detector`` when ``pipeline.detectors`` is
imported. A detector of another package is found through the ``poisonguard.detectors``
entry-point group (its name: the entry point's) and imported only when a scan names a detector
the registry does not hold: the light commands (``--help``, ``review``) never import it, and a
broken package breaks only the scans that use it. docs/detectors.md says how to write one.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import TypeVar

from pipeline.detectors.base import Detector, GroupDetector, RowDetector
from pipeline.errors import PoisonguardError
from pipeline.params import DETECTOR_NAME

ENTRY_POINT_GROUP = "poisonguard.detectors"
# Registered detectors by name: poisonguard's own, then those of other packages as they load.
DETECTORS: dict[str, type[Detector]] = {}
_BUILTIN_PACKAGE = __name__.rpartition(".")[0] + "."

D = TypeVar("D", bound=type[Detector])


class DetectorRegistryError(PoisonguardError):
    """A detector cannot be registered or loaded: an unknown or taken name, a broken package."""


def register_detector(cls: D) -> D:
    """Class decorator: register ``cls`` under ``cls.name``. A name may be registered once."""
    if not (isinstance(cls, type) and issubclass(cls, (RowDetector, GroupDetector))):
        raise DetectorRegistryError(
            f"{cls!r} is not a detector: derive it from pipeline.detectors.RowDetector or GroupDetector (docs/detectors.md)."
        )
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not DETECTOR_NAME.fullmatch(name):
        raise DetectorRegistryError(
            f"{cls.__qualname__}.name must be a short snake_case name such as 'my_detector' "
            f"(lower-case letters, digits, '_'); got {name!r}."
        )
    taken = DETECTORS.get(name)
    if taken is not None and taken is not cls:
        raise DetectorRegistryError(
            f"Two detectors are named {name!r}: {_where(taken)} and {_where(cls)}; rename one "
            "(its class's name attribute and, for a package, its entry point)."
        )
    DETECTORS[name] = cls
    return cls


def detector_class(name: str) -> type[Detector]:
    """The registered detector called ``name``, loading it from its package's entry point if
    need be; an unknown name fails with the names that are known."""
    found = find_detector_class(name)
    if found is None:
        installed = sorted(set(installed_detectors()) - set(DETECTORS))
        known = ", ".join(DETECTORS) + (f"; installed: {', '.join(installed)}" if installed else "")
        raise DetectorRegistryError(
            f"Unknown detector {name!r}; known detectors: {known}. A detector of another package "
            f"is found through its {ENTRY_POINT_GROUP!r} entry point once the package is "
            "installed (docs/detectors.md)."
        )
    return found


def find_detector_class(name: str) -> type[Detector] | None:
    """``detector_class(name)``, or None when no detector has that name."""
    if name in DETECTORS:
        return DETECTORS[name]
    entry = installed_detectors().get(name)
    return None if entry is None else _load(entry)


def installed_detectors() -> dict[str, EntryPoint]:
    """The ``poisonguard.detectors`` entry points of the installed packages, by name. Two that
    claim the same name, or one that claims a name of poisonguard's own, fail: which of them a
    scan ran would otherwise depend on the order packages were installed in."""
    found: dict[str, EntryPoint] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        builtin = DETECTORS.get(entry.name)
        if builtin is not None and builtin.__module__.startswith(_BUILTIN_PACKAGE):
            raise DetectorRegistryError(
                f"The package {_distribution(entry)} declares a detector {entry.name!r} "
                f"({entry.value}), the name of poisonguard's own {builtin.__name__}; rename "
                f"its {ENTRY_POINT_GROUP!r} entry point."
            )
        other = found.get(entry.name)
        if other is not None and other.value != entry.value:  # the same package seen twice on sys.path is no clash
            raise DetectorRegistryError(
                f"Two installed packages declare a detector {entry.name!r}: "
                f"{_distribution(other)} ({other.value}) and {_distribution(entry)} "
                f"({entry.value}); uninstall one of them."
            )
        found[entry.name] = entry
    return found


def _load(entry: EntryPoint) -> type[Detector]:
    try:
        loaded = entry.load()
    except Exception as error:  # any import-time failure of a package that is not ours: one line, not a traceback
        detail = " ".join(f"{type(error).__name__}: {error}".split())
        raise DetectorRegistryError(
            f"The detector {entry.name!r} ({entry.value} in {_distribution(entry)}) failed to "
            f"load: {detail}. Fix or reinstall that package, or leave {entry.name!r} out "
            "of the scan's detectors."
        ) from error
    if not (isinstance(loaded, type) and issubclass(loaded, (RowDetector, GroupDetector))):
        raise DetectorRegistryError(
            f"The entry point {entry.name!r} of {_distribution(entry)} names {entry.value}, "
            "which is not a detector: it must name a class derived from "
            "pipeline.detectors.RowDetector or GroupDetector."
        )
    if getattr(loaded, "name", None) != entry.name:
        raise DetectorRegistryError(
            f"The entry point {entry.name!r} of {_distribution(entry)} names "
            f"{loaded.__qualname__}, whose name is {getattr(loaded, 'name', None)!r}; make "
            "the entry point's name and the class's name attribute the same."
        )
    return register_detector(loaded)


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _distribution(entry: EntryPoint) -> str:
    dist = entry.dist
    return f"{dist.name} {dist.version}" if dist is not None else "an installed package"
