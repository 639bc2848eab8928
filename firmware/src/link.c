/* The board's end of the link: the same rules as firmware_bridge/link.py, single-threaded.
 *
 * While the board waits for the acknowledgement of its own frame it keeps reading: acknowledgements are
 * taken, and one data frame from the host is delivered into a spare buffer (and acknowledged) so a host that
 * sends before it hears the board's frame is not kept waiting for its timeout. A second one is dropped
 * unacknowledged; the host resends it. Frames are COBS-encoded as they are written, through a 255-byte
 * block, so sending needs no second copy of the payload. */
#include "link.h"

#include <string.h>

#include "cobs.h"
#include "crc32.h"
#include "platform.h"

#define FLAG_ACK 0x01
#define FLAG_START 0x02
#define TYPE_ACK 0

static uint8_t rx_buf[LINK_MAX_ENCODED];
static size_t rx_len;
static bool rx_dropping;
static link_message spare; /* a host frame that arrived while the board was sending */
static bool spare_full;

static uint32_t baud_rate = 115200;
static uint16_t max_payload = LINK_DEFAULT_PAYLOAD;
static uint8_t send_seq;
static bool session_started;
static int expect_seq = -1;    /* -1 after a boot: the first frame heard sets the numbering */
static int last_delivered = -1;
static bool last_was_start;
static int acked_seq = -1;
static bool nudged;
static link_stats stats;

void link_init(uint32_t baud)
{
    baud_rate = baud;
    max_payload = LINK_DEFAULT_PAYLOAD;
    send_seq = 0;
    session_started = false;
    expect_seq = last_delivered = acked_seq = -1;
    last_was_start = nudged = spare_full = rx_dropping = false;
    rx_len = 0;
    memset(&stats, 0, sizeof stats);
}

void link_set_max_payload(uint16_t n) { max_payload = n > LINK_MAX_PAYLOAD ? LINK_MAX_PAYLOAD : n; }
uint16_t link_max_payload(void) { return max_payload; }
const link_stats *link_get_stats(void) { return &stats; }

/* -- frames ------------------------------------------------------------------------------------------------ */
typedef struct {
    uint8_t block[255];
    uint8_t n; /* data bytes in block[1..] */
    uint8_t *out;
    size_t cap, len;
    bool overflow;
} cobs_stream;

static void cs_emit(cobs_stream *s, const uint8_t *data, size_t len)
{
    if (s->out == NULL) {
        plat_write(data, len);
        s->len += len;
        return;
    }
    if (s->cap - s->len < len) {
        s->overflow = true;
        return;
    }
    memcpy(s->out + s->len, data, len);
    s->len += len;
}

static void cs_flush(cobs_stream *s)
{
    s->block[0] = (uint8_t)(s->n + 1);
    cs_emit(s, s->block, (size_t)s->n + 1);
    s->n = 0;
}

static void cs_put(cobs_stream *s, const uint8_t *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (data[i] == 0) {
            cs_flush(s);
        } else {
            s->block[1 + s->n++] = data[i];
            if (s->n == 254)
                cs_flush(s);
        }
    }
}

/* Writes the frame to `out` (cap bytes), or to the UART when out is NULL. Returns bytes on the line. */
static size_t write_frame(uint8_t type, uint8_t seq, uint8_t ack, uint8_t flags, const uint8_t *payload, size_t len,
                          uint8_t *out, size_t cap)
{
    cobs_stream s = {.n = 0, .out = out, .cap = cap, .len = 0, .overflow = false};
    uint8_t header[LINK_HEADER] = {1, type, seq, ack, flags};
    uint32_t crc = tf_crc32(0, header, LINK_HEADER);
    crc = tf_crc32(crc, payload, len);
    uint8_t tail[4] = {(uint8_t)crc, (uint8_t)(crc >> 8), (uint8_t)(crc >> 16), (uint8_t)(crc >> 24)};
    cs_put(&s, header, LINK_HEADER);
    cs_put(&s, payload, len);
    cs_put(&s, tail, 4);
    cs_flush(&s);
    uint8_t zero = 0;
    cs_emit(&s, &zero, 1);
    return s.overflow ? 0 : s.len;
}

size_t link_encode_frame(uint8_t type, uint8_t seq, uint8_t ack, uint8_t flags, const uint8_t *payload, size_t len,
                         uint8_t *out, size_t cap)
{
    return write_frame(type, seq, ack, flags, payload, len, out, cap);
}

long link_decode_frame(uint8_t *buf, size_t len, uint8_t header[LINK_HEADER])
{
    long n = tf_cobs_decode(buf, len, buf);
    if (n < LINK_OVERHEAD)
        return -1;
    size_t body = (size_t)n - 4;
    uint32_t crc = (uint32_t)buf[body] | (uint32_t)buf[body + 1] << 8 | (uint32_t)buf[body + 2] << 16 |
                   (uint32_t)buf[body + 3] << 24;
    /* A good CRC does not make a frame fit: a payload of zeros takes one line byte each, so the receive
     * buffer holds frames whose payload exceeds LINK_MAX_PAYLOAD by up to its COBS allowance. */
    if (tf_crc32(0, buf, body) != crc || buf[0] != 1 || body - LINK_HEADER > LINK_MAX_PAYLOAD)
        return -1;
    memcpy(header, buf, LINK_HEADER);
    return (long)(body - LINK_HEADER);
}

