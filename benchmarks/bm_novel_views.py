"""Novel views (issue 13, item 9): the reconstructed, textured head seen from angles no photo
saw, against the real head seen from there, unlit and relit.

    python benchmarks/bm_novel_views.py [--model ict] [--subjects 3] [--size 1024]
                                        [--no-scan] [--picture docs/img/novel_views.png]
    python benchmarks/bm_novel_views.py --albedo-picture RESULT_DIR docs/img/albedo_before_after.png

Each subject is reconstructed by `mfnet_core.reconstruct` with the default options (flow
on, per-photo expressions) from 3 photos at about -35/0/+35 degrees; then the fitted mesh is
aligned rigidly (rotation and translation only: a head of the wrong size shows) onto the
true one and both are rendered with their textures (the truth with its albedo, the
reconstruction with texture.png, the albedo estimate, and texture_shaded.png, the photos'
colours as they are) at yaw -70/+70 and pitch -20/+20 about the head, plus the front view
the photos saw: UNLIT, and RELIT by a new light (`RELIGHT`: ambient plus a key light from
the upper left, in the render camera's space, applied in linear light to truth and
reconstruction alike, as Blender shades a texture). PSNR and SSIM
(photometric.masked_psnr / masked_ssim) inside two masks: "face" (the true face region's
pixels) and "head" (pixels either head covers: silhouette errors count);
"psnr_face_gain_matched" after one per-channel gain, fitted on the seen front view, takes
the photos' exposure and white balance out.

Subjects: `synthetic.make_realistic_subject` people of the model (lit photos, jittered
expressions, detector-like landmark errors; their albedo is the truth, so light baked into
the texture costs PSNR), and the James capture (../shared/assets/headscan-james-menpo3d,
BSD-3) rendered with its photo texture at -40/0/+40, its landmarks detected as `mfnet
reconstruct` does (MediaPipe when installed, else dlib); its capture has no back of the head,
so its "head" mask is the capture's own pixels, and its "truth" is a photo texture with the
capture's flash light in it, not an albedo.

Also times the light removal (`head_skin_faces` plus `bake_texture`'s
`timings["light_removal"]`) and the whole bake with and without it (the albedo and the
shaded texture come out of one six-channel blend), on 3 photos of 1024 px baked through
the true mesh at 1024, best of 5.

Prints one JSON object; seconds also as ratios to benchmarks/reference.py's workload.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from bm_accuracy import SCAN_DIR, align_to_scan
from reference import Reference

from mfnet_core.camera import Intrinsics, axis_angle_to_matrix, to_screen
from mfnet_core.fit.photometric import masked_psnr, masked_ssim
from mfnet_core.head.registry import load_head_model
from mfnet_core.metrics import similarity_transform
from mfnet_core.outputs.albedo import directional_sh, head_skin_faces
from mfnet_core.outputs.texture import BakeView, bake_texture, linear_to_srgb, srgb_to_linear
from mfnet_core.reconstruct import ReconstructOptions, ViewInput, reconstruct
from mfnet_core.render import render_textured, vertex_normals
from mfnet_core.synthetic import (
    RealisticOptions,
    _euler_to_axis_angle,
    load_headscan,
    make_realistic_subject,
    render_scan,
    skin_texture,
)

# (yaw, pitch) in degrees; the first is the photos' own front view, for comparison
VIEWS = ((0.0, 0.0), (-70.0, 0.0), (70.0, 0.0), (0.0, 20.0), (0.0, -20.0))
RENDER_SIZE = 512
DISTANCE_M = 0.6
PIVOT_BEHIND_M = 0.09  # the head turns about a point this far behind the face's centre
# The new light of the relit renders (camera space of each render, linear light): ambient
# 0.3 plus a key light of 0.7 from the upper left front.
RELIGHT = directional_sh(0.3, 0.7, (-0.6, 0.5, 0.6))
TEXTURES = {"albedo": "texture.png", "shaded": "texture_shaded.png"}


@torch.no_grad()
def render_view(
    verts: np.ndarray,
    faces: np.ndarray,
    uv: np.ndarray,
    uv_faces: np.ndarray,
    texture: np.ndarray,
    pivot: np.ndarray,
    yaw: float,
    pitch: float,
    light: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(H,W,3) float [0,1] sRGB picture and (H,W) face index (-1: background) of a textured
    mesh turned about `pivot`, unlit, or shaded by `light` (9,3) SH in linear light.
    verts (V,3) metres, model axes; texture (Ht,Wt,3) uint8 sRGB."""
    aa = torch.as_tensor(_euler_to_axis_angle(yaw, pitch, 0.0), dtype=torch.float64)
    rot = axis_angle_to_matrix(aa[None])[0]
    v = torch.as_tensor(verts, dtype=torch.float64) - torch.as_tensor(pivot)
    v_cam = (v @ rot.T + torch.tensor([0.0, 0.0, -DISTANCE_M - PIVOT_BEHIND_M])).float()
    camera = torch.as_tensor(Intrinsics.from_fov(RENDER_SIZE, RENDER_SIZE).as_vector())[None]
    faces_t = torch.as_tensor(faces)
    tex = texture[..., :3]
    img, _mask, frags = render_textured(
        to_screen(v_cam[None], camera)[0],
        None if light is None else vertex_normals(v_cam[None], faces_t)[0],
        faces_t,
        torch.as_tensor(uv, dtype=torch.float32),
        torch.as_tensor(uv_faces),
        torch.as_tensor(tex if light is None else srgb_to_linear(tex) * 255, dtype=torch.float32)
        / 255.0,
        RENDER_SIZE,
        RENDER_SIZE,
        sh_coeffs=None if light is None else torch.as_tensor(light, dtype=torch.float32),
        normals_kind="normals",
    )
    out = img.clamp(0, 1).numpy()
    if light is not None:
        out = linear_to_srgb(out).astype(np.float32) / 255.0
    return out, frags.face_index.numpy()


