/* BLAKE3 tree primitives: see bao_tree.h. Written from the BLAKE3 specification (section 2: compression function,
 * chunk chaining values, parent nodes, tree shape). Straightforward portable C; speed comes from doing the whole
 * tree walk here rather than from SIMD. */
#include "bao_tree.h"

#include <string.h>

#define CHUNK_LEN 1024u
#define BLOCK_LEN 64u

enum { CHUNK_START = 1, CHUNK_END = 2, PARENT = 4, ROOT = 8 };

static const uint32_t IV[8] = {0x6A09E667u, 0xBB67AE85u, 0x3C6EF372u, 0xA54FF53Au,
                               0x510E527Fu, 0x9B05688Cu, 0x1F83D9ABu, 0x5BE0CD19u};

static const uint8_t PERMUTATION[16] = {2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8};

static inline uint32_t rotr32(uint32_t w, unsigned c) { return (w >> c) | (w << (32 - c)); }

static inline uint32_t load32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline void store32(uint8_t *p, uint32_t w) {
    p[0] = (uint8_t)w;
    p[1] = (uint8_t)(w >> 8);
    p[2] = (uint8_t)(w >> 16);
    p[3] = (uint8_t)(w >> 24);
}

static inline void g(uint32_t *s, int a, int b, int c, int d, uint32_t mx, uint32_t my) {
    s[a] = s[a] + s[b] + mx;
    s[d] = rotr32(s[d] ^ s[a], 16);
    s[c] = s[c] + s[d];
    s[b] = rotr32(s[b] ^ s[c], 12);
    s[a] = s[a] + s[b] + my;
    s[d] = rotr32(s[d] ^ s[a], 8);
    s[c] = s[c] + s[d];
    s[b] = rotr32(s[b] ^ s[c], 7);
}

/* The compression function, truncated to the 8-word chaining value (all this tree work needs: root hashes are
 * 32 bytes, which are the first 8 words of the root node's output with counter 0). */
static void compress(uint32_t cv[8], const uint8_t block[BLOCK_LEN], uint64_t counter, uint32_t block_len,
                     uint32_t flags) {
    uint32_t m[16], t[16], s[16];
    for (int i = 0; i < 16; i++) m[i] = load32(block + 4 * i);
    for (int i = 0; i < 8; i++) s[i] = cv[i];
    s[8] = IV[0];
    s[9] = IV[1];
    s[10] = IV[2];
    s[11] = IV[3];
    s[12] = (uint32_t)counter;
    s[13] = (uint32_t)(counter >> 32);
    s[14] = block_len;
    s[15] = flags;
    for (int r = 0; r < 7; r++) {
        g(s, 0, 4, 8, 12, m[0], m[1]);
        g(s, 1, 5, 9, 13, m[2], m[3]);
        g(s, 2, 6, 10, 14, m[4], m[5]);
        g(s, 3, 7, 11, 15, m[6], m[7]);
        g(s, 0, 5, 10, 15, m[8], m[9]);
        g(s, 1, 6, 11, 12, m[10], m[11]);
        g(s, 2, 7, 8, 13, m[12], m[13]);
        g(s, 3, 4, 9, 14, m[14], m[15]);
        if (r < 6) {
            for (int i = 0; i < 16; i++) t[i] = m[PERMUTATION[i]];
            memcpy(m, t, sizeof m);
        }
    }
    for (int i = 0; i < 8; i++) cv[i] = s[i] ^ s[i + 8];
}

static void words_to_bytes(const uint32_t w[8], uint8_t out[32]) {
    for (int i = 0; i < 8; i++) store32(out + 4 * i, w[i]);
}

/* One chunk (0..1024 bytes; 0 only for the empty input) -> its chaining value. */
static void chunk_cv(const uint8_t *data, size_t len, uint64_t chunk_counter, int is_root, uint8_t out[32]) {
    uint32_t cv[8];
    memcpy(cv, IV, sizeof cv);
    size_t blocks = len == 0 ? 1 : (len + BLOCK_LEN - 1) / BLOCK_LEN;
    for (size_t b = 0; b < blocks; b++) {
        uint8_t block[BLOCK_LEN];
        size_t take = len - b * BLOCK_LEN;
        if (take > BLOCK_LEN) take = BLOCK_LEN;
        if (len == 0) take = 0;
        memset(block, 0, sizeof block);
        if (take) memcpy(block, data + b * BLOCK_LEN, take);
        uint32_t flags = 0;
        if (b == 0) flags |= CHUNK_START;
        if (b == blocks - 1) flags |= CHUNK_END | (is_root ? ROOT : 0);
        compress(cv, block, chunk_counter, (uint32_t)take, flags);
    }
    words_to_bytes(cv, out);
}

void abao_parent_cv(const uint8_t left[32], const uint8_t right[32], int is_root, uint8_t out[32]) {
    uint8_t block[BLOCK_LEN];
    uint32_t cv[8];
    memcpy(block, left, 32);
    memcpy(block + 32, right, 32);
    memcpy(cv, IV, sizeof cv);
    compress(cv, block, 0, BLOCK_LEN, PARENT | (is_root ? ROOT : 0));
    words_to_bytes(cv, out);
}

/* Bytes in the left subtree of a subtree of `len` > 1024 bytes: the largest power of two of chunks below its
 * chunk count. */
static size_t left_len(size_t len) {
    size_t chunks = (len + CHUNK_LEN - 1) / CHUNK_LEN;
    size_t p = 1;
    while (p * 2 < chunks) p *= 2;
    return p * CHUNK_LEN;
}

void abao_subtree_cv(const uint8_t *data, size_t len, uint64_t chunk_counter, int is_root, uint8_t out[32]) {
    if (len <= CHUNK_LEN) {
        chunk_cv(data, len, chunk_counter, is_root, out);
        return;
    }
    uint8_t left[32], right[32];
    size_t l = left_len(len);
    abao_subtree_cv(data, l, chunk_counter, 0, left);
    abao_subtree_cv(data + l, len - l, chunk_counter + l / CHUNK_LEN, 0, right);
    abao_parent_cv(left, right, is_root, out);
}

size_t abao_outboard_parents(uint64_t len, size_t group_len) {
    uint64_t groups = len == 0 ? 1 : (len + group_len - 1) / group_len;
    return (size_t)(groups - 1);
}

static void outboard_walk(const uint8_t *data, size_t len, uint64_t chunk_counter, size_t group_len, int is_root,
                          uint8_t *parents, size_t *pos, uint8_t out[32]) {
    if (len <= group_len) {
        abao_subtree_cv(data, len, chunk_counter, is_root, out);
        return;
    }
    uint8_t *slot = parents + *pos;  /* pre-order: this node before its children */
    *pos += 64;
    size_t l = left_len(len);
    outboard_walk(data, l, chunk_counter, group_len, 0, parents, pos, slot);
    outboard_walk(data + l, len - l, chunk_counter + l / CHUNK_LEN, group_len, 0, parents, pos, slot + 32);
    abao_parent_cv(slot, slot + 32, is_root, out);
}

void abao_outboard(const uint8_t *data, size_t len, size_t group_len, uint8_t *parents, uint8_t root[32]) {
    size_t pos = 0;
    outboard_walk(data, len, 0, group_len, 1, parents, &pos, root);
}
