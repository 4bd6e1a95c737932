"""Result folder -> rigged, textured FLAME head in the scene (bpy).

Mesh with UVs and the baked texture; an armature with one bone per FLAME joint (plus a
weightless "head" socket) and vertex groups from the skin weights; one shape key per
expression component; FLAME's pose correctives as shape keys driven by the bones'
quaternions; the bones' locations driven by the expression so that rotations pivot about
FLAME's expressed joints. Shape keys apply before the Armature modifier, as FLAME's blend
shapes apply before skinning, so the evaluated mesh equals FLAME's forward pass. All bulk
data goes through foreach_set with numpy arrays. The maths and names live in rigdata.py and
drivers_math.py (no bpy).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import bpy
import numpy as np

from . import drivers_math as dm
from .rigdata import (
    BASIS_KEY,
    DRIVEN_PREFIX,
    ResultRig,
    bone_specs,
    check_blender_names,
    expression_slider_limit,
    load_result,
    loop_arrays,
    pivot_bone_name,
    quaternion_to_axis_angle,
    to_blender,
    weight_groups,
)

RIG_TAG = "mfnet"  # custom property on the armature object (dict)
FITTED_TAG = "mfnet_fitted"  # JSON string: the fitted pose (poses.Pose format)
HEAD_TAG = "mfnet_head"  # custom property on the mesh object
OFFSET_PROP = "mfnet_dj"  # pose-bone property: expressed joint offset dJ (3,), FLAME axes
OFFSET_PARTS_PROP = "mfnet_dj_parts"  # pose-bone property: partial sums of dJ
# joint drift coefficients below this (metres per unit of expression) are float noise
PIVOT_TOLERANCE = 1e-10
SHAPE_KEY_LIMIT = 10.0  # Blender caps shape-key slider ranges at +-10


@dataclass
class BuildReport:
    armature: bpy.types.Object
    mesh: bpy.types.Object
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _path_escape(name: str) -> str:
    return bpy.utils.escape_identifier(name)


def _plain_driver_curve(fc: bpy.types.FCurve) -> None:
    """Makes the F-Curve pass the driver value through unchanged. driver_add() gives an
    identity Generator modifier in Blender < 4.x but two Bezier keys (0,0), (1,1) in
    Blender 5.0, which bend values between 0 and 1; drop both."""
    while len(fc.modifiers):
        fc.modifiers.remove(fc.modifiers[0])
    if len(fc.keyframe_points):
        fc.keyframe_points.clear()


def _add_var(driver, name: str, id_type: str, id_block, data_path: str) -> None:
    var = driver.variables.new()
    var.name = name
    var.type = "SINGLE_PROP"
    t = var.targets[0]
    t.id_type = id_type
    t.id = id_block
    t.data_path = data_path


def _scripted(fc: bpy.types.FCurve, expression: str):
    _plain_driver_curve(fc)
    drv = fc.driver
    drv.type = "SCRIPTED"
    drv.expression = expression
    return drv


def build_mesh(rig: ResultRig, name: str) -> bpy.types.Mesh:
    """Mesh with the rest vertices (Blender axes), triangles, smooth shading and UVs."""
    me = bpy.data.meshes.new(name)
    co = to_blender(rig.vertices).astype(np.float32).reshape(-1)
    loops, starts, uvs = loop_arrays(rig)
    n_faces = len(starts)
    me.vertices.add(rig.n_vertices)
    me.vertices.foreach_set("co", co)
    me.loops.add(len(loops))
    me.loops.foreach_set("vertex_index", loops)
    me.polygons.add(n_faces)
    me.polygons.foreach_set("loop_start", starts)
    if not bpy.types.MeshPolygon.bl_rna.properties["loop_total"].is_readonly:  # Blender < 4.0
        me.polygons.foreach_set("loop_total", np.full(n_faces, 3, dtype=np.int32))
    me.update(calc_edges=True)
    uv_layer = me.uv_layers.new(name="UVMap")
    uv_layer.data.foreach_set("uv", uvs)
    me.polygons.foreach_set("use_smooth", np.ones(n_faces, dtype=bool))
    me.validate(clean_customdata=False)
    me.update()
    return me


def load_texture(rig: ResultRig, name: str, pack: bool = False):
    """The baked texture.png as a Blender image (packed into the .blend on request), or None."""
    if rig.texture is None:
        return None
    img = bpy.data.images.load(str(rig.texture), check_existing=True)
    img.name = f"{name}_texture"
    if pack:
        img.pack()
    return img


def build_material(rig: ResultRig, name: str, pack: bool = False, image=None) -> bpy.types.Material:
    """Principled material whose base colour is the baked texture (texture.png); `image`
    (from `load_texture`) shares one image between materials."""
    mat = bpy.data.materials.new(name)
    if mat.node_tree is None:  # Blender < 5.0 creates the node tree on demand
        mat.use_nodes = True
    nt = mat.node_tree
    bsdf = next((n for n in nt.nodes if n.type == "BSDF_PRINCIPLED"), None)
    if bsdf is None:
        bsdf = nt.nodes.new("ShaderNodeBsdfPrincipled")
        out = next((n for n in nt.nodes if n.type == "OUTPUT_MATERIAL"), None) or nt.nodes.new(
            "ShaderNodeOutputMaterial"
        )
        nt.links.new(bsdf.outputs[0], out.inputs["Surface"])
    for key, value in (("Roughness", 0.6), ("Specular IOR Level", 0.3), ("Specular", 0.3)):
        sock = bsdf.inputs.get(key)
        if sock is not None:
            sock.default_value = value
    img = image if image is not None else load_texture(rig, name, pack)
    if img is not None:
        tex = nt.nodes.new("ShaderNodeTexImage")
        tex.name = tex.label = "mfnet texture"
        tex.image = img
        tex.location = (bsdf.location.x - 320, bsdf.location.y)
        nt.links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    else:
        bsdf.inputs["Base Color"].default_value = (0.8, 0.62, 0.52, 1.0)
    return mat


def _set_alpha(mat: bpy.types.Material, alpha: float) -> None:
    """A see-through material (eyelashes, eye occlusion): the shader's alpha and blending.
    Its opacity is `alpha` times the texture's alpha channel, which draws the eyelash
    strands (an RGB texture reads as alpha 1)."""
    nt = mat.node_tree
    bsdf = next((n for n in nt.nodes if n.type == "BSDF_PRINCIPLED"), None)
    if bsdf is not None and "Alpha" in bsdf.inputs:
        bsdf.inputs["Alpha"].default_value = alpha
        tex = next((n for n in nt.nodes if n.type == "TEX_IMAGE"), None)
        if tex is not None:
            mul = nt.nodes.new("ShaderNodeMath")
            mul.operation = "MULTIPLY"
            mul.inputs[1].default_value = alpha
            mul.location = (bsdf.location.x - 160, bsdf.location.y - 300)
            nt.links.new(tex.outputs["Alpha"], mul.inputs[0])
            nt.links.new(mul.outputs[0], bsdf.inputs["Alpha"])
    if hasattr(mat, "surface_render_method"):  # EEVEE Next (4.2+)
        mat.surface_render_method = "BLENDED"
    if hasattr(mat, "blend_method"):
        try:
            mat.blend_method = "BLEND"
        except (TypeError, AttributeError):
            pass


def assign_materials(rig: ResultRig, me: bpy.types.Mesh, name: str, pack: bool) -> None:
    """One material slot per part (skin, teeth, sclera_L, eyelashes...), all on the baked
    texture, each face on its part's slot; thin overlay parts blend by their opacity."""
    parts = rig.part_names if rig.face_part is not None else ["skin"]
    image = load_texture(rig, f"{name}_{parts[0]}", pack)  # one image for all parts
    for i, part in enumerate(parts):
        mat = build_material(rig, f"{name}_{part}", image=image)
        if rig.part_alpha is not None and rig.part_alpha[i] < 1.0:
            _set_alpha(mat, float(rig.part_alpha[i]))
        me.materials.append(mat)
    if rig.face_part is not None and len(parts) > 1:
        me.polygons.foreach_set("material_index", rig.face_part.astype(np.int32))
        me.update()


