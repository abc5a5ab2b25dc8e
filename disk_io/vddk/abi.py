"""The VixDiskLib C ABI (x86-64), declared for cffi ABI mode: no VMware header needed.

Layouts follow VDDK 6.7+ (VixDiskLibConnectParams is 128 bytes); `check_layout` asserts
the offsets so a wrong declaration fails loudly instead of corrupting memory.
"""

from __future__ import annotations

from cffi import FFI

CDEF = """
typedef uint64_t VixError;
typedef uint64_t VixDiskLibSectorType;
typedef void *VixDiskLibConnection;
typedef void *VixDiskLibHandle;
typedef char Bool;

typedef struct {
    uint32_t cylinders;
    uint32_t heads;
    uint32_t sectors;
} VixDiskLibGeometry;

typedef struct {
    VixDiskLibGeometry biosGeo;
    VixDiskLibGeometry physGeo;
    VixDiskLibSectorType capacity;
    int adapterType;
    int numLinks;
    char *parentFileNameHint;
    char *uuid;
} VixDiskLibInfo;

typedef struct {
    char *userName;
    char *password;
} VixDiskLibUidPasswdCreds;

typedef struct {
    char *cookie;
    char *userName;
    char *key;
} VixDiskLibSessionIdCreds;

typedef struct {
    char *vmxSpec;
    char *serverName;
    char *thumbPrint;
    long privateUse;
    int credType;
    union {
        VixDiskLibUidPasswdCreds uid;
        VixDiskLibSessionIdCreds sessionId;
        void *ticketId;
    } creds;
    uint32_t port;
    uint32_t nfcHostPort;
    char *vimApiVer;
    char reserved[8];
    void *state;
    union {
        void *opaque[3];
    } spec;
    int specType;
} VixDiskLibConnectParams;

typedef struct {
    VixDiskLibSectorType offset;
    VixDiskLibSectorType length;
} VixDiskLibBlock;

typedef struct {
    uint32_t numBlocks;
    VixDiskLibBlock blocks[];
} VixDiskLibBlockList;

VixError VixDiskLib_InitEx(uint32_t majorVersion, uint32_t minorVersion,
                           void (*log)(const char *, void *),
                           void (*warn)(const char *, void *),
                           void (*panic)(const char *, void *),
                           const char *libDir, const char *configFile);
void VixDiskLib_Exit(void);
VixError VixDiskLib_ConnectEx(const VixDiskLibConnectParams *connectParams, Bool readOnly,
                              const char *snapshotRef, const char *transportModes,
                              VixDiskLibConnection *connection);
VixError VixDiskLib_Disconnect(VixDiskLibConnection connection);
VixError VixDiskLib_Open(const VixDiskLibConnection connection, const char *path,
                         uint32_t flags, VixDiskLibHandle *diskHandle);
VixError VixDiskLib_Close(VixDiskLibHandle diskHandle);
VixError VixDiskLib_GetInfo(VixDiskLibHandle diskHandle, VixDiskLibInfo **info);
void VixDiskLib_FreeInfo(VixDiskLibInfo *info);
VixError VixDiskLib_Read(VixDiskLibHandle diskHandle, VixDiskLibSectorType startSector,
                         VixDiskLibSectorType numSectors, uint8_t *readBuffer);
VixError VixDiskLib_Write(VixDiskLibHandle diskHandle, VixDiskLibSectorType startSector,
                          VixDiskLibSectorType numSectors, const uint8_t *writeBuffer);
VixError VixDiskLib_Flush(VixDiskLibHandle diskHandle);
VixError VixDiskLib_GetMetadataKeys(VixDiskLibHandle diskHandle, char *keysBuffer,
                                    size_t bufLen, size_t *requiredLen);
VixError VixDiskLib_ReadMetadata(VixDiskLibHandle diskHandle, const char *key, char *buf,
                                 size_t bufLen, size_t *requiredLen);
VixError VixDiskLib_WriteMetadata(VixDiskLibHandle diskHandle, const char *key,
                                  const char *val);
VixError VixDiskLib_QueryAllocatedBlocks(VixDiskLibHandle diskHandle,
                                         VixDiskLibSectorType startSector,
                                         VixDiskLibSectorType numSectors,
                                         VixDiskLibSectorType chunkSize,
                                         VixDiskLibBlockList **blockList);
VixError VixDiskLib_FreeBlockList(VixDiskLibBlockList *blockList);
VixError VixDiskLib_PrepareForAccess(const VixDiskLibConnectParams *connectParams,
                                     const char *identity);
VixError VixDiskLib_EndAccess(const VixDiskLibConnectParams *connectParams,
                              const char *identity);
VixError VixDiskLib_Cleanup(const VixDiskLibConnectParams *connectParams,
                            uint32_t *numCleanedUp, uint32_t *numRemaining);
const char *VixDiskLib_GetTransportMode(VixDiskLibHandle diskHandle);
const char *VixDiskLib_ListTransportModes(void);
char *VixDiskLib_GetErrorText(VixError err, const char *locale);
void VixDiskLib_FreeErrorText(char *errMsg);
VixDiskLibConnectParams *VixDiskLib_AllocateConnectParams(void);
void VixDiskLib_FreeConnectParams(VixDiskLibConnectParams *connectParams);
"""

