/* protocol.h: the messages between the controller's session (session.c) and
 * its guardian process (guardian.c), one byte each over a SOCK_SEQPACKET
 * socketpair (not part of the cffi API). */
#ifndef VMSNAP_PROTOCOL_H
#define VMSNAP_PROTOCOL_H

#include <errno.h>
#include <sys/socket.h>

enum proto_msg {
    /* controller -> guardian */
    CMD_FREEZE = 'F',          /* freeze in waves */
    CMD_PRESYNC_FREEZE = 'P',  /* presync (bounded), then freeze in waves */
    CMD_THAW = 'T',            /* thaw in reverse waves */
    CMD_DETACH = 'D',          /* hold the freeze after the controller leaves */
    /* guardian -> controller */
    REPLY_READY = 'R',         /* workers started, nothing frozen */
    REPLY_START_FAILED = 'E',  /* could not start: nothing frozen, exiting */
    REPLY_FROZEN = 'f',        /* the freeze command finished (see the states) */
    REPLY_THAWED = 't',        /* all thawed (also unasked: deadline, signal) */
    REPLY_DETACHED = 'd',
};

/* Sends M; -errno on failure (EPIPE: the peer is gone). */
static inline int proto_send(int sock, enum proto_msg m) {
    char c = (char)m;
    return send(sock, &c, 1, MSG_NOSIGNAL | MSG_DONTWAIT) == 1 ? 0 : -errno;
}

/* Reads one message without blocking: 1 and *M, 0 at EOF, -EAGAIN if none. */
static inline int proto_recv(int sock, enum proto_msg *m) {
    unsigned char c;
    ssize_t k = recv(sock, &c, 1, MSG_DONTWAIT);
    if (k < 0)
        return errno == ECONNRESET ? 0 : -errno;
    if (k == 0)
        return 0;
    *m = (enum proto_msg)c;
    return 1;
}

#endif
