/* LD_PRELOAD shim for the fault tests (tests/common/faults.rs): shifts the wall clock
 * (CLOCK_REALTIME, CLOCK_REALTIME_COARSE, gettimeofday, time) of the process it is loaded
 * into by SHIM_OFFSET_US microseconds (may be negative). Monotonic clocks are untouched.
 * Built at test time: cc -shared -fPIC -O2 -o clock_shim.so clock_shim.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

static long long offset_us;
static int (*real_clock_gettime)(clockid_t, struct timespec *);
static int (*real_gettimeofday)(struct timeval *, void *);
static time_t (*real_time)(time_t *);

__attribute__((constructor)) static void shim_init(void) {
    const char *s = getenv("SHIM_OFFSET_US");
    offset_us = s ? atoll(s) : 0;
    real_clock_gettime = dlsym(RTLD_NEXT, "clock_gettime");
    real_gettimeofday = dlsym(RTLD_NEXT, "gettimeofday");
    real_time = dlsym(RTLD_NEXT, "time");
    /* Not a tail call: dlsym(RTLD_NEXT) looks at its return address to find the calling
     * object, and a sibling call at -O2 would make that ld.so (a crash). */
    __asm__ volatile("" ::: "memory");
}

static void shift_ts(struct timespec *ts) {
    long long ns = (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec + offset_us * 1000LL;
    ts->tv_sec = ns / 1000000000LL;
    ts->tv_nsec = ns % 1000000000LL;
    if (ts->tv_nsec < 0) {
        ts->tv_nsec += 1000000000LL;
        ts->tv_sec -= 1;
    }
}

int clock_gettime(clockid_t clk, struct timespec *ts) {
    if (!real_clock_gettime) shim_init();
    int r = real_clock_gettime(clk, ts);
    if (r == 0 && ts && (clk == CLOCK_REALTIME || clk == CLOCK_REALTIME_COARSE)) shift_ts(ts);
    return r;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    if (!real_gettimeofday) shim_init();
    int r = real_gettimeofday(tv, tz);
    if (r == 0 && tv) {
        long long us = (long long)tv->tv_sec * 1000000LL + tv->tv_usec + offset_us;
        tv->tv_sec = us / 1000000LL;
        tv->tv_usec = us % 1000000LL;
        if (tv->tv_usec < 0) {
            tv->tv_usec += 1000000LL;
            tv->tv_sec -= 1;
        }
    }
    return r;
}

time_t time(time_t *tloc) {
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) return (time_t)-1;
    if (tloc) *tloc = ts.tv_sec;
    return ts.tv_sec;
}
