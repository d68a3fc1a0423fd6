/* edge-retina firmware bridge: reference client, wire protocol v1 (revision 1.2). See er_client.h. */
#define _GNU_SOURCE /* POSIX 2008, and Linux's memfd_create and F_ADD_SEALS (frames by descriptor) */
#include "er_client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#define ER_HEADER_SIZE 12
#define ER_META_MAX 4096 /* SCREEN metadata this client builds; well under the server's 64 KiB */

/* CRC-32 (reflected polynomial 0xEDB88320), a byte at a time from a 256-entry table: 1 KiB of
 * flash, about 4x faster than bit by bit (measured), which matters for raw frames (a 3 MP RGB frame is
 * 9 MB). Entry n is the CRC register after shifting the byte n through it. */
static const uint32_t crc_table[256] = {
    0x00000000u, 0x77073096u, 0xEE0E612Cu, 0x990951BAu, 0x076DC419u, 0x706AF48Fu,
    0xE963A535u, 0x9E6495A3u, 0x0EDB8832u, 0x79DCB8A4u, 0xE0D5E91Eu, 0x97D2D988u,
    0x09B64C2Bu, 0x7EB17CBDu, 0xE7B82D07u, 0x90BF1D91u, 0x1DB71064u, 0x6AB020F2u,
    0xF3B97148u, 0x84BE41DEu, 0x1ADAD47Du, 0x6DDDE4EBu, 0xF4D4B551u, 0x83D385C7u,
    0x136C9856u, 0x646BA8C0u, 0xFD62F97Au, 0x8A65C9ECu, 0x14015C4Fu, 0x63066CD9u,
    0xFA0F3D63u, 0x8D080DF5u, 0x3B6E20C8u, 0x4C69105Eu, 0xD56041E4u, 0xA2677172u,
    0x3C03E4D1u, 0x4B04D447u, 0xD20D85FDu, 0xA50AB56Bu, 0x35B5A8FAu, 0x42B2986Cu,
    0xDBBBC9D6u, 0xACBCF940u, 0x32D86CE3u, 0x45DF5C75u, 0xDCD60DCFu, 0xABD13D59u,
    0x26D930ACu, 0x51DE003Au, 0xC8D75180u, 0xBFD06116u, 0x21B4F4B5u, 0x56B3C423u,
    0xCFBA9599u, 0xB8BDA50Fu, 0x2802B89Eu, 0x5F058808u, 0xC60CD9B2u, 0xB10BE924u,
    0x2F6F7C87u, 0x58684C11u, 0xC1611DABu, 0xB6662D3Du, 0x76DC4190u, 0x01DB7106u,
    0x98D220BCu, 0xEFD5102Au, 0x71B18589u, 0x06B6B51Fu, 0x9FBFE4A5u, 0xE8B8D433u,
    0x7807C9A2u, 0x0F00F934u, 0x9609A88Eu, 0xE10E9818u, 0x7F6A0DBBu, 0x086D3D2Du,
    0x91646C97u, 0xE6635C01u, 0x6B6B51F4u, 0x1C6C6162u, 0x856530D8u, 0xF262004Eu,
    0x6C0695EDu, 0x1B01A57Bu, 0x8208F4C1u, 0xF50FC457u, 0x65B0D9C6u, 0x12B7E950u,
    0x8BBEB8EAu, 0xFCB9887Cu, 0x62DD1DDFu, 0x15DA2D49u, 0x8CD37CF3u, 0xFBD44C65u,
    0x4DB26158u, 0x3AB551CEu, 0xA3BC0074u, 0xD4BB30E2u, 0x4ADFA541u, 0x3DD895D7u,
    0xA4D1C46Du, 0xD3D6F4FBu, 0x4369E96Au, 0x346ED9FCu, 0xAD678846u, 0xDA60B8D0u,
    0x44042D73u, 0x33031DE5u, 0xAA0A4C5Fu, 0xDD0D7CC9u, 0x5005713Cu, 0x270241AAu,
    0xBE0B1010u, 0xC90C2086u, 0x5768B525u, 0x206F85B3u, 0xB966D409u, 0xCE61E49Fu,
    0x5EDEF90Eu, 0x29D9C998u, 0xB0D09822u, 0xC7D7A8B4u, 0x59B33D17u, 0x2EB40D81u,
    0xB7BD5C3Bu, 0xC0BA6CADu, 0xEDB88320u, 0x9ABFB3B6u, 0x03B6E20Cu, 0x74B1D29Au,
    0xEAD54739u, 0x9DD277AFu, 0x04DB2615u, 0x73DC1683u, 0xE3630B12u, 0x94643B84u,
    0x0D6D6A3Eu, 0x7A6A5AA8u, 0xE40ECF0Bu, 0x9309FF9Du, 0x0A00AE27u, 0x7D079EB1u,
    0xF00F9344u, 0x8708A3D2u, 0x1E01F268u, 0x6906C2FEu, 0xF762575Du, 0x806567CBu,
    0x196C3671u, 0x6E6B06E7u, 0xFED41B76u, 0x89D32BE0u, 0x10DA7A5Au, 0x67DD4ACCu,
    0xF9B9DF6Fu, 0x8EBEEFF9u, 0x17B7BE43u, 0x60B08ED5u, 0xD6D6A3E8u, 0xA1D1937Eu,
    0x38D8C2C4u, 0x4FDFF252u, 0xD1BB67F1u, 0xA6BC5767u, 0x3FB506DDu, 0x48B2364Bu,
    0xD80D2BDAu, 0xAF0A1B4Cu, 0x36034AF6u, 0x41047A60u, 0xDF60EFC3u, 0xA867DF55u,
    0x316E8EEFu, 0x4669BE79u, 0xCB61B38Cu, 0xBC66831Au, 0x256FD2A0u, 0x5268E236u,
    0xCC0C7795u, 0xBB0B4703u, 0x220216B9u, 0x5505262Fu, 0xC5BA3BBEu, 0xB2BD0B28u,
    0x2BB45A92u, 0x5CB36A04u, 0xC2D7FFA7u, 0xB5D0CF31u, 0x2CD99E8Bu, 0x5BDEAE1Du,
    0x9B64C2B0u, 0xEC63F226u, 0x756AA39Cu, 0x026D930Au, 0x9C0906A9u, 0xEB0E363Fu,
    0x72076785u, 0x05005713u, 0x95BF4A82u, 0xE2B87A14u, 0x7BB12BAEu, 0x0CB61B38u,
    0x92D28E9Bu, 0xE5D5BE0Du, 0x7CDCEFB7u, 0x0BDBDF21u, 0x86D3D2D4u, 0xF1D4E242u,
    0x68DDB3F8u, 0x1FDA836Eu, 0x81BE16CDu, 0xF6B9265Bu, 0x6FB077E1u, 0x18B74777u,
    0x88085AE6u, 0xFF0F6A70u, 0x66063BCAu, 0x11010B5Cu, 0x8F659EFFu, 0xF862AE69u,
    0x616BFFD3u, 0x166CCF45u, 0xA00AE278u, 0xD70DD2EEu, 0x4E048354u, 0x3903B3C2u,
    0xA7672661u, 0xD06016F7u, 0x4969474Du, 0x3E6E77DBu, 0xAED16A4Au, 0xD9D65ADCu,
    0x40DF0B66u, 0x37D83BF0u, 0xA9BCAE53u, 0xDEBB9EC5u, 0x47B2CF7Fu, 0x30B5FFE9u,
    0xBDBDF21Cu, 0xCABAC28Au, 0x53B39330u, 0x24B4A3A6u, 0xBAD03605u, 0xCDD70693u,
    0x54DE5729u, 0x23D967BFu, 0xB3667A2Eu, 0xC4614AB8u, 0x5D681B02u, 0x2A6F2B94u,
    0xB40BBE37u, 0xC30C8EA1u, 0x5A05DF1Bu, 0x2D02EF8Du
};