LIBC_CDEF = "int vsnprintf(char *str, size_t size, const char *format, void *ap);"

# Symbols that older VDDK releases lack: looked up, never required.
OPTIONAL = frozenset(
    {
        "VixDiskLib_QueryAllocatedBlocks",
        "VixDiskLib_FreeBlockList",
        "VixDiskLib_AllocateConnectParams",
        "VixDiskLib_FreeConnectParams",
        "VixDiskLib_PrepareForAccess",
        "VixDiskLib_EndAccess",
        "VixDiskLib_Cleanup",
        "VixDiskLib_GetTransportMode",
        "VixDiskLib_ListTransportModes",
    }
)

VIX_OK = 0
VIX_E_FAIL = 1
CODE_MASK = 0xFFFF

CRED_UID = 1
CRED_SESSIONID = 2

OPEN_UNBUFFERED = 1
OPEN_SINGLE_LINK = 2
OPEN_READ_ONLY = 4

# VixDiskLib_QueryAllocatedBlocks granularity floor (sectors), VIXDISKLIB_MIN_CHUNK_SIZE.
MIN_CHUNK_SECTORS = 128

SONAMES = ("libvixDiskLib.so.9", "libvixDiskLib.so.8", "libvixDiskLib.so.7", "libvixDiskLib.so.6")

ffi = FFI()
ffi.cdef(CDEF)
ffi.cdef(LIBC_CDEF)


def check_layout() -> None:
    expected = {
        ("VixDiskLibConnectParams", "vmxSpec"): 0,
        ("VixDiskLibConnectParams", "serverName"): 8,
        ("VixDiskLibConnectParams", "thumbPrint"): 16,
        ("VixDiskLibConnectParams", "privateUse"): 24,
        ("VixDiskLibConnectParams", "credType"): 32,
        ("VixDiskLibConnectParams", "creds"): 40,
        ("VixDiskLibConnectParams", "port"): 64,
        ("VixDiskLibConnectParams", "nfcHostPort"): 68,
        ("VixDiskLibConnectParams", "vimApiVer"): 72,
        ("VixDiskLibConnectParams", "reserved"): 80,
        ("VixDiskLibConnectParams", "state"): 88,
        ("VixDiskLibConnectParams", "spec"): 96,
        ("VixDiskLibConnectParams", "specType"): 120,
        ("VixDiskLibInfo", "physGeo"): 12,
        ("VixDiskLibInfo", "capacity"): 24,
        ("VixDiskLibInfo", "adapterType"): 32,
        ("VixDiskLibInfo", "numLinks"): 36,
        ("VixDiskLibInfo", "parentFileNameHint"): 40,
        ("VixDiskLibInfo", "uuid"): 48,
        ("VixDiskLibBlockList", "blocks"): 8,
    }
    for (struct, fld), off in expected.items():
        got = ffi.offsetof(struct, fld)
        if got != off:
            raise AssertionError(f"{struct}.{fld} at {got}, expected {off}")
    if ffi.sizeof("VixDiskLibConnectParams") != 128:
        raise AssertionError("VixDiskLibConnectParams must be 128 bytes")


check_layout()
