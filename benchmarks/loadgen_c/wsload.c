/*
 * wsload: a small compiled WebSocket load generator for benchmarks/peers.py.
 *
 * Why C: a Python client spends ~1.3 us per received frame, so a 1,000-receiver
 * fan-out at several hundred thousand deliveries/s would measure the client,
 * not the server. This one is a single-threaded epoll loop, a few hundred
 * nanoseconds per frame, and reports its own CPU so that claim is checked in
 * every run (and -C caps its CPU to show a capped client gets the same number).
 *
 * Built at run time by benchmarks/cload.py with the machine's gcc:
 *     gcc -O2 -o wsload wsload.c
 * Usage (all traffic to 127.0.0.1; every phase bounded in time):
 *     wsload MODE -p PORT[,PORT...] -x PATH_PREFIX [options]
 * MODE:
 *   fanout     N receivers + 1 sender in the lobby. Latency: open loop at -r
 *              messages/s for -L s, one-way time from the timestamp in the
 *              payload to the kernel's receive timestamp (SO_TIMESTAMPNS).
 *              Throughput: -w messages in flight (a message is done when all N
 *              got it), deliveries/s over -d s.
 *   private    N pairs. Latency: open loop, -r messages/s in total, round robin
 *              over both sides of every pair, for -L s. Throughput: -w messages
 *              in flight per pair, each delivery answered with a new message.
 *   handshake  -c connections in flight: connect, opening handshake, close
 *              handshake, wait for the server to drop TCP; handshakes/s over -d s.
 *   hold       opens 10 connections, prints "warm", waits for a line on stdin,
 *              opens N more, prints "ready", waits for a line, closes all.
 * Options: -n N, -w W, -r RATE, -L LAT_S, -d SECS, -c CONC, -b MSG_BYTES,
 *   -s PID (repeatable: server processes whose CPU is measured), -C FRAC (cap own
 *   CPU at FRAC of one core), -T SECS (overall time limit).
 * Output: one JSON object on stdout.
 *
 * Messages use the seeds' dialect ({"username","msg"} for the group,
 * {"to_user","msg"} for private) and carry "#seq:time_us:from#" in the text.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { ST_FREE, ST_CONNECTING, ST_HANDSHAKE, ST_OPEN, ST_CLOSING };
enum { M_FANOUT, M_PRIVATE, M_HANDSHAKE, M_HOLD };

typedef struct {
    int fd, state, port, partner, close_sent;
    char name[32];
    char *in; size_t inlen, incap;
    char *out; size_t outlen, outcap;
    long long got;
    double t_start, t_close;
} conn_t;

static int mode, nports, ports[8], npids, pids[8];
static const char *prefix = "/";
static long n_arg = 100, win = 16, conc = 64, msg_bytes = 64;
static double rate = 1000, lat_s = 2, dur_s = 3, cap = 0, limit_s = 120;
static conn_t *conns;
static int nconns, ep;
static double t_begin;
static long errors;
static char first_error[160];

/* shared state of the scenarios */
static int measuring, sending, sender_idx = -1;
static long long deliveries, sent_total, recv_marked, next_seq = 1, completed;
static long *ring; static long ring_size;
static double *samples; static long nsamples, samples_cap;
static int lat_phase;
static double last_progress;

