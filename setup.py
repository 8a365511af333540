"""Build script: the package metadata lives in pyproject.toml; this file only declares the Cython
extensions under fastopt/_kernels/ (none yet: the Cython backend issue adds them)."""

from setuptools import setup

setup()
