/* A Llama forward pass in plain C, one position at a time through a KV cache, as C
 * ports are written (llama2.c's shape: loops that sum one product at a time, q and k
 * in Meta's interleaved RoPE layout, weights from a flat file). It records every
 * checkpoint with parity_trace.h and writes a parity trace directory.
 *
 *     python examples/c/export_weights.py path/to/llama-model model.bin
 *     cc -O2 -o llama examples/c/llama.c -lm
 *     ./llama model.bin trace/ 1,415,5565
 *     parity check path/to/llama-model trace/
 *
 * Compiled with -DPLANT_BUG=1 it plants one mistake: the RoPE base fixed at 10000
 * (llama2.c's constant) in place of the model's.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PARITY_TRACE_IMPLEMENTATION
#include "parity_trace.h"

#ifndef PLANT_BUG
#define PLANT_BUG 0
#endif

typedef struct {
    int dim, hidden, layers, heads, kv_heads, vocab, head_dim;
    float rope_theta, eps;
} Config;

typedef struct {
    float *embed, *final_norm, *lm_head;
    float **attn_norm, **wq, **wk, **wv, **wo, **mlp_norm, **gate, **up, **down;
} Weights;

static float *take(float **cursor, size_t count) {
    float *start = *cursor;
    *cursor += count;
    return start;
}

static float *load(const char *path, Config *c, Weights *w) {
    FILE *file = fopen(path, "rb");
    if (!file) { fprintf(stderr, "cannot open %s\n", path); exit(2); }
    int header[8];
    if (fread(header, sizeof(int), 8, file) != 8 || header[0] != 0x70617269) {
        fprintf(stderr, "%s is not a weights file of export_weights.py\n", path); exit(2);
    }
    c->dim = header[1]; c->hidden = header[2]; c->layers = header[3]; c->heads = header[4];
    c->kv_heads = header[5]; c->vocab = header[6]; c->head_dim = header[7];
    if (fread(&c->rope_theta, sizeof(float), 1, file) != 1 || fread(&c->eps, sizeof(float), 1, file) != 1) exit(2);
    long start = ftell(file);
    fseek(file, 0, SEEK_END);
    size_t bytes = (size_t)(ftell(file) - start);
    fseek(file, start, SEEK_SET);
    float *data = malloc(bytes), *cursor = data;
    if (!data || fread(data, 1, bytes, file) != bytes) { fprintf(stderr, "short read of %s\n", path); exit(2); }
    fclose(file);
    size_t D = c->dim, F = c->hidden, Q = (size_t)c->heads * c->head_dim, KV = (size_t)c->kv_heads * c->head_dim;
    w->embed = take(&cursor, (size_t)c->vocab * D);
    float ***tables[] = {&w->attn_norm, &w->wq, &w->wk, &w->wv, &w->wo, &w->mlp_norm, &w->gate, &w->up, &w->down};
    for (int t = 0; t < 9; t++) *tables[t] = malloc(c->layers * sizeof(float *));
    for (int l = 0; l < c->layers; l++) {
        w->attn_norm[l] = take(&cursor, D);
        w->wq[l] = take(&cursor, Q * D);
        w->wk[l] = take(&cursor, KV * D);
        w->wv[l] = take(&cursor, KV * D);
        w->wo[l] = take(&cursor, D * Q);
        w->mlp_norm[l] = take(&cursor, D);
        w->gate[l] = take(&cursor, F * D);
        w->up[l] = take(&cursor, F * D);
        w->down[l] = take(&cursor, D * F);
    }
    w->final_norm = take(&cursor, D);
    w->lm_head = take(&cursor, (size_t)c->vocab * D);
    return data;
}

static void rmsnorm(float *out, const float *x, const float *weight, int n, float eps) {
    float ss = 0.0f;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    ss = 1.0f / sqrtf(ss / n + eps);
    for (int i = 0; i < n; i++) out[i] = weight[i] * (ss * x[i]);
}

static void matmul(float *out, const float *x, const float *w, int n, int d) {   /* W (d, n) @ x (n) */
    for (int i = 0; i < d; i++) {
        float sum = 0.0f;
        for (int j = 0; j < n; j++) sum += w[(size_t)i * n + j] * x[j];
        out[i] = sum;
    }
}

