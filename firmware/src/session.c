/* Requests in, answers out: the same behaviour as hil/board.py, message by message.
 *
 * One message is handled at a time, to completion; its answer is built in one frame-sized buffer. What a
 * reset must not lose (the installed model, the transfer's progress, the residual) is in flash, written
 * data first and record last; everything else is rebuilt at boot. */
#include "session.h"

#include <math.h>
#include "fmt.h"
#include <string.h>

#include "cbor.h"
#include "dataset.h"
#include "link.h"
#include "ml.h"
#include "modelmeta.h"
#include "platform.h"
#include "sha256.h"
#include "store.h"
#include "update.h"

enum { MSG_UPDATE = 1, MSG_HELLO = 16, MSG_MODEL_BEGIN, MSG_MODEL_DATA, MSG_MODEL_COMMIT, MSG_TRAIN, MSG_INFER,
       MSG_INFER_RESULT, MSG_STATUS, MSG_RESET, MSG_LOG, MSG_ERROR, MSG_PATCH_BEGIN };
enum { E_MALFORMED = 1, E_UNSUPPORTED, E_NO_MEMORY, E_NO_FLASH, E_BAD_OFFSET, E_HASH_MISMATCH, E_NO_MODEL, E_BUSY,
       E_BAD_INPUT, E_INTERNAL, E_NO_PARENT, E_BAD_PATCH };
#define MSG_MODEL_PATCH 11 /* the patch's own message type (edge_runtime/wire/patch.py) */
enum { IDLE = 0, RECEIVING = 1, TRAINING = 2, INFERRING = 3 };

#define MAX_INPUT 4096 /* int8 elements of one model input the board quantises at a time */

static link_message msg;
static uint8_t out[LINK_MAX_PAYLOAD];
static int8_t sample_in[MAX_INPUT];
static int8_t sample_out[256];

static struct {
    bool loaded;
    ml_info info;
    model_meta meta;
    store_commit active;
    bool transfer;
    store_progress tr;
    uint32_t tr_at;         /* where in the slot byte 0 of the transfer goes (a patch sits at the slot's end) */
    uint8_t tr_base[32];    /* a patch transfer: the model it applies to */
    uint32_t tr_model_size; /* a patch transfer: bytes of the base and of the result */
    uint8_t state, last_error;
    uint32_t booted_ms;
    char detail[160];
} s;

/* -- sending -------------------------------------------------------------------------------------------------- */
static void head(cbor_writer *w, uint32_t entries, uint8_t type)
{
    cbor_w_init(w, out, link_max_payload());
    cbor_w_head(w, CBOR_MAP, entries);
    cbor_w_uint(w, 0);
    cbor_w_uint(w, type);
    cbor_w_uint(w, 1);
    cbor_w_uint(w, 1);
}

/* The text as the last item, cut (at a UTF-8 boundary) to what the frame has left: a host may agree to frames
 * of 64 bytes, and an ERROR or LOG that did not fit would otherwise not be sent at all. */
static void text_to_fit(cbor_writer *w, const char *text)
{
    size_t n = strlen(text), room = w->cap > w->len ? w->cap - w->len : 0;
    while (n && (n < 24 ? 1u : n < 256 ? 2u : 3u) + n > room) {
        n--;
        while (n && ((uint8_t)text[n] & 0xC0) == 0x80)
            n--;
    }
    cbor_w_text_n(w, text, n);
}

static void send_error(uint8_t code, uint8_t refused, const char *detail);

/* Every request gets one answer: one that does not fit the agreed frame becomes an ERROR that does. */
static void send(uint8_t type, cbor_writer *w)
{
    if (!w->overflow) {
        link_send(type, w->buf, w->len);
    } else if (type != MSG_ERROR && type != MSG_LOG) {
        char detail[80];
        tf_snprintf(detail, sizeof detail, "the answer (message type %u) exceeds the agreed frame of %u B",
                    (unsigned)type, (unsigned)link_max_payload());
        send_error(E_INTERNAL, msg.type, detail);
    }
}

static void send_log(uint8_t level, const char *text)
{
    cbor_writer w;
    head(&w, 4, MSG_LOG);
    cbor_w_uint(&w, 2);
    cbor_w_uint(&w, level);
    cbor_w_uint(&w, 3);
    text_to_fit(&w, text);
    send(MSG_LOG, &w);
}

static void send_error(uint8_t code, uint8_t refused, const char *detail)
{
    cbor_writer w;
    s.last_error = code;
    head(&w, 5, MSG_ERROR);
    cbor_w_uint(&w, 2);
    cbor_w_uint(&w, code);
    cbor_w_uint(&w, 3);
    cbor_w_uint(&w, refused);
    cbor_w_uint(&w, 4);
    text_to_fit(&w, detail);
    send(MSG_ERROR, &w);
}

static uint32_t free_ram(void)
{
    ram_figures r;
    plat_ram_figures(&r);
    uint32_t used = r.data + r.bss + r.stack + r.reserved;
    return r.ram > used ? r.ram - used : 0;
}

static void send_status(void)
{
    cbor_writer w;
    head(&w, 6 + s.loaded, MSG_STATUS);
    cbor_w_uint(&w, 2);
    cbor_w_uint(&w, s.state);
    if (s.loaded) {
        cbor_w_uint(&w, 3);
        cbor_w_bytes(&w, s.active.sha256, 32);
    }
    cbor_w_uint(&w, 4);
    cbor_w_uint(&w, free_ram());
    cbor_w_uint(&w, 5);
    cbor_w_uint(&w, s.last_error);
    cbor_w_uint(&w, 6);
    cbor_w_uint(&w, (plat_millis() - s.booted_ms) / 1000);
    send(MSG_STATUS, &w);
}

/* -- model ---------------------------------------------------------------------------------------------------- */
static uint8_t ml_error_code(ml_status st)
{
    switch (st) {
    case ML_BAD_MODEL:
        return E_MALFORMED;
    case ML_UNSUPPORTED:
        return E_UNSUPPORTED;
    case ML_NO_MEMORY:
        return E_NO_MEMORY;
    case ML_NO_MODEL:
        return E_NO_MODEL;
    case ML_BAD_INPUT:
        return E_BAD_INPUT;
    default:
        return E_INTERNAL;
    }
}