static double mono(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
static long long real_us(void) {
    struct timespec ts; clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}
static double own_cpu(void) {
    struct timespec ts; clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
static double proc_cpu(int pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return -1;
    unsigned long ut = 0, st = 0;
    /* after ')': state(3) ... utime is field 14, stime 15 */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / sysconf(_SC_CLK_TCK);
}

static void fail(const char *msg) {
    printf("\n{\"error\": \"%s\"}\n", msg);
    fflush(stdout);
    exit(1);
}
static void note_error(const char *what) {
    if (errors++) return;
    snprintf(first_error, sizeof first_error, "%s", what);
    for (char *p = first_error; *p; p++)  /* it goes into a JSON string */
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 32) *p = '\'';
}

static void add_sample(double v) {
    if (nsamples == samples_cap) {
        samples_cap = samples_cap ? samples_cap * 2 : 65536;
        samples = realloc(samples, samples_cap * sizeof *samples);
        if (!samples) fail("out of memory");
    }
    samples[nsamples++] = v;
}
static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static double pct(double q) {
    long i = (long)(q * nsamples);
    if (i >= nsamples) i = nsamples - 1;
    return samples[i];
}

/* -- sockets and frames ------------------------------------------------------------- */

static void grow(char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return;
    size_t c = *cap ? *cap : 256;
    while (c < need) c *= 2;
    *buf = realloc(*buf, c);
    if (!*buf) fail("out of memory");
    *cap = c;
}

static void conn_close(conn_t *c) {
    if (c->fd >= 0) { close(c->fd); c->fd = -1; }
    c->state = ST_FREE;
    c->inlen = c->outlen = 0;
}

static void want_write(conn_t *c, int on) {
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.u64 = c - conns};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void send_bytes(conn_t *c, const char *buf, size_t n) {
    if (c->fd < 0) return;
    if (c->outlen == 0) {
        ssize_t w = write(c->fd, buf, n);
        if (w == (ssize_t)n) return;
        if (w < 0) {
            if (errno != EAGAIN) return;
            w = 0;
        }
        buf += w; n -= w;
        want_write(c, 1);
    }
    grow(&c->out, &c->outcap, c->outlen + n);
    memcpy(c->out + c->outlen, buf, n);
    c->outlen += n;
}

static void send_frame(conn_t *c, int opcode, const char *payload, size_t n) {
    char frame[16 + 4096];
    static const unsigned char key[4] = {0x37, 0xfa, 0x21, 0x3d};
    size_t h = 0;
    if (n > 4096) n = 4096;
    frame[h++] = (char)(0x80 | opcode);
    if (n < 126) frame[h++] = (char)(0x80 | n);
    else { frame[h++] = (char)(0x80 | 126); frame[h++] = (char)(n >> 8); frame[h++] = (char)n; }
    memcpy(frame + h, key, 4); h += 4;
    for (size_t i = 0; i < n; i++) frame[h + i] = payload[i] ^ key[i & 3];
    send_bytes(c, frame, h + n);
}

static void conn_open(conn_t *c, const char *name, int idx) {
    struct sockaddr_in a = {.sin_family = AF_INET};
    c->port = ports[idx % nports];
    a.sin_port = htons(c->port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    snprintf(c->name, sizeof c->name, "%s", name);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) fail("socket() failed (open-file limit?)");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(c->fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
    c->state = ST_CONNECTING;
    c->close_sent = 0;
    c->got = 0;
    c->inlen = c->outlen = 0;
    c->t_start = mono();
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS)
        fail("connect() failed");
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u64 = c - conns};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
}

