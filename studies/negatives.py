"""Figure 4: the number of negatives |N| of the contrastive loss (eq. 12)."""

from kon_ray.paper import FIGURE4
from kon_ray.studies import Study

study = Study(
    name="negatives",
    grid={"loss.negatives": [1, 4, 16, 64, 128, 256, 1024, 2048, 4096]},
    analyses=("negatives_curve",),
    paper=FIGURE4,
)