uint32_t er_crc32(uint32_t crc, const void *data, size_t len) {
    const uint8_t *p = (const uint8_t *)data;
    crc = ~crc;
    while (len--) crc = (crc >> 8) ^ crc_table[(crc ^ *p++) & 0xFFu];
    return ~crc;
}

static void put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

static uint32_t get_u32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

/* Write all of `data`. To a socket with send(MSG_NOSIGNAL): a server gone fails the write (EPIPE)
 * instead of raising SIGPIPE, whose default action kills the process, and a library cannot ask its
 * firmware to ignore a signal process-wide. Anything else (a serial port, a memfd) refuses send with
 * ENOTSOCK and gets write(). */
static int write_all(int fd, const void *data, size_t len) {
    const uint8_t *p = (const uint8_t *)data;
    int is_socket = 1;
    while (len) {
        ssize_t n = is_socket ? send(fd, p, len, MSG_NOSIGNAL) : write(fd, p, len);
        if (n < 0 && is_socket && errno == ENOTSOCK) { is_socket = 0; continue; }
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
        if (n == 0) errno = 0; /* the peer closed the connection: no error of the system's */
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

/* Write `data` to the socket `sock`, the descriptor `fd` passed with its first bytes (SCM_RIGHTS). */
static int write_with_fd(int sock, uint8_t *data, size_t len, int fd) {
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
    struct iovec iov;
    struct msghdr msg;
    memset(&control, 0, sizeof control);
    memset(&msg, 0, sizeof msg);
    iov.iov_base = data;
    iov.iov_len = len;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &fd, sizeof fd);
    ssize_t n;
    do n = sendmsg(sock, &msg, MSG_NOSIGNAL); while (n < 0 && errno == EINTR); /* see write_all */
    if (n <= 0) return ER_ERR_IO;
    return write_all(sock, data + n, len - (size_t)n);
}

/* er_send, and `pass_fd` (unless -1) passed with the frame's first bytes: inside the frame, which is
 * how the server tells which frame a descriptor came with. */
static int send_frame(er_client *c, uint8_t type, const char *meta_json, const void *body, size_t body_len,
                      int pass_fd) {
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
    int rc = pass_fd < 0 ? write_all(c->fd, header, sizeof header)
                         : write_with_fd(c->fd, header, sizeof header, pass_fd);
    if (rc == ER_OK) rc = write_all(c->fd, meta_prefix, 4);
    if (rc == ER_OK) rc = write_all(c->fd, meta_json, meta_len);
    if (rc == ER_OK && body_len) rc = write_all(c->fd, body, body_len);
    if (rc == ER_OK) rc = write_all(c->fd, trailer, 4);
    return rc;
}

int er_send(er_client *c, uint8_t type, const char *meta_json, const void *body, size_t body_len) {
    return send_frame(c, type, meta_json, body, body_len, -1);
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
    if (payload_len < 4) return ER_ERR_PROTOCOL;
    if (read_all(c->fd, word, 4) != ER_OK) return ER_ERR_IO;
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

/* Send a request (with the descriptor `pass_fd` unless -1) and read its reply; map ERROR replies to
 * return codes. */
static int exchange(er_client *c, uint8_t type, const char *meta, const void *body, size_t body_len, int pass_fd,
                    uint8_t expected, char *reply, size_t reply_cap) {
    uint8_t got = 0;
    int rc = send_frame(c, type, meta, body, body_len, pass_fd);
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
    return exchange(c, ER_MSG_HELLO, "{\"versions\":[1],\"client\":\"edge-retina-c/1\"}", NULL, 0, -1,
                    ER_MSG_HELLO, reply, reply_cap);
}

int er_status(er_client *c, char *reply, size_t reply_cap) {
    return exchange(c, ER_MSG_STATUS, "{}", NULL, 0, -1, ER_MSG_STATUS, reply, reply_cap);
}

int er_selftest(er_client *c, char *reply, size_t reply_cap) {
    return exchange(c, ER_MSG_SELFTEST, "{}", NULL, 0, -1, ER_MSG_SELFTEST, reply, reply_cap);
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
    return exchange(c, ER_MSG_SCREEN, meta, image, image_len, -1, ER_MSG_RESULT, reply, reply_cap);
}

/* The row stride and byte size of `frame` (ER_ERR_ARGUMENT for a layout the protocol refuses). */
static int raw_layout(const er_raw_frame *frame, uint64_t *stride, uint64_t *size) {
    if (!frame->pixel_format || frame->width == 0 || frame->height == 0) return ER_ERR_ARGUMENT;
    int three = strcmp(frame->pixel_format, "rgb8") == 0 || strcmp(frame->pixel_format, "bgr8") == 0;
    uint64_t row = (uint64_t)frame->width * (three ? 3u : 1u);
    *stride = frame->stride ? frame->stride : row;
    if (*stride < row) return ER_ERR_ARGUMENT;
    *size = *stride * frame->height;
    return *size > 0xFFFFFFFFu - ER_META_MAX ? ER_ERR_ARGUMENT : ER_OK;
}

/* The metadata of a raw frame's SCREEN; `by_fd`: the frame comes as a descriptor (revision 1.2). */
static int raw_meta(const er_screen_meta *m, const er_raw_frame *frame, uint64_t stride, int by_fd, char *meta,
                    size_t cap) {
    size_t used;
    int rc = screen_meta(m, "raw", meta, cap, &used);
    if (rc == ER_OK) rc = append_field(meta, cap, &used, "pixel_format", frame->pixel_format);
    if (rc == ER_OK && by_fd) rc = append_field(meta, cap, &used, "body", "fd");
    if (rc == ER_OK) {
        rc = close_meta(meta, cap, &used, ",\"width\":%lu,\"height\":%lu,\"stride\":%lu",
                        (unsigned long)frame->width, (unsigned long)frame->height, (unsigned long)stride);
    }
    return rc;
}

int er_screen_raw(er_client *c, const er_screen_meta *m, const er_raw_frame *frame, char *reply, size_t reply_cap) {
    char meta[ER_META_MAX];
    uint64_t stride, size;
    if (!frame->pixels || raw_layout(frame, &stride, &size) != ER_OK) return ER_ERR_ARGUMENT;
    int rc = raw_meta(m, frame, stride, 0, meta, sizeof meta);
    if (rc != ER_OK) return rc;
    return exchange(c, ER_MSG_SCREEN, meta, frame->pixels, (size_t)size, -1, ER_MSG_RESULT, reply, reply_cap);
}

int er_frame_memfd(const er_raw_frame *frame) {
    uint64_t stride, size;
    if (!frame->pixels || raw_layout(frame, &stride, &size) != ER_OK) return ER_ERR_ARGUMENT;
#if defined(MFD_ALLOW_SEALING) && defined(F_ADD_SEALS)
    int fd = memfd_create("er-frame", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return ER_ERR_IO;
    if (write_all(fd, frame->pixels, (size_t)size) == ER_OK
        && fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == 0) {
        return fd;
    }
    int saved = errno;
    close(fd);
    errno = saved;
#else
    errno = ENOSYS;
#endif
    return ER_ERR_IO;
}

int er_screen_raw_fd(er_client *c, const er_screen_meta *m, const er_raw_frame *frame, int frame_fd, char *reply,
                     size_t reply_cap) {
    char meta[ER_META_MAX];
    uint64_t stride, size;
    if (frame_fd < 0 || raw_layout(frame, &stride, &size) != ER_OK) return ER_ERR_ARGUMENT;
    int rc = raw_meta(m, frame, stride, 1, meta, sizeof meta);
    if (rc != ER_OK) return rc;
    return exchange(c, ER_MSG_SCREEN, meta, NULL, 0, frame_fd, ER_MSG_RESULT, reply, reply_cap);
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

int er_json_has(const char *json, const char *key, const char *value) {
    const char *v = find_value(json, key);
    size_t len = strlen(value);
    if (!v || *v != '[') return 0;
    for (v++; *v && *v != ']'; v++) {
        if (*v != '"') continue;
        const char *start = ++v;
        while (*v && *v != '"') v += (*v == '\\' && v[1]) ? 2 : 1;
        if (!*v) return 0;
        if ((size_t)(v - start) == len && strncmp(start, value, len) == 0) return 1;
    }
    return 0;
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
