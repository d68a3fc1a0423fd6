/* edge-retina firmware bridge: reference client, wire protocol v1 (revision 1.1). See er_client.h. */
#define _POSIX_C_SOURCE 200809L
#include "er_client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define ER_HEADER_SIZE 12
#define ER_META_MAX 4096 /* SCREEN metadata this client builds; well under the server's 64 KiB */

/* Bitwise CRC-32 (reflected polynomial 0xEDB88320): no table, so no 1 KiB of RAM or flash, and
 * fast enough for the few megabytes of one capture. */
uint32_t er_crc32(uint32_t crc, const void *data, size_t len) {
    const uint8_t *p = (const uint8_t *)data;
    crc = ~crc;
    while (len--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

static void put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

static uint32_t get_u32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static int write_all(int fd, const void *data, size_t len) {
    const uint8_t *p = (const uint8_t *)data;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return ER_ERR_IO;
        p += n; len -= (size_t)n;
    }
    return ER_OK;
}

static int read_all(int fd, void *data, size_t len) {
    uint8_t *p = (uint8_t *)data;
    while (len) {
        ssize_t n = read(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return ER_ERR_IO;
        p += n; len -= (size_t)n;
    }
    return ER_OK;
}

int er_connect_tcp(er_client *c, const char *host, uint16_t port) {
    struct addrinfo hints, *found = NULL;
    char service[8];
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(service, sizeof service, "%u", (unsigned)port);
    c->fd = -1;
    if (getaddrinfo(host, service, &hints, &found) != 0) return ER_ERR_IO;
    for (struct addrinfo *a = found; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
        if (fd < 0) continue;
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) { c->fd = fd; break; }
        close(fd);
    }
    freeaddrinfo(found);
    return c->fd < 0 ? ER_ERR_IO : ER_OK;
}

int er_connect_unix(er_client *c, const char *path) {
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    c->fd = -1;
    if (strlen(path) >= sizeof addr.sun_path) return ER_ERR_ARGUMENT;
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0) return ER_ERR_IO;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) { close(fd); return ER_ERR_IO; }
    c->fd = fd;
    return ER_OK;
}

void er_attach_fd(er_client *c, int fd) { c->fd = fd; }

int er_set_timeout(er_client *c, unsigned milliseconds) {
    struct timeval tv;
    tv.tv_sec = milliseconds / 1000;
    tv.tv_usec = (milliseconds % 1000) * 1000;
    return setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0 ? ER_OK : ER_ERR_IO;
}

void er_close(er_client *c) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
}

int er_send(er_client *c, uint8_t type, const char *meta_json, const void *body, size_t body_len) {
    size_t meta_len = strlen(meta_json);
    uint64_t payload_len = 4 + (uint64_t)meta_len + body_len;
    if (payload_len > 0xFFFFFFFFu) return ER_ERR_ARGUMENT;
    uint8_t header[ER_HEADER_SIZE], meta_prefix[4], trailer[4];
    header[0] = 'E'; header[1] = 'R'; header[2] = ER_PROTOCOL_VERSION; header[3] = type;
    put_u32(header + 4, (uint32_t)payload_len);
    put_u32(header + 8, er_crc32(0, header, 8));
    put_u32(meta_prefix, (uint32_t)meta_len);
    uint32_t crc = er_crc32(0, meta_prefix, 4);
    crc = er_crc32(crc, meta_json, meta_len);
    if (body_len) crc = er_crc32(crc, body, body_len);
    put_u32(trailer, crc);
    int rc = write_all(c->fd, header, sizeof header);
    if (rc == ER_OK) rc = write_all(c->fd, meta_prefix, 4);
    if (rc == ER_OK) rc = write_all(c->fd, meta_json, meta_len);
    if (rc == ER_OK && body_len) rc = write_all(c->fd, body, body_len);
    if (rc == ER_OK) rc = write_all(c->fd, trailer, 4);
    return rc;
}

/* Read and drop `len` payload bytes, folding them into the running CRC. */
static int skip_bytes(int fd, size_t len, uint32_t *crc) {
    uint8_t scratch[256];
    while (len) {
        size_t n = len < sizeof scratch ? len : sizeof scratch;
        if (read_all(fd, scratch, n) != ER_OK) return ER_ERR_IO;
        *crc = er_crc32(*crc, scratch, n);
        len -= n;
    }
    return ER_OK;
}