static void send_upgrade(conn_t *c) {
    char req[512];
    int n = snprintf(req, sizeof req,
                     "GET %s%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     prefix, c->name, c->port);
    c->state = ST_HANDSHAKE;
    want_write(c, 0);
    send_bytes(c, req, n);
}

/* -- the scenarios' messages -------------------------------------------------------- */

/* "#seq:time_us:from#": returns 1 and fills the fields when found */
static int parse_marker(const char *p, size_t n, long long *seq, long long *ts, long *from) {
    const char *end = p + n;
    const char *h = memchr(p, '#', n);
    if (!h) return 0;
    long long v[3] = {0, 0, 0};
    int k = 0;
    const char *q = h + 1;
    for (; q < end && k < 3; q++) {
        if (*q >= '0' && *q <= '9') v[k] = v[k] * 10 + (*q - '0');
        else if (*q == ':' && k < 2) k++;
        else if (*q == '#' && k == 2) break;
        else return 0;
    }
    if (q >= end || *q != '#') return 0;
    *seq = v[0]; *ts = v[1]; *from = (long)v[2];
    return 1;
}

static void send_chat(conn_t *c, long long seq, const char *to) {
    char msg[4096], mark[64];
    int m = snprintf(mark, sizeof mark, "#%lld:%lld:%ld#", seq, real_us(), (long)(c - conns));
    int n;
    if (to) n = snprintf(msg, sizeof msg, "{\"to_user\": \"%s\", \"msg\": \"%s", to, mark);
    else n = snprintf(msg, sizeof msg, "{\"username\": \"%s\", \"msg\": \"%s", c->name, mark);
    (void)m;
    while (n < msg_bytes - 2 && n < (int)sizeof msg - 3) msg[n++] = 'x';
    msg[n++] = '"'; msg[n++] = '}';
    send_frame(c, 1, msg, n);
    sent_total++;
}

static void fan_send(void) {
    send_chat(&conns[sender_idx], next_seq++, NULL);
}

static void priv_send(conn_t *c, long long seq) {
    send_chat(c, seq, conns[c->partner].name);
}

static void on_data(conn_t *c, const char *p, size_t n, long long kts) {
    long long seq, ts; long from;
    if (mode == M_HANDSHAKE || mode == M_HOLD) return;
    if (!parse_marker(p, n, &seq, &ts, &from)) return;
    if (mode == M_FANOUT) {
        if ((int)(c - conns) == sender_idx || from != sender_idx) return;
    } else if (from != c->partner) {
        return;  /* e.g. a copy of one's own message */
    }
    c->got++;
    if (seq == 0) return;  /* warm-up */
    recv_marked++;
    if (lat_phase) { add_sample((kts - ts) / 1000.0); return; }
    if (measuring) deliveries++;
    last_progress = mono();
    if (mode == M_FANOUT) {
        long slot = seq % ring_size;
        if (++ring[slot] >= nconns - 1) {
            ring[slot] = 0;
            completed++;
            if (sending) fan_send();
        }
    } else if (sending) {
        priv_send(c, next_seq++);
    }
}

static void on_open(conn_t *c);
static void on_gone(conn_t *c);

static size_t parse_frames(conn_t *c, const char *buf, size_t n, long long kts) {
    size_t i = 0;
    while (n - i >= 2) {
        const unsigned char *b = (const unsigned char *)buf + i;
        size_t len = b[1] & 0x7f, start = 2;
        if (len == 126) {
            if (n - i < 4) break;
            len = ((size_t)b[2] << 8) | b[3]; start = 4;
        } else if (len == 127) {
            if (n - i < 10) break;
            len = 0;
            for (int k = 2; k < 10; k++) len = (len << 8) | b[k];
            start = 10;
        }
        if (n - i < start + len) break;
        int op = b[0] & 0x0f;
        const char *payload = buf + i + start;
        if (op == 1 || op == 2) on_data(c, payload, len, kts);
        else if (op == 8) {
            if (!c->close_sent) { c->close_sent = 1; send_frame(c, 8, payload, len >= 2 ? 2 : 0); }
            c->state = ST_CLOSING;
            if (!c->t_close) c->t_close = mono();
        } else if (op == 9) send_frame(c, 10, payload, len);
        i += start + len;
    }
    return i;
}

static char rbuf[1 << 18];

static void on_readable(conn_t *c) {
    char ctl[CMSG_SPACE(sizeof(struct timespec) * 3)];
    struct iovec iov = {.iov_base = rbuf, .iov_len = sizeof rbuf};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl,
                        .msg_controllen = sizeof ctl};
    ssize_t r = recvmsg(c->fd, &mh, 0);
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (r <= 0) { on_gone(c); return; }
    long long kts = 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SO_TIMESTAMPNS) {
            struct timespec ts; memcpy(&ts, CMSG_DATA(cm), sizeof ts);
            kts = (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
        }
    }
    if (!kts) kts = real_us();
    const char *data = rbuf; size_t n = (size_t)r;
    if (c->state == ST_HANDSHAKE) {
        grow(&c->in, &c->incap, c->inlen + n + 1);
        memcpy(c->in + c->inlen, data, n); c->inlen += n; c->in[c->inlen] = 0;
        char *end = strstr(c->in, "\r\n\r\n");
        if (!end) { if (c->inlen > 8192) { note_error("huge HTTP response"); on_gone(c); } return; }
        if (strncmp(c->in, "HTTP/1.1 101", 12) != 0) {
            char what[120]; char *eol = strstr(c->in, "\r\n");
            snprintf(what, sizeof what, "handshake refused: %.*s", (int)(eol - c->in), c->in);
            note_error(what);
            on_gone(c);
            return;
        }
        size_t rest = c->inlen - (size_t)(end + 4 - c->in);
        memmove(c->in, end + 4, rest);
        c->inlen = rest;
        c->state = ST_OPEN;
        on_open(c);
        if (c->state != ST_OPEN || !c->inlen) return;
        /* frames that came with the response: parse them from c->in below */
        size_t used = parse_frames(c, c->in, c->inlen, kts);
        memmove(c->in, c->in + used, c->inlen - used); c->inlen -= used;
        return;
    }
    if (c->inlen) {
        grow(&c->in, &c->incap, c->inlen + n);
        memcpy(c->in + c->inlen, data, n); c->inlen += n;
        size_t used = parse_frames(c, c->in, c->inlen, kts);
        memmove(c->in, c->in + used, c->inlen - used); c->inlen -= used;
    } else {
        size_t used = parse_frames(c, data, n, kts);
        if (used < n) {
            grow(&c->in, &c->incap, n - used);
            memcpy(c->in, data + used, n - used); c->inlen = n - used;
        }
    }
}

