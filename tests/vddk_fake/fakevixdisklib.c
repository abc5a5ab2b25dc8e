/*
 * A stand-in for VMware's libvixDiskLib, for tests: the same C ABI (x86-64, VDDK 6.7+
 * layouts) over local flat files.  Build:
 *
 *   gcc -shared -fPIC -O2 -pthread -o lib64/libvixDiskLib.so.8 fakevixdisklib.c
 *
 * Paths: "[ds] dir/x.vmdk" maps to $FAKEVDDK_ROOT/ds/dir/x.vmdk; any other path is used
 * as is.  When "<name>-flat.vmdk" exists next to it, that file holds the data.
 * Metadata keys live in "<flat file>.meta" as key=value lines.
 *
 * Fault injection (read at each call):
 *   FAKEVDDK_FAIL_OPEN=substr     Open fails (VIX_E_FILE_ACCESS_ERROR) for matching paths
 *   FAKEVDDK_FAIL_READ_SECTOR=N   Read fails (VIX_E_DISK_NOIO) when the range covers sector N
 *   FAKEVDDK_SLOW_READ_US=N       every Read sleeps N microseconds
 *   FAKEVDDK_OPEN_DELAY_US=N      Open/Close/ConnectEx/Disconnect hold for N us (default 1000)
 *
 * Strictness, as the real library (docs/vddk.md has the sources):
 *   FAKEVDDK_EXPECT_COOKIE=v      ConnectEx refuses (VIX_E_HOST_USER_PERMISSIONS) unless
 *                                 credType is VIXDISKLIB_CRED_SESSIONID with this cookie
 *   FAKEVDDK_EXPECT_USER=u        ... and this userName
 *   FAKEVDDK_EXPECT_THUMBPRINT=t  Open of a remote disk fails with VIX_E_FAIL ("Unknown
 *                                 error", as the real one does: nbdkit RHBZ#1905772) unless
 *                                 thumbPrint is t (case-insensitive); a thumbprint of the
 *                                 wrong hash for this library version always fails (none
 *                                 at all passes when t is unset, as vixDiskLibSample allows)
 *                                 (SHA-1, 20 pairs, for every major: VDDK 9.x still takes
 *                                 the SHA-1 form, docs/vddk.md)
 *   FAKEVDDK_POWERED_ON=1         the VMs run: a read-only connection without a snapshotRef
 *                                 cannot open their disks (VDDK guide, ConnectEx: the
 *                                 snapshot MoRef is required to access a powered-on VM)
 *   FAKEVDDK_MODES=a:b            transport modes this "host" offers (default nbdssl:nbd);
 *                                 Open takes the first requested one offered, else nbdssl
 *                                 when offered (as VDDK falls back), else fails
 *   FAKEVDDK_CLEANUP_PENDING=N    VixDiskLib_Cleanup finds N leftovers of a crashed run
 *   FAKEVDDK_CALL_LOG=path        every call appended as "<tid> <function> <args> rc=<n>"
 *
 * Threading detector (the process aborts): anything before InitEx or after Exit; InitEx
 * twice; ConnectEx/Open/QueryAllocatedBlocks/Close/Disconnect/Cleanup/PrepareForAccess/
 * EndAccess/Exit on another thread than InitEx's (VMware: "one designated thread to do all opens and
 * closes"), or overlapping; one handle used by two threads at once.
 * -DFAKE_OLD builds an "old VDDK" without QueryAllocatedBlocks and AllocateConnectParams;
 * -DFAKE_MAJOR=N the library version (default 8).  Errors carry junk in the high 48 bits
 * so callers must mask.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <ctype.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef FAKE_MAJOR
#define FAKE_MAJOR 8
#endif

typedef uint64_t VixError;
typedef uint64_t SectorType;
typedef char Bool;
typedef void LogFunc(const char *fmt, va_list args);

#define VIX_OK 0
#define VIX_E_FAIL 1
#define VIX_E_INVALID_ARG 3
#define VIX_E_FILE_NOT_FOUND 4
#define VIX_E_NOT_SUPPORTED 6
#define VIX_E_FILE_READ_ONLY 11
#define VIX_E_FILE_ACCESS_ERROR 13
#define VIX_E_BUFFER_TOOSMALL 24
#define VIX_E_HOST_USER_PERMISSIONS 3014
#define VIX_E_DISK_NOIO 16002
#define VIX_E_DISK_OUTOFRANGE 16007
#define JUNK ((uint64_t)0x00BEEF0000000000ULL)
#define ERR(code) (JUNK | (uint64_t)(code))

typedef struct { uint32_t cylinders, heads, sectors; } Geometry;
typedef struct {
    Geometry biosGeo, physGeo;
    SectorType capacity;
    int adapterType;
    int numLinks;
    char *parentFileNameHint;
    char *uuid;
} Info;

typedef struct {
    char *vmxSpec;
    char *serverName;
    char *thumbPrint;
    long privateUse;
    int credType;
    union {
        struct { char *userName; char *password; } uid;
        struct { char *cookie; char *userName; char *key; } sessionId;
        void *ticketId;
    } creds;
    uint32_t port;
    uint32_t nfcHostPort;
    char *vimApiVer;
    char reserved[8];
    void *state;
    union { void *opaque[3]; } spec;
    int specType;
} ConnectParams;

typedef struct { SectorType offset, length; } Block;
typedef struct { uint32_t numBlocks; Block blocks[]; } BlockList;

typedef struct {
    int readOnly;
    int remote;
    char snapshot[256];
    char thumbprint[128];
    char modes[128];
    char vm[64];
} Connection;

typedef struct {
    int fd;
    int readOnly;
    const char *mode;
    int busy;
    SectorType capacity;
    char file[4096];
} Handle;

_Static_assert(sizeof(ConnectParams) == 128, "ConnectParams must be 128 bytes");

static LogFunc *g_log, *g_warn, *g_panic;
static int g_init_count;
static int g_initialized;
static int g_exited;
static long g_init_tid;
static int g_openclose_busy;
static int g_open_handles;
static pthread_mutex_t g_calllog_lock = PTHREAD_MUTEX_INITIALIZER;

static long tid(void) { return (long)syscall(SYS_gettid); }

/* One line per call in $FAKEVDDK_CALL_LOG, for tests to assert order and arguments. */
static void calllog(const char *fn, VixError rc, const char *fmt, ...) {
    const char *path = getenv("FAKEVDDK_CALL_LOG");
    if (!path || !*path) return;
    char args[1024] = "";
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(args, sizeof args, fmt, ap);
        va_end(ap);
    }
    pthread_mutex_lock(&g_calllog_lock);
    FILE *f = fopen(path, "a");
    if (f) {
        fprintf(f, "%ld %s %s rc=%llu\n", tid(), fn, args, (unsigned long long)(rc & 0xFFFF));
        fclose(f);
    }
    pthread_mutex_unlock(&g_calllog_lock);
}

