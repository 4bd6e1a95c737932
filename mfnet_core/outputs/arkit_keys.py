"""ARKit-named expression keys for heads whose own keys are PCA components (FLAME, the test
head): the ICT model's 53 blendshapes carried onto the fitted rest mesh
(`head.key_transfer`), stored in rig.npz beside the model's own keys."""

from __future__ import annotations

import numpy as np

from mfnet_core.head.interface import HeadModel

__all__ = ["arkit_key_arrays", "needs_arkit_keys"]


def needs_arkit_keys(head: HeadModel) -> bool:
    """True for models without named expression keys (their keys are PCA components)."""
    return head.expression_space.names is None


def arkit_key_arrays(head: HeadModel, rig_arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """rig.npz's `arkit_names` (A,) and `arkit_basis` (A,V,3): the ICT model's ARKit keys
    transferred onto the rig's rest mesh (eyeballs held still, lids kept outside them)."""
    # imported here: key_transfer pulls in scipy.optimize (0.2-0.3 s of a cold start), which
    # the ICT model, the default, never needs
    from mfnet_core.head.key_transfer import (
        eyeballs_from_rig,
        transfer_expression_keys,
        vertex_mask_without_eyes,
    )

    rest = np.asarray(rig_arrays["vertices"], dtype=np.float64)
    faces = head.faces.cpu().numpy()
    emb = head.landmark_embedding
    landmarks = (rest[faces[emb.full_faces]] * emb.full_bary[..., None]).sum(1)
    skin = rig_arrays["skin_weights"]
    names = [str(n) for n in rig_arrays["joint_names"]]
    result = transfer_expression_keys(
        rest,
        faces,
        landmarks,
        target_landmark_faces=emb.full_faces,
        target_landmark_bary=emb.full_bary,
        target_mask=vertex_mask_without_eyes(skin, names),
        eyeballs=eyeballs_from_rig(rest, skin, names, rig_arrays["joints"]),
    )
    return {
        "arkit_names": np.array(list(result.names)),
        "arkit_basis": np.asarray(result.deltas, dtype=np.float32),
    }
