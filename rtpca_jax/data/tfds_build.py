"""Prepare a TFDS dataset of this package into a local or remote data_dir.

    python -m rtpca_jax.data.tfds_build cmu_mocap --data_dir gs://bucket/tfds
    python -m rtpca_jax.data.tfds_build h36m/gt --data_dir gs://bucket/tfds --manual_dir gs://bucket/h36m

(The builders live in :mod:`rtpca_jax.data.tfds_builders`; TFDS builders
cannot be defined in a ``__main__`` module, hence this separate entry point.)
"""

from __future__ import annotations


def main(argv=None) -> int:
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m rtpca_jax.data.tfds_build",
                                 description="Prepare a TFDS dataset (local or gs:// data_dir).")
    ap.add_argument("name", help="cmu_mocap, h36m/gt, h36m/cpn_ft_h36m_dbb, h36m/detectron_ft_h36m, "
                                 "humaneva15, mpi_inf_3dhp")
    ap.add_argument("--data_dir", required=True, help="where TFDS datasets live (local or gs://)")
    ap.add_argument("--manual_dir", help="folder holding your dataset files (local or gs://)")
    a = ap.parse_args(argv)
    try:
        from rtpca_jax.data.tfds_builders import build

        out = build(a.name, a.data_dir, a.manual_dir)
    except (ValueError, OSError, AssertionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"built {a.name}: {out}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
