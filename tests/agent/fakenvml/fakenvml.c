/*
 * A fake libnvidia-ml.so.1 for tests: the unmodified pynvml (nvidia-ml-py) loads it through LD_LIBRARY_PATH and
 * sees the GPUs and MIG devices described by the JSON file named in $FAKE_NVML_CONFIG.
 *
 * It implements only the NVML entry points the gpuguard node agent calls, with the same signatures and struct
 * layouts as nvml.h (the ctypes structures in pynvml.py mirror them). The file is re-read whenever it changes, so a
 * test can make a GPU vanish between two scrapes. Build:
 *   gcc -shared -fPIC -O2 -Wl,-soname,libnvidia-ml.so.1 -o libnvidia-ml.so.1 fakenvml.c -lpthread
 *
 * Config (all keys optional unless noted; units are the ones in the key names):
 *   {"driver": "550.54.15", "initError": "DRIVER_NOT_LOADED", "fail": {"nvmlSystemGetDriverVersion": "UNKNOWN"},
 *    "gpus": [{"uuid": "GPU-..." (required), "name": "NVIDIA H100 80GB HBM3", "memoryTotalMiB": 81559,
 *              "memoryUsedMiB": 512, "utilGpu": 37, "utilMemory": 12, "temperatureC": 41, "powerW": 123.5,
 *              "powerLimitW": 700, "smClockMHz": 1980, "memClockMHz": 2619, "energyMj": 123456,
 *              "ecc": {"correctedVolatile": 0, "uncorrectedVolatile": 0, "correctedAggregate": 2,
 *                      "uncorrectedAggregate": 0},
 *              "processes": 1, "lost": false, "fail": {"nvmlDeviceGetPowerUsage": "NOT_SUPPORTED"},
 *              "migMode": 1, "maxMigDevices": 7,
 *              "migDevices": [{"uuid": "MIG-...", "giId": 1, "profileId": 19, "start": 0, "memoryMiB": 9984,
 *                              "memoryUsedMiB": 10, "processes": 0, "fail": {...}}]}]}
 * GPUs may add "pciBusId": "00000000:19:00.0" and "gpm": {"graphicsUtil": 42.5, "smUtil": 30} (percent, what GPM
 * measures over the interval ending at the next sample; a GPU with a "gpm" object supports GPM); MIG devices may add
 * "gpm" too, read by nvmlGpmMigSampleGet through their GPU instance id. nvmlGpmMetricsGet refuses two samples of
 * different devices, or a second sample not taken after the first; a metric missing from "gpm" answers
 * NOT_SUPPORTED in its own slot. fakeNvmlLiveGpmSamples() (not NVML) counts samples allocated and not yet freed.
 * A key that is absent makes its getter answer NVML_ERROR_NOT_SUPPORTED, as a GPU without that sensor would.
 * "fail" maps an NVML function name to the error it returns; "lost": true makes every call on that GPU answer
 * NVML_ERROR_GPU_IS_LOST, as when a GPU falls off the bus.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0, NVML_ERROR_UNINITIALIZED = 1, NVML_ERROR_INVALID_ARGUMENT = 2, NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4, NVML_ERROR_NOT_FOUND = 6, NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9, NVML_ERROR_TIMEOUT = 10, NVML_ERROR_FUNCTION_NOT_FOUND = 13,
    NVML_ERROR_GPU_IS_LOST = 15, NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25, NVML_ERROR_UNKNOWN = 999
};

/* ---------------------------------------------------------------- a small JSON reader */

typedef enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ } jtype;
typedef struct jnode {
    jtype type;
    double num;
    char *str;
    int count;
    char **keys;
    struct jnode **items;
} jnode;

static const char *jp;

static void skip_space(void) { while (*jp == ' ' || *jp == '\n' || *jp == '\r' || *jp == '\t') jp++; }

static jnode *new_node(jtype type) {
    jnode *node = calloc(1, sizeof *node);
    node->type = type;
    return node;
}

static char *parse_string_raw(void) {
    size_t cap = 16, len = 0;
    char *out = malloc(cap);
    jp++; /* opening quote */
    while (*jp && *jp != '"') {
        char c = *jp++;
        if (c == '\\') {
            c = *jp++;
            switch (c) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'u': c = '?'; for (int i = 0; i < 4 && *jp; i++) jp++; break;
            default: break; /* \" \\ \/ */
            }
        }
        if (len + 2 > cap) out = realloc(out, cap *= 2);
        out[len++] = c;
    }
    if (*jp == '"') jp++;
    out[len] = 0;
    return out;
}

