/* The suffix array of one infini-gram shard, sorted over its token alphabet with libsais.

   infini-gram orders suffixes by memcmp of the little-endian bytes. Token by token that is the
   numeric order of the byte-swapped ids, so ranking the ids in that order and handing libsais_int
   one symbol per token gives the same table as a byte-level sort that keeps the aligned entries,
   with half the suffixes to sort. The separator (all bytes 0xFF) ranks last, as in memcmp.

   Built by scripts/setup.sh against libsais.h (Apache-2.0, Ilya Grebnov) as shipped in the
   bzip3 0.1.4 source package on PyPI; loaded by indexes/suffix_array.py with ctypes. */

#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "libsais.h"

enum {
    SORT_OK = 0,
    SORT_READ_FAILED = 1,
    SORT_BAD_SIZE = 2,
    SORT_TOO_LARGE = 3,
    SORT_NO_MEMORY = 4,
    SORT_LIBSAIS_FAILED = 5,
    SORT_WRITE_FAILED = 6,
    SORT_IDS_TOO_LARGE = 7,
};

#define MAX_TOKENS (1 << 30)      /* LIBSAIS_MAX_TOKENS in suffix_array.py: 32-bit indices plus room */
#define MAX_ID_SPACE (1u << 24) /* larger ids than any vocabulary: the rank table stays small */
#define WRITE_BATCH (1 << 20)

/* Suffix sorting reads both arrays at random: on 2 MiB pages the TLB covers far more of them
   (measured 5-7% faster on 10M and 100M tokens where the kernel grants huge pages on request). */
static void *alloc_huge(size_t bytes) {
    const size_t huge_page = (size_t)1 << 21;
    size_t size = (bytes + huge_page - 1) / huge_page * huge_page;
    void *p = aligned_alloc(huge_page, size);
    if (p != NULL) madvise(p, size, MADV_HUGEPAGE);
    return p;
}

/* Orders of token ids for qsort: the memcmp order of their little-endian bytes. */
static int by_le_bytes_u16(const void *a, const void *b) {
    u16 x = __builtin_bswap16((u16)*(const u32 *)a), y = __builtin_bswap16((u16)*(const u32 *)b);
    return (x > y) - (x < y);
}

static int by_le_bytes_u32(const void *a, const void *b) {
    u32 x = __builtin_bswap32(*(const u32 *)a), y = __builtin_bswap32(*(const u32 *)b);
    return (x > y) - (x < y);
}

/* The ranks in memcmp order of the ids marked in present[0..id_space); the separator, absent
   from `present`, gets the rank after them all. Returns the alphabet size or -SORT_NO_MEMORY. */
static s32 rank_present_ids(const u8 *present, u32 id_space, int width, int has_separator, s32 *rank) {
    u32 *ids = malloc((size_t)id_space * sizeof(u32));
    if (ids == NULL) return -SORT_NO_MEMORY;
    s32 k = 0;
    for (u32 t = 0; t < id_space; t++) {
        if (present[t]) ids[k++] = t;
    }
    qsort(ids, (size_t)k, sizeof(u32), width == 2 ? by_le_bytes_u16 : by_le_bytes_u32);
    for (s32 r = 0; r < k; r++) rank[ids[r]] = r;
    free(ids);
    return k + has_separator;
}

/* One pass per loop below, specialised by token type so the compiler keeps them tight. The
   tokenized files are little-endian and so is every host the engine runs on. */
#define RANK_TOKENS(T, SEPARATOR)                                                               \
    static s32 rank_tokens_##T(const T *tokens, s32 n, s32 *symbols) {                          \
        T max_id = 0;                                                                           \
        _Pragma("omp parallel for reduction(max : max_id)")                                     \
        for (s32 i = 0; i < n; i++) {                                                           \
            if (tokens[i] != SEPARATOR && tokens[i] > max_id) max_id = tokens[i];               \
        }                                                                                       \
        if ((u64)max_id >= MAX_ID_SPACE) return -SORT_IDS_TOO_LARGE;                            \
        u32 id_space = (u32)max_id + 1;                                                         \
        u8 *present = calloc(id_space, 1);                                                      \
        s32 *rank = malloc(((size_t)id_space + 1) * sizeof(s32));                               \
        if (present == NULL || rank == NULL) {                                                  \
            free(present), free(rank);                                                          \
            return -SORT_NO_MEMORY;                                                             \
        }                                                                                       \
        int has_separator = 0;                                                                  \
        for (s32 i = 0; i < n; i++) {                                                           \
            if (tokens[i] == SEPARATOR) has_separator = 1;                                      \
            else present[tokens[i]] = 1;                                                        \
        }                                                                                       \
        s32 k = rank_present_ids(present, id_space, sizeof(T), has_separator, rank);            \
        if (k >= 0) {                                                                           \
            rank[id_space] = k - 1; /* the separator's rank, used only when it occurs */        \
            _Pragma("omp parallel for")                                                         \
            for (s32 i = 0; i < n; i++) {                                                       \
                symbols[i] = rank[tokens[i] == SEPARATOR ? id_space : tokens[i]];               \
            }                                                                                   \
        }                                                                                       \
        free(present), free(rank);                                                              \
        return k;                                                                               \
    }

