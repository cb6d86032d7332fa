/* BLAKE3 tree primitives for anysyncfs (verified streaming at 16 KiB chunk groups).
 * Portable C written from the BLAKE3 specification: compression function, chunk chaining values, parent nodes.
 * Only the unkeyed hash mode is needed (blob IDs are plain BLAKE3). No SIMD, no threads. */
#ifndef ANYSYNCFS_BAO_TREE_H
#define ANYSYNCFS_BAO_TREE_H

#include <stddef.h>
#include <stdint.h>

/* Chaining value (or root hash) of the subtree made of `len` bytes whose first chunk has index `chunk_counter`.
 * `len` may be anything for a root (is_root != 0, chunk_counter 0); for an inner subtree it must be at most
 * 2^k chunks with chunk_counter a multiple of 2^k, as the tree shape requires. */
void abao_subtree_cv(const uint8_t *data, size_t len, uint64_t chunk_counter, int is_root, uint8_t out[32]);

/* The chaining value of a parent node (the root hash when is_root != 0). */
void abao_parent_cv(const uint8_t left[32], const uint8_t right[32], int is_root, uint8_t out[32]);

/* Number of parent nodes above the groups of `group_len` bytes (a power of two >= 1024) for a blob of `len`. */
size_t abao_outboard_parents(uint64_t len, size_t group_len);

/* Pre-order parent nodes (64 bytes each: left CV, right CV) above the groups, into `parents`
 * (abao_outboard_parents(len, group_len) * 64 bytes), and the root hash into `root`. */
void abao_outboard(const uint8_t *data, size_t len, size_t group_len, uint8_t *parents, uint8_t root[32]);

#endif