static void on_writable(conn_t *c) {
    if (c->state == ST_CONNECTING) {
        int err = 0; socklen_t l = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) { note_error(strerror(err)); on_gone(c); return; }
        send_upgrade(c);
        return;
    }
    ssize_t w = write(c->fd, c->out, c->outlen);
    if (w > 0) {
        memmove(c->out, c->out + w, c->outlen - w);
        c->outlen -= w;
    }
    if (!c->outlen) want_write(c, 0);
}

/* -- the loop ----------------------------------------------------------------------- */

typedef int (*pred_t)(void);
static void (*tick)(double now);
static double tb_tokens, tb_wall, tb_cpu;

/*
 * -C: a token bucket of CPU time. It fills at `cap` seconds per second (at most
 * 10 ms ahead) and every loop iteration pays for the CPU it used; in debt, the
 * generator sleeps until it is paid off. On average it uses at most `cap` of a
 * core, and a generator that needs less is never slowed.
 */
static void cap_throttle(void) {
    if (cap <= 0) return;
    double now = mono(), cpu = own_cpu();
    tb_tokens += cap * (now - tb_wall) - (cpu - tb_cpu);
    if (tb_tokens > 0.010) tb_tokens = 0.010;
    tb_wall = now; tb_cpu = cpu;
    if (tb_tokens < 0) {
        double s = -tb_tokens / cap;
        if (s > 0.05) s = 0.05;
        struct timespec ts = {0, (long)(s * 1e9)};
        nanosleep(&ts, NULL);
    }
}

/* Runs the loop until pred() holds (returns 1) or `seconds` pass (returns 0). */
static int run_until(pred_t pred, double seconds) {
    struct epoll_event evs[512];
    double deadline = mono() + seconds;
    for (;;) {
        if (pred && pred()) return 1;
        double now = mono();
        if (now >= deadline) return 0;
        if (now - t_begin > limit_s) fail("overall time limit (-T) reached");
        int ms = (int)((deadline - now) * 1000) + 1;
        if (tick || ms > 5) ms = tick ? 1 : 5;
        int n = epoll_wait(ep, evs, 512, ms);
        for (int i = 0; i < n; i++) {
            conn_t *c = &conns[evs[i].data.u64];
            if (c->fd < 0) continue;
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
            if (c->fd >= 0 && (evs[i].events & EPOLLOUT)) on_writable(c);
        }
        if (tick) tick(mono());
        cap_throttle();
    }
}

/* -- connecting many ------------------------------------------------------------------ */

static int to_open, opened, pending, open_failed;
static char name_fmt[2][16];

static void name_of(int i, char *out, size_t n) {
    if (mode == M_PRIVATE) snprintf(out, n, "%s%d", name_fmt[i & 1], i / 2);
    else if (mode == M_FANOUT && i == sender_idx) snprintf(out, n, "sender");
    else snprintf(out, n, "%s%d", name_fmt[0], i);
}