/* Loads a model from flash into the interpreter; 0 or the error code (detail in s.detail). */
static uint8_t install(const uint8_t *model, uint32_t size)
{
    ml_status st = ml_load(model, size, &s.info);
    if (st != ML_OK) {
        tf_snprintf(s.detail, sizeof s.detail, "%s", ml_last_error());
        return ml_error_code(st);
    }
    if (s.info.input_len > MAX_INPUT || s.info.output_len > sizeof sample_out) {
        /* INFER and the evaluation before training copy one sample through these buffers */
        tf_snprintf(s.detail, sizeof s.detail, "the model takes %u values and gives %u; this firmware holds %u and %u",
                    (unsigned)s.info.input_len, (unsigned)s.info.output_len, (unsigned)MAX_INPUT,
                    (unsigned)sizeof sample_out);
        ml_unload();
        return E_NO_MEMORY;
    }
    if (!meta_read(model, size, &s.meta)) {
        tf_snprintf(s.detail, sizeof s.detail, "the model's tinyfed metadata is beyond this firmware's bounds");
        ml_unload();
        return E_UNSUPPORTED;
    }
    return 0;
}

static void load_installed(void)
{
    s.loaded = false;
    if (!store_active(&s.active))
        return;
    s.loaded = install(store_slot(s.active.slot), s.active.size) == 0;
}

/* -- requests ------------------------------------------------------------------------------------------------- */
static bool parse(cbor_item *vals, unsigned nkeys)
{
    uint64_t type, version;
    const uint8_t *end = msg.payload + msg.len;
    /* one message and nothing after it, as the host's decoder requires (trailing bytes are MALFORMED there) */
    if (cbor_skip(msg.payload, end, 1u << 16) != end || !cbor_map_index(msg.payload, end, vals, nkeys) ||
        !cbor_get_uint(&vals[0], 255, &type) ||
        !cbor_get_uint(&vals[1], 255, &version)) {
        send_error(E_MALFORMED, msg.type, "the payload is not a tinyfed CBOR message");
        return false;
    }
    if (type != msg.type || version != 1) {
        tf_snprintf(s.detail, sizeof s.detail, "frame type %u carries a message of type %u, schema %u", msg.type,
                 (unsigned)type, (unsigned)version);
        send_error(E_MALFORMED, msg.type, s.detail);
        return false;
    }
    return true;
}

static void on_hello(void)
{
    cbor_item v[8];
    uint64_t host_max;
    /* A HELLO starts the negotiation again: its answer goes out within the default frame, as the first one did,
     * not within what an earlier host agreed (64 bytes would not hold it). */
    link_set_max_payload(LINK_DEFAULT_PAYLOAD);
    if (!parse(v, 8))
        return;
    if (!cbor_get_uint(&v[7], 1u << 20, &host_max)) {
        send_error(E_MALFORMED, MSG_HELLO, "hello.max_frame: expected an unsigned integer");
        return;
    }
    uint32_t agreed = host_max < LINK_MAX_PAYLOAD ? (uint32_t)host_max : LINK_MAX_PAYLOAD;
    if (agreed < 64) {
        tf_snprintf(s.detail, sizeof s.detail, "max_frame %u is below 64 bytes", (unsigned)host_max);
        send_error(E_UNSUPPORTED, MSG_HELLO, s.detail);
        return;
    }
    uint32_t dlen;
    dataset d;
    bool have_data = dataset_open(plat_dataset(&dlen), dlen, &d) && d.n_train > 0;
    ram_figures r;
    plat_ram_figures(&r);
    cbor_writer w;
    head(&w, 11 + s.loaded + have_data, MSG_HELLO);
    cbor_w_uint(&w, 2);
    cbor_w_uint(&w, r.ram);
    cbor_w_uint(&w, 3);
    cbor_w_uint(&w, STORE_FLASH_BYTES);
    cbor_w_uint(&w, 4);
    cbor_w_uint(&w, ML_ARENA_BYTES);
    cbor_w_uint(&w, 5);
    cbor_w_text(&w, FIRMWARE_NAME);
    cbor_w_uint(&w, 6);
    cbor_w_uint(&w, 1);
    cbor_w_uint(&w, 7);
    cbor_w_uint(&w, agreed);
    if (s.loaded) {
        cbor_w_uint(&w, 8);
        cbor_w_bytes(&w, s.active.sha256, 32);
    }
    cbor_w_uint(&w, 9);
    cbor_w_head(&w, CBOR_ARRAY, ml_supported_op_count);
    for (uint32_t i = 0; i < ml_supported_op_count; i++)
        cbor_w_uint(&w, ml_supported_ops[i]);
    cbor_w_uint(&w, 10);
    cbor_w_text(&w, plat_board_id());
    if (have_data) {
        cbor_w_uint(&w, 11);
        cbor_w_uint(&w, d.n_train);
    }
    cbor_w_uint(&w, 12); /* applies model patches (PATCH_BEGIN) */
    cbor_w_bool(&w, true);
    send(MSG_HELLO, &w);
    link_set_max_payload((uint16_t)agreed);
    tf_snprintf(s.detail, sizeof s.detail,
             "RAM %u B: .data %u B, .bss %u B (arena %u B, update buffers %u B, frames %u B), stack %u B "
             "(high-water %u B)",
             (unsigned)r.ram, (unsigned)r.data, (unsigned)r.bss, (unsigned)ML_ARENA_BYTES,
             (unsigned)upd_buffer_bytes(), (unsigned)(2 * sizeof(link_message) + LINK_MAX_ENCODED + sizeof out),
             (unsigned)r.stack, (unsigned)r.stack_used);
    send_log(6, s.detail);
}