def add_shape_keys(obj: bpy.types.Object, rig: ResultRig) -> None:
    """Basis + one key per expression component + one per pose-corrective component."""
    rest = to_blender(rig.vertices)
    obj.shape_key_add(name=BASIS_KEY, from_mix=False)
    obj.data.shape_keys.use_relative = True
    limit = expression_slider_limit(rig.expression)
    bounded = rig.expression_lower is not None and rig.expression_upper is not None
    for k, name in enumerate(rig.expression_key_names()):
        kb = obj.shape_key_add(name=name, from_mix=False)
        kb.data.foreach_set(
            "co", (rest + to_blender(rig.expression_basis[k])).astype(np.float32).reshape(-1)
        )
        if bounded:  # blendshape weights (ARKit): the model's own range
            kb.slider_min = float(rig.expression_lower[k])
            kb.slider_max = float(rig.expression_upper[k])
        else:
            kb.slider_min, kb.slider_max = -limit, limit
        kb.value = 0.0  # Blender 5 starts new keys at 1; apply_fitted sets the fitted values
    own = set(rig.expression_key_names())
    for a, name in enumerate(rig.arkit_names):  # PCA models: the ICT model's ARKit keys too
        if name in own or rig.arkit_basis is None:
            continue
        kb = obj.shape_key_add(name=name, from_mix=False)
        offset = to_blender(rig.arkit_basis[a])
        kb.data.foreach_set("co", (rest + offset).astype(np.float32).reshape(-1))
        kb.slider_min, kb.slider_max = 0.0, 1.0
        kb.value = 0.0  # Blender 5 starts new keys at 1
    for p, name in rig.corrective_key_names():
        kb = obj.shape_key_add(name=name, from_mix=False)
        kb.data.foreach_set(
            "co", (rest + to_blender(rig.pose_correctives[p])).astype(np.float32).reshape(-1)
        )
        kb.slider_min, kb.slider_max = -2.0, 2.0  # entries of R - I lie in [-2, 2]


