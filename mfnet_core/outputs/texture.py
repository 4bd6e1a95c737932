"""Multi-view UV texture bake: photos + fitted mesh -> one seamless UV texture.

Method (all views at once, no per-view texture files):
1. Rasterise the UV layout into texture space: each texel inside the layout gets a face and
   barycentrics (row 0 of the texture is v = 1, the top; UV origin bottom-left).
2. Per view: the texel's screen position and depth by barycentric interpolation of the view's
   screen vertices; visibility by comparing that depth with the view's z-buffer at the nearest
   pixel, with a tolerance of `depth_tol` * depth plus 1.5 px times the surface's depth slope
   (so a surface seen at a grazing angle still passes), only where the z-buffer shows the
   texel's own connected part of the mesh (an eyelid just behind an eyeball never takes the
   eyeball's colour) and only on faces whose screen-space winding faces the camera; weight = visibility * max(0, n_z)^cos_power * fade, where n_z is the
   cosine between the interpolated camera-space normal and the viewing direction (+z towards
   the camera; orthographic approximation, the head spans a few degrees of the field of view)
   and `fade` ramps from 0 to 1 over a few percent of the face size away from silhouettes,
   depth discontinuities (occluding contours) and the image border. Colours are sampled
   bilinearly (cv2.remap) in linear light (sRGB decoded with gamma 2.2).
2b. Light removal (with `skin_faces`, as `reconstruct` bakes): each view's shading, a
   2nd-order SH light fitted robustly on the skin it sees against one skin albedo, is divided
   out of its colours, keeping the skin's mean colour (`albedo.py`), so the texture is an
   albedo estimate and relights; the photos' colours as they are still go through steps
   3-5 into `texture_shaded`.
3. Colour matching: a per-view per-channel gain in linear light (a photo's exposure and white
   balance act multiplicatively), estimated as the median of colour ratios on texels that the
   view shares with the views matched so far, starting from the reference view (the view
   named "front", else the one with the largest total weight). No offset term.
4. Blending: two-band blending (a two-level Laplacian pyramid). The low band (Gaussian of
   each view's colours, normalised convolution) is blended with the feathered per-view weights
   (weight maps blurred in texture space, then cut to where the view sees the texel), the
   high band (colour minus low band) with the same weights raised to a power, so colour and
   shading change smoothly across view boundaries while detail comes from the best view and
   does not ghost. Where one view dominates the result is exactly that view's colour.
5. Hole filling: texels inside the layout that no view sees well get a smooth fill, mixed in
   by confidence (total weight) so seen and filled regions meet without a step. Default
   fill="mesh": seen colours are averaged onto the mesh vertices and the rest of the vertices
   get the harmonic (Laplace) interpolation over the mesh edges, then texels interpolate the
   vertex colours; because vertices are shared across UV seams, the fill is continuous on the
   surface (the back of the head shows no island seams). fill="push-pull" is the texture-space
   alternative (pyramid push-pull, Gortler et al. 1996). Then a gutter: texels up to `gutter`
   px outside the UV islands copy the nearest island texel (so mip-mapping in Blender shows no
   dark seams), and everything further out gets a coarse push-pull colour (no black anywhere).

The mask (255 = seen) marks texels whose total weight is at least half the full-confidence
weight. Everything runs on the CPU in numpy / OpenCV / scipy after the rasterisation (the
mesh's tensors may live on any device).
"""

from __future__ import annotations

import hashlib
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from mfnet_core.errors import MfnetError
from mfnet_core.inputs.files import atomic_write_bytes
from mfnet_core.inputs.model_files import user_cache_dir
from mfnet_core.inputs.npz import ArraySpec, read_npz
from mfnet_core.outputs.albedo import ViewLighting, remove_lighting
from mfnet_core.outputs.overlay import coverage_outline
from mfnet_core.render import depth_buffer, rasterize

__all__ = ["BakeView", "BakeResult", "bake_texture", "srgb_to_linear", "linear_to_srgb"]

Progress = Callable[[float, str], None]

_GAMMA = 2.2
_LUT = ((np.arange(256, dtype=np.float32) / 255.0) ** _GAMMA).astype(np.float32)
# Total weight at which a texel counts as fully seen (confidence 1) and as seen for the mask.
_CONF_WEIGHT = 0.05
_SEEN_WEIGHT = 0.5 * _CONF_WEIGHT
# Per-texel weight above which a view takes part in colour matching on that texel.
_MATCH_WEIGHT = 0.05
_MIN_MATCH_TEXELS = 64
_GAIN_RANGE = (1 / 3, 3.0)
# Relative depth step between neighbouring pixels that counts as an occluding contour.
_JUMP_TOL = 0.02
# Pixels of depth slope allowed in the visibility test (nearest pixel centre <= 0.71 px away).
_SLOPE_PX = 1.5
# cv2.remap's maps must be under 32767 px wide: point lists are laid out in rows this long.
_REMAP_COLS = 4096


@dataclass
class BakeView:
    """One photo and the fitted mesh seen in it.

    rgb: (H,W,3) uint8 photo. verts_screen: (V,3) (u_px, v_px, depth) of the mesh in this
    photo. normals_cam: (V,3) vertex normals in camera space (the camera looks along -z, so a
    surface facing the camera has normal z > 0). name: e.g. "left", "front", "right".
    """

    rgb: np.ndarray
    verts_screen: Tensor
    normals_cam: Tensor
    name: str = "view"


