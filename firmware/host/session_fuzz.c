/* The board's session, link and flash store fed hostile requests on the host (`make session-fuzz`, built with
 * AddressSanitizer and UBSan; tests/test_firmware_fuzz.py runs it).
 *
 * Why: the serial line is untrusted input, and a memory error in the decoders would not crash QEMU, it would
 * corrupt the board silently. Each request is a valid frame (so it reaches the session) carrying a message
 * mutated from a well-formed one: bytes flipped, cut short, spliced, heads rewritten to huge counts, the frame
 * type swapped. The harness plays the host: it acknowledges every frame the board sends and checks that
 * every request but MODEL_DATA gets exactly one answer, and that the installed model (argv[3], if given)
 * stays in flash intact. Usage: session_fuzz ITERATIONS SEED [MODEL.tflite [DATA.tfds]] (the data as hil/qemu.py's
 * dataset_blob writes it: TRAIN then trains); exit 0 when every check held. */
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>

#include "../src/session.c"

static uint64_t error_code(void);

/* -- the platform: a byte queue in, frames out, flash in an array ------------------------------------------- */
static uint8_t inq[1 << 16];
static size_t in_head, in_tail;
static uint8_t outbuf[LINK_MAX_ENCODED + 16];
static size_t out_len;
static uint8_t answers[64];
static unsigned n_answers;
static uint8_t last_answer[LINK_MAX_PAYLOAD];
static long last_answer_len;
static uint32_t clock_ms;
static jmp_buf rebooted;
static uint8_t flash[STORE_FLASH_BYTES];
static uint8_t scratch[64 * 1024];
static int failures;
static unsigned long by_type[256], by_code[256]; /* what the board answered over the run: coverage, printed */

static void push(const uint8_t *data, size_t len)
{
    if (in_tail + len > sizeof inq) {
        printf("FAIL input queue overflow\n");
        exit(2);
    }
    memcpy(inq + in_tail, data, len);
    in_tail += len;
}

int plat_getc(void)
{
    if (in_head == in_tail) {
        in_head = in_tail = 0;
        return -1;
    }
    return inq[in_head++];
}

/* Every frame the board sends is decoded; data frames are acknowledged at once, their types recorded. */
void plat_write(const uint8_t *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (data[i] != 0) {
            if (out_len < sizeof outbuf)
                outbuf[out_len++] = data[i];
            continue;
        }
        uint8_t h[LINK_HEADER];
        size_t encoded = out_len;
        out_len = 0;
        long n = link_decode_frame(outbuf, encoded, h);
        if (n < 0) {
            printf("FAIL the board sent a frame that does not decode\n");
            failures++;
            continue;
        }
        if (h[1] == 0)
            continue;
        if (n_answers < sizeof answers)
            answers[n_answers++] = h[1];
        if (h[1] != MSG_LOG) {
            memcpy(last_answer, outbuf + LINK_HEADER, (size_t)n);
            last_answer_len = n;
            by_type[h[1]]++;
            if (h[1] == MSG_ERROR)
                by_code[error_code()]++;
        }
        uint8_t ack[32];
        size_t an = link_encode_frame(0, 0, h[2], 0x01, NULL, 0, ack, sizeof ack);
        push(ack, an);
    }
}

uint32_t plat_millis(void) { return clock_ms += 1; }
uint64_t plat_counter(void) { return clock_ms; }
const char *plat_counter_name(void) { return "host"; }
void plat_reset(uint8_t reason)
{
    (void)reason;
    longjmp(rebooted, 1);
}
uint8_t plat_reset_reason(void) { return 0; }
const uint8_t *plat_flash(void) { return flash; }
uint32_t plat_flash_size(void) { return sizeof flash; }
bool plat_flash_write(uint32_t offset, const uint8_t *data, uint32_t len)
{
    if (offset > sizeof flash || len > sizeof flash - offset) {
        printf("FAIL flash write of %u B at %u is outside the flash\n", (unsigned)len, (unsigned)offset);
        failures++;
        return false;
    }
    memcpy(flash + offset, data, len);
    return true;
}
static uint8_t data_blob[1 << 20];
static uint32_t data_len;
const uint8_t *plat_dataset(uint32_t *len)
{
    *len = data_len;
    return data_len ? data_blob : NULL;
}
uint8_t *plat_scratch(uint32_t *len)
{
    *len = sizeof scratch;
    return scratch;
}
const char *plat_board_id(void) { return "fuzz-board"; }
uint32_t plat_stack_unused(void) { return 0; }
void plat_ram_figures(ram_figures *r)
{
    r->ram = 262144;
    r->data = 128;
    r->bss = 175168;
    r->stack = 16384;
    r->stack_used = 0;
    r->reserved = 256;
}