def build_armature(rig: ResultRig, name: str, collection, context) -> bpy.types.Object:
    """Armature object with up-pointing, roll-0 bones at the rest joints (see rigdata.py)."""
    arm = bpy.data.armatures.new(name)
    arm.display_type = "OCTAHEDRAL"
    arm_obj = bpy.data.objects.new(name, arm)
    arm_obj.show_in_front = True
    collection.objects.link(arm_obj)
    specs = bone_specs(rig)

    view_layer = context.view_layer
    prev_active = view_layer.objects.active
    if context.mode != "OBJECT" and prev_active is not None:
        bpy.ops.object.mode_set(mode="OBJECT")
    view_layer.objects.active = arm_obj
    bpy.ops.object.mode_set(mode="EDIT")
    try:
        ebs = {}
        for s in specs:
            eb = arm.edit_bones.new(s.name)
            eb.head, eb.tail, eb.roll = s.head, s.tail, 0.0
            eb.use_deform = s.deform
            ebs[s.name] = eb
        for s in specs:
            if s.parent:
                ebs[s.name].parent = ebs[s.parent]
                ebs[s.name].use_connect = False
    finally:
        bpy.ops.object.mode_set(mode="OBJECT")
    for s in specs:
        pb = arm_obj.pose.bones[s.name]
        pb.rotation_mode = "QUATERNION"
        pb.lock_location = (True, True, True)  # FLAME joints only rotate (location is driven)
        pb.lock_scale = (True, True, True)
        if s.socket or s.mechanism:
            pb.lock_rotation = (True, True, True)
            pb.lock_rotation_w = True
            pb.lock_rotations_4d = True
        if s.mechanism:
            arm_obj.data.bones[s.name].hide = True
    return arm_obj


def add_vertex_groups(obj: bpy.types.Object, rig: ResultRig) -> None:
    """One vertex group per FLAME joint with its skin weights (grouped by equal weight, since
    VertexGroup.add takes one weight per call)."""
    for j, name in enumerate(rig.joint_names):
        vg = obj.vertex_groups.new(name=name)
        for w, idx in weight_groups(rig.skin_weights[:, j]):
            vg.add(idx.tolist(), w, "REPLACE")


def add_corrective_drivers(
    mesh_obj: bpy.types.Object, arm_obj: bpy.types.Object, rig: ResultRig
) -> int:
    """Each pose-corrective key's value = (R_j - I)[r, c] of its bone's quaternion."""
    key = mesh_obj.data.shape_keys
    count = 0
    for p, name in rig.corrective_key_names():  # models without correctives have none
        j, r, c = p // 9 + 1, (p % 9) // 3, p % 3
        bone = _path_escape(rig.joint_names[j])
        kb = key.key_blocks[name]
        drv = _scripted(kb.driver_add("value"), dm.rotation_minus_identity_expr(r, c))
        for i, v in enumerate(dm.QUAT_VARS):
            _add_var(drv, v, "OBJECT", arm_obj, f'pose.bones["{bone}"].rotation_quaternion[{i}]')
        count += 1
    return count


