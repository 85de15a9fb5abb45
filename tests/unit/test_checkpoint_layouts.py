"""External encoder checkpoints (geosem.models.checkpoint_layouts): fabricated files laid out exactly
like the MoCo v2 and DINO ResNet-50 releases, timm's own files, and files that fit no encoder."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import timm
import torch
from geosem.models import create_encoder
from geosem.models.checkpoint_layouts import CheckpointLayoutError, encoder_state, list_layouts
from geosem.tasks import get_task

from tests.helpers import SEG_TASK, run_snapshot


def _backbone(name: str, seed: int) -> dict[str, torch.Tensor]:
    """A timm (= torchvision) ResNet state dict with known random values, its classifier ``fc`` left out,
    BatchNorm statistics set away from their defaults so that loading them is visible."""
    torch.manual_seed(seed)
    state = timm.create_model(name).state_dict()
    for key, value in state.items():
        if key.endswith(("running_mean", "running_var")):
            value.copy_(torch.rand_like(value) + 0.5)
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def _optimizer_state() -> dict:
    """An SGD state dict with momentum buffers, like the one the releases ship."""
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.03, momentum=0.9)
    weight.sum().backward()
    optimizer.step()
    return optimizer.state_dict()


def _moco_release(path: Path, backbone: dict[str, torch.Tensor], with_key_encoder: bool = False) -> Path:
    """facebookresearch/moco's layout: DDP-prefixed query encoder, MoCo v2's MLP head as fc.0 / fc.2."""
    state = {f"module.encoder_q.{k}": v for k, v in backbone.items()}
    channels = backbone["layer4.0.conv1.weight"].shape[1] * (4 if "layer4.0.conv3.weight" in backbone else 1)
    head = {"fc.0.weight": torch.randn(channels, channels), "fc.0.bias": torch.randn(channels)}
    head |= {"fc.2.weight": torch.randn(128, channels), "fc.2.bias": torch.randn(128)}
    state |= {f"module.encoder_q.{k}": v for k, v in head.items()}
    if with_key_encoder:  # main_moco.py's own checkpoints keep the momentum encoder and the queue
        state |= {f"module.encoder_k.{k}": v + 1 for k, v in backbone.items()}
        state |= {
            "module.queue": torch.randn(128, 65536),
            "module.queue_ptr": torch.zeros(1, dtype=torch.long),
        }
    torch.save({"epoch": 800, "arch": "resnet50", "state_dict": state, "optimizer": _optimizer_state()}, path)
    return path


def _dino_head(prefix: str) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}head.mlp.0.weight": torch.randn(64, 2048),
        f"{prefix}head.mlp.0.bias": torch.randn(64),
        f"{prefix}head.last_layer.weight_g": torch.ones(256, 1),
        f"{prefix}head.last_layer.weight_v": torch.randn(256, 64),
    }


def _assert_loaded(encoder: torch.nn.Module, backbone: dict[str, torch.Tensor]) -> None:
    state = encoder.body.state_dict()
    assert set(state) <= set(backbone)  # the features_only body has no head
    assert all(torch.equal(state[k], backbone[k]) for k in state), "an encoder tensor differs"


def test_every_layout_is_registered() -> None:
    assert set(list_layouts()) == {"moco_v2", "dino", "data_parallel", "timm"}
    assert list_layouts()[-1] == "timm"  # the plain layout is the fallback, tried last


@pytest.mark.parametrize("with_key_encoder", [False, True])
def test_the_moco_v2_release_loads_its_query_encoder_and_drops_the_head(
    tmp_path: Path, with_key_encoder: bool
) -> None:
    backbone = _backbone("resnet50", 1)
    path = _moco_release(tmp_path / "moco_v2_800ep_pretrain.pth.tar", backbone, with_key_encoder)
    encoder = create_encoder("resnet50", pretrained=True, weights_file=path)
    _assert_loaded(encoder, backbone)
    expected = {k: v.shape for k, v in timm.create_model("resnet50").state_dict().items()}
    state, mapped = encoder_state(path, expected)
    assert mapped.layout == "moco_v2" and set(state) == set(backbone)
    assert {f"module.encoder_q.fc.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")} <= set(mapped.dropped)
    assert {"epoch", "arch", "optimizer"} <= set(mapped.dropped)
    assert any(k.startswith("module.encoder_k.") for k in mapped.dropped) == with_key_encoder


def test_the_dino_full_checkpoint_loads_the_teacher(tmp_path: Path) -> None:
    teacher, student = _backbone("resnet50", 2), _backbone("resnet50", 3)
    checkpoint = {
        "teacher": {f"module.backbone.{k}": v for k, v in teacher.items()} | _dino_head("module."),
        "student": {f"module.backbone.{k}": v for k, v in student.items()} | _dino_head("module."),
        "optimizer": _optimizer_state(),
        "epoch": 100,
        "args": argparse.Namespace(arch="resnet50", out_dim=60000),  # DINO keeps its arguments
        "dino_loss": {"center": torch.zeros(1, 256)},
    }
    path = tmp_path / "dino_resnet50_pretrain_full_checkpoint.pth"
    torch.save(checkpoint, path)
    encoder = create_encoder("resnet50", pretrained=True, weights_file=path)
    _assert_loaded(encoder, teacher)
    expected = {k: v.shape for k, v in timm.create_model("resnet50").state_dict().items()}
    _, mapped = encoder_state(path, expected)
    assert mapped.layout == "dino" and "student" in mapped.dropped
    assert "module.head.last_layer.weight_v" in mapped.dropped


@pytest.mark.parametrize("prefix", ["", "backbone.", "module.backbone.", "module."])
def test_dino_backbone_files_load_with_any_prefix(tmp_path: Path, prefix: str) -> None:
    """DINO's published dino_resnet50_pretrain.pth is a plain torchvision dict (prefix ""); a backbone cut
    from the training checkpoint keeps backbone. / module.backbone.; DDP saves add module."""
    backbone = _backbone("resnet50", 4)
    state = {f"{prefix}{k}": v for k, v in backbone.items()}
    if "backbone" in prefix:
        state |= _dino_head(prefix.removesuffix("backbone."))
    path = tmp_path / "dino_resnet50_pretrain.pth"
    torch.save(state, path)
    _assert_loaded(create_encoder("resnet50", pretrained=True, weights_file=path), backbone)


def test_timm_files_pass_through_safetensors_and_training_checkpoints(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(5)
    full = timm.create_model("resnet18").state_dict()
    backbone = {k: v for k, v in full.items() if not k.startswith("fc.")}
    save_file(full, str(tmp_path / "model.safetensors"))
    _assert_loaded(
        create_encoder("resnet18", pretrained=True, weights_file=tmp_path / "model.safetensors"), backbone
    )
    args = argparse.Namespace(model="resnet18")
    torch.save({"epoch": 3, "arch": "resnet18", "state_dict": full, "args": args}, tmp_path / "last.pth.tar")
    _assert_loaded(
        create_encoder("resnet18", pretrained=True, weights_file=tmp_path / "last.pth.tar"), backbone
    )
    # Older torchvision files have no BatchNorm counters: torch fills them in.
    plain = {k: v for k, v in full.items() if not k.endswith("num_batches_tracked")}
    torch.save(plain, tmp_path / "resnet18-old.pth")
    old = create_encoder("resnet18", pretrained=True, weights_file=tmp_path / "resnet18-old.pth")
    _assert_loaded(old, backbone)  # the counters of a fresh model are 0 too


def test_a_checkpoint_of_no_known_layout_is_named_with_its_file(tmp_path: Path) -> None:
    path = tmp_path / "geosem-model.pt"
    torch.save({"model": {"encoder.body.conv1.weight": torch.zeros(1)}, "run_digest": "x"}, path)
    with pytest.raises(CheckpointLayoutError, match=rf"{re.escape(str(path))}: no known checkpoint layout"):
        create_encoder("resnet18", pretrained=True, weights_file=path)


def test_unknown_and_missing_keys_are_named_with_the_file(tmp_path: Path) -> None:
    backbone = _backbone("resnet18", 6)
    state = {**backbone, "extra.proj.weight": torch.zeros(3)}
    del state["layer3.0.conv1.weight"]
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointLayoutError) as error:
        create_encoder("resnet18", pretrained=True, weights_file=path)
    message = str(error.value)
    assert str(path) in message and "layout 'timm'" in message
    assert "unknown keys: extra.proj.weight" in message and "missing keys: layer3.0.conv1.weight" in message


def test_a_release_for_another_architecture_is_refused_naming_it(tmp_path: Path) -> None:
    path = _moco_release(tmp_path / "moco.pth.tar", _backbone("resnet18", 7))  # "arch" says resnet50
    with pytest.raises(
        CheckpointLayoutError, match=r"layout 'moco_v2', saved for arch 'resnet50'.*misshapen"
    ):
        create_encoder("resnet50", pretrained=True, weights_file=path)


def test_an_external_init_of_the_moco_release_starts_a_finetune(tiny_shards: Path, tmp_path: Path) -> None:
    """pretrain.external: the planner hands the file to the fine-tune as init.weights_file."""
    backbone = _backbone("resnet18", 8)
    path = _moco_release(tmp_path / "moco_v2_resnet18.pth.tar", backbone)
    for mode in ("all", "deeplabv3"):
        run = run_snapshot(
            tiny_shards,
            "finetune",
            f"seg-moco-{mode}",
            task={**SEG_TASK, "mode": mode},
            init={"name": "moco_v2_imagenet", "weights_file": str(path)},
        )
        model = get_task("segmentation")(run).build_model()
        encoder = model.encoder if mode == "all" else model.net.encoder.model
        weight = encoder.body.layer2[0].conv1.weight if mode == "all" else encoder.layer2[0].conv1.weight
        assert torch.equal(weight, backbone["layer2.0.conv1.weight"])
