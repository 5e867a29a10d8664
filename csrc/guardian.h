/* guardian.h: the guardian process's entry point, for session.c (not part
 * of the cffi API). */
#ifndef VMSNAP_GUARDIAN_H
#define VMSNAP_GUARDIAN_H

#include <stdint.h>

#include "vmsnap.h"

/* Runs the guardian in a freshly forked child; never returns.  FDS are the
 * n directory fds (the guardian keeps its own numbering), SOCK its end of
 * the socket to the controller, CTL_PIDFD the controller's pidfd or -1. */
__attribute__((noreturn)) void guardian_main(struct vmsnap_shared *sh, const int32_t *fds, int sock,
                                             int ctl_pidfd, int record_fd, const char *record_path);

#endif