/* -- the host's side ---------------------------------------------------------------------------------------- */
static uint8_t host_seq;
static bool host_started;

static void boot(void)
{
    memset(&s, 0, sizeof s);
    link_init(115200);
    load_installed();
    host_started = false;
}

/* Sends one request frame and serves it; returns how many frames (LOGs excluded) the board answered with. */
static unsigned request(uint8_t type, const uint8_t *payload, size_t len)
{
    static uint8_t frame[LINK_MAX_ENCODED + 16];
    uint8_t flags = host_started ? 0 : 0x02;
    if (!host_started)
        host_seq = 0;
    /* type 0 is a bare acknowledgement: whatever it carries, it takes no sequence number and gets no answer */
    size_t n = link_encode_frame(type, type ? host_seq++ : 0, 0, type ? flags : 0x01, payload, len, frame, sizeof frame);
    if (type)
        host_started = true;
    push(frame, n);
    n_answers = 0;
    if (setjmp(rebooted)) {
        boot();
        return 1; /* RESET: the board rebooted, as asked */
    }
    while (in_head != in_tail)
        if (link_poll(&msg))
            dispatch();
    unsigned real = 0;
    for (unsigned i = 0; i < n_answers; i++) /* an UPDATE in FRAGMENTs is one answer in pieces */
        real += answers[i] != MSG_LOG && !(answers[i] == MSG_FRAGMENT && i && answers[i - 1] == MSG_FRAGMENT);
    return real;
}

static size_t m_head(cbor_writer *w, uint8_t *buf, size_t cap, uint32_t entries, uint8_t type)
{
    cbor_w_init(w, buf, cap);
    cbor_w_head(w, CBOR_MAP, entries);
    cbor_w_uint(w, 0);
    cbor_w_uint(w, type);
    cbor_w_uint(w, 1);
    cbor_w_uint(w, 1);
    return 0;
}

static uint8_t model[STORE_SLOT_BYTES];
static size_t model_len;
static uint8_t model_sha[32];

static uint32_t hello_max; /* HELLO's max_frame, or 0 for a random one */
static bool train_dense;   /* TRAIN: every entry, int8 (an update that needs fragments over small frames) */

