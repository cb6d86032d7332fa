"""Only what pyproject.toml cannot say: the cffi extension (BLAKE3 tree primitives), compiled at install."""

from setuptools import setup

setup(cffi_modules=["anysyncfs/native/build_bao.py:ffibuilder"])