static void connect_tick(double now) {
    (void)now;
    while (pending < 64 && opened + pending < to_open) {
        char name[32];
        int i = opened + pending;
        name_of(i, name, sizeof name);
        conn_open(&conns[i], name, i);
        pending++;
    }
}
static void on_open(conn_t *c) {
    if (mode == M_HANDSHAKE) {
        if (measuring) { deliveries++; add_sample((mono() - c->t_start) * 1000.0); }
        c->close_sent = 1;
        c->t_close = mono();
        send_frame(c, 8, "\x03\xe8", 2);
        c->state = ST_CLOSING;
        return;
    }
    pending--; opened++;
}
static void hs_open_slot(conn_t *c);
static int closing_all;
static void on_gone(conn_t *c) {
    int was = c->state;
    conn_close(c);
    if (closing_all) return;
    if (mode == M_HANDSHAKE) {
        if (was != ST_CLOSING) note_error("connection lost before the handshake ended");
        if (sending) hs_open_slot(c);
        return;
    }
    if (was == ST_CONNECTING || was == ST_HANDSHAKE) { pending--; open_failed++; note_error("connect failed"); }
    else note_error("connection closed by the server");
}
static int all_open(void) { return opened >= to_open || open_failed > 0; }

static void connect_all(int first, int n, double timeout) {
    to_open = first + n;
    opened = first;
    tick = connect_tick;
    int ok = run_until(all_open, timeout);
    tick = NULL;
    if (!ok || open_failed) {
        char m[320];
        snprintf(m, sizeof m, "opened %d of %d connections (%s)", opened, to_open, first_error);
        fail(m);
    }
}

/* -- measuring ------------------------------------------------------------------------ */

static double m_wall0, m_cpu0, m_srv0[8];
static void meter_start(void) {
    m_wall0 = mono(); m_cpu0 = own_cpu();
    for (int i = 0; i < npids; i++) m_srv0[i] = proc_cpu(pids[i]);
}
static void meter_print(const char *key) {
    double wall = mono() - m_wall0, cpu = own_cpu() - m_cpu0;
    printf("\"%s\": {\"wall_s\": %.4f, \"gen_cpu\": %.4f, \"srv_cpu\": [", key, wall, cpu / wall);
    for (int i = 0; i < npids; i++) {
        double s = proc_cpu(pids[i]);
        printf("%s%.4f", i ? ", " : "", (s < 0 || m_srv0[i] < 0) ? -1.0 : (s - m_srv0[i]) / wall);
    }
    printf("]}, ");
}
static void print_latency(const char *key, long expected) {
    qsort(samples, nsamples, sizeof *samples, cmp_double);
    printf("\"%s\": {\"samples\": %ld, \"expected\": %ld", key, nsamples, expected);
    if (nsamples) printf(", \"p50_ms\": %.4f, \"p99_ms\": %.4f", pct(0.5), pct(0.99));
    printf("}, ");
    nsamples = 0;
}

/* open-loop sending at `rate` */
static double ol_next; static long ol_left, ol_rr;
static void ol_tick(double now) {
    int burst = 0;
    while (ol_left > 0 && now >= ol_next && burst++ < 1000) {
        if (mode == M_FANOUT) fan_send();
        else {
            conn_t *c = &conns[ol_rr++ % nconns];
            priv_send(c, next_seq++);
        }
        ol_left--;
        ol_next += 1.0 / rate;
    }
}
static long long want_recv;
static int lat_done(void) { return recv_marked >= want_recv; }
static int warm_done(void) {
    for (int i = 0; i < nconns; i++)
        if (i != sender_idx && conns[i].got < 1) return 0;
    return 1;
}

static void latency_phase(long per_message) {
    long total = (long)(rate * lat_s);
    if (total < 1) total = 1;
    recv_marked = 0;
    lat_phase = 1;
    ol_next = mono(); ol_left = total;
    tick = ol_tick;
    meter_start();
    run_until(NULL, lat_s);
    /* a generator that fell behind sends the rest late rather than never */
    while (ol_left > 0 && run_until(NULL, 0.01) == 0 && mono() - ol_next < 5) {}
    tick = NULL;
    want_recv = (long long)total * per_message;
    run_until(lat_done, 5.0);
    meter_print("latency_cpu");
    lat_phase = 0;
    print_latency("latency", (long)want_recv);
}

static long long first_seq;
static int drained_fan(void) { return completed >= next_seq - first_seq; }
static long long priv_inflight(void) { return sent_total - recv_marked; }
static int drained_priv(void) { return priv_inflight() <= 0; }