static size_t seed_message(int kind, uint8_t *buf, size_t cap, uint8_t *type, uint32_t offset)
{
    cbor_writer w;
    static const uint8_t task_id[16] = "fuzz-task-000001";
    uint8_t junk[32];
    memset(junk, 0xAB, sizeof junk);
    switch (kind) {
    case 0:
        *type = MSG_HELLO;
        m_head(&w, buf, cap, 8, MSG_HELLO);
        cbor_w_uint(&w, 2), cbor_w_uint(&w, 0), cbor_w_uint(&w, 3), cbor_w_uint(&w, 0), cbor_w_uint(&w, 4);
        cbor_w_uint(&w, 0), cbor_w_uint(&w, 5), cbor_w_text(&w, "fuzz"), cbor_w_uint(&w, 6), cbor_w_uint(&w, 1);
        cbor_w_uint(&w, 7), cbor_w_uint(&w, hello_max ? hello_max : rand() % 2 ? 4096 : 64 + (uint32_t)(rand() % 200));
        break;
    case 1:
        *type = MSG_STATUS;
        m_head(&w, buf, cap, 2, MSG_STATUS);
        break;
    case 2:
        *type = MSG_MODEL_BEGIN;
        m_head(&w, buf, cap, 4, MSG_MODEL_BEGIN);
        cbor_w_uint(&w, 2), cbor_w_bytes(&w, rand() % 2 && model_len ? model_sha : junk, 32);
        cbor_w_uint(&w, 3), cbor_w_uint(&w, rand() % 8 == 0 ? STORE_SLOT_BYTES + 1 : model_len ? model_len : 100);
        break;
    case 3: {
        *type = MSG_MODEL_DATA;
        m_head(&w, buf, cap, 4, MSG_MODEL_DATA);
        size_t chunk = (size_t)(rand() % 900);
        size_t have = model_len > offset ? model_len - offset : 0;
        cbor_w_uint(&w, 2), cbor_w_uint(&w, offset), cbor_w_uint(&w, 3);
        cbor_w_bytes(&w, model + (model_len > offset ? offset : 0), chunk < have ? chunk : have);
        break;
    }
    case 4:
        *type = MSG_MODEL_COMMIT;
        m_head(&w, buf, cap, 3, MSG_MODEL_COMMIT);
        cbor_w_uint(&w, 2), cbor_w_bytes(&w, rand() % 2 && model_len ? model_sha : junk, 32);
        break;
    case 5: {
        *type = MSG_INFER;
        m_head(&w, buf, cap, 3, MSG_INFER);
        uint8_t x[128];
        memset(x, rand() & 0xFF, sizeof x);
        cbor_w_uint(&w, 2), cbor_w_head(&w, CBOR_TAG, 72), cbor_w_bytes(&w, x, (size_t)(rand() % 2 ? 64 : rand() % 128));
        break;
    }
    case 7:
        *type = MSG_PATCH_BEGIN;
        m_head(&w, buf, cap, 6, MSG_PATCH_BEGIN);
        cbor_w_uint(&w, 2), cbor_w_bytes(&w, rand() % 4 == 0 && model_len ? model_sha : junk, 32);
        cbor_w_uint(&w, 3), cbor_w_bytes(&w, rand() % 4 && model_len ? model_sha : junk, 32);
        cbor_w_uint(&w, 4), cbor_w_uint(&w, rand() % 8 == 0 ? STORE_SLOT_BYTES : (uint64_t)(rand() % 2000));
        cbor_w_uint(&w, 5), cbor_w_uint(&w, rand() % 4 == 0 ? (uint64_t)(rand() % 100000) : model_len);
        break;
    default:
        *type = MSG_TRAIN;
        m_head(&w, buf, cap, 3, MSG_TRAIN);
        cbor_w_uint(&w, 2), cbor_w_head(&w, CBOR_MAP, 9);
        cbor_w_uint(&w, 0), cbor_w_text(&w, "fuzz-task"), cbor_w_uint(&w, 2), cbor_w_bytes(&w, task_id, 16);
        cbor_w_uint(&w, 3), cbor_w_uint(&w, 1), cbor_w_uint(&w, 4), cbor_w_bytes(&w, model_len ? model_sha : junk, 32);
        cbor_w_uint(&w, 5), cbor_w_uint(&w, 1), cbor_w_uint(&w, 6), cbor_w_float(&w, 0.05f);
        cbor_w_uint(&w, 7), cbor_w_float(&w, train_dense || rand() % 2 ? 1.0f : 0.1f), cbor_w_uint(&w, 8);
        cbor_w_uint(&w, 2000000000u), cbor_w_uint(&w, 12), cbor_w_uint(&w, train_dense ? VC_INT8 : (uint64_t)(rand() % 5));
        break;
    }
    return w.overflow ? 0 : w.len;
}

static size_t mutate(uint8_t *buf, size_t len, size_t cap, uint8_t *type)
{
    int edits = 1 + rand() % 4;
    for (int e = 0; e < edits && len; e++) {
        size_t at = (size_t)rand() % len;
        switch (rand() % 8) {
        case 0: /* flip a bit */
            buf[at] ^= (uint8_t)(1u << (rand() % 8));
            break;
        case 1: /* cut short */
            len = at;
            break;
        case 2: /* a head of a huge count or length */
            buf[at] = (uint8_t)((buf[at] & 0xE0) | (27 - rand() % 4));
            break;
        case 3: /* a random byte */
            buf[at] = (uint8_t)rand();
            break;
        case 4: /* a deep nest of arrays or maps */
            for (size_t i = at; i < len && i < at + 64; i++)
                buf[i] = rand() % 2 ? 0x81 : 0xA1;
            break;
        case 5: /* a duplicate of a run of bytes */
            if (len < cap / 2) {
                size_t run = (size_t)rand() % (len - at) + 1;
                memmove(buf + at + run, buf + at, len - at);
                len += run;
            }
            break;
        case 6: /* the frame says another type */
            *type = (uint8_t)(rand() % 4 ? 16 + rand() % 11 : rand() % 256);
            break;
        default: /* indefinite lengths, reserved infos, breaks */
            buf[at] = (uint8_t)((buf[at] & 0xE0) | (28 + rand() % 4));
            break;
        }
    }
    return len;
}

