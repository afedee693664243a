import os
import pathlib
import shutil
import tempfile

# The suite compiles many small programs on a 2-core CPU: XLA's backend
# optimisation level 0 halves compile times and changes no result that the
# tests check (they compare against references with tolerances).
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
# The commands' own compilation cache (runtime.enable_compilation_cache) stays
# out of the test processes and of the user's ~/.cache; child_env below gives
# the whole-command tests' children a cache of the run's own instead.
os.environ["RTPCA_COMPILATION_CACHE"] = "off"

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("RTPCA_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "reference" / "golden"
BVH_DIR = SHARED / "data" / "cmu_bvh"


# The child processes of the whole-command tests (train.py, eval.py, the
# converter, several JAX processes) compile the same few programs again and
# again: they share one JAX persistent compilation cache, made fresh for each
# pytest run (before pytest-xdist starts its workers, which inherit it) and
# removed at its end.  The test process itself keeps compiling in memory.
_CACHE_VAR = "RTPCA_TEST_COMPILATION_CACHE"


def pytest_configure(config):
    if not os.environ.get(_CACHE_VAR):
        os.environ[_CACHE_VAR] = tempfile.mkdtemp(prefix="rtpca-jax-test-xla-cache-")
        config._rtpca_owned_cache = os.environ[_CACHE_VAR]


def pytest_unconfigure(config):
    owned = getattr(config, "_rtpca_owned_cache", None)
    if owned:
        shutil.rmtree(owned, ignore_errors=True)


def child_env(base=None, **extra) -> dict:
    """Environment for a test's child process: ``base`` (default: this
    process's) with the run's shared compilation cache, then ``extra``.  A
    size limit makes JAX lock the cache while it reads and writes it, so two
    processes never see half an entry."""
    env = dict(os.environ if base is None else base)
    if os.environ.get(_CACHE_VAR):
        env["JAX_COMPILATION_CACHE_DIR"] = os.environ[_CACHE_VAR]
        env["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(8 << 30)
    env.update(extra)
    return env


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