# ARKit keys a bone drives: key -> (bone, local rotation axis or LOC_ location channel,
# sign, radians or metres at weight 1). Bones use the model's axes (x to the subject's left,
# y up, z out of the face): the jaw opens with +x, turns the chin to the subject's left with
# +y and juts forward along +z (ICT's jawForward moves the chin ~10 mm); an eye looks down
# with +x and toward +x (the left eye outward, the right eye inward) with +y.
BONE_DRIVEN_KEYS: dict[str, tuple[str, str, float, float]] = {
    "jawOpen": ("jaw", "X", 1.0, 0.45),
    "jawLeft": ("jaw", "Y", 1.0, 0.2),
    "jawRight": ("jaw", "Y", -1.0, 0.2),
    "jawForward": ("jaw", "LOC_Z", 1.0, 0.01),
    "eyeLookDown_L": ("eye_L", "X", 1.0, 0.45),
    "eyeLookUp_L": ("eye_L", "X", -1.0, 0.45),
    "eyeLookOut_L": ("eye_L", "Y", 1.0, 0.6),
    "eyeLookIn_L": ("eye_L", "Y", -1.0, 0.6),
    "eyeLookDown_R": ("eye_R", "X", 1.0, 0.45),
    "eyeLookUp_R": ("eye_R", "X", -1.0, 0.45),
    "eyeLookIn_R": ("eye_R", "Y", 1.0, 0.6),
    "eyeLookOut_R": ("eye_R", "Y", -1.0, 0.6),
}


def add_bone_driven_keys(
    mesh_obj: bpy.types.Object, arm_obj: bpy.types.Object, rig: ResultRig
) -> list[str]:
    """For models whose jaw opens by a blendshape (ICT), a `DRV-` copy of jawOpen, jawLeft,
    jawRight, jawForward and the eyeLook keys, driven by the jaw and eye bones (clamped to
    [0, 1]): rotating the jaw bone opens the mouth, turning an eye bone moves the lids with
    the eyeball, and the artist's own ARKit sliders stay free (both add up). Returns the
    keys made; none where the jaw is skinned (FLAME) or the keys are missing."""
    names = rig.expression_key_names()
    index = {n: k for k, n in enumerate(names)}
    joints = {n: j for j, n in enumerate(rig.joint_names)}
    rest = to_blender(rig.vertices)
    made = []
    for key_name, (bone, axis, sign, full) in BONE_DRIVEN_KEYS.items():
        if key_name not in index or bone not in joints:
            continue
        if bone == "jaw" and rig.skin_weights[:, joints[bone]].max() > 1e-6:
            continue  # the jaw bone already moves the mesh by skinning
        kb = mesh_obj.shape_key_add(name=DRIVEN_PREFIX + key_name, from_mix=False)
        offset = to_blender(rig.expression_basis[index[key_name]])
        kb.data.foreach_set("co", (rest + offset).astype(np.float32).reshape(-1))
        kb.slider_min, kb.slider_max = 0.0, 1.0
        fc = kb.driver_add("value")
        _plain_driver_curve(fc)
        drv = fc.driver
        drv.type = "SCRIPTED"
        var = drv.variables.new()
        var.name = "a"
        var.type = "TRANSFORMS"
        t = var.targets[0]
        t.id = arm_obj
        t.bone_target = bone
        if axis.startswith("LOC_"):
            t.transform_type = axis
            # the jaw bone only rotates elsewhere; here it may also slide to jut the chin
            arm_obj.pose.bones[bone].lock_location["XYZ".index(axis[-1])] = False
        else:
            t.transform_type = f"ROT_{axis}"
            t.rotation_mode = f"SWING_TWIST_{axis}"
        t.transform_space = "LOCAL_SPACE"
        drv.expression = f"min(max({sign:+.1f} * a / {full}, 0.0), 1.0)"
        made.append(kb.name)
    return made


