"""The ICT Face Model (USC ICT-FaceKit, MIT licence) behind the head-model interface.

A real morphable head made from light-stage scans: 100 identity components (~N(0,1)), 53
ARKit-named expression blendshapes (weights in [0, 1]), teeth, gums and tongue, eyeballs,
eyelashes and eye-region meshes, 12 materials. It ships inside the package
(`head/data/ict_face_model.npz`, built by `tools/build_ict_model.py`, with its licence) so
every user gets a human head without a download.

What this module adds to the published data, and why:
- joints (root, neck, jaw, eye_L, eye_R) as linear functions of the mesh (means of a few
  vertices, so they follow the identity) and skinning: eyeballs rigid on their eye joint
  (the model's eyeLook keys move only the lids), the head on the neck joint with a smooth
  blend down the neck. The jaw joint moves nothing in the fitting model: ICT opens the
  mouth with its jawOpen blendshape (teeth included), and a rig may drive that key from a
  jaw bone;
- the dynamic contour (jaw landmarks 0..16 per yaw bin): the published 68 vertices when
  frontal; for a side turned toward the camera its published jawline substitutes; for a
  side turned away, the vertex of the cheek row that forms the silhouette at that yaw;
- one texture atlas for all materials (the published UVs put each material in its own unit
  tile, several of them overlapping in u 0..1), so one image serves the whole head.

Units: the file is in centimetres; the model works in metres (`ModelInfo.file_units_to_metres`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mfnet_core.errors import MfnetError, ModelNotFoundError
from mfnet_core.head.flame import FLAME, FlameAssets, geometric_face_region
from mfnet_core.head.interface import (
    MAX_YAW_DEG,
    N_YAW_BINS,
    CoefficientSpace,
    LandmarkEmbedding,
    ModelInfo,
    Parts,
    UVLayout,
)
from mfnet_core.inputs.files import file_sha256

__all__ = [
    "ICT_MODEL_FILE",
    "ICT_LICENCE",
    "ICTFaceModel",
    "load_ict_assets",
    "ICTAssets",
    "ATLAS",
]

DATA = Path(__file__).resolve().parent / "data"
ICT_MODEL_FILE = DATA / "ict_face_model.npz"
ICT_LICENCE_FILE = DATA / "LICENSE"  # the ICT-FaceKit MIT licence, beside the model
# The shipped file's hash: a damaged or edited copy is refused with one line.
ICT_MODEL_SHA256 = "9874699e97db60e2677d5d1b0d13ea4ec160331c974a82892a63523f2ce34ba1"
ICT_LICENCE = (
    "ICT Face Model (ICT-FaceKit), Copyright (c) 2020 USC Institute for Creative "
    "Technologies, MIT licence (github.com/ICT-VGL/ICT-FaceKit)"
)
CM = 0.01
JOINT_NAMES = ("root", "neck", "jaw", "eye_L", "eye_R")
# Beyond this yaw a turned side uses its contour substitutes (below it the frontal points
# are still on the silhouette within a pixel or two).
CONTOUR_SWITCH_DEG = 12.0

# Where each material goes in the one texture atlas: (u0, v0, size_u, size_v) in [0,1].
# The face gets the largest cell; parts the photos rarely see get small ones.
ATLAS: dict[str, tuple[float, float, float, float]] = {
    "M_Face": (0.0, 0.375, 0.625, 0.625),
    "M_BackHead": (0.625, 0.625, 0.375, 0.375),
    "M_Teeth": (0.625, 0.4375, 0.1875, 0.1875),
    "M_GumsTongue": (0.8125, 0.4375, 0.1875, 0.1875),
    "M_ScleraLeft": (0.0, 0.1875, 0.1875, 0.1875),
    "M_ScleraRight": (0.1875, 0.1875, 0.1875, 0.1875),
    "M_IrisLeft": (0.375, 0.1875, 0.1875, 0.1875),
    "M_IrisRight": (0.5625, 0.1875, 0.1875, 0.1875),
    "M_EyeOcclusion": (0.75, 0.1875, 0.1875, 0.1875),
    "M_EyeLashes": (0.0, 0.0, 0.1875, 0.1875),
    "M_LacrimalFluid": (0.1875, 0.0, 0.375, 0.1875),
    "M_EyeBlend": (0.5625, 0.0, 0.1875, 0.1875),
}
# Part names as the rest of mfnet and the add-on see them (one material each).
PART_NAMES = {
    "M_Face": "skin",
    "M_BackHead": "skin_back",
    "M_Teeth": "teeth",
    "M_GumsTongue": "gums_tongue",
    "M_ScleraLeft": "sclera_L",
    "M_ScleraRight": "sclera_R",
    "M_IrisLeft": "iris_L",
    "M_IrisRight": "iris_R",
    "M_EyeOcclusion": "eye_occlusion",
    "M_EyeLashes": "eyelashes",
    "M_LacrimalFluid": "lacrimal_fluid",
    "M_EyeBlend": "eye_blend",
}


# Default sRGB colours of the parts a photo rarely shows well (a fit sees the teeth at most
# between the lips); the irises are baked from the photos.
PAINTED = {
    "teeth": (0.88, 0.85, 0.78),
    "gums_tongue": (0.72, 0.36, 0.36),
    "sclera_L": (0.86, 0.84, 0.80),
    "sclera_R": (0.86, 0.84, 0.80),
    "eyelashes": (0.06, 0.05, 0.045),
    "lacrimal_fluid": (0.80, 0.62, 0.58),
    "eye_blend": (0.80, 0.62, 0.58),
    "eye_occlusion": (0.20, 0.14, 0.12),
}
# Thin overlay parts that a renderer should blend (opacity), as ICT's own materials do.
ALPHA = {"eyelashes": 0.9, "eye_occlusion": 0.35, "lacrimal_fluid": 0.3, "eye_blend": 0.3}

# The Light model has no textures, and its sclera is a closed shell in front of the iris
# sphere: painted white, it hides the iris and the eyes look blank. So the shell's front
# cap becomes the visible iris ("cornea_L/R", baked from the photos) around a dark pupil
# ("pupil_L/R", painted): faces whose direction from the eye joint is within these angles of
# the eye's forward axis (+z). A human iris is ~12 mm across on a ~12 mm radius eyeball
# (acos 0.93 = 22 degrees); the pupil ~4 mm (acos 0.985 = 10 degrees).
CORNEA_COS = 0.93
PUPIL_COS = 0.985
PAINTED["pupil_L"] = PAINTED["pupil_R"] = (0.03, 0.025, 0.025)


@dataclass(frozen=True)
class ICTAssets(FlameAssets):
    """FlameAssets plus what ICT has and FLAME lacks: named, bounded expressions and parts."""

    expression_names: tuple[str, ...] = ()
    parts: Parts | None = None
    regions: dict = field(default_factory=dict)


# -- mesh helpers -----------------------------------------------------------------------------


def triangulate(polys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P,4) quads, triangles padded with -1 -> (F,3) triangles and (F,) source polygon."""
    quad = polys[:, 3] >= 0
    first = polys[:, [0, 1, 2]]
    second = polys[quad][:, [0, 2, 3]]
    tris = np.concatenate([first, second])
    src = np.concatenate([np.arange(len(polys)), np.flatnonzero(quad)])
    order = np.argsort(src, kind="stable")  # keep each polygon's triangles together
    return tris[order].astype(np.int64), src[order]


