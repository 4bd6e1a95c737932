"""MFNet network: torchvision-compatible ResNet, partial weight import, pose round trip, crops."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from mfnet_core.camera import Intrinsics
from mfnet_core.errors import MfnetError
from mfnet_core.network.checkpoints import load_backbone_weights, load_checkpoint
from mfnet_core.network.crops import CropBox, crop_box, crop_image, order_views_by_yaw
from mfnet_core.network.mfnet import (
    MFNet,
    MFNetConfig,
    ResNet,
    count_parameters,
    decode_pose,
    encode_pose,
)

TINY = MFNetConfig(backbone="resnet10", width=8, input_size=32, fuse_hidden=32, view_hidden=32)


def test_resnet_matches_torchvision_layout():
    # torchvision.models.resnet50(): 320 state-dict entries, 25,557,032 parameters;
    # resnet18: 122 entries, 11,689,512 parameters.
    r50 = ResNet("resnet50", num_classes=1000)
    sd = r50.state_dict()
    assert len(sd) == 320
    assert count_parameters(r50) == 25_557_032
    for key, shape in {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_mean": (64,),
        "layer1.0.conv1.weight": (64, 64, 1, 1),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.0.downsample.1.num_batches_tracked": (),
        "layer4.2.bn3.weight": (2048,),
        "fc.weight": (1000, 2048),
    }.items():
        assert tuple(sd[key].shape) == shape, key
    r18 = ResNet("resnet18", num_classes=1000)
    assert len(r18.state_dict()) == 122
    assert count_parameters(r18) == 11_689_512
    assert r50.out_dim == 2048 and ResNet("resnet10", width=16).out_dim == 128


def test_forward_shapes():
    net = MFNet(TINY)
    out = net(torch.rand(2, 3, 3, 32, 32))
    assert out.shape.shape == (2, 100) and out.expression.shape == (2, 50)
    assert out.jaw_pose.shape == (2, 3) and out.pose.shape == (2, 3, 6)
    assert out.light.shape == (2, 3, 9, 3) and out.albedo.shape == (2, 3, 3)
    with pytest.raises(ValueError):
        net(torch.rand(1, 2, 3, 32, 32))


def test_import_torchvision_state_dict(tmp_path: Path):
    src = ResNet("resnet10", width=8, num_classes=10)
    torch.nn.init.constant_(src.layer2[0].conv1.weight, 0.25)
    path = tmp_path / "resnet.pth"
    torch.save(src.state_dict(), path)
    net = MFNet(TINY)
    rep = load_backbone_weights(net, path)
    assert rep.kind == "torchvision"
    assert "backbone.layer2.0.conv1.weight" in rep.loaded
    assert {"backbone.fc.weight", "backbone.fc.bias"} <= set(rep.unused)
    assert all(k.startswith(("fuse_head", "view_head", "view_slot_bias")) for k in rep.missing)
    assert torch.all(net.backbone.layer2[0].conv1.weight == 0.25)


def test_import_deca_e_flame(tmp_path: Path):
    enc = ResNet("resnet10", width=8)
    torch.nn.init.constant_(enc.conv1.weight, -0.5)
    e_flame = OrderedDict((f"encoder.{k}", v) for k, v in enc.state_dict().items())
    d = enc.out_dim
    e_flame["layers.0.weight"] = torch.full((32, d), 0.125)
    e_flame["layers.0.bias"] = torch.zeros(32)
    e_flame["layers.2.weight"] = torch.zeros(236, 32)  # DECA's output layer: not imported
    e_flame["layers.2.bias"] = torch.zeros(236)
    path = tmp_path / "deca_model.tar"
    torch.save({"E_flame": e_flame, "E_detail": OrderedDict(x=torch.zeros(1))}, path)
    net = MFNet(TINY)
    rep = load_backbone_weights(net, path)
    assert rep.kind == "deca"
    assert torch.all(net.backbone.conv1.weight == -0.5)
    assert torch.all(net.view_head[0].weight == 0.125)
    assert "E_flame.layers.2.weight" in rep.unused and "E_detail.*" in rep.unused


def test_weight_import_errors(tmp_path: Path):
    net = MFNet(TINY)
    with pytest.raises(MfnetError, match="not found"):
        load_backbone_weights(net, tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(MfnetError, match="weights_only"):
        load_backbone_weights(net, tmp_path / "junk.pth")
    torch.save({"conv1.weight": torch.zeros(5, 5)}, tmp_path / "other.pth")
    with pytest.raises(MfnetError, match="none of its"):
        load_backbone_weights(net, tmp_path / "other.pth")


def test_pose_decode_encode_round_trip():
    g = torch.Generator().manual_seed(0)
    rot = torch.randn(4, 3, generator=g) * 0.3
    trans = torch.tensor(
        [[0.01, -0.03, -0.6], [0.0, 0.0, -0.5], [-0.02, 0.01, -0.7], [0.0, -0.05, -0.4]]
    )
    cam = torch.tensor([[300.0, 300.0, 50.0, 60.0]]).expand(4, 4)
    pivot = torch.tensor([[0.0, -0.02, -0.01]]).expand(4, 3)
    enc = encode_pose(rot, trans, cam, pivot, 96)
    r2, t2 = decode_pose(enc, cam, pivot, 96)
    torch.testing.assert_close(r2, rot)
    torch.testing.assert_close(t2, trans, atol=1e-6, rtol=1e-5)
    # With an anchor (the face centre) the offset/depth refer to it, the result is the same pose.
    anchor = torch.tensor([[0.0, 0.05, 0.08]]).expand(4, 3)
    enc_a = encode_pose(rot, trans, cam, pivot, 96, anchor)
    r3, t3 = decode_pose(enc_a, cam, pivot, 96, anchor)
    torch.testing.assert_close(t3, trans, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(enc_a[:, 3:], enc[:, 3:])


def test_crop_box_and_intrinsics_are_consistent():
    lm = np.random.default_rng(0).uniform([200, 150], [320, 300], size=(68, 2))
    box = crop_box(lm, 1.25)
    assert isinstance(box, CropBox)
    assert box.side == pytest.approx(1.25 * np.ptp(lm, axis=0).max())
    intr = Intrinsics(800.0, 800.0, 320.0, 240.0, 640, 480)
    k = box.intrinsics(intr, 64)
    # A 3D point projects to the same crop pixel through the crop's K as through the
    # photo's K followed by the crop transform.
    p = np.array([0.03, -0.02, -0.6])
    u = intr.fx * p[0] / -p[2] + intr.cx
    v = intr.cy - intr.fy * p[1] / -p[2]
    uc = k[0] * p[0] / -p[2] + k[2]
    vc = k[3] - k[1] * p[1] / -p[2]
    np.testing.assert_allclose(box.points(np.array([[u, v]]), 64)[0], [uc, vc], rtol=1e-5)
    img = np.zeros((480, 640, 3), np.uint8)
    img[200:210, 250:260] = 255
    c = crop_image(img, box, 64)
    assert c.shape == (64, 64, 3) and c.max() > 0


def test_order_views_by_yaw():
    lm = np.zeros((68, 2))
    lm[0, 0], lm[16, 0] = 0.0, 100.0
    views = []
    for nose in (70.0, 50.0, 30.0):
        v = lm.copy()
        v[27:31, 0] = nose
        views.append(v)
    assert order_views_by_yaw(views) == [2, 1, 0]


def test_checkpoint_loads_with_weights_only(tmp_path: Path):
    from mfnet_core.network.mfnet import CHECKPOINT_FORMAT

    net = MFNet(TINY)
    path = tmp_path / "ck.pt"
    torch.save(
        {"format": CHECKPOINT_FORMAT, "model_config": TINY.to_dict(), "model": net.state_dict()},
        path,
    )
    net2, meta = load_checkpoint(path)
    assert meta["format"] == CHECKPOINT_FORMAT
    for k, v in net.state_dict().items():
        assert torch.equal(v, net2.state_dict()[k])
    torch.save({"model": net.state_dict()}, tmp_path / "bad.pt")
    with pytest.raises(MfnetError, match="not an MFNet checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