def add_pivot_drivers(mesh_obj: bpy.types.Object, arm_obj: bpy.types.Object, rig: ResultRig) -> int:
    """Pivot-bone locations (I - R) dJ, with R the joint bone's rotation and dJ =
    joint_expression_basis . expression values, so bones rotate about FLAME's expressed
    joints (see drivers_math.py). Returns the number of drivers made; joints whose offsets
    are all zero get none."""
    key = mesh_obj.data.shape_keys
    exp_paths = [f'key_blocks["{_path_escape(n)}"].value' for n in rig.expression_key_names()]
    count = 0
    for j, name in enumerate(rig.joint_names):
        basis = rig.joint_expression_basis[:, j, :]  # (K,3)
        chunks = [
            dm.linear_combination_chunks(basis[:, c], tolerance=PIVOT_TOLERANCE) for c in range(3)
        ]
        if not any(chunks):
            continue
        pb = arm_obj.pose.bones[pivot_bone_name(name)]
        pivot = _path_escape(pb.name)
        bone = _path_escape(name)
        n_parts = max(len(ch) for ch in chunks)
        pb[OFFSET_PROP] = [0.0, 0.0, 0.0]
        if n_parts > 1:
            pb[OFFSET_PARTS_PROP] = [0.0] * (3 * n_parts)
        for c in range(3):
            if not chunks[c]:
                continue
            if n_parts == 1:
                expr, ks = chunks[c][0]
                drv = _scripted(pb.driver_add(f'["{OFFSET_PROP}"]', c), expr)
                for i, k in enumerate(ks):
                    _add_var(drv, f"v{i}", "KEY", key, exp_paths[k])
                count += 1
                continue
            for part, (expr, ks) in enumerate(chunks[c]):
                drv = _scripted(pb.driver_add(f'["{OFFSET_PARTS_PROP}"]', c * n_parts + part), expr)
                for i, k in enumerate(ks):
                    _add_var(drv, f"v{i}", "KEY", key, exp_paths[k])
                count += 1
            fc = pb.driver_add(f'["{OFFSET_PROP}"]', c)
            _plain_driver_curve(fc)
            fc.driver.type = "SUM"
            for part in range(len(chunks[c])):
                path = f'pose.bones["{pivot}"]["{OFFSET_PARTS_PROP}"][{c * n_parts + part}]'
                _add_var(fc.driver, f"p{part}", "OBJECT", arm_obj, path)
            count += 1
        for r in range(3):
            drv = _scripted(pb.driver_add("location", r), dm.pivot_offset_expr(r))
            for i, v in enumerate(dm.QUAT_VARS):
                _add_var(
                    drv, v, "OBJECT", arm_obj, f'pose.bones["{bone}"].rotation_quaternion[{i}]'
                )
            for c, v in enumerate(dm.OFFSET_VARS):
                _add_var(drv, v, "OBJECT", arm_obj, f'pose.bones["{pivot}"]["{OFFSET_PROP}"][{c}]')
            count += 1
    return count


def fitted_pose_json(rig: ResultRig) -> dict:
    """The pose fitted to the photos, in the pose-library format (poses.Pose), plus each
    photo's own expression under "views" (view name -> key -> value)."""
    bones = {
        name: quaternion_to_axis_angle(q).tolist() for name, q in rig.fitted_quaternions().items()
    }
    names = rig.expression_key_names()
    expression = {n: float(v) for n, v in zip(names, rig.expression, strict=True)}
    views = {}
    if rig.view_expressions is not None:
        for i, e in enumerate(rig.view_expressions):
            label = rig.view_names[i] if i < len(rig.view_names) else f"view{i}"
            views[label] = {n: float(v) for n, v in zip(names, e, strict=True)}
    return {"expression": expression, "bones": bones, "views": views}


def apply_fitted(mesh_obj: bpy.types.Object, arm_obj: bpy.types.Object, rig: ResultRig) -> None:
    """Shape-key values = fitted expression; neck/jaw/eye bones = fitted rotations."""
    key = mesh_obj.data.shape_keys
    for name, v in zip(rig.expression_key_names(), rig.expression, strict=True):
        key.key_blocks[name].value = float(v)
    for name, q in rig.fitted_quaternions().items():
        arm_obj.pose.bones[name].rotation_quaternion = [float(x) for x in q]