static void logf_(LogFunc *f, const char *fmt, ...) {
    va_list ap;
    if (!f) return;
    va_start(ap, fmt);
    f(fmt, ap);
    va_end(ap);
}

static void die(const char *why) {
    fprintf(stderr, "fakevixdisklib: THREADING VIOLATION: %s\n", why);
    fflush(stderr);
    abort();
}

static void need_init(const char *fn) {
    if (g_exited) {
        fprintf(stderr, "fakevixdisklib: THREADING VIOLATION: %s called after Exit\n", fn);
        abort();
    }
    if (!g_initialized) {
        fprintf(stderr, "fakevixdisklib: %s called before InitEx\n", fn);
        abort();
    }
}

/* Calls VMware wants on the one designated thread: the thread that ran InitEx. */
static void need_designated_thread(const char *fn) {
    need_init(fn);
    if (tid() != g_init_tid) {
        char why[160];
        snprintf(why, sizeof why, "%s on thread %ld, not the designated thread %ld (InitEx's)",
                 fn, tid(), g_init_tid);
        fprintf(stderr, "fakevixdisklib: THREADING VIOLATION: %s\n", why);
        fflush(stderr);
        abort();
    }
}

static long env_long(const char *name, long dflt) {
    const char *v = getenv(name);
    return v && *v ? strtol(v, NULL, 10) : dflt;
}

static void openclose_enter(const char *fn) {
    need_designated_thread(fn);
    if (__sync_fetch_and_add(&g_openclose_busy, 1) != 0) die("Open/Close/Connect overlap across threads");
    usleep((useconds_t)env_long("FAKEVDDK_OPEN_DELAY_US", 1000));
}

static void openclose_leave(void) { __sync_fetch_and_sub(&g_openclose_busy, 1); }

