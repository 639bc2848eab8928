/* A tiny JSON reader for exactly the shape ModelInfo.to_bytes writes (json.dumps, sorted keys). */
#include "modelmeta.h"

#include <string.h>

static const uint8_t *find(const uint8_t *hay, uint32_t len, const char *needle)
{
    size_t n = strlen(needle);
    for (uint32_t i = 0; i + n <= len; i++)
        if (memcmp(hay + i, needle, n) == 0)
            return hay + i;
    return NULL;
}

static const uint8_t *skip_ws(const uint8_t *p, const uint8_t *end)
{
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r'))
        p++;
    return p;
}

/* A JSON number (what Python's repr of a float writes) as double. */
static const uint8_t *number(const uint8_t *p, const uint8_t *end, double *out)
{
    bool neg = false;
    double v = 0;
    int exp10 = 0;
    const uint8_t *start = p;
    if (p < end && *p == '-') {
        neg = true;
        p++;
    }
    while (p < end && *p >= '0' && *p <= '9')
        v = v * 10 + (*p++ - '0');
    if (p < end && *p == '.') {
        p++;
        while (p < end && *p >= '0' && *p <= '9') {
            v = v * 10 + (*p++ - '0');
            exp10--;
        }
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        bool eneg = false;
        int e = 0;
        if (p < end && (*p == '-' || *p == '+'))
            eneg = *p++ == '-';
        while (p < end && *p >= '0' && *p <= '9' && e < 400)
            e = e * 10 + (*p++ - '0');
        exp10 += eneg ? -e : e;
    }
    if (p == start)
        return NULL;
    double scale = 1;
    int a = exp10 < 0 ? -exp10 : exp10;
    double base = 10;
    while (a) { /* exact powers of ten up to 1e22, then rounding grows slowly */
        if (a & 1)
            scale *= base;
        base *= base;
        a >>= 1;
    }
    v = exp10 < 0 ? v / scale : v * scale;
    *out = neg ? -v : v;
    return p;
}

static const uint8_t *float_array(const uint8_t *p, const uint8_t *end, float *out, uint32_t max, uint32_t *n)
{
    p = skip_ws(p, end);
    if (p >= end || *p != '[')
        return NULL;
    p = skip_ws(p + 1, end);
    *n = 0;
    if (p < end && *p == ']')
        return p + 1;
    for (;;) {
        double v;
        if (*n == max || (p = number(skip_ws(p, end), end, &v)) == NULL)
            return NULL;
        out[(*n)++] = (float)v;
        p = skip_ws(p, end);
        if (p < end && *p == ']')
            return p + 1;
        if (p >= end || *p != ',')
            return NULL;
        p++;
    }
}

bool meta_read(const uint8_t *model, uint32_t len, model_meta *m)
{
    memset(m, 0, sizeof *m);
    const uint8_t *obj = find(model, len, "{\"architecture\"");
    if (obj == NULL)
        return true; /* no tinyfed metadata: raw inputs, labels as they are */
    const uint8_t *end = model + len;
    const uint8_t *close = obj;
    while (close < end && *close != '}')
        close++;
    if (close == end)
        return false;
    uint32_t span = (uint32_t)(close - obj);
    const uint8_t *p = find(obj, span, "\"input_mean\":");
    uint32_t n_std = 0;
    if (p && float_array(p + 13, close, m->mean, META_MAX_FEATURES, &m->n_norm) == NULL)
        return false;
    p = find(obj, span, "\"input_std\":");
    if (p && float_array(p + 12, close, m->std, META_MAX_FEATURES, &n_std) == NULL)
        return false;
    if (n_std != m->n_norm)
        return false;
    p = find(obj, span, "\"classes\":");
    if (p) {
        p = skip_ws(p + 10, close);
        if (p >= close || *p != '[')
            return false;
        p++;
        for (;;) {
            p = skip_ws(p, close);
            if (p < close && *p == ']')
                break;
            if (p >= close || *p != '"' || m->n_classes == META_MAX_CLASSES)
                return false;
            const uint8_t *s = ++p;
            while (p < close && *p != '"') {
                if (*p == '\\')
                    return false;
                p++;
            }
            if (p >= close || p - s > 255)
                return false;
            m->class_name[m->n_classes] = (const char *)s;
            m->class_len[m->n_classes++] = (uint8_t)(p - s);
            p = skip_ws(p + 1, close);
            if (p < close && *p == ',')
                p++;
        }
    }
    return true;
}