/* -- receiving ----------------------------------------------------------------------------------------------- */
static void send_bare_ack(void)
{
    if (last_delivered < 0)
        return;
    write_frame(TYPE_ACK, 0, (uint8_t)last_delivered, FLAG_ACK, NULL, 0, NULL, 0);
}

/* One frame's bytes arrived; deliver into inbox if given (and the frame is new and in order). */
static bool on_frame(link_message *inbox)
{
    uint8_t h[LINK_HEADER];
    long n = link_decode_frame(rx_buf, rx_len, h);
    if (n < 0) {
        stats.bad_frames++;
        send_bare_ack(); /* a negative acknowledgement in all but name */
        return false;
    }
    uint8_t type = h[1], seq = h[2], ack = h[3], flags = h[4];
    if (flags & FLAG_ACK) {
        acked_seq = ack;
        if (type == TYPE_ACK && ack != send_seq)
            nudged = true;
    }
    if (type == TYPE_ACK)
        return false;
    stats.frames_received++;
    bool start = flags & FLAG_START;
    bool resent_start = start && last_was_start && seq == last_delivered;
    bool in_order = expect_seq < 0 || seq == expect_seq || (start && !resent_start);
    if (in_order && inbox == NULL) {
        stats.dropped_busy++; /* no buffer free: not acknowledged, the host resends it */
        return false;
    }
    if (in_order) {
        last_delivered = seq;
        last_was_start = start;
        expect_seq = (seq + 1) & 0xFF;
        inbox->type = type;
        inbox->len = (uint16_t)n;
        memcpy(inbox->payload, rx_buf + LINK_HEADER, (size_t)n);
    } else {
        stats.duplicates++;
    }
    send_bare_ack();
    return in_order;
}

/* Reads what the UART has; stops after delivering one message into inbox. */
static bool pump(link_message *inbox)
{
    int c;
    while ((c = plat_getc()) >= 0) {
        if (c != 0) {
            if (rx_dropping)
                continue;
            if (rx_len == sizeof rx_buf) {
                rx_dropping = true; /* longer than any frame: discard up to the next delimiter */
                rx_len = 0;
                continue;
            }
            rx_buf[rx_len++] = (uint8_t)c;
            continue;
        }
        bool got = false;
        if (!rx_dropping && rx_len)
            got = on_frame(inbox);
        rx_len = 0;
        rx_dropping = false;
        if (got)
            return true;
    }
    return false;
}

bool link_poll(link_message *out)
{
    if (spare_full) {
        memcpy(out, &spare, sizeof spare - sizeof spare.payload + spare.len);
        spare_full = false;
        return true;
    }
    return pump(out);
}

/* -- sending ------------------------------------------------------------------------------------------------- */
static uint32_t line_ms(size_t bytes) { return (uint32_t)((uint64_t)bytes * 10000u / baud_rate); }

bool link_send(uint8_t type, const uint8_t *payload, size_t len)
{
    if (len > max_payload)
        return false;
    bool start = !session_started;
    if (start)
        send_seq = 0;
    uint8_t seq = send_seq;
    unsigned timeouts = 0, nudges = 0, attempt = 0;
    while (timeouts <= LINK_RETRIES && nudges <= 64) {
        uint8_t flags = (uint8_t)((last_delivered >= 0 ? FLAG_ACK : 0) | (start ? FLAG_START : 0));
        uint8_t ack = last_delivered >= 0 ? (uint8_t)last_delivered : 0;
        nudged = false;
        acked_seq = -1;
        size_t bytes = write_frame(type, seq, ack, flags, payload, len, NULL, 0);
        uint32_t sent = plat_millis();
        uint32_t earliest_nak = sent + line_ms(bytes);
        uint32_t rto = 2 * line_ms(bytes + LINK_OVERHEAD + 2) + 50;
        uint32_t deadline = sent + rto * (1 + timeouts);
        stats.frames_sent++;
        if (attempt)
            stats.retransmissions++;
        attempt++;
        for (;;) {
            pump(spare_full ? NULL : &spare) ? (void)(spare_full = true) : (void)0;
            if (acked_seq == seq) {
                send_seq = (uint8_t)(seq + 1);
                session_started = true;
                return true;
            }
            uint32_t now = plat_millis();
            if (nudged && (int32_t)(now - earliest_nak) >= 0) {
                nudges++;
                break;
            }
            nudged = false;
            if ((int32_t)(now - deadline) >= 0) {
                timeouts++;
                break;
            }
        }
    }
    return false;
}
