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

// sendmsg(2) of `count` bytes with descriptor `fd` attached (SCM_RIGHTS), without SIGPIPE.
long nb_send_with_fd(int socket, const void *bytes, unsigned long count, int fd);

// recvmsg(2) of up to `count` bytes; a descriptor passed with them (SCM_RIGHTS) lands in *fd, else -1.
long nb_receive_with_fd(int socket, void *bytes, unsigned long count, int *fd);

// A blocking, close-on-exec AF_UNIX stream socket connected to `path`, or -1 with errno set.
int nb_unix_connect(const char *path);

// accept4(2) with SOCK_CLOEXEC | SOCK_NONBLOCK.
int nb_accept_cloexec(int socket);

// posix_fallocate(3) of the first `length` bytes: reserves the pages, so running out of memory is an
// error now rather than a SIGBUS later. Returns 0 or an errno value (it does not set errno).
int nb_fallocate(int fd, long long length);

// ipc listening sockets and liveness probes (unix_socket.c).
#include "unix_socket.h"

#endif