static void on_model_begin(void)
{
    cbor_item v[4];
    const uint8_t *version;
    size_t vlen;
    uint64_t size;
    if (!parse(v, 4))
        return;
    if (!cbor_get_bytes(&v[2], &version, &vlen) || vlen != 32 || !cbor_get_uint(&v[3], 1u << 31, &size)) {
        send_error(E_MALFORMED, MSG_MODEL_BEGIN, "model_begin: expected version (32 bytes) and size");
        return;
    }
    if (size > STORE_SLOT_BYTES) {
        tf_snprintf(s.detail, sizeof s.detail, "model of %u B, flash slot of %u B", (unsigned)size,
                 (unsigned)STORE_SLOT_BYTES);
        send_error(E_NO_FLASH, MSG_MODEL_BEGIN, s.detail);
        return;
    }
    uint32_t resume = 0;
    if (s.loaded && memcmp(version, s.active.sha256, 32) == 0) {
        s.transfer = false;
        resume = (uint32_t)size; /* already running it */
    } else {
        uint8_t slot = store_inactive_slot();
        store_progress p;
        if (store_progress_load(&p) && memcmp(p.version, version, 32) == 0 && p.size == size && p.slot == slot &&
            !p.patch) {
            resume = p.written;
        } else {
            memset(&p, 0, sizeof p);
            memcpy(p.version, version, 32);
            p.size = (uint32_t)size;
            p.slot = slot;
            store_progress_save(&p);
        }
        p.written = resume;
        s.tr = p;
        s.tr_at = 0;
        s.transfer = true;
    }
    cbor_writer w;
    head(&w, 5, MSG_MODEL_BEGIN);
    cbor_w_uint(&w, 2);
    cbor_w_bytes(&w, version, 32);
    cbor_w_uint(&w, 3);
    cbor_w_uint(&w, size);
    cbor_w_uint(&w, 4);
    cbor_w_uint(&w, resume);
    send(MSG_MODEL_BEGIN, &w);
}

static void on_model_data(void)
{
    cbor_item v[4];
    uint64_t offset;
    const uint8_t *data;
    size_t len;
    if (!parse(v, 4))
        return;
    if (!cbor_get_uint(&v[2], 1u << 31, &offset) || !cbor_get_bytes(&v[3], &data, &len)) {
        send_error(E_MALFORMED, MSG_MODEL_DATA, "model_data: expected offset and data");
        return;
    }
    if (!s.transfer) {
        send_error(E_BAD_OFFSET, MSG_MODEL_DATA, "no transfer in progress: send MODEL_BEGIN first");
        return;
    }
    if (offset > s.tr.written) {
        tf_snprintf(s.detail, sizeof s.detail, "data at offset %u, expected %u", (unsigned)offset,
                 (unsigned)s.tr.written);
        send_error(E_BAD_OFFSET, MSG_MODEL_DATA, s.detail);
        return;
    }
    uint64_t end = offset + len;
    if (end <= s.tr.written)
        return; /* already written: a resend */
    uint32_t skip = s.tr.written - (uint32_t)offset;
    if (end > s.tr.size) {
        tf_snprintf(s.detail, sizeof s.detail, "data runs to byte %u of a %u-byte %s", (unsigned)end,
                 (unsigned)s.tr.size, s.tr.patch ? "patch" : "model");
        send_error(E_NO_FLASH, MSG_MODEL_DATA, s.detail);
        return;
    }
    s.state = RECEIVING;
    if (!store_slot_write(s.tr.slot, s.tr_at + s.tr.written, data + skip, (uint32_t)(len - skip))) {
        send_error(E_INTERNAL, MSG_MODEL_DATA, "flash write failed");
        return;
    }
    s.tr.written = (uint32_t)end;
    store_progress_save(&s.tr); /* data first, then the record that claims it */
}

/* -- patch transfer (docs/serial-protocol.md, "Patch transfer") ------------------------------------------------ */
static void on_patch_begin(void)
{
    cbor_item v[7];
    const uint8_t *version, *base;
    size_t vlen, blen;
    uint64_t size, model_size;
    if (!parse(v, 7))
        return;
    if (!cbor_get_bytes(&v[2], &version, &vlen) || vlen != 32 || !cbor_get_bytes(&v[3], &base, &blen) ||
        blen != 32 || !cbor_get_uint(&v[4], 1u << 31, &size) || !cbor_get_uint(&v[5], 1u << 31, &model_size)) {
        send_error(E_MALFORMED, MSG_PATCH_BEGIN, "patch_begin: expected version, base (32 bytes each) and sizes");
        return;
    }
    uint32_t resume = 0;
    if (s.loaded && memcmp(version, s.active.sha256, 32) == 0) {
        s.transfer = false;
        resume = (uint32_t)size; /* already running the target */
    } else {
        if (!s.loaded || memcmp(base, s.active.sha256, 32) != 0) {
            tf_snprintf(s.detail, sizeof s.detail, "patch_begin.base: the patch is against %02x%02x%02x%02x%02x%02x, "
                        "the board runs %s", base[0], base[1], base[2], base[3], base[4], base[5],
                        s.loaded ? "another model" : "no model");
            send_error(E_NO_PARENT, MSG_PATCH_BEGIN, s.detail);
            return;
        }
        if (model_size != s.active.size) {
            tf_snprintf(s.detail, sizeof s.detail, "patch_begin.model_size: %u B, the model held has %u B",
                        (unsigned)model_size, (unsigned)s.active.size);
            send_error(E_BAD_PATCH, MSG_PATCH_BEGIN, s.detail);
            return;
        }
        if (size + model_size > STORE_SLOT_BYTES) {
            tf_snprintf(s.detail, sizeof s.detail, "patch_begin.size: a %u-byte patch and its %u-byte result exceed "
                        "the %u-byte slot", (unsigned)size, (unsigned)model_size, (unsigned)STORE_SLOT_BYTES);
            send_error(E_NO_FLASH, MSG_PATCH_BEGIN, s.detail);
            return;
        }
        uint8_t slot = store_inactive_slot();
        store_progress p;
        if (store_progress_load(&p) && memcmp(p.version, version, 32) == 0 && p.size == size && p.slot == slot &&
            p.patch) {
            resume = p.written;
        } else {
            memset(&p, 0, sizeof p);
            memcpy(p.version, version, 32);
            p.size = (uint32_t)size;
            p.slot = slot;
            p.patch = 1;
            store_progress_save(&p);
        }
        p.written = resume;
        s.tr = p;
        s.tr_at = STORE_SLOT_BYTES - (uint32_t)size;
        memcpy(s.tr_base, base, 32);
        s.tr_model_size = (uint32_t)model_size;
        s.transfer = true;
    }
    cbor_writer w;
    head(&w, 7, MSG_PATCH_BEGIN);
    cbor_w_uint(&w, 2);
    cbor_w_bytes(&w, version, 32);
    cbor_w_uint(&w, 3);
    cbor_w_bytes(&w, base, 32);
    cbor_w_uint(&w, 4);
    cbor_w_uint(&w, size);
    cbor_w_uint(&w, 5);
    cbor_w_uint(&w, model_size);
    cbor_w_uint(&w, 6);
    cbor_w_uint(&w, resume);
    send(MSG_PATCH_BEGIN, &w);
}

