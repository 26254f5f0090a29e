"""A ViT published to the (loopback) Hub at one size and trained from `hf-hub:` at another: the
path a user with internet takes, where timm resamples the position embeddings at creation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fakes.hub_server import HubServer
from tests.test_hub import hub, python_with_hub, stml  # noqa: F401  (hub is a fixture)

pytestmark = pytest.mark.slow

PUSH_VIT_AT_64 = (
    "import timm, torch; torch.manual_seed(4); "
    "m = timm.create_model('test_vit', pretrained=False, img_size=64); "
    "timm.models.push_to_hf_hub(m, 'user/test-vit-64', model_args={'img_size': 64}); "
    "torch.save(m.state_dict()['pos_embed'], 'POS')"
)


def test_vit_published_at_64_trains_at_32(hub: HubServer, tmp_path: Path) -> None:  # noqa: F811
    import torch
    from safetensors import safe_open
    from timm.layers import resample_abs_pos_embed

    home = tmp_path / "home"
    pos_file = tmp_path / "pos_embed.pt"
    pushed = python_with_hub(hub, home, PUSH_VIT_AT_64.replace("POS", str(pos_file)))
    assert pushed.returncode == 0, pushed.stderr
    published = torch.load(pos_file)
    assert published.shape == (1, 1 + 4 * 4, 64)  # class token + a 4x4 grid of 16 px patches

    out = tmp_path / "vit32"
    args = ["train", "digits", "--max-images", "80", "--out", str(out), "--epochs", "1",
            "--backbone", "hf-hub:user/test-vit-64", "--pretrained", "--lr", "1e-12",
            "--head-lr", "1e-12", "--image-size", "32", "--resize", "32", "--batch-size", "40",
            "--neighbours", "4", "--workers", "0"]  # fmt: skip
    trained = stml(hub, home, *args)
    assert trained.code == 0, trained.err
    with safe_open(str(out / "model.safetensors"), "pt") as fh:
        got = fh.get_tensor("backbone.net.pos_embed")
    # timm resampled the published 4x4 grid to 2x2 (bicubic, class token kept), as it loads
    expected = resample_abs_pos_embed(published, (2, 2), num_prefix_tokens=1)
    assert got.shape == (1, 1 + 2 * 2, 64)
    assert (got - expected).abs().max() < 1e-5
    arch = json.loads((out / "config.json").read_text())["architecture"]
    assert arch["image_size"] == 32 and arch["pooling"] == "cls"
    assert arch["timm_architecture"] == "test_vit"
    assert arch["timm_model_args"]["img_size"] == [64, 64]  # as published; the record wins

    # eval and export rebuild it at 32 px with no Hub
    hub.stop()
    offline = dict(HF_HUB_OFFLINE="1")
    evaluated = stml(hub, tmp_path / "empty", "eval", str(out), "digits", "--max-images", "60",
                     "--json", "--workers", "0", **offline)  # fmt: skip
    assert evaluated.code == 0, evaluated.err
    exported = stml(hub, tmp_path / "empty", "export", str(out), "--format", "onnx",
                    "--precision", "fp32", "--parity-data", "digits", "--parity-size", "100",
                    **offline)  # fmt: skip
    assert exported.code == 0, exported.err + exported.out
