"""Table 4: the joint entity probability, sum or product of the K token probabilities, with
learnable or constant step weights."""

from kon_ray.paper import TABLE4
from kon_ray.studies import Study

study = Study(
    name="joint_probability",
    grid={"model.joint": ["sum", "product"], "model.joint_weights": ["learnable", "constant"]},
    analyses=("joint_probability_table",),
    paper=TABLE4,
)