/* A Golomb-Rice stream as edge_runtime/wire/index_coding.py writes it: every code's quotient in unary (ones, then
 * a zero), most significant bit first, padded to a byte; then every code's k low bits, padded to a byte. Each read
 * is bounded by the part's length, so a hostile stream ends the decoding, never the buffer. */
typedef struct {
    const uint8_t *p;
    uint32_t bits, at;
} bit_reader;

static int bit_next(bit_reader *b)
{
    if (b->at >= b->bits)
        return -1;
    int bit = (b->p[b->at >> 3] >> (7 - (b->at & 7))) & 1;
    b->at++;
    return bit;
}

typedef struct {
    bit_reader unary, rest;
    uint32_t k;
} rice_reader;

static bool rice_open(rice_reader *r, const uint8_t *data, size_t len, uint32_t n, uint32_t k)
{
    uint64_t rest = ((uint64_t)n * k + 7) / 8;
    if (rest > len)
        return false;
    r->unary.p = data, r->unary.bits = (uint32_t)((len - rest) * 8), r->unary.at = 0;
    r->rest.p = data + (len - rest), r->rest.bits = (uint32_t)(rest * 8), r->rest.at = 0;
    r->k = k;
    return true;
}

static bool rice_next(rice_reader *r, uint64_t *value)
{
    uint64_t q = 0;
    int bit;
    while ((bit = bit_next(&r->unary)) == 1)
        q++; /* at most the unary part's bit count: 8 x the patch size */
    if (bit < 0)
        return false;
    uint64_t v = q << r->k;
    for (uint32_t i = r->k; i; i--)
        v |= (uint64_t)(bit_next(&r->rest) & 1) << (i - 1); /* rice_open made room for n x k bits */
    *value = v;
    return true;
}

/* Both parts end within their padding, which is zeros (as decode_rice requires). */
static bool rice_closed(rice_reader *r)
{
    if (r->unary.bits - r->unary.at >= 8)
        return false;
    int bit;
    while ((bit = bit_next(&r->unary)) >= 0)
        if (bit)
            return false;
    while ((bit = bit_next(&r->rest)) >= 0)
        if (bit)
            return false;
    return true;
}

typedef struct {
    rice_reader pos, delta;
    uint32_t left, size;
    int64_t at; /* the last offset read */
} patch_reader;

/* The next changed offset and its change (mod 256); 0 when done, -1 (detail set) when the patch is bad. */
static int patch_next(patch_reader *pr, uint32_t *offset, uint8_t *change)
{
    uint64_t gap, z;
    if (!pr->left)
        return 0;
    if (!rice_next(&pr->pos, &gap)) {
        tf_snprintf(s.detail, sizeof s.detail, "modelpatch.positions: the unary part ends before its codes do");
        return -1;
    }
    if (gap >= pr->size || pr->at + 1 + (int64_t)gap >= (int64_t)pr->size) {
        tf_snprintf(s.detail, sizeof s.detail, "modelpatch.positions: an offset beyond the %u-byte model",
                    (unsigned)pr->size);
        return -1;
    }
    if (!rice_next(&pr->delta, &z)) {
        tf_snprintf(s.detail, sizeof s.detail, "modelpatch.deltas: the unary part ends before its codes do");
        return -1;
    }
    if (z > 255) {
        tf_snprintf(s.detail, sizeof s.detail, "modelpatch.deltas: change %u is not a zigzagged byte", (unsigned)z);
        return -1;
    }
    pr->at += 1 + (int64_t)gap;
    pr->left--;
    *offset = (uint32_t)pr->at;
    *change = (uint8_t)((z & 1) ? -(int)(z >> 1) - 1 : (int)(z >> 1)); /* zigzag back; mod 256 */
    return 1;
}

/* The patch in the inactive slot's end, checked against PATCH_BEGIN; the reader set at its first change. */
static uint8_t patch_open(patch_reader *pr)
{
    const uint8_t *raw = store_slot(s.tr.slot) + s.tr_at, *end = raw + s.tr.size;
    cbor_item v[10];
    uint64_t type, version, size, count, pk, dk;
    const uint8_t *base, *target, *positions, *deltas;
    size_t blen, tlen, plen, dlen;
    if (cbor_skip(raw, end, 64) != end || !cbor_map_index(raw, end, v, 10) || !cbor_get_uint(&v[0], 255, &type) ||
        !cbor_get_uint(&v[1], 255, &version) || type != MSG_MODEL_PATCH || version != 1) {
        tf_snprintf(s.detail, sizeof s.detail, "modelpatch: not one CBOR model patch message (type 11, schema 1)");
        return E_BAD_PATCH;
    }
    const char *field = NULL;
    if (!cbor_get_bytes(&v[2], &base, &blen) || blen != 32 || memcmp(base, s.tr_base, 32) != 0)
        field = "modelpatch.base";
    else if (!cbor_get_bytes(&v[3], &target, &tlen) || tlen != 32 || memcmp(target, s.tr.version, 32) != 0)
        field = "modelpatch.target";
    else if (!cbor_get_uint(&v[4], 1u << 31, &size) || size != s.tr_model_size)
        field = "modelpatch.size";
    if (field) {
        tf_snprintf(s.detail, sizeof s.detail, "%s: missing, or not the one PATCH_BEGIN announced", field);
        return E_BAD_PATCH;
    }
    if (!cbor_get_uint(&v[5], 1u << 31, &count) || count > size) {
        tf_snprintf(s.detail, sizeof s.detail, "modelpatch.count: more changed bytes than the %u-byte model has",
                    (unsigned)size);
        return E_BAD_PATCH;
    }
    if (!cbor_get_uint(&v[6], 30, &pk) || !cbor_get_bytes(&v[7], &positions, &plen) ||
        !rice_open(&pr->pos, positions, plen, (uint32_t)count, (uint32_t)pk)) {
        tf_snprintf(s.detail, sizeof s.detail, "modelpatch.positions: not %u Rice codes", (unsigned)count);
        return E_BAD_PATCH;
    }
    if (!cbor_get_uint(&v[8], 7, &dk) || !cbor_get_bytes(&v[9], &deltas, &dlen) ||
        !rice_open(&pr->delta, deltas, dlen, (uint32_t)count, (uint32_t)dk)) {
        tf_snprintf(s.detail, sizeof s.detail, "modelpatch.deltas: not %u Rice codes", (unsigned)count);
        return E_BAD_PATCH;
    }
    pr->left = (uint32_t)count;
    pr->size = (uint32_t)size;
    pr->at = -1;
    return 0;
}