static jnode *parse_value(void);

static void append(jnode *node, char *key, jnode *item) {
    node->keys = realloc(node->keys, sizeof(char *) * (node->count + 1));
    node->items = realloc(node->items, sizeof(jnode *) * (node->count + 1));
    node->keys[node->count] = key;
    node->items[node->count++] = item;
}

static jnode *parse_container(char close, jtype type) {
    jnode *node = new_node(type);
    jp++;
    skip_space();
    while (*jp && *jp != close) {
        char *key = NULL;
        if (type == J_OBJ) {
            if (*jp != '"') return NULL;
            key = parse_string_raw();
            skip_space();
            if (*jp++ != ':') return NULL;
        }
        jnode *item = parse_value();
        if (!item) return NULL;
        append(node, key, item);
        skip_space();
        if (*jp == ',') { jp++; skip_space(); }
    }
    if (*jp != close) return NULL;
    jp++;
    return node;
}

static jnode *parse_value(void) {
    skip_space();
    if (*jp == '{') return parse_container('}', J_OBJ);
    if (*jp == '[') return parse_container(']', J_ARR);
    if (*jp == '"') { jnode *n = new_node(J_STR); n->str = parse_string_raw(); return n; }
    if (!strncmp(jp, "true", 4)) { jp += 4; jnode *n = new_node(J_BOOL); n->num = 1; return n; }
    if (!strncmp(jp, "false", 5)) { jp += 5; return new_node(J_BOOL); }
    if (!strncmp(jp, "null", 4)) { jp += 4; return new_node(J_NULL); }
    char *end;
    double value = strtod(jp, &end);
    if (end == jp) return NULL;
    jp = end;
    jnode *n = new_node(J_NUM);
    n->num = value;
    return n;
}

static const jnode *jget(const jnode *obj, const char *key) {
    if (!obj || obj->type != J_OBJ) return NULL;
    for (int i = 0; i < obj->count; i++)
        if (!strcmp(obj->keys[i], key)) return obj->items[i];
    return NULL;
}

static int jnum(const jnode *obj, const char *key, double *out) {
    const jnode *n = jget(obj, key);
    if (!n || (n->type != J_NUM && n->type != J_BOOL)) return 0;
    *out = n->num;
    return 1;
}

static const char *jstr(const jnode *obj, const char *key, const char *fallback) {
    const jnode *n = jget(obj, key);
    return n && n->type == J_STR ? n->str : fallback;
}

static const jnode *jitem(const jnode *arr, unsigned index) {
    if (!arr || arr->type != J_ARR || index >= (unsigned)arr->count) return NULL;
    return arr->items[index];
}

static unsigned jlen(const jnode *arr) { return arr && arr->type == J_ARR ? (unsigned)arr->count : 0; }

/* ---------------------------------------------------------------- the configuration, re-read when it changes */

static pthread_mutex_t config_lock = PTHREAD_MUTEX_INITIALIZER;
static const jnode *config; /* replaced trees are never freed: a reader on another thread may still hold one */
static struct stat config_stat;

static const jnode *load_config(void) {
    const char *path = getenv("FAKE_NVML_CONFIG");
    struct stat st;
    pthread_mutex_lock(&config_lock);
    if (path && stat(path, &st) == 0 &&
        (!config || st.st_ino != config_stat.st_ino || st.st_size != config_stat.st_size ||
         st.st_mtim.tv_sec != config_stat.st_mtim.tv_sec || st.st_mtim.tv_nsec != config_stat.st_mtim.tv_nsec)) {
        FILE *file = fopen(path, "rb");
        if (file) {
            char *text = calloc(1, st.st_size + 1);
            size_t got = fread(text, 1, st.st_size, file);
            fclose(file);
            text[got] = 0;
            jp = text;
            jnode *parsed = parse_value();
            if (parsed && parsed->type == J_OBJ) { config = parsed; config_stat = st; }
            else fprintf(stderr, "fakenvml: %s is not a JSON object\n", path);
        }
    }
    const jnode *current = config;
    pthread_mutex_unlock(&config_lock);
    return current;
}

