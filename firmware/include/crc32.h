/* CRC-32 (IEEE 802.3, reflected 0xEDB88320, zlib's crc32): the frame check of the serial protocol. */
#ifndef TF_CRC32_H
#define TF_CRC32_H
#include <stddef.h>
#include <stdint.h>

/* crc = tf_crc32(0, data, n) for a whole buffer; pass the previous result to continue it. */
uint32_t tf_crc32(uint32_t crc, const uint8_t *data, size_t len);

#endif
