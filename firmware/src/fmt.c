#include "fmt.h"

#include <stdarg.h>
#include <stdint.h>

static void put(char *buf, size_t size, size_t *n, char c)
{
    if (*n + 1 < size)
        buf[*n] = c;
    (*n)++;
}

int tf_snprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    size_t n = 0;
    va_start(ap, fmt);
    for (const char *p = fmt; *p; p++) {
        if (*p != '%') {
            put(buf, size, &n, *p);
            continue;
        }
        p++;
        char pad = ' ';
        unsigned width = 0;
        if (*p == '0') {
            pad = '0';
            p++;
        }
        while (*p >= '0' && *p <= '9')
            width = width * 10 + (unsigned)(*p++ - '0');
        char digits[12];
        unsigned nd = 0;
        if (*p == 's') {
            const char *s = va_arg(ap, const char *);
            while (s && *s)
                put(buf, size, &n, *s++);
            continue;
        }
        if (*p == '%') {
            put(buf, size, &n, '%');
            continue;
        }
        uint32_t v;
        int neg = 0;
        if (*p == 'd') {
            int x = va_arg(ap, int);
            neg = x < 0;
            v = neg ? (uint32_t)(-(int64_t)x) : (uint32_t)x;
        } else {
            v = va_arg(ap, unsigned);
        }
        unsigned base = *p == 'x' ? 16 : 10;
        do {
            digits[nd++] = "0123456789abcdef"[v % base];
            v /= base;
        } while (v);
        if (neg)
            put(buf, size, &n, '-');
        while (width > nd) {
            put(buf, size, &n, pad);
            width--;
        }
        while (nd)
            put(buf, size, &n, digits[--nd]);
        if (*p == '\0')
            break;
    }
    va_end(ap);
    if (size)
        buf[n < size ? n : size - 1] = '\0';
    return (int)n;
}
