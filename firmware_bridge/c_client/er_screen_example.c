/*
 * Example camera-side program: screen one image through the edge-retina bridge.
 *
 *   er_screen_example (--tcp HOST:PORT | --unix PATH) IMAGE REQUEST_ID [left|right|unknown]
 *
 * Prints the server's HELLO and RESULT JSON (one line each) on stdout. Exit status: 0 screened,
 * 1 connection or protocol failure, 2 refused by the server (ERROR, printed on stderr), 64 usage.
 * BUSY is retried with the same request id, which the server screens at most once.
 */
#define _POSIX_C_SOURCE 200809L
#include "er_client.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_IMAGE (16u * 1024u * 1024u) /* the server's default frame limit */
#define REPLY_CAP 16384

static unsigned char image[MAX_IMAGE];
static char reply[REPLY_CAP];

static const char *image_format(const unsigned char *data, size_t len) {
    if (len >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) return "jpeg";
    if (len >= 8 && memcmp(data, "\x89PNG\r\n\x1a\n", 8) == 0) return "png";
    return NULL;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv) {
    if (argc < 5 || (strcmp(argv[1], "--tcp") != 0 && strcmp(argv[1], "--unix") != 0)) {
        fprintf(stderr, "usage: %s (--tcp HOST:PORT | --unix PATH) IMAGE REQUEST_ID [EYE]\n", argv[0]);
        return 64;
    }
    FILE *f = fopen(argv[3], "rb");
    if (!f) { perror(argv[3]); return 1; }
    size_t len = fread(image, 1, sizeof image, f);
    int too_big = !feof(f);
    fclose(f);
    const char *format = image_format(image, len);
    if (too_big || !format) {
        fprintf(stderr, "%s: not a JPEG/PNG file under %u bytes\n", argv[3], MAX_IMAGE);
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
    if (rc != ER_OK) { fprintf(stderr, "HELLO failed (%d): %s\n", rc, reply); er_close(&client); return rc == ER_ERR_SERVER ? 2 : 1; }
    printf("%s\n", reply);

    er_screen_meta meta = {0};
    meta.request_id = argv[4];
    meta.format = format;
    meta.eye = argc > 5 ? argv[5] : "unknown";
    for (int attempt = 0; attempt < 100; attempt++) {
        rc = er_screen(&client, &meta, image, len, reply, sizeof reply);
        if (rc != ER_ERR_BUSY) break;
        long wait_ms = 200;
        er_json_long(reply, "retry_after_ms", &wait_ms);
        sleep_ms(wait_ms);
    }
    er_close(&client);
    if (rc == ER_OK) {
        char status[32] = "";
        er_json_string(reply, "status", status, sizeof status);
        printf("%s\n", reply);
        fprintf(stderr, "%s: %s\n", meta.request_id, status);
        return 0;
    }
    fprintf(stderr, "SCREEN failed (%d): %s\n", rc, reply);
    return rc == ER_ERR_SERVER || rc == ER_ERR_BUSY ? 2 : 1;
}
