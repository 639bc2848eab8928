/* The link's framing compiled for the host: the platform is a byte queue the unit tests fill. */
#include "../src/link.c"

static const uint8_t *feed;
static size_t feed_len, feed_at;
static uint8_t written[LINK_MAX_ENCODED * 2];
static size_t written_len;
static uint32_t now_ms;

void host_feed(const uint8_t *bytes, size_t len)
{
    feed = bytes;
    feed_len = len;
    feed_at = 0;
}
const uint8_t *host_written(size_t *len)
{
    *len = written_len;
    return written;
}
void host_clear_written(void) { written_len = 0; }

int plat_getc(void) { return feed_at < feed_len ? feed[feed_at++] : -1; }
void plat_write(const uint8_t *data, size_t len)
{
    if (written_len + len <= sizeof written) {
        memcpy(written + written_len, data, len);
        written_len += len;
    }
}
uint32_t plat_millis(void) { return now_ms += 7; }