@dataclass
class BakeResult:
    """texture: (S,S,3) uint8 RGB, row 0 = top (v = 1). mask: (S,S) uint8, 255 where the
    texture was seen in a photo, 0 where filled. per_view_weight: (N,S,S) float32 blending
    weight of each view (sums to 1 over views on seen texels, 0 elsewhere). gains: (N,3)
    per-channel colour gains applied in linear light. layout: (S,S) bool, texels inside the UV
    layout. reference: index of the reference view of the colour matching."""

    texture: np.ndarray
    mask: np.ndarray
    per_view_weight: np.ndarray
    warnings: list[str] = field(default_factory=list)
    gains: np.ndarray | None = None
    layout: np.ndarray | None = None
    reference: int = 0
    alpha: np.ndarray | None = None  # (S,S) uint8 when strand faces were given, else None
    # with `skin_faces`: each view's light that was divided out, and the bake with the
    # photos' shading left in (`texture` is then the albedo estimate)
    lighting: list[ViewLighting] | None = None
    texture_shaded: np.ndarray | None = None
    # seconds the light removal and the shaded bake added (benchmarks/bm_novel_views.py)
    timings: dict[str, float] = field(default_factory=dict)
    # per view, the outline of what the opaque faces cover (`overlay.coverage_outline`):
    # the overlays draw it, the bake's z-buffer already knows it
    outlines: list[list[np.ndarray]] = field(default_factory=list)


_LAYOUTS: dict[tuple, tuple[np.ndarray, _Texels, np.ndarray]] = {}


def uv_layout(
    faces: Tensor | np.ndarray,
    uv_coords: Tensor | np.ndarray,
    uv_faces: Tensor | np.ndarray,
    size: int,
) -> tuple[np.ndarray, _Texels, np.ndarray]:
    """The bake's first step: the UV layout rasterised at size x size. Returns layout (S,S)
    bool (texels inside it), its texels (`_Texels`) and texel_face (S,S) int32 (-1 outside).
    Depends on no photo and no fit, so it is kept per (mesh, layout, size), read-only, in
    memory and in the user's cache folder (13 MB for ICT at 1024 px; making it takes
    0.2-0.5 s on the 2-core VM, reading it back ~0.04 s), and `reconstruct` asks for it
    beside the landmark fit."""
    faces_t = _cpu_tensor(faces).long()
    uv_t = _cpu_tensor(uv_coords).float()
    uvf_t = _cpu_tensor(uv_faces).long()
    key = (_digest(faces_t), _digest(uv_t), _digest(uvf_t), int(size))
    if key in _LAYOUTS:
        return _LAYOUTS[key]
    disk = _layout_cache_file(key)
    kept = None if disk is None else _read_layout(disk, size, len(uvf_t))
    if kept is None:
        screen_uv = torch.stack(
            [uv_t[:, 0] * size, (1 - uv_t[:, 1]) * size, torch.ones(len(uv_t))], dim=-1
        )
        frags = rasterize(screen_uv, uvf_t, size, size)
        flat_face = frags.face_index.reshape(-1)
        tex_pix = (flat_face >= 0).nonzero().squeeze(1)
        texel_face = flat_face.numpy().astype(np.int32).reshape(size, size)
        bary = frags.bary.reshape(-1, 3)[tex_pix].float().numpy()
        if disk is not None:
            _write_layout(disk, texel_face, bary)
    else:
        texel_face, bary = kept
    layout = texel_face >= 0
    pix = np.flatnonzero(layout)
    face = texel_face.reshape(-1)[pix].astype(np.int64)
    texels = _Texels(pix, face, faces_t.numpy()[face], bary)
    for a in (layout, texel_face, texels.pix, texels.face, texels.corners, texels.bary):
        a.setflags(write=False)  # shared by every bake of this model
    if len(_LAYOUTS) >= 4:
        _LAYOUTS.clear()
    _LAYOUTS[key] = (layout, texels, texel_face)
    return _LAYOUTS[key]


# What the on-disk copy of a layout holds; the rest follows from it (`uv_layout`).
_LAYOUT_FILE_VERSION = 1
# Larger layouts are made each run: 4096 px would keep ~180 MB on disk per model.
_LAYOUT_FILE_MAX_SIZE = 2048


def _layout_cache_file(key: tuple) -> Path | None:
    """Where `uv_layout` keeps a layout between runs (in the user's cache folder); None
    for sizes above `_LAYOUT_FILE_MAX_SIZE` or without a home folder to find it in."""
    if key[-1] > _LAYOUT_FILE_MAX_SIZE:
        return None
    name = hashlib.blake2b(repr((_LAYOUT_FILE_VERSION, key)).encode(), digest_size=16)
    try:
        folder = user_cache_dir()
    except (OSError, RuntimeError):  # Path.home() without HOME or a passwd entry
        return None
    return folder / "uv_layouts" / f"{name.hexdigest()}.npz"


def _read_layout(path: Path, size: int, n_faces: int) -> tuple[np.ndarray, np.ndarray] | None:
    """texel_face (S,S) int32 and bary (P,3) float32 from `path`, or None when it is
    missing or does not fit (then the layout is made again)."""
    if not path.is_file():
        return None
    specs = {
        "texel_face": ArraySpec((size, size), "i"),
        "bary": ArraySpec((None, 3), "f", finite=True),
    }
    try:
        z = read_npz(path, specs, what="UV layout cache file")
    except MfnetError:
        return None
    texel_face, bary = z["texel_face"], z["bary"]
    if (
        texel_face.dtype != np.int32
        or bary.dtype != np.float32
        or texel_face.min() < -1
        or texel_face.max() >= n_faces
        or int((texel_face >= 0).sum()) != len(bary)
    ):
        return None
    return texel_face, bary


def _write_layout(path: Path, texel_face: np.ndarray, bary: np.ndarray) -> None:
    """Keeps a layout for the next run (written beside and renamed: a reader never sees
    half a file); a cache folder that cannot be written is left alone."""
    buf = io.BytesIO()
    np.savez(buf, texel_face=texel_face, bary=bary)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
    except OSError:
        pass


def _digest(t: Tensor) -> str:
    return hashlib.blake2b(t.contiguous().numpy().tobytes(), digest_size=16).hexdigest()


def srgb_to_linear(rgb: np.ndarray) -> np.ndarray:
    """uint8 (...,3) -> float32 linear-ish light in [0,1] (gamma 2.2)."""
    return _LUT[rgb]


