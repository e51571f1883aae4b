#ifndef NB_SERVE_CSYSTEM_H
#define NB_SERVE_CSYSTEM_H

// Linux calls that Swift's Glibc module does not expose (they need _GNU_SOURCE), wrapped one-to-one.
// Each returns what the call returns and leaves errno set.

// pipe2(2) with O_CLOEXEC, plus O_NONBLOCK when nonblocking is non-zero.
int nb_pipe_cloexec(int fds[2], int nonblocking);

// memfd_create(2) with MFD_CLOEXEC.
int nb_memfd_create(const char *name);

// prctl(PR_SET_PDEATHSIG, signal): the kernel sends `signal` to this process when its parent dies.
int nb_set_parent_death_signal(int signal);

// pidfd_open(2): a descriptor that polls readable once process `pid` has exited (close-on-exec).
int nb_pidfd_open(int pid);

// ipc listening sockets and liveness probes (unix_socket.c).
#include "unix_socket.h"

#endif
