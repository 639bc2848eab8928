/*
 * host_main.c - a command-line harness around the ML code, for tests on the
 * build machine (native gcc) and for instruction counts under qemu-arm.
 * Files in, files out, so tests/test_firmware_ml.py can compare with numpy.
 *
 *   ml_host info  MODEL
 *   ml_host infer MODEL INPUTS N OUT
 *   ml_host train MODEL INPUTS LABELS N EPOCHS BATCH LR MOMENTUM WEIGHT_DECAY PROX_MU COSINE SEED ORDER|- OUT
 *   ml_host fuzz  MODEL ITERATIONS SEED   (corrupted copies: flipped bytes, every truncation; loads and,
 *                                          when a copy still loads, runs it: must never crash)
 *
 * INPUTS: N samples of int8 in the model's input quantisation; LABELS: N
 * bytes; ORDER: EPOCHS x N uint32 little-endian, or "-" for numpy's order
 * from SEED. OUT (train): weight delta then bias delta, float32. Prints
 * key=value lines on stdout. Only the harness allocates; the ML code does not.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ml.h"

static uint8_t *slurp(const char *path, uint32_t *len) {
    FILE *f = fopen(path, "rb");
    uint8_t *buf;
    long n;
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc(n > 0 ? (size_t)n : 1u);
    if (!buf || (n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n)) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(2);
    }
    fclose(f);
    *len = (uint32_t)n;
    return buf;
}

static void spill(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(2);
    }
    fclose(f);
}

static void print_name(const char *key, const char *s, uint32_t n) {
    uint32_t i;
    printf("%s=", key);
    for (i = 0; i < n; i++) putchar((s[i] >= 32 && s[i] < 127) ? s[i] : '?');
    putchar('\n');
}

static int load(const char *path, ml_info *info) {
    uint32_t len;
    uint8_t *model = slurp(path, &len);
    ml_status st = ml_load(model, len, info);
    printf("status=%d\n", (int)st);
    if (st != ML_OK) {
        printf("error=%s\n", ml_last_error());
        return 1;
    }
    return 0;
}

static uint32_t xorshift(uint32_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

static int fuzz(const char *path, uint32_t iterations, uint32_t seed) {
    uint32_t len, i, counts[6] = {0, 0, 0, 0, 0, 0}, ran = 0, trained = 0;
    uint8_t *model = slurp(path, &len), *copy = malloc(len + 1u);
    int8_t *in, *out;
    ml_info info;
    if (ml_load(model, len, &info) != ML_OK) {
        printf("error=%s\n", ml_last_error());
        return 1;
    }
    in = calloc(info.input_len + 1u, 1);
    out = calloc(4096, 1);
    for (i = 0; i < iterations + len; i++) {
        uint32_t n = len, flips, f;
        ml_status st;
        memcpy(copy, model, len);
        if (i < iterations) {
            flips = 1u + xorshift(&seed) % 4u;
            for (f = 0; f < flips; f++) copy[xorshift(&seed) % len] ^= (uint8_t)(1u + xorshift(&seed) % 255u);
        } else {
            n = i - iterations; /* every truncation */
        }
        st = ml_load(copy, n, &info);
        counts[st < 6 ? st : 5]++;
        if (st == ML_OK && info.output_len <= 4096) {
            memset(in, (int)(xorshift(&seed) & 0xff), info.input_len);
            if (ml_infer(in, out) == ML_OK) ran++;
            if (info.trainable && ml_train_bytes(2, 2) <= ML_ARENA_BYTES && info.input_len <= 4096) {
                ml_train_config cfg;
                ml_train_result res;
                static const uint8_t labels[2] = {0, 0};
                int8_t two[2 * 4096];
                ml_train_config_default(&cfg);
                cfg.epochs = 1;
                cfg.batch_size = 2;
                memset(two, 3, 2u * info.input_len);
                if (ml_train_last_layer(&cfg, two, labels, 2, &res) == ML_OK) trained++;
            }
        }
    }
    printf("ok=%u\nbad_model=%u\nunsupported=%u\nno_memory=%u\nran=%u\ntrained=%u\n", (unsigned)counts[0],
           (unsigned)counts[1], (unsigned)counts[2], (unsigned)counts[3], (unsigned)ran, (unsigned)trained);
    return 0;
}