/* Checks the whole patch, then writes the running model with it applied into the inactive slot's start, a
 * buffer at a time (the answer buffer: nothing is sent meanwhile). 0, or the error code with s.detail set. */
static uint8_t patch_apply(void)
{
    if (!s.loaded || memcmp(s.active.sha256, s.tr_base, 32) != 0) {
        tf_snprintf(s.detail, sizeof s.detail, "patch_begin.base: the board no longer runs the patch's base");
        return E_NO_PARENT;
    }
    patch_reader pr;
    uint32_t offset;
    uint8_t change;
    int got;
    uint8_t code = patch_open(&pr);
    if (code)
        return code;
    while ((got = patch_next(&pr, &offset, &change)) > 0) {
    }
    if (got < 0)
        return E_BAD_PATCH;
    if (!rice_closed(&pr.pos) || !rice_closed(&pr.delta)) {
        tf_snprintf(s.detail, sizeof s.detail, "modelpatch.%s: bits beyond its codes", rice_closed(&pr.pos) ?
                    "deltas" : "positions");
        return E_BAD_PATCH;
    }
    patch_open(&pr); /* checked: read it again, applying it this time */
    const uint8_t *model = store_slot(s.active.slot);
    got = patch_next(&pr, &offset, &change);
    for (uint32_t at = 0; at < pr.size; at += sizeof out) {
        uint32_t n = pr.size - at < sizeof out ? pr.size - at : (uint32_t)sizeof out;
        memcpy(out, model + at, n);
        while (got > 0 && offset < at + n) {
            out[offset - at] = (uint8_t)(out[offset - at] + change);
            got = patch_next(&pr, &offset, &change);
        }
        if (!store_slot_write(s.tr.slot, at, out, n)) {
            tf_snprintf(s.detail, sizeof s.detail, "flash write failed");
            return E_INTERNAL;
        }
    }
    return 0;
}

static void on_model_commit(void)
{
    cbor_item v[3];
    const uint8_t *version;
    size_t vlen;
    if (!parse(v, 3))
        return;
    if (!cbor_get_bytes(&v[2], &version, &vlen) || vlen != 32) {
        send_error(E_MALFORMED, MSG_MODEL_COMMIT, "model_commit.version: expected 32 bytes");
        return;
    }
    if (s.loaded && !s.transfer && memcmp(version, s.active.sha256, 32) == 0) {
        send_status();
        return;
    }
    if (!s.transfer || memcmp(version, s.tr.version, 32) != 0) {
        send_error(E_BAD_OFFSET, MSG_MODEL_COMMIT, "no transfer of this version in progress");
        return;
    }
    if (s.tr.written != s.tr.size) {
        tf_snprintf(s.detail, sizeof s.detail, "only %u of %u bytes received", (unsigned)s.tr.written,
                 (unsigned)s.tr.size);
        send_error(E_BAD_OFFSET, MSG_MODEL_COMMIT, s.detail);
        return;
    }
    s.transfer = false;
    uint32_t size = s.tr.size;
    if (s.tr.patch) {
        uint8_t code = patch_apply();
        if (code) {
            store_progress_clear(); /* refused: the next attempt starts from zero; the model in use stays */
            send_error(code, MSG_MODEL_COMMIT, s.detail);
            return;
        }
        size = s.tr_model_size;
    }
    const uint8_t *model = store_slot(s.tr.slot);
    uint8_t digest[32];
    tf_sha256(model, size, digest);
    if (memcmp(digest, s.tr.version, 32) != 0) {
        store_progress_clear(); /* the bytes are wrong: the next attempt starts from zero */
        send_error(E_HASH_MISMATCH, MSG_MODEL_COMMIT, s.tr.patch ? "modelpatch: the patched model does not hash to "
                   "the announced version" : "the received bytes do not hash to the announced version");
        return;
    }
    uint8_t code = install(model, size);
    if (code) {
        char why[160];
        memcpy(why, s.detail, sizeof why);
        load_installed(); /* the old model stays */
        send_error(code, MSG_MODEL_COMMIT, why);
        return;
    }
    store_commit c;
    c.slot = s.tr.slot;
    c.size = size;
    memcpy(c.sha256, s.tr.version, 32);
    store_set_active(&c);
    store_progress_clear();
    s.active = c;
    s.loaded = true;
    tf_snprintf(s.detail, sizeof s.detail, "model %02x%02x%02x%02x%02x%02x installed%s, arena %u B", c.sha256[0],
             c.sha256[1], c.sha256[2], c.sha256[3], c.sha256[4], c.sha256[5], s.tr.patch ? " from a patch" : "",
             (unsigned)s.info.arena_bytes);
    send_log(6, s.detail);
    send_status();
}

