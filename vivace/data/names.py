"""Human names for the classes of Imagenette and Imagewoof, which name folders by WordNet id.

The id stays the class's identity (folder names, `vocab`, `--json`, CSV); these names are for
what a person reads: tables, plots, `predict` text and the report.
"""
from __future__ import annotations

from typing import Sequence

IMAGENETTE_NAMES: dict[str, str] = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888257": "parachute",
}

IMAGEWOOF_NAMES: dict[str, str] = {
    "n02086240": "Shih-Tzu",
    "n02087394": "Rhodesian ridgeback",
    "n02088364": "beagle",
    "n02089973": "English foxhound",
    "n02093754": "Border terrier",
    "n02096294": "Australian terrier",
    "n02099601": "golden retriever",
    "n02105641": "Old English sheepdog",
    "n02111889": "Samoyed",
    "n02115641": "dingo",
}

_KNOWN = {**IMAGENETTE_NAMES, **IMAGEWOOF_NAMES}


def display_name(label: str) -> str:
    """The human name of a known WordNet id; any other label is already a name and is kept."""
    return _KNOWN.get(label, label)


def display_names(vocab: Sequence[str]) -> list[str]:
    """`display_name` of each class in `vocab`, in order."""
    return [display_name(label) for label in vocab]
