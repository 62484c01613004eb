"""Figure 3: the number of K-ON heads K (MRR, trainable parameters, step and training time)."""

from kon_ray.paper import FIGURE3
from kon_ray.studies import Study

study = Study(name="heads", grid={"model.k": [1, 2, 4, 8, 12, 16]}, analyses=("heads_curve",), paper=FIGURE3)