def compare(
    truth: tuple,
    recon: tuple,
    truth_face_faces: np.ndarray,
    pivot: np.ndarray,
    head_mask: str,
    light: np.ndarray | None = None,
) -> tuple[dict, list[np.ndarray]]:
    """Scores per view and the (truth, reconstruction) pictures. truth/recon: (verts, faces,
    uv, uv_faces, texture); truth_face_faces (F_truth,) bool; head_mask "union" or "truth";
    light: (9,3) SH of a relit comparison, None for unlit."""
    scores, pictures = {}, []
    gain = None
    for yaw, pitch in VIEWS:
        t_img, t_idx = render_view(*truth, pivot, yaw, pitch, light)
        r_img, r_idx = render_view(*recon, pivot, yaw, pitch, light)
        face = (t_idx >= 0) & truth_face_faces[np.maximum(t_idx, 0)]
        head = (t_idx >= 0) | (r_idx >= 0) if head_mask == "union" else t_idx >= 0
        if gain is None:  # per-channel exposure / white balance, fitted on the seen view
            a, b = r_img[face].astype(np.float64), t_img[face].astype(np.float64)
            gain = (a * b).sum(0) / np.maximum((a * a).sum(0), 1e-12)
        matched = np.clip(r_img * gain, 0, 1)
        scores[f"yaw{yaw:+.0f}_pitch{pitch:+.0f}"] = {
            "psnr_face": round(masked_psnr(r_img, t_img, face), 2),
            "ssim_face": round(masked_ssim(r_img, t_img, face), 4),
            "psnr_head": round(masked_psnr(r_img, t_img, head), 2),
            "ssim_head": round(masked_ssim(r_img, t_img, head), 4),
            "psnr_face_gain_matched": round(masked_psnr(matched, t_img, face), 2),
        }
        pictures.append(np.concatenate([t_img, r_img], 0))
    return scores, pictures


def compare_textures(
    truth: tuple, recon: tuple, result_dir: Path, face_faces: np.ndarray, pivot, head_mask: str
) -> tuple[dict, list[np.ndarray]]:
    """{texture: {"unlit"|"relit": scores}} for the albedo and the shaded texture, and the
    unlit pictures of the albedo texture. recon: (verts, faces, uv, uv_faces) without texture."""
    out: dict[str, dict] = {}
    pictures: list[np.ndarray] = []
    for kind, name in TEXTURES.items():
        tex = read_texture(result_dir, name)
        out[kind] = {}
        for lit, light in (("unlit", None), ("relit", RELIGHT)):
            scores, pics = compare(truth, (*recon, tex), face_faces, pivot, head_mask, light)
            out[kind][lit] = scores
            if kind == "albedo" and lit == "unlit":
                pictures = pics
    return out, pictures


