#define _GNU_SOURCE
#include "unix_socket.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static int fill_address(struct sockaddr_un *address, const char *path) {
    size_t length = strlen(path);
    if (length == 0 || length >= sizeof(address->sun_path)) {
        errno = length == 0 ? EINVAL : ENAMETOOLONG;
        return -1;
    }
    memset(address, 0, sizeof(*address));
    address->sun_family = AF_UNIX;
    memcpy(address->sun_path, path, length + 1);
    return 0;
}

int nb_unix_listen(const char *path, unsigned int file_mode, int backlog) {
    struct sockaddr_un address;
    if (fill_address(&address, path) != 0) return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    // bind(2) creates the socket file with 0777 & ~umask. The umask is process-wide; the daemon binds
    // before it starts any thread that creates files, and restores it at once.
    mode_t previous = umask((mode_t)(~file_mode & 0777));
    int rc = bind(fd, (struct sockaddr *)&address, sizeof(address));
    int saved = errno;
    umask(previous);
    if (rc != 0 || listen(fd, backlog) != 0) {
        if (rc == 0) {
            saved = errno;
            unlink(path);
        }
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

int nb_unix_probe(const char *path) {
    struct sockaddr_un address;
    if (fill_address(&address, path) != 0) return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int rc;
    do {
        rc = connect(fd, (struct sockaddr *)&address, sizeof(address));
    } while (rc != 0 && errno == EINTR);
    int saved = errno;
    close(fd);
    if (rc == 0) return 1;
    if (saved == EAGAIN || saved == EINPROGRESS) return 1;
    if (saved == ECONNREFUSED) return 0;
    errno = saved;
    return -1;
}