def srgb_to_linear_float(rgb: np.ndarray) -> np.ndarray:
    """float sRGB (...,3) in 0..1 -> float32 linear light (gamma 2.2, as the LUT)."""
    return np.power(np.clip(np.asarray(rgb, dtype=np.float32), 0, 1), _GAMMA)


def linear_to_srgb(lin: np.ndarray) -> np.ndarray:
    """float (...,3) linear light -> uint8 (gamma 2.2)."""
    x = np.minimum(np.maximum(np.asarray(lin, dtype=np.float32), 0.0), 1.0)
    out = cv2.pow(x.reshape(x.shape[0], -1) if x.ndim > 1 else x[None], 1.0 / _GAMMA).reshape(
        x.shape
    )
    return (out * 255.0 + 0.5).astype(np.uint8)


def bake_texture(
    views: list[BakeView],
    faces: Tensor | np.ndarray,
    uv_coords: Tensor | np.ndarray,
    uv_faces: Tensor | np.ndarray,
    size: int = 1024,
    *,
    progress: Progress | None = None,
    match_colours: bool = True,
    reference: int | None = None,
    cos_power: float = 3.0,
    depth_tol: float = 2e-3,
    fade: float = 0.04,
    gutter: int | None = None,
    fill: str = "mesh",
    face_paint: np.ndarray | None = None,
    occluders: np.ndarray | None = None,
    strand_faces: np.ndarray | None = None,
    skin_faces: np.ndarray | None = None,
    keep_shaded: bool = True,
) -> BakeResult:
    """Bakes the photos of `views` into one UV texture (see the module docstring).

    faces: (F,3) mesh triangles; uv_coords: (T,2) origin bottom-left; uv_faces: (F,3).
    size: texture side in texels (1024 default; 2048/4096 work). match_colours: estimate and
    apply per-view colour gains. reference: index of the colour reference view (default: the
    view named "front", else the one seeing the most). cos_power: exponent p of the
    cos(angle to the viewing direction) weight. depth_tol: relative depth tolerance of the
    visibility test (on top of 1.5 px of depth slope). fade: width of the silhouette /
    border fade as a fraction of the square root of the mesh's pixel area in that view.
    gutter: texels of dilation beyond the UV islands (default max(4, size // 128)). fill: how texels that no view sees are filled,
    "mesh" (harmonic interpolation of colours over the mesh surface: continuous across UV
    seams) or "push-pull" (pyramid fill in texture space). face_paint: (F,3) sRGB in 0..1 per
    face, NaN where the photos are baked (`Parts.face_paint`): painted faces get their
    colour (teeth, sclera, lashes) and count as not seen. occluders: (F,) bool, the faces that
    hide what is behind them in the photos (default all); see-through overlays (eyelash cards,
    the eye-occlusion shell) must not keep the eyes from being baked (`Parts.opaque(1.0)`).
    strand_faces: (F,) bool, faces drawn as hair strands (eyelash cards): the result gets an
    alpha channel, opaque everywhere but on those faces' texels (`strand_alpha`).
    skin_faces: (F,) bool, the bare skin (`albedo.skin_faces`): when given, each view's light
    is estimated on it and divided out before blending (`albedo.remove_lighting`), so
    `texture` is an albedo estimate; `keep_shaded` also blends
    the photos' colours as they are into `texture_shaded`.
    progress: called as progress(fraction, message).
    """
    report = progress or (lambda f, m: None)
    if not views:
        raise ValueError("bake_texture needs at least one view")
    size = int(size)
    if size < 16:
        raise ValueError(f"texture size must be at least 16, got {size}")
    if fill not in ("mesh", "push-pull"):
        raise ValueError(f"fill must be 'mesh' or 'push-pull', got {fill!r}")
    if reference is not None and not 0 <= int(reference) < len(views):
        raise ValueError(f"reference view {reference} is not one of the {len(views)} views")
    gutter = max(4, size // 128) if gutter is None else int(gutter)
    faces_t = _cpu_tensor(faces).long()
    uv_t = _cpu_tensor(uv_coords).float()
    uvf_t = _cpu_tensor(uv_faces).long()
    if uvf_t.shape != faces_t.shape or faces_t.ndim != 2 or faces_t.shape[1] != 3:
        raise ValueError(
            f"faces {tuple(faces_t.shape)} and uv_faces {tuple(uvf_t.shape)} must both be (F,3)"
        )
    warnings: list[str] = []

    # 1. Texel -> (face, barycentrics).
    layout, texels, texel_face = uv_layout(faces_t, uv_t, uvf_t, size)
    n_verts = max(int(faces_t.max()) + 1, max(len(v.verts_screen) for v in views))
    face_part = _face_components(faces_t.numpy(), n_verts)
    hiding = np.arange(len(faces_t))
    if occluders is not None:
        occluders = np.asarray(occluders, dtype=bool)
        if occluders.shape != (len(faces_t),):
            raise ValueError(f"occluders has shape {occluders.shape}, expected ({len(faces_t)},)")
        hiding = np.flatnonzero(occluders)
    report(0.1, "UV layout rasterised")

    # 2. Per-view samples on the texture grid (zero weight outside the layout).
    cols, wts, nrms, outlines = [], [], [], []
    for i, view in enumerate(views):
        smp = _sample_view(
            view, faces_t, hiding, texels, n_verts, face_part, cos_power, depth_tol, fade
        )
        outlines.append(smp.outline)
        cols.append(_to_grid(smp.colour, smp.pix, size, 3))
        wts.append(_to_grid(smp.weight, smp.pix, size))
        nrms.append(smp.normal)
        if int((smp.weight > _MATCH_WEIGHT).sum()) < 0.01 * len(texels.pix):
            warnings.append(f"texture: the {view.name} view sees almost none of the mesh")
        report(0.1 + 0.5 * (i + 1) / len(views), f"sampled the {view.name} view")

    # 2b. Light removal: each view's shading divided out of its colours (albedo.py).
    lighting, shaded_cols = None, None
    timings: dict[str, float] = {}
    if skin_faces is not None:
        start = time.perf_counter()
        skin_faces = np.asarray(skin_faces, dtype=bool)
        if skin_faces.shape != (len(faces_t),):
            raise ValueError(f"skin_faces has shape {skin_faces.shape}, expected ({len(faces_t)},)")
        skin = layout & np.append(skin_faces, False)[texel_face]
        albedo_cols, lighting, msgs = remove_lighting(
            cols, nrms, wts, skin, [v.name for v in views], in_place=not keep_shaded
        )
        warnings.extend(msgs)
        shaded_cols = cols if keep_shaded else None
        cols = albedo_cols
        timings["light_removal"] = time.perf_counter() - start
        report(0.62, "light removed")
    del nrms

    # 3-5. Colour matching, blending, filling, encoding.
    painted = np.zeros((size, size), dtype=bool)
    paint_lin = None
    if face_paint is not None:
        paint = np.asarray(face_paint, dtype=np.float32)
        if paint.shape != (len(faces_t), 3):
            raise ValueError(f"face_paint has shape {paint.shape}, expected ({len(faces_t)}, 3)")
        on = layout & (texel_face >= 0)
        colour = paint[np.where(on, texel_face, 0)]
        painted = on & ~np.isnan(colour[..., 0])
        paint_lin = srgb_to_linear_float(colour[painted])
    ref = _pick_reference(views, wts) if reference is None else int(reference)
    names = [v.name for v in views]
    finish = _Finish(
        layout, faces_t.numpy(), texels.interp(None, n_verts), fill, painted, paint_lin, gutter
    )
    sets = [cols] if shaded_cols is None else [cols, shaded_cols]
    textures, total, norm_w, gains, msgs = finish(sets, wts, ref, names, match_colours, report)
    warnings.extend(msgs)
    del cols, shaded_cols, sets
    texture = textures[0]
    shaded = textures[1] if len(textures) > 1 else None
    seen = (total >= _SEEN_WEIGHT) & layout & ~painted
    mask = np.where(seen, 255, 0).astype(np.uint8)
    if layout.any():
        frac = seen.sum() / layout.sum()
        if frac < 0.1:
            warnings.append(
                f"texture: only {100 * frac:.0f}% of the UV layout was seen in the photos"
            )
    alpha = None
    if strand_faces is not None:
        alpha = strand_alpha(texel_face, np.asarray(strand_faces, dtype=bool), gutter)
    report(1.0, "texture baked")
    return BakeResult(
        texture,
        mask,
        norm_w,
        warnings,
        gains,
        layout,
        ref,
        alpha,
        lighting,
        shaded,
        timings,
        outlines,
    )


@dataclass
class _Finish:
    """Steps 3-5 of the bake: colour matching, two-band blend, fill, gutter, sRGB. The
    albedo and the photos' colours are blended in one pass (six channels) with the same
    weights: the shaded texture then costs a fraction of a second bake."""

    layout: np.ndarray  # (S,S) bool
    faces: np.ndarray  # (F,3)
    interp: object  # (P,V) sparse barycentric matrix of the layout's texels (raster order)
    fill: str
    painted: np.ndarray  # (S,S) bool
    paint_lin: np.ndarray | None  # (P,3) linear colours of the painted texels
    gutter: int

    def __call__(
        self,
        sets: list[list[np.ndarray]],
        wts: list[np.ndarray],
        ref: int,
        names: list[str],
        match_colours: bool,
        report: Progress,
    ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """sets: one or more lists of per-view (S,S,3) linear colours. Returns one (S,S,3)
        uint8 texture per set, the (S,S) total weight, (N,S,S) blend weights, and the first
        set's (N,3) gains and warnings. Scales the colours in place by their gains."""
        layout, size = self.layout, self.layout.shape[0]
        first_gains, first_msgs = None, []
        for cols in sets:
            gains = np.ones((len(cols), 3), dtype=np.float32)
            msgs: list[str] = []
            if match_colours and len(cols) > 1:
                gains, msgs = _match_colours(cols, wts, ref, names)
                for c, g in zip(cols, gains, strict=True):
                    c *= g
            if first_gains is None:
                first_gains, first_msgs = gains, msgs
        report(0.65, "colours matched")
        cols = (
            sets[0]
            if len(sets) == 1
            else [np.concatenate(v, axis=2) for v in zip(*sets, strict=True)]
        )
        n_ch = cols[0].shape[2]
        blended, total, norm_w = _blend(cols, wts, layout)
        del cols
        report(0.8, "views blended")
        conf = _smoothstep(np.minimum(total * np.float32(1 / _CONF_WEIGHT), 1))
        if self.fill == "mesh":
            pix = np.flatnonzero(layout.reshape(-1))
            colour = blended.reshape(-1, n_ch)[pix]
            filled_pix = _mesh_fill(self.faces, self.interp, colour, conf.reshape(-1)[pix])
            filled = _to_grid(filled_pix, pix, size, n_ch)
        else:
            filled = _push_pull(blended, conf)
        inner = np.multiply(blended, conf[..., None], out=blended)  # in place: fresh memory
        filled *= (1 - conf)[..., None]
        inner += filled
        inner[~layout] = 0
        if self.paint_lin is not None:
            inner[self.painted] = np.tile(self.paint_lin, (1, len(sets)))
        out, band = _gutter(inner, layout, self.gutter)
        known = layout | band
        out[~known] = _smooth_fill(out, known)[~known]
        report(0.95, "holes filled")
        textures = [linear_to_srgb(out[..., 3 * i : 3 * i + 3]) for i in range(len(sets))]
        assert first_gains is not None
        return textures, total, norm_w, first_gains, first_msgs


def strand_alpha(texel_face: np.ndarray, strand_faces: np.ndarray, gutter: int) -> np.ndarray:
    """(S,S) uint8 alpha: 255, except on the texels of `strand_faces` (and their gutter),
    where thin strands run along the texture's v axis with gaps between them.

    Why: eyelashes are cards (ICT: 12 strips, long along u, root to tip along v) that real
    renderers draw with a strand texture; one alpha for the whole card draws a dark sheet
    over the eye. Strand spacing scales with the texture (3 texels at 1024) so the lashes
    look the same at every size; each strand gets its own opacity so they do not read as a
    regular comb. texel_face: (S,S) face of each texel, -1 outside the layout."""
    import cv2

    size = texel_face.shape[0]
    on = (texel_face >= 0) & np.append(strand_faces, False)[texel_face]
    if gutter > 0 and on.any():
        kernel = np.ones((2 * gutter + 1, 2 * gutter + 1), np.uint8)
        grown = cv2.dilate(on.astype(np.uint8), kernel).astype(bool)
        on = grown & ((texel_face < 0) | on)  # the islands and their gutter, not other parts
    period = max(3, round(3 * size / 1024))
    width = max(1, period // 3)
    column = np.arange(size)
    strand = (column % period) < width
    rng = np.random.default_rng(0)
    opacity = rng.uniform(0.55, 1.0, size=size // period + 1)[column // period]
    row = np.where(strand, 255 * opacity, 0).astype(np.uint8)
    alpha = np.full((size, size), 255, dtype=np.uint8)
    alpha[on] = np.broadcast_to(row, (size, size))[on]
    return alpha


def _cpu_tensor(x: Tensor | np.ndarray) -> Tensor:
    return x.detach().cpu() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))


@dataclass
class _Texels:
    """The UV layout's texels in raster order: pix (P,) flat index into the (S,S) grid,
    face (P,) their face, corners (P,3) its vertices and bary (P,3) float32 barycentrics."""

    pix: np.ndarray
    face: np.ndarray
    corners: np.ndarray
    bary: np.ndarray

    def interp(self, rows: np.ndarray | None = None, n_verts: int = 0):
        """(R,V) sparse barycentric matrix of the texels `rows` (default all): M @ vertex
        attrs (V,C) = their attrs (R,C). Three entries a row, built directly (no sorting);
        float32 like the attrs, or scipy upcasts the matrix on every product."""
        import scipy.sparse as sp

        corners = self.corners if rows is None else self.corners[rows]
        bary = self.bary if rows is None else self.bary[rows]
        n = len(corners)
        indptr = np.arange(0, 3 * n + 1, 3, dtype=np.int64)
        return sp.csr_matrix((bary.reshape(-1), corners.reshape(-1), indptr), shape=(n, n_verts))


@dataclass
class _Samples:
    """One view's samples on the texels it sees (weight > 0), in raster order: pix (n,) flat
    texel index, colour (n,3) linear, weight (n,), normal (n,3) camera space, not unit."""

    pix: np.ndarray
    colour: np.ndarray
    weight: np.ndarray
    normal: np.ndarray
    outline: list[np.ndarray]  # of the pixels the occluding faces cover


def _sample_view(
    view: BakeView,
    faces: Tensor,
    hiding: np.ndarray,
    texels: _Texels,
    n_verts: int,
    face_part: np.ndarray,
    cos_power: float,
    depth_tol: float,
    fade: float,
) -> _Samples:
    """One view's colours, weights and camera-space normals on the texels it sees.

    Works on the layout's front-facing texels only, and reads the photo only around them
    (nearest-pixel look-ups by index, bilinear colour on a crop): full-grid temporaries cost
    more than their arithmetic (fresh memory is slow to touch). texels: the layout
    (`_Texels`); face_part: (F,) connected component of each face; hiding: (F',) ids of the
    faces that occlude (the z-buffer's)."""
    rgb = np.asarray(view.rgb)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    if rgb.ndim != 3 or rgb.shape[2] not in (3, 4) or rgb.dtype != np.uint8:
        raise ValueError(
            f"{view.name} view: rgb must be (H,W,3) uint8, got {rgb.shape} {rgb.dtype}"
        )
    rgb = rgb[..., :3]
    h, w = rgb.shape[:2]
    vs = view.verts_screen.detach().cpu().float()
    nc = view.normals_cam.detach().cpu().float()
    if vs.ndim != 2 or vs.shape[0] != n_verts or nc.shape != vs.shape:
        raise ValueError(
            f"{view.name} view: verts_screen {tuple(vs.shape)} / normals {tuple(nc.shape)} do not fit the mesh"
        )

    all_hide = len(hiding) == len(faces)
    face_t, depth_t = depth_buffer(vs, faces if all_hide else faces[torch.as_tensor(hiding)], h, w)
    pixel_face = face_t.numpy()  # (h,w) ids of `faces`, -1 where nothing
    if not all_hide:
        pixel_face = np.where(pixel_face >= 0, hiding[pixel_face.clip(0)], -1)
    cover = pixel_face >= 0
    zbuf = np.where(cover, depth_t.numpy(), np.float32(0)).astype(np.float32)  # 0: none
    front = _front_facing(vs.numpy().astype(np.float64), faces.numpy(), pixel_face[cover])

    # The front-facing texels and their interpolated (u, v, depth, normal, depth slope).
    rows = np.flatnonzero(front[texels.face])
    slope = _vertex_depth_slope(vs.numpy().astype(np.float64), faces.numpy())
    attrs = texels.interp(rows, n_verts) @ np.concatenate(
        [vs.numpy(), nc.numpy(), slope[:, None].astype(np.float32)], axis=1
    )
    z = attrs[:, 2]
    nx, ny, nz = attrs[:, 3], attrs[:, 4], attrs[:, 5]  # |n| summed as .sum(-1) would
    nz = nz / np.maximum(np.sqrt(nx * nx + ny * ny + nz * nz), 1e-12)

    # Fade away from silhouettes, occluding contours and the image border.
    edge = ~cover
    zf = np.where(cover, zbuf, np.float32(1e30))
    jump = np.float32(_JUMP_TOL) * zbuf
    dx = np.abs(np.diff(zf, axis=1)) > np.maximum(jump[:, 1:], jump[:, :-1])
    dy = np.abs(np.diff(zf, axis=0)) > np.maximum(jump[1:], jump[:-1])
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:] |= dy
    edge[:-1] |= dy
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    dist = cv2.distanceTransform((~edge).astype(np.uint8), cv2.DIST_L2, 3)
    fade_px = max(2.0, fade * math.sqrt(max(1, int(cover.sum()))))

    # The nearest pixel's z-buffer depth (0 on background / outside the image), edge
    # distance and part (cv2 pixel centres are integers).
    mx = attrs[:, 0] - np.float32(0.5)
    my = attrs[:, 1] - np.float32(0.5)
    at, inside = _nearest_pixel(mx, my, h, w)
    zref = np.where(inside, zbuf.reshape(-1)[at], np.float32(0))
    near_part = np.append(face_part, -1)[pixel_face.reshape(-1)[at]]  # -1: background
    same_part = near_part == face_part[texels.face[rows]]

    tol = zref * np.float32(depth_tol) + np.float32(_SLOPE_PX) * attrs[:, 6]
    vis = same_part & (zref > 0) & (z > 0) & (z <= zref + tol)
    ramp = _smoothstep(np.minimum(dist.reshape(-1)[at] * np.float32(1 / fade_px), 1))
    cosw = np.maximum(nz, 0).astype(np.float32)
    if float(cos_power).is_integer() and 0 <= cos_power <= 8:
        c = np.ones_like(cosw)
        for _ in range(int(cos_power)):
            c *= cosw
        cosw = c
    else:
        cosw = cosw ** np.float32(cos_power)
    weight = np.where(vis, cosw * ramp, np.float32(0))
    seen = np.flatnonzero(weight > 0)
    colour = _bilinear_linear(rgb, mx[seen], my[seen])
    return _Samples(
        texels.pix[rows[seen]], colour, weight[seen], attrs[seen, 3:6], coverage_outline(cover)
    )


def _nearest_pixel(mx: np.ndarray, my: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat index (0 outside) of the pixel nearest each position (pixel centres at
    integers) in an (h,w) image, and whether it is inside: rint rounds half to even as
    cv2.remap's INTER_NEAREST does, so the look-up is that remap without its full-size maps."""
    ix, iy = np.rint(mx), np.rint(my)
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    return np.where(inside, iy * w + ix, 0).astype(np.int64), inside


def _bilinear_linear(rgb: np.ndarray, mx: np.ndarray, my: np.ndarray) -> np.ndarray:
    """(n,3) float32 linear colours of the uint8 photo `rgb` at pixel positions (mx, my)
    (pixel centres at integers), bilinear in linear light as cv2.remap with a replicated
    border. Only the photo's crop around the points is decoded: the same values, since cv2
    quantises the positions' fractions alike after an integer shift."""
    n = len(mx)
    if n == 0:
        return np.zeros((0, 3), np.float32)
    h, w = rgb.shape[:2]
    x0 = int(np.clip(np.floor(mx.min()) - 1, 0, w - 1))
    x1 = int(np.clip(np.floor(mx.max()) + 3, x0 + 1, w))
    y0 = int(np.clip(np.floor(my.min()) - 1, 0, h - 1))
    y1 = int(np.clip(np.floor(my.max()) + 3, y0 + 1, h))
    crop = srgb_to_linear(rgb[y0:y1, x0:x1])
    # cv2.remap needs maps under 32767 wide: the points as rows of _REMAP_COLS
    m = -(-n // _REMAP_COLS) * _REMAP_COLS
    mapx = np.zeros(m, np.float32)
    mapy = np.zeros(m, np.float32)
    np.subtract(mx, np.float32(x0), out=mapx[:n])
    np.subtract(my, np.float32(y0), out=mapy[:n])
    out = cv2.remap(
        crop,
        mapx.reshape(-1, _REMAP_COLS),
        mapy.reshape(-1, _REMAP_COLS),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return out.reshape(-1, 3)[:n]


def _face_components(faces: np.ndarray, n_verts: int) -> np.ndarray:
    """(F,) connected-component label of each face (faces sharing vertices are connected).
    A texel is only seen where the z-buffer shows its own component, so separate parts close
    behind a surface (an eyelid just behind an eyeball, teeth behind lips) never pass the
    depth tolerance."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    adj = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n_verts, n_verts))
    _, labels = connected_components(adj, directed=False)
    return labels[faces[:, 0]].astype(np.int64)


def _front_facing(vs: np.ndarray, faces: np.ndarray, winners: np.ndarray) -> np.ndarray:
    """(F,) bool: faces whose screen-space winding is that of the visible surface.

    Exact under perspective (unlike the sign of the camera-space normal's z). Which winding
    is "front" is read from the faces that win the z-buffer (`winners`, face ids of covered
    pixels): a closed surface is seen from outside. vs: (V,3) screen vertices; faces: (F,3).
    """
    a, b, c = vs[faces[:, 0]], vs[faces[:, 1]], vs[faces[:, 2]]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    sign = np.sign(np.sign(area[winners]).sum()) if len(winners) else 0.0
    if sign == 0:
        return np.ones(len(faces), dtype=bool)
    return area * sign > 0


def _vertex_depth_slope(vs: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V,) largest screen-space depth gradient |dz/d(u,v)| (depth per pixel) over each
    vertex's faces. vs: (V,3) (u, v, depth); faces: (F,3)."""
    a, b, c = vs[faces[:, 0]], vs[faces[:, 1]], vs[faces[:, 2]]
    e1, e2 = b - a, c - a
    area = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    gu = e1[:, 2] * e2[:, 1] - e2[:, 2] * e1[:, 1]
    gv = e2[:, 2] * e1[:, 0] - e1[:, 2] * e2[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.hypot(gu, gv) / np.abs(area)
    # Edge-on faces have no finite slope: cap at 5% of the depth per pixel.
    cap = 0.05 * np.abs(a[:, 2])
    g = np.where(np.isfinite(g), np.minimum(g, cap), cap)
    out = np.zeros(len(vs))
    for i in range(3):
        np.maximum.at(out, faces[:, i], g)
    return out.astype(np.float32)


def _pick_reference(views: list[BakeView], wts: list[np.ndarray]) -> int:
    for i, v in enumerate(views):
        if v.name.lower() in ("front", "centre", "center"):
            return i
    return int(np.argmax([float(w.sum()) for w in wts]))


def _match_colours(
    cols: list[np.ndarray], wts: list[np.ndarray], ref: int, names: list[str]
) -> tuple[np.ndarray, list[str]]:
    """Per-view (N,3) gains: each view in turn (most overlap first) is matched to the weighted
    blend of the views matched so far, by the median of per-channel ratios on shared texels."""
    n = len(cols)
    cols = [c.reshape(-1, 3) for c in cols]
    wts = [w.reshape(-1) for w in wts]
    gains = np.ones((n, 3), dtype=np.float32)
    msgs: list[str] = []
    acc_c = cols[ref] * wts[ref][:, None]
    acc_w = wts[ref].copy()
    tmp = np.empty_like(acc_c)
    todo = [i for i in range(n) if i != ref]
    while todo:
        overlaps = [int(((wts[j] > _MATCH_WEIGHT) & (acc_w > _MATCH_WEIGHT)).sum()) for j in todo]
        j = todo.pop(int(np.argmax(overlaps)))
        sel = np.flatnonzero((wts[j] > _MATCH_WEIGHT) & (acc_w > _MATCH_WEIGHT))
        sel = sel[:: max(1, len(sel) // 200_000)]  # a median needs no more
        target = acc_c[sel] / acc_w[sel, None]
        mine = cols[j][sel]
        ok = (target > 0.005) & (target < 0.98) & (mine > 0.005) & (mine < 0.98)
        g = np.ones(3, dtype=np.float32)
        for ch in range(3):
            m = ok[:, ch]
            if m.sum() >= _MIN_MATCH_TEXELS:
                g[ch] = float(np.median(target[m, ch] / mine[m, ch]))
        if (ok.sum(0) < _MIN_MATCH_TEXELS).any():
            msgs.append(
                f"texture: the {names[j]} view overlaps too little with the others to match its colours"
            )
        lo, hi = _GAIN_RANGE
        if (g < lo).any() or (g > hi).any():
            msgs.append(
                f"texture: the {names[j]} view's exposure differs a lot (gain {np.round(g, 2).tolist()}); clamped"
            )
            g = np.clip(g, lo, hi)
        gains[j] = g
        if todo:  # the last view's colours are matched to nothing further
            tmp = np.multiply(cols[j], g, out=tmp)
            tmp *= wts[j][:, None]
            acc_c += tmp
            acc_w += wts[j]
    return gains, msgs


def _blend(
    cols: list[np.ndarray], wts: list[np.ndarray], layout: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two-band blend of the views on the texture grid.

    cols: per view (S,S,C) linear colours; wts: per view (S,S) raw weights. Feathered weight
    ws = blur(w) (normalised by the blurred layout) where the view sees the texel; low band =
    normalised-convolution blur of the view's colours, blended with ws; high band = colour -
    low band, blended with ws^4. Returns (S,S,C) blended colour (0 where unseen), (S,S) total
    raw weight and (N,S,S) normalised feathered weights.
    """
    s = layout.shape[0]
    n_ch = cols[0].shape[2]
    sig_w, sig_low = s / 256, s / 128
    lay_w = np.maximum(_smooth(layout.astype(np.float32), sig_w), 1e-6)
    low_num = np.zeros((s, s, n_ch), np.float32)
    high_num = np.zeros((s, s, n_ch), np.float32)
    low_den = np.zeros((s, s), np.float32)
    high_den = np.zeros((s, s), np.float32)
    total = np.zeros((s, s), np.float32)
    feathered = np.zeros((len(cols), s, s), np.float32)
    # per-view temporaries allocated once (fresh memory is slow to touch, issue 15)
    masked = np.empty((s, s, n_ch), np.float32)
    low = np.empty_like(masked)
    tmp = np.empty_like(masked)
    sm_valid = np.empty((s, s), np.float32)
    wh = np.empty_like(sm_valid)
    for i, (c, w) in enumerate(zip(cols, wts, strict=True)):
        valid = (w > 0).astype(np.float32)
        total += w
        ws = _smooth(w, sig_w, out=feathered[i])
        ws /= lay_w
        ws *= valid
        _smooth(np.multiply(c, valid[..., None], out=masked), sig_low, out=low)
        _smooth(valid, sig_low, out=sm_valid)
        np.maximum(sm_valid, 1e-6, out=sm_valid)
        low /= sm_valid[..., None]
        np.multiply(ws, ws, out=wh)
        wh *= wh
        low_num += np.multiply(ws[..., None], low, out=tmp)
        low_den += ws
        low -= c
        high_num -= np.multiply(wh[..., None], low, out=tmp)
        high_den += wh
    low_num /= np.maximum(low_den, 1e-12)[..., None]
    high_num /= np.maximum(high_den, 1e-30)[..., None]
    out = low_num
    out += high_num
    out *= (low_den > 0)[..., None]  # (0 there already: no view's weight reaches it)
    np.clip(out, 0, 1, out=out)
    feathered /= np.maximum(feathered.sum(0), 1e-12)
    return out, total, feathered


def _to_grid(vals: np.ndarray, pix: np.ndarray, s: int, c: int | None = None) -> np.ndarray:
    out = np.zeros(s * s if c is None else (s * s, c), np.float32)
    out[pix] = vals
    return out.reshape((s, s) if c is None else (s, s, c))


def _smooth(img: np.ndarray, sigma: float, out: np.ndarray | None = None) -> np.ndarray:
    """Approximate Gaussian blur; large sigmas run on a downsampled copy (fast). out: an
    array of img's shape and type to write the result into (saves fresh memory)."""
    if sigma <= 0:
        if out is None:
            return img
        out[...] = img
        return out
    h, w = img.shape[:2]
    f = 1
    while sigma / f > 3 and min(h, w) // (2 * f) >= 16:
        f *= 2
    if f == 1:
        res = cv2.GaussianBlur(img, (0, 0), sigma, dst=out, borderType=cv2.BORDER_REFLECT)
    else:
        small = cv2.resize(img, (w // f, h // f), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), sigma / f, borderType=cv2.BORDER_REFLECT)
        res = cv2.resize(small, (w, h), dst=out, interpolation=cv2.INTER_LINEAR)
    if out is not None and not np.shares_memory(res, out):  # cv2 may not take `out`
        out[...] = res
        return out
    return res


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.asarray(t, dtype=np.float32)
    out = t * np.float32(-2)
    out += 3
    out *= t
    out *= t
    return out


def _push_pull(col: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Fills every texel from weighted samples by pyramid push-pull (Gortler et al. 1996).

    col: (S,S,3); weight: (S,S) confidence in [0,1]. Returns (S,S,3); equals col where
    weight == 1, a smooth interpolation of the weighted samples elsewhere.
    """
    sc = (col * weight[..., None]).astype(np.float32)
    sa = weight.astype(np.float32)
    pyr = [(sc, sa)]
    while max(sa.shape) > 1:
        h, w = sa.shape
        size = (max(1, (w + 1) // 2), max(1, (h + 1) // 2))
        sc = cv2.resize(sc, size, interpolation=cv2.INTER_AREA) * 4
        sa = cv2.resize(sa, size, interpolation=cv2.INTER_AREA) * 4
        sc = sc.reshape(size[1], size[0], col.shape[2])
        pyr.append((sc, sa))
    sc, sa = pyr[-1]
    out = np.where(sa[..., None] > 0, sc / np.maximum(sa, 1e-12)[..., None], 0.5).astype(np.float32)
    for sc, sa in reversed(pyr[:-1]):
        h, w = sa.shape
        up = cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, col.shape[2])
        conf = np.minimum(sa, 1)[..., None]
        own = sc / np.maximum(sa, 1e-12)[..., None]
        out = conf * own + (1 - conf) * up
    return out


def _smooth_fill(img: np.ndarray, known: np.ndarray, coarse: int = 256) -> np.ndarray:
    """Push-pull fill of img (S,S,3) from the `known` (S,S) texels, computed at about
    `coarse` px and upsampled: for texels far from any island, where detail does not matter."""
    s = img.shape[0]
    f = max(1, s // coarse)
    if f == 1:
        return _push_pull(img, known.astype(np.float32))
    size = (img.shape[1] // f, s // f)
    k = known.astype(np.float32)
    ks = cv2.resize(k, size, interpolation=cv2.INTER_AREA)
    cs = cv2.resize(img * k[..., None], size, interpolation=cv2.INTER_AREA)
    cs = cs / np.maximum(ks, 1e-12)[..., None]
    small = _push_pull(cs, np.minimum(ks * 4, 1))
    return cv2.resize(small, (img.shape[1], s), interpolation=cv2.INTER_LINEAR)


def _mesh_fill(faces: np.ndarray, interp, colour: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """Smooth colours for every layout texel from the seen ones, computed on the mesh.

    Seen texels are splatted to their face's vertices (weights bary * conf); vertices whose
    neighbourhood is mostly seen keep that average colour, the others get the harmonic
    interpolation (graph Laplacian on mesh edges, Dirichlet values at the seen vertices, a tiny
    pull to the mean colour so that parts never seen still get a value); texels interpolate
    the vertex colours. Because vertices are shared across UV seams, the fill is continuous
    on the surface where a texture-space fill would show seams between islands.
    faces: (F,3); interp: (P,V) sparse barycentric matrix; colour: (P,3); conf: (P,) in [0,1].
    Returns (P,3) float32.
    """
    import scipy.sparse as sp
    from scipy.sparse.linalg import spsolve

    n_verts = interp.shape[1]
    cols = np.concatenate(
        [np.ones((len(conf), 1), np.float32), conf[:, None], conf[:, None] * colour], axis=1
    )
    sums = np.asarray(
        interp.T @ cols, dtype=np.float64
    )  # (V,5): incidence, weight, weighted colour
    inc, wsum, csum = sums[:, 0], sums[:, 1], sums[:, 2:]
    known = (wsum > 0) & (wsum >= 0.5 * inc)
    if not known.any():
        mean = colour[conf > 0].mean(0) if (conf > 0).any() else np.full(colour.shape[1], 0.2)
        return np.broadcast_to(mean.astype(np.float32), colour.shape).copy()
    x = np.zeros((n_verts, colour.shape[1]))
    x[known] = csum[known] / wsum[known, None]
    mean = csum[known].sum(0) / wsum[known].sum()
    unknown = np.flatnonzero(~known)
    if len(unknown):
        e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
        e = np.concatenate([e, e[:, ::-1]])
        adj = sp.csr_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n_verts, n_verts))
        adj.data[:] = 1.0
        deg = np.asarray(adj.sum(1)).ravel()
        eps = 1e-4
        rows = adj[unknown]
        lap = sp.diags(deg[unknown] + eps) - rows[:, unknown]
        rhs = rows[:, np.flatnonzero(known)] @ x[known] + eps * mean
        x[unknown] = np.asarray(spsolve(lap.tocsc(), rhs)).reshape(len(unknown), -1)
    return np.asarray(interp @ x.astype(np.float32), dtype=np.float32)


def _gutter(tex: np.ndarray, layout: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Texels within `width` px outside the layout copy the nearest layout texel.
    Returns the new texture and the (S,S) bool gutter band."""
    if width <= 0 or not layout.any():
        return tex.copy(), np.zeros_like(layout)
    dist, labels = cv2.distanceTransformWithLabels(
        (~layout).astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
    )
    seeds = np.flatnonzero(layout.reshape(-1))  # labels are 1.. in raster order of the seeds
    band = (~layout) & (dist <= width)
    out = tex.copy()
    src = seeds[labels[band] - 1]
    out[band] = tex.reshape(-1, tex.shape[2])[src]
    return out, band