/* Raw sample i (features floats) -> the model's int8 input (normalise, then quantize_input). */
static void quantize_sample(const uint8_t *x, uint32_t features, uint32_t i, int8_t *q)
{
    for (uint32_t e = 0; e < features; e++) {
        float z = dataset_value(x, i * features + e);
        if (s.meta.n_norm) {
            uint32_t c = e % s.meta.n_norm;
            z = (z - s.meta.mean[c]) / s.meta.std[c];
        }
        float r = nearbyintf(z / s.info.input_scale) + (float)s.info.input_zero_point;
        q[e] = (int8_t)(r > 127 ? 127 : (r < -128 ? -128 : r));
    }
}

static void on_infer(void)
{
    cbor_item v[3];
    const uint8_t *input;
    size_t len;
    if (!parse(v, 3))
        return;
    if (!cbor_get_typed(&v[2], msg.payload + msg.len, 72, &input, &len)) {
        send_error(E_MALFORMED, MSG_INFER, "infer.input: expected an int8 typed array");
        return;
    }
    if (!s.loaded) {
        send_error(E_NO_MODEL, MSG_INFER, "no model installed");
        return;
    }
    if (len != s.info.input_len || len > MAX_INPUT || s.info.output_len > sizeof sample_out) {
        tf_snprintf(s.detail, sizeof s.detail, "input of %u values, the model takes %u", (unsigned)len,
                 (unsigned)s.info.input_len);
        send_error(E_BAD_INPUT, MSG_INFER, s.detail);
        return;
    }
    s.state = INFERRING;
    memcpy(sample_in, input, len);
    uint64_t started = plat_counter();
    ml_status st = ml_infer(sample_in, sample_out);
    uint32_t micros = (uint32_t)((plat_counter() - started) / PLAT_COUNTER_MHZ);
    if (st != ML_OK) {
        send_error(ml_error_code(st), MSG_INFER, ml_last_error());
        return;
    }
    cbor_writer w;
    head(&w, 4, MSG_INFER_RESULT);
    cbor_w_uint(&w, 2);
    cbor_w_head(&w, CBOR_TAG, 72);
    cbor_w_bytes(&w, (const uint8_t *)sample_out, s.info.output_len);
    cbor_w_uint(&w, 3);
    cbor_w_uint(&w, micros);
    send(MSG_INFER_RESULT, &w);
}

/* Maps data label names onto the model's class indices; false (detail set) for a name the model lacks. */
static bool label_map(const dataset *d, uint8_t *map, uint32_t max)
{
    const char *p = d->names, *end = d->names + d->names_len;
    for (uint32_t c = 0; c < d->classes && c < max; c++) {
        const char *nl = p;
        while (nl < end && *nl != '\n')
            nl++;
        map[c] = (uint8_t)c;
        if (s.meta.n_classes) {
            map[c] = 0xFF;
            for (uint32_t m = 0; m < s.meta.n_classes; m++)
                if (s.meta.class_len[m] == nl - p && memcmp(s.meta.class_name[m], p, (size_t)(nl - p)) == 0)
                    map[c] = (uint8_t)m;
        }
        p = nl < end ? nl + 1 : end;
    }
    return true;
}

typedef struct {
    double accuracy, loss;
} eval_scores;

static bool evaluate(const dataset *d, const uint8_t *map, eval_scores *e)
{
    uint32_t correct = 0;
    double loss = 0;
    float scale = s.info.output_scale;
    for (uint32_t i = 0; i < d->n_eval; i++) {
        quantize_sample(d->eval_x, d->features, i, sample_in);
        if (ml_infer(sample_in, sample_out) != ML_OK)
            return false;
        uint32_t best = 0;
        for (uint32_t c = 1; c < s.info.output_len; c++)
            if (sample_out[c] > sample_out[best])
                best = c;
        uint8_t y = map[d->eval_y[i]];
        correct += best == y;
        float prob = ((float)sample_out[y] - (float)s.info.output_zero_point) * scale;
        if (prob < scale / 2)
            prob = scale / 2;
        loss -= logf(prob);
    }
    e->accuracy = d->n_eval ? (double)correct / d->n_eval : 0;
    e->loss = d->n_eval ? loss / d->n_eval : 0;
    return true;
}

#define UPDATE_MAX_BYTES (64u * 1024u) /* the largest message a host reads from a board (SERIAL_LIMITS) */
#define MSG_FRAGMENT 8
#define FRAGMENT_OVERHEAD 96 /* as edge_runtime/transport/fragments.py: the fragment's map around its data */

/* One UPDATE, or FRAGMENTs of it when it exceeds the agreed frame. */
static bool send_update(const uint8_t *update, uint32_t len, const uint8_t id[16])
{
    uint32_t frame = link_max_payload();
    if (len <= frame)
        return link_send(MSG_UPDATE, update, len);
    if (frame <= FRAGMENT_OVERHEAD) {
        /* no fragment fits: frame - FRAGMENT_OVERHEAD wrapped (nothing was sent) or was 0 (a division by zero,
         * 0 fragments "sent", and the residual written as if the host had the update) */
        tf_snprintf(s.detail, sizeof s.detail, "an update of %u B needs fragments, and they need frames over %u B; %u B agreed",
                    (unsigned)len, (unsigned)FRAGMENT_OVERHEAD, (unsigned)frame);
        send_error(E_UNSUPPORTED, MSG_TRAIN, s.detail);
        return false;
    }
    uint32_t piece = frame - FRAGMENT_OVERHEAD;
    uint32_t count = (len + piece - 1) / piece;
    uint8_t digest[32];
    tf_sha256(update, len, digest);
    for (uint32_t i = 0; i < count; i++) {
        uint32_t at = i * piece, n = len - at < piece ? len - at : piece;
        cbor_writer w;
        head(&w, 8, MSG_FRAGMENT);
        cbor_w_uint(&w, 2);
        cbor_w_bytes(&w, id, 16);
        cbor_w_uint(&w, 3);
        cbor_w_uint(&w, i);
        cbor_w_uint(&w, 4);
        cbor_w_uint(&w, count);
        cbor_w_uint(&w, 5);
        cbor_w_uint(&w, len);
        cbor_w_uint(&w, 6);
        cbor_w_bytes(&w, digest, 32);
        cbor_w_uint(&w, 7);
        cbor_w_bytes(&w, update + at, n);
        if (w.overflow || !link_send(MSG_FRAGMENT, w.buf, w.len))
            return false;
    }
    return true;
}