static void handle_enter(Handle *h) {
    need_init("handle call");
    if (__sync_fetch_and_add(&h->busy, 1) != 0) die("one handle used by two threads at once");
}

static void handle_leave(Handle *h) { __sync_fetch_and_sub(&h->busy, 1); }

/* test hooks */
int FakeVixDiskLib_InitCount(void) { return g_init_count; }
int FakeVixDiskLib_OpenHandles(void) { return g_open_handles; }

VixError VixDiskLib_InitEx(uint32_t major, uint32_t minor, LogFunc *log, LogFunc *warn,
                           LogFunc *panic, const char *libDir, const char *configFile) {
    (void)configFile;
    if (!log || !warn || !panic) {
        fprintf(stderr, "fakevixdisklib: NULL logger passed to InitEx\n");
        abort();
    }
    g_init_count++;
    if (g_initialized || g_exited) die("InitEx called twice (once per process, VDDK guide)");
    g_init_tid = tid();
    calllog("InitEx", VIX_OK, "%u.%u", major, minor);
    g_log = log;
    g_warn = warn;
    g_panic = panic;
    g_initialized = 1;
    logf_(g_log, "VixDiskLib: initialised version %u.%u libDir=%s pid=%d\n", major, minor,
          libDir ? libDir : "(null)", (int)getpid());
    return VIX_OK;
}

void VixDiskLib_Exit(void) {
    need_designated_thread("Exit");
    logf_(g_log, "VixDiskLib: exit with %d open handles\n", g_open_handles);
    calllog("Exit", VIX_OK, "open_handles=%d", g_open_handles);
    g_initialized = 0;
    g_exited = 1;
}

char *VixDiskLib_GetErrorText(VixError err, const char *locale) {
    (void)locale;
    const char *msg;
    switch (err & 0xFFFF) {
    case VIX_OK: msg = "The operation was successful"; break;
    case VIX_E_FAIL: msg = "Unknown error"; break;
    case VIX_E_INVALID_ARG: msg = "One of the parameters was invalid"; break;
    case VIX_E_FILE_NOT_FOUND: msg = "The system cannot find the file specified"; break;
    case VIX_E_NOT_SUPPORTED: msg = "The operation is not supported"; break;
    case VIX_E_FILE_READ_ONLY: msg = "The file is write-protected"; break;
    case VIX_E_FILE_ACCESS_ERROR: msg = "Insufficient permissions to access the file"; break;
    case VIX_E_BUFFER_TOOSMALL: msg = "Buffer too small"; break;
    case VIX_E_DISK_NOIO: msg = "Cannot do I/O on the disk"; break;
    case VIX_E_DISK_OUTOFRANGE: msg = "The request refers to data beyond the end of the disk"; break;
    case VIX_E_HOST_USER_PERMISSIONS: msg = "Insufficient permissions in the host operating system"; break;
    default: msg = "Unrecognized error"; break;
    }
    return strdup(msg);
}

void VixDiskLib_FreeErrorText(char *msg) { free(msg); }

#ifndef FAKE_OLD /* VDDK < 6.7 lacks these */
ConnectParams *VixDiskLib_AllocateConnectParams(void) {
    return calloc(1, sizeof(ConnectParams));
}

void VixDiskLib_FreeConnectParams(ConnectParams *p) {
    if (!p) return;
    free(p->vmxSpec);
    free(p->serverName);
    free(p->thumbPrint);
    free(p->creds.sessionId.cookie);
    free(p->creds.sessionId.userName);
    free(p);
}

#endif

static int env_is(const char *name) {
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0") != 0;
}

static int streq_nocase(const char *a, const char *b) {
    if (!a || !b) return 0;
    for (; *a && *b; a++, b++)
        if (tolower((unsigned char)*a) != tolower((unsigned char)*b)) return 0;
    return *a == *b;
}

/* "xx:xx:..." with `pairs` hex pairs */
static int thumb_shape(const char *t, int pairs) {
    if (!t || (int)strlen(t) != pairs * 3 - 1) return 0;
    for (int i = 0; t[i]; i++) {
        if (i % 3 == 2 ? t[i] != ':' : !isxdigit((unsigned char)t[i])) return 0;
    }
    return 1;
}

static int valid_moref(const char *s, const char *prefix) {
    size_t n = strlen(prefix);
    if (strncmp(s, prefix, n) != 0 || !s[n]) return 0;
    for (const char *c = s + n; *c; c++)
        if (!isalnum((unsigned char)*c) && *c != '-' && *c != '_') return 0;
    return 1;
}

