/* Stop-and-wait link over COBS frames (docs/serial-protocol.md "Frame" and "Link"), one buffer per direction. */
#ifndef TF_LINK_H
#define TF_LINK_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LINK_MAX_PAYLOAD 4096 /* the largest frame payload this firmware buffers (HELLO's max_frame) */
#define LINK_DEFAULT_PAYLOAD 1024
#define LINK_HEADER 5
#define LINK_OVERHEAD 9
#define LINK_MAX_ENCODED (LINK_MAX_PAYLOAD + LINK_OVERHEAD + (LINK_MAX_PAYLOAD + LINK_OVERHEAD) / 254 + 2)
#define LINK_RETRIES 8

typedef struct {
    uint8_t type;
    uint16_t len;
    uint8_t payload[LINK_MAX_PAYLOAD];
} link_message;

typedef struct {
    uint32_t frames_sent, retransmissions, frames_received, bad_frames, duplicates, dropped_busy;
} link_stats;

void link_init(uint32_t baud);
/* The payload size the peer agreed to (HELLO); sends never exceed it. */
void link_set_max_payload(uint16_t n);
uint16_t link_max_payload(void);
/* Reads the UART; returns true when a new in-order message was delivered into *out (and acknowledged). */
bool link_poll(link_message *out);
/* Sends one message and waits for its acknowledgement (8 retries, growing timeouts); false: peer silent. */
bool link_send(uint8_t type, const uint8_t *payload, size_t len);
const link_stats *link_get_stats(void);

/* Pure parts, unit-tested on the host. */
size_t link_encode_frame(uint8_t type, uint8_t seq, uint8_t ack, uint8_t flags, const uint8_t *payload, size_t len,
                         uint8_t *out, size_t cap);
/* Decodes one frame's bytes (between delimiters) in place; returns payload length or -1 if dropped. */
long link_decode_frame(uint8_t *buf, size_t len, uint8_t header[LINK_HEADER]);

#endif
