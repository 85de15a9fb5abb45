"""Encoders beyond resnet18 and the cross-architecture fine-tune: resnet50, a ViT with a DPT decoder
behind the DenseModel interface, and the init's encoder copied exactly into smp's DeepLabV3 (paper A,
Table 4). Random inits only: no weights are downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from geosem.models import (
    DeepLabV3Model,
    DenseModel,
    DPTDecoder,
    MultiScaleDecoder,
    ViTEncoder,
    build_deeplabv3,
    build_dense_model,
    create_encoder,
)
from geosem.models.pose import PoseNet
from geosem.shards.reader import ShardDataset, ShardSet
from geosem.tasks import get_task
from geosem.tasks.segmentation import FINETUNE_MODES
from torch import nn

from tests.helpers import PRETRAIN_TASKS, SEG_TASK, pretrain_task, pretrained_init, run_snapshot

VIT = "vit_tiny_patch16_224"
WIDTHS = (8, 16, 32, 64, 128)


def _pretrain_run(shards: Path, init: str, encoder: str) -> dict[str, Any]:
    model = {"encoder": encoder, "decoder_channels": list(WIDTHS)}
    return run_snapshot(
        shards, "pretrain", f"{init}-{encoder}-test", task=pretrain_task(init), seed=0, model=model
    )


def _finetune_run(
    shards: Path, encoder: str, init: dict[str, Any], mode: str = "deeplabv3"
) -> dict[str, Any]:
    return run_snapshot(
        shards,
        "finetune",
        f"seg-{init['name']}-{mode}-{encoder}",
        task={**SEG_TASK, "mode": mode, "hflip": False},
        init=init,
        seed=0,
        model={"encoder": encoder, "decoder_channels": list(WIDTHS)},
    )


def _batch(shards: Path, fields: tuple[str, ...], split: str, count: int = 2) -> dict[str, torch.Tensor]:
    shard_set = ShardSet(shards)
    dataset = ShardDataset(shard_set, shard_set.ids(split)[:count], fields)
    items = [dataset[i] for i in range(count)]
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


# --- dense models: resnet18, resnet50, ViT + DPT --------------------------------------------------


@pytest.mark.parametrize("encoder", ["resnet18", "resnet50", VIT])
def test_dense_model_predicts_four_scales_on_non_square_input(encoder: str) -> None:
    torch.manual_seed(0)
    model = build_dense_model(encoder, 1, decoder_channels=WIDTHS)
    expected_decoder = DPTDecoder if encoder == VIT else MultiScaleDecoder
    assert isinstance(model.decoder, expected_decoder)
    out = model(torch.rand(2, 3, 64, 96))
    assert {scale: tuple(t.shape) for scale, t in out.items()} == {
        0: (2, 1, 64, 96),
        1: (2, 1, 32, 48),
        2: (2, 1, 16, 24),
        3: (2, 1, 8, 12),
    }
    decoded = model.decoder(model.encoder(torch.rand(1, 3, 64, 96)))
    assert [decoded[s].shape[1] for s in range(4)] == list(WIDTHS[:4])  # .channels indexed by scale


def test_vit_encoder_reads_four_evenly_spaced_blocks_with_the_class_token() -> None:
    torch.manual_seed(0)
    encoder = create_encoder(VIT)
    assert isinstance(encoder, ViTEncoder)
    assert (
        encoder.indices == [2, 5, 8, 11] and encoder.channels == [384] * 4 and encoder.reductions == [16] * 4
    )
    image = torch.rand(1, 3, 48, 80)  # 3 x 5 tokens: odd grids, not the 224x224 of pre-training
    features = encoder.eval()(image)
    # By hand: the token sequence after each block of timm's ViT, split into patch tokens and CLS.
    body = encoder.body
    with torch.no_grad():
        x = body.norm_pre(body._pos_embed(body.patch_embed((image - encoder.mean) / encoder.std)))
        taken = []
        for index, block in enumerate(body.blocks):
            x = block(x)
            if index in encoder.indices:
                taken.append(x)
    for level, tokens in zip(features, taken, strict=True):
        assert level.shape == (1, 384, 3, 5)
        patch = tokens[:, 1:].reshape(1, 3, 5, 192).permute(0, 3, 1, 2)
        assert torch.allclose(level[:, :192], patch, atol=1e-5)
        assert torch.allclose(level[:, 192:], tokens[:, 0, :, None, None].expand(-1, -1, 3, 5), atol=1e-5)
    with pytest.raises(ValueError, match="multiples of 16"):
        encoder(torch.rand(1, 3, 64, 90))


def test_vit_dense_model_odd_token_grid_keeps_every_scale_aligned() -> None:
    model = build_dense_model(VIT, 1, decoder_channels=WIDTHS)
    out = model(torch.rand(1, 3, 80, 112))  # 5 x 7 tokens: the stride-32 level rounds up
    assert [tuple(out[s].shape[-2:]) for s in range(4)] == [(80, 112), (40, 56), (20, 28), (10, 14)]


def test_reset_decoder_on_vit_gives_a_fresh_dpt_decoder_and_keeps_the_encoder() -> None:
    torch.manual_seed(0)
    model = build_dense_model(VIT, 1, decoder_channels=WIDTHS)
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    decoder_before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    model.reset_decoder()
    assert isinstance(model.decoder, DPTDecoder) and model.decoder.channels == WIDTHS
    after = model.decoder.state_dict()
    assert set(after) == set(decoder_before)
    for key, value in decoder_before.items():
        assert after[key].shape == value.shape
        if value.numel() > 1 and value.std() > 0:  # constant inits (zero biases) may repeat
            assert not torch.equal(after[key], value), key
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, encoder_before[key]), key
    assert model(torch.rand(1, 3, 64, 96))[0].shape == (1, 1, 64, 96)


def test_vit_replace_heads_and_freeze_encoder() -> None:
    torch.manual_seed(0)
    model = build_dense_model(VIT, 1, decoder_channels=WIDTHS)
    kept = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("heads.")}
    model.replace_heads(19, (0,), head_kernel=3)
    for key, value in kept.items():
        assert torch.equal(model.state_dict()[key], value), key
    model.freeze_encoder()
    model.train()
    model(torch.rand(2, 3, 64, 96))[0].mean().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.decoder.parameters())
    assert "encoder.body.norm.weight" not in model.state_dict()  # unused final norm pruned


def test_vit_pose_network_takes_the_training_resolution() -> None:
    pose = PoseNet(VIT)
    transform = pose(torch.rand(2, 3, 64, 96), torch.rand(2, 3, 64, 96))
    assert transform.shape == (2, 4, 4) and torch.isfinite(transform).all()


@pytest.mark.parametrize("init", PRETRAIN_TASKS)
def test_every_pretraining_task_trains_a_vit_and_transfers(
    tiny_shards: Path, tiny_tall_shards: Path, init: str
) -> None:
    # depth_cropped's 64x64 crops must move in both axes: larger images than the 64x96 set.
    tiny_shards = tiny_tall_shards if init == "depth_cropped" else tiny_shards
    run = _pretrain_run(tiny_shards, init, VIT)
    task = get_task(run["task"]["name"])(run)
    torch.manual_seed(0)
    model = task.build_model()
    shards = ShardSet(tiny_shards)
    dataset = ShardDataset(shards, shards.ids("train"), task.fields, transform=task.transform, seed=0)
    items = [dataset[(i, i)] for i in range(2)]
    batch = {k: torch.stack([item[k] for item in items]) for k in items[0]}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(2):
        optimiser.zero_grad()
        loss, _ = task.loss(model, batch)
        loss.backward()
        optimiser.step()
        assert torch.isfinite(loss)
    changed = [
        k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])
    ]
    # The encoder that transfers trained: the model's own, the depth network's, or MoCo's query encoder's.
    assert any(k.startswith(("encoder.", "depth.encoder.", "dense.encoder.")) for k in changed), changed[:5]
    dense = task.transfer_model(model)
    assert isinstance(dense, DenseModel) and isinstance(dense.decoder, DPTDecoder)
    dense.replace_heads(19, (0,), 3)
    assert dense(batch["image"])[0].shape == (2, 19, *batch["image"].shape[-2:])


# --- DeepLabV3 with the init's encoder ----------------------------------------------------------------


def _assert_encoder_copied(model: DeepLabV3Model, source: dict[str, torch.Tensor]) -> None:
    target = model.encoder_state()
    assert set(target) == set(source)
    for key, value in source.items():
        assert torch.equal(target[key], value), key


@pytest.mark.parametrize("encoder", ["resnet18", "resnet50"])
def test_deeplabv3_holds_exactly_the_init_encoder(encoder: str) -> None:
    torch.manual_seed(0)
    source = create_encoder(encoder)
    # BatchNorm statistics are part of what was learned: make them non-default so a skipped copy shows.
    source.train()(torch.rand(2, 3, 64, 96))
    model = build_deeplabv3(source, 19)
    _assert_encoder_copied(model, source.body.state_dict())
    assert model.net.encoder.output_stride == 16
    assert [conv[0].dilation for conv in model.net.decoder.aspp.convs[1:4]] == [(6, 6), (12, 12), (18, 18)]
    out = model(torch.rand(2, 3, 64, 96))
    assert list(out) == [0] and out[0].shape == (2, 19, 64, 96)


def test_deeplabv3_normalises_the_input_once() -> None:
    torch.manual_seed(0)
    model = build_deeplabv3(create_encoder("resnet18"), 5).eval()
    image = torch.rand(2, 3, 64, 96)
    normalised = (image - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
    assert torch.allclose(model(image)[0], model.net(normalised), atol=1e-6)
    assert "mean" not in model.state_dict()


def test_deeplabv3_refuses_unmapped_and_mismatched_encoder_tensors() -> None:
    extra = create_encoder("resnet18")
    extra.body.add_module("adapter", nn.Conv2d(3, 3, 1))
    with pytest.raises(KeyError, match=r"adapter\.weight"):
        build_deeplabv3(extra, 5)
    reshaped = create_encoder("resnet18")
    reshaped.body.conv1 = nn.Conv2d(3, 64, 3, bias=False)
    with pytest.raises(ValueError, match=r"conv1\.weight"):
        build_deeplabv3(reshaped, 5)
    model = DeepLabV3Model("resnet50", 5)
    with pytest.raises(ValueError, match="resnet18"):
        model.load_encoder(create_encoder("resnet18"))
    with pytest.raises(TypeError, match="CNN"):
        build_deeplabv3(create_encoder(VIT), 5)


def test_deeplabv3_finetune_from_a_depth_checkpoint_trains(tiny_shards: Path, tmp_path: Path) -> None:
    assert "deeplabv3" in FINETUNE_MODES
    pretrain = _pretrain_run(tiny_shards, "depth_supervised", "resnet18")
    torch.manual_seed(1)
    depth_model = get_task("depth_supervised")(pretrain).build_model()
    # A "trained" encoder: weights and BatchNorm statistics that differ from any fresh init.
    with torch.no_grad():
        for parameter in depth_model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    depth_model.train()(torch.rand(2, 3, 64, 96))
    checkpoint = tmp_path / "model.pt"
    torch.save({"model": depth_model.state_dict()}, checkpoint)
    init = pretrained_init(pretrain, checkpoint)
    task = get_task("segmentation")(_finetune_run(tiny_shards, "resnet18", init))
    torch.manual_seed(0)
    model = task.build_model()
    assert isinstance(model, DeepLabV3Model)
    state = torch.load(checkpoint, weights_only=True)["model"]
    _assert_encoder_copied(
        model, {k.removeprefix("encoder.body."): v for k, v in state.items() if k.startswith("encoder.body.")}
    )

    batch = _batch(tiny_shards, ("image", "label"), "test")
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = []
    for _ in range(4):
        model.train()
        optimiser.zero_grad()
        loss, _ = task.loss(model, batch)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0], losses
    assert not torch.equal(
        model.state_dict()["net.encoder.model.conv1.weight"], before["net.encoder.model.conv1.weight"]
    )
    metrics = task.evaluate(model, ShardSet(tiny_shards), ShardSet(tiny_shards).ids("test"))
    assert 0 <= metrics["test_miou"] <= 1


@pytest.mark.parametrize("encoder", ["resnet18", "resnet50"])
def test_deeplabv3_from_random_init_trains(tiny_shards: Path, encoder: str) -> None:
    task = get_task("segmentation")(_finetune_run(tiny_shards, encoder, {"name": "random"}))
    torch.manual_seed(0)
    model = task.build_model()
    assert isinstance(model, DeepLabV3Model) and model.encoder_name == encoder
    batch = _batch(tiny_shards, ("image", "label"), "test")
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    optimiser.zero_grad()
    loss, _ = task.loss(model, batch)
    loss.backward()
    optimiser.step()
    assert torch.isfinite(loss)


def test_deeplabv3_imagenet_init_loads_the_configured_file(tiny_shards: Path, tmp_path: Path) -> None:
    import timm

    torch.manual_seed(7)
    reference = timm.create_model("resnet18")
    weights = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), weights)
    run = _finetune_run(tiny_shards, "resnet18", {"name": "imagenet", "weights_file": str(weights)})
    model = get_task("segmentation")(run).build_model()
    assert torch.equal(model.net.encoder.model.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)


@pytest.mark.parametrize("encoder", ["resnet50", VIT])
def test_all_mode_finetune_from_random_init(tiny_shards: Path, encoder: str) -> None:
    task = get_task("segmentation")(_finetune_run(tiny_shards, encoder, {"name": "random"}, mode="all"))
    torch.manual_seed(0)
    model = task.build_model()
    batch = _batch(tiny_shards, ("image", "label"), "test")
    model.train()
    loss, _ = task.loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss) and model(batch["image"])[0].shape == (2, 19, 64, 96)


@pytest.mark.parametrize("encoder", ["resnet50", VIT])
def test_encoder_only_finetune_from_a_depth_checkpoint(
    tiny_shards: Path, tmp_path: Path, encoder: str
) -> None:
    pretrain = _pretrain_run(tiny_shards, "depth_supervised", encoder)
    torch.manual_seed(1)
    depth_model = get_task("depth_supervised")(pretrain).build_model()
    checkpoint = tmp_path / "model.pt"
    torch.save({"model": depth_model.state_dict()}, checkpoint)
    init = pretrained_init(pretrain, checkpoint)
    model = get_task("segmentation")(
        _finetune_run(tiny_shards, encoder, init, mode="encoder_only")
    ).build_model()
    for key, value in depth_model.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[key], value), key
    assert type(model.decoder) is type(depth_model.decoder)
    assert not torch.equal(
        next(iter(model.decoder.parameters())), next(iter(depth_model.decoder.parameters()))
    )
    assert model(torch.rand(1, 3, 64, 96))[0].shape == (1, 19, 64, 96)
