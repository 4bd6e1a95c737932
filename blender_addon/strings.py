"""User-facing strings and operator ids, in one place."""

ADDON_NAME = "MFNet Face"
CATEGORY = "MFNet"  # View3D sidebar tab

# operator ids (bl_idname)
OP_RECONSTRUCT = "mfnet.reconstruct"
OP_CANCEL = "mfnet.cancel"
OP_CHECK_BACKEND = "mfnet.check_backend"
OP_DETECT_BACKEND = "mfnet.detect_backend"
OP_IMPORT_RESULT = "mfnet.import_result"
OP_CLEAR_PHOTOS = "mfnet.clear_photos"
OP_PICK_PHOTO = "mfnet.pick_photo"
OP_EXPR_RESET = "mfnet.expressions_reset"
OP_EXPR_FITTED = "mfnet.expressions_fitted"
OP_EXPR_VIEW = "mfnet.expressions_view"
OP_EXPR_KEYFRAME = "mfnet.expressions_keyframe"
OP_POSE_SAVE = "mfnet.pose_save"
OP_POSE_APPLY = "mfnet.pose_apply"
OP_POSE_DELETE = "mfnet.pose_delete"
OP_IMPORT_SEQUENCE = "mfnet.import_sequence"
OP_EXPORT_GAME = "mfnet.export_game"

# labels
LABEL_RECONSTRUCT = "Reconstruct Face"
LABEL_CANCEL = "Cancel"
LABEL_CHECK = "Check"
LABEL_DETECT = "Auto-detect"
LABEL_IMPORT_RESULT = "Import Result Folder"
LABEL_PICK_PHOTO = "Open Photo"
LABEL_CLEAR_PHOTO = "Clear Photo"
LABEL_PANEL_MAIN = "Reconstruct Face"
LABEL_PANEL_PHOTOS = "Photos"
LABEL_PANEL_OPTIONS = "Options"
LABEL_PANEL_EXPRESSIONS = "Expressions"
LABEL_PANEL_ANIMATION = "Poses & Animation"
LABEL_RESET = "Reset"
LABEL_FITTED = "Fitted"
LABEL_VIEW = "Photo"
LABEL_KEYFRAME = "Keyframe All"
LABEL_POSE_SAVE = "Save Pose"
LABEL_POSE_APPLY = "Load Pose"
LABEL_POSE_DELETE = "Delete Pose"
LABEL_IMPORT_SEQUENCE = "Import FLAME Sequence"
LABEL_EXPORT_GAME = "Export for Games"
VIEW_LABELS = {"left": "Left", "front": "Front", "right": "Right"}

# tooltips
TIP_RECONSTRUCT = (
    "Fit a FLAME head to the photos with the mfnet backend (runs in a separate process; "
    "Esc cancels) and build a rigged, textured head from the result"
)
TIP_CANCEL = "Stop the running reconstruction; nothing is left behind"
TIP_CHECK = "Run `mfnet doctor` with the backend Python and show what it finds"
TIP_DETECT = (
    "Find a Python where mfnet_core is installed (MFNET_PYTHON, then python3/python on PATH)"
)
TIP_PICK_PHOTO = "Choose the photo for this view (jpg, png, ...)"
TIP_CLEAR_PHOTO = "Empty this photo slot (any of the three may be empty)"
TIP_IMPORT_RESULT = "Build the rig from an existing mfnet result folder (rig.npz, texture.png)"
TIP_RESET = "Set every expression to 0 and every bone to its rest rotation"
TIP_FITTED = "Go back to the expression and jaw/neck/eye pose fitted to the photos"
TIP_VIEW = "Show the expression fitted to one photo (each photo has its own)"
TIP_KEYFRAME = "Insert keyframes for all expression keys and bone rotations at the current frame"
TIP_POSE_SAVE = (
    "Save the current expression and bone rotations as a named pose in the pose library (JSON)"
)
TIP_POSE_APPLY = "Apply a named pose from the pose library"
TIP_POSE_DELETE = "Remove a named pose from the pose library"
TIP_EXPORT_GAME = (
    "Write the head as .glb or .fbx for game engines: skeleton without helper bones, "
    "ARKit-named blend shapes, the texture embedded, the animation baked so it plays "
    "without Blender's drivers (your rig is not changed)"
)
TIP_IMPORT_SEQUENCE = "Keyframe the rig from per-frame FLAME parameters (expression, jaw, neck, eyes) in a .npz or .json file"

# messages
MSG_NO_PHOTOS = "Pick at least one photo (left, front or right)."
MSG_RUNNING = "A reconstruction is already running."
MSG_CANCELLED = "Reconstruction cancelled; nothing was written."
MSG_NO_RIG = "Select an MFNet head (its mesh or armature)."
MSG_BUILD_FAILED = "Building the rig failed: {error}"
MSG_DONE = "Built {name} in {seconds:.1f} s (result folder: {folder})"
MSG_BACKEND_FAILED = "Backend failed: {error}"
MSG_PHOTO_MISSING = "{view} photo: file not found: {path}"
MSG_EXPORTED = "Wrote {path} ({what}) in {seconds:.1f} s"


# --------------------------------------------------------------------------- file names

# Characters that cannot appear in a file name on some platform we run on (or that change
# a path's meaning: separators, a drive colon), plus every control character.
_BAD_FILE_CHARS = frozenset('/\\:*?"<>|') | frozenset(chr(c) for c in range(32)) | {"\x7f"}
_WINDOWS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)]
)
FILE_NAME_BYTES = 200  # well below the 255 bytes most file systems allow


def safe_file_name(name: object, suffix: str = "", default: str = "file") -> str:
    """One plain file name, safe to join to a folder, made from `name` (anything read from a
    .blend or a result folder: image and object names, stored paths, user text) and an
    optional `suffix` (such as ".png"; dropped unless it is "." and 1-10 letters or digits).

    The result is never empty, ".", "..", hidden (leading dot), or a Windows device name;
    it holds no path separator, drive colon or control character; it is at most
    FILE_NAME_BYTES bytes of UTF-8. So `folder / safe_file_name(x)` always names an entry
    directly inside `folder`.
    """
    text = str(name) if name is not None else ""
    text = "".join("_" if ch in _BAD_FILE_CHARS else ch for ch in text)
    text = "".join(ch for ch in text if not 0xD800 <= ord(ch) <= 0xDFFF)  # lone surrogates
    text = text.strip(" .")
    ext = suffix if plain_suffix(suffix) else ""
    if not text:
        text = default
    if text.split(".")[0].upper() in _WINDOWS_DEVICES:
        text = "_" + text
    room = FILE_NAME_BYTES - len(ext.encode("utf-8"))
    data = text.encode("utf-8")
    if len(data) > room:
        text = data[:room].decode("utf-8", errors="ignore").rstrip(" .") or default
    return text + ext


def plain_suffix(suffix: str) -> bool:
    """True for a file suffix such as ".png": a dot and 1-10 ASCII letters or digits."""
    return (
        isinstance(suffix, str)
        and 2 <= len(suffix) <= 11
        and suffix[0] == "."
        and suffix[1:].isascii()
        and suffix[1:].isalnum()
    )
