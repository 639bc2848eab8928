/* A bounded printf subset (%u %d %s %x %02x %%) for ERROR and LOG details: newlib's printf family may
 * allocate, and this firmware never does. */
#ifndef TF_FMT_H
#define TF_FMT_H
#include <stddef.h>

int tf_snprintf(char *buf, size_t size, const char *fmt, ...);

#endif
