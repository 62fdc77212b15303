"""Packaging for lambda-learner-beam: incremental per-entity random effects on Apache Beam."""

from setuptools import setup

BEAM_VERSION = "2.77.0"

setup(
    name="lambda-learner-beam",
    version="0.1.0",
    description=(
        "Keeps millions of small per-entity (random-effect) models fresh from a live event stream, "
        "with sequential Bayesian updates, as an Apache Beam job."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="BSD-2-Clause",
    python_requires=">=3.9",
    # The schemas folder is a package of data only: listed, so setuptools ships it without a warning.
    packages=["lambda_core", "transforms", "transforms.schemas", "pipeline"],
    package_data={"transforms.schemas": ["*.avsc"]},
    install_requires=[
        f"apache-beam=={BEAM_VERSION}",
        # Beam's own `import apache_beam` imports its BigQuery client, which warns on every start
        # ("apitools not found ...") unless google-apitools is importable; the version is the one
        # Beam's gcp extra pins. It brings six small pure-Python packages and nothing of ours uses it.
        "google-apitools>=0.5.31,<0.5.32; python_version < '3.13'",
        "google-apitools>=0.5.35; python_version >= '3.13'",
        "numpy>=1.22",
        "scipy>=1.8",
        "fastavro>=1.7",
    ],
    extras_require={
        # lambda-learner 0.1.0 is the test oracle only: never imported by the library itself.
        "test": ["pytest>=7", "hypothesis>=6", "lambda-learner==0.1.0", "matplotlib>=3.5"],
        "gcp": [f"apache-beam[gcp]=={BEAM_VERSION}"],
        "demo": ["matplotlib>=3.5"],
        # Benchmark-only peers for benchmarks/bench_quality.py: never imported by the library.
        "bench": ["river==0.26.1", "vowpalwabbit==9.11.9"],
    },
)
