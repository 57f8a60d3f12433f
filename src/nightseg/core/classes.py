"""The 19-class Cityscapes taxonomy and the class sets the seed papers use.

Everything is derived from `cityscapesscripts.helpers.labels`, the reference label table, so that
label ids, names and colours can never drift from the official definition.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from cityscapesscripts.helpers.labels import labels as _cityscapes_labels

IGNORE_INDEX = 255
"""Label value for pixels that are not scored (void classes, unlabeled pixels)."""

NUM_CLASSES = 19

_train_labels = sorted(
    (lab for lab in _cityscapes_labels if 0 <= lab.trainId < IGNORE_INDEX), key=lambda lab: lab.trainId
)
assert [lab.trainId for lab in _train_labels] == list(range(NUM_CLASSES))

CLASS_NAMES: tuple[str, ...] = tuple(lab.name for lab in _train_labels)
"""Names of the 19 train classes in trainId order: road, sidewalk, ..., bicycle."""

TRAIN_ID_TO_LABEL_ID: np.ndarray = np.array([lab.id for lab in _train_labels], dtype=np.uint8)
"""trainId -> Cityscapes labelId (length 19)."""

LABEL_ID_TO_TRAIN_ID: np.ndarray = np.full(256, IGNORE_INDEX, dtype=np.uint8)
"""labelId -> trainId lookup table (length 256); ids without a train class map to 255."""
for _lab in _cityscapes_labels:
    if 0 <= _lab.id < 256 and 0 <= _lab.trainId < IGNORE_INDEX:
        LABEL_ID_TO_TRAIN_ID[_lab.id] = _lab.trainId

VALID_LABEL_IDS: frozenset[int] = frozenset(lab.id for lab in _cityscapes_labels if lab.id >= 0)
"""Every labelId defined in the Cityscapes table (0..33); anything else in a labelIds PNG is an error."""

PALETTE: np.ndarray = np.array([lab.color for lab in _train_labels], dtype=np.uint8)
"""19x3 uint8 RGB colours in trainId order (the official Cityscapes colours)."""

IGNORE_COLOR = (0, 0, 0)

STATIC_CLASSES: tuple[int, ...] = tuple(range(0, 11))
"""DANNet's static classes: road, sidewalk, building, wall, fence, pole, traffic light, traffic sign,
vegetation, terrain, sky (trainIds 0-10). The static loss of ULCA (Eq. 7-8) is computed on them."""

DYNAMIC_CLASSES: tuple[int, ...] = tuple(range(11, 19))
"""The dynamic classes: person, rider, car, truck, bus, train, motorcycle, bicycle (trainIds 11-18)."""

DEFAULT_EASY_CLASSES: tuple[str, ...] = ("road", "vegetation", "sky")
"""Classes that NightMix (ULCA, Section 3.1) never selects for the mixing mask: large, easy regions."""


def class_index(name: str) -> int:
    """Return the trainId of class `name` (e.g. ``"car"`` -> 13); raise ValueError for unknown names."""
    try:
        return CLASS_NAMES.index(name)
    except ValueError:
        raise ValueError(f"unknown class {name!r}; expected one of {', '.join(CLASS_NAMES)}") from None


def class_ids(names_or_ids: Iterable[str | int]) -> tuple[int, ...]:
    """Return the trainIds for a mix of class names and ids, sorted and without duplicates."""
    ids = set()
    for item in names_or_ids:
        if isinstance(item, str):
            ids.add(class_index(item))
        elif 0 <= int(item) < NUM_CLASSES:
            ids.add(int(item))
        else:
            raise ValueError(f"class id {item} is outside 0..{NUM_CLASSES - 1}")
    return tuple(sorted(ids))


def hard_classes(easy: Sequence[str | int] = DEFAULT_EASY_CLASSES) -> tuple[int, ...]:
    """Return the trainIds NightMix may select: every class except the `easy` ones (ULCA, Sec. 3.1)."""
    easy_ids = set(class_ids(easy))
    return tuple(i for i in range(NUM_CLASSES) if i not in easy_ids)


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map a Cityscapes labelIds array to trainIds (void ids -> 255)."""
    return LABEL_ID_TO_TRAIN_ID[label_ids]


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Map a trainIds array to Cityscapes labelIds (ignored pixels -> 0, 'unlabeled')."""
    table = np.zeros(256, dtype=np.uint8)
    table[:NUM_CLASSES] = TRAIN_ID_TO_LABEL_ID
    return table[train_ids]


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """Return an HxWx3 uint8 colour image of a trainId map (ignored pixels black)."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:] = IGNORE_COLOR
    table[:NUM_CLASSES] = PALETTE
    return table[train_ids]
