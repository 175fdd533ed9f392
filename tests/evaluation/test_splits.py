from __future__ import annotations

import pytest

from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.evaluation import Fold, leave_one_patient_out, leave_one_section_out, make_folds

HER2ST6 = {"B4": "B", "C2": "C", "C3": "C", "C4": "C", "C5": "C", "C6": "C"}


def test_leave_one_section_out_covers_each_section_once() -> None:
    folds = leave_one_section_out(list(HER2ST6))
    assert [f.test for f in folds] == [(s,) for s in HER2ST6]
    for f in folds:
        assert f.name == f.test[0]
        assert set(f.train) == set(HER2ST6) - {f.name}
        assert list(f.train) == [s for s in HER2ST6 if s != f.name]  # order kept


def test_leave_one_patient_out_her2st6() -> None:
    folds = leave_one_patient_out(HER2ST6)
    assert folds == [
        Fold("B", train=("C2", "C3", "C4", "C5", "C6"), test=("B4",)),
        Fold("C", train=("B4",), test=("C2", "C3", "C4", "C5", "C6")),
    ]
    for f in folds:
        assert not set(f.train) & set(f.test)


def test_make_folds_dispatch_and_errors() -> None:
    assert [f.name for f in make_folds("section", HER2ST6)] == list(HER2ST6)
    assert [f.name for f in make_folds("patient", HER2ST6)] == ["B", "C"]
    with pytest.raises(GR2STConfigError, match="expected one of section, patient"):
        make_folds("random", HER2ST6)
    with pytest.raises(GR2STConfigError, match="at least 2 patients"):
        leave_one_patient_out({"C2": "C", "C3": "C"})
    with pytest.raises(GR2STConfigError, match="at least 2 sections"):
        leave_one_section_out(["B4"])
    with pytest.raises(GR2STDataError, match="unique"):
        leave_one_section_out(["B4", "B4"])
    with pytest.raises(GR2STDataError, match="without '/'"):
        leave_one_section_out(["B4", "a/b"])