/* Streams the model (when given) and commits it; true if the board then runs it. */
static bool install_model(void)
{
    static uint8_t buf[LINK_MAX_PAYLOAD];
    uint8_t type;
    cbor_writer w;
    m_head(&w, buf, sizeof buf, 4, MSG_MODEL_BEGIN);
    cbor_w_uint(&w, 2), cbor_w_bytes(&w, model_sha, 32), cbor_w_uint(&w, 3), cbor_w_uint(&w, model_len);
    request(MSG_MODEL_BEGIN, buf, w.len);
    for (size_t at = 0; at < model_len; at += 900) {
        m_head(&w, buf, sizeof buf, 4, MSG_MODEL_DATA);
        cbor_w_uint(&w, 2), cbor_w_uint(&w, at), cbor_w_uint(&w, 3);
        cbor_w_bytes(&w, model + at, model_len - at < 900 ? model_len - at : 900);
        request(MSG_MODEL_DATA, buf, w.len);
    }
    size_t n = seed_message(4, buf, sizeof buf, &type, 0);
    m_head(&w, buf, sizeof buf, 3, MSG_MODEL_COMMIT);
    cbor_w_uint(&w, 2), cbor_w_bytes(&w, model_sha, 32);
    (void)n;
    request(MSG_MODEL_COMMIT, buf, w.len);
    return s.loaded && memcmp(s.active.sha256, model_sha, 32) == 0;
}

static uint64_t error_code(void);

/* Patches of random Rice bits (in a well-formed patch message against the installed model) streamed and
 * committed: each is refused with BAD_PATCH or HASH_MISMATCH, and the installed model stays. The decoder reads
 * every bit within its part, so ASan sees any read past the patch. */
static void directed_patches(unsigned rounds)
{
    static uint8_t patch[2048], buf[LINK_MAX_PAYLOAD];
    uint8_t target[32], bits[600];
    cbor_writer w;
    for (unsigned r = 0; r < rounds && model_len; r++) {
        for (unsigned i = 0; i < 32; i++)
            target[i] = (uint8_t)rand();
        size_t plen = (size_t)(rand() % 600), dlen = (size_t)(rand() % 600);
        for (size_t i = 0; i < sizeof bits; i++)
            bits[i] = (uint8_t)(rand() % 3 ? rand() : 0); /* zeros often: short unary codes */
        uint32_t count = (uint32_t)(rand() % 4 ? rand() % 800 : rand());
        cbor_w_init(&w, patch, sizeof patch);
        cbor_w_head(&w, CBOR_MAP, 10);
        cbor_w_uint(&w, 0), cbor_w_uint(&w, 11), cbor_w_uint(&w, 1), cbor_w_uint(&w, 1);
        cbor_w_uint(&w, 2), cbor_w_bytes(&w, model_sha, 32), cbor_w_uint(&w, 3), cbor_w_bytes(&w, target, 32);
        cbor_w_uint(&w, 4), cbor_w_uint(&w, rand() % 16 ? model_len : (uint64_t)rand());
        cbor_w_uint(&w, 5), cbor_w_uint(&w, count), cbor_w_uint(&w, 6), cbor_w_uint(&w, (uint64_t)(rand() % 32));
        cbor_w_uint(&w, 7), cbor_w_bytes(&w, bits, plen), cbor_w_uint(&w, 8), cbor_w_uint(&w, (uint64_t)(rand() % 9));
        cbor_w_uint(&w, 9), cbor_w_bytes(&w, bits + (sizeof bits - dlen), dlen);
        size_t n = w.len;
        if (rand() % 8 == 0)
            n = (size_t)rand() % n; /* truncated */
        m_head(&w, buf, sizeof buf, 6, MSG_PATCH_BEGIN);
        cbor_w_uint(&w, 2), cbor_w_bytes(&w, target, 32), cbor_w_uint(&w, 3), cbor_w_bytes(&w, model_sha, 32);
        cbor_w_uint(&w, 4), cbor_w_uint(&w, n), cbor_w_uint(&w, 5), cbor_w_uint(&w, model_len);
        request(MSG_PATCH_BEGIN, buf, w.len);
        for (size_t at = 0; at < n; at += 900) {
            m_head(&w, buf, sizeof buf, 4, MSG_MODEL_DATA);
            cbor_w_uint(&w, 2), cbor_w_uint(&w, at), cbor_w_uint(&w, 3);
            cbor_w_bytes(&w, patch + at, n - at < 900 ? n - at : 900);
            request(MSG_MODEL_DATA, buf, w.len);
        }
        m_head(&w, buf, sizeof buf, 3, MSG_MODEL_COMMIT);
        cbor_w_uint(&w, 2), cbor_w_bytes(&w, target, 32);
        unsigned got = request(MSG_MODEL_COMMIT, buf, w.len);
        uint64_t code = error_code();
        if (got != 1 || (code != E_BAD_PATCH && code != E_HASH_MISMATCH) || !s.loaded ||
            memcmp(s.active.sha256, model_sha, 32) != 0) {
            printf("FAIL random patch %u: %u answers, error %u, model %s\n", r, got, (unsigned)code,
                   s.loaded && memcmp(s.active.sha256, model_sha, 32) == 0 ? "kept" : "lost");
            failures++;
        }
    }
}