def build_rig(
    result,
    name: str = "",
    *,
    context=None,
    collection=None,
    pack_texture: bool = False,
    apply_fitted_pose: bool = True,
) -> BuildReport:
    """Builds the head from a result folder (path or rigdata.ResultRig).

    Returns the armature and mesh objects (the mesh is parented to the armature), timings
    and warnings. Raises rigdata.ResultError for a bad folder.
    """
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    rig = result if isinstance(result, ResultRig) else load_result(result)
    check_blender_names(rig)  # bones, groups and keys are looked up by these names
    timings["read"] = time.perf_counter() - t0
    context = context or bpy.context
    collection = collection or context.collection or context.scene.collection
    name = name or (rig.folder.name if rig.folder.name else "mfnet_head")
    warnings: list[str] = list(rig.warnings)
    if rig.model_kind == "test-head":
        warnings.append("built from the generated test head, not FLAME")
    over = [(k, float(v)) for k, v in enumerate(rig.expression) if abs(v) > SHAPE_KEY_LIMIT]
    if over:
        key_names = rig.expression_key_names()
        listed = ", ".join(f"{key_names[k]} = {v:.1f}" for k, v in over[:4])
        more = " ..." if len(over) > 4 else ""
        warnings.append(
            f"{listed}{more} clamped to the +-{SHAPE_KEY_LIMIT:g} shape-key range (implausible fit)"
        )

    def lap(label: str, since: list[float] = [t0]) -> None:  # noqa: B006 (local stopwatch)
        now = time.perf_counter()
        timings[label] = timings.get(label, 0.0) + now - since[0]
        since[0] = now

    lap("read")
    me = build_mesh(rig, name)
    mesh_obj = bpy.data.objects.new(name, me)
    collection.objects.link(mesh_obj)
    assign_materials(rig, me, name, pack_texture)
    if rig.texture is None:
        warnings.append("no usable texture.png: the material has a plain skin colour")
    lap("mesh")
    add_shape_keys(mesh_obj, rig)
    lap("shape_keys")
    arm_obj = build_armature(rig, f"{name}_rig", collection, context)
    add_vertex_groups(mesh_obj, rig)
    mesh_obj.parent = arm_obj
    mod = mesh_obj.modifiers.new("Armature", "ARMATURE")
    mod.object = arm_obj
    mod.use_vertex_groups = True
    mod.use_bone_envelopes = False
    mod.use_deform_preserve_volume = False  # FLAME is linear blend skinning
    lap("armature")
    n_corr = add_corrective_drivers(mesh_obj, arm_obj, rig)
    n_piv = add_pivot_drivers(mesh_obj, arm_obj, rig)
    driven = add_bone_driven_keys(mesh_obj, arm_obj, rig)
    lap("drivers")

    fitted = fitted_pose_json(rig)
    arm_obj[RIG_TAG] = {
        "format_version": 1,
        "result_dir": str(rig.folder),
        "model_kind": rig.model_kind,
        "model_name": rig.model_name,
        "mesh": mesh_obj.name,
        "joints": list(rig.joint_names),
        "expression_keys": rig.n_expressions,
        "corrective_drivers": n_corr,
        "pivot_drivers": n_piv,
        "bone_driven_keys": driven,
        "licence": rig.licence,
    }
    arm_obj[FITTED_TAG] = json.dumps(fitted)
    mesh_obj[HEAD_TAG] = 1
    if apply_fitted_pose:
        apply_fitted(mesh_obj, arm_obj, rig)
    for ob in context.view_layer.objects:
        ob.select_set(False)
    mesh_obj.select_set(True)
    arm_obj.select_set(True)
    context.view_layer.objects.active = arm_obj
    context.view_layer.update()
    lap("finish")
    return BuildReport(arm_obj, mesh_obj, time.perf_counter() - t0, timings, warnings)


# --------------------------------------------------------------------------- finding rigs


def rig_of(obj) -> tuple[bpy.types.Object, bpy.types.Object] | None:
    """(armature, mesh) of the MFNet head that obj (armature, mesh or child) belongs to."""
    seen = 0
    while obj is not None and seen < 8:
        if obj.type == "ARMATURE" and RIG_TAG in obj.keys():
            mesh = bpy.data.objects.get(str(obj[RIG_TAG].get("mesh", "")))
            if mesh is None or mesh.parent is not obj:
                mesh = next(
                    (c for c in obj.children if c.type == "MESH" and HEAD_TAG in c.keys()), None
                )
            return (obj, mesh) if mesh is not None else None
        obj = obj.parent
        seen += 1
    return None


def evaluated_vertices(mesh_obj: bpy.types.Object, depsgraph=None) -> np.ndarray:
    """(V,3) vertex positions after shape keys, drivers and the Armature modifier, in the
    mesh's local (= Blender rig) axes."""
    depsgraph = depsgraph or bpy.context.evaluated_depsgraph_get()
    ob_eval = mesh_obj.evaluated_get(depsgraph)
    me = ob_eval.to_mesh()
    try:
        co = np.empty(len(me.vertices) * 3, dtype=np.float32)
        me.vertices.foreach_get("co", co)
    finally:
        ob_eval.to_mesh_clear()
    return co.reshape(-1, 3).astype(np.float64)