def read_texture(result_dir: Path, name: str = "texture.png") -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(result_dir / name)), cv2.COLOR_BGR2RGB)


def solid_faces(head) -> tuple[np.ndarray, np.ndarray]:
    """Faces and uv faces of the opaque parts: this renderer does not blend, so see-through
    overlays (lash cards, the eye-occlusion shell) are left out of truth and reconstruction
    alike."""
    keep = head.parts.opaque(min_alpha=1.0)
    return head.faces.cpu().numpy()[keep], np.asarray(head.uv.uv_faces)[keep]


def synthetic_subject(head, seed: int, size: int, tmp: Path) -> tuple[dict, list, float]:
    texture = skin_texture(head, 1024, seed=seed)
    subj = make_realistic_subject(
        head, seed=seed, options=RealisticOptions(image_size=size), texture=texture
    )
    inputs = [ViewInput(photo=v.photo, landmarks=v.landmarks_noisy) for v in subj.views]
    t0 = time.perf_counter()
    rec = reconstruct(inputs, head, tmp / f"synthetic_{seed}", ReconstructOptions(device="cpu"))
    seconds = time.perf_counter() - t0
    region = head.face_region
    fitted = rec.fit.vertices_model.astype(np.float64)
    true = subj.vertices_true.astype(np.float64)
    _s, rot, t = similarity_transform(fitted[region], true[region], with_scale=False)
    fitted = fitted @ rot.T + t
    faces, uv_faces = solid_faces(head)
    uv = head.uv.uv_coords
    face_faces = region[faces].all(1)
    pivot = true[region].mean(0) - np.array([0.0, 0.0, PIVOT_BEHIND_M])
    scores, pictures = compare_textures(
        (true, faces, uv, uv_faces, texture),
        (fitted, faces, uv, uv_faces),
        rec.result_dir,
        face_faces,
        pivot,
        "union",
    )
    return scores, pictures, seconds


def scan_subject(head, size: int, tmp: Path) -> tuple[dict, list, float, str]:
    scan = load_headscan(SCAN_DIR)
    views = render_scan(scan, (-40.0, 0.0, 40.0), image_size=size, seed=0, landmarks="projected")
    inputs = [ViewInput(photo=v.photo) for v in views.views]  # detected as `mfnet` does
    t0 = time.perf_counter()
    rec = reconstruct(inputs, head, tmp / "james", ReconstructOptions(device="cpu"))
    seconds = time.perf_counter() - t0
    fitted = rec.fit.vertices_model
    with torch.no_grad():
        lm3 = head.landmarks_frontal(torch.as_tensor(fitted)[None])[0].numpy()
    faces, uv_faces = solid_faces(head)
    _s, rot, t, _q = align_to_scan(scan, fitted, head.faces.numpy(), lm3, with_scale=False)
    fitted = fitted.astype(np.float64) @ rot.T + t
    scores, pictures = compare_textures(
        (scan.vertices, scan.faces, scan.uv_coords, scan.uv_faces, scan.texture),
        (fitted, faces, head.uv.uv_coords, uv_faces),
        rec.result_dir,
        scan.face_region()[scan.faces].all(1),
        np.array([0.0, 0.0, -PIVOT_BEHIND_M]),
        "truth",
    )
    return scores, pictures, seconds, "+".join(v["landmarks_from"] for v in rec.report["views"])


