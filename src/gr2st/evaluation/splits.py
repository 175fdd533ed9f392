"""Cross-validation splits over sections.

A fold names the sections a method is fitted on and the sections it is scored on. Each
test section is scored on its own, whatever the split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gr2st.errors import GR2STConfigError, GR2STDataError

#: Split names accepted by :func:`make_folds` (and ``gr2st benchmark --split``).
SPLITS: tuple[str, ...] = ("section", "patient")


@dataclass(frozen=True)
class Fold:
    """One train/test split.

    Attributes
    ----------
    name
        Fold identifier: the test section (section split) or the test patient
        (patient split). Used as a file name, so it holds no path separator.
    train
        Sections the method is fitted on.
    test
        Sections the fitted method predicts and is scored on.
    """

    name: str
    train: tuple[str, ...]
    test: tuple[str, ...]


def _check_names(names: Sequence[str], what: str) -> None:
    for name in names:
        if not name or "/" in name or "\\" in name or name in {".", ".."}:
            raise GR2STDataError(f"{what} {name!r}: expected a non-empty name without '/'")


def leave_one_section_out(sections: Sequence[str]) -> list[Fold]:
    """One fold per section: test on it, train on all the others.

    Examples
    --------
    >>> [(f.name, f.train) for f in leave_one_section_out(["B4", "C2", "C3"])]
    [('B4', ('C2', 'C3')), ('C2', ('B4', 'C3')), ('C3', ('B4', 'C2'))]
    """
    names = list(sections)
    _check_names(names, "section")
    if len(set(names)) != len(names):
        raise GR2STDataError(f"sections: names must be unique, got {names}")
    if len(names) < 2:
        raise GR2STConfigError(
            f"split 'section' needs at least 2 sections, got {len(names)}: {names}"
        )
    return [
        Fold(name=test, train=tuple(s for s in names if s != test), test=(test,)) for test in names
    ]


def leave_one_patient_out(sections: Mapping[str, str]) -> list[Fold]:
    """One fold per patient: test on all its sections, train on the other patients'.

    Parameters
    ----------
    sections
        Section name → patient id, in the order folds and sections should appear.

    Examples
    --------
    >>> folds = leave_one_patient_out({"B4": "B", "C2": "C", "C3": "C"})
    >>> [(f.name, f.train, f.test) for f in folds]
    [('B', ('C2', 'C3'), ('B4',)), ('C', ('B4',), ('C2', 'C3'))]
    """
    _check_names(list(sections), "section")
    patients = list(dict.fromkeys(sections.values()))
    _check_names(patients, "patient")
    if len(patients) < 2:
        raise GR2STConfigError(
            f"split 'patient' needs sections of at least 2 patients, got {patients}"
        )
    return [
        Fold(
            name=patient,
            train=tuple(s for s, p in sections.items() if p != patient),
            test=tuple(s for s, p in sections.items() if p == patient),
        )
        for patient in patients
    ]


def make_folds(split: str, sections: Mapping[str, str]) -> list[Fold]:
    """Folds of ``split`` (one of :data:`SPLITS`) over ``sections`` (section → patient).

    Examples
    --------
    >>> [f.name for f in make_folds("patient", {"B4": "B", "C2": "C"})]
    ['B', 'C']
    """
    if split == "section":
        return leave_one_section_out(list(sections))
    if split == "patient":
        return leave_one_patient_out(sections)
    raise GR2STConfigError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