int main(int argc, char **argv) {
    ml_info info;
    if (argc == 5 && strcmp(argv[1], "fuzz") == 0)
        return fuzz(argv[2], (uint32_t)strtoul(argv[3], NULL, 10), (uint32_t)strtoul(argv[4], NULL, 10) | 1u);
    if (argc < 3) {
        fprintf(stderr, "usage: ml_host info|infer|train MODEL ...\n");
        return 2;
    }
    if (load(argv[2], &info)) return 1;
    if (strcmp(argv[1], "info") == 0) {
        printf("input_len=%u\ninput_scale=%.9g\ninput_zero_point=%d\n", (unsigned)info.input_len,
               (double)info.input_scale, (int)info.input_zero_point);
        printf("output_len=%u\narena_bytes=%u\nops=%u\ntensors=%u\n", (unsigned)info.output_len,
               (unsigned)info.arena_bytes, (unsigned)info.op_count, (unsigned)info.tensor_count);
        printf("trainable=%d\nclasses=%u\nfeature_len=%u\ncut_op=%u\n", info.trainable, (unsigned)info.classes,
               (unsigned)info.feature_len, (unsigned)info.cut_op);
        printf("weight_tensor=%u\nbias_tensor=%u\nweight_numel=%u\nbias_numel=%u\n", (unsigned)info.weight_tensor,
               (unsigned)info.bias_tensor, (unsigned)info.weight_numel, (unsigned)info.bias_numel);
        print_name("weight_name", info.weight_name, info.weight_name_len);
        print_name("bias_name", info.bias_name, info.bias_name_len);
        return 0;
    }
    if (strcmp(argv[1], "infer") == 0 && argc == 6) {
        uint32_t len, n = (uint32_t)strtoul(argv[4], NULL, 10), i;
        uint8_t *in = slurp(argv[3], &len);
        int8_t *out = malloc((size_t)n * info.output_len + 1u);
        if (len != n * info.input_len) {
            fprintf(stderr, "inputs are %u bytes, %u samples need %u\n", (unsigned)len, (unsigned)n,
                    (unsigned)(n * info.input_len));
            return 2;
        }
        for (i = 0; i < n; i++) {
            ml_status st = ml_infer((const int8_t *)in + (size_t)i * info.input_len, out + (size_t)i * info.output_len);
            if (st != ML_OK) {
                printf("status=%d\nerror=%s\n", (int)st, ml_last_error());
                return 1;
            }
        }
        spill(argv[5], out, (size_t)n * info.output_len);
        return 0;
    }
    if (strcmp(argv[1], "train") == 0 && argc == 16) {
        ml_train_config cfg;
        ml_train_result res;
        uint32_t len, llen, olen, n = (uint32_t)strtoul(argv[5], NULL, 10);
        uint8_t *in = slurp(argv[3], &len), *labels = slurp(argv[4], &llen);
        ml_status st;
        ml_train_config_default(&cfg);
        cfg.epochs = (uint32_t)strtoul(argv[6], NULL, 10);
        cfg.batch_size = (uint32_t)strtoul(argv[7], NULL, 10);
        cfg.learning_rate = strtod(argv[8], NULL);
        cfg.momentum = (float)strtod(argv[9], NULL);
        cfg.weight_decay = (float)strtod(argv[10], NULL);
        cfg.prox_mu = (float)strtod(argv[11], NULL);
        cfg.cosine_decay = atoi(argv[12]);
        cfg.seed = (uint32_t)strtoul(argv[13], NULL, 10);
        if (strcmp(argv[14], "-") != 0) {
            cfg.order = (const uint32_t *)(void *)slurp(argv[14], &olen);
            if (olen != 4u * cfg.epochs * n) {
                fprintf(stderr, "order file is %u bytes, %u expected\n", (unsigned)olen, (unsigned)(4u * cfg.epochs * n));
                return 2;
            }
        }
        if (len != n * info.input_len || llen != n) {
            fprintf(stderr, "inputs/labels do not hold %u samples\n", (unsigned)n);
            return 2;
        }
        printf("train_bytes=%u\n", (unsigned)ml_train_bytes(n, cfg.batch_size));
        st = ml_train_last_layer(&cfg, (const int8_t *)in, labels, n, &res);
        printf("train_status=%d\n", (int)st);
        if (st != ML_OK) {
            printf("error=%s\n", ml_last_error());
            return 1;
        }
        printf("loss=%.9g\naccuracy=%.9g\nsamples_seen=%u\n", (double)res.last_epoch_loss,
               (double)res.last_epoch_accuracy, (unsigned)res.samples_seen);
        spill(argv[15], res.delta_weight, 4u * (info.weight_numel + info.bias_numel));
        return 0;
    }
    fprintf(stderr, "bad command or argument count\n");
    return 2;
}