VixError VixDiskLib_ConnectEx(const ConnectParams *p, Bool readOnly, const char *snapshotRef,
                              const char *transportModes, void **connection) {
    openclose_enter("ConnectEx");
    VixError rc = VIX_OK;
    const char *want_cookie = getenv("FAKEVDDK_EXPECT_COOKIE");
    const char *want_user = getenv("FAKEVDDK_EXPECT_USER");
    if (!p || !connection || !p->vmxSpec || !valid_moref(p->vmxSpec, "moref=")) {
        logf_(g_warn, "ConnectEx: vmxSpec must be \"moref=<VM MoRef>\"\n");
        rc = ERR(VIX_E_INVALID_ARG);
    } else if (snapshotRef && !valid_moref(snapshotRef, "snapshot-")) {
        logf_(g_warn, "ConnectEx: snapshotRef %s is not a snapshot MoRef\n", snapshotRef);
        rc = ERR(VIX_E_INVALID_ARG);
    } else if (p->credType == 2 && (!p->creds.sessionId.cookie || !*p->creds.sessionId.cookie)) {
        rc = ERR(VIX_E_INVALID_ARG);
    } else if (want_cookie && *want_cookie &&
               (p->credType != 2 || strcmp(p->creds.sessionId.cookie, want_cookie) != 0)) {
        logf_(g_warn, "ConnectEx: login refused (credType=%d)\n", p->credType);
        rc = ERR(VIX_E_HOST_USER_PERMISSIONS);
    } else if (want_user && *want_user &&
               (p->credType != 2 || !p->creds.sessionId.userName ||
                strcmp(p->creds.sessionId.userName, want_user) != 0)) {
        logf_(g_warn, "ConnectEx: login refused: session belongs to another user\n");
        rc = ERR(VIX_E_HOST_USER_PERMISSIONS);
    } else {
        Connection *c = calloc(1, sizeof *c);
        c->readOnly = readOnly != 0;
        c->remote = p->serverName && *p->serverName;
        if (snapshotRef) snprintf(c->snapshot, sizeof c->snapshot, "%s", snapshotRef);
        if (p->thumbPrint) snprintf(c->thumbprint, sizeof c->thumbprint, "%s", p->thumbPrint);
        if (transportModes) snprintf(c->modes, sizeof c->modes, "%s", transportModes);
        snprintf(c->vm, sizeof c->vm, "%s", p->vmxSpec + 6);
        *connection = c;
        logf_(g_log,
              "ConnectEx vmxSpec=%s server=%s port=%u thumbprint=%s credType=%d cookie=%s "
              "snapshot=%s readOnly=%d modes=%s\n",
              p->vmxSpec, p->serverName ? p->serverName : "", p->port,
              p->thumbPrint ? p->thumbPrint : "", p->credType,
              p->credType == 2 ? "<set>" : "<none>", snapshotRef ? snapshotRef : "",
              readOnly != 0, transportModes ? transportModes : "");
    }
    calllog("ConnectEx", rc, "vmxSpec=%s credType=%d user=%s key=%s thumbprint=%s snapshot=%s "
            "readOnly=%d modes=%s",
            p && p->vmxSpec ? p->vmxSpec : "", p ? p->credType : -1,
            p && p->credType == 2 && p->creds.sessionId.userName ? p->creds.sessionId.userName : "",
            p && p->credType == 2 && p->creds.sessionId.key ? "<set>" : "",
            p && p->thumbPrint ? p->thumbPrint : "", snapshotRef ? snapshotRef : "",
            readOnly != 0, transportModes ? transportModes : "");
    openclose_leave();
    return rc;
}

VixError VixDiskLib_Disconnect(void *connection) {
    openclose_enter("Disconnect");
    free(connection);
    calllog("Disconnect", VIX_OK, NULL);
    openclose_leave();
    return VIX_OK;
}