/* The code of the ERROR that was the last answer, or 0 if it was no ERROR. */
static uint64_t error_code(void)
{
    cbor_item v[5];
    uint64_t type = 0, code = 0;
    if (!cbor_map_index(last_answer, last_answer + last_answer_len, v, 5) || !cbor_get_uint(&v[0], 255, &type) ||
        type != MSG_ERROR || !cbor_get_uint(&v[2], 255, &code))
        return 0;
    return code;
}

static void expect_error(const char *what, unsigned got, uint64_t code)
{
    if (got != 1 || error_code() != code) {
        printf("FAIL %s: %u answers, the last error code %u, expected one ERROR %u\n", what, got,
               (unsigned)error_code(), (unsigned)code);
        failures++;
    }
}

static unsigned hello(uint32_t max_frame)
{
    uint8_t buf[128], type;
    hello_max = max_frame;
    size_t n = seed_message(0, buf, sizeof buf, &type, 0);
    hello_max = 0;
    return request(MSG_HELLO, buf, n);
}

/* Requests whose answers must fit the smallest frame a host may agree to (64 bytes): an ERROR whose detail
 * is longer is cut to fit, never left unsent (the host would wait for an answer that never comes). */
static void directed_small_frames(void)
{
    uint8_t buf[256];
    uint8_t junk[32];
    cbor_writer w;
    memset(junk, 0x5A, sizeof junk);
    if (hello(64) != 1 || link_max_payload() != 64) {
        printf("FAIL HELLO with max_frame 64 was not agreed (frame %u)\n", link_max_payload());
        failures++;
    }
    m_head(&w, buf, sizeof buf, 4, MSG_MODEL_BEGIN);
    cbor_w_uint(&w, 2), cbor_w_bytes(&w, junk, 32), cbor_w_uint(&w, 3), cbor_w_uint(&w, 8);
    request(MSG_MODEL_BEGIN, buf, w.len);
    m_head(&w, buf, sizeof buf, 4, MSG_MODEL_DATA);
    cbor_w_uint(&w, 2), cbor_w_uint(&w, 0), cbor_w_uint(&w, 3), cbor_w_bytes(&w, junk, 8);
    request(MSG_MODEL_DATA, buf, w.len);
    m_head(&w, buf, sizeof buf, 3, MSG_MODEL_COMMIT);
    cbor_w_uint(&w, 2), cbor_w_bytes(&w, junk, 32);
    expect_error("MODEL_COMMIT of bytes that do not hash to the version, over 64-byte frames",
                 request(MSG_MODEL_COMMIT, buf, w.len), E_HASH_MISMATCH);
    m_head(&w, buf, sizeof buf, 2, 21); /* frame type 16 carrying a type-21 message */
    expect_error("a frame whose type is not its message's, over 64-byte frames", request(MSG_HELLO + 3, buf, w.len),
                 E_MALFORMED);
    m_head(&w, buf, sizeof buf, 2, MSG_STATUS);
    buf[w.len++] = 0x00; /* a STATUS request with a byte after its map: the host's decoder calls that malformed */
    expect_error("a message with trailing bytes", request(MSG_STATUS, buf, w.len), E_MALFORMED);
    if (data_len && model_len) { /* TRAIN over frames too small for a fragment: an ERROR, not silence */
        static uint8_t tbuf[256];
        uint8_t type;
        for (uint32_t frame = 64; frame <= 96; frame += 32) {
            hello(frame);
            train_dense = true;
            size_t n = seed_message(6, tbuf, sizeof tbuf, &type, 0);
            train_dense = false;
            unsigned got = request(MSG_TRAIN, tbuf, n);
            if (got != 1 || error_code() != E_UNSUPPORTED) {
                printf("FAIL TRAIN over %u-byte frames: %u answers, error %u\n", (unsigned)frame, got,
                       (unsigned)error_code());
                failures++;
            }
        }
    }
    /* a host greeting the board again (a bridge restarted) must get its HELLO answered, though the answer
     * (about 120 bytes) exceeds the 64 bytes agreed before */
    if (hello(4096) != 1 || error_code() != 0 || link_max_payload() != 4096) {
        printf("FAIL a second HELLO after 64-byte frames was not answered with HELLO (error %u, frame %u)\n",
               (unsigned)error_code(), (unsigned)link_max_payload());
        failures++;
    }
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: session_fuzz ITERATIONS SEED [MODEL.tflite [DATA.tfds]]\n");
        return 2;
    }
    long iterations = atol(argv[1]);
    srand((unsigned)atoi(argv[2]));
    if (argc > 3) {
        FILE *f = fopen(argv[3], "rb");
        if (f == NULL) {
            perror(argv[3]);
            return 2;
        }
        model_len = fread(model, 1, sizeof model, f);
        fclose(f);
        tf_sha256(model, model_len, model_sha);
    }
    if (argc > 4) { /* the board's training data, as hil/qemu.py dataset_blob writes it */
        FILE *f = fopen(argv[4], "rb");
        if (f == NULL) {
            perror(argv[4]);
            return 2;
        }
        data_len = (uint32_t)fread(data_blob, 1, sizeof data_blob, f);
        fclose(f);
    }
    memset(flash, 0xFF, sizeof flash);
    boot();
    if (model_len && !install_model()) {
        printf("FAIL the model did not install: %s\n", s.detail);
        return 1;
    }
    directed_small_frames();
    if (iterations) {
        hello(4096);
        directed_patches((unsigned)(iterations / 4));
    }
    static uint8_t buf[LINK_MAX_PAYLOAD + 1024];
    unsigned long answered = 0, mutated = 0;
    for (long i = 0; i < iterations; i++) {
        uint8_t type;
        int kind = rand() % 8;
        size_t len = seed_message(kind, buf, LINK_MAX_PAYLOAD, &type, s.transfer ? s.tr.written : 0);
        bool intact = rand() % 8 == 0;
        if (!intact) {
            len = mutate(buf, len, LINK_MAX_PAYLOAD, &type);
            mutated++;
        }
        if (len > LINK_MAX_PAYLOAD)
            len = LINK_MAX_PAYLOAD;
        unsigned got = request(type, buf, len);
        /* MODEL_DATA is acknowledged by the link and answered only on failure; a bare acknowledgement not at all */
        bool quiet_ok = type == MSG_MODEL_DATA || type == 0;
        if (got > 1 || (got == 0 && !quiet_ok)) {
            printf("FAIL request %ld (frame type %u, %zu B, frame %u): %u answers\n", i, type, len, link_max_payload(), got);
            failures++;
        }
        answered += got;
        if (failures > 20)
            break;
    }
    if (model_len) {
        store_commit c;
        uint8_t digest[32];
        if (!store_active(&c) || memcmp(c.sha256, model_sha, 32) != 0) {
            printf("FAIL the installed model is no longer the active one\n");
            failures++;
        } else {
            tf_sha256(store_slot(c.slot), c.size, digest);
            if (memcmp(digest, model_sha, 32) != 0) {
                printf("FAIL the active slot no longer hashes to the installed model\n");
                failures++;
            }
        }
    }
    printf("answers by type:");
    for (unsigned t = 0; t < 256; t++)
        if (by_type[t])
            printf(" %u=%lu", t, by_type[t]);
    printf("\nerrors by code:");
    for (unsigned c = 0; c < 256; c++)
        if (by_code[c])
            printf(" %u=%lu", c, by_code[c]);
    printf("\n");
    const link_stats *st = link_get_stats();
    printf("session fuzz: %ld requests (%lu mutated), %lu answers, %u bad frames; %s\n", iterations, mutated,
           answered, (unsigned)st->bad_frames, failures ? "FAILED" : "every check held");
    return failures ? 1 : 0;
}
