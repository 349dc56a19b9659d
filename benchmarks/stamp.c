/* stamp: print CLOCK_REALTIME in ns (like `date +%s%N`) as the very first thing it does.
 *
 * The job of the hand-off benchmark (handoff.py). run.sh builds it static when a C compiler
 * is there: no dynamic loader, no locale, so its own start-up is one execve and a clock read
 * (date(1) takes ~1 ms more); run.sh falls back to date otherwise.
 *
 *   stamp                print the time
 *   stamp --exec-self    print the time, then exec `stamp`, which prints it again: the
 *                        difference is the job's own start-up (exec -> clock read), which
 *                        handoff.py subtracts from every hand-off. */
#include <string.h>
#include <time.h>
#include <unistd.h>

static int stamp(void) {
    struct timespec now;
    char text[32], *end = text + sizeof text, *p = end;
    unsigned long long ns;

    clock_gettime(CLOCK_REALTIME, &now);
    ns = (unsigned long long)now.tv_sec * 1000000000ULL + (unsigned long long)now.tv_nsec;
    *--p = '\n';
    do {
        *--p = (char)('0' + ns % 10);
        ns /= 10;
    } while (ns);
    return write(1, p, (size_t)(end - p)) == end - p ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--exec-self") == 0) {
        char *again[] = {argv[0], NULL};
        if (stamp() != 0)
            return 1;
        execv(argv[0], again);
        return 127;
    }
    return stamp();
}
