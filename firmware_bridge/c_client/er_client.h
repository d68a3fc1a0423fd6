/*
 * edge-retina firmware bridge: reference client, wire protocol v1, revision 1.2 (docs/PROTOCOL.md).
 *
 * C99, POSIX sockets only, no allocation, no other dependency: meant to be copied into camera
 * firmware. One request at a time per connection: send a message, read its reply. (Frames passed
 * by file descriptor, revision 1.2, also need Linux's memfd_create: see er_frame_memfd.) Writes to
 * a socket never raise SIGPIPE (MSG_NOSIGNAL): a server gone is ER_ERR_IO with errno EPIPE, so the
 * firmware need not ignore the signal.
 *
 *   er_client c;
 *   if (er_connect_tcp(&c, "127.0.0.1", 7070) == ER_OK) {
 *       er_screen_meta m = { .request_id = "cam1:000123", .format = "jpeg", .eye = "left" };
 *       char reply[8192];
 *       int rc = er_screen(&c, &m, jpeg, jpeg_len, reply, sizeof reply);   // reply: RESULT JSON
 *       er_close(&c);
 *   }
 */
#ifndef ER_CLIENT_H
#define ER_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ER_PROTOCOL_VERSION 1

/* Message types (frame byte 3). */
enum er_message_type {
    ER_MSG_HELLO = 0x01,
    ER_MSG_SCREEN = 0x02,
    ER_MSG_RESULT = 0x03,
    ER_MSG_STATUS = 0x04,
    ER_MSG_SELFTEST = 0x05,
    ER_MSG_ERROR = 0x7F
};

/* Return codes. ER_ERR_SERVER and ER_ERR_BUSY leave the server's ERROR JSON in the reply buffer. */
enum er_result {
    ER_OK = 0,
    ER_ERR_IO = -1,        /* connect/read/write failed (errno says why) or the peer closed the
                              connection (errno 0) */
    ER_ERR_PROTOCOL = -2,  /* the reply is not a valid v1 frame (bad magic, checksum, layout) */
    ER_ERR_SERVER = -3,    /* the server answered ERROR (see its "code": docs/PROTOCOL.md) */
    ER_ERR_BUSY = -4,      /* ERROR "busy": send the same request again after "retry_after_ms" */
    ER_ERR_ARGUMENT = -5,  /* an invalid argument (a field with characters the protocol refuses...) */
    ER_ERR_SPACE = -6      /* the reply does not fit the caller's buffer (it was read and dropped) */
};

typedef struct {
    int fd;
} er_client;

/* SCREEN metadata. request_id and format are required; NULL leaves an optional field out. Ids
 * (request_id, patient) are 1-64 characters of A-Z a-z 0-9 . _ : - ; keep request ids unique per
 * capture and reuse them on a retry: the server never screens one twice. */
typedef struct {
    const char *request_id;
    const char *format;       /* "jpeg", "png" or "raw" (protocol 1.0 raw; see er_screen_raw for 1.1) */
    const char *eye;          /* "left", "right", "unknown" or NULL */
    const char *patient;      /* pseudonymous patient id or NULL */
    const char *captured_at;  /* ISO-8601 time or NULL */
    uint32_t raw_height, raw_width, raw_channels;  /* "raw" only: uint8 RGB (3) or grey (1) */
} er_screen_meta;

/* A raw camera frame (protocol 1.1): `height` rows of `stride` bytes (0: rows without padding), each
 * starting with `width` pixels of `pixel_format`: "rgb8", "bgr8" (3 bytes a pixel), "gray8", or an 8-bit
 * Bayer mosaic "bayer_rggb8", "bayer_bggr8", "bayer_grbg8", "bayer_gbrg8" (named by the top-left 2x2
 * block, row by row). The server demosaics Bayer frames. The frame must fit the server's frame limit
 * (HELLO "max_payload"). */
typedef struct {
    const void *pixels;
    const char *pixel_format;
    uint32_t width, height, stride;
} er_raw_frame;

/* CRC-32 (IEEE 802.3, zlib's crc32): er_crc32(0, "123456789", 9) == 0xCBF43926. */
uint32_t er_crc32(uint32_t crc, const void *data, size_t len);

int er_connect_tcp(er_client *c, const char *host, uint16_t port);
int er_connect_unix(er_client *c, const char *path);
/* Use an already open and configured descriptor (a serial port set to raw mode). */
void er_attach_fd(er_client *c, int fd);
/* Fail reads that wait longer than this (sockets only; 0 = wait for ever). */
int er_set_timeout(er_client *c, unsigned milliseconds);
void er_close(er_client *c);

/* Send one frame: `meta_json` is a JSON object, `body` may be NULL. */
int er_send(er_client *c, uint8_t type, const char *meta_json, const void *body, size_t body_len);
/* Receive one frame; its metadata JSON is copied NUL-terminated into `json` (any body is dropped). */
int er_receive(er_client *c, uint8_t *type, char *json, size_t json_cap);

/* Request/reply helpers; the reply's JSON goes to `reply`. */
int er_hello(er_client *c, char *reply, size_t reply_cap);
int er_status(er_client *c, char *reply, size_t reply_cap);
int er_selftest(er_client *c, char *reply, size_t reply_cap);
int er_screen(er_client *c, const er_screen_meta *meta, const void *image, size_t image_len,
              char *reply, size_t reply_cap);
/* SCREEN a raw frame (needs a server whose HELLO says "minor_version" >= 1); meta->format and the
 * raw_* fields are not used. Saves the JPEG encode on the camera and the decode on the server. */
int er_screen_raw(er_client *c, const er_screen_meta *meta, const er_raw_frame *frame, char *reply,
                  size_t reply_cap);

/* Revision 1.2, Unix sockets only (HELLO "body_transports" lists "fd"; er_json_has): the frame does
 * not travel through the socket. It is put in a memfd sealed against writing, shrinking and growing
 * (so the server screens and stores exactly the frame it checked), whose descriptor goes with the
 * SCREEN (SCM_RIGHTS); the server maps it read-only.
 *
 * er_frame_memfd: a new such memfd holding `frame`'s stride x height bytes (one copy; a camera that
 * captures into a memfd and seals it skips it). Returns the descriptor, for the caller to close once
 * sent, or ER_ERR_ARGUMENT (bad layout) / ER_ERR_IO (memfd_create, write or sealing failed: errno;
 * ENOSYS without memfd_create, EMFILE, EPERM from a seccomp filter...), when the frame can still be
 * sent in the SCREEN (er_screen_raw), as the example does. */
int er_frame_memfd(const er_raw_frame *frame);
/* SCREEN the frame held by `frame_fd` (a memfd sealed as er_frame_memfd seals it) laid out as
 * `frame` says (frame->pixels is not used). `frame_fd` stays the caller's. */
int er_screen_raw_fd(er_client *c, const er_screen_meta *meta, const er_raw_frame *frame, int frame_fd,
                     char *reply, size_t reply_cap);

/* Minimal lookups in a reply (no JSON parser): the first "key" anywhere in `json`. */
int er_json_string(const char *json, const char *key, char *out, size_t out_cap);
int er_json_long(const char *json, const char *key, long *out);
/* 1 when the value of "key" is an array of strings holding `value`, else 0. */
int er_json_has(const char *json, const char *key, const char *value);

#ifdef __cplusplus
}
#endif

#endif /* ER_CLIENT_H */
