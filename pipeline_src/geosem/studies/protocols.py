"""Study A's fine-tuning protocols: the paper's, implemented correctly, and the published code's.

``protocol: paper`` (default) or ``legacy`` in the config or a study file; the planner resolves it into
snapshot keys (docs/protocol.md has the table, docs/protocols.md 1.2-1.7 the published code's defects).
"""

from __future__ import annotations

from typing import Any

PROTOCOLS = ("paper", "legacy")


def protocol_settings(protocol: str, finetune: dict[str, Any]) -> dict[str, Any]:
    """The snapshot values one protocol fixes."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r}: expected one of {PROTOCOLS}")
    if protocol == "paper":
        return {
            "zero_grad": True,
            "hflip": finetune["hflip"],
            "freeze": "full",
            "metric": "dataset",
            "split_rule": "heldout",
            "label_interpolation": "nearest",
        }
    return {
        "zero_grad": False,  # optimizer.zero_grad() is never called: gradients accumulate
        "hflip": False,  # no augmentation at all
        "freeze": "batchnorm",  # --freezeencoder only calls encoder.eval()
        "metric": "legacy",  # per-image mIoU over 8 classes, averaged over images
        "split_rule": "legacy",  # train = first N labelled images, test = the rest
        "label_interpolation": "bicubic",  # PIL's default filter for mode "L" on current Pillow
    }