/* The first requested mode this host offers ($FAKEVDDK_MODES), or NULL. */
static const char *pick_mode(const Connection *c) {
    static const char *known[] = {"file", "san", "hotadd", "nbdssl", "nbd", NULL};
    const char *offered = getenv("FAKEVDDK_MODES");
    if (!c->remote) return "file";
    if (!offered || !*offered) offered = "nbdssl:nbd";
    char req[128];
    snprintf(req, sizeof req, "%s", *c->modes ? c->modes : "file:san:hotadd:nbdssl:nbd");
    for (char *save, *m = strtok_r(req, ":", &save); m; m = strtok_r(NULL, ":", &save)) {
        char off[128];
        snprintf(off, sizeof off, "%s", offered);
        for (char *s2, *o = strtok_r(off, ":", &s2); o; o = strtok_r(NULL, ":", &s2)) {
            if (strcmp(m, o) != 0) continue;
            for (int i = 0; known[i]; i++)
                if (strcmp(known[i], m) == 0) return known[i];
        }
    }
    /* VDDK guide, ConnectEx: "If you specify any advanced transport mode as the only method,
     * and that method is not available, ... VixDiskLib_Open() call will fall back to NBDSSL
     * mode." */
    if (strstr(offered, "nbdssl")) return "nbdssl";
    return NULL;
}

/* Why a remote Open is refused, or NULL: the thumbprint and the snapshot rules. */
static const char *remote_refusal(const Connection *c, VixError *rc) {
    const char *want = getenv("FAKEVDDK_EXPECT_THUMBPRINT");
    if (*c->thumbprint && !thumb_shape(c->thumbprint, 20)) {
        *rc = ERR(VIX_E_FAIL);
        return "SSL thumbprint is not a SHA-1 fingerprint";
    }
    if (want && *want && !streq_nocase(c->thumbprint, want)) {
        *rc = ERR(VIX_E_FAIL);
        return "SSL server thumbprint mismatch";
    }
    if (c->readOnly && !*c->snapshot && env_is("FAKEVDDK_POWERED_ON")) {
        *rc = ERR(VIX_E_FILE_ACCESS_ERROR);
        return "the disk of a powered-on VM is locked: connect with the snapshot MoRef";
    }
    return NULL;
}

static void map_path(const char *path, char *out, size_t n) {
    const char *root = getenv("FAKEVDDK_ROOT");
    if (path[0] == '[' && root) {
        const char *close = strchr(path, ']');
        if (close) {
            const char *rest = close + 1;
            while (*rest == ' ') rest++;
            snprintf(out, n, "%s/%.*s/%s", root, (int)(close - path - 1), path + 1, rest);
            goto flat;
        }
    }
    snprintf(out, n, "%s", path);
flat:;
    size_t len = strlen(out);
    if (len > 5 && strcmp(out + len - 5, ".vmdk") == 0 && !strstr(out, "-flat.vmdk")) {
        char flat[4096];
        snprintf(flat, sizeof flat, "%.*s-flat.vmdk", (int)(len - 5), out);
        if (access(flat, F_OK) == 0) snprintf(out, n, "%s", flat);
    }
}

VixError VixDiskLib_Open(void *connection, const char *path, uint32_t flags, void **handle) {
    openclose_enter("Open");
    VixError rc = VIX_OK;
    Connection *c = connection;
    const char *fail = getenv("FAKEVDDK_FAIL_OPEN");
    char file[4096];
    if (!c || !path || !handle) {
        rc = ERR(VIX_E_INVALID_ARG);
        goto out;
    }
    if (fail && *fail && strstr(path, fail)) {
        logf_(g_warn, "Open: injected failure for %s\n", path);
        rc = ERR(VIX_E_FILE_ACCESS_ERROR);
        goto out;
    }
    const char *mode = pick_mode(c);
    if (!mode) {
        logf_(g_warn, "Open: none of the transport modes %s is available\n", c->modes);
        rc = ERR(VIX_E_FAIL);
        goto out;
    }
    if (c->remote) {
        const char *why = remote_refusal(c, &rc);
        if (why) {
            logf_(g_warn, "Open %s: %s\n", path, why);
            goto out;
        }
    }
    map_path(path, file, sizeof file);
    int ro = c->readOnly || (flags & 4);
    int fd = open(file, ro ? O_RDONLY : O_RDWR);
    if (fd < 0) {
        logf_(g_warn, "Open: cannot open %s: errno %d\n", file, errno);
        rc = ERR(errno == ENOENT ? VIX_E_FILE_NOT_FOUND : VIX_E_FILE_ACCESS_ERROR);
        goto out;
    }
    struct stat st;
    fstat(fd, &st);
    Handle *h = calloc(1, sizeof *h);
    h->fd = fd;
    h->readOnly = ro;
    h->mode = mode;
    h->capacity = (SectorType)st.st_size / 512;
    snprintf(h->file, sizeof h->file, "%s", file);
    *handle = h;
    __sync_fetch_and_add(&g_open_handles, 1);
    logf_(g_log, "Open %s flags=%u capacity=%llu sectors snapshot=%s\n", path, flags,
          (unsigned long long)h->capacity, c->snapshot);
out:
    calllog("Open", rc, "%s flags=%u snapshot=%s vm=%s", path ? path : "", flags,
            c ? c->snapshot : "", c ? c->vm : "");
    openclose_leave();
    return rc;
}

