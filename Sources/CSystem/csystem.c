#define _GNU_SOURCE
#include "csystem.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int nb_pipe_cloexec(int fds[2], int nonblocking) {
    return pipe2(fds, O_CLOEXEC | (nonblocking ? O_NONBLOCK : 0));
}

int nb_memfd_create(const char *name) {
    return memfd_create(name, MFD_CLOEXEC);
}

int nb_set_parent_death_signal(int signal) {
    return prctl(PR_SET_PDEATHSIG, (unsigned long)signal, 0, 0, 0);
}

int nb_pidfd_open(int pid) {
    return (int)syscall(SYS_pidfd_open, pid, 0);
}
