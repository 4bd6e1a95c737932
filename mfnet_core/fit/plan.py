"""The loss plan: every term's name, its default weight, whether it runs by default and what
it needs, in one place (no torch here, so the CLI can check `--losses` instantly).

The terms are the MFNet paper's eq. 6-11 as a test-time fit uses them. `plan_losses` turns
what the user asked for into what can run on the given photos, with a reason for each
term left out (report.json's `loss_terms_skipped`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mfnet_core.errors import MfnetError

__all__ = [
    "DEFAULT_LOSSES",
    "DENSE_TERMS",
    "FLOW_METHODS",
    "LANDMARK_TERMS",
    "LOSS_TERMS",
    "PAPER_REG",
    "LossPlan",
    "LossTerm",
    "LossWeights",
    "TERMS",
    "check_flow_estimator",
    "parse_losses",
    "plan_losses",
    "uses",
]


@dataclass(frozen=True)
class LossTerm:
    name: str
    equation: str  # where the paper defines it
    stage: str  # "landmark" (the landmark fit) or "dense" (after it, `fit.dense`)
    default: bool  # on unless the user leaves it out
    min_views: int  # photos it needs to mean anything
    summary: str


TERMS: dict[str, LossTerm] = {
    t.name: t
    for t in (
        LossTerm("landmarks", "eq. 7", "landmark", True, 1, "68 landmarks, robust L1"),
        LossTerm("eye", "eq. 8", "landmark", True, 1, "upper-lower eyelid offsets"),
        LossTerm("lip", "eq. 9", "landmark", True, 1, "upper-lower lip offsets"),
        LossTerm(
            "flow", "eq. 6", "dense", True, 2, "optical flow between views in the covisible mask"
        ),
        LossTerm(
            "photo", "eq. 11 (photometric)", "dense", False, 1, "re-rendered face vs the photos"
        ),
        LossTerm("reg", "eq. 10", "landmark", True, 1, "identity and expression prior"),
    )
}
LOSS_TERMS: tuple[str, ...] = tuple(TERMS)
DEFAULT_LOSSES: tuple[str, ...] = tuple(n for n, t in TERMS.items() if t.default)
LANDMARK_TERMS: tuple[str, ...] = tuple(n for n, t in TERMS.items() if t.stage == "landmark")
DENSE_TERMS: tuple[str, ...] = tuple(n for n, t in TERMS.items() if t.stage == "dense")

# The paper's lambda_5, a training weight (training/); the fit's default is LossWeights.reg.
PAPER_REG = 1e-4


@dataclass(frozen=True)
class LossWeights:
    """Eq. 11's lambdas: multiop 1, singlelmk 1, eye 1, lip 0.5 as in the paper.

    The regulariser's lambda is the exception for test-time fitting: with landmark residuals
    in face-normalised units, the paper's 1e-4 (PAPER_REG, the training default) lets one
    photo's fit run to expression coefficients of +-12 std; 1e-2 gave the lowest error on the
    synthetic benchmark for 1 and 3 views (docs/BENCHMARKS.md, "Regulariser weight").
    """

    flow: float = 1.0
    landmarks: float = 1.0
    eye: float = 1.0
    lip: float = 0.5
    reg: float = 1e-2
    photo: float = 1.0


def uses(losses: Iterable[str], term: str) -> bool:
    """Whether `term` is in `losses`; a misspelt term name is a bug, not a False."""
    if term not in TERMS:
        raise KeyError(f"unknown loss term {term!r}; terms are {', '.join(LOSS_TERMS)}")
    return term in tuple(losses)


def parse_losses(text: str) -> tuple[str, ...]:
    """'landmarks,eye,flow' -> ('landmarks', 'eye', 'flow'); unknown names are one clear error."""
    losses = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in losses if s not in TERMS]
    if unknown:
        raise MfnetError(f"unknown loss term(s) {unknown}; choose from {','.join(LOSS_TERMS)}")
    return losses


@dataclass(frozen=True)
class LossPlan:
    requested: tuple[str, ...]
    used: tuple[str, ...]
    skipped: dict[str, str] = field(default_factory=dict)  # term -> why

    @property
    def dense_terms(self) -> tuple[str, ...]:
        return tuple(t for t in DENSE_TERMS if t in self.used)

    def uses(self, term: str) -> bool:
        return uses(self.used, term)


_COUNT = {1: "one", 2: "two", 3: "three"}


def plan_losses(requested: Iterable[str], n_views: int) -> LossPlan:
    """The terms that can run on `n_views` photos, and why the others are skipped.

    The flow term compares views with each other, so one photo runs without it (and
    report.json says so) instead of failing: flow is on by default.
    """
    requested = tuple(requested)
    for t in requested:
        uses((), t)  # validates the name
    skipped = {
        t: f"needs {_COUNT.get(TERMS[t].min_views, TERMS[t].min_views)} or more photos; {n_views} given"
        for t in requested
        if n_views < TERMS[t].min_views
    }
    used = tuple(t for t in requested if t not in skipped)
    return LossPlan(requested, used, skipped)


# Optical flow estimators of the flow term: OpenCV's DIS, or torchvision's RAFT-large from a
# weights file the user provides (nothing is downloaded).
FLOW_METHODS = ("dis", "raft")


def check_flow_estimator(method: str, raft_weights: str | None) -> None:
    """Refuses a flow estimator that cannot run before any work is done (otherwise it would
    fail after the landmark fit)."""
    if method not in FLOW_METHODS:
        raise MfnetError(f"unknown flow method {method!r}; use {' or '.join(FLOW_METHODS)}")
    if method != "raft":
        if raft_weights:
            raise MfnetError("--raft-weights is only used with --flow-method raft")
        return
    if not raft_weights:
        raise MfnetError(
            "--flow-method raft needs --raft-weights PATH (a local RAFT-large state dict; "
            "nothing is downloaded)"
        )
    path = Path(raft_weights).expanduser()
    if not path.is_file():
        raise MfnetError(f"--raft-weights: RAFT weights file not found: {path}")