VixError VixDiskLib_Close(void *handle) {
    openclose_enter("Close");
    Handle *h = handle;
    calllog("Close", VIX_OK, "%s", h ? h->file : "");
    if (h) {
        handle_enter(h);
        close(h->fd);
        handle_leave(h);
        free(h);
        __sync_fetch_and_sub(&g_open_handles, 1);
    }
    openclose_leave();
    return VIX_OK;
}

VixError VixDiskLib_GetInfo(void *handle, Info **info) {
    Handle *h = handle;
    handle_enter(h);
    Info *i = calloc(1, sizeof *i);
    i->capacity = h->capacity;
    i->adapterType = 2; /* LSI logic */
    i->numLinks = 1;
    i->biosGeo.cylinders = i->physGeo.cylinders = (uint32_t)(h->capacity / (255 * 63));
    i->biosGeo.heads = i->physGeo.heads = 255;
    i->biosGeo.sectors = i->physGeo.sectors = 63;
    i->uuid = strdup("60 00 C2 9f ak e0 00 00-00 00 00 00 00 00 00 01");
    *info = i;
    calllog("GetInfo", VIX_OK, "%s", h->file);
    handle_leave(h);
    return VIX_OK;
}

void VixDiskLib_FreeInfo(Info *info) {
    if (!info) return;
    free(info->uuid);
    free(info->parentFileNameHint);
    free(info);
}

VixError VixDiskLib_Read(void *handle, SectorType start, SectorType n, uint8_t *buf) {
    Handle *h = handle;
    VixError rc = VIX_OK;
    handle_enter(h);
    long slow = env_long("FAKEVDDK_SLOW_READ_US", 0);
    if (slow > 0) usleep((useconds_t)slow);
    const char *bad = getenv("FAKEVDDK_FAIL_READ_SECTOR");
    if (start + n > h->capacity) {
        rc = ERR(VIX_E_DISK_OUTOFRANGE);
    } else if (bad && *bad && strtoull(bad, NULL, 10) >= start &&
               strtoull(bad, NULL, 10) < start + n) {
        logf_(g_warn, "Read: injected I/O error at sector %s (request %llu+%llu)\n", bad,
              (unsigned long long)start, (unsigned long long)n);
        rc = ERR(VIX_E_DISK_NOIO);
    } else {
        size_t want = (size_t)n * 512, got = 0;
        while (got < want) {
            ssize_t r = pread(h->fd, buf + got, want - got, (off_t)(start * 512 + got));
            if (r <= 0) {
                rc = ERR(VIX_E_DISK_NOIO);
                break;
            }
            got += (size_t)r;
        }
    }
    calllog("Read", rc, "%llu+%llu", (unsigned long long)start, (unsigned long long)n);
    handle_leave(h);
    return rc;
}

VixError VixDiskLib_Write(void *handle, SectorType start, SectorType n, const uint8_t *buf) {
    Handle *h = handle;
    VixError rc = VIX_OK;
    handle_enter(h);
    if (h->readOnly) {
        rc = ERR(VIX_E_FILE_READ_ONLY);
    } else if (start + n > h->capacity) {
        rc = ERR(VIX_E_DISK_OUTOFRANGE);
    } else {
        size_t want = (size_t)n * 512, got = 0;
        while (got < want) {
            ssize_t r = pwrite(h->fd, buf + got, want - got, (off_t)(start * 512 + got));
            if (r <= 0) {
                rc = ERR(VIX_E_DISK_NOIO);
                break;
            }
            got += (size_t)r;
        }
    }
    calllog("Write", rc, "%llu+%llu", (unsigned long long)start, (unsigned long long)n);
    handle_leave(h);
    return rc;
}

VixError VixDiskLib_Flush(void *handle) {
    Handle *h = handle;
    handle_enter(h);
    VixError rc = fsync(h->fd) == 0 ? VIX_OK : ERR(VIX_E_DISK_NOIO);
    calllog("Flush", rc, NULL);
    handle_leave(h);
    return rc;
}