int er_receive(er_client *c, uint8_t *type, char *json, size_t json_cap) {
    uint8_t header[ER_HEADER_SIZE], word[4];
    if (json_cap == 0) return ER_ERR_ARGUMENT;
    json[0] = '\0';
    if (read_all(c->fd, header, sizeof header) != ER_OK) return ER_ERR_IO;
    if (header[0] != 'E' || header[1] != 'R' || header[2] != ER_PROTOCOL_VERSION) return ER_ERR_PROTOCOL;
    if (er_crc32(0, header, 8) != get_u32(header + 8)) return ER_ERR_PROTOCOL;
    uint32_t payload_len = get_u32(header + 4);
    if (payload_len < 4 || read_all(c->fd, word, 4) != ER_OK) return ER_ERR_PROTOCOL;
    uint32_t meta_len = get_u32(word);
    if (meta_len > payload_len - 4) return ER_ERR_PROTOCOL;
    uint32_t crc = er_crc32(0, word, 4);
    int fits = meta_len < json_cap;
    if (fits) {
        if (read_all(c->fd, json, meta_len) != ER_OK) return ER_ERR_IO;
        crc = er_crc32(crc, json, meta_len);
        json[meta_len] = '\0';
    } else if (skip_bytes(c->fd, meta_len, &crc) != ER_OK) {
        return ER_ERR_IO;
    }
    if (skip_bytes(c->fd, payload_len - 4 - meta_len, &crc) != ER_OK) return ER_ERR_IO;
    if (read_all(c->fd, word, 4) != ER_OK) return ER_ERR_IO;
    if (get_u32(word) != crc) return ER_ERR_PROTOCOL;
    *type = header[3];
    if (!fits) { json[0] = '\0'; return ER_ERR_SPACE; }
    return ER_OK;
}

/* Send a request and read its reply; map ERROR replies to return codes. */
static int exchange(er_client *c, uint8_t type, const char *meta, const void *body, size_t body_len,
                    uint8_t expected, char *reply, size_t reply_cap) {
    uint8_t got = 0;
    int rc = er_send(c, type, meta, body, body_len);
    if (rc == ER_OK) rc = er_receive(c, &got, reply, reply_cap);
    if (rc != ER_OK) return rc;
    if (got == ER_MSG_ERROR) {
        char code[32];
        if (er_json_string(reply, "code", code, sizeof code) == ER_OK && strcmp(code, "busy") == 0) return ER_ERR_BUSY;
        return ER_ERR_SERVER;
    }
    return got == expected ? ER_OK : ER_ERR_PROTOCOL;
}

int er_hello(er_client *c, char *reply, size_t reply_cap) {
    return exchange(c, ER_MSG_HELLO, "{\"versions\":[1],\"client\":\"edge-retina-c/1\"}", NULL, 0, ER_MSG_HELLO,
                    reply, reply_cap);
}

int er_status(er_client *c, char *reply, size_t reply_cap) {
    return exchange(c, ER_MSG_STATUS, "{}", NULL, 0, ER_MSG_STATUS, reply, reply_cap);
}

int er_selftest(er_client *c, char *reply, size_t reply_cap) {
    return exchange(c, ER_MSG_SELFTEST, "{}", NULL, 0, ER_MSG_SELFTEST, reply, reply_cap);
}

/* Printable ASCII without '"' and '\\', so fields go into the JSON verbatim (no escaping code). */
static int plain_text(const char *s, size_t max_len) {
    size_t n = 0;
    for (; s[n]; n++) {
        if (s[n] < 0x20 || s[n] > 0x7E || s[n] == '"' || s[n] == '\\') return 0;
    }
    return n > 0 && n <= max_len;
}

/* Append `"key":"value"` (value NULL: nothing) to buf at *used. */
static int append_field(char *buf, size_t cap, size_t *used, const char *key, const char *value) {
    if (!value) return ER_OK;
    if (!plain_text(value, 64)) return ER_ERR_ARGUMENT;
    int n = snprintf(buf + *used, cap - *used, "%s\"%s\":\"%s\"", *used > 1 ? "," : "", key, value);
    if (n < 0 || (size_t)n >= cap - *used) return ER_ERR_ARGUMENT;
    *used += (size_t)n;
    return ER_OK;
}

/* Open `meta` with the fields every SCREEN has (format given apart); the caller appends and closes it. */
static int screen_meta(const er_screen_meta *m, const char *format, char *meta, size_t cap, size_t *used) {
    *used = 1;
    meta[0] = '{';
    meta[1] = '\0';
    if (!m->request_id || !format) return ER_ERR_ARGUMENT;
    int rc = append_field(meta, cap, used, "request_id", m->request_id);
    if (rc == ER_OK) rc = append_field(meta, cap, used, "format", format);
    if (rc == ER_OK) rc = append_field(meta, cap, used, "eye", m->eye);
    if (rc == ER_OK) rc = append_field(meta, cap, used, "patient", m->patient);
    if (rc == ER_OK) rc = append_field(meta, cap, used, "captured_at", m->captured_at);
    return rc;
}

