"""Driver expressions for the rig, as strings Blender's simple-expression evaluator accepts.

No bpy here. Blender evaluates "simple" driver expressions (arithmetic on the driver's
variables, no function calls to Python) itself, so they work without trusting the file to
run Python ("Auto Run Python Scripts" off). Driver expressions are limited to 255
characters (DNA `ChannelDriver.expression[256]`), so long linear combinations are split
into several drivers whose results a SUM driver adds.

Quaternion variables are named w, x, y, z (a pose bone's rotation_quaternion, which for the
rig's up-pointing, roll-0 bones is FLAME's local joint rotation in FLAME axes; see
rigdata.py). Rotation matrix of q = (w,x,y,z), normalised as Blender does when it poses a bone
(n = w^2+x^2+y^2+z^2):

    R = I + (2/n) * [[-(y2+z2),  xy-wz,     xz+wy   ],
                     [ xy+wz,   -(x2+z2),   yz-wx   ],
                     [ xz-wy,    yz+wx,    -(x2+y2) ]]

FLAME's pose correctives (posedirs) have coefficients (R - I)[r, c]: quadratic in (w,x,y,z).

Expression joint drift. FLAME regresses its joints from the expressed mesh, so joint j
sits at J_j + dJ_j with dJ_j = sum_k e_k * joint_expression_basis[k, j]; Blender's bones stay
at their rest heads J_j. Posing about the moved pivot equals posing about the rest pivot
followed by the translation (I - R_j) dJ_j in the parent's frame, which is exactly what a
pose bone's location does (the pose matrix is rest * T(location) * R). So each bone's
location is driven by L = (I - R) dJ, and dJ (linear in the expression shape-key values) by
chunked linear-combination drivers. With both, the Blender mesh equals FLAME's forward pass.
"""

from __future__ import annotations

import math
import re

import numpy as np

MAX_EXPRESSION_LEN = 255
QUAT_VARS = ("w", "x", "y", "z")
OFFSET_VARS = ("a", "b", "c")  # the three components of dJ in location drivers

_NORM = "(w*w+x*x+y*y+z*z)"
# (n/2) * (R - I), as polynomials in w, x, y, z; row-major.
_HALF_R_MINUS_I = (
    ("-(y*y+z*z)", "(x*y-w*z)", "(x*z+w*y)"),
    ("(x*y+w*z)", "-(x*x+z*z)", "(y*z-w*x)"),
    ("(x*z-w*y)", "(y*z+w*x)", "-(x*x+y*y)"),
)


def rotation_minus_identity_expr(r: int, c: int) -> str:
    """Driver expression for (R - I)[r, c] of the quaternion (w, x, y, z); any norm."""
    return f"2*{_HALF_R_MINUS_I[r][c]}/{_NORM}"


def pivot_offset_expr(r: int) -> str:
    """Driver expression for component r of (I - R) d, with d = (a, b, c): the pose-bone
    location that moves the rotation pivot from the rest joint J to J + d."""
    terms = []
    for c, var in enumerate(OFFSET_VARS):
        poly = _HALF_R_MINUS_I[r][c]
        # -(poly)*var, with the sign folded in
        if poly.startswith("-"):
            terms.append(f"+{poly[1:]}*{var}")
        else:
            terms.append(f"-{poly}*{var}")
    body = "".join(terms).lstrip("+")
    return f"2*({body})/{_NORM}"


def format_number(v: float, digits: int = 7) -> str:
    """Compact decimal for a driver expression (no exponent for ordinary magnitudes)."""
    s = f"{v:.{digits}g}"
    if "e" in s:
        mant, exp = s.split("e")
        s = f"{mant}e{int(exp)}"
    return s


def linear_combination_chunks(
    coefficients: np.ndarray,
    var_prefix: str = "v",
    tolerance: float = 0.0,
    max_len: int = MAX_EXPRESSION_LEN,
) -> list[tuple[str, list[int]]]:
    """Splits sum_k coefficients[k] * value_k into driver expressions of at most max_len
    characters.

    Returns [(expression, [k for each variable v0, v1, ... the expression uses])]. The
    coefficients of one chunk are written relative to a shared power of ten, so 7
    significant digits cost about 12 characters a term. Coefficients with |c| <= tolerance
    are left out. An all-zero input gives [].
    """
    coeffs = np.asarray(coefficients, dtype=np.float64).reshape(-1)
    keep = [k for k in range(len(coeffs)) if abs(coeffs[k]) > tolerance and coeffs[k] != 0.0]
    chunks: list[tuple[str, list[int]]] = []
    start = 0
    while start < len(keep):
        # grow the chunk while the expression fits
        end = start + 1
        best = _chunk_expression(coeffs, keep[start:end], var_prefix)
        while end < len(keep):
            trial = _chunk_expression(coeffs, keep[start : end + 1], var_prefix)
            if len(trial) > max_len:
                break
            best = trial
            end += 1
        if len(best) > max_len:  # a single term cannot be too long, but be explicit
            raise ValueError(f"driver expression too long: {best}")
        chunks.append((best, keep[start:end]))
        start = end
    return chunks


def _chunk_expression(coeffs: np.ndarray, ks: list[int], var_prefix: str) -> str:
    vals = coeffs[ks]
    exponent = int(math.floor(math.log10(float(np.max(np.abs(vals))))))
    scale = 10.0**exponent
    parts = []
    for i, v in enumerate(vals):
        num = format_number(float(v) / scale)
        if num.startswith("-"):
            parts.append(f"-{num[1:]}*{var_prefix}{i}")
        else:
            parts.append(f"+{num}*{var_prefix}{i}")
    body = "".join(parts).lstrip("+")
    if exponent == 0:
        return f"({body})"
    return f"({body})*1e{exponent}"


_SIMPLE_TOKEN = re.compile(
    r"\s*(?:(\d+\.?\d*(?:e[-+]?\d+)?)|([A-Za-z_][A-Za-z0-9_]*)|(\*\*|[-+*/()]))"
)


def evaluate(expression: str, variables: dict[str, float]) -> float:
    """Evaluates a driver expression made of numbers, variables and + - * / ( ) in Python
    (for tests: Blender evaluates the same string in its simple-expression evaluator)."""
    pos = 0
    tokens = []
    while pos < len(expression):
        m = _SIMPLE_TOKEN.match(expression, pos)
        if not m or m.end() == pos:
            raise ValueError(f"unexpected text in driver expression at {pos}: {expression[pos:]!r}")
        tokens.append(m.group(0).strip())
        pos = m.end()
    for t in tokens:
        if t[0].isalpha() or t[0] == "_":
            if t not in variables:
                raise ValueError(f"unknown variable {t!r} in {expression!r}")
    return float(eval(expression, {"__builtins__": {}}, dict(variables)))  # noqa: S307 (checked tokens)
