"""cffi out-of-line API-mode build of the BLAKE3 tree extension ``anysyncfs._bao_native``.

``setup.py`` names this file in ``cffi_modules``, so ``pip install`` (editable or not) compiles it with the
system C compiler; ``python anysyncfs/native/build_bao.py`` builds it in place by hand.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

_HERE = Path(__file__).resolve().parent

ffibuilder = FFI()
ffibuilder.cdef(
    """
    void abao_subtree_cv(const uint8_t *data, size_t len, uint64_t chunk_counter, int is_root, uint8_t out[32]);
    void abao_parent_cv(const uint8_t left[32], const uint8_t right[32], int is_root, uint8_t out[32]);
    size_t abao_outboard_parents(uint64_t len, size_t group_len);
    void abao_outboard(const uint8_t *data, size_t len, size_t group_len, uint8_t *parents, uint8_t root[32]);
    """
)
ffibuilder.set_source(
    "anysyncfs._bao_native",
    '#include "bao_tree.h"',
    sources=[str(Path("anysyncfs") / "native" / "bao_tree.c")],
    include_dirs=[str(Path("anysyncfs") / "native")],
    extra_compile_args=["-O3", "-std=c99"],
)

if __name__ == "__main__":
    import os

    os.chdir(_HERE.parents[1])  # the source paths above are relative to the project root
    ffibuilder.compile(tmpdir=".", verbose=False)
