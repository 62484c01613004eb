"""The ``loss`` section: the HTT losses (Algorithm 1) and their weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kon_ray.config.literals import check_literals
from kon_ray.overrides import check


@dataclass(frozen=True)
class LossConfig:
    contrastive: Literal["eq12", "bce_adversarial", "infonce"] = field(default="eq12", metadata={
        "help": "'eq12': the paper's loss with a probability floor; 'bce_adversarial': the published code's "
                "BCE with self-adversarial negative weights; 'infonce': softmax CE over the positive and its "
                "negatives."})
    negatives: int = field(default=128, metadata={
        "help": "|N|: negative entities per query, never a known true answer in training (strict). A query "
                "with fewer non-answers gets all of them, then uniform repeats; |N| must be below the entity "
                "count."})
    floor: float = field(default=1e-4, metadata={
        "help": "eq. 12/13 are unbounded below as printed; each log p is taken as log(p + floor)."})
    adversarial_temperature: float = field(default=0.5, metadata={
        "help": "Temperature of the self-adversarial negative weights (contrastive='bce_adversarial')."})
    sft: Literal["eq13", "cross_entropy"] = field(default="eq13", metadata={
        "help": "'eq13': the paper's SFT loss (with the floor); 'cross_entropy': standard SFT."})
    kl_detach_target: bool = field(default=True, metadata={
        "help": "eq. 14: treat the backbone head's distribution as a fixed target, as the published code."})
    nce_weight: float = field(default=1.0, metadata={
        "help": "Weight of L_nce (eq. 12); 0 is Table 3 'w/o L_nce'."})
    sft_weight: float = field(default=0.1, metadata={
        "help": "Weight of L_sft (eq. 13); 0 is Table 3 'w/o L_sft'. The paper does not state the HTT "
                "weights; 0.1 is the published code's weight of L_sft + L_tdt."})
    tdt_weight: float = field(default=0.1, metadata={
        "help": "Weight of L_tdt (eq. 14); 0 is Table 3 'w/o L_tdt'."})

    def __post_init__(self) -> None:
        check_literals(self)
        check(self.negatives >= 1, f"loss.negatives={self.negatives}: |N| must be >= 1")
        check(0.0 < self.floor < 1.0, f"loss.floor={self.floor}: must be in (0, 1)")
        check(
            self.adversarial_temperature > 0,
            f"loss.adversarial_temperature={self.adversarial_temperature}: must be > 0",
        )
        for name in ("nce_weight", "sft_weight", "tdt_weight"):
            check(getattr(self, name) >= 0, f"loss.{name}={getattr(self, name)}: must be >= 0")
        check(
            self.nce_weight + self.sft_weight + self.tdt_weight > 0,
            "loss.nce_weight, sft_weight and tdt_weight are all 0: nothing would be trained",
        )
