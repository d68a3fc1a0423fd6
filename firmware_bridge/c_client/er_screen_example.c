/*
 * Example camera-side program: screen one image through the edge-retina bridge.
 *
 *   er_screen_example (--tcp HOST:PORT | --unix PATH) [--raw WIDTHxHEIGHT] IMAGE REQUEST_ID [left|right|unknown]
 *
 * IMAGE is a JPEG or PNG file or, with --raw, a raw RGB8 frame (WIDTH*HEIGHT*3 bytes: rows of R,G,B
 * bytes, no padding), sent as a protocol 1.1 raw frame; when the server's HELLO offers it (a Unix
 * socket, revision 1.2), in a sealed memfd passed with the SCREEN instead of through the socket
 * (inline after all, with one line on stderr, when no memfd can be made).
 * Prints the server's HELLO and RESULT JSON (one line each) on stdout. Exit status: 0 screened,
 * 1 connection or protocol failure, 2 refused by the server (ERROR, printed on stderr), 64 usage.
 * BUSY is retried with the same request id, which the server screens at most once.
 */
#define _POSIX_C_SOURCE 200809L
#include "er_client.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_IMAGE (16u * 1024u * 1024u) /* the server's default frame limit */
#define USAGE "usage: %s (--tcp HOST:PORT | --unix PATH) [--raw WIDTHxHEIGHT] IMAGE REQUEST_ID [EYE]\n"
#define REPLY_CAP 16384

static unsigned char image[MAX_IMAGE];
static char reply[REPLY_CAP];

static const char *image_format(const unsigned char *data, size_t len) {
    if (len >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) return "jpeg";
    if (len >= 8 && memcmp(data, "\x89PNG\r\n\x1a\n", 8) == 0) return "png";
    return NULL;
}

/* Why a call failed: errno's text for ER_ERR_IO (the only code that leaves errno set), the server's
 * ERROR JSON for ER_ERR_SERVER and ER_ERR_BUSY, what the code means otherwise. */
static const char *failure(int rc) {
    switch (rc) {
    case ER_ERR_IO: return errno ? strerror(errno) : "the connection was closed";
    case ER_ERR_PROTOCOL: return "the reply is not a valid frame";
    case ER_ERR_SERVER: case ER_ERR_BUSY: return reply;
    case ER_ERR_ARGUMENT: return "invalid argument";
    case ER_ERR_SPACE: return "the reply does not fit its buffer";
    default: return "unknown error";
    }
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv) {
    if (argc < 5 || (strcmp(argv[1], "--tcp") != 0 && strcmp(argv[1], "--unix") != 0)) {
        fprintf(stderr, USAGE, argv[0]);
        return 64;
    }
    er_raw_frame frame = {0};
    int arg = 3;
    if (strcmp(argv[arg], "--raw") == 0) {
        char x;
        if (argc < 7 || sscanf(argv[arg + 1], "%u%c%u", &frame.width, &x, &frame.height) != 3 || x != 'x'
            || frame.width == 0 || frame.height == 0) {
            fprintf(stderr, USAGE, argv[0]);
            return 64;
        }
        frame.pixel_format = "rgb8";
        frame.pixels = image;
        arg += 2;
    }
    const char *path = argv[arg], *request_id = argv[arg + 1], *eye = argc > arg + 2 ? argv[arg + 2] : "unknown";
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); return 1; }
    size_t len = fread(image, 1, sizeof image, f);
    int too_big = !feof(f);
    fclose(f);
    const char *format = frame.pixels ? "raw" : image_format(image, len);
    if (frame.pixels && (too_big || len != (size_t)frame.width * frame.height * 3u)) {
        fprintf(stderr, "%s: a %ux%u RGB8 frame is %lu bytes, the file has %s%lu\n", path, frame.width,
                frame.height, (unsigned long)frame.width * frame.height * 3ul, too_big ? "over " : "",
                (unsigned long)len);
        return 64;
    }
    if (too_big || !format) {
        fprintf(stderr, "%s: not a JPEG/PNG file under %u bytes\n", path, MAX_IMAGE);
        return 64;
    }

    er_client client;
    int rc;
    if (strcmp(argv[1], "--tcp") == 0) {
        char host[256];
        const char *colon = strrchr(argv[2], ':');
        if (!colon || (size_t)(colon - argv[2]) >= sizeof host) { fprintf(stderr, "bad HOST:PORT\n"); return 64; }
        memcpy(host, argv[2], (size_t)(colon - argv[2]));
        host[colon - argv[2]] = '\0';
        rc = er_connect_tcp(&client, host, (uint16_t)atoi(colon + 1));
    } else {
        rc = er_connect_unix(&client, argv[2]);
    }
    if (rc != ER_OK) { fprintf(stderr, "cannot connect to %s\n", argv[2]); return 1; }
    er_set_timeout(&client, 120000);

    rc = er_hello(&client, reply, sizeof reply);
    if (rc != ER_OK) { fprintf(stderr, "HELLO failed: %s\n", failure(rc)); er_close(&client); return rc == ER_ERR_SERVER ? 2 : 1; }
    printf("%s\n", reply);

    int frame_fd = -1; /* the frame in a sealed memfd, when the server takes frames by descriptor */
    if (frame.pixels && er_json_has(reply, "body_transports", "fd")) {
        frame_fd = er_frame_memfd(&frame);
        if (frame_fd < 0) fprintf(stderr, "cannot put the frame in a memfd (%s): sending it inline\n", failure(frame_fd));
    }
    er_screen_meta meta = {0};
    meta.request_id = request_id;
    meta.format = format;
    meta.eye = eye;
    for (int attempt = 0; attempt < 100; attempt++) {
        if (frame_fd >= 0) rc = er_screen_raw_fd(&client, &meta, &frame, frame_fd, reply, sizeof reply);
        else if (frame.pixels) rc = er_screen_raw(&client, &meta, &frame, reply, sizeof reply);
        else rc = er_screen(&client, &meta, image, len, reply, sizeof reply);
        if (rc != ER_ERR_BUSY) break;
        long wait_ms = 200;
        er_json_long(reply, "retry_after_ms", &wait_ms);
        sleep_ms(wait_ms);
    }
    if (frame_fd >= 0) close(frame_fd);
    er_close(&client);
    if (rc == ER_OK) {
        char status[32] = "";
        er_json_string(reply, "status", status, sizeof status);
        printf("%s\n", reply);
        fprintf(stderr, "%s: %s\n", meta.request_id, status);
        return 0;
    }
    fprintf(stderr, "SCREEN failed: %s\n", failure(rc));
    return rc == ER_ERR_SERVER || rc == ER_ERR_BUSY ? 2 : 1;
}
