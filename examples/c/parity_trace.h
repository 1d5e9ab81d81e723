/* parity_trace.h: write a parity trace from C or C++, no library needed.
 *
 * A port that runs one position at a time (a KV-cache loop) records each checkpoint's
 * row as it makes it; at the end the rows are written as a trace directory: one .npy
 * file per checkpoint plus manifest.json (docs/trace-format.md).
 *
 *     #define PARITY_TRACE_IMPLEMENTATION      // in exactly one .c file
 *     #include "parity_trace.h"
 *
 *     pt_begin(n_tokens);
 *     for (pos = 0; pos < n_tokens; pos++) {
 *         ...
 *         pt_row(x, dim, pos, "embed");
 *         pt_row(q, n_heads * head_dim, pos, "layers.%d.q", layer);
 *         pt_probs(att, n_heads, att_stride, pos, "layers.%d.attn_probs", layer);
 *         ...
 *     }
 *     pt_write("trace", tokens, n_tokens, "my-port 0.1", "float32");   // 0 on success
 *
 * Rows are [T, width] tensors (q, k and v flattened as [T, heads * head_dim]);
 * pt_probs stores each head's probabilities over keys 0..pos as row pos of an
 * [H, T, T] tensor (zeros above the diagonal, as a causal mask leaves them).
 * Memory: T x width floats per checkpoint, H x T x T per probabilities tensor.
 */
#ifndef PARITY_TRACE_H
#define PARITY_TRACE_H

#ifdef __cplusplus
extern "C" {
#endif

int pt_begin(int max_positions);
int pt_row(const float *values, int width, int pos, const char *name_format, ...);
int pt_probs(const float *att, int n_heads, int stride, int pos, const char *name_format, ...);
int pt_write(const char *directory, const int *tokens, int n_tokens, const char *producer, const char *dtype);
void pt_end(void);

#ifdef __cplusplus
}
#endif

#ifdef PARITY_TRACE_IMPLEMENTATION
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _WIN32
#include <direct.h>
#define pt_mkdir(path) _mkdir(path)
#else
#include <sys/stat.h>
#define pt_mkdir(path) mkdir(path, 0777)
#endif

typedef struct {
    char name[96];
    int width;      /* floats per position; for probabilities: heads * max_positions */
    int heads;      /* 0 for a [T, width] tensor, else the probabilities' H */
    int rows;       /* positions written so far (the largest pos + 1) */
    float *data;
} pt_tensor;

static pt_tensor *pt_tensors = NULL;
static int pt_count = 0, pt_capacity = 0, pt_positions = 0;

int pt_begin(int max_positions) {
    pt_end();
    pt_positions = max_positions;
    return max_positions > 0 ? 0 : -1;
}

static pt_tensor *pt_find(const char *name, int width, int heads) {
    for (int i = 0; i < pt_count; i++)
        if (strcmp(pt_tensors[i].name, name) == 0)
            return pt_tensors[i].width == width ? &pt_tensors[i] : NULL;
    if (pt_count == pt_capacity) {
        int capacity = pt_capacity ? 2 * pt_capacity : 64;
        pt_tensor *grown = (pt_tensor *)realloc(pt_tensors, capacity * sizeof(pt_tensor));
        if (!grown) return NULL;
        pt_tensors = grown;
        pt_capacity = capacity;
    }
    pt_tensor *tensor = &pt_tensors[pt_count];
    snprintf(tensor->name, sizeof tensor->name, "%s", name);
    tensor->width = width;
    tensor->heads = heads;
    tensor->rows = 0;
    tensor->data = (float *)calloc((size_t)pt_positions * width, sizeof(float));
    if (!tensor->data) return NULL;
    pt_count++;
    return tensor;
}

/* the tensor named by `format` with row `pos` taken, or NULL (pos out of range, a width that changed) */
static pt_tensor *pt_at(int pos, int width, int heads, const char *format, va_list args) {
    char name[96];
    vsnprintf(name, sizeof name, format, args);
    if (pos < 0 || pos >= pt_positions) return NULL;
    pt_tensor *tensor = pt_find(name, width, heads);
    if (tensor && pos + 1 > tensor->rows) tensor->rows = pos + 1;
    return tensor;
}

int pt_row(const float *values, int width, int pos, const char *name_format, ...) {
    va_list args;
    va_start(args, name_format);
    pt_tensor *tensor = pt_at(pos, width, 0, name_format, args);
    va_end(args);
    if (!tensor) return -1;
    memcpy(tensor->data + (size_t)pos * width, values, (size_t)width * sizeof(float));
    return 0;
}

