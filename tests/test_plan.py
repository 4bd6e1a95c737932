"""The loss plan: term names, defaults and what each term needs live in one place."""

import pytest

from mfnet_core.errors import MfnetError
from mfnet_core.fit.plan import (
    DEFAULT_LOSSES,
    DENSE_TERMS,
    LOSS_TERMS,
    TERMS,
    check_flow_estimator,
    parse_losses,
    plan_losses,
    uses,
)


def test_defaults_and_stages_come_from_the_term_table():
    assert DEFAULT_LOSSES == ("landmarks", "eye", "lip", "flow", "reg")
    assert "photo" in LOSS_TERMS and "photo" not in DEFAULT_LOSSES
    assert DENSE_TERMS == ("flow", "photo")
    assert all(TERMS[t].stage == "dense" for t in DENSE_TERMS)


def test_plan_skips_flow_for_one_photo_and_says_why():
    plan = plan_losses(("landmarks", "flow", "photo", "reg"), 1)
    assert plan.used == ("landmarks", "photo", "reg")
    assert set(plan.skipped) == {"flow"} and "1 given" in plan.skipped["flow"]
    assert plan.dense_terms == ("photo",)
    plan = plan_losses(("landmarks", "flow", "reg"), 3)
    assert plan.used == ("landmarks", "flow", "reg") and plan.skipped == {}
    assert plan.uses("flow") and not plan.uses("photo")


def test_a_misspelt_term_is_an_error_not_false():
    with pytest.raises(KeyError, match="flwo"):
        uses(DEFAULT_LOSSES, "flwo")
    with pytest.raises(KeyError):
        plan_losses(("landmarks", "flwo"), 3)
    with pytest.raises(MfnetError, match="unknown loss term"):
        parse_losses("landmarks,flwo")
    assert parse_losses(" landmarks, eye ,,flow") == ("landmarks", "eye", "flow")


def test_flow_estimator_is_checked_without_torch(tmp_path):
    check_flow_estimator("dis", None)
    with pytest.raises(MfnetError, match="raft-weights"):
        check_flow_estimator("raft", None)
    with pytest.raises(MfnetError, match="not found"):
        check_flow_estimator("raft", str(tmp_path / "none.pth"))
    with pytest.raises(MfnetError, match="only used with"):
        check_flow_estimator("dis", str(tmp_path / "none.pth"))
    with pytest.raises(MfnetError, match="unknown flow method"):
        check_flow_estimator("farneback", None)
    weights = tmp_path / "raft.pth"
    weights.write_bytes(b"x")
    check_flow_estimator("raft", str(weights))
