/* Unit tests of the firmware's pure parts on the host (`make host-test`), against known vectors: zlib's
 * CRC-32, FIPS 180-4's SHA-256, the `cobs` package's encoding, cbor2's canonical bytes, and the index
 * coding's Rice parameter as edge_runtime/wire/index_coding.best_rice_k chooses it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cbor.h"
#include "cobs.h"
#include "crc32.h"
#include "link.h"
#include "sha256.h"
#include "update.h"

void host_feed(const uint8_t *bytes, size_t len);
const uint8_t *host_written(size_t *len);
void host_clear_written(void);

static int failures;
#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                                                    \
            failures++;                                                                                                \
        }                                                                                                              \
    } while (0)

static void hex(const char *text, uint8_t *out, size_t *len)
{
    *len = strlen(text) / 2;
    for (size_t i = 0; i < *len; i++) {
        unsigned v;
        sscanf(text + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
}

static void test_crc_sha(void)
{
    CHECK(tf_crc32(0, (const uint8_t *)"123456789", 9) == 0xCBF43926u);
    uint8_t d[32], want[32];
    size_t n;
    tf_sha256((const uint8_t *)"abc", 3, d);
    hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", want, &n);
    CHECK(memcmp(d, want, 32) == 0);
}

static void test_cobs(void)
{
    const uint8_t in[] = {0x11, 0x22, 0x00, 0x33};
    uint8_t enc[16], dec[16];
    size_t n = tf_cobs_encode(in, 4, enc, sizeof enc);
    const uint8_t want[] = {0x03, 0x11, 0x22, 0x02, 0x33};
    CHECK(n == 5 && memcmp(enc, want, 5) == 0);
    static uint8_t big[1000], bigenc[1100], bigdec[1100];
    srand(7);
    for (int round = 0; round < 200; round++) {
        size_t len = (size_t)(rand() % 1000);
        for (size_t i = 0; i < len; i++)
            big[i] = (uint8_t)(round % 3 == 0 ? 1 + rand() % 255 : rand() % 4);
        size_t e = tf_cobs_encode(big, len, bigenc, sizeof bigenc);
        CHECK(e > 0 && memchr(bigenc, 0, e) == NULL);
        CHECK(tf_cobs_decode(bigenc, e, bigdec) == (long)len && memcmp(big, bigdec, len) == 0);
    }
    const uint8_t bad[] = {0x05, 0x11};
    CHECK(tf_cobs_decode(bad, 2, dec) == -1);
}

static void test_cbor(void)
{
    uint8_t buf[64], want[64];
    size_t n;
    cbor_writer w;
    cbor_w_init(&w, buf, sizeof buf);
    cbor_w_head(&w, CBOR_MAP, 4);
    cbor_w_text(&w, "eval_loss");
    cbor_w_float(&w, 1.0f);
    cbor_w_text(&w, "train_loss");
    cbor_w_float(&w, 2.0f);
    cbor_w_text(&w, "eval_samples");
    cbor_w_float(&w, 3.0f);
    cbor_w_text(&w, "eval_accuracy");
    cbor_w_float(&w, 0.5f);
    hex("a4696576616c5f6c6f7373f93c006a747261696e5f6c6f7373f940006c6576616c5f73616d706c6573f942006d6576616c5f61"
        "63637572616379f93800",
        want, &n);
    CHECK(!w.overflow && w.len == n && memcmp(buf, want, n) == 0);
    cbor_w_init(&w, buf, sizeof buf);
    cbor_w_float(&w, 0.1f);
    cbor_w_uint(&w, 1000);
    cbor_w_int(&w, -500);
    hex("fa3dcccccd1903e83901f3", want, &n);
    CHECK(w.len == n && memcmp(buf, want, n) == 0);
    cbor_w_init(&w, buf, 3);
    cbor_w_text(&w, "four");
    CHECK(w.overflow);
    /* {0: 16, 1: 1, 7: 4096, 9: [1, 2]} */
    uint8_t msg[] = {0xa4, 0x00, 0x10, 0x01, 0x01, 0x07, 0x19, 0x10, 0x00, 0x09, 0x82, 0x01, 0x02};
    cbor_item v[8];
    uint64_t u;
    CHECK(cbor_map_index(msg, msg + sizeof msg, v, 8));
    CHECK(cbor_get_uint(&v[7], 1u << 20, &u) && u == 4096);
    CHECK(v[1].p != NULL && v[2].p == NULL);
    CHECK(!cbor_map_index(msg, msg + sizeof msg - 1, v, 8)); /* truncated */
    uint8_t deep[40];
    memset(deep, 0x81, sizeof deep); /* [[[[... without an end */
    CHECK(cbor_skip(deep, deep + sizeof deep, 1000) == NULL);
    double d;
    uint8_t half[] = {0xf9, 0x3c, 0x00};
    cbor_item it;
    CHECK(cbor_head(half, half + 3, &it) && cbor_get_number(&it, &d) && d == 1.0);
    /* Counts near 2^64 must not wrap the items still owed: a map of 2^63 entries (2 x 2^63 = 0 mod 2^64) or
     * an array of 2^64 - 1 items inside an array of one are no empty containers. */
    uint8_t huge_map[] = {0xbb, 0x80, 0, 0, 0, 0, 0, 0, 0};
    CHECK(cbor_skip(huge_map, huge_map + sizeof huge_map, 1000) == NULL);
    uint8_t huge_array[] = {0x82, 0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    CHECK(cbor_skip(huge_array, huge_array + sizeof huge_array, 1000) == NULL);
    /* {0: 16, 1: 1, 9: <map of 2^63 entries>}: the index must refuse it, not read it as empty */
    uint8_t hidden[] = {0xa3, 0x00, 0x10, 0x01, 0x01, 0x09, 0xbb, 0x80, 0, 0, 0, 0, 0, 0, 0};
    CHECK(!cbor_map_index(hidden, hidden + sizeof hidden, v, 8));
}

