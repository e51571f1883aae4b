#ifndef NB_SERVE_UNIX_SOCKET_H
#define NB_SERVE_UNIX_SOCKET_H

// Unix-domain listening sockets for ipc endpoints, created by nb-serve itself (and handed to libzmq with
// ZMQ_USE_FD) so that libzmq never unlinks a path before binding it.

// Creates a non-blocking, close-on-exec AF_UNIX stream socket bound at `path` and listening. The socket
// file is created with permission bits `file_mode` (the umask is set to their complement around bind(2)
// and restored before returning), so it never exists with wider permissions. Fails with EADDRINUSE when
// anything exists at `path`, ENAMETOOLONG when `path` does not fit sun_path. Returns the descriptor, or -1
// with errno set.
int nb_unix_listen(const char *path, unsigned int file_mode, int backlog);

// Whether something accepts connections on the unix socket at `path`: 1 when a connection is accepted
// or pending (a full backlog counts as alive), 0 when it is refused (a socket file nobody listens on),
// -1 with errno set for anything else (EACCES, ENOENT, ENOTSOCK, …). Never blocks.
int nb_unix_probe(const char *path);

#endif
