import os
import pathlib

# The suite compiles many small programs on a 2-core CPU: XLA's backend
# optimisation level 0 halves compile times and changes no result that the
# tests check (they compare against references with tolerances).
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("RTPCA_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "reference" / "golden"
BVH_DIR = SHARED / "data" / "cmu_bvh"


@pytest.fixture(scope="session")
def golden_dir():
    if not GOLDEN.is_dir():
        pytest.skip(f"golden reference files not found at {GOLDEN} (set RTPCA_SHARED)")
    return GOLDEN


@pytest.fixture(scope="session")
def bvh_dir():
    if not BVH_DIR.is_dir():
        pytest.skip(f"BVH clips not found at {BVH_DIR} (set RTPCA_SHARED)")
    return BVH_DIR


def random_params(module, seed=0, scale=0.05):
    """Parameters of ``module`` drawn without compiling its init: every leaf
    normal(0, scale), LayerNorm scales around 1 (nothing sits at a symmetric
    initial value, so no gradient vanishes by construction)."""
    from rtpca_jax import model as model_lib

    shapes = jax.eval_shape(lambda: model_lib.init_params(module, jax.random.PRNGKey(0)))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        v = rng.normal(0.0, scale, leaf.shape).astype(leaf.dtype)
        if getattr(path[-1], "key", None) == "scale":
            v = v + 1.0
        return jax.numpy.asarray(v)

    return jax.tree_util.tree_map_with_path(draw, shapes)