/* -- metadata: "<file>.meta", key=value lines ------------------------------------------- */

static char *read_meta(Handle *h, size_t *len) {
    char path[4200];
    snprintf(path, sizeof path, "%s.meta", h->file);
    FILE *f = fopen(path, "rb");
    *len = 0;
    if (!f) return calloc(1, 1);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *data = calloc(1, (size_t)size + 1);
    *len = fread(data, 1, (size_t)size, f);
    fclose(f);
    return data;
}

static VixError put_result(const char *src, size_t need, char *buf, size_t bufLen,
                           size_t *requiredLen) {
    if (requiredLen) *requiredLen = need;
    if (!buf || bufLen < need) return ERR(VIX_E_BUFFER_TOOSMALL);
    memcpy(buf, src, need);
    return VIX_OK;
}

VixError VixDiskLib_GetMetadataKeys(void *handle, char *buf, size_t bufLen, size_t *requiredLen) {
    Handle *h = handle;
    handle_enter(h);
    size_t len;
    char *data = read_meta(h, &len);
    char *keys = calloc(1, len + 2);
    size_t k = 0;
    for (char *line = strtok(data, "\n"); line; line = strtok(NULL, "\n")) {
        char *eq = strchr(line, '=');
        if (!eq) continue;
        memcpy(keys + k, line, (size_t)(eq - line));
        k += (size_t)(eq - line);
        keys[k++] = '\0';
    }
    keys[k++] = '\0';
    VixError rc = put_result(keys, k, buf, bufLen, requiredLen);
    calllog("GetMetadataKeys", rc, "bufLen=%zu", bufLen);
    free(keys);
    free(data);
    handle_leave(h);
    return rc;
}

VixError VixDiskLib_ReadMetadata(void *handle, const char *key, char *buf, size_t bufLen,
                                 size_t *requiredLen) {
    Handle *h = handle;
    handle_enter(h);
    size_t len, klen = strlen(key);
    char *data = read_meta(h, &len);
    VixError rc = ERR(VIX_E_FAIL);
    for (char *line = strtok(data, "\n"); line; line = strtok(NULL, "\n")) {
        if (strncmp(line, key, klen) == 0 && line[klen] == '=') {
            const char *val = line + klen + 1;
            rc = put_result(val, strlen(val) + 1, buf, bufLen, requiredLen);
            break;
        }
    }
    if ((rc & 0xFFFF) == VIX_E_FAIL) logf_(g_warn, "ReadMetadata: no key '%s'\n", key);
    calllog("ReadMetadata", rc, "%s", key);
    free(data);
    handle_leave(h);
    return rc;
}

VixError VixDiskLib_WriteMetadata(void *handle, const char *key, const char *val) {
    Handle *h = handle;
    handle_enter(h);
    VixError rc = VIX_OK;
    if (h->readOnly || strchr(key, '=') || strchr(key, '\n') || strchr(val, '\n')) {
        rc = ERR(h->readOnly ? VIX_E_FILE_READ_ONLY : VIX_E_INVALID_ARG);
        goto out;
    }
    size_t len, klen = strlen(key);
    char *data = read_meta(h, &len);
    char path[4200];
    snprintf(path, sizeof path, "%s.meta", h->file);
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(data);
        rc = ERR(VIX_E_FILE_ACCESS_ERROR);
        goto out;
    }
    for (char *line = strtok(data, "\n"); line; line = strtok(NULL, "\n")) {
        if (strncmp(line, key, klen) == 0 && line[klen] == '=') continue;
        fprintf(f, "%s\n", line);
    }
    fprintf(f, "%s=%s\n", key, val);
    fclose(f);
    free(data);
out:
    calllog("WriteMetadata", rc, "%s", key);
    handle_leave(h);
    return rc;
}

#ifndef FAKE_OLD
/* -- allocated blocks: SEEK_DATA/SEEK_HOLE at chunk granularity ------------------------- */