int pt_probs(const float *att, int n_heads, int stride, int pos, const char *name_format, ...) {
    va_list args;
    va_start(args, name_format);
    pt_tensor *tensor = pt_at(pos, n_heads * pt_positions, n_heads, name_format, args);
    va_end(args);
    if (!tensor) return -1;
    for (int h = 0; h < n_heads; h++)          /* row pos holds [H, max_positions] */
        memcpy(tensor->data + (size_t)pos * tensor->width + (size_t)h * pt_positions,
               att + (size_t)h * stride, (size_t)(pos + 1) * sizeof(float));
    return 0;
}

static int pt_write_npy(const char *path, const float *data, int ndim, const int *shape) {
    char dims[96] = "", header[192];
    size_t count = 1;
    for (int i = 0; i < ndim; i++) {
        char dim[24];
        snprintf(dim, sizeof dim, ndim == 1 ? "%d," : (i ? " %d" : "%d"), shape[i]);
        strcat(dims, dim);
        if (ndim > 1 && i < ndim - 1) strcat(dims, ",");
        count *= (size_t)shape[i];
    }
    int length = snprintf(header, sizeof header, "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }", dims);
    int padding = 63 - (10 + length) % 64;     /* magic, version and length take 10 bytes; ends in '\n' */
    FILE *file = fopen(path, "wb");
    if (!file) return -1;
    unsigned short header_bytes = (unsigned short)(length + padding + 1);
    unsigned char prefix[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                                (unsigned char)(header_bytes & 0xff), (unsigned char)(header_bytes >> 8)};
    int ok = fwrite(prefix, 1, 10, file) == 10 && fwrite(header, 1, length, file) == (size_t)length;
    for (int i = 0; ok && i < padding; i++) ok = fputc(' ', file) != EOF;
    ok = ok && fputc('\n', file) != EOF && fwrite(data, sizeof(float), count, file) == count;
    return (fclose(file) == 0 && ok) ? 0 : -1;
}

int pt_write(const char *directory, const int *tokens, int n_tokens, const char *producer, const char *dtype) {
    char path[1024];
    if (pt_mkdir(directory) != 0 && errno != EEXIST) return -1;
    for (int i = 0; i < pt_count; i++) {
        pt_tensor *tensor = &pt_tensors[i];
        int T = tensor->rows, status;
        snprintf(path, sizeof path, "%s/%s.npy", directory, tensor->name);
        if (tensor->heads) {                   /* [T, H, max_positions] -> [H, T, T] */
            float *probs = (float *)calloc((size_t)tensor->heads * T * T, sizeof(float));
            if (!probs) return -1;
            for (int t = 0; t < T; t++)
                for (int h = 0; h < tensor->heads; h++)
                    memcpy(probs + ((size_t)h * T + t) * T,
                           tensor->data + (size_t)t * tensor->width + (size_t)h * pt_positions,
                           (size_t)T * sizeof(float));
            int shape[3] = {tensor->heads, T, T};
            status = pt_write_npy(path, probs, 3, shape);
            free(probs);
        } else {
            int shape[2] = {T, tensor->width};
            status = pt_write_npy(path, tensor->data, 2, shape);
        }
        if (status != 0) return -1;
    }
    snprintf(path, sizeof path, "%s/manifest.json", directory);
    FILE *manifest = fopen(path, "w");
    if (!manifest) return -1;
    fprintf(manifest, "{\"format\": \"parity-trace/2\", \"metadata\": {\"producer\": \"%s\", \"dtype\": \"%s\", "
            "\"tokens\": [", producer, dtype);
    for (int i = 0; i < n_tokens; i++) fprintf(manifest, "%s%d", i ? ", " : "", tokens[i]);
    fprintf(manifest, "]}, \"tensors\": [");
    for (int i = 0; i < pt_count; i++) fprintf(manifest, "%s\"%s\"", i ? ", " : "", pt_tensors[i].name);
    fprintf(manifest, "]}\n");
    return fclose(manifest) == 0 ? 0 : -1;
}

void pt_end(void) {
    for (int i = 0; i < pt_count; i++) free(pt_tensors[i].data);
    free(pt_tensors);
    pt_tensors = NULL;
    pt_count = pt_capacity = 0;
}
#endif /* PARITY_TRACE_IMPLEMENTATION */
#endif /* PARITY_TRACE_H */