def atlas_uv(uvs: np.ndarray, face_uvs: np.ndarray, face_material: np.ndarray, names) -> tuple:
    """Moves every material's UV tile into its `ATLAS` cell.

    uvs (T,2) with u spanning several unit tiles; face_uvs (F,3) per triangle corner;
    face_material (F,). UV vertices shared by two materials are duplicated. Returns the new
    (T',2) coords and (F,3) uv faces.
    """
    out_uv, out_faces = [], np.empty_like(face_uvs)
    start = 0
    for m, name in enumerate(names):
        sel = face_material == m
        if not sel.any():
            continue
        ids, inverse = np.unique(face_uvs[sel], return_inverse=True)
        uv = uvs[ids].astype(np.float64)
        u0 = np.floor(uv[:, 0].min() + 1e-6)
        width = max(1.0, np.ceil(uv[:, 0].max() - 1e-6) - u0)  # lacrimal fluid spans 2 tiles
        cu, cv, su, sv = ATLAS[str(name)]
        local = np.stack([(uv[:, 0] - u0) / width, uv[:, 1]], 1).clip(0, 1)
        out_uv.append(np.stack([cu + local[:, 0] * su, cv + local[:, 1] * sv], 1))
        out_faces[sel] = start + inverse.reshape(-1, 3)
        start += len(ids)
    return np.concatenate(out_uv).astype(np.float32), out_faces.astype(np.int64)