/* Append `fmt` formatted with three unsigned numbers (NULL: nothing), then close the JSON object. */
static int close_meta(char *meta, size_t cap, size_t *used, const char *fmt, unsigned long a, unsigned long b,
                      unsigned long c) {
    if (fmt) {
        int n = snprintf(meta + *used, cap - *used, fmt, a, b, c);
        if (n < 0 || (size_t)n >= cap - *used) return ER_ERR_ARGUMENT;
        *used += (size_t)n;
    }
    if (*used + 2 > cap) return ER_ERR_ARGUMENT;
    meta[(*used)++] = '}';
    meta[*used] = '\0';
    return ER_OK;
}

int er_screen(er_client *c, const er_screen_meta *m, const void *image, size_t image_len,
              char *reply, size_t reply_cap) {
    char meta[ER_META_MAX];
    size_t used;
    if (!image || image_len == 0) return ER_ERR_ARGUMENT;
    int rc = screen_meta(m, m->format, meta, sizeof meta, &used);
    if (rc != ER_OK) return rc;
    rc = close_meta(meta, sizeof meta, &used, strcmp(m->format, "raw") == 0 ? ",\"shape\":[%lu,%lu,%lu]" : NULL,
                    (unsigned long)m->raw_height, (unsigned long)m->raw_width, (unsigned long)m->raw_channels);
    if (rc != ER_OK) return rc;
    return exchange(c, ER_MSG_SCREEN, meta, image, image_len, ER_MSG_RESULT, reply, reply_cap);
}

int er_screen_raw(er_client *c, const er_screen_meta *m, const er_raw_frame *frame, char *reply, size_t reply_cap) {
    char meta[ER_META_MAX];
    size_t used;
    if (!frame->pixels || !frame->pixel_format || frame->width == 0 || frame->height == 0) return ER_ERR_ARGUMENT;
    int three = strcmp(frame->pixel_format, "rgb8") == 0 || strcmp(frame->pixel_format, "bgr8") == 0;
    uint64_t row = (uint64_t)frame->width * (three ? 3u : 1u);
    uint64_t stride = frame->stride ? frame->stride : row;
    if (stride < row) return ER_ERR_ARGUMENT;
    uint64_t size = stride * frame->height;
    if (size > 0xFFFFFFFFu - ER_META_MAX) return ER_ERR_ARGUMENT;
    int rc = screen_meta(m, "raw", meta, sizeof meta, &used);
    if (rc == ER_OK) rc = append_field(meta, sizeof meta, &used, "pixel_format", frame->pixel_format);
    if (rc == ER_OK) {
        rc = close_meta(meta, sizeof meta, &used, ",\"width\":%lu,\"height\":%lu,\"stride\":%lu",
                        (unsigned long)frame->width, (unsigned long)frame->height, (unsigned long)stride);
    }
    if (rc != ER_OK) return rc;
    return exchange(c, ER_MSG_SCREEN, meta, frame->pixels, (size_t)size, ER_MSG_RESULT, reply, reply_cap);
}

/* Position just after `"key":` (whitespace skipped), or NULL. */
static const char *find_value(const char *json, const char *key) {
    size_t key_len = strlen(key);
    for (const char *p = strchr(json, '"'); p; p = strchr(p + 1, '"')) {
        if (strncmp(p + 1, key, key_len) != 0 || p[1 + key_len] != '"') continue;
        const char *q = p + 2 + key_len;
        while (*q == ' ') q++;
        if (*q != ':') continue;
        q++;
        while (*q == ' ') q++;
        return q;
    }
    return NULL;
}

int er_json_string(const char *json, const char *key, char *out, size_t out_cap) {
    const char *v = find_value(json, key);
    if (!v || *v != '"' || out_cap == 0) return ER_ERR_ARGUMENT;
    size_t n = 0;
    for (v++; *v && *v != '"'; v++) {
        if (*v == '\\' && v[1]) v++; /* keep the escaped character itself */
        if (n + 1 >= out_cap) return ER_ERR_SPACE;
        out[n++] = *v;
    }
    out[n] = '\0';
    return *v == '"' ? ER_OK : ER_ERR_PROTOCOL;
}

int er_json_long(const char *json, const char *key, long *out) {
    const char *v = find_value(json, key);
    if (!v) return ER_ERR_ARGUMENT;
    char *end;
    errno = 0;
    long value = strtol(v, &end, 10);
    if (end == v || errno) return ER_ERR_ARGUMENT;
    *out = value;
    return ER_OK;
}
