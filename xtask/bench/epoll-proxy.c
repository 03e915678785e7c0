// The floor under any user-space TCP proxy on this machine, for the proxy
// benchmark: one thread, one epoll set, and per message one epoll_wait, one
// read and one write; nothing else (no allocation, no timers, no
// half-close, blocking writes). Good for one flow at a time, which is all
// the benchmark sends through it; not a proxy to use.
// usage: epoll-proxy LISTEN_PORT TARGET_PORT [LISTEN_PORT TARGET_PORT ...]
// (all on 127.0.0.1)
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FD 65536

// For a listener: -1; for a connection: the other side's descriptor.
static int peer[MAX_FD];
static int target_port[MAX_FD];

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static void watch(int ep, int fd) {
    struct epoll_event e = { .events = EPOLLIN, .data.fd = fd };
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e)) { perror("epoll_ctl"); exit(1); }
}

int main(int argc, char **argv) {
    if (argc < 3 || argc % 2 == 0) {
        fprintf(stderr, "usage: epoll-proxy LISTEN_PORT TARGET_PORT [...]\n");
        return 2;
    }
    int ep = epoll_create1(0), one = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        int l = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = loopback(atoi(argv[i]));
        setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (l >= MAX_FD || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 128)) {
            perror("listen");
            return 1;
        }
        peer[l] = -1;
        target_port[l] = atoi(argv[i + 1]);
        watch(ep, l);
    }
    static char buf[65536];
    struct epoll_event events[64];
    for (;;) {
        int n = epoll_wait(ep, events, 64, -1);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (peer[fd] == -1) {
                int c = accept(fd, 0, 0);
                if (c < 0) continue;
                int b = socket(AF_INET, SOCK_STREAM, 0);
                struct sockaddr_in a = loopback(target_port[fd]);
                if (c >= MAX_FD || b >= MAX_FD || connect(b, (struct sockaddr *)&a, sizeof a)) {
                    close(c);
                    close(b);
                    continue;
                }
                setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                setsockopt(b, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                peer[c] = b;
                peer[b] = c;
                watch(ep, c);
                watch(ep, b);
                continue;
            }
            if (peer[fd] == 0) continue;  // closed earlier in this batch
            // Non-blocking: a stale event for a reused descriptor must not
            // block the loop.
            ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
            if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) continue;
            ssize_t w = 0;
            while (r > 0 && w < r) {
                ssize_t k = write(peer[fd], buf + w, r - w);
                if (k <= 0) break;
                w += k;
            }
            if (r <= 0 || w < r) {
                // EOF or an error on either side: both closed (closing
                // removes them from the epoll set).
                int p = peer[fd];
                close(fd);
                close(p);
                peer[fd] = peer[p] = 0;
            }
        }
    }
}