def save_picture(path: Path, rows: list[tuple[str, list[np.ndarray]]]) -> None:
    """One block per subject: truth above reconstruction, one column per view."""
    blocks = []
    for label, pictures in rows:
        block = (np.concatenate(pictures, 1) * 255).astype(np.uint8)
        cv2.putText(block, label, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
        cv2.putText(
            block,
            "reconstruction",
            (8, RENDER_SIZE + 24),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.7,
            (255, 255, 255),
            2,
        )
        blocks.append(block)
    scale = 0.5
    out = cv2.resize(
        np.concatenate(blocks, 0), None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(out, cv2.COLOR_RGB2BGR))


def save_albedo_picture(result_dir: Path, path: Path, model: str = "ict") -> None:
    """Before / after picture of a result folder: the face of texture_shaded.png and
    texture.png, the light divided out (their ratio: grey 1, white 1.5, black 0.5), the head
    unlit, and relit from the left and the right with each texture (linear light)."""

    def rd(name: str) -> np.ndarray:
        img = cv2.imread(str(result_dir / name), cv2.IMREAD_UNCHANGED)[..., :3]
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    shaded, albedo = rd("texture_shaded.png"), rd("texture.png")
    rig = np.load(result_dir / "rig.npz")
    head = load_head_model(model)
    keep = head.parts.opaque(min_alpha=1.0)
    faces, uv_faces, verts = rig["faces"][keep], rig["uv_faces"][keep], rig["vertices"]
    pivot = verts[head.face_region].mean(0) - np.array([0.0, 0.0, PIVOT_BEHIND_M])
    side = 320

    def crop(t: np.ndarray) -> np.ndarray:  # the face's part of the UV layout
        c = t[: int(0.55 * t.shape[0]), : int(0.55 * t.shape[1])]
        return cv2.resize(c, (side, side), interpolation=cv2.INTER_AREA)

    def render(t: np.ndarray, light: np.ndarray | None) -> np.ndarray:
        img, idx = render_view(
            verts, faces, rig["uv_coords"], uv_faces, t, pivot, -25.0, 0.0, light
        )
        img = (np.where(idx[..., None] >= 0, img, 0.12) * 255).astype(np.uint8)
        return cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)

    lin = srgb_to_linear
    ratio = (lin(shaded).mean(-1) + 1e-3) / (lin(albedo).mean(-1) + 1e-3)
    ratio_img = cv2.cvtColor(
        np.clip(128 + 255 * (ratio - 1), 0, 255).astype(np.uint8), cv2.COLOR_GRAY2RGB
    )
    left = directional_sh(0.25, 0.75, (-0.8, 0.3, 0.5))
    right = directional_sh(0.25, 0.75, (0.8, 0.3, 0.5))
    panels = [
        (crop(shaded), "before: texture_shaded.png"),
        (crop(albedo), "after: texture.png (albedo)"),
        (crop(ratio_img), "divided out (grey 1, white 1.5)"),
        (render(albedo, None), "after, unlit"),
        (render(shaded, left), "before, lit from the left"),
        (render(albedo, left), "after, lit from the left"),
        (render(shaded, right), "before, lit from the right"),
        (render(albedo, right), "after, lit from the right"),
    ]
    for im, label in panels:
        cv2.putText(im, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3)
        cv2.putText(im, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    ims = [p[0] for p in panels]
    picture = np.concatenate([np.concatenate(ims[:4], 1), np.concatenate(ims[4:], 1)], 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(
        str(path), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9]
    )


def summary(per_subject: dict[str, dict]) -> dict:
    """Mean over subjects of each view's scores, seen (front) and novel views apart, per
    texture and lighting: {texture: {"unlit"|"relit": {"seen"|"novel": scores}}}."""
    first = next(iter(per_subject.values()))
    out: dict[str, dict] = {}
    for kind in first:
        for lit in first[kind]:
            out.setdefault(kind, {})[lit] = _mean_views(
                [s[kind][lit] for s in per_subject.values()]
            )
    return out


def _mean_views(subjects: list[dict]) -> dict:
    out = {}
    for kind in ("seen", "novel"):
        vals: dict[str, list[float]] = {}
        for scores in subjects:
            for view, s in scores.items():
                if (view == "yaw+0_pitch+0") == (kind == "seen"):
                    for k, v in s.items():
                        vals.setdefault(k, []).append(v)
        out[kind] = {k: round(float(np.mean(v)), 3) for k, v in vals.items()}
    return out


def light_removal_seconds(head, texture: np.ndarray, size: int = 1024, repeats: int = 5) -> dict:
    """Best-of-`repeats` seconds of the light removal (skin faces + `remove_lighting` inside
    `bake_texture`) and of the bake with (albedo and shaded textures) and without it, on a
    realistic subject's 3 photos of `size` px through the true mesh, baked at 1024."""
    subj = make_realistic_subject(
        head, seed=1, options=RealisticOptions(image_size=size), texture=texture
    )
    faces_t = head.faces
    verts = torch.as_tensor(subj.vertices_true)
    p = {k: torch.as_tensor(v, dtype=torch.float32)[None] for k, v in subj.params.items()}
    with torch.no_grad():
        pivot = head(
            **{k: p[k] for k in ("shape", "expression", "neck_pose", "jaw_pose", "eye_pose")}
        ).joints[0, 0]
    camera = torch.as_tensor(subj.views[0].intrinsics.as_vector())[None]
    views = []
    for i, v in enumerate(subj.views):
        rot = axis_angle_to_matrix(torch.as_tensor(v.head_rot, dtype=torch.float32)[None])[0]
        v_cam = (verts - pivot) @ rot.T + pivot + torch.as_tensor(v.head_trans)
        screen = to_screen(v_cam[None], camera)[0]
        normals = vertex_normals(v_cam[None], faces_t)[0]
        views.append(BakeView(v.photo.rgb, screen, normals, ("left", "front", "right")[i]))
    kwargs = {
        "size": 1024,
        "face_paint": head.parts.face_paint(),
        "occluders": head.parts.opaque(min_alpha=1.0),
    }
    uv, uv_faces = head.uv.uv_coords, head.uv.uv_faces
    best = {"skin_faces": np.inf, "light_removal": np.inf, "bake_plain": np.inf}
    best["bake_albedo_and_shaded"] = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        skin = head_skin_faces(head, subj.vertices_true)
        best["skin_faces"] = min(best["skin_faces"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        bake_texture(views, faces_t, uv, uv_faces, **kwargs)
        best["bake_plain"] = min(best["bake_plain"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        res = bake_texture(views, faces_t, uv, uv_faces, skin_faces=skin, **kwargs)
        took = time.perf_counter() - t0
        best["bake_albedo_and_shaded"] = min(best["bake_albedo_and_shaded"], took)
        best["light_removal"] = min(best["light_removal"], res.timings["light_removal"])
    best["light_total"] = best["skin_faces"] + best["light_removal"]
    # what texture.png + texture_shaded.png cost over the old bake (skin faces included)
    best["extra_over_plain_bake"] = (
        best["skin_faces"] + best["bake_albedo_and_shaded"] - best["bake_plain"]
    )
    return {k: round(v, 4) for k, v in best.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ict", choices=("ict", "test-head", "flame"))
    ap.add_argument("--subjects", type=int, default=3)
    ap.add_argument("--size", type=int, default=1024, help="photo size for the reconstruction")
    ap.add_argument("--no-scan", action="store_true")
    ap.add_argument("--picture", type=Path, default=None, help="write the comparison picture")
    ap.add_argument(
        "--albedo-picture",
        nargs=2,
        type=Path,
        metavar=("RESULT_DIR", "PNG"),
        help="only draw the before/after picture of a result folder's textures, then stop",
    )
    args = ap.parse_args(argv)
    if args.albedo_picture:
        save_albedo_picture(*args.albedo_picture, model=args.model)
        return 0
    ref = Reference.start()
    head = load_head_model(args.model)
    synthetic, scan, seconds, rows = {}, {}, {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(1, args.subjects + 1):
            s, pictures, sec = synthetic_subject(head, seed, args.size, Path(tmp))
            synthetic[f"synthetic_{seed}"], seconds[f"synthetic_{seed}"] = s, round(sec, 2)
            if seed == 1:
                rows.append((f"synthetic {args.model} person {seed}", pictures))
        source = None
        if not args.no_scan and SCAN_DIR.is_dir():
            s, pictures, sec, source = scan_subject(head, args.size, Path(tmp))
            scan["james"], seconds["james"] = s, round(sec, 2)
            rows.insert(0, ("James capture", pictures))
        timing = light_removal_seconds(head, skin_texture(head, 1024, seed=1))
    ref.finish()
    if args.picture:
        save_picture(args.picture, rows)
    result = {
        **ref.to_json(),
        "model": args.model,
        "photo_size": args.size,
        "views": [f"yaw{y:+.0f}_pitch{p:+.0f}" for y, p in VIEWS],
        "synthetic_mean": summary(synthetic) if synthetic else None,
        "james": scan.get("james"),
        "james_landmarks": source,
        "synthetic": synthetic,
        "reconstruct_seconds": seconds,
        "ratio_to_reference": ref.ratios(seconds),
        "light_removal_seconds": timing,
        "light_removal_ratio_to_reference": ref.ratios(timing),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