static void test_frames(void)
{
    uint8_t frame[64];
    const uint8_t payload[] = {0xa1, 0x00, 0x17};
    size_t n = link_encode_frame(23, 5, 4, 1, payload, 3, frame, sizeof frame);
    CHECK(n > 0 && frame[n - 1] == 0);
    uint8_t h[LINK_HEADER];
    long len = link_decode_frame(frame, n - 1, h);
    CHECK(len == 3 && h[1] == 23 && h[2] == 5 && h[3] == 4 && memcmp(frame + LINK_HEADER, payload, 3) == 0);
    n = link_encode_frame(23, 5, 4, 1, payload, 3, frame, sizeof frame);
    frame[3] ^= 0x40;
    CHECK(link_decode_frame(frame, n - 1, h) == -1); /* CRC */
    /* a host frame in order is delivered and acknowledged */
    link_init(115200);
    n = link_encode_frame(16, 0, 0, 2, payload, 3, frame, sizeof frame);
    host_feed(frame, n);
    host_clear_written();
    static link_message m;
    CHECK(link_poll(&m) && m.type == 16 && m.len == 3);
    size_t wl;
    const uint8_t *ack = host_written(&wl);
    uint8_t copy[64];
    memcpy(copy, ack, wl);
    CHECK(wl > 0 && link_decode_frame(copy, wl - 1, h) == 0 && h[1] == 0 && h[3] == 0 && (h[4] & 1));
    /* the same frame again is a resend: acknowledged, not delivered */
    n = link_encode_frame(16, 0, 0, 0, payload, 3, frame, sizeof frame);
    host_feed(frame, n);
    CHECK(!link_poll(&m));
    /* A frame with a good CRC whose payload exceeds LINK_MAX_PAYLOAD still fits the receive buffer when it is
     * mostly zeros (COBS spends one byte per zero): it must be dropped, not copied over the message's end. */
    static uint8_t big[LINK_MAX_PAYLOAD + 64], bigframe[LINK_MAX_ENCODED + 64];
    link_init(115200);
    size_t over = LINK_MAX_ENCODED - LINK_OVERHEAD - 1; /* all zeros: encoded = decoded + 1 */
    CHECK(over > LINK_MAX_PAYLOAD);
    memset(big, 0, sizeof big);
    n = link_encode_frame(16, 0, 0, 2, big, over, bigframe, sizeof bigframe);
    CHECK(n > 0 && n - 1 <= LINK_MAX_ENCODED); /* reaches the decoder: no longer than the receive buffer */
    host_feed(bigframe, n);
    CHECK(!link_poll(&m));
    CHECK(link_get_stats()->bad_frames == 1);
    /* the largest payload the board buffers still arrives */
    memset(big, 0, sizeof big);
    n = link_encode_frame(16, 0, 0, 2, big, LINK_MAX_PAYLOAD, bigframe, sizeof bigframe);
    host_feed(bigframe, n);
    CHECK(link_poll(&m) && m.len == LINK_MAX_PAYLOAD);
}

static void test_rice_k(void)
{
    const uint16_t g1[] = {3, 0, 7, 12, 1, 40, 2, 2, 9};
    CHECK(upd_best_rice_k(g1, 9) == 3);
    uint16_t g2[100];
    for (int i = 0; i < 100; i++)
        g2[i] = (uint16_t)(i % 17);
    CHECK(upd_best_rice_k(g2, 100) == 2);
}

int main(void)
{
    test_crc_sha();
    test_cobs();
    test_cbor();
    test_frames();
    test_rice_k();
    if (failures) {
        printf("%d check(s) failed\n", failures);
        return 1;
    }
    printf("firmware host tests: all checks passed\n");
    return 0;
}