def vertex_face_lookup(faces: np.ndarray, n_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """(V,) one triangle holding each vertex and (V,) the vertex's corner in it (-1: none)."""
    face_of = np.full(n_vertices, -1, dtype=np.int64)
    corner_of = np.full(n_vertices, -1, dtype=np.int64)
    for k in range(3):
        face_of[faces[:, k]] = np.arange(len(faces))
        corner_of[faces[:, k]] = k
    return face_of, corner_of


def on_vertices(vertex_ids, face_of: np.ndarray, corner_of: np.ndarray) -> tuple:
    """Landmarks sitting exactly on vertices: (...,) face ids and (...,3) one-hot barycentrics."""
    vid = np.asarray(vertex_ids, dtype=np.int64)
    bary = np.zeros(vid.shape + (3,), dtype=np.float32)
    np.put_along_axis(bary, corner_of[vid][..., None], 1.0, axis=-1)
    return face_of[vid], bary


def contour_table(
    vertices: np.ndarray,
    frontal: np.ndarray,
    substitutes: np.ndarray,
    skin: np.ndarray,
    band: float = 0.35,
) -> np.ndarray:
    """(79,17) vertex ids of the jaw contour per yaw bin (bin k: yaw k - 39 degrees).

    vertices (V,3) template in cm; frontal (17,) the published jaw points; substitutes (17,)
    the published points for a side turned toward the camera (the frontal id where none);
    skin (V,) bool, vertices that can carry a contour point. A side turned away shows its
    silhouette further forward on the cheek: among skin vertices in a horizontal band
    (+-`band` cm) around the frontal point, on its side and not behind it, the one furthest
    out in the rotated view.
    """
    table = np.tile(frontal, (N_YAW_BINS, 1))
    x, y, z = vertices.T
    for k in range(N_YAW_BINS):
        yaw = k - MAX_YAW_DEG
        if abs(yaw) < CONTOUR_SWITCH_DEG:
            continue
        c, s = np.cos(np.radians(yaw)), np.sin(np.radians(yaw))
        rotated_x = x * c + z * s  # camera x after the head turns by `yaw` about y
        for i in range(17):
            side = np.sign(x[frontal[i]])
            if side == 0:
                continue
            # yaw > 0 turns the face toward +x: the +x side (subject's left) turns away
            turned_away = side * yaw > 0
            if not turned_away:
                table[k, i] = substitutes[i]
                continue
            v0 = frontal[i]
            cand = skin & (np.abs(y - y[v0]) <= band) & (x * side > 0) & (z >= z[v0] - 1e-3)
            ids = np.flatnonzero(cand)
            out = rotated_x[ids] * side
            best = ids[np.argmax(out)]
            if out.max() > rotated_x[v0] * side + 0.05:  # keep the frontal point on ties
                table[k, i] = best
    return table


def _ring_extremes(vertices: np.ndarray, ids: np.ndarray, height: float, band: float) -> list:
    """The left- and right-most vertices of a horizontal ring (ids in a y band) and its
    front- and back-most ones near the midline: their mean is the ring's centre and stays
    linear in the mesh."""
    p = vertices[ids]
    ring = np.abs(p[:, 1] - height) <= band
    mid = ring & (np.abs(p[:, 0]) <= 0.5)
    if not mid.any():
        raise MfnetError("ICT model: no vertices at a joint's height (damaged file?)")
    r, m = np.flatnonzero(ring), np.flatnonzero(mid)
    picks = [r[p[r, 0].argmin()], r[p[r, 0].argmax()], m[p[m, 2].argmin()], m[p[m, 2].argmax()]]
    return [int(ids[i]) for i in picks]


def joints_and_weights(
    vertices: np.ndarray, regions: dict
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rig the model lacks: (5,V) joint regressor, (5,) parents and (V,5) skin weights.

    Joints are means of a few template-chosen vertices, so they move with the identity.
    vertices (V,3) in cm.
    """
    n = len(vertices)
    r = regions["vertex_ranges_inclusive"]
    rng = lambda name: np.arange(r[name][0], r[name][1] + 1)  # noqa: E731
    lm = np.asarray(regions["multipie68_vertex"])
    neck_ids = rng("head_and_neck")
    skin_ids = np.concatenate([rng("face"), neck_ids])
    y_bottom = vertices[neck_ids, 1].min()
    picks = {
        "root": _ring_extremes(vertices, neck_ids, y_bottom + 1.0, 1.0),
        # the head's pivot on the neck: the ring at the earlobes' height (landmark 2)
        "neck": _ring_extremes(vertices, skin_ids, vertices[lm[2], 1], 0.4),
        # the jaw's hinge: the top ends of the published extended jawlines, by the ears
        "jaw": [regions["jawline_right_extended"][0], regions["jawline_left_extended"][-1]],
    }
    for side, name in (("left", "eye_L"), ("right", "eye_R")):
        sclera = rng(f"sclera_{side}")
        p = vertices[sclera]
        # a sphere's x and y extremes lie on its equator: their mean is the centre
        picks[name] = [
            sclera[i]
            for i in (p[:, 0].argmin(), p[:, 0].argmax(), p[:, 1].argmin(), p[:, 1].argmax())
        ]
    reg = np.zeros((len(JOINT_NAMES), n), dtype=np.float32)
    for j, name in enumerate(JOINT_NAMES):
        ids = np.asarray(picks[name])
        np.add.at(reg[j], ids, 1.0 / len(ids))
    parents = np.array([-1, 0, 1, 1, 1], dtype=np.int64)

    joints = reg @ vertices
    weights = np.zeros((n, len(JOINT_NAMES)), dtype=np.float32)
    # the head follows the neck joint; down the neck the weight fades to the root
    t = (vertices[:, 1] - joints[0, 1]) / max(joints[1, 1] - joints[0, 1], 1e-6)
    t = np.clip(t, 0.0, 1.0)
    t = t * t * (3 - 2 * t)
    weights[:, 1] = t
    weights[:, 0] = 1 - t
    for side, j in (("left", 3), ("right", 4)):
        eye = rng(f"eyeball_{side}")
        weights[eye] = 0
        weights[eye, j] = 1
    return reg, parents, weights


# -- loading -----------------------------------------------------------------------------------

_KEYS = {
    "vertices": (2, np.floating),
    "faces": (2, np.integer),
    "uvs": (2, np.floating),
    "face_uvs": (2, np.integer),
    "face_material": (1, np.integer),
    "material_names": (1, np.str_),
    "identity_q": (3, np.integer),
    "identity_scale": (1, np.floating),
    "expression_names": (1, np.str_),
    "expression_q": (3, np.integer),
    "expression_scale": (1, np.floating),
    "landmarks_and_regions": (0, np.str_),
}


def _read(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in _KEYS if k in z.files}
    except Exception as e:
        raise MfnetError(
            f"{path}: not a readable ICT model file ({type(e).__name__}: {e})"
        ) from None
    for key, (ndim, kind) in _KEYS.items():
        a = data.get(key)
        if a is None or a.ndim != ndim or not np.issubdtype(a.dtype, kind):
            raise MfnetError(f"{path}: key {key!r} is missing or malformed (damaged file?)")
    for key in ("vertices", "uvs", "identity_scale", "expression_scale"):
        if not np.isfinite(data[key]).all():
            raise MfnetError(f"{path}: key {key!r} holds NaN or inf (damaged file?)")
    return data


def load_ict_assets(
    path: Path | str = ICT_MODEL_FILE, expected_sha256: str | None = ICT_MODEL_SHA256
) -> ICTAssets:
    """Reads the ICT model into FLAME-style arrays in metres. The file is checked by sha256
    (`expected_sha256`, the shipped file's by default; None skips it): a damaged or edited
    copy gives one clear line."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(
            f"the ICT Face Model file is missing: {path} (reinstall mfnet, or build it with "
            "tools/build_ict_model.py)"
        )
    digest = file_sha256(path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise MfnetError(
            f"{path}: the ICT model file was changed or damaged ({path.stat().st_size} bytes, "
            f"sha256 {digest[:12]}..., expected {expected_sha256[:12]}...); reinstall mfnet"
        )
    data = _read(path)
    regions = json.loads(str(data["landmarks_and_regions"]))
    v_cm = data["vertices"].astype(np.float64)
    n_v = len(v_cm)
    polys = data["faces"].astype(np.int64)
    if polys.shape[1] != 4 or polys[:, :3].min() < 0 or polys.max() >= n_v:
        raise MfnetError(f"{path}: 'faces' must be (P,4) vertex ids below {n_v}")
    faces, src = triangulate(polys)
    fuv, _ = triangulate(data["face_uvs"].astype(np.int64))
    if fuv.min() < 0 or fuv.max() >= len(data["uvs"]):
        raise MfnetError(f"{path}: 'face_uvs' index past 'uvs'")
    material = data["face_material"].astype(np.int64)[src]
    mat_names = [str(n) for n in data["material_names"]]
    if set(mat_names) - set(ATLAS) or material.max() >= len(mat_names):
        raise MfnetError(f"{path}: unexpected materials {mat_names}")
    uv, uv_faces = atlas_uv(data["uvs"], fuv, material, mat_names)

    if data["identity_q"].shape[1:] != (n_v, 3) or data["expression_q"].shape[1:] != (n_v, 3):
        raise MfnetError(f"{path}: blendshapes do not match the mesh ({n_v} vertices)")
    # one (V,3,S+E) array whose halves are the two bases (`flame.joined_bases`: no copy)
    n_id, n_ex = len(data["identity_q"]), len(data["expression_q"])
    both = np.empty((n_v, 3, n_id + n_ex), dtype=np.float32)
    shapedirs = blendshape_basis(data["identity_q"], data["identity_scale"], both[:, :, :n_id])
    exprdirs = blendshape_basis(data["expression_q"], data["expression_scale"], both[:, :, n_id:])
    names = tuple(str(n) for n in data["expression_names"])
    if len(names) != exprdirs.shape[2]:
        raise MfnetError(f"{path}: {len(names)} expression names for {exprdirs.shape[2]} shapes")

    reg, parents, weights = joints_and_weights(v_cm, regions)
    lm = np.asarray(regions["multipie68_vertex"], dtype=np.int64)
    face_of, corner_of = vertex_face_lookup(faces, n_v)
    r = regions["vertex_ranges_inclusive"]
    skin = np.zeros(n_v, dtype=bool)
    skin[r["face"][0] : r["face"][1] + 1] = True
    substitutes = lm[:17].copy()
    substitutes[:8] = regions["jawline_right_substitutes_0_7"]
    substitutes[9:] = regions["jawline_left_substitutes_9_16"]
    table = contour_table(v_cm, lm[:17], substitutes, skin)
    dyn_f, dyn_b = on_vertices(table, face_of, corner_of)
    full_f, full_b = on_vertices(lm, face_of, corner_of)
    emb = LandmarkEmbedding(
        static_faces=full_f[17:],
        static_bary=full_b[17:],
        dynamic_faces=dyn_f,
        dynamic_bary=dyn_b,
        full_faces=full_f,
        full_bary=full_b,
    )
    v_m = (v_cm * CM).astype(np.float32)
    face_region = geometric_face_region(v_m, faces, weights, JOINT_NAMES, emb) & skin
    # ICT's parts are named per material; the part of each triangle follows its polygon
    part_names = tuple(PART_NAMES[n] for n in mat_names)
    joints_m = reg @ v_m
    material, part_names = eye_caps(v_m, faces, material, part_names, joints_m)
    assets = ICTAssets(
        v_template=v_m,
        faces=faces,
        shapedirs=shapedirs,
        exprdirs=exprdirs,
        posedirs=no_pose_correctives(n_v, 9 * (len(JOINT_NAMES) - 1)),
        j_regressor=reg,
        parents=parents,
        lbs_weights=weights,
        joint_names=JOINT_NAMES,
        landmarks=emb,
        uv=UVLayout(uv, uv_faces),
        face_region=face_region,
        kind="ict",
        name=path.name,
        sha256=digest,
        source_path=path,
        expression_names=names,
        parts=Parts(
            part_names, material, painted=dict(PAINTED), alpha=dict(ALPHA), strands=("eyelashes",)
        ),
        regions=regions,
    )
    return assets


def no_pose_correctives(n_vertices: int, n_features: int) -> np.ndarray:
    """ICT has no pose correctives: zeros (V,3,P) in FLAME's file layout, made as the
    transpose of a (P,V*3) array so that `FLAME` gets smplx's (P,V*3) layout without a copy
    (zero pages cost nothing until written; a copy touches 11 MB)."""
    return np.zeros((n_features, n_vertices * 3), dtype=np.float32).T.reshape(
        n_vertices, 3, n_features
    )


def blendshape_basis(
    quantised: np.ndarray, scale: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """(K,V,3) int16 steps and (K,) float32 step sizes in cm -> (V,3,K) float32 metres,
    FLAME's layout, written into `out` (a new array by default) and returned: fresh memory
    is what a cold start pays for here (three temporaries of 32 MB took 0.7 s on the
    development VM)."""
    if out is None:
        out = np.empty(quantised.shape[1:] + quantised.shape[:1], dtype=np.float32)
    np.multiply(np.moveaxis(quantised, 0, -1), scale.astype(np.float32), out=out)
    out *= CM  # the same two float32 roundings as (q * scale) * CM
    return out


def eye_caps(
    vertices: np.ndarray,
    faces: np.ndarray,
    face_part: np.ndarray,
    part_names: tuple[str, ...],
    joints: np.ndarray,
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Splits each sclera's front cap into a cornea (iris) and a pupil part (see CORNEA_COS).

    vertices (V,3) metres; faces (F,3); face_part (F,) index into part_names; joints (J,3)
    in JOINT_NAMES order. Returns the new (F,) face_part and part names (four appended)."""
    face_part = face_part.copy()
    names = list(part_names)
    centres = vertices[faces].mean(1)
    for side in ("L", "R"):
        sclera = names.index(f"sclera_{side}")
        eye = joints[JOINT_NAMES.index(f"eye_{side}")]
        d = centres - eye
        cos = d[:, 2] / np.maximum(np.linalg.norm(d, axis=1), 1e-12)
        on = face_part == sclera
        for part, limit in ((f"cornea_{side}", CORNEA_COS), (f"pupil_{side}", PUPIL_COS)):
            names.append(part)
            face_part[on & (cos > limit)] = len(names) - 1
    return face_part, tuple(names)


class ICTFaceModel(FLAME):
    """FLAME's LBS evaluation on the ICT model's arrays, with ICT's named expression space
    bounded to [0, 1], its 12 parts, no jaw skinning (jawOpen opens the mouth) and its
    licence."""

    def __init__(
        self, assets: ICTAssets, n_shape: int | None = None, n_expr: int | None = None
    ) -> None:
        n_s = assets.shapedirs.shape[2] if n_shape is None else n_shape
        n_e = assets.exprdirs.shape[2] if n_expr is None else n_expr
        super().__init__(assets, n_shape=n_s, n_expr=n_e)
        self.info = ModelInfo(
            kind="ict",
            name=assets.name,
            sha256=assets.sha256,
            source_path=assets.source_path,
            licence=ICT_LICENCE,
            file_units_to_metres=CM,
        )
        self.parts = assets.parts
        self.expression_space = CoefficientSpace(
            self.n_expr,
            names=assets.expression_names[: self.n_expr],
            lower=np.zeros(self.n_expr, dtype=np.float32),
            upper=np.ones(self.n_expr, dtype=np.float32),
            prior="weights",
            # A weight of 1 is a full expression: held 10x harder than a PCA coefficient of
            # one standard deviation, else identity leaks into expression keys (a rendered
            # real head scan: browDown_L 1.0, mouthFrown_L 0.94 at 1x; at most 0.5 at 10x,
            # for 0.15 mm of scan distance; docs/BENCHMARKS.md).
            prior_scale=10.0,
        )
        self.posed_joints = frozenset({"root", "neck", "eye_L", "eye_R"})