static void throughput_phase(void) {
    deliveries = 0; completed = 0;
    sending = 1;
    last_progress = mono();
    if (mode == M_FANOUT) {
        ring_size = 4 * win + 4;
        ring = calloc(ring_size, sizeof *ring);
        next_seq = first_seq = 1000000000;  /* apart from any late latency-phase message */
        for (long i = 0; i < win; i++) fan_send();
    } else {
        next_seq = 1000000000;
        for (int i = 0; i < nconns; i += 2)
            for (long k = 0; k < win; k++) priv_send(&conns[i], next_seq++);
    }
    run_until(NULL, dur_s > 2 ? 0.5 : dur_s / 4);
    meter_start();
    measuring = 1;
    run_until(NULL, dur_s);
    measuring = 0;
    double wall = mono() - m_wall0;
    int stalled = mono() - last_progress > 0.5;
    meter_print("throughput_cpu");
    sending = 0;
    int drained = run_until(mode == M_FANOUT ? drained_fan : drained_priv, 5.0);
    printf("\"throughput\": %.1f, \"deliveries\": %lld, \"stalled\": %s, \"drained\": %s, ",
           deliveries / wall, deliveries, stalled ? "true" : "false",
           drained ? "true" : "false");
}

/* -- handshakes ----------------------------------------------------------------------- */

static void hs_open_slot(conn_t *c) {
    char name[32];
    int i = (int)(c - conns);
    snprintf(name, sizeof name, "%s%d", name_fmt[0], i);
    c->t_close = 0;
    conn_open(c, name, i);
}
static void hs_tick(double now) {
    static double last;
    if (now - last < 0.05) return;
    last = now;
    for (int i = 0; i < nconns; i++) {
        conn_t *c = &conns[i];
        if (c->fd >= 0 && c->state == ST_CLOSING && c->t_close && now - c->t_close > 2.0) {
            note_error("server did not drop TCP within 2 s of the close handshake");
            conn_close(c);
            if (sending) hs_open_slot(c);
        } else if (c->fd >= 0 && c->state != ST_CLOSING && now - c->t_start > 5.0) {
            note_error("handshake took over 5 s");
            conn_close(c);
            if (sending) hs_open_slot(c);
        }
    }
}
static int none_open(void) {
    for (int i = 0; i < nconns; i++) if (conns[i].fd >= 0) return 0;
    return 1;
}

static void run_handshakes(void) {
    nconns = (int)conc;
    sending = 1;
    tick = hs_tick;
    for (int i = 0; i < nconns; i++) hs_open_slot(&conns[i]);
    run_until(NULL, dur_s > 2 ? 0.5 : dur_s / 4);
    meter_start();
    deliveries = 0;
    measuring = 1;
    run_until(NULL, dur_s);
    measuring = 0;
    double wall = mono() - m_wall0;
    meter_print("throughput_cpu");
    sending = 0;
    run_until(none_open, 3.0);
    tick = NULL;
    printf("\"throughput\": %.1f, \"deliveries\": %lld, ", deliveries / wall, deliveries);
    print_latency("latency", 0);
}

/* Close handshake on every open connection, then wait (bounded) for the server to drop TCP. */
static void close_all_clean(void) {
    closing_all = 1;
    tick = NULL;
    for (int i = 0; i < nconns; i++) {
        conn_t *c = &conns[i];
        if (c->fd >= 0 && c->state == ST_OPEN && !c->close_sent) {
            c->close_sent = 1;
            send_frame(c, 8, "\x03\xe8", 2);
            c->state = ST_CLOSING;
        }
    }
    run_until(none_open, 3.0);
    for (int i = 0; i < nconns; i++) conn_close(&conns[i]);
}

/* -- hold ----------------------------------------------------------------------------- */

static int stdin_line(void) {
    char b[64];
    ssize_t r = read(0, b, sizeof b);
    return r >= 0;
}
static void run_hold(void) {
    connect_all(0, 10, 30.0);
    printf("warm\n"); fflush(stdout);
    stdin_line();
    double t0 = mono();
    connect_all(10, (int)n_arg, limit_s);
    printf("ready %.3f\n", mono() - t0); fflush(stdout);
    run_until(NULL, 0.0);
    stdin_line();
    close_all_clean();
    printf("{\"connections\": %ld, \"errors\": %ld}\n", n_arg, errors);
}

