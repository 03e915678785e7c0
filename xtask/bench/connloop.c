// Connections per second of a connect/accept/close loop on loopback: the
// kernel TCP path the tracker's program sits on. Closes with RST
// (SO_LINGER 0) so the loop never runs out of ports.
// usage: connloop PORT SECONDS  -> prints connections/s
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: connloop PORT SECONDS\n"); return 2; }
    int port = atoi(argv[1]);
    double seconds = atof(argv[2]);
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(port) };
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(l, (struct sockaddr *)&addr, sizeof addr) || listen(l, 128)) { perror("listen"); return 1; }
    struct linger rst = { .l_onoff = 1, .l_linger = 0 };
    long n = 0;
    double start = now(), end = start + seconds;
    while (now() < end) {
        for (int i = 0; i < 256; i++, n++) {
            int c = socket(AF_INET, SOCK_STREAM, 0);
            if (connect(c, (struct sockaddr *)&addr, sizeof addr)) { perror("connect"); return 1; }
            int s = accept(l, NULL, NULL);
            if (s < 0) { perror("accept"); return 1; }
            setsockopt(c, SOL_SOCKET, SO_LINGER, &rst, sizeof rst);
            close(c);
            close(s);
        }
    }
    printf("%.0f\n", n / (now() - start));
    return 0;
}