static bool residual_put(const uint8_t *data, uint32_t len) { return store_residual_append(data, len); }

static void on_train(void)
{
    cbor_item v[3], t[18];
    if (!parse(v, 3))
        return;
    const uint8_t *end = msg.payload + msg.len;
    const uint8_t *task_id, *base;
    size_t idlen, baselen;
    uint64_t round, epochs, batch = 32, coding = VC_INT8;
    double lr, density, prox = 0, clip = 0, noise = 0;
    bool evaluate_only = false, report = true, clip_bit = false;
    if (v[2].p == NULL || !cbor_map_index(v[2].p, end, t, 18) || !cbor_get_bytes(&t[2], &task_id, &idlen) ||
        idlen != 16 || !cbor_get_uint(&t[3], 1ull << 32, &round) || !cbor_get_bytes(&t[4], &base, &baselen) ||
        baselen != 32 || !cbor_get_uint(&t[5], 1000, &epochs) || !cbor_get_number(&t[6], &lr) ||
        !cbor_get_number(&t[7], &density) || density <= 0 || density > 1 ||
        (t[9].p && !cbor_get_uint(&t[9], 65536, &batch)) || (t[10].p && !cbor_get_number(&t[10], &prox)) ||
        (t[11].p && !cbor_get_bool(&t[11], &evaluate_only)) || (t[12].p && !cbor_get_uint(&t[12], 4, &coding)) ||
        (t[13].p && !cbor_get_bool(&t[13], &report)) || (t[14].p && !cbor_get_number(&t[14], &clip)) ||
        (t[15].p && !cbor_get_number(&t[15], &noise)) || (t[16].p && !cbor_get_bool(&t[16], &clip_bit))) {
        send_error(E_MALFORMED, MSG_TRAIN, "train.task: a field is missing or out of range");
        return;
    }
    if (!s.loaded) {
        send_error(E_NO_MODEL, MSG_TRAIN, "no model installed");
        return;
    }
    if (memcmp(base, s.active.sha256, 32) != 0) {
        tf_snprintf(s.detail, sizeof s.detail, "the task is for model %02x%02x%02x%02x%02x%02x, the board runs another",
                 base[0], base[1], base[2], base[3], base[4], base[5]);
        send_error(E_NO_MODEL, MSG_TRAIN, s.detail);
        return;
    }
    uint32_t dlen;
    dataset d;
    if (!dataset_open(plat_dataset(&dlen), dlen, &d) || d.n_train == 0) {
        send_error(E_UNSUPPORTED, MSG_TRAIN, "this board holds no training data");
        return;
    }
    if (!s.info.trainable) {
        send_error(E_UNSUPPORTED, MSG_TRAIN, "the model's last layer is not FULLY_CONNECTED");
        return;
    }
    if (noise > 0) {
        send_error(E_UNSUPPORTED, MSG_TRAIN, "local noise needs an entropy source this firmware does not have");
        return;
    }
    if (coding != VC_INT8 && coding != VC_FLOAT32) {
        tf_snprintf(s.detail, sizeof s.detail, "value coding %u: this firmware sends int8 or float32", (unsigned)coding);
        send_error(E_UNSUPPORTED, MSG_TRAIN, s.detail);
        return;
    }
    if (d.features != s.info.input_len || (s.meta.n_norm && s.info.input_len % s.meta.n_norm)) {
        tf_snprintf(s.detail, sizeof s.detail, "local data does not fit the model: samples of %u values, the model takes %u",
                 (unsigned)d.features, (unsigned)s.info.input_len);
        send_error(E_BAD_INPUT, MSG_TRAIN, s.detail);
        return;
    }
    uint8_t map[256];
    label_map(&d, map, sizeof map);
    for (uint32_t c = 0; c < d.classes && c < 256; c++)
        if (map[c] >= s.info.output_len) {
            send_error(E_BAD_INPUT, MSG_TRAIN, "local labels are not classes of the model");
            return;
        }
    uint32_t need = ml_train_bytes(d.n_train, (uint32_t)batch);
    uint32_t scratch_len;
    uint8_t *scratch = plat_scratch(&scratch_len);
    if (need > ML_ARENA_BYTES || s.info.weight_numel + s.info.bias_numel > UPD_MAX_PARAMS ||
        (uint64_t)d.n_train * (d.features + 1) > scratch_len) {
        tf_snprintf(s.detail, sizeof s.detail, "training needs %u B of the %u B arena (%u parameters, buffers for %u)",
                 (unsigned)need, (unsigned)ML_ARENA_BYTES, (unsigned)(s.info.weight_numel + s.info.bias_numel),
                 (unsigned)UPD_MAX_PARAMS);
        send_error(E_NO_MEMORY, MSG_TRAIN, s.detail);
        return;
    }
    s.state = TRAINING;
    eval_scores ev = {0, 0};
    bool have_eval = (report || evaluate_only) && d.n_eval > 0;
    if (have_eval && !evaluate(&d, map, &ev)) {
        send_error(E_INTERNAL, MSG_TRAIN, ml_last_error());
        return;
    }
    static upd_state st;
    ml_train_result result;
    uint32_t train_micros = 0;
    bool trained = !evaluate_only;
    if (trained) {
        int8_t *inputs = (int8_t *)scratch;
        uint8_t *labels = scratch + (uint64_t)d.n_train * d.features;
        for (uint32_t i = 0; i < d.n_train; i++) {
            quantize_sample(d.train_x, d.features, i, inputs + (uint64_t)i * d.features);
            labels[i] = map[d.train_y[i]];
        }
        ml_train_config cfg;
        ml_train_config_default(&cfg);
        cfg.epochs = (uint32_t)epochs;
        cfg.batch_size = (uint32_t)batch;
        cfg.learning_rate = lr;
        cfg.prox_mu = (float)prox;
        cfg.seed = (uint32_t)round;
        uint64_t c0 = plat_counter();
        ml_status ms = ml_train_last_layer(&cfg, inputs, labels, d.n_train, &result);
        train_micros = (uint32_t)((plat_counter() - c0) / PLAT_COUNTER_MHZ);
        if (ms != ML_OK) {
            send_error(ml_error_code(ms), MSG_TRAIN, ml_last_error());
            return;
        }
        upd_begin(&st, (uint8_t)coding);
        upd_add(&st, s.info.weight_tensor, s.info.weight_numel, result.delta_weight);
        upd_add(&st, s.info.bias_tensor, s.info.bias_numel, result.delta_bias);
        uint32_t rlen;
        const uint8_t *residual = store_residual(&rlen);
        upd_apply_residual(&st, residual, rlen);
        if (!upd_compress(&st, density, clip)) {
            send_error(E_INTERNAL, MSG_TRAIN, "the delta holds non-finite values; refusing to send it");
            return;
        }
    }
    /* the UPDATE */
    uint8_t id_src[16 + 64], update_id[32];
    size_t blen = strlen(plat_board_id());
    memcpy(id_src, task_id, 16);
    memcpy(id_src + 16, plat_board_id(), blen);
    tf_sha256(id_src, 16 + blen, update_id);
    uint32_t nmetrics = have_eval ? 3 : 0;
    if (trained && report)
        nmetrics++;
    bool with_bit = trained && clip > 0 && clip_bit;
    /* Encoded whole into external memory (the training inputs are spent), then sent as one UPDATE or, when it
     * exceeds the agreed frame, as FRAGMENTs of it (edge_runtime/transport/fragments.py). */
    cbor_writer w;
    cbor_w_init(&w, scratch, scratch_len < UPDATE_MAX_BYTES ? scratch_len : UPDATE_MAX_BYTES);
    cbor_w_head(&w, CBOR_MAP, 8 + (nmetrics > 0) + with_bit);
    cbor_w_uint(&w, 0);
    cbor_w_uint(&w, MSG_UPDATE);
    cbor_w_uint(&w, 1);
    cbor_w_uint(&w, 1);
    cbor_w_uint(&w, 2);
    cbor_w_bytes(&w, update_id, 16);
    cbor_w_uint(&w, 3);
    cbor_w_text(&w, plat_board_id());
    cbor_w_uint(&w, 4);
    cbor_w_uint(&w, round);
    cbor_w_uint(&w, 5);
    cbor_w_bytes(&w, s.active.sha256, 32);
    cbor_w_uint(&w, 6);
    cbor_w_uint(&w, evaluate_only ? d.n_eval : d.n_train);
    cbor_w_uint(&w, 7);
    if (trained)
        upd_encode_tensors(&st, &w);
    else
        cbor_w_head(&w, CBOR_ARRAY, 0);
    if (nmetrics) { /* canonical order: shorter keys first */
        cbor_w_uint(&w, 8);
        cbor_w_head(&w, CBOR_MAP, nmetrics);
        if (have_eval) {
            cbor_w_text(&w, "eval_loss");
            cbor_w_float(&w, (float)ev.loss);
        }
        if (trained && report) {
            cbor_w_text(&w, "train_loss");
            cbor_w_float(&w, result.last_epoch_loss);
        }
        if (have_eval) {
            cbor_w_text(&w, "eval_samples");
            cbor_w_float(&w, (float)d.n_eval);
            cbor_w_text(&w, "eval_accuracy");
            cbor_w_float(&w, (float)ev.accuracy);
        }
    }
    if (with_bit) {
        cbor_w_uint(&w, 11);
        cbor_w_bool(&w, st.below_clip == 1);
    }
    if (w.overflow) {
        tf_snprintf(s.detail, sizeof s.detail, "the update exceeds %u bytes", (unsigned)w.cap);
        send_error(E_NO_MEMORY, MSG_TRAIN, s.detail);
        return;
    }
    if (!send_update(w.buf, (uint32_t)w.len, update_id))
        return; /* the host did not take it: the residual stays as it was */
    if (trained && store_residual_begin() && upd_residual_write(&st, residual_put))
        store_residual_seal(); /* only now: the host has every byte of the update */
    if (trained) {
        ram_figures r;
        plat_ram_figures(&r);
        tf_snprintf(s.detail, sizeof s.detail,
                    "trained %u epochs x %u samples in %u us (%s), arena %u of %u B, stack high-water %u B",
                    (unsigned)epochs, (unsigned)d.n_train, (unsigned)train_micros, plat_counter_name(),
                    (unsigned)need, (unsigned)ML_ARENA_BYTES, (unsigned)r.stack_used);
        send_log(6, s.detail);
    }
}