RANK_TOKENS(u16, 0xFFFFu)
RANK_TOKENS(u32, 0xFFFFFFFFu)

/* Replace each token by its rank among the shard's distinct ids in memcmp order; returns the
   alphabet size, or a negative SORT_ code. */
static s32 rank_tokens(const void *ds, s32 n, int width, s32 *symbols) {
    return width == 2 ? rank_tokens_u16(ds, n, symbols) : rank_tokens_u32(ds, n, symbols);
}

/* Each suffix's byte offset in `pointer_width` little-endian bytes (the host's order, its low
   bytes first). The common 4-byte case has a constant size, so each copy is one store. */
static void encode_pointers(u8 *out, const s32 *sa, s32 count, int width, int pointer_width) {
    if (pointer_width == 4) {
        for (s32 j = 0; j < count; j++) {
            u32 pointer = (u32)sa[j] * (u32)width;
            memcpy(out + (size_t)j * 4, &pointer, 4);
        }
        return;
    }
    for (s32 j = 0; j < count; j++) {
        u64 pointer = (u64)sa[j] * (u64)width;
        memcpy(out + (size_t)j * pointer_width, &pointer, (size_t)pointer_width);
    }
}

/* Write each suffix's byte offset in `pointer_width` little-endian bytes, in blocks that the
   threads convert and write at their own offsets. */
static int write_table(const s32 *sa, s32 n, int width, int pointer_width, const char *table_path) {
    int fd = open(table_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return SORT_WRITE_FAILED;
    int status = SORT_OK;
    const s32 blocks = (n + WRITE_BATCH - 1) / WRITE_BATCH;
#pragma omp parallel
    {
        u8 *buffer = malloc((size_t)WRITE_BATCH * pointer_width);
        if (buffer == NULL) {
#pragma omp atomic write
            status = SORT_NO_MEMORY;
        }
#pragma omp for schedule(static, 1)
        for (s32 b = 0; b < blocks; b++) {
            if (buffer == NULL) continue;
            s32 start = b * WRITE_BATCH, count = n - start < WRITE_BATCH ? n - start : WRITE_BATCH;
            encode_pointers(buffer, sa + start, count, width, pointer_width);
            size_t bytes = (size_t)count * pointer_width;
            if (pwrite(fd, buffer, bytes, (off_t)start * pointer_width) != (ssize_t)bytes) {
#pragma omp atomic write
                status = SORT_WRITE_FAILED;
            }
        }
        free(buffer);
    }
    if (close(fd) != 0 && status == SORT_OK) status = SORT_WRITE_FAILED;
    return status;
}

/* Sort the shard in `tokenized_path` (token ids of `width` bytes) and write its table. */
int curate_sort_shard(const char *tokenized_path, const char *table_path, int width, int pointer_width) {
    int fd = open(tokenized_path, O_RDONLY);
    if (fd < 0) return SORT_READ_FAILED;
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size == 0) {
        close(fd);
        return SORT_READ_FAILED;
    }
    if (st.st_size % width != 0) {
        close(fd);
        return SORT_BAD_SIZE;
    }
    if (st.st_size / width > MAX_TOKENS) {
        close(fd);
        return SORT_TOO_LARGE;
    }
    const s32 n = (s32)(st.st_size / width);
    const u8 *ds = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (ds == MAP_FAILED) return SORT_READ_FAILED;

    int status = SORT_OK;
    s32 *symbols = alloc_huge((size_t)n * sizeof(s32));
    s32 *sa = NULL;
    s32 k = symbols == NULL ? -SORT_NO_MEMORY : rank_tokens(ds, n, width, symbols);
    munmap((void *)ds, (size_t)st.st_size);
    if (k < 0) {
        status = -k;
    } else {
        /* Free space after the array lets libsais keep its bucket tables there (faster). */
        long long room = (long long)INT32_MAX - n;
        s32 free_space = 6LL * k < room ? 6 * k : (s32)room;
        sa = alloc_huge(((size_t)n + (size_t)free_space) * sizeof(s32));
        if (sa == NULL) status = SORT_NO_MEMORY;
        else if (libsais_int(symbols, sa, n, k, free_space) != 0) status = SORT_LIBSAIS_FAILED;
    }
    free(symbols);
    if (status == SORT_OK) status = write_table(sa, n, width, pointer_width, table_path);
    free(sa);
    return status;
}