static void rope(float *vec, int heads, int head_dim, int pos, float theta) {   /* pairs (2i, 2i + 1) */
    for (int h = 0; h < heads; h++)
        for (int i = 0; i < head_dim; i += 2) {
            float angle = pos * powf(theta, -(float)i / head_dim);
            float cosine = cosf(angle), sine = sinf(angle);
            float *pair = vec + h * head_dim + i, first = pair[0], second = pair[1];
            pair[0] = first * cosine - second * sine;
            pair[1] = first * sine + second * cosine;
        }
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: %s model.bin trace_dir 1,2,3\n", argv[0]); return 2; }
    Config c;
    Weights w;
    float *data = load(argv[1], &c, &w);
    int T = 1;
    for (const char *s = argv[3]; *s; s++) T += *s == ',';
    int *tokens = malloc(T * sizeof(int));
    char *list = strdup(argv[3]), *piece = strtok(list, ",");
    for (int t = 0; t < T; t++, piece = strtok(NULL, ",")) tokens[t] = atoi(piece);
    float theta = PLANT_BUG ? 10000.0f : c.rope_theta;

    int D = c.dim, F = c.hidden, hd = c.head_dim, Q = c.heads * hd, KV = c.kv_heads * hd;
    int group = c.heads / c.kv_heads;
    float *x = malloc(D * sizeof(float)), *xb = malloc((Q > D ? Q : D) * sizeof(float));
    float *branch = malloc(D * sizeof(float)), *q = malloc(Q * sizeof(float));
    float *gate = malloc(F * sizeof(float)), *up = malloc(F * sizeof(float)), *logits = malloc(c.vocab * sizeof(float));
    float *att = malloc((size_t)c.heads * T * sizeof(float));
    float *keys = calloc((size_t)c.layers * T * KV, sizeof(float)), *values = calloc((size_t)c.layers * T * KV, sizeof(float));
    pt_begin(T);

    for (int pos = 0; pos < T; pos++) {
        memcpy(x, w.embed + (size_t)tokens[pos] * D, D * sizeof(float));
        pt_row(x, D, pos, "embed");
        for (int l = 0; l < c.layers; l++) {
            float *k = keys + ((size_t)l * T + pos) * KV, *v = values + ((size_t)l * T + pos) * KV;
            rmsnorm(xb, x, w.attn_norm[l], D, c.eps);
            pt_row(xb, D, pos, "layers.%d.attn_norm", l);
            matmul(q, xb, w.wq[l], D, Q);
            matmul(k, xb, w.wk[l], D, KV);
            matmul(v, xb, w.wv[l], D, KV);
            pt_row(q, Q, pos, "layers.%d.q", l);
            pt_row(k, KV, pos, "layers.%d.k", l);
            pt_row(v, KV, pos, "layers.%d.v", l);
            rope(q, c.heads, hd, pos, theta);
            rope(k, c.kv_heads, hd, pos, theta);
            pt_row(q, Q, pos, "layers.%d.q_rope", l);
            pt_row(k, KV, pos, "layers.%d.k_rope", l);
            for (int h = 0; h < c.heads; h++) {
                float *scores = att + (size_t)h * T, *context = xb + h * hd, largest = -INFINITY, total = 0.0f;
                const float *qh = q + h * hd;
                for (int t = 0; t <= pos; t++) {
                    const float *kt = keys + ((size_t)l * T + t) * KV + (h / group) * hd;
                    float score = 0.0f;
                    for (int i = 0; i < hd; i++) score += qh[i] * kt[i];
                    scores[t] = score / sqrtf((float)hd);
                    if (scores[t] > largest) largest = scores[t];
                }
                for (int t = 0; t <= pos; t++) { scores[t] = expf(scores[t] - largest); total += scores[t]; }
                for (int t = 0; t <= pos; t++) scores[t] /= total;
                memset(context, 0, hd * sizeof(float));
                for (int t = 0; t <= pos; t++) {
                    const float *vt = values + ((size_t)l * T + t) * KV + (h / group) * hd;
                    for (int i = 0; i < hd; i++) context[i] += scores[t] * vt[i];
                }
            }
            pt_probs(att, c.heads, T, pos, "layers.%d.attn_probs", l);
            pt_row(xb, Q, pos, "layers.%d.attn_ctx", l);
            matmul(branch, xb, w.wo[l], Q, D);
            pt_row(branch, D, pos, "layers.%d.attn_out", l);
            for (int i = 0; i < D; i++) x[i] += branch[i];
            pt_row(x, D, pos, "layers.%d.resid_mid", l);
            rmsnorm(xb, x, w.mlp_norm[l], D, c.eps);
            pt_row(xb, D, pos, "layers.%d.mlp_norm", l);
            matmul(gate, xb, w.gate[l], D, F);
            matmul(up, xb, w.up[l], D, F);
            pt_row(gate, F, pos, "layers.%d.mlp_gate", l);
            pt_row(up, F, pos, "layers.%d.mlp_up", l);
            for (int i = 0; i < F; i++) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
            pt_row(gate, F, pos, "layers.%d.mlp_act", l);
            matmul(branch, gate, w.down[l], F, D);
            pt_row(branch, D, pos, "layers.%d.mlp_out", l);
            for (int i = 0; i < D; i++) x[i] += branch[i];
            pt_row(x, D, pos, "layers.%d.out", l);
        }
        rmsnorm(x, x, w.final_norm, D, c.eps);
        pt_row(x, D, pos, "final_norm");
        matmul(logits, x, w.lm_head, D, c.vocab);
        pt_row(logits, c.vocab, pos, "logits");
    }
    if (pt_write(argv[2], tokens, T, PLANT_BUG ? "llama.c (RoPE base 10000)" : "llama.c", "float32") != 0) {
        fprintf(stderr, "cannot write the trace to %s\n", argv[2]);
        return 1;
    }
    pt_end();
    free(data);
    return 0;
}