/* -- main ----------------------------------------------------------------------------- */

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: see the comment at the top of wsload.c\n"); return 2; }
    const char *m = argv[1];
    if (!strcmp(m, "fanout")) mode = M_FANOUT;
    else if (!strcmp(m, "private")) mode = M_PRIVATE;
    else if (!strcmp(m, "handshake")) mode = M_HANDSHAKE;
    else if (!strcmp(m, "hold")) mode = M_HOLD;
    else { fprintf(stderr, "unknown mode %s\n", m); return 2; }
    int opt;
    optind = 2;
    while ((opt = getopt(argc, argv, "p:x:n:w:r:L:d:c:b:s:C:T:")) != -1) {
        switch (opt) {
        case 'p': {
            char *s = optarg, *tok;
            while ((tok = strsep(&s, ",")) && nports < 8) ports[nports++] = atoi(tok);
            break;
        }
        case 'x': prefix = optarg; break;
        case 'n': n_arg = atol(optarg); break;
        case 'w': win = atol(optarg); break;
        case 'r': rate = atof(optarg); break;
        case 'L': lat_s = atof(optarg); break;
        case 'd': dur_s = atof(optarg); break;
        case 'c': conc = atol(optarg); break;
        case 'b': msg_bytes = atol(optarg); break;
        case 's': if (npids < 8) pids[npids++] = atoi(optarg); break;
        case 'C': cap = atof(optarg); break;
        case 'T': limit_s = atof(optarg); break;
        default: return 2;
        }
    }
    if (!nports) { fprintf(stderr, "-p PORT is required\n"); return 2; }
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (!getrlimit(RLIMIT_NOFILE, &rl)) { rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl); }
    t_begin = mono();
    tb_wall = t_begin; tb_cpu = own_cpu();
    ep = epoll_create1(0);
    long total = mode == M_FANOUT ? n_arg + 1 : mode == M_PRIVATE ? 2 * n_arg
               : mode == M_HOLD ? n_arg + 10 : conc;
    conns = calloc(total, sizeof *conns);
    for (long i = 0; i < total; i++) conns[i].fd = -1;
    nconns = (int)total;
    if (mode == M_HOLD) { snprintf(name_fmt[0], 16, "idle"); run_hold(); return 0; }
    if (mode == M_HANDSHAKE) {
        snprintf(name_fmt[0], 16, "hs");
        printf("{");
        run_handshakes();
        printf("\"errors\": %ld, \"first_error\": \"%s\"}\n", errors, first_error);
        return 0;
    }
    if (mode == M_FANOUT) { sender_idx = (int)n_arg; snprintf(name_fmt[0], 16, "r"); }
    else { snprintf(name_fmt[0], 16, "pa"); snprintf(name_fmt[1], 16, "pb"); }
    connect_all(0, nconns, 60.0);
    if (mode == M_PRIVATE)
        for (int i = 0; i < nconns; i++) conns[i].partner = i ^ 1;
    run_until(NULL, 0.3);
    /* warm-up: every receiver (fan-out) or both sides of every pair got one message */
    if (mode == M_FANOUT) send_chat(&conns[sender_idx], 0, NULL);
    else for (int i = 0; i < nconns; i++) priv_send(&conns[i], 0);
    if (!run_until(warm_done, 15.0)) {
        int got = 0;
        for (int i = 0; i < nconns; i++) got += i != sender_idx && conns[i].got > 0;
        char msg[320];
        snprintf(msg, sizeof msg, "warm-up reached %d of %d connections (%s)", got,
                 nconns - (mode == M_FANOUT), first_error);
        fail(msg);
    }
    run_until(NULL, 0.3);
    sent_total = 0;
    printf("{");
    latency_phase(mode == M_FANOUT ? n_arg : 1);
    sent_total = recv_marked = 0;
    run_until(NULL, 0.2);
    throughput_phase();
    close_all_clean();
    printf("\"errors\": %ld, \"first_error\": \"%s\"}\n", errors, first_error);
    return 0;
}