static nvmlReturn_t error_code(const char *name) {
    static const struct { const char *name; nvmlReturn_t code; } table[] = {
        {"UNINITIALIZED", 1}, {"INVALID_ARGUMENT", 2}, {"NOT_SUPPORTED", 3}, {"NO_PERMISSION", 4},
        {"NOT_FOUND", 6}, {"INSUFFICIENT_SIZE", 7}, {"DRIVER_NOT_LOADED", 9}, {"TIMEOUT", 10},
        {"FUNCTION_NOT_FOUND", 13}, {"GPU_IS_LOST", 15}, {"UNKNOWN", 999},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (!strcmp(table[i].name, name)) return table[i].code;
    return NVML_ERROR_UNKNOWN;
}

static nvmlReturn_t injected(const jnode *owner, const char *function) {
    const char *failure = jstr(jget(owner, "fail"), function, NULL);
    return failure ? error_code(failure) : NVML_SUCCESS;
}

/* ---------------------------------------------------------------- handles */

#define MAX_GPUS 64
#define MAX_MIG 8

typedef struct nvmlDevice_st { int gpu; int mig; } *nvmlDevice_t;  /* mig < 0: the physical GPU */
typedef struct nvmlGpuInstance_st { int gpu; int mig; } *nvmlGpuInstance_t;

static struct nvmlDevice_st gpu_handles[MAX_GPUS];
static struct nvmlDevice_st mig_handles[MAX_GPUS][MAX_MIG];
static struct nvmlGpuInstance_st gi_handles[MAX_GPUS][MAX_MIG];

static const jnode *gpu_node(int gpu) { return jitem(jget(config, "gpus"), (unsigned)gpu); }
static const jnode *mig_node(int gpu, int mig) { return jitem(jget(gpu_node(gpu), "migDevices"), (unsigned)mig); }

/* Resolve a handle and apply "lost" and "fail"; every device getter starts here. */
static nvmlReturn_t enter(const char *function, nvmlDevice_t device, const jnode **gpu, const jnode **mig) {
    if (!config) return NVML_ERROR_UNINITIALIZED;
    if (!device) return NVML_ERROR_INVALID_ARGUMENT;
    *gpu = gpu_node(device->gpu);
    *mig = device->mig >= 0 ? mig_node(device->gpu, device->mig) : NULL;
    if (!*gpu || (device->mig >= 0 && !*mig)) return NVML_ERROR_INVALID_ARGUMENT;
    double lost = 0;
    if (jnum(*gpu, "lost", &lost) && lost) return NVML_ERROR_GPU_IS_LOST;
    nvmlReturn_t failure = injected(*gpu, function);
    if (failure == NVML_SUCCESS && *mig) failure = injected(*mig, function);
    return failure;
}

static nvmlReturn_t copy_string(const char *value, char *out, unsigned length) {
    if (strlen(value) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(out, value);
    return NVML_SUCCESS;
}

/* A numeric field of the GPU (never of a MIG device: NVML answers NOT_SUPPORTED there), times `scale`. */
static nvmlReturn_t gpu_number(const char *function, nvmlDevice_t device, const char *key, double scale, double *out) {
    const jnode *gpu, *mig;
    nvmlReturn_t ret = enter(function, device, &gpu, &mig);
    if (ret != NVML_SUCCESS) return ret;
    if (mig || !jnum(gpu, key, out)) return NVML_ERROR_NOT_SUPPORTED;
    *out *= scale;
    return NVML_SUCCESS;
}

/* ---------------------------------------------------------------- MIG profile table (GA100/GH100 family) */

typedef struct { unsigned profile; unsigned id; unsigned slices; unsigned memory_slices; unsigned max_count; } gi_profile;
static const gi_profile PROFILES[] = {
    {0, 19, 1, 1, 7}, /* NVML_GPU_INSTANCE_PROFILE_1_SLICE      -> 1g.10gb on 80 GB parts */
    {1, 14, 2, 2, 3}, /* _2_SLICE                               -> 2g.20gb */
    {2, 9, 3, 4, 2},  /* _3_SLICE                               -> 3g.40gb */
    {3, 5, 4, 4, 1},  /* _4_SLICE                               -> 4g.40gb */
    {4, 0, 7, 8, 1},  /* _7_SLICE                               -> 7g.80gb */
    {7, 20, 1, 1, 1}, /* _1_SLICE_REV1 (media extensions)      -> 1g.10gb+me */
    {9, 15, 1, 2, 4}, /* _1_SLICE_REV2 (double memory)          -> 1g.20gb */
};

static const gi_profile *profile_by_id(unsigned id) {
    for (size_t i = 0; i < sizeof PROFILES / sizeof PROFILES[0]; i++)
        if (PROFILES[i].id == id) return &PROFILES[i];
    return NULL;
}

static const gi_profile *profile_by_enum(unsigned profile) {
    for (size_t i = 0; i < sizeof PROFILES / sizeof PROFILES[0]; i++)
        if (PROFILES[i].profile == profile) return &PROFILES[i];
    return NULL;
}

/* ---------------------------------------------------------------- structs, as in nvml.h */

typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;
typedef struct { unsigned int start, size; } nvmlGpuInstancePlacement_t;
typedef struct {
    nvmlDevice_t device;
    unsigned int id, profileId;
    nvmlGpuInstancePlacement_t placement;
} nvmlGpuInstanceInfo_t;
typedef struct {
    unsigned int multiprocessorCount, sharedCopyEngineCount, sharedDecoderCount, sharedEncoderCount,
        sharedJpegCount, sharedOfaCount, gpuInstanceSliceCount, computeInstanceSliceCount;
    unsigned long long memorySizeMB;
} nvmlDeviceAttributes_t;
typedef struct {
    unsigned int version, id, isP2pSupported, sliceCount, instanceCount, multiprocessorCount, copyEngineCount,
        decoderCount, encoderCount, jpegCount, ofaCount;
    unsigned long long memorySizeMB;
    char name[96];
} nvmlGpuInstanceProfileInfo_v2_t;
#define nvmlGpuInstanceProfileInfo_v2 0x02000098u
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_v2_t;

#define MIB (1024ull * 1024ull)

/* ---------------------------------------------------------------- library and system */

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    if (!load_config()) return NVML_ERROR_DRIVER_NOT_LOADED;
    const char *failure = jstr(config, "initError", NULL);
    return failure ? error_code(failure) : NVML_SUCCESS;
}

nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlShutdown(void) { return NVML_SUCCESS; }

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_FUNCTION_NOT_FOUND: return "Function Not Found";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    if (!config) return NVML_ERROR_UNINITIALIZED;
    nvmlReturn_t failure = injected(config, "nvmlSystemGetDriverVersion");
    return failure ? failure : copy_string(jstr(config, "driver", "550.54.15"), version, length);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!load_config()) return NVML_ERROR_UNINITIALIZED;
    unsigned n = jlen(jget(config, "gpus"));
    *count = n > MAX_GPUS ? MAX_GPUS : n;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (!config) return NVML_ERROR_UNINITIALIZED;
    const jnode *gpu = gpu_node((int)index);
    if (!gpu || index >= MAX_GPUS) return NVML_ERROR_INVALID_ARGUMENT;
    double lost = 0;
    if (jnum(gpu, "lost", &lost) && lost) return NVML_ERROR_GPU_IS_LOST;
    nvmlReturn_t failure = injected(gpu, "nvmlDeviceGetHandleByIndex");
    if (failure) return failure;
    gpu_handles[index].gpu = (int)index;
    gpu_handles[index].mig = -1;
    *device = &gpu_handles[index];
    return NVML_SUCCESS;
}

