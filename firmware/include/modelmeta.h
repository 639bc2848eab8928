/* The tinyfed metadata inside a model (edge_runtime/model/info.py: JSON with input_mean, input_std and
 * classes): what the board needs to turn its raw samples into the model's int8 input and its labels into
 * the model's class indices. Read by a bounded scan of the model bytes for the JSON object. */
#ifndef TF_MODELMETA_H
#define TF_MODELMETA_H
#include <stdbool.h>
#include <stdint.h>

#define META_MAX_FEATURES 64 /* normalised features (channels); the mean/std vectors' bound */
#define META_MAX_CLASSES 32

typedef struct {
    uint32_t n_norm;                 /* 0: the model takes raw values */
    float mean[META_MAX_FEATURES];
    float std[META_MAX_FEATURES];
    uint32_t n_classes;              /* 0: labels are used as they are */
    const char *class_name[META_MAX_CLASSES]; /* into the model bytes (JSON string contents, unescaped ASCII) */
    uint8_t class_len[META_MAX_CLASSES];
} model_meta;

/* false if the metadata is present but not understood (too many features, escapes in names). */
bool meta_read(const uint8_t *model, uint32_t len, model_meta *out);

#endif
