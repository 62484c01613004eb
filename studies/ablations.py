"""Table 3: the full K-ON and six variants, each without one loss or component."""

from kon_ray.paper import TABLE3
from kon_ray.studies import Study

study = Study(
    name="ablations",
    variants={
        "full": {},
        "w/o L_tdt": {"loss.tdt_weight": 0},
        "w/o L_sft": {"loss.sft_weight": 0},
        "w/o L_nce": {"loss.nce_weight": 0},
        "w/o Conditional Attention": {"model.conditional_attention": False},
        "Shared Head MLP": {"model.shared_head_mlp": True},
        "Shared Score Layer": {"model.shared_score_layer": True},
    },
    analyses=("ablation_table",),
    paper=TABLE3,
)