/* ---------------------------------------------------------------- identity and memory (GPU and MIG) */

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    const jnode *gpu, *mig;
    nvmlReturn_t ret = enter("nvmlDeviceGetUUID", device, &gpu, &mig);
    if (ret) return ret;
    const char *value = jstr(mig ? mig : gpu, "uuid", NULL);
    return value ? copy_string(value, uuid, length) : NVML_ERROR_UNKNOWN;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    const jnode *gpu, *mig;
    nvmlReturn_t ret = enter("nvmlDeviceGetName", device, &gpu, &mig);
    if (ret) return ret;
    return copy_string(jstr(mig ? mig : gpu, "name", "NVIDIA H100 80GB HBM3"), name, length);
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    const jnode *gpu, *mig;
    nvmlReturn_t ret = enter("nvmlDeviceGetMemoryInfo", device, &gpu, &mig);
    if (ret) return ret;
    double total = 0, used = 0;
    if (!jnum(mig ? mig : gpu, mig ? "memoryMiB" : "memoryTotalMiB", &total)) return NVML_ERROR_NOT_SUPPORTED;
    jnum(mig ? mig : gpu, "memoryUsedMiB", &used);
    memory->total = (unsigned long long)total * MIB;
    memory->used = (unsigned long long)used * MIB;
    memory->free = memory->total - memory->used;
    return NVML_SUCCESS;
}