static void dispatch(void)
{
    s.state = IDLE;
    switch (msg.type) {
    case MSG_HELLO:
        on_hello();
        break;
    case MSG_STATUS: {
        cbor_item v[2];
        if (parse(v, 2))
            send_status();
        break;
    }
    case MSG_MODEL_BEGIN:
        on_model_begin();
        break;
    case MSG_MODEL_DATA:
        on_model_data();
        break;
    case MSG_MODEL_COMMIT:
        on_model_commit();
        break;
    case MSG_PATCH_BEGIN:
        on_patch_begin();
        break;
    case MSG_INFER:
        on_infer();
        break;
    case MSG_TRAIN:
        on_train();
        break;
    case MSG_RESET:
        plat_reset(0);
    default:
        tf_snprintf(s.detail, sizeof s.detail, "the board does not take message type %u", msg.type);
        send_error(E_UNSUPPORTED, msg.type, s.detail);
    }
    s.state = IDLE;
}

void session_main(uint8_t reason)
{
    memset(&s, 0, sizeof s);
    s.booted_ms = plat_millis();
    link_init(115200);
    load_installed();
    cbor_writer w;
    head(&w, 3, MSG_RESET);
    cbor_w_uint(&w, 2);
    cbor_w_uint(&w, reason);
    send(MSG_RESET, &w); /* "I rebooted": the host greets the board again */
    for (;;)
        if (link_poll(&msg))
            dispatch();
}