VixError VixDiskLib_QueryAllocatedBlocks(void *handle, SectorType start, SectorType n,
                                         SectorType chunk, BlockList **out) {
    Handle *h = handle;
    VixError rc = VIX_OK;
    /* VDDK 7.0.2 release notes: "QueryAllocatedBlocks should be called in the same thread
     * as open and close disk, not from read and write worker threads." */
    need_designated_thread("QueryAllocatedBlocks");
    handle_enter(h);
    if (chunk < 128 || (chunk & (chunk - 1)) || start % chunk || n % chunk ||
        start + n > h->capacity || !out) {
        logf_(g_warn, "QueryAllocatedBlocks: bad arguments start=%llu n=%llu chunk=%llu\n",
              (unsigned long long)start, (unsigned long long)n, (unsigned long long)chunk);
        rc = ERR(VIX_E_INVALID_ARG);
        goto out;
    }
    size_t cap = 16, count = 0;
    BlockList *bl = malloc(sizeof *bl + cap * sizeof(Block));
    off_t pos = (off_t)(start * 512), end = (off_t)((start + n) * 512);
    off_t cbytes = (off_t)(chunk * 512);
    while (pos < end) {
        off_t data = lseek(h->fd, pos, SEEK_DATA);
        if (data < 0 || data >= end) break;
        off_t hole = lseek(h->fd, data, SEEK_HOLE);
        if (hole < 0 || hole > end) hole = end;
        off_t a = data - data % cbytes;
        off_t b = ((hole + cbytes - 1) / cbytes) * cbytes;
        if (b > end) b = end;
        SectorType so = (SectorType)a / 512, sl = (SectorType)(b - a) / 512;
        if (count && bl->blocks[count - 1].offset + bl->blocks[count - 1].length >= so) {
            Block *last = &bl->blocks[count - 1];
            SectorType e = so + sl;
            if (e > last->offset + last->length) last->length = e - last->offset;
        } else {
            if (count == cap) {
                cap *= 2;
                bl = realloc(bl, sizeof *bl + cap * sizeof(Block));
            }
            bl->blocks[count].offset = so;
            bl->blocks[count].length = sl;
            count++;
        }
        pos = b;
    }
    bl->numBlocks = (uint32_t)count;
    *out = bl;
out:
    calllog("QueryAllocatedBlocks", rc, "%llu+%llu chunk=%llu", (unsigned long long)start,
            (unsigned long long)n, (unsigned long long)chunk);
    handle_leave(h);
    return rc;
}

VixError VixDiskLib_FreeBlockList(BlockList *bl) {
    free(bl);
    return VIX_OK;
}

#endif

/* -- the rest ----------------------------------------------------------------------------- */

VixError VixDiskLib_PrepareForAccess(const ConnectParams *p, const char *identity) {
    openclose_enter("PrepareForAccess");
    VixError rc = p && p->vmxSpec && valid_moref(p->vmxSpec, "moref=") && identity && *identity
                      ? VIX_OK
                      : ERR(VIX_E_INVALID_ARG);
    logf_(g_log, "PrepareForAccess %s by %s\n", p && p->vmxSpec ? p->vmxSpec : "",
          identity ? identity : "");
    calllog("PrepareForAccess", rc, "%s identity=%s", p && p->vmxSpec ? p->vmxSpec : "",
            identity ? identity : "");
    openclose_leave();
    return rc;
}

VixError VixDiskLib_EndAccess(const ConnectParams *p, const char *identity) {
    openclose_enter("EndAccess");
    logf_(g_log, "EndAccess %s by %s\n", p && p->vmxSpec ? p->vmxSpec : "",
          identity ? identity : "");
    calllog("EndAccess", VIX_OK, "%s identity=%s", p && p->vmxSpec ? p->vmxSpec : "",
            identity ? identity : "");
    openclose_leave();
    return VIX_OK;
}

VixError VixDiskLib_Cleanup(const ConnectParams *p, uint32_t *cleaned, uint32_t *remaining) {
    openclose_enter("Cleanup");
    long pending = env_long("FAKEVDDK_CLEANUP_PENDING", 0);
    if (cleaned) *cleaned = (uint32_t)pending;
    if (remaining) *remaining = 0;
    calllog("Cleanup", VIX_OK, "%s cleaned=%ld", p && p->vmxSpec ? p->vmxSpec : "", pending);
    openclose_leave();
    return VIX_OK;
}

const char *VixDiskLib_GetTransportMode(void *handle) {
    Handle *h = handle;
    handle_enter(h);
    const char *mode = h->mode;
    calllog("GetTransportMode", VIX_OK, "%s", mode);
    handle_leave(h);
    return mode;
}

const char *VixDiskLib_ListTransportModes(void) { return "file:san:hotadd:nbdssl:nbd"; }