/* ---------------------------------------------------------------- sensors (physical GPU only) */

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization) {
    double gpu_util, memory_util = 0, mig_mode = 0;
    nvmlReturn_t ret = gpu_number("nvmlDeviceGetUtilizationRates", device, "utilGpu", 1, &gpu_util);
    if (ret) return ret;
    /* As on real hardware: no utilization while MIG is enabled. */
    if (jnum(gpu_node(device->gpu), "migMode", &mig_mode) && mig_mode) return NVML_ERROR_NOT_SUPPORTED;
    jnum(gpu_node(device->gpu), "utilMemory", &memory_util);
    utilization->gpu = (unsigned)gpu_util;
    utilization->memory = (unsigned)memory_util;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, int sensor, unsigned int *temp) {
    double value;
    if (sensor != 0) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t ret = gpu_number("nvmlDeviceGetTemperature", device, "temperatureC", 1, &value);
    if (!ret) *temp = (unsigned)value;
    return ret;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power) {
    double value;
    nvmlReturn_t ret = gpu_number("nvmlDeviceGetPowerUsage", device, "powerW", 1000, &value);
    if (!ret) *power = (unsigned)(value + 0.5);
    return ret;
}

nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t device, unsigned int *limit) {
    double value;
    nvmlReturn_t ret = gpu_number("nvmlDeviceGetEnforcedPowerLimit", device, "powerLimitW", 1000, &value);
    if (!ret) *limit = (unsigned)(value + 0.5);
    return ret;
}

nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t device, int type, unsigned int *clock) {
    const char *key = type == 1 || type == 0 ? "smClockMHz" : type == 2 ? "memClockMHz" : NULL;
    double value;
    if (!key) return NVML_ERROR_NOT_SUPPORTED;
    nvmlReturn_t ret = gpu_number("nvmlDeviceGetClockInfo", device, key, 1, &value);
    if (!ret) *clock = (unsigned)value;
    return ret;
}

nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device, unsigned long long *energy) {
    double value;
    nvmlReturn_t ret = gpu_number("nvmlDeviceGetTotalEnergyConsumption", device, "energyMj", 1, &value);
    if (!ret) *energy = (unsigned long long)value;
    return ret;
}

nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, int errorType, int counterType,
                                         unsigned long long *count) {
    static const char *keys[2][2] = {{"correctedVolatile", "correctedAggregate"},
                                     {"uncorrectedVolatile", "uncorrectedAggregate"}};
    const jnode *gpu, *mig;
    nvmlReturn_t ret = enter("nvmlDeviceGetTotalEccErrors", device, &gpu, &mig);
    if (ret) return ret;
    if (errorType < 0 || errorType > 1 || counterType < 0 || counterType > 1) return NVML_ERROR_INVALID_ARGUMENT;
    double value;
    if (mig || !jnum(jget(gpu, "ecc"), keys[errorType][counterType], &value)) return NVML_ERROR_NOT_SUPPORTED;
    *count = (unsigned long long)value;
    return NVML_SUCCESS;
}

/* ---------------------------------------------------------------- processes (GPU and MIG) */

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *count,
                                                      nvmlProcessInfo_v2_t *infos) {
    const jnode *gpu, *mig;
    nvmlReturn_t ret = enter("nvmlDeviceGetComputeRunningProcesses", device, &gpu, &mig);
    if (ret) return ret;
    double wanted = 0;
    jnum(mig ? mig : gpu, "processes", &wanted);
    unsigned n = (unsigned)wanted;
    if (n == 0) { *count = 0; return NVML_SUCCESS; }
    if (!infos || *count < n) { *count = n; return NVML_ERROR_INSUFFICIENT_SIZE; }
    double gi = 0;
    if (mig) jnum(mig, "giId", &gi);
    for (unsigned i = 0; i < n; i++) {
        infos[i].pid = 1000 + i;
        infos[i].usedGpuMemory = 256 * MIB;
        infos[i].gpuInstanceId = (unsigned)gi;
        infos[i].computeInstanceId = 0;
    }
    *count = n;
    return NVML_SUCCESS;
}

/* ---------------------------------------------------------------- MIG */

nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *current, unsigned int *pending) {
    double mode, next;
    nvmlReturn_t ret = gpu_number("nvmlDeviceGetMigMode", device, "migMode", 1, &mode);
    if (ret) return ret;
    *current = (unsigned)mode;
    *pending = jnum(gpu_node(device->gpu), "migPending", &next) ? (unsigned)next : (unsigned)mode;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count) {
    double mode, max = 7;
    nvmlReturn_t ret = gpu_number("nvmlDeviceGetMaxMigDeviceCount", device, "migMode", 1, &mode);
    if (ret) return ret;
    jnum(gpu_node(device->gpu), "maxMigDevices", &max);
    *count = (unsigned)max > MAX_MIG ? MAX_MIG : (unsigned)max;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index, nvmlDevice_t *mig) {
    double mode, max = 7;
    nvmlReturn_t ret = gpu_number("nvmlDeviceGetMigDeviceHandleByIndex", device, "migMode", 1, &mode);
    if (ret) return ret;
    jnum(gpu_node(device->gpu), "maxMigDevices", &max);
    if (!mode || index >= (unsigned)max || index >= MAX_MIG) return NVML_ERROR_INVALID_ARGUMENT;
    if (!mig_node(device->gpu, (int)index)) return NVML_ERROR_NOT_FOUND;
    mig_handles[device->gpu][index].gpu = device->gpu;
    mig_handles[device->gpu][index].mig = (int)index;
    *mig = &mig_handles[device->gpu][index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t device, unsigned int *id) {
    const jnode *gpu, *mig;
    nvmlReturn_t ret = enter("nvmlDeviceGetGpuInstanceId", device, &gpu, &mig);
    if (ret) return ret;
    double value;
    if (!mig || !jnum(mig, "giId", &value)) return NVML_ERROR_INVALID_ARGUMENT;
    *id = (unsigned)value;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t device, unsigned int *id) {
    const jnode *gpu, *mig;
    nvmlReturn_t ret = enter("nvmlDeviceGetComputeInstanceId", device, &gpu, &mig);
    if (ret) return ret;
    if (!mig) return NVML_ERROR_INVALID_ARGUMENT;
    *id = 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetAttributes_v2(nvmlDevice_t device, nvmlDeviceAttributes_t *attributes) {
    const jnode *gpu, *mig;
    nvmlReturn_t ret = enter("nvmlDeviceGetAttributes", device, &gpu, &mig);
    if (ret) return ret;
    if (!mig) return NVML_ERROR_NOT_SUPPORTED;
    double id = 0, memory = 0;
    jnum(mig, "profileId", &id);
    jnum(mig, "memoryMiB", &memory);
    const gi_profile *profile = profile_by_id((unsigned)id);
    if (!profile) return NVML_ERROR_UNKNOWN;
    memset(attributes, 0, sizeof *attributes);
    attributes->gpuInstanceSliceCount = profile->slices;
    attributes->computeInstanceSliceCount = profile->slices;
    attributes->multiprocessorCount = profile->slices * 16;
    attributes->memorySizeMB = (unsigned long long)memory;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetGpuInstanceById(nvmlDevice_t device, unsigned int id, nvmlGpuInstance_t *instance) {
    double mode;
    nvmlReturn_t ret = gpu_number("nvmlDeviceGetGpuInstanceById", device, "migMode", 1, &mode);
    if (ret) return ret;
    const jnode *devices = jget(gpu_node(device->gpu), "migDevices");
    for (unsigned i = 0; i < jlen(devices) && i < MAX_MIG; i++) {
        double gi;
        if (jnum(jitem(devices, i), "giId", &gi) && (unsigned)gi == id) {
            gi_handles[device->gpu][i].gpu = device->gpu;
            gi_handles[device->gpu][i].mig = (int)i;
            *instance = &gi_handles[device->gpu][i];
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

nvmlReturn_t nvmlGpuInstanceGetInfo(nvmlGpuInstance_t instance, nvmlGpuInstanceInfo_t *info) {
    if (!config) return NVML_ERROR_UNINITIALIZED;
    if (!instance) return NVML_ERROR_INVALID_ARGUMENT;
    const jnode *gpu = gpu_node(instance->gpu), *mig = mig_node(instance->gpu, instance->mig);
    if (!gpu || !mig) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t failure = injected(mig, "nvmlGpuInstanceGetInfo");
    if (failure) return failure;
    double id = 0, gi = 0, start = 0;
    jnum(mig, "profileId", &id);
    jnum(mig, "giId", &gi);
    jnum(mig, "start", &start);
    const gi_profile *profile = profile_by_id((unsigned)id);
    if (!profile) return NVML_ERROR_UNKNOWN;
    info->device = &gpu_handles[instance->gpu];
    info->id = (unsigned)gi;
    info->profileId = profile->id;
    info->placement.start = (unsigned)start;
    info->placement.size = profile->memory_slices;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetGpuInstanceProfileInfoV(nvmlDevice_t device, unsigned int profile,
                                                  nvmlGpuInstanceProfileInfo_v2_t *info) {
    double mode, total = 0;
    nvmlReturn_t ret = gpu_number("nvmlDeviceGetGpuInstanceProfileInfoV", device, "migMode", 1, &mode);
    if (ret) return ret;
    if (info->version != nvmlGpuInstanceProfileInfo_v2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    const gi_profile *entry = profile_by_enum(profile);
    if (!entry) return profile < 0x12 ? NVML_ERROR_NOT_SUPPORTED : NVML_ERROR_INVALID_ARGUMENT;
    jnum(gpu_node(device->gpu), "memoryTotalMiB", &total);
    memset((char *)info + sizeof info->version, 0, sizeof *info - sizeof info->version);
    info->id = entry->id;
    info->sliceCount = entry->slices;
    info->instanceCount = entry->max_count;
    info->multiprocessorCount = entry->slices * 16;
    info->memorySizeMB = (unsigned long long)(total * entry->memory_slices / 8);
    return NVML_SUCCESS;
}

/* ---------------------------------------------------------------- PCI */

typedef struct {
    char busIdLegacy[16];
    unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci) {
    const jnode *gpu, *mig;
    nvmlReturn_t ret = enter("nvmlDeviceGetPciInfo", device, &gpu, &mig);
    if (ret) return ret;
    const char *bus_id = jstr(gpu, "pciBusId", NULL);
    if (mig || !bus_id) return NVML_ERROR_NOT_SUPPORTED;
    memset(pci, 0, sizeof *pci);
    snprintf(pci->busId, sizeof pci->busId, "%s", bus_id);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%s", bus_id + (strlen(bus_id) > 12 ? 4 : 0));
    unsigned domain = 0, bus = 0, dev = 0;
    sscanf(bus_id, "%x:%x:%x", &domain, &bus, &dev);
    pci->domain = domain;
    pci->bus = bus;
    pci->device = dev;
    pci->pciDeviceId = 0x233010de; /* H100 SXM5 */
    return NVML_SUCCESS;
}

/* ---------------------------------------------------------------- GPM, as in nvml.h */

#define NVML_GPM_METRICS_GET_VERSION 1
#define NVML_GPM_SUPPORT_VERSION 1
#define NVML_GPM_METRIC_GRAPHICS_UTIL 1
#define NVML_GPM_METRIC_SM_UTIL 2
#define GPM_METRIC_MAX 477 /* pynvml's NVML_GPM_METRIC_MAX: the size of the metrics array it passes */

typedef struct nvmlGpmSample_st {
    unsigned magic;
    int gpu, gi; /* gi < 0: the whole GPU */
    unsigned long long seq; /* 0: never filled */
    int has[2];
    double value[2]; /* graphicsUtil, smUtil */
} *nvmlGpmSample_t;
#define SAMPLE_MAGIC 0x67706d31u

typedef struct { char *shortName, *longName, *unit; } metric_info_t;
typedef struct {
    unsigned int metricId;
    nvmlReturn_t nvmlReturn;
    double value;
    metric_info_t metricInfo;
} nvmlGpmMetric_t;
typedef struct {
    unsigned int version, numMetrics;
    nvmlGpmSample_t sample1, sample2;
    nvmlGpmMetric_t metrics[GPM_METRIC_MAX];
} nvmlGpmMetricsGet_t;
typedef struct { unsigned int version, isSupportedDevice; } nvmlGpmSupport_t;

static pthread_mutex_t gpm_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long long gpm_seq;
static int live_samples;

int fakeNvmlLiveGpmSamples(void) { return live_samples; }

nvmlReturn_t nvmlGpmQueryDeviceSupport(nvmlDevice_t device, nvmlGpmSupport_t *support) {
    const jnode *gpu, *mig;
    nvmlReturn_t ret = enter("nvmlGpmQueryDeviceSupport", device, &gpu, &mig);
    if (ret) return ret;
    if (!support) return NVML_ERROR_INVALID_ARGUMENT;
    if (support->version != NVML_GPM_SUPPORT_VERSION) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    const jnode *gpm = jget(gpu, "gpm");
    support->isSupportedDevice = !mig && gpm && gpm->type == J_OBJ;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlGpmSampleAlloc(nvmlGpmSample_t *sample) {
    if (!config) return NVML_ERROR_UNINITIALIZED;
    if (!sample) return NVML_ERROR_INVALID_ARGUMENT;
    *sample = calloc(1, sizeof **sample);
    (*sample)->magic = SAMPLE_MAGIC;
    pthread_mutex_lock(&gpm_lock);
    live_samples++;
    pthread_mutex_unlock(&gpm_lock);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlGpmSampleFree(nvmlGpmSample_t sample) {
    if (!sample || sample->magic != SAMPLE_MAGIC) return NVML_ERROR_INVALID_ARGUMENT;
    sample->magic = 0;
    free(sample);
    pthread_mutex_lock(&gpm_lock);
    live_samples--;
    pthread_mutex_unlock(&gpm_lock);
    return NVML_SUCCESS;
}

static void fill_sample(nvmlGpmSample_t sample, int gpu, int gi, const jnode *gpm) {
    static const char *keys[2] = {"graphicsUtil", "smUtil"};
    sample->gpu = gpu;
    sample->gi = gi;
    for (int i = 0; i < 2; i++) sample->has[i] = jnum(gpm, keys[i], &sample->value[i]);
    pthread_mutex_lock(&gpm_lock);
    sample->seq = ++gpm_seq;
    pthread_mutex_unlock(&gpm_lock);
}

nvmlReturn_t nvmlGpmSampleGet(nvmlDevice_t device, nvmlGpmSample_t sample) {
    const jnode *gpu, *mig;
    nvmlReturn_t ret = enter("nvmlGpmSampleGet", device, &gpu, &mig);
    if (ret) return ret;
    if (!sample || sample->magic != SAMPLE_MAGIC) return NVML_ERROR_INVALID_ARGUMENT;
    double mode = 0;
    jnum(gpu, "migMode", &mode);
    if (mig || mode || !jget(gpu, "gpm")) return NVML_ERROR_NOT_SUPPORTED; /* MIG: per GPU instance only */
    fill_sample(sample, device->gpu, -1, jget(gpu, "gpm"));
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlGpmMigSampleGet(nvmlDevice_t device, unsigned int gpuInstanceId, nvmlGpmSample_t sample) {
    const jnode *gpu, *mig;
    nvmlReturn_t ret = enter("nvmlGpmMigSampleGet", device, &gpu, &mig);
    if (ret) return ret;
    if (!sample || sample->magic != SAMPLE_MAGIC || mig) return NVML_ERROR_INVALID_ARGUMENT;
    double mode = 0;
    jnum(gpu, "migMode", &mode);
    if (!mode || !jget(gpu, "gpm")) return NVML_ERROR_NOT_SUPPORTED;
    const jnode *devices = jget(gpu, "migDevices");
    for (unsigned i = 0; i < jlen(devices) && i < MAX_MIG; i++) {
        double gi;
        const jnode *instance = jitem(devices, i);
        if (jnum(instance, "giId", &gi) && (unsigned)gi == gpuInstanceId) {
            nvmlReturn_t failure = injected(instance, "nvmlGpmMigSampleGet");
            if (failure) return failure;
            fill_sample(sample, device->gpu, (int)gpuInstanceId, jget(instance, "gpm"));
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

nvmlReturn_t nvmlGpmMetricsGet(nvmlGpmMetricsGet_t *request) {
    static char *names[2][3] = {{"GRACT", "Graphics activity", "%"}, {"SMACT", "SM activity", "%"}};
    if (!config) return NVML_ERROR_UNINITIALIZED;
    if (!request) return NVML_ERROR_INVALID_ARGUMENT;
    if (request->version != NVML_GPM_METRICS_GET_VERSION) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    nvmlReturn_t failure = injected(config, "nvmlGpmMetricsGet");
    if (failure) return failure;
    nvmlGpmSample_t first = request->sample1, second = request->sample2;
    if (!first || !second || first->magic != SAMPLE_MAGIC || second->magic != SAMPLE_MAGIC ||
        request->numMetrics > GPM_METRIC_MAX)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (!first->seq || first->gpu != second->gpu || first->gi != second->gi || second->seq <= first->seq)
        return NVML_ERROR_INVALID_ARGUMENT;
    for (unsigned i = 0; i < request->numMetrics; i++) {
        nvmlGpmMetric_t *metric = &request->metrics[i];
        int which = metric->metricId == NVML_GPM_METRIC_GRAPHICS_UTIL ? 0
                  : metric->metricId == NVML_GPM_METRIC_SM_UTIL ? 1 : -1;
        if (which < 0 || !second->has[which]) {
            metric->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
            continue;
        }
        metric->nvmlReturn = NVML_SUCCESS;
        metric->value = second->value[which];
        metric->metricInfo.shortName = names[which][0];
        metric->metricInfo.longName = names[which][1];
        metric->metricInfo.unit = names[which][2];
    }
    return NVML_SUCCESS;
}
